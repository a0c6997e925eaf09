package router

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"
)

// These tests run in a synctest bubble with in-memory pipes instead of
// sockets, so that idle timeouts are checked on the fake clock.

// pipeTCPConn gives a net.Pipe end the netstack.TCPConn half-close methods
// (as no-ops: pipes cannot half-close).
type pipeTCPConn struct{ net.Conn }

func (pipeTCPConn) CloseWrite() error { return nil }
func (pipeTCPConn) CloseRead() error  { return nil }

// pipeDialer connects every dial to a pipe whose far end it hands to the
// test on servers.
type pipeDialer struct{ servers chan net.Conn }

func newPipeDialer() *pipeDialer { return &pipeDialer{servers: make(chan net.Conn, 16)} }

func (p *pipeDialer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	a, b := net.Pipe()
	p.servers <- b
	return a, nil
}

// pipeFlow starts a TCP or UDP flow over pipes and returns the client's and
// the server's ends.
func pipeFlow(t *testing.T, r *Router, pd *pipeDialer, p Proto, src, dst netip.AddrPort) (client, server net.Conn) {
	t.Helper()
	virt, client := net.Pipe()
	t.Cleanup(func() { virt.Close(); client.Close() })
	var got string
	if p == ProtoTCP {
		req := newFakeTCPReq(pipeTCPConn{virt})
		go r.handleTCP(src, dst, req)
		got = req.wait(t)
	} else {
		req := newFakeUDPReq(virt)
		go r.handleUDP(src, dst, req)
		got = req.wait(t)
	}
	if got != "accept" {
		t.Fatalf("%v flow to %v: %s", p, dst, got)
	}
	server = <-pd.servers
	t.Cleanup(func() { server.Close() })
	return client, server
}

// exchange sends msg from a to b through the router.
func exchange(t *testing.T, a, b net.Conn, msg string) {
	t.Helper()
	go a.Write([]byte(msg))
	buf := make([]byte, len(msg))
	if _, err := b.Read(buf); err != nil || string(buf) != msg {
		t.Fatalf("got %q, %v; want %q", buf, err, msg)
	}
}

func flowDests(r *Router) map[netip.AddrPort]bool {
	m := make(map[netip.AddrPort]bool)
	for _, f := range r.Flows() {
		m[f.Dest] = true
	}
	return m
}

func TestUDPIdleTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pd := newPipeDialer()
		r := newTestRouter(t, Config{NoDefaultDeny: true, Dial: pd.Dial}, nil)
		dns := netip.MustParseAddrPort("198.51.100.1:53")
		other := netip.MustParseAddrPort("198.51.100.1:5000")
		c1, s1 := pipeFlow(t, r, pd, ProtoUDP, clientPort(1), dns)
		c2, s2 := pipeFlow(t, r, pd, ProtoUDP, clientPort(2), other)
		exchange(t, c1, s1, "q")
		exchange(t, s1, c1, "a")
		exchange(t, c2, s2, "x")

		time.Sleep(DefaultDNSIdleTimeout - time.Second)
		synctest.Wait()
		if d := flowDests(r); !d[dns] || !d[other] {
			t.Fatalf("before the DNS timeout: %v", d)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if d := flowDests(r); d[dns] || !d[other] {
			t.Fatalf("after the DNS timeout: %v", d)
		}
		// Activity re-arms the timer: 50 s after the last datagram, send
		// another; the flow must then live until 60 s after that one.
		time.Sleep(50*time.Second - DefaultDNSIdleTimeout)
		exchange(t, s2, c2, "y")
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if !flowDests(r)[other] {
			t.Fatal("UDP flow expired though it was active 59 s ago")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if st := r.Stats(); st.FlowsOpen != 0 || st.FlowsClosed != 2 {
			t.Fatalf("after the UDP timeout: %+v", st)
		}
		// The client's side of an expired flow is closed.
		if _, err := c2.Read(make([]byte, 1)); err == nil {
			t.Fatal("client pipe still open")
		}
	})
}

