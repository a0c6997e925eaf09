package router

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/netstack/netstacktest"
)

// IPv6 flows from a dual-stack hub client. The client addresses virtDst6
// (a documentation address); the test dialer carries it to 127.0.0.1 and
// the ICMP hook to ::1, so the hub side is IPv6 end to end while the host
// side needs nothing but loopback.

var (
	routerPrefix6 = netip.MustParsePrefix("fd00:ac::1/64")
	virtDst6      = netip.MustParseAddr("2001:db8:100::7")
)

func newNetRouter6(tb testing.TB, cfg Config) (*Router, *netstacktest.Host, netip.Addr) {
	tb.Helper()
	a, b := netstacktest.Pipe()
	st, err := netstack.New(a, netstack.Config{MAC: routerMAC, Addr: routerPrefix, Addr6: routerPrefix6,
		RA: netstack.RAConfig{DefaultRouter: true}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	next := cfg.Dial
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr() == virtDst6 {
			addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String()
		}
		if next != nil {
			return next(ctx, network, addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	r, err := New(st, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	r.icmp.mapDst = func(a netip.Addr) netip.Addr {
		if a == virtDst6 {
			return netip.IPv6Loopback()
		}
		return a
	}
	tb.Cleanup(func() { r.Close() })
	h, err := netstacktest.NewDualStackHost(b, hostMAC, hostPrefix, routerPrefix.Addr())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	ndp, err := h.WaitNDP(ctxT(tb.(*testing.T)), func(s netstacktest.NDPState) bool { return len(s.Addrs) > 0 && len(s.DefaultRouters) > 0 })
	if err != nil {
		tb.Fatal(err)
	}
	return r, h, ndp.Addrs[0].Addr()
}

func TestNetIPv6TCPAndUDP(t *testing.T) {
	leakCheck(t)
	r, h, src := newNetRouter6(t, Config{NoDefaultDeny: true})
	dst := tcpEchoServer(t)
	c, err := h.DialTCP(ctxT(t), netip.AddrPortFrom(virtDst6, dst.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("v6 through the router "), 20000)
	go c.Write(msg)
	if got := readFull(t, c, len(msg)); !bytes.Equal(got, msg) {
		t.Fatal("echo over IPv6 differs")
	}
	flows := r.Flows()
	if len(flows) != 1 || flows[0].Client.Addr() != src || flows[0].Dest.Addr() != virtDst6 {
		t.Errorf("flows %+v, want one from %v to %v", flows, src, virtDst6)
	}

	u, err := h.DialUDP(netip.AddrPortFrom(virtDst6, udpEchoServer(t).Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, n := range []int{1, 1232, 1400} { // 1400 + 48 bytes of headers fit the 1500 MTU
		m := string(bytes.Repeat([]byte{byte(n)}, n))
		if _, err := u.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
		if got := readDatagram(t, u); got != m {
			t.Fatalf("%d-byte datagram came back as %d bytes", n, len(got))
		}
	}
	if st := r.Stats(); st.FlowsOpenUDP != 1 || st.FlowsOpenTCP != 1 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestNetIPv6DefaultDeny(t *testing.T) {
	leakCheck(t)
	r, h, _ := newNetRouter6(t, Config{})
	// The metadata service's IPv6 address: refused by the default rules
	// with an ICMPv6 administratively prohibited, never dialed.
	dialed := make(chan string, 1)
	r.cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed <- addr
		return nil, context.Canceled
	}
	// gVisor's client ignores "administratively prohibited" (Linux
	// reports it as EACCES), so the dial runs into its own deadline.
	ctx, cancel := context.WithTimeout(ctxT(t), 2*time.Second)
	defer cancel()
	if _, err := h.DialTCP(ctx, netip.MustParseAddrPort("[fd00:ec2::254]:80")); err == nil {
		t.Fatal("connection to fd00:ec2::254 succeeded")
	}
	if r.Stats().Refused["acl"] == 0 {
		t.Errorf("no ACL refusal counted: %+v", r.Stats())
	}
	if got := h.Stack().Stats().ICMP.V6.PacketsReceived.DstUnreachable.Value(); got == 0 {
		t.Error("the client got no ICMPv6 destination unreachable")
	}
	select {
	case a := <-dialed:
		t.Errorf("router dialed %s", a)
	default:
	}
}

func TestNetIPv6Ping(t *testing.T) {
	leakCheck(t)
	r, h, _ := newNetRouter6(t, Config{NoDefaultDeny: true})
	if r.icmp.mode == icmpUnavailable || r.icmp.mode == icmpRawSocket && r.icmp.raw6 == nil {
		t.Skipf("no ICMPv6 sockets on this host (mode %v, ping_group_range %s)", r.icmp.mode, pingGroupRange())
	}
	for i := range 3 {
		if err := h.Ping6(ctxT(t), virtDst6, []byte{byte(i), 6, 6, 6}); err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
	}
	// Each netstacktest ping uses a new identifier: one flow each.
	if st := r.Stats(); st.FlowsCreated != 3 || st.EchoReplies != 3 || st.EchoDropped != 0 {
		t.Errorf("Stats = %+v", st)
	}
}
