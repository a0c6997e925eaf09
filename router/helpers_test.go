package router

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
)

// waitLimit bounds every wait in these tests.
const waitLimit = 10 * time.Second

// leakCheck fails the test if goroutines started during it are still
// running (polled, bounded) when it ends. Register it first so that it runs
// after every other cleanup.
func leakCheck(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(waitLimit)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
				return
			}
			runtime.Gosched()
			time.Sleep(10 * time.Millisecond) // polling a count, bounded by deadline
		}
	})
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(t *testing.T) (*slog.Logger, *syncBuffer) {
	var buf syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("router log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

// newTestRouter builds a Router without a stack (handlers are driven
// directly) and closes it at cleanup.
func newTestRouter(t *testing.T, cfg Config, echo echoWriter) *Router {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger, _ = testLogger(t)
	}
	r, err := newRouter(cfg, echo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// fakeTCPReq stands in for *netstack.TCPRequest: Accept hands out conn.
type fakeTCPReq struct {
	conn      netstack.TCPConn
	acceptErr error
	result    chan string // "accept" or the Reject kind
}

func newFakeTCPReq(conn netstack.TCPConn) *fakeTCPReq {
	return &fakeTCPReq{conn: conn, result: make(chan string, 1)}
}

func (q *fakeTCPReq) Accept() (netstack.TCPConn, error) {
	q.result <- "accept"
	if q.acceptErr != nil {
		return nil, q.acceptErr
	}
	return q.conn, nil
}

func (q *fakeTCPReq) Reject(how netstack.Reject) { q.result <- how.String() }

func (q *fakeTCPReq) wait(t *testing.T) string {
	t.Helper()
	select {
	case s := <-q.result:
		return s
	case <-time.After(waitLimit):
		t.Fatal("request neither accepted nor rejected")
		return ""
	}
}

type fakeUDPReq struct {
	conn   net.Conn
	result chan string
}

func newFakeUDPReq(conn net.Conn) *fakeUDPReq {
	return &fakeUDPReq{conn: conn, result: make(chan string, 1)}
}

func (q *fakeUDPReq) Accept() (net.Conn, error) {
	q.result <- "accept"
	return q.conn, nil
}

func (q *fakeUDPReq) Reject(how netstack.Reject) { q.result <- how.String() }

func (q *fakeUDPReq) wait(t *testing.T) string {
	t.Helper()
	select {
	case s := <-q.result:
		return s
	case <-time.After(waitLimit):
		t.Fatal("request neither accepted nor rejected")
		return ""
	}
}

// tcpPair returns two connected loopback TCP connections: the first plays
// the router's accepted (virtual) side, the second the hub client.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Cleanup(func() { a.c.Close(); b.Close() })
	return a.c.(*net.TCPConn), b.(*net.TCPConn)
}

// udpPair returns two loopback UDP sockets connected to each other.
func udpPair(t *testing.T) (*net.UDPConn, *net.UDPConn) {
	t.Helper()
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := net.DialUDP("udp", nil, a.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a, err = net.DialUDP("udp", a.LocalAddr().(*net.UDPAddr), b.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// tcpServer runs handle for every connection to a 127.0.0.1 listener until
// cleanup, which closes everything and waits.
func tcpServer(t *testing.T, handle func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// tcpEchoServer echoes until EOF, then half-closes.
func tcpEchoServer(t *testing.T) netip.AddrPort {
	return tcpServer(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
}

// udpEchoServer echoes every datagram until cleanup.
func udpEchoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	})
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// closedPort returns a loopback TCP port nobody listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

// hangDialer blocks every dial to a destination in hang until the dial's
// context ends, and dials everything else for real. started receives one
// value per hanging dial.
type hangDialer struct {
	hang    map[string]bool
	started chan string
}

func (h *hangDialer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if h.hang[addr] {
		h.started <- addr
		<-ctx.Done()
		return nil, ctx.Err()
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// waitStarted waits (bounded) until a hanging dial has begun.
func (h *hangDialer) waitStarted(t *testing.T) {
	t.Helper()
	select {
	case <-h.started:
	case <-time.After(waitLimit):
		t.Fatal("the hanging dial did not start")
	}
}

// waitFor polls cond (bounded) for state that has no channel to await,
// such as counters updated by the router's goroutines.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling, bounded by deadline
	}
}

func readFull(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLimit))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitLimit))
	var b [1]byte
	n, err := c.Read(b[:])
	if n != 0 || err != io.EOF {
		t.Fatalf("read = %d, %v; want EOF", n, err)
	}
}
