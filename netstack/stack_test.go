package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/netstack/netstacktest"
)

var (
	routerMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	hostMAC    = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
	routerPfx  = netip.MustParsePrefix("192.168.30.1/24")
	routerIP   = routerPfx.Addr()
	hostPfx    = netip.MustParsePrefix("192.168.30.10/24")
	foreign    = netip.MustParseAddr("203.0.113.5")
	foreignTCP = netip.AddrPortFrom(foreign, 80)
)

type env struct {
	st   *netstack.Stack
	host *netstacktest.Host
}

// newEnv builds router stack <-> Pipe <-> client Host. Both are closed at
// cleanup, and a goroutine leak check runs after that.
func newEnv(t testing.TB) *env {
	t.Helper()
	checkLeaks(t)
	a, b := netstacktest.Pipe()
	st, err := netstack.New(a, netstack.Config{MAC: routerMAC, Addr: routerPfx})
	if err != nil {
		t.Fatal(err)
	}
	h, err := netstacktest.NewHost(b, hostMAC, hostPfx, routerIP)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("stack close: %v", err)
		}
		h.Close()
	})
	return &env{st: st, host: h}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// checkLeaks registers a cleanup (run after the ones registered later) that
// fails the test if goroutines started during it are still running.
func checkLeaks(t testing.TB) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		var n int
		for i := 0; i < 500; i++ { // bounded: goroutine exit cannot be awaited
			n = runtime.NumGoroutine()
			if n <= before {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
	})
}

func echoTCP(t testing.TB, st *netstack.Stack) <-chan *netstack.TCPRequest {
	reqs := make(chan *netstack.TCPRequest, 16)
	st.SetTCPHandler(func(r *netstack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		reqs <- r
		io.Copy(c, c)
		c.Close()
	})
	return reqs
}

func TestTCPAcceptEcho(t *testing.T) {
	e := newEnv(t)
	reqs := echoTCP(t, e.st)
	c, err := e.host.DialTCP(ctxT(t), foreignTCP)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := <-reqs
	if r.Dst != foreignTCP || r.Src.Addr() != hostPfx.Addr() {
		t.Errorf("request %v -> %v, want %v -> %v", r.Src, r.Dst, hostPfx.Addr(), foreignTCP)
	}
	if got := c.LocalAddr().String(); got != r.Src.String() {
		t.Errorf("client local addr %s, request Src %s", got, r.Src)
	}
	msg := bytes.Repeat([]byte("acrouter"), 40000) // 320 kB: many segments
	go func() { c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
	s := e.st.Stats()
	if s.TCPRequests != 1 || s.TCPAccepted != 1 || s.FramesIn == 0 || s.FramesOut == 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestTCPHalfClose(t *testing.T) {
	e := newEnv(t)
	type result struct {
		got []byte
		err error
	}
	// serverFirst: the handler side closes its write half first.
	for _, serverFirst := range []bool{false, true} {
		name := "client-first"
		if serverFirst {
			name = "server-first"
		}
		t.Run(name, func(t *testing.T) {
			done := make(chan result, 1)
			e.st.SetTCPHandler(func(r *netstack.TCPRequest) {
				c, err := r.Accept()
				if err != nil {
					done <- result{err: err}
					return
				}
				defer c.Close()
				if serverFirst {
					c.Write([]byte("from-server"))
					if err := c.CloseWrite(); err != nil {
						done <- result{err: err}
						return
					}
				}
				got, err := io.ReadAll(c) // until the client's FIN
				if !serverFirst && err == nil {
					_, err = c.Write([]byte("after-client-fin"))
					if err == nil {
						err = c.CloseWrite()
					}
				}
				done <- result{got, err}
			})
			c, err := e.host.DialTCP(ctxT(t), foreignTCP)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tc := c.(interface{ CloseWrite() error })
			if serverFirst {
				got, err := io.ReadAll(c)
				if err != nil || string(got) != "from-server" {
					t.Fatalf("client read %q, %v", got, err)
				}
				// Our write half is still open after the server's FIN.
				if _, err := c.Write([]byte("late-data")); err != nil {
					t.Fatal(err)
				}
				tc.CloseWrite()
				r := <-done
				if r.err != nil || string(r.got) != "late-data" {
					t.Fatalf("server read %q, %v", r.got, r.err)
				}
				return
			}
			c.Write([]byte("from-client"))
			tc.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "after-client-fin" {
				t.Fatalf("client read %q, %v", got, err)
			}
			r := <-done
			if r.err != nil || string(r.got) != "from-client" {
				t.Fatalf("server read %q, %v", r.got, r.err)
			}
		})
	}
}

func TestTCPReject(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		how  netstack.Reject
		want syscall.Errno
	}{
		{netstack.RejectRST, syscall.ECONNREFUSED},
		{netstack.RejectHostUnreachable, syscall.EHOSTUNREACH},
		{netstack.RejectNetUnreachable, syscall.ENETUNREACH},
		{netstack.RejectAdminProhibited, syscall.EHOSTUNREACH},
		{netstack.RejectPortUnreachable, syscall.ECONNREFUSED},
	}
	for i, tt := range tests {
		t.Run(tt.how.String(), func(t *testing.T) {
			called := make(chan struct{}, 1)
			e.st.SetTCPHandler(func(r *netstack.TCPRequest) {
				r.Reject(tt.how)
				r.Reject(netstack.RejectRST) // second call is a no-op
				if _, err := r.Accept(); err == nil {
					t.Error("Accept after Reject succeeded")
				}
				called <- struct{}{}
			})
			before := e.st.Stats()
			_, err := e.host.DialTCP(ctxT(t), netip.AddrPortFrom(foreign, uint16(1000+i)))
			if !errors.Is(err, tt.want) {
				t.Fatalf("dial error %v, want %v", err, tt.want)
			}
			<-called
			after := e.st.Stats()
			if after.TCPRejected != before.TCPRejected+1 {
				t.Errorf("TCPRejected %d -> %d", before.TCPRejected, after.TCPRejected)
			}
			if tt.how != netstack.RejectRST && after.ICMPErrorsSent != before.ICMPErrorsSent+1 {
				t.Errorf("ICMPErrorsSent %d -> %d", before.ICMPErrorsSent, after.ICMPErrorsSent)
			}
		})
	}
}

func TestTCPNoHandlerOrForgottenRequestGetsRST(t *testing.T) {
	e := newEnv(t)
	if _, err := e.host.DialTCP(ctxT(t), foreignTCP); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("no handler: dial error %v, want ECONNREFUSED", err)
	}
	e.st.SetTCPHandler(func(r *netstack.TCPRequest) {}) // forgets to decide
	if _, err := e.host.DialTCP(ctxT(t), foreignTCP); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("forgetful handler: dial error %v, want ECONNREFUSED", err)
	}
}

