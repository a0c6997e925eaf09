package netstack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/netstack/netstacktest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var (
	routerPfx6 = netip.MustParsePrefix("fd00:ac::1/64")
	routerIP6  = routerPfx6.Addr()
	routerLL   = netip.MustParseAddr("fe80::ff:fe00:1") // EUI-64 of routerMAC 02:00:00:00:00:01
	foreign6   = netip.MustParseAddr("2001:db8:77::5")
	hostIP6    = netip.MustParseAddr("fd00:ac::10")
	hostLL     = netip.MustParseAddr("fe80::ff:fe00:10")
)

func v6Config() netstack.Config {
	return netstack.Config{MAC: routerMAC, Addr: routerPfx, Addr6: routerPfx6, RA: netstack.RAConfig{
		DefaultRouter: true, OtherConfig: true,
		RDNSS: []netip.Addr{routerIP6}, DNSSL: []string{"lan.example"},
	}}
}

// newEnv6 is newEnv with IPv6 on both sides; it waits until the host has
// configured itself from the router's advertisements.
func newEnv6(t testing.TB, cfg netstack.Config) (*env, netstacktest.NDPState) {
	t.Helper()
	checkLeaks(t)
	a, b := netstacktest.Pipe()
	st, err := netstack.New(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := netstacktest.NewDualStackHost(b, hostMAC, hostPfx, routerIP)
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
	ndp, err := h.WaitNDP(ctxT(t), func(s netstacktest.NDPState) bool {
		return len(s.Addrs) > 0 && (len(s.DefaultRouters) > 0 || !cfg.RA.DefaultRouter) && (len(s.RDNSS) > 0 || len(cfg.RA.RDNSS) == 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	return &env{st: st, host: h}, ndp
}

func TestIPv6AutoconfigurationFromRA(t *testing.T) {
	e, ndp := newEnv6(t, v6Config())
	if len(ndp.Addrs) != 1 || !routerPfx6.Masked().Contains(ndp.Addrs[0].Addr()) || ndp.Addrs[0].Bits() != 64 {
		t.Errorf("SLAAC addresses %v, want one in %v", ndp.Addrs, routerPfx6.Masked())
	}
	if !slices.Equal(ndp.DefaultRouters, []netip.Addr{routerLL}) {
		t.Errorf("default routers %v, want [%v] (the router's link-local address)", ndp.DefaultRouters, routerLL)
	}
	if !slices.Contains(ndp.OnLinkPrefixes, routerPfx6.Masked()) {
		t.Errorf("on-link prefixes %v, want %v", ndp.OnLinkPrefixes, routerPfx6.Masked())
	}
	if !slices.Equal(ndp.RDNSS, []netip.Addr{routerIP6}) || !slices.Equal(ndp.DNSSL, []string{"lan.example"}) {
		t.Errorf("RDNSS %v DNSSL %v", ndp.RDNSS, ndp.DNSSL)
	}
	if ndp.DHCPv6 != "other-config" {
		t.Errorf("DHCPv6 mode %q, want other-config (O flag)", ndp.DHCPv6)
	}
	if got := e.st.LinkLocal6(); got != routerLL {
		t.Errorf("LinkLocal6 %v, want %v", got, routerLL)
	}
	if s := e.st.Stats(); s.RAsSent == 0 {
		t.Errorf("RAsSent 0 after the host configured itself: %+v", s)
	}
}

func TestIPv6NoDefaultRouter(t *testing.T) {
	cfg := v6Config()
	cfg.RA.DefaultRouter = false
	_, ndp := newEnv6(t, cfg)
	if len(ndp.DefaultRouters) != 0 {
		t.Errorf("default routers %v with DefaultRouter false", ndp.DefaultRouters)
	}
}

func TestIPv6TCPFlowAndPing(t *testing.T) {
	e, ndp := newEnv6(t, v6Config())
	src := ndp.Addrs[0].Addr()
	reqs := echoTCP(t, e.st)
	dst := netip.AddrPortFrom(foreign6, 443)
	c, err := e.host.DialTCP(ctxT(t), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := <-reqs
	if r.Dst != dst || r.Src.Addr() != src {
		t.Errorf("request %v -> %v, want %v -> %v", r.Src, r.Dst, src, dst)
	}
	msg := bytes.Repeat([]byte("acrouter6"), 30000)
	go func() { c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo over IPv6: %v", err)
	}

	// Pings: the router's own addresses are answered by the stack, a
	// foreign address only by the handler.
	echo := make(chan netstack.EchoRequest, 1)
	e.st.SetICMPEchoHandler(func(r netstack.EchoRequest) {
		echo <- r
		if err := e.st.WriteEchoReply(r, r.Payload); err != nil {
			t.Errorf("WriteEchoReply: %v", err)
		}
	})
	for _, a := range []netip.Addr{routerIP6, routerLL} {
		if err := e.host.Ping6(ctxT(t), a, []byte("router")); err != nil {
			t.Errorf("ping %v: %v", a, err)
		}
	}
	select {
	case r := <-echo:
		t.Errorf("echo handler saw a ping to the router: %v", r.Dst)
	default:
	}
	if err := e.host.Ping6(ctxT(t), foreign6, []byte("foreign")); err != nil {
		t.Fatal(err)
	}
	if r := <-echo; r.Src != src || r.Dst != foreign6 || string(r.Payload) != "foreign" || r.TTL == 0 {
		t.Errorf("echo request %+v", r)
	}
}

func TestIPv6UDPFlowAndListen(t *testing.T) {
	e, ndp := newEnv6(t, v6Config())
	e.st.SetUDPHandler(func(r *netstack.UDPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer c.Close()
		buf := make([]byte, 2048)
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		c.Write(append([]byte(r.Src.Addr().String()+" "), buf[:n]...))
	})
	c, err := e.host.DialUDP(netip.AddrPortFrom(foreign6, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if want := ndp.Addrs[0].Addr().String() + " q"; err != nil || string(buf[:n]) != want {
		t.Fatalf("UDP reply %q %v, want %q", buf[:n], err, want)
	}

	// A socket on the router's IPv6 address (the DNS redirector's).
	pc, err := e.st.ListenUDP6(5353)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		b := make([]byte, 512)
		n, from, err := pc.ReadFrom(b)
		if err == nil {
			pc.WriteTo(b[:n], from)
		}
	}()
	d, err := e.host.DialUDP(netip.AddrPortFrom(routerIP6, 5353))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.Write([]byte("to the router"))
	if n, err := d.Read(buf); err != nil || string(buf[:n]) != "to the router" {
		t.Fatalf("router socket reply %q %v", buf[:n], err)
	}
}

// ---- raw NDP ----

func ip6Packet(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, hops uint8, payload []byte) []byte {
	p := make([]byte, header.IPv6MinimumSize+len(payload))
	header.IPv6(p).Encode(&header.IPv6Fields{PayloadLength: uint16(len(payload)), TransportProtocol: proto, HopLimit: hops,
		SrcAddr: tcpip.AddrFrom16(src.As16()), DstAddr: tcpip.AddrFrom16(dst.As16())})
	copy(p[header.IPv6MinimumSize:], payload)
	return p
}

func icmp6Frame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, msg []byte) []byte {
	xsum := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, tcpip.AddrFrom16(src.As16()), tcpip.AddrFrom16(dst.As16()), uint16(len(msg)))
	binary.BigEndian.PutUint16(msg[2:], ^checksum.Checksum(msg, xsum))
	return ethFrame(dstMAC, srcMAC, header.IPv6ProtocolNumber, ip6Packet(src, dst, header.ICMPv6ProtocolNumber, 255, msg))
}

// ndpMsg builds an NS (135) or NA (136) for target with a link-layer
// address option (type 1 source, 2 target) carrying mac.
func ndpMsg(typ byte, flags byte, target netip.Addr, opt byte, mac net.HardwareAddr) []byte {
	m := make([]byte, 32)
	m[0] = typ
	m[4] = flags
	t := target.As16()
	copy(m[8:24], t[:])
	m[24], m[25] = opt, 1
	copy(m[26:], mac)
	return m
}

func solicitedNode(a netip.Addr) (netip.Addr, net.HardwareAddr) {
	b := a.As16()
	sn := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
	return sn, net.HardwareAddr{0x33, 0x33, 0xff, b[13], b[14], b[15]}
}

func icmp6Of(f []byte) (header.IPv6, []byte, bool) {
	if len(f) < header.EthernetMinimumSize+header.IPv6MinimumSize || header.Ethernet(f).Type() != header.IPv6ProtocolNumber {
		return nil, nil, false
	}
	ip := header.IPv6(f[header.EthernetMinimumSize:])
	if ip.TransportProtocol() != header.ICMPv6ProtocolNumber || len(ip.Payload()) < 4 {
		return nil, nil, false
	}
	return ip, ip.Payload(), true
}

func TestIPv6NeighborSolicitationOnlyForOwnAddresses(t *testing.T) {
	r := newRaw(t, netstack.Config{Addr6: routerPfx6})
	other := netip.MustParseAddr("fd00:ac::99")
	// A solicitation for another client's address (DAD or resolution)
	// must not be answered; one for the router's address must.
	sn, snMAC := solicitedNode(other)
	r.send(icmp6Frame(snMAC, hostMAC, hostLL, sn, ndpMsg(135, 0, other, 1, hostMAC)))
	r.send(icmp6Frame(routerMAC, hostMAC, hostLL, other, ndpMsg(135, 0, other, 1, hostMAC))) // unicast to our MAC
	sn, snMAC = solicitedNode(routerIP6)
	r.send(icmp6Frame(snMAC, hostMAC, hostLL, sn, ndpMsg(135, 0, routerIP6, 1, hostMAC)))
	hit, before := r.expect("neighbor advertisement", func(f []byte) bool {
		_, m, ok := icmp6Of(f)
		return ok && m[0] == 136
	})
	_, m, _ := icmp6Of(hit)
	if got := netip.AddrFrom16([16]byte(m[8:24])); got != routerIP6 {
		t.Fatalf("advertisement for %v, want only %v (frames before: %d)", got, routerIP6, len(before))
	}
	if !bytes.Equal(m[26:32], routerMAC) {
		t.Errorf("advertised MAC %x", m[26:32])
	}
	if s := r.st.Stats(); s.DropNDPOther != 1 || s.DropNotForUs != 1 {
		t.Errorf("DropNDPOther %d DropNotForUs %d, want 1 each (unicast and multicast solicitation for another host)", s.DropNDPOther, s.DropNotForUs)
	}
}

func TestIPv6ClaimOfRouterAddressDefended(t *testing.T) {
	r := newRaw(t, netstack.Config{Addr6: routerPfx6})
	evil := net.HardwareAddr{0x02, 0xee, 0, 0, 0, 1}
	allNodes := netip.MustParseAddr("ff02::1")
	r.send(icmp6Frame(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, evil, netip.MustParseAddr("fe80::ee"), allNodes, ndpMsg(136, 0x20, routerIP6, 2, evil)))
	hit, _ := r.expect("defending advertisement", func(f []byte) bool {
		_, m, ok := icmp6Of(f)
		return ok && m[0] == 136 && netip.AddrFrom16([16]byte(m[8:24])) == routerIP6
	})
	ip, m, _ := icmp6Of(hit)
	if m[4]&0x20 == 0 || !bytes.Equal(m[26:32], routerMAC) || ip.DestinationAddress() != header.IPv6AllNodesMulticastAddress {
		t.Errorf("announcement flags %#x mac %x to %v", m[4], m[26:32], ip.DestinationAddress())
	}
	if s := r.st.Stats(); s.DropNDPConflict != 1 {
		t.Errorf("DropNDPConflict %d, want 1", s.DropNDPConflict)
	}
}

func TestIPv6RouterSolicitationAnswered(t *testing.T) {
	cfg := v6Config()
	cfg.RA.Managed = true
	r := newRaw(t, cfg)
	rs := make([]byte, 16)
	rs[0] = 133
	rs[8], rs[9] = 1, 1
	copy(rs[10:], hostMAC)
	allRouters := netip.MustParseAddr("ff02::2")
	r.send(icmp6Frame(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 2}, hostMAC, hostLL, allRouters, rs))
	hit, _ := r.expect("solicited router advertisement", func(f []byte) bool {
		ip, m, ok := icmp6Of(f)
		return ok && m[0] == 134 && ip.DestinationAddress() == tcpip.AddrFrom16(hostLL.As16())
	})
	if got := header.Ethernet(hit).DestinationAddress(); got != tcpip.LinkAddress(hostMAC) {
		t.Errorf("solicited RA to MAC %v, want the solicitor's", got)
	}
	ip, m, _ := icmp6Of(hit)
	if ip.HopLimit() != 255 || ip.SourceAddress() != tcpip.AddrFrom16(routerLL.As16()) {
		t.Errorf("RA hop limit %d from %v", ip.HopLimit(), ip.SourceAddress())
	}
	xsum := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(m)))
	if checksum.Checksum(m, xsum) != 0xffff {
		t.Errorf("RA checksum invalid")
	}
	if m[5]&0xc0 != 0xc0 || binary.BigEndian.Uint16(m[6:]) != 1800 {
		t.Errorf("RA flags %#x router lifetime %d, want M+O and 1800", m[5], binary.BigEndian.Uint16(m[6:]))
	}
	// Walk the options.
	seen := map[byte][]byte{}
	for o := m[16:]; len(o) >= 8; {
		n := int(o[1]) * 8
		if n == 0 || n > len(o) {
			t.Fatalf("bad option length at %x", o)
		}
		seen[o[0]] = o[:n]
		o = o[n:]
	}
	if p := seen[3]; len(p) != 32 || p[2] != 64 || p[3] != 0x80 || !bytes.Equal(p[16:32], routerPfx6.Masked().Addr().AsSlice()) {
		t.Errorf("prefix option %x (want /64, on-link, not autonomous with M)", p)
	}
	if d := seen[25]; len(d) != 24 || !bytes.Equal(d[8:24], routerIP6.AsSlice()) {
		t.Errorf("RDNSS option %x", d)
	}
	if d := seen[31]; len(d) == 0 || !bytes.Contains(d, []byte("\x03lan\x07example\x00")) {
		t.Errorf("DNSSL option %x", d)
	}
	if l := seen[1]; len(l) != 8 || !bytes.Equal(l[2:], routerMAC) {
		t.Errorf("source link-layer option %x", l)
	}
	if mtu := seen[5]; len(mtu) != 8 || binary.BigEndian.Uint32(mtu[4:]) != 1500 {
		t.Errorf("MTU option %x", mtu)
	}
	if s := r.st.Stats(); s.RouterSolicits != 1 {
		t.Errorf("RouterSolicits %d", s.RouterSolicits)
	}
}

func TestIPv6NeighborSolicitationFromRouterAddress(t *testing.T) {
	// A reply from a foreign address needs the client's MAC: the stack's
	// solicitation must come from the router's link-local address, not
	// from the foreign one.
	r := newRaw(t, netstack.Config{Addr6: routerPfx6})
	r.st.SetUDPHandler(func(q *netstack.UDPRequest) {
		c, err := q.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("reply"))
		c.Close()
	})
	u := make([]byte, 9)
	binary.BigEndian.PutUint16(u[0:], 4000)
	binary.BigEndian.PutUint16(u[2:], 53)
	binary.BigEndian.PutUint16(u[4:], 9)
	u[8] = 'q'
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpip.AddrFrom16(hostIP6.As16()), tcpip.AddrFrom16(foreign6.As16()), 9)
	binary.BigEndian.PutUint16(u[6:], ^checksum.Checksum(u, xsum))
	r.send(ethFrame(routerMAC, hostMAC, header.IPv6ProtocolNumber, ip6Packet(hostIP6, foreign6, header.UDPProtocolNumber, 64, u)))
	hit, _ := r.expect("neighbor solicitation", func(f []byte) bool {
		_, m, ok := icmp6Of(f)
		return ok && m[0] == 135
	})
	ip, m, _ := icmp6Of(hit)
	if ip.SourceAddress() != tcpip.AddrFrom16(routerLL.As16()) || netip.AddrFrom16([16]byte(m[8:24])) != hostIP6 {
		t.Errorf("solicitation from %v for %x", ip.SourceAddress(), m[8:24])
	}
	xs := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(m)))
	if checksum.Checksum(m, xs) != 0xffff {
		t.Errorf("rewritten solicitation has a bad checksum")
	}
}

