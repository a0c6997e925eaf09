package netstack_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/netstack/netstacktest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// rawEnv drives the router stack with hand-built frames: the test plays
// the client at hostMAC/hostIP and sees every frame the stack sends.
type rawEnv struct {
	t      testing.TB
	st     *netstack.Stack
	link   *netstacktest.PipeLink
	frames chan []byte
}

var hostIP = hostPfx.Addr()

func newRaw(t testing.TB, cfg netstack.Config) *rawEnv {
	t.Helper()
	checkLeaks(t)
	a, b := netstacktest.Pipe()
	cfg.MAC, cfg.Addr = routerMAC, routerPfx
	st, err := netstack.New(a, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &rawEnv{t: t, st: st, link: b, frames: make(chan []byte, 4096)}
	done := make(chan struct{})
	go r.readLoop(done)
	t.Cleanup(func() {
		st.Close() // closes the pipe, ending readLoop
		<-done
	})
	return r
}

// readLoop forwards the stack's frames to r.frames, answering ARP requests
// for hostIP on the way so that the stack can reach "the client".
func (r *rawEnv) readLoop(done chan struct{}) {
	defer close(done)
	buf := make([]byte, 65536)
	for {
		n, err := r.link.ReadFrame(buf)
		if err != nil {
			return
		}
		f := append([]byte(nil), buf[:n]...)
		if a, ok := arpOf(f); ok && a.Op() == header.ARPRequest && tcpip.AddrFrom4Slice(a.ProtocolAddressTarget()) == ip4(hostIP) {
			r.send(arpFrame(header.ARPReply, hostMAC, hostIP, routerMAC, routerIP, routerMAC))
		}
		select {
		case r.frames <- f:
		default: // test not reading these; drop
		}
	}
}

func (r *rawEnv) send(frames ...[]byte) {
	if err := r.link.WriteFrames(frames); err != nil {
		r.t.Errorf("write frames: %v", err)
	}
}

// expect returns the first frame satisfying match, and the frames before it.
func (r *rawEnv) expect(what string, match func([]byte) bool) (hit []byte, before [][]byte) {
	r.t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for i := 0; i < 10000; i++ {
		select {
		case f := <-r.frames:
			if match(f) {
				return f, before
			}
			before = append(before, f)
		case <-timeout.C:
			r.t.Fatalf("no %s from the stack; saw %d other frames", what, len(before))
		}
	}
	r.t.Fatalf("no %s among 10000 frames", what)
	return nil, nil
}

// ---- frame builders and parsers ----

func ip4(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

func ethFrame(dst, src net.HardwareAddr, typ tcpip.NetworkProtocolNumber, payload []byte) []byte {
	f := make([]byte, header.EthernetMinimumSize+len(payload))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(src), DstAddr: tcpip.LinkAddress(dst), Type: typ})
	copy(f[header.EthernetMinimumSize:], payload)
	return f
}

func ipPacket(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, id uint16, flags uint8, fragOff uint16, payload []byte) []byte {
	p := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(p)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(p)), ID: id, Flags: flags, FragmentOffset: fragOff,
		TTL: 64, Protocol: uint8(proto), SrcAddr: ip4(src), DstAddr: ip4(dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(p[header.IPv4MinimumSize:], payload)
	return p
}

func udpSegment(src, dst netip.AddrPort, payload []byte) []byte {
	u := make([]byte, header.UDPMinimumSize+len(payload))
	h := header.UDP(u)
	h.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u[header.UDPMinimumSize:], payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, ip4(src.Addr()), ip4(dst.Addr()), uint16(len(u)))
	h.SetChecksum(^checksum.Checksum(u, xsum))
	return u
}

func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	return ethFrame(dstMAC, srcMAC, header.IPv4ProtocolNumber,
		ipPacket(src.Addr(), dst.Addr(), header.UDPProtocolNumber, 1, 0, 0, udpSegment(src, dst, payload)))
}

func echoFrame(src, dst netip.Addr, id, seq uint16, payload []byte) []byte {
	m := make([]byte, header.ICMPv4MinimumSize+len(payload))
	h := header.ICMPv4(m)
	h.SetType(header.ICMPv4Echo)
	h.SetIdent(id)
	h.SetSequence(seq)
	copy(m[header.ICMPv4MinimumSize:], payload)
	h.SetChecksum(^checksum.Checksum(m, 0))
	return ethFrame(routerMAC, hostMAC, header.IPv4ProtocolNumber, ipPacket(src, dst, header.ICMPv4ProtocolNumber, seq, 0, 0, m))
}