func TestTCPRouterAddressNotForwarded(t *testing.T) {
	e := newEnv(t)
	e.st.SetTCPHandler(func(r *netstack.TCPRequest) {
		t.Errorf("handler called for %v", r.Dst)
		r.Reject(netstack.RejectRST)
	})
	_, err := e.host.DialTCP(ctxT(t), netip.AddrPortFrom(routerIP, 80))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial router:80 error %v, want ECONNREFUSED", err)
	}
	ln, err := e.st.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hello"))
		c.Close()
	}()
	c, err := e.host.DialTCP(ctxT(t), netip.AddrPortFrom(routerIP, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := io.ReadAll(c); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
}

func TestUDPFlowEcho(t *testing.T) {
	e := newEnv(t)
	reqs := make(chan *netstack.UDPRequest, 4)
	e.st.SetUDPHandler(func(r *netstack.UDPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		reqs <- r
		go func() {
			defer c.Close()
			buf := make([]byte, 65536)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				c.Write(buf[:n])
			}
		}()
	})
	dst := netip.AddrPortFrom(foreign, 53)
	c, err := e.host.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 5; i++ {
		msg := []byte{byte(i), 'x', 'y'}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 100)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("datagram %d: read %x, %v", i, buf[:n], err)
		}
	}
	r := <-reqs
	if r.Dst != dst || r.Src.String() != c.LocalAddr().String() {
		t.Errorf("request %v -> %v, conn %v -> %v", r.Src, r.Dst, c.LocalAddr(), dst)
	}
	if len(reqs) != 0 {
		t.Errorf("%d extra requests for one flow", len(reqs))
	}
	if s := e.st.Stats(); s.UDPRequests != 1 || s.UDPAccepted != 1 {
		t.Errorf("stats: requests %d accepted %d", s.UDPRequests, s.UDPAccepted)
	}
}