func TestIPv6ConfigErrors(t *testing.T) {
	for _, p := range []string{"fd00:ac::1/48", "fe80::1/64", "10.0.0.1/24", "fd00:ac::/64", "ff02::1/64"} {
		a, b := netstacktest.Pipe()
		st, err := netstack.New(a, netstack.Config{MAC: routerMAC, Addr: routerPfx, Addr6: netip.MustParsePrefix(p)})
		if err == nil {
			st.Close()
			t.Errorf("Addr6 %s accepted", p)
		}
		a.Close()
		b.Close()
	}
}

func TestIPv6OffDropsFrames(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	sn, snMAC := solicitedNode(routerLL)
	r.send(icmp6Frame(snMAC, hostMAC, hostLL, sn, ndpMsg(135, 0, routerLL, 1, hostMAC)))
	// The stack answers nothing over IPv6; an ARP request afterwards is
	// answered, so the IPv6 frame was processed (and dropped) first.
	r.send(arpFrame(header.ARPRequest, hostMAC, hostIP, nil, routerIP, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}))
	_, before := r.expect("ARP reply", func(f []byte) bool { a, ok := arpOf(f); return ok && a.Op() == header.ARPReply })
	for _, f := range before {
		if _, _, ok := icmp6Of(f); ok {
			t.Errorf("IPv6 frame sent with IPv6 off")
		}
	}
	if s := r.st.Stats(); s.DropOtherProtocol != 1 {
		t.Errorf("DropOtherProtocol %d, want 1", s.DropOtherProtocol)
	}
}

