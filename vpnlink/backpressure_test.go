package vpnlink_test

import (
	"bytes"
	"testing"
	"testing/synctest"
	"time"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

// TestWriteFramesWaitsForRoom: while the link is up, a sender that outruns
// the writer waits for room instead of losing frames; a link that stops
// draining (the server stops reading) costs a bounded wait, then drops.
func TestWriteFramesWaitsForRoom(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{Timeout: 20 * time.Second})
		cfg := clientCfg(t, h, "alice", "secret")
		cfg.QueueFrames = 8
		c := dial(t, cfg)
		port := h.Attach()
		defer port.Close()

		const total = 300
		var frames [][]byte
		for i := range total {
			frames = append(frames, frame(0xff, 1, i))
		}
		got := make(chan error, 1)
		go func() {
			buf := make([]byte, 1600)
			for i := range total {
				n, err := port.ReadFrame(buf)
				if err != nil || !bytes.Equal(buf[:n], frames[i]) {
					got <- err
					t.Errorf("frame %d = %q, %v", i, buf[:n], err)
					return
				}
			}
			got <- nil
		}()
		// One call with 300 frames and a 8-frame queue, then small ones.
		if err := c.WriteFrames(frames[:200]); err != nil {
			t.Fatal(err)
		}
		for i := 200; i < total; i += 10 {
			if err := c.WriteFrames(frames[i : i+10]); err != nil {
				t.Fatal(err)
			}
		}
		st := c.Status()
		if st.DropTxQueue != 0 || st.SendStalls == 0 {
			t.Fatalf("up link: %d dropped, %d stalls; want 0 dropped, some stalls", st.DropTxQueue, st.SendStalls)
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}

		// The server stops reading: the socket fills, the writer blocks,
		// and WriteFrames drops after its bounded wait rather than hang.
		h.Stall(true)
		start := time.Now()
		for i := 0; i < 200 && c.Status().DropTxQueue == 0; i++ {
			if err := c.WriteFrames(frames); err != nil {
				t.Fatal(err)
			}
		}
		st = c.Status()
		if st.DropTxQueue == 0 || st.State != vpnlink.StateConnected {
			t.Fatalf("stalled server: %d dropped, state %v", st.DropTxQueue, st.State)
		}
		if waited := time.Since(start); waited > 5*time.Second {
			t.Fatalf("WriteFrames waited %v in all before dropping", waited)
		}
		h.Stall(false)
	})
}
