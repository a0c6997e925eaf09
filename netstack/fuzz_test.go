package netstack

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// captureLink discards inbound reads until closed and records whether the
// stack wrote an ARP reply for the router address.
type captureLink struct {
	done     chan struct{}
	once     sync.Once
	mu       sync.Mutex
	arpReply chan struct{}
}

func newCaptureLink() *captureLink {
	return &captureLink{done: make(chan struct{}), arpReply: make(chan struct{}, 1)}
}

func (l *captureLink) ReadFrame([]byte) (int, error) {
	<-l.done
	return 0, net.ErrClosed
}

func (l *captureLink) WriteFrames(frames [][]byte) error {
	for _, f := range frames {
		if len(f) >= ethHeaderLen+header.ARPSize && header.Ethernet(f).Type() == header.ARPProtocolNumber &&
			header.ARP(f[ethHeaderLen:]).Op() == header.ARPReply {
			select {
			case l.arpReply <- struct{}{}:
			default:
			}
		}
	}
	return nil
}

func (l *captureLink) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

var (
	fzRouterMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	fzHostMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x10}
	fzRouter    = netip.MustParseAddr("192.168.30.1")
	fzHost      = netip.MustParseAddr("192.168.30.10")
	fzForeign   = netip.MustParseAddr("198.51.100.7")
)

func fzEth(dst net.HardwareAddr, typ tcpip.NetworkProtocolNumber, payload []byte) []byte {
	f := make([]byte, ethHeaderLen+len(payload))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(fzHostMAC), DstAddr: tcpip.LinkAddress(dst), Type: typ})
	copy(f[ethHeaderLen:], payload)
	return f
}

func fzIP(dst netip.Addr, proto tcpip.TransportProtocolNumber, flags uint8, off uint16, payload []byte) []byte {
	p := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(p)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(p)), ID: 1, Flags: flags, FragmentOffset: off, TTL: 64,
		Protocol: uint8(proto), SrcAddr: tcpip.AddrFrom4(fzHost.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(p[header.IPv4MinimumSize:], payload)
	return fzEth(fzRouterMAC, header.IPv4ProtocolNumber, p)
}

func fzL4(dst netip.Addr, proto tcpip.TransportProtocolNumber, seg []byte, csumOff int) []byte {
	xsum := header.PseudoHeaderChecksum(proto, tcpip.AddrFrom4(fzHost.As4()), tcpip.AddrFrom4(dst.As4()), uint16(len(seg)))
	if proto == header.ICMPv4ProtocolNumber {
		xsum = 0
	}
	binary.BigEndian.PutUint16(seg[csumOff:], ^checksum.Checksum(seg, xsum))
	return fzIP(dst, proto, 0, 0, seg)
}

// fzIP6 builds an IPv6 frame from the fuzz host's link-local address (or
// src) with a valid transport checksum at csumOff (-1: none).
func fzIP6(dstMAC net.HardwareAddr, src, dst netip.Addr, proto tcpip.TransportProtocolNumber, seg []byte, csumOff int) []byte {
	s16, d16 := tcpip.AddrFrom16(src.As16()), tcpip.AddrFrom16(dst.As16())
	if csumOff >= 0 {
		xsum := header.PseudoHeaderChecksum(proto, s16, d16, uint16(len(seg)))
		binary.BigEndian.PutUint16(seg[csumOff:], ^checksum.Checksum(seg, xsum))
	}
	p := make([]byte, header.IPv6MinimumSize+len(seg))
	header.IPv6(p).Encode(&header.IPv6Fields{PayloadLength: uint16(len(seg)), TransportProtocol: proto, HopLimit: 255, SrcAddr: s16, DstAddr: d16})
	copy(p[header.IPv6MinimumSize:], seg)
	return fzEth(dstMAC, header.IPv6ProtocolNumber, p)
}

func fuzzSeeds6() [][]byte {
	host := netip.MustParseAddr("fd00:ac::10")
	ll := netip.MustParseAddr("fe80::10")
	router := netip.MustParseAddr("fd00:ac::1")
	far := netip.MustParseAddr("2001:db8::5")
	allRouters := net.HardwareAddr{0x33, 0x33, 0, 0, 0, 2}
	rs := []byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 0x10}
	ns := make([]byte, 32)
	ns[0] = 135
	copy(ns[8:], router.AsSlice())
	ns[24], ns[25] = 1, 1
	na := append([]byte(nil), ns...)
	na[0] = 136
	echo := make([]byte, 16)
	echo[0] = 128
	syn := make([]byte, header.TCPMinimumSize)
	header.TCP(syn).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 443, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	udp := make([]byte, header.UDPMinimumSize+4)
	header.UDP(udp).Encode(&header.UDPFields{SrcPort: 546, DstPort: 547, Length: uint16(len(udp))})
	return [][]byte{
		fzIP6(allRouters, ll, netip.MustParseAddr("ff02::2"), header.ICMPv6ProtocolNumber, rs, 2),
		fzIP6(fzRouterMAC, ll, router, header.ICMPv6ProtocolNumber, ns, 2),
		fzIP6(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, ll, netip.MustParseAddr("ff02::1"), header.ICMPv6ProtocolNumber, na, 2),
		fzIP6(fzRouterMAC, host, far, header.ICMPv6ProtocolNumber, echo, 2),
		fzIP6(fzRouterMAC, host, far, header.TCPProtocolNumber, syn, 16),
		fzIP6(net.HardwareAddr{0x33, 0x33, 0, 1, 0, 2}, ll, netip.MustParseAddr("ff02::1:2"), header.UDPProtocolNumber, udp, 6),
		fzIP6(fzRouterMAC, host, far, header.IPv6FragmentHeader, make([]byte, 16), -1),
	}
}

