package router

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"
)

// startUDP runs handleUDP for a new fake request and returns the client's
// socket and the request.
func startUDP(t *testing.T, r *Router, src, dst netip.AddrPort) (*net.UDPConn, *fakeUDPReq) {
	t.Helper()
	virt, client := udpPair(t)
	req := newFakeUDPReq(virt)
	go r.handleUDP(src, dst, req)
	return client, req
}

func udpRoundTrip(t *testing.T, c *net.UDPConn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write %d bytes: %v", len(msg), err)
	}
	c.SetReadDeadline(time.Now().Add(waitLimit))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read reply to %d bytes: %v", len(msg), err)
	}
	if !bytes.Equal(buf[:n], msg) {
		t.Fatalf("reply of %d bytes differs from the %d sent", n, len(msg))
	}
}

func TestUDPEchoLargeDatagrams(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	dst := udpEchoServer(t)
	client, req := startUDP(t, r, testClient, dst)
	if got := req.wait(t); got != "accept" {
		t.Fatalf("request: %s", got)
	}
	big := bytes.Repeat([]byte{0xa5, 0x5a, 0x01}, 65507/3+1)[:65507] // largest IPv4 UDP payload
	for _, n := range []int{1, 512, 1472, 9000, 65507} {
		udpRoundTrip(t, client, big[:n])
	}
	udpRoundTrip(t, client, nil) // empty datagrams are datagrams too
	fl := r.Flows()
	want := uint64(1 + 512 + 1472 + 9000 + 65507)
	if len(fl) != 1 || fl[0].Proto != ProtoUDP || fl[0].BytesOut != want || fl[0].BytesIn != want || fl[0].PacketsOut != 6 {
		t.Fatalf("Flows() = %+v", fl)
	}
}

func TestUDPDefaultACLDeniesLoopback(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{}, nil)
	_, req := startUDP(t, r, testClient, udpEchoServer(t))
	if got := req.wait(t); got != "admin-prohibited" {
		t.Fatalf("loopback destination: %s", got)
	}
	if n := r.Stats().Refused["acl"]; n != 1 {
		t.Errorf("acl refusals %d", n)
	}
}

func TestUDPPortUnreachableKeepsFlow(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close() // nobody listens: the host answers ICMP port unreachable
	client, req := startUDP(t, r, testClient, dst)
	req.wait(t)
	for range 3 {
		client.Write([]byte("anyone?"))
	}
	waitFor(t, "3 datagrams forwarded or refused", func() bool {
		fl := r.Flows()
		return len(fl) == 1 && fl[0].PacketsOut >= 2
	})
	// The flow survives the ECONNREFUSED reports; a server that appears now
	// gets the next datagram.
	pc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(dst))
	if err != nil {
		t.Skipf("port taken again: %v", err)
	}
	defer pc.Close()
	client.Write([]byte("now?"))
	pc.SetReadDeadline(time.Now().Add(waitLimit))
	buf := make([]byte, 100)
	for range 4 { // a late "anyone?" may arrive first
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("server read: %v", err)
		}
		if string(buf[:n]) == "now?" {
			return
		}
	}
	t.Fatal(`server never got "now?"`)
}

func TestUDPManyFlowsAndClose(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	dst := udpEchoServer(t)
	var clients []*net.UDPConn
	for i := range 20 {
		c, req := startUDP(t, r, clientPort(i), dst)
		if got := req.wait(t); got != "accept" {
			t.Fatal(got)
		}
		udpRoundTrip(t, c, []byte{byte(i)})
		clients = append(clients, c)
	}
	if st := r.Stats(); st.FlowsOpenUDP != 20 || st.PacketsIn != 20 {
		t.Fatalf("Stats = %+v", st)
	}
	r.Close()
	if st := r.Stats(); st.FlowsOpen != 0 || st.FlowsClosed != 20 {
		t.Fatalf("after Close: %+v", st)
	}
}