func synFrame(src, dst netip.AddrPort, seq uint32) []byte {
	t := make([]byte, header.TCPMinimumSize)
	h := header.TCP(t)
	h.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip4(src.Addr()), ip4(dst.Addr()), uint16(len(t)))
	h.SetChecksum(^checksum.Checksum(t, xsum))
	return ethFrame(routerMAC, hostMAC, header.IPv4ProtocolNumber, ipPacket(src.Addr(), dst.Addr(), header.TCPProtocolNumber, 7, 0, 0, t))
}

func arpFrame(op header.ARPOp, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr, ethDst net.HardwareAddr) []byte {
	p := make([]byte, header.ARPSize)
	a := header.ARP(p)
	a.SetIPv4OverEthernet()
	a.SetOp(op)
	copy(a.HardwareAddressSender(), sha)
	copy(a.ProtocolAddressSender(), spa.AsSlice())
	copy(a.HardwareAddressTarget(), tha)
	copy(a.ProtocolAddressTarget(), tpa.AsSlice())
	return ethFrame(ethDst, sha, header.ARPProtocolNumber, p)
}

var bcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func arpOf(f []byte) (header.ARP, bool) {
	if len(f) < header.EthernetMinimumSize+header.ARPSize || header.Ethernet(f).Type() != header.ARPProtocolNumber {
		return nil, false
	}
	return header.ARP(f[header.EthernetMinimumSize:]), true
}

func ipOf(f []byte) (header.IPv4, bool) {
	if len(f) < header.EthernetMinimumSize+header.IPv4MinimumSize || header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
		return nil, false
	}
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	return ip, ip.IsValid(len(ip))
}

// icmpOf returns the ICMP message of an IPv4 frame.
func icmpOf(f []byte) (header.ICMPv4, header.IPv4, bool) {
	ip, ok := ipOf(f)
	if !ok || ip.TransportProtocol() != header.ICMPv4ProtocolNumber || ip.FragmentOffset() != 0 {
		return nil, nil, false
	}
	m := header.ICMPv4(ip.Payload())
	return m, ip, len(m) >= header.ICMPv4MinimumSize
}

func isEchoReply(from netip.Addr, id uint16) func([]byte) bool {
	return func(f []byte) bool {
		m, ip, ok := icmpOf(f)
		return ok && m.Type() == header.ICMPv4EchoReply && ip.SourceAddress() == ip4(from) && m.Ident() == id
	}
}

// ---- tests ----

// TestNoFabricatedEchoReply proves that the stack does not answer pings to
// foreign addresses itself (PEERS.md §3 pitfall 5), with and without a
// handler. The stack handles inbound frames in order on one goroutine and
// writes its own replies while handling a frame, so any fabricated reply to
// the first ping would be written before the router's reply to the second.
func TestNoFabricatedEchoReply(t *testing.T) {
	for _, withHandler := range []bool{false, true} {
		r := newRaw(t, netstack.Config{})
		got := make(chan netstack.EchoRequest, 1)
		if withHandler {
			r.st.SetICMPEchoHandler(func(req netstack.EchoRequest) { got <- req }) // never replies
		}
		r.send(echoFrame(hostIP, foreign, 0x1111, 1, []byte("foreign")))
		if withHandler {
			req := <-got
			if req.ID != 0x1111 || req.Seq != 1 || string(req.Payload) != "foreign" {
				t.Errorf("request %+v", req)
			}
		}
		r.send(echoFrame(hostIP, routerIP, 0x2222, 2, []byte("router")))
		_, before := r.expect("echo reply from the router", isEchoReply(routerIP, 0x2222))
		for _, f := range before {
			if m, ip, ok := icmpOf(f); ok && m.Type() == header.ICMPv4EchoReply {
				t.Errorf("handler=%v: unexpected echo reply from %v", withHandler, ip.SourceAddress())
			}
		}
		s := r.st.Stats()
		if !withHandler && s.EchoUnhandled != 1 {
			t.Errorf("EchoUnhandled = %d", s.EchoUnhandled)
		}
		if withHandler && s.EchoRequests != 1 {
			t.Errorf("EchoRequests = %d", s.EchoRequests)
		}
	}
}

