package netstack_test

import (
	"io"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
)

// BenchmarkTCPThroughput measures one TCP flow between the client Host and
// the router stack over an in-memory Pipe (both gVisor stacks share the
// CPU). upload: client -> handler; download: handler -> client.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			e := newEnv(b)
			const chunk = 64 << 10
			done := make(chan int64, 1)
			e.st.SetTCPHandler(func(r *netstack.TCPRequest) {
				c, err := r.Accept()
				if err != nil {
					done <- -1
					return
				}
				defer c.Close()
				if dir == "upload" {
					n, _ := io.Copy(io.Discard, c)
					done <- n
					return
				}
				buf := make([]byte, chunk)
				var n int64
				for i := 0; i < b.N; i++ {
					m, err := c.Write(buf)
					n += int64(m)
					if err != nil {
						break
					}
				}
				c.CloseWrite()
				done <- n
			})
			c, err := e.host.DialTCP(ctxT(b), foreignTCP)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			before := e.st.Stats()
			b.SetBytes(chunk)
			b.ResetTimer()
			start := time.Now()
			var n int64
			if dir == "upload" {
				buf := make([]byte, chunk)
				for i := 0; i < b.N; i++ {
					m, err := c.Write(buf)
					n += int64(m)
					if err != nil {
						b.Fatal(err)
					}
				}
				c.(interface{ CloseWrite() error }).CloseWrite()
				if got := <-done; got != n {
					b.Fatalf("handler received %d of %d bytes", got, n)
				}
			} else {
				n, err = io.Copy(io.Discard, c)
				if err != nil {
					b.Fatal(err)
				}
				if sent := <-done; sent != n {
					b.Fatalf("client received %d of %d bytes", n, sent)
				}
			}
			el := time.Since(start).Seconds()
			b.StopTimer()
			after := e.st.Stats()
			frames := float64(after.FramesIn - before.FramesIn + after.FramesOut - before.FramesOut)
			b.ReportMetric(frames/el, "frames/s")
			b.ReportMetric(float64(n)*8/el/1e6, "Mbit/s")
			b.ReportMetric(float64(after.TCPRetransmits-before.TCPRetransmits), "retransmits")
		})
	}
}

// BenchmarkTCPRequestResponse: 64-byte request/response on one connection
// between the client Host and an echo handler (both stacks in-process over
// a Pipe): the per-packet latency of the stack and its link endpoint.
func BenchmarkTCPRequestResponse(b *testing.B) {
	e := newEnv(b)
	e.st.SetTCPHandler(func(r *netstack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	})
	c, err := e.host.DialTCP(ctxT(b), foreignTCP)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg, resp := make([]byte, 64), make([]byte, 64)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			b.Fatal(err)
		}
	}
}