func TestTCPIdleTimerRearms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pd := newPipeDialer()
		r := newTestRouter(t, Config{NoDefaultDeny: true, Dial: pd.Dial}, nil)
		c, s := pipeFlow(t, r, pd, ProtoTCP, testClient, netip.MustParseAddrPort("198.51.100.1:80"))
		for range 3 {
			time.Sleep(20 * time.Minute)
			exchange(t, c, s, "keep")
		}
		time.Sleep(29 * time.Minute)
		synctest.Wait()
		if n := r.Stats().FlowsOpen; n != 1 {
			t.Fatalf("flow gone after 29 min idle")
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if st := r.Stats(); st.FlowsOpen != 0 || st.FlowsClosed != 1 {
			t.Fatalf("after 31 min idle: %+v", st)
		}
	})
}

func TestEvictIdleUDPAtSessionCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pd := newPipeDialer()
		r := newTestRouter(t, Config{NoDefaultDeny: true, MaxSessions: 2, MaxSessionsPerClient: 100, Dial: pd.Dial}, nil)
		udpDst := netip.MustParseAddrPort("198.51.100.1:5000")
		cu, su := pipeFlow(t, r, pd, ProtoUDP, clientPort(1), udpDst)
		exchange(t, cu, su, "u")
		pipeFlow(t, r, pd, ProtoTCP, clientPort(2), netip.MustParseAddrPort("198.51.100.1:80"))

		// At the cap with a UDP flow active just now: refused.
		virt, _ := net.Pipe()
		req := newFakeTCPReq(pipeTCPConn{virt})
		go r.handleTCP(clientPort(3), netip.MustParseAddrPort("198.51.100.2:80"), req)
		if got := req.wait(t); got != "rst" {
			t.Fatalf("at cap with no idle UDP flow: %s", got)
		}
		// Once the UDP flow has been idle a while, a new flow evicts it.
		time.Sleep(2 * time.Second)
		pipeFlow(t, r, pd, ProtoTCP, clientPort(4), netip.MustParseAddrPort("198.51.100.3:80"))
		synctest.Wait()
		st := r.Stats()
		if st.Evicted != 1 || st.Refused["session-limit"] != 1 || st.FlowsOpenTCP != 2 || st.FlowsOpenUDP != 0 {
			t.Fatalf("Stats = %+v", st)
		}
		if _, err := cu.Read(make([]byte, 1)); err == nil {
			t.Fatal("evicted flow's client pipe still open")
		}
	})
}

// TestStreamReaderModes checks that streamReader loses no data across its
// small → pool buffer → (idle) → small transitions and gives the pool
// buffer back when idle.
func TestStreamReaderModes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		sr := &streamReader{c: b, pool: &tcpBufPool, small: make([]byte, smallReadSize)}
		defer sr.free()
		want := make([]byte, 0, 3*100_000)
		var got []byte
		for burst := range 3 {
			msg := make([]byte, 100_000)
			for i := range msg {
				msg[i] = byte(i*7 + burst)
			}
			want = append(want, msg...)
			go a.Write(msg)
			for len(got) < len(want) {
				data, release, err := sr.read()
				if err != nil {
					t.Fatalf("burst %d: %v", burst, err)
				}
				got = append(got, data...)
				release()
			}
			if sr.big == nil {
				t.Fatalf("burst %d: still on the small buffer while data flows", burst)
			}
			// Idle for longer than bigReadIdle: the next read times out
			// internally, returns nothing and drops the pool buffer.
			time.Sleep(2 * bigReadIdle)
			data, release, err := sr.read()
			release()
			if err != nil || len(data) != 0 || sr.big != nil {
				t.Fatalf("burst %d idle read: %d bytes, %v, big held %v", burst, len(data), err, sr.big != nil)
			}
		}
		if string(got) != string(want) {
			t.Fatal("data differs after mode changes")
		}
	})
}
