//go:build linux

package router

import (
	"bytes"
	"net"
	"runtime"
	"strings"
	"testing"
)

// copyGoroutines counts goroutines running a flow copy (tcpCopy.run).
func copyGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "router.(*tcpCopy).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// idleFlows opens n TCP and n UDP flows over real sockets on both sides
// (the fake requests use loopback sockets for the client side, so every
// copy reads a host socket) and moves one message each way on each.
func idleFlows(t *testing.T, r *Router, n int) (tcp []*net.TCPConn, udp []*net.UDPConn) {
	t.Helper()
	tdst, udst := tcpEchoServer(t), udpEchoServer(t)
	for i := range n {
		c, req := startTCP(t, r, clientPort(i), tdst)
		if got := req.wait(t); got != "accept" {
			t.Fatalf("TCP request: %s", got)
		}
		msg := []byte("tcp message")
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if got := readFull(t, c, len(msg)); !bytes.Equal(got, msg) {
			t.Fatalf("TCP echo %q", got)
		}
		tcp = append(tcp, c)
		u, ureq := startUDP(t, r, clientPort(i), udst)
		if got := ureq.wait(t); got != "accept" {
			t.Fatalf("UDP request: %s", got)
		}
		udpRoundTrip(t, u, []byte("udp message"))
		udp = append(udp, u)
	}
	return tcp, udp
}

// TestIdleFlowsHoldNoGoroutine: once idle, neither direction of a TCP or
// UDP flow keeps a goroutine (the host poller watches the sockets), and
// data wakes them again.
func TestIdleFlowsHoldNoGoroutine(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	const n = 10
	tcp, udp := idleFlows(t, r, n)
	waitFor(t, "idle copies to give up their goroutines", func() bool { return copyGoroutines() == 0 })
	for i := range n {
		msg := bytes.Repeat([]byte{byte(i)}, 100000) // several reads and writes
		go tcp[i].Write(msg)
		if got := readFull(t, tcp[i], len(msg)); !bytes.Equal(got, msg) {
			t.Fatalf("flow %d: TCP echo after idle differs", i)
		}
		udpRoundTrip(t, udp[i], []byte("again"))
	}
	waitFor(t, "copies to go idle again", func() bool { return copyGoroutines() == 0 })
}

// TestHostPollerClosedFallsBack: if the host poller stops, armed copies go
// back to waiting in goroutines and the flows keep working.
func TestHostPollerClosedFallsBack(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	const n = 4
	tcp, udp := idleFlows(t, r, n)
	p := r.hostPoller()
	if p == nil {
		t.Fatal("no host poller on Linux")
	}
	p.close()
	// Every copy of a flow with host sockets on both ends waits in a
	// goroutine now.
	waitFor(t, "copies to wait in goroutines", func() bool { return copyGoroutines() == 4*n })
	for i := range n {
		msg := []byte("after the poller")
		if _, err := tcp[i].Write(msg); err != nil {
			t.Fatal(err)
		}
		if got := readFull(t, tcp[i], len(msg)); !bytes.Equal(got, msg) {
			t.Fatalf("flow %d: TCP echo %q", i, got)
		}
		udpRoundTrip(t, udp[i], []byte("after the poller"))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.FlowsOpen != 0 || st.FlowsClosed != 2*n {
		t.Fatalf("after Close: %+v", st)
	}
}