// TestUDPFragments sends a datagram larger than the MTU both ways.
func TestUDPFragments(t *testing.T) {
	e := newEnv(t)
	e.st.SetUDPHandler(func(r *netstack.UDPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 65536)
			n, err := c.Read(buf)
			if err == nil {
				c.Write(buf[:n])
			}
		}()
	})
	c, err := e.host.DialUDP(netip.AddrPortFrom(foreign, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("0123456789abcdef"), 500) // 8000 bytes: 6 fragments
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], msg) {
		t.Fatalf("read %d bytes, %v; want %d bytes back", n, err, len(msg))
	}
	// Inbound frames are counted before they are handled; the reply must
	// have been fragmented too, since 8000 bytes cannot cross a 1500-byte
	// link otherwise.
	if s := e.st.Stats(); s.FramesIn < 6 {
		t.Errorf("expected >= 6 inbound fragments, counted %d frames", s.FramesIn)
	}
}

func TestPingRouter(t *testing.T) {
	e := newEnv(t)
	e.st.SetICMPEchoHandler(func(r netstack.EchoRequest) { t.Errorf("echo handler called for %v", r.Dst) })
	if err := e.host.Ping(ctxT(t), routerIP, []byte("hello router")); err != nil {
		t.Fatal(err)
	}
}

func TestPingForeignHandled(t *testing.T) {
	e := newEnv(t)
	got := make(chan netstack.EchoRequest, 1)
	e.st.SetICMPEchoHandler(func(r netstack.EchoRequest) {
		got <- r
		if err := e.st.WriteEchoReply(r, r.Payload); err != nil {
			t.Errorf("WriteEchoReply: %v", err)
		}
	})
	payload := bytes.Repeat([]byte("p"), 3000) // fragmented both ways
	if err := e.host.Ping(ctxT(t), foreign, payload); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.Src != hostPfx.Addr() || r.Dst != foreign || !bytes.Equal(r.Payload, payload) || r.TTL == 0 {
		t.Errorf("request %v -> %v ttl %d payload %d bytes", r.Src, r.Dst, r.TTL, len(r.Payload))
	}
}

func TestListenUDP(t *testing.T) {
	e := newEnv(t)
	pc, err := e.st.ListenUDP(53)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 512)
		n, peer, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(append([]byte("re:"), buf[:n]...), peer)
	}()
	c, err := e.host.DialUDP(netip.AddrPortFrom(routerIP, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("query"))
	buf := make([]byte, 512)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "re:query" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
}