// TestBroadcastPingIgnored: no smurf amplification.
func TestBroadcastPingIgnored(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	r.st.SetICMPEchoHandler(func(req netstack.EchoRequest) { t.Errorf("handler got %v", req.Dst) })
	f := echoFrame(hostIP, netip.MustParseAddr("192.168.30.255"), 0x3333, 1, nil)
	copy(f, bcastMAC)
	r.send(f)
	r.send(echoFrame(hostIP, routerIP, 0x2222, 2, nil))
	_, before := r.expect("echo reply from the router", isEchoReply(routerIP, 0x2222))
	for _, f := range before {
		if m, _, ok := icmpOf(f); ok && m.Type() == header.ICMPv4EchoReply {
			t.Error("broadcast ping answered")
		}
	}
}

func checkICMPError(t *testing.T, f []byte, typ header.ICMPv4Type, code header.ICMPv4Code, orig []byte) {
	t.Helper()
	m, ip, _ := icmpOf(f)
	if m.Type() != typ || m.Code() != code {
		t.Errorf("ICMP type %d code %d, want %d/%d", m.Type(), m.Code(), typ, code)
	}
	if ip.SourceAddress() != ip4(routerIP) || ip.DestinationAddress() != ip4(hostIP) {
		t.Errorf("ICMP error %v -> %v", ip.SourceAddress(), ip.DestinationAddress())
	}
	if header.Ethernet(f).DestinationAddress() != tcpip.LinkAddress(hostMAC) {
		t.Errorf("ICMP error to MAC %v", header.Ethernet(f).DestinationAddress())
	}
	if checksum.Checksum(m, 0) != 0xffff {
		t.Error("bad ICMP checksum")
	}
	quoted := m.Payload()
	want := orig[header.EthernetMinimumSize:]
	if n := header.IPv4MinimumSize + 8; len(quoted) < n || !bytes.Equal(quoted[:n], want[:n]) {
		t.Errorf("quote %x, want prefix of %x", quoted, want)
	}
}

func TestICMPErrorsForEcho(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	tests := []struct {
		send func(netstack.EchoRequest) error
		typ  header.ICMPv4Type
		code header.ICMPv4Code
	}{
		{func(q netstack.EchoRequest) error {
			return r.st.WriteICMPUnreachable(q, netstack.RejectHostUnreachable)
		},
			header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable},
		{func(q netstack.EchoRequest) error { return r.st.WriteICMPUnreachable(q, netstack.RejectNetUnreachable) },
			header.ICMPv4DstUnreachable, header.ICMPv4NetUnreachable},
		{func(q netstack.EchoRequest) error {
			return r.st.WriteICMPUnreachable(q, netstack.RejectAdminProhibited)
		},
			header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited},
		{r.st.WriteICMPTimeExceeded, header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded},
	}
	for i, tt := range tests {
		r.st.SetICMPEchoHandler(func(q netstack.EchoRequest) {
			if err := r.st.WriteICMPUnreachable(q, netstack.RejectRST); err == nil {
				t.Error("RejectRST accepted as an ICMP kind")
			}
			if err := tt.send(q); err != nil {
				t.Error(err)
			}
		})
		req := echoFrame(hostIP, foreign, 0x4444, uint16(i), []byte("abcdefgh"))
		r.send(req)
		f, _ := r.expect("ICMP error", func(f []byte) bool {
			m, _, ok := icmpOf(f)
			return ok && m.Type() == tt.typ
		})
		checkICMPError(t, f, tt.typ, tt.code, req)
	}
	if err := r.st.WriteEchoReply(netstack.EchoRequest{}, nil); err == nil {
		t.Error("WriteEchoReply accepted a request that did not come from the stack")
	}
}

// TestTCPRejectICMPQuotesSYN checks the quoted SYN (Linux only accepts
// ICMP errors whose quoted sequence number matches).
func TestTCPRejectICMPQuotesSYN(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	r.st.SetTCPHandler(func(q *netstack.TCPRequest) { q.Reject(netstack.RejectHostUnreachable) })
	syn := synFrame(netip.AddrPortFrom(hostIP, 40000), foreignTCP, 0xdeadbeef)
	r.send(syn)
	f, _ := r.expect("ICMP error", func(f []byte) bool { m, _, ok := icmpOf(f); return ok && m.Type() == header.ICMPv4DstUnreachable })
	checkICMPError(t, f, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, syn)
	m, _, _ := icmpOf(f)
	if seq := binary.BigEndian.Uint32(m.Payload()[header.IPv4MinimumSize+4:]); seq != 0xdeadbeef {
		t.Errorf("quoted seq %#x", seq)
	}
}

