package vpnlink_test

import (
	"context"
	"testing"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

// benchPair: a client and a raw port on one in-memory hub (net.Pipe + TLS 1.3).
func benchPair(b *testing.B) (*vpnlink.Client, *vpnlinktest.Port) {
	h, err := vpnlinktest.NewHub(vpnlinktest.Config{QueueFrames: 4096})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	c, err := vpnlink.Dial(context.Background(), vpnlink.Config{Server: "hub.test:443", Hub: "DEFAULT",
		User: "alice", Password: "secret", Dial: h.Dial, CertSHA256: h.CertSHA256(), QueueFrames: 4096, RecvQueue: 4096})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	p := h.Attach()
	b.Cleanup(func() { p.Close() })
	// Teach the hub both MACs so that traffic is unicast.
	c.WriteFrames([][]byte{frame(9, 1, 0)})
	buf := make([]byte, 1600)
	p.ReadFrame(buf)
	p.WriteFrames([][]byte{frame(1, 9, 0)})
	c.ReadFrame(buf)
	return c, p
}

const window = 256

// BenchmarkClientToHub: frames/s from Client.WriteFrames through TLS and
// the hub to a port (1514-byte frames, windows of 256).
func BenchmarkClientToHub(b *testing.B) {
	c, p := benchPair(b)
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = make([]byte, 1514)
		copy(frames[i], frame(9, 1, i))
	}
	buf := make([]byte, 1600)
	b.SetBytes(1514)
	b.ReportAllocs()
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n := min(window, b.N-sent)
		for k := 0; k < n; k += len(frames) {
			c.WriteFrames(frames[:min(len(frames), n-k)])
		}
		for range n {
			if _, err := p.ReadFrame(buf); err != nil {
				b.Fatal(err)
			}
		}
		sent += n
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}

// BenchmarkHubToClient: frames/s from a port through the hub and TLS to
// Client.ReadFrame.
func BenchmarkHubToClient(b *testing.B) {
	c, p := benchPair(b)
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = make([]byte, 1514)
		copy(frames[i], frame(1, 9, i))
	}
	buf := make([]byte, 1600)
	b.SetBytes(1514)
	b.ReportAllocs()
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n := min(window, b.N-sent)
		for k := 0; k < n; k += len(frames) {
			p.WriteFrames(frames[:min(len(frames), n-k)])
		}
		for range n {
			if _, err := c.ReadFrame(buf); err != nil {
				b.Fatal(err)
			}
		}
		sent += n
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
	if st := c.Status(); st.DropRxQueue != 0 {
		b.Fatalf("client dropped %d frames", st.DropRxQueue)
	}
}

// Steady-state WriteFrames/ReadFrame must not allocate per frame.
func TestHotPathAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	h, err := vpnlinktest.NewHub(vpnlinktest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	cfg := vpnlink.Config{Server: "hub.test:443", Hub: "DEFAULT", User: "alice", Password: "secret", Dial: h.Dial, InsecureSkipVerify: true}
	a, err := vpnlink.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	f := [][]byte{frame(0xff, 1, 0)}
	allocs := testing.AllocsPerRun(1000, func() { a.WriteFrames(f) })
	if allocs > 0.05 {
		t.Fatalf("WriteFrames: %.2f allocs per call", allocs)
	}
}
