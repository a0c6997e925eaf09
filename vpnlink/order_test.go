package vpnlink_test

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

// TestOrderWhenTheSocketFills runs the client over a real loopback TCP
// connection with the hub stalled: the socket fills, the writer blocks, the
// bounded queue tail-drops (counted), and every frame not dropped must
// arrive once and in order after the stall.
func TestOrderWhenTheSocketFills(t *testing.T) {
	const total = 6000
	h := newHub(t, vpnlinktest.Config{QueueFrames: 2 * total})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go h.Serve(ln)
	port := h.Attach()
	defer port.Close()
	cfg := clientCfg(t, h, "alice", "secret")
	var d net.Dialer
	cfg.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}
	c := dial(t, cfg)

	h.Stall(true)
	f := make([]byte, 1400)
	copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5})
	for i := 0; i < total; i += 10 {
		batch := make([][]byte, 10)
		for j := range batch {
			b := append([]byte(nil), f...)
			binary.BigEndian.PutUint32(b[14:], uint32(i+j))
			batch[j] = b
		}
		if err := c.WriteFrames(batch); err != nil {
			t.Fatal(err)
		}
	}
	h.Stall(false)
	// While the hub was stalled, the client's bounded queue tail-dropped
	// (counted); everything else must arrive once and in order.
	dropped := int(c.Status().DropTxQueue)
	if dropped == 0 || dropped >= total {
		t.Fatalf("%d of %d frames dropped: the stall did not fill the socket and the queue", dropped, total)
	}
	buf := make([]byte, 2048)
	last := -1
	for got := 0; got < total-dropped; got++ {
		rd := make(chan int, 1)
		go func() {
			n, err := port.ReadFrame(buf)
			if err != nil {
				n = -1
			}
			rd <- n
		}()
		var n int
		select {
		case n = <-rd:
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of %d frames arrived (%d dropped by the client)", got, total-dropped, dropped)
		}
		if n != len(f) {
			t.Fatalf("frame of %d bytes", n)
		}
		seq := int(binary.BigEndian.Uint32(buf[14:]))
		if seq <= last {
			t.Fatalf("frame %d after frame %d: order lost or duplicated", seq, last)
		}
		last = seq
	}
	st := c.Status()
	if st.FramesOut != uint64(total-dropped) || st.State != vpnlink.StateConnected {
		t.Fatalf("status %+v", st)
	}
	if port.Drops() != 0 {
		t.Fatalf("hub port dropped %d frames", port.Drops())
	}
}