func TestUDPRejectPortUnreachable(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	reqs := make(chan *netstack.UDPRequest, 4)
	r.st.SetUDPHandler(func(q *netstack.UDPRequest) {
		q.Reject(netstack.RejectRST) // means port unreachable for UDP
		reqs <- q                    // after Reject: the counters are final
	})
	src, dst := netip.AddrPortFrom(hostIP, 5353), netip.AddrPortFrom(foreign, 9999)
	dg := udpFrame(routerMAC, hostMAC, src, dst, []byte("hello"))
	r.send(dg)
	f, _ := r.expect("ICMP error", func(f []byte) bool { m, _, ok := icmpOf(f); return ok && m.Type() == header.ICMPv4DstUnreachable })
	checkICMPError(t, f, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, dg)
	q := <-reqs
	if q.Src != src || q.Dst != dst {
		t.Errorf("request %v -> %v", q.Src, q.Dst)
	}
	if s := r.st.Stats(); s.UDPRejected != 1 || s.ICMPErrorsSent != 1 {
		t.Errorf("UDPRejected %d ICMPErrorsSent %d", s.UDPRejected, s.ICMPErrorsSent)
	}
}

// TestUDPBroadcastNeverForwarded: broadcast and multicast datagrams never
// reach the UDP handler.
func TestUDPBroadcastNeverForwarded(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	r.st.SetUDPHandler(func(q *netstack.UDPRequest) {
		t.Errorf("handler got %v -> %v", q.Src, q.Dst)
		q.Reject(netstack.RejectPortUnreachable)
	})
	src := netip.AddrPortFrom(hostIP, 137)
	r.send(
		udpFrame(bcastMAC, hostMAC, src, netip.MustParseAddrPort("255.255.255.255:137"), []byte("a")),
		udpFrame(bcastMAC, hostMAC, src, netip.MustParseAddrPort("192.168.30.255:137"), []byte("b")),
		udpFrame(net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 0xfb}, hostMAC, src, netip.MustParseAddrPort("224.0.0.251:5353"), []byte("c")),
		udpFrame(routerMAC, hostMAC, src, netip.MustParseAddrPort("239.1.2.3:5353"), []byte("d")),
	)
	r.send(echoFrame(hostIP, routerIP, 0x2222, 2, nil))
	_, before := r.expect("echo reply from the router", isEchoReply(routerIP, 0x2222))
	for _, f := range before {
		if m, _, ok := icmpOf(f); ok && m.Type() == header.ICMPv4DstUnreachable {
			t.Error("ICMP error sent for a broadcast datagram")
		}
	}
}

func TestListenDHCPBroadcast(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	pc, err := r.st.ListenDHCP()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := r.st.ListenDHCP(); err == nil {
		t.Error("second ListenDHCP succeeded")
	}
	client := netip.MustParseAddrPort("0.0.0.0:68")
	r.send(udpFrame(bcastMAC, hostMAC, client, netip.MustParseAddrPort("255.255.255.255:67"), []byte("DISCOVER")))
	buf := make([]byte, 1500)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, peer, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "DISCOVER" || peer.String() != "0.0.0.0:68" {
		t.Fatalf("ReadFrom: %q from %v, %v", buf[:n], peer, err)
	}
	if _, err := pc.WriteTo([]byte("OFFER"), &net.UDPAddr{IP: net.IPv4bcast, Port: 68}); err != nil {
		t.Fatal(err)
	}
	f, _ := r.expect("DHCP reply", func(f []byte) bool {
		ip, ok := ipOf(f)
		return ok && ip.TransportProtocol() == header.UDPProtocolNumber && header.UDP(ip.Payload()).DestinationPort() == 68
	})
	ip, _ := ipOf(f)
	u := header.UDP(ip.Payload())
	if header.Ethernet(f).DestinationAddress() != header.EthernetBroadcastAddress ||
		ip.DestinationAddress() != header.IPv4Broadcast || ip.SourceAddress() != ip4(routerIP) ||
		u.SourcePort() != 67 || string(u.Payload()) != "OFFER" {
		t.Errorf("reply %v -> %v, %d -> %d, %q, eth dst %v", ip.SourceAddress(), ip.DestinationAddress(),
			u.SourcePort(), u.DestinationPort(), u.Payload(), header.Ethernet(f).DestinationAddress())
	}
}