func TestProbeAddr(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	inUse, err := e.st.ProbeAddr(ctx, hostPfx.Addr())
	if err != nil || !inUse {
		t.Errorf("ProbeAddr(host) = %v, %v; want true", inUse, err)
	}
	// A free address: no answer until the deadline.
	free, cancelFree := context.WithTimeout(ctx, 300*time.Millisecond)
	inUse, err = e.st.ProbeAddr(free, netip.MustParseAddr("192.168.30.99"))
	cancelFree()
	if !errors.Is(err, context.DeadlineExceeded) || inUse {
		t.Errorf("ProbeAddr(free) = %v, %v; want false, deadline exceeded", inUse, err)
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := e.st.ProbeAddr(short, netip.MustParseAddr("192.168.30.98")); !errors.Is(err, context.Canceled) {
		t.Errorf("ProbeAddr(canceled ctx) error %v", err)
	}
	for _, bad := range []string{"192.168.30.1", "10.0.0.1", "192.168.30.255", "192.168.30.0"} {
		if _, err := e.st.ProbeAddr(ctx, netip.MustParseAddr(bad)); err == nil {
			t.Errorf("ProbeAddr(%s) accepted", bad)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	a, b := netstacktest.Pipe()
	defer a.Close()
	defer b.Close()
	for _, cfg := range []netstack.Config{
		{Addr: routerPfx},
		{MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}, Addr: routerPfx},
		{MAC: routerMAC},
		{MAC: routerMAC, Addr: netip.MustParsePrefix("fd00::1/64")},
		{MAC: routerMAC, Addr: netip.MustParsePrefix("192.168.30.0/24")},
		{MAC: routerMAC, Addr: routerPfx, MTU: 100},
		{MAC: routerMAC, Addr: routerPfx, MaxInFlightSYN: -1},
	} {
		if st, err := netstack.New(a, cfg); err == nil {
			st.Close()
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// noCloser hides the pipe's Close so that the stack cannot close the link.
type noCloser struct{ l *netstacktest.PipeLink }

func (n noCloser) ReadFrame(p []byte) (int, error) { return n.l.ReadFrame(p) }
func (n noCloser) WriteFrames(f [][]byte) error    { return n.l.WriteFrames(f) }

// TestCloseWaitsForOwnerToCloseLink: with a link the stack cannot close,
// Close returns only after the owner closes it (the read goroutine must
// end), and then everything is gone.
func TestCloseWaitsForOwnerToCloseLink(t *testing.T) {
	checkLeaks(t)
	a, b := netstacktest.Pipe()
	defer b.Close()
	st, err := netstack.New(noCloser{a}, netstack.Config{MAC: routerMAC, Addr: routerPfx})
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- st.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) before the link was closed", err)
	default:
	}
	a.Close()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestCloseWithLiveFlows: Close ends blocked handlers and open connections
// and leaves no goroutines behind (checked by newEnv's leak check).
func TestCloseWithLiveFlows(t *testing.T) {
	e := newEnv(t)
	accepted := make(chan struct{})
	handlerDone := make(chan error, 1)
	e.st.SetTCPHandler(func(r *netstack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			handlerDone <- err
			return
		}
		close(accepted)
		_, err = c.Read(make([]byte, 10)) // blocks until Close aborts the conn
		handlerDone <- err
	})
	e.st.SetUDPHandler(func(r *netstack.UDPRequest) {
		if c, err := r.Accept(); err == nil {
			go func() { c.Read(make([]byte, 10)); c.Close() }()
		}
	})
	ln, err := e.st.ListenTCP(53)
	if err != nil {
		t.Fatal(err)
	}
	go ln.Accept()
	c, err := e.host.DialTCP(ctxT(t), foreignTCP)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-accepted
	u, err := e.host.DialUDP(netip.AddrPortFrom(foreign, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.Write([]byte("q"))
	if err := e.st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-handlerDone; err == nil {
		t.Error("handler's Read succeeded after Close")
	}
	if _, err := e.st.ListenUDP(53); err == nil {
		t.Error("ListenUDP after Close succeeded")
	}
	if _, err := ln.Accept(); err == nil {
		t.Error("Accept after Close succeeded")
	}
}

// TestUDPDatagramsBeforeAccept: datagrams of a flow that arrive while the
// handler is still deciding are delivered after Accept, in order.
func TestUDPDatagramsBeforeAccept(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	got := make(chan []string, 1)
	e.st.SetUDPHandler(func(r *netstack.UDPRequest) {
		<-release
		c, err := r.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer c.Close()
		var msgs []string
		buf := make([]byte, 100)
		for len(msgs) < 3 {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := c.Read(buf)
			if err != nil {
				break
			}
			msgs = append(msgs, string(buf[:n]))
		}
		got <- msgs
	})
	c, err := e.host.DialUDP(netip.AddrPortFrom(foreign, 5000))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range []string{"one", "two", "three"} {
		c.Write([]byte(m))
	}
	// The pipe and the stack keep order: once the router has answered this
	// ping, all three datagrams have been handled.
	if err := e.host.Ping(ctxT(t), routerIP, nil); err != nil {
		t.Fatal(err)
	}
	close(release)
	if msgs := <-got; strings.Join(msgs, ",") != "one,two,three" {
		t.Fatalf("handler read %q", msgs)
	}
	if s := e.st.Stats(); s.UDPRequests != 1 {
		t.Errorf("UDPRequests = %d", s.UDPRequests)
	}
}

// TestMaxInFlightSYNCounted: SYNs over the cap are dropped by gVisor's
// forwarder, and the drop is visible in Stats.
func TestMaxInFlightSYNCounted(t *testing.T) {
	a, b := netstacktest.Pipe()
	checkLeaks(t)
	st, err := netstack.New(a, netstack.Config{MAC: routerMAC, Addr: routerPfx, MaxInFlightSYN: 1})
	if err != nil {
		t.Fatal(err)
	}
	h, err := netstacktest.NewHost(b, hostMAC, hostPfx, routerIP)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	defer st.Close()
	entered := make(chan struct{}, 4)
	release := make(chan struct{})
	st.SetTCPHandler(func(r *netstack.TCPRequest) {
		entered <- struct{}{}
		<-release
		r.Reject(netstack.RejectRST)
	})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	errs := make(chan error, 2)
	go func() { _, err := h.DialTCP(ctx, netip.AddrPortFrom(foreign, 1)); errs <- err }()
	<-entered
	go func() { _, err := h.DialTCP(ctx, netip.AddrPortFrom(foreign, 2)); errs <- err }()
	for st.Stats().TCPForwardDrops == 0 { // bounded by the SYN retransmit schedule and the test timeout
		if err := h.Ping(ctx, routerIP, nil); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	if err := <-errs; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("first dial: %v", err)
	}
	if err := <-errs; !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("second dial (retransmitted SYN after the slot freed): %v", err)
	}
}