func fuzzSeeds() [][]byte {
	arp := make([]byte, header.ARPSize)
	a := header.ARP(arp)
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), fzHostMAC)
	copy(a.ProtocolAddressSender(), fzHost.AsSlice())
	copy(a.ProtocolAddressTarget(), fzRouter.AsSlice())

	syn := make([]byte, header.TCPMinimumSize)
	header.TCP(syn).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	ack := append([]byte(nil), syn...)
	header.TCP(ack).SetFlags(uint8(header.TCPFlagAck))
	udp := make([]byte, header.UDPMinimumSize+4)
	header.UDP(udp).Encode(&header.UDPFields{SrcPort: 5353, DstPort: 53, Length: uint16(len(udp))})
	dhcp := make([]byte, header.UDPMinimumSize+4)
	header.UDP(dhcp).Encode(&header.UDPFields{SrcPort: 67, DstPort: 68, Length: uint16(len(dhcp))})
	echo := make([]byte, header.ICMPv4MinimumSize+8)
	header.ICMPv4(echo).SetType(header.ICMPv4Echo)
	echo2 := append([]byte(nil), echo...)

	return [][]byte{
		fzEth(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, header.ARPProtocolNumber, arp),
		fzL4(fzForeign, header.TCPProtocolNumber, syn, 16),
		fzL4(fzRouter, header.TCPProtocolNumber, ack, 16),
		fzL4(fzForeign, header.UDPProtocolNumber, udp, 6),
		fzL4(fzForeign, header.UDPProtocolNumber, dhcp, 6),
		fzL4(fzForeign, header.ICMPv4ProtocolNumber, echo, 2),
		fzL4(fzRouter, header.ICMPv4ProtocolNumber, echo2, 2),
		fzIP(fzForeign, header.UDPProtocolNumber, header.IPv4FlagMoreFragments, 0, make([]byte, 16)),
		fzIP(fzForeign, header.UDPProtocolNumber, 0, 16, make([]byte, 16)),
		{},
		make([]byte, 13),
	}
}

// FuzzInboundFrame feeds arbitrary frames straight into the link endpoint's
// delivery path (the same path readLoop uses) of a stack whose handlers
// accept, reject and reply. It must never panic; at the end the stack must
// still answer ARP for its address.
func FuzzInboundFrame(f *testing.F) {
	for _, s := range append(fuzzSeeds(), fuzzSeeds6()...) {
		f.Add(s)
	}
	link := newCaptureLink()
	st, err := New(link, Config{MAC: fzRouterMAC, Addr: netip.MustParsePrefix("192.168.30.1/24"),
		Addr6: netip.MustParsePrefix("fd00:ac::1/64"), RA: RAConfig{DefaultRouter: true, RDNSS: []netip.Addr{netip.MustParseAddr("fd00:ac::1")}},
		OnForeignDHCPServer: func(net.HardwareAddr, netip.Addr) {}})
	if err != nil {
		f.Fatal(err)
	}
	st.SetTCPHandler(func(r *TCPRequest) {
		if r.Dst.Port()%2 == 0 {
			r.Reject(RejectHostUnreachable)
		} else {
			r.Reject(RejectRST)
		}
	})
	st.SetUDPHandler(func(r *UDPRequest) {
		if r.Dst.Port()%2 == 0 {
			r.Reject(RejectPortUnreachable)
			return
		}
		if c, err := r.Accept(); err == nil {
			c.Close()
		}
	})
	st.SetICMPEchoHandler(func(r EchoRequest) { _ = st.WriteEchoReply(r, r.Payload) })
	f.Cleanup(func() {
		// Still alive: an ARP request for the router gets a reply.
		st.ep.deliver(fuzzSeeds()[0])
		select {
		case <-link.arpReply:
		case <-time.After(10 * time.Second):
			f.Error("stack stopped answering ARP")
		}
		if err := st.Close(); err != nil {
			f.Error(err)
		}
	})
	f.Fuzz(func(t *testing.T, frame []byte) {
		st.ep.deliver(frame)
	})
}

func TestBroadcastOf(t *testing.T) {
	for _, tt := range []struct{ p, want string }{
		{"192.168.30.1/24", "192.168.30.255"},
		{"10.0.0.1/8", "10.255.255.255"},
		{"172.16.5.4/20", "172.16.15.255"},
		{"192.168.1.1/30", "192.168.1.3"},
	} {
		if got := broadcastOf(netip.MustParsePrefix(tt.p).Masked()); got.String() != tt.want {
			t.Errorf("broadcastOf(%s) = %v, want %s", tt.p, got, tt.want)
		}
	}
}