func TestForeignDHCPServerHook(t *testing.T) {
	seen := make(chan string, 4)
	r := newRaw(t, netstack.Config{OnForeignDHCPServer: func(mac net.HardwareAddr, ip netip.Addr) {
		seen <- mac.String() + " " + ip.String()
	}})
	rogue := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x66}
	offer := udpFrame(bcastMAC, rogue, netip.MustParseAddrPort("192.168.30.66:67"), netip.MustParseAddrPort("255.255.255.255:68"), []byte("OFFER"))
	r.send(offer, offer) // rate-limited: one report
	r.send(echoFrame(hostIP, routerIP, 0x2222, 2, nil))
	r.expect("echo reply from the router", isEchoReply(routerIP, 0x2222))
	if got := <-seen; got != "02:00:00:00:00:66 192.168.30.66" {
		t.Errorf("hook got %q", got)
	}
	if len(seen) != 0 {
		t.Errorf("hook called %d extra times", len(seen))
	}
}

// TestARPFiltering: the stack answers ARP only for its own address, ignores
// conflicting claims on it, and ARPs for clients with its own address as
// sender even for flows from foreign addresses.
func TestARPFiltering(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	other := netip.MustParseAddr("192.168.30.20")
	intruder := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
	r.send(
		arpFrame(header.ARPRequest, hostMAC, hostIP, nil, other, bcastMAC),       // not ours: ignore
		arpFrame(header.ARPRequest, hostMAC, hostIP, nil, foreign, bcastMAC),     // not ours: ignore
		arpFrame(header.ARPReply, intruder, routerIP, nil, routerIP, bcastMAC),   // conflict
		arpFrame(header.ARPRequest, intruder, routerIP, nil, routerIP, bcastMAC), // conflict
		arpFrame(header.ARPRequest, routerMAC, hostIP, nil, routerIP, bcastMAC),  // our own MAC as source
		arpFrame(header.ARPRequest, hostMAC, hostIP, nil, routerIP, bcastMAC),    // ours: answer
	)
	f, before := r.expect("ARP reply", func(f []byte) bool { a, ok := arpOf(f); return ok && a.Op() == header.ARPReply })
	a, _ := arpOf(f)
	if tcpip.AddrFrom4Slice(a.ProtocolAddressSender()) != ip4(routerIP) || tcpip.LinkAddress(a.HardwareAddressSender()) != tcpip.LinkAddress(routerMAC) ||
		tcpip.AddrFrom4Slice(a.ProtocolAddressTarget()) != ip4(hostIP) {
		t.Errorf("ARP reply %v is-at %v to %v", net.IP(a.ProtocolAddressSender()), net.HardwareAddr(a.HardwareAddressSender()), net.IP(a.ProtocolAddressTarget()))
	}
	// The conflicting claims are answered with one announcement (defend.go).
	announcements := 0
	for _, b := range before {
		if isAnnouncement(b) {
			announcements++
		} else {
			t.Errorf("unexpected frame before the ARP reply: % x", b)
		}
	}
	if announcements != 1 {
		t.Errorf("%d announcements for the conflicting claims, want 1", announcements)
	}
	s := r.st.Stats()
	if s.DropARPOther != 2 || s.DropARPConflict != 2 || s.DropOwnSource != 1 {
		t.Errorf("ARPOther %d ARPConflict %d OwnSource %d", s.DropARPOther, s.DropARPConflict, s.DropOwnSource)
	}

	// A SYN from a client the stack has not resolved yet (another MAC and
	// IP): the SYN-ACK from the foreign address needs ARP, which must ask
	// with the router's address as sender.
	r.st.SetTCPHandler(func(q *netstack.TCPRequest) { q.Accept() })
	newcomer := netip.MustParseAddr("192.168.30.30")
	syn := synFrame(netip.AddrPortFrom(newcomer, 40000), foreignTCP, 1)
	copy(syn[6:12], net.HardwareAddr{0x02, 0, 0, 0, 0, 0x30})
	r.send(syn)
	f, _ = r.expect("ARP request", func(f []byte) bool { a, ok := arpOf(f); return ok && a.Op() == header.ARPRequest && !isAnnouncement(f) })
	a, _ = arpOf(f)
	if tcpip.AddrFrom4Slice(a.ProtocolAddressSender()) != ip4(routerIP) || tcpip.AddrFrom4Slice(a.ProtocolAddressTarget()) != ip4(newcomer) {
		t.Errorf("ARP request: who has %v tell %v", net.IP(a.ProtocolAddressTarget()), net.IP(a.ProtocolAddressSender()))
	}
}