func TestIPv6RejectSendsICMPv6(t *testing.T) {
	e, _ := newEnv6(t, v6Config())
	// gVisor's client aborts a connect on "no route" (code 0) but ignores
	// code 1 (administratively prohibited), which Linux reports as
	// EACCES; so: code 0 through the dial, code 1 by the host's counter.
	e.st.SetTCPHandler(func(r *netstack.TCPRequest) {
		if r.Dst.Port() == 80 {
			r.Reject(netstack.RejectNetUnreachable)
		} else {
			r.Reject(netstack.RejectAdminProhibited)
		}
	})
	_, err := e.host.DialTCP(ctxT(t), netip.AddrPortFrom(foreign6, 80))
	if err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("dial error %v, want network unreachable", err)
	}
	ctx, cancel := context.WithTimeout(ctxT(t), 2*time.Second)
	defer cancel()
	if _, err := e.host.DialTCP(ctx, netip.AddrPortFrom(foreign6, 81)); err == nil {
		t.Fatal("rejected connection succeeded")
	}
	if got := e.host.Stack().Stats().ICMP.V6.PacketsReceived.DstUnreachable.Value(); got < 2 {
		t.Errorf("host received %d ICMPv6 destination unreachable messages, want ≥ 2", got)
	}
	if s := e.st.Stats(); s.ICMPErrorsSent < 2 || s.TCPRejected < 2 {
		t.Errorf("ICMPErrorsSent %d TCPRejected %d, want ≥ 2 each", s.ICMPErrorsSent, s.TCPRejected)
	}
}