func TestMalformedFrames(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	r.st.SetTCPHandler(func(q *netstack.TCPRequest) { q.Reject(netstack.RejectRST) })
	r.st.SetUDPHandler(func(q *netstack.UDPRequest) { q.Reject(netstack.RejectRST) })
	r.st.SetICMPEchoHandler(func(q netstack.EchoRequest) {})
	good := udpFrame(routerMAC, hostMAC, netip.AddrPortFrom(hostIP, 1), netip.AddrPortFrom(foreign, 2), []byte("x"))
	mut := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	frames := map[string][]byte{
		"empty":          {},
		"runt":           good[:10],
		"eth only":       good[:14],
		"ip truncated":   good[:20],
		"bad ihl":        mut(func(b []byte) []byte { b[14] = 0x4f; return b }),
		"ihl too small":  mut(func(b []byte) []byte { b[14] = 0x41; return b }),
		"total len huge": mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 0xffff); return b }),
		"total len tiny": mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 4); return b }),
		"version 6":      mut(func(b []byte) []byte { b[14] = 0x65; return b }),
		"udp len bogus":  mut(func(b []byte) []byte { binary.BigEndian.PutUint16(b[38:], 0xfff0); return b }),
		"bad checksum":   mut(func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b }),
		"own mac src":    mut(func(b []byte) []byte { copy(b[6:], routerMAC); return b }),
		"group src":      mut(func(b []byte) []byte { b[6] |= 1; return b }),
		"other dst mac":  mut(func(b []byte) []byte { b[0] = 0x02; b[5] = 0x99; return b }),
		"vlan tag":       mut(func(b []byte) []byte { b[12], b[13] = 0x81, 0x00; return b }),
		"ipv6 type":      mut(func(b []byte) []byte { b[12], b[13] = 0x86, 0xdd; return b }),
		"arp truncated":  arpFrame(header.ARPRequest, hostMAC, hostIP, nil, routerIP, bcastMAC)[:20],
		"too big":        append(append([]byte(nil), good[:14]...), make([]byte, 3000)...),
		"fragment tiny":  ethFrame(routerMAC, hostMAC, header.IPv4ProtocolNumber, ipPacket(hostIP, foreign, header.UDPProtocolNumber, 9, header.IPv4FlagMoreFragments, 0, []byte{1, 2, 3})),
		"fragment huge":  ethFrame(routerMAC, hostMAC, header.IPv4ProtocolNumber, ipPacket(hostIP, foreign, header.UDPProtocolNumber, 9, 0, 65528, make([]byte, 64))),
		"tcp short":      ethFrame(routerMAC, hostMAC, header.IPv4ProtocolNumber, ipPacket(hostIP, foreign, header.TCPProtocolNumber, 9, 0, 0, make([]byte, 10))),
		"icmp short":     ethFrame(routerMAC, hostMAC, header.IPv4ProtocolNumber, ipPacket(hostIP, foreign, header.ICMPv4ProtocolNumber, 9, 0, 0, make([]byte, 3))),
		"src broadcast":  udpFrame(routerMAC, hostMAC, netip.MustParseAddrPort("255.255.255.255:1"), netip.AddrPortFrom(foreign, 2), nil),
		"src router":     udpFrame(routerMAC, hostMAC, netip.AddrPortFrom(routerIP, 1), netip.AddrPortFrom(foreign, 2), nil),
	}
	for _, f := range frames {
		r.send(f)
	}
	r.send(echoFrame(hostIP, routerIP, 0x2222, 2, nil))
	r.expect("echo reply from the router", isEchoReply(routerIP, 0x2222))
	s := r.st.Stats()
	if s.DropMalformed < 3 || s.DropTooBig != 1 || s.DropOwnSource != 1 || s.DropNotForUs != 1 || s.DropOtherProtocol != 2 {
		t.Errorf("drops: %+v", s)
	}
	if s.UDPRequests != 0 || s.TCPRequests != 0 {
		t.Errorf("malformed frames became flow requests: udp %d tcp %d", s.UDPRequests, s.TCPRequests)
	}
}

// TestListenDHCPUnicastAndForeign: unicast renewals to the router reach the
// DHCP socket; datagrams to port 67 of a foreign host go to the UDP handler;
// deadlines and Close behave like a net.PacketConn.
func TestListenDHCPUnicastAndForeign(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	reqs := make(chan string, 4)
	r.st.SetUDPHandler(func(q *netstack.UDPRequest) {
		reqs <- q.Dst.String()
		q.Reject(netstack.RejectPortUnreachable)
	})
	pc, err := r.st.ListenDHCP()
	if err != nil {
		t.Fatal(err)
	}
	if pc.LocalAddr().String() != "192.168.30.1:67" {
		t.Errorf("LocalAddr %v", pc.LocalAddr())
	}
	client := netip.AddrPortFrom(hostIP, 68)
	r.send(udpFrame(routerMAC, hostMAC, client, netip.AddrPortFrom(foreign, 67), []byte("to-foreign")))
	r.send(udpFrame(routerMAC, hostMAC, client, netip.AddrPortFrom(routerIP, 67), []byte("RENEW")))
	buf := make([]byte, 1500)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, peer, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "RENEW" || peer.String() != client.String() {
		t.Fatalf("ReadFrom: %q from %v, %v", buf[:n], peer, err)
	}
	if got := <-reqs; got != netip.AddrPortFrom(foreign, 67).String() {
		t.Errorf("UDP handler got %s", got)
	}
	pc.SetReadDeadline(time.Now().Add(-time.Second))
	if _, _, err := pc.ReadFrom(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadFrom past deadline: %v", err)
	}
	pc.SetReadDeadline(time.Time{})
	readErr := make(chan error, 1)
	go func() { _, _, err := pc.ReadFrom(buf); readErr <- err }()
	pc.Close()
	if err := <-readErr; !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadFrom after Close: %v", err)
	}
	pc2, err := r.st.ListenDHCP()
	if err != nil {
		t.Fatalf("ListenDHCP after Close: %v", err)
	}
	pc2.Close()
}

func TestProbeAddrSendsRFC5227Probes(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	target := netip.MustParseAddr("192.168.30.77")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		inUse, err := r.st.ProbeAddr(ctx, target)
		if err == nil && !inUse {
			err = errors.New("not in use")
		}
		res <- err
	}()
	isProbe := func(f []byte) bool {
		a, ok := arpOf(f)
		return ok && a.Op() == header.ARPRequest && netip.AddrFrom4([4]byte(a.ProtocolAddressTarget())) == target
	}
	hit, _ := r.expect("ARP probe", isProbe)
	a, _ := arpOf(hit)
	if s := netip.AddrFrom4([4]byte(a.ProtocolAddressSender())); !s.IsUnspecified() {
		t.Errorf("probe sender address %v, want 0.0.0.0 (RFC 5227 §2.1.1)", s)
	}
	// The host at target answers (as Linux does: to the prober's MAC).
	otherMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
	r.send(arpFrame(header.ARPReply, otherMAC, target, routerMAC, netip.IPv4Unspecified(), routerMAC))
	if err := <-res; err != nil {
		t.Fatalf("ProbeAddr of an answering address: %v", err)
	}
}

func TestListenDHCPQueueDropsCounted(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	pc, err := r.st.ListenDHCP()
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	const sent = 200
	client := netip.MustParseAddrPort("0.0.0.0:68")
	frames := make([][]byte, sent)
	for i := range frames {
		frames[i] = udpFrame(bcastMAC, hostMAC, client, netip.MustParseAddrPort("255.255.255.255:67"), []byte(fmt.Sprintf("DISCOVER %d", i)))
	}
	r.send(frames...)
	// Nobody reads: the conn's queue takes 64, the rest is dropped and
	// counted (or, earlier, dropped by the socket and counted by gVisor).
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := r.st.Stats()
		if s.DHCPQueueDrops+s.UDPReceiveBufferErrors == sent-64 {
			if s.DHCPQueueDrops == 0 {
				t.Fatalf("no queue drops counted: %+v", s)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drops: queue %d + socket %d, want %d", s.DHCPQueueDrops, s.UDPReceiveBufferErrors, sent-64)
		}
		time.Sleep(5 * time.Millisecond) // counters: polled, bounded by the deadline
	}
	buf := make([]byte, 1500)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "DISCOVER 0" {
		t.Fatalf("first queued datagram %q %v", buf[:n], err)
	}
}