func TestIPv6LinkLocalSourceFlow(t *testing.T) {
	// A client whose global address is still tentative connects from its
	// link-local address; the flow must work, not be dropped.
	r := newRaw(t, netstack.Config{Addr6: routerPfx6})
	got := make(chan netip.AddrPort, 1)
	r.st.SetUDPHandler(func(q *netstack.UDPRequest) {
		got <- q.Src
		q.Reject(netstack.RejectPortUnreachable)
	})
	u := make([]byte, 9)
	binary.BigEndian.PutUint16(u[0:], 4000)
	binary.BigEndian.PutUint16(u[2:], 53)
	binary.BigEndian.PutUint16(u[4:], 9)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpip.AddrFrom16(hostLL.As16()), tcpip.AddrFrom16(foreign6.As16()), 9)
	binary.BigEndian.PutUint16(u[6:], ^checksum.Checksum(u, xsum))
	r.send(ethFrame(routerMAC, hostMAC, header.IPv6ProtocolNumber, ip6Packet(hostLL, foreign6, header.UDPProtocolNumber, 64, u)))
	if src := <-got; src.Addr() != hostLL {
		t.Fatalf("flow from %v, want %v", src, hostLL)
	}
	// The port unreachable goes back from the router's link-local address.
	hit, _ := r.expect("ICMPv6 unreachable", func(f []byte) bool {
		_, m, ok := icmp6Of(f)
		return ok && m[0] == 1
	})
	if ip, m, _ := icmp6Of(hit); m[1] != 4 || ip.SourceAddress() != tcpip.AddrFrom16(routerLL.As16()) {
		t.Errorf("unreachable code %d from %v", m[1], ip.SourceAddress())
	}
}
