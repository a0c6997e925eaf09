package netstack

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
)

// This file is the stack's IPv6 side (Config.Addr6): address checks, the
// inbound Neighbor Discovery filter (the IPv6 twin of filterARP), outbound
// Neighbor Solicitation rewriting and checksum verification.

// ICMPv6 message types this file looks at (RFC 4443 §2.1, RFC 4861 §4,
// RFC 2710 §3 and RFC 3810 §5 for MLD).
const (
	icmp6RouterSolicit   = 133
	icmp6RouterAdvert    = 134
	icmp6NeighborSolicit = 135
	icmp6NeighborAdvert  = 136
	icmp6Redirect        = 137
	icmp6MLDQuery        = 130
	icmp6MLDReport       = 131
	icmp6MLDDone         = 132
	icmp6MLDv2Report     = 143
)

// dhcp6ServersAddr is All_DHCP_Relay_Agents_and_Servers, ff02::1:2
// (RFC 8415 §7.1).
var dhcp6ServersAddr = tcpip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 0, 12: 0, 13: 1, 14: 0, 15: 2})

// v6addrs are the router's own IPv6 addresses (immutable after New).
type v6addrs struct {
	addr tcpip.Address // Config.Addr6's address (usually a ULA)
	ll   tcpip.Address // EUI-64 link-local address of the router's MAC
	pfx  netip.Prefix  // Config.Addr6, masked: the on-link prefix
	// Solicited-node groups of addr and ll (RFC 4291 §2.7.1).
	snAddr, snLL tcpip.Address
}

func newV6addrs(p netip.Prefix, mac tcpip.LinkAddress) *v6addrs {
	a := tcpip.AddrFrom16(p.Addr().As16())
	ll := header.LinkLocalAddr(mac)
	return &v6addrs{addr: a, ll: ll, pfx: p.Masked(),
		snAddr: header.SolicitedNodeAddr(a), snLL: header.SolicitedNodeAddr(ll)}
}

func (v *v6addrs) isOwn(a tcpip.Address) bool { return a == v.addr || a == v.ll }

// checkAddr6 validates Config.Addr6 (when set).
func checkAddr6(p netip.Prefix) error {
	if !p.IsValid() {
		return nil
	}
	a := p.Addr()
	switch {
	case !a.Is6() || a.Is4In6():
		return fmt.Errorf("netstack: Addr6 %v is not an IPv6 prefix", p)
	case p.Bits() != 64:
		// SLAAC forms addresses from a 64-bit interface identifier
		// (RFC 4862 §5.5.3, RFC 4291 §2.5.1).
		return fmt.Errorf("netstack: Addr6 %v: the prefix must be a /64 (stateless autoconfiguration needs one)", p)
	case a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsLoopback() || a.IsUnspecified():
		return fmt.Errorf("netstack: Addr6 %v is not a routable unicast address (use a ULA such as fd12:3456:789a::1/64)", p)
	case a == p.Masked().Addr():
		return fmt.Errorf("netstack: Addr6 %v is the subnet-router anycast address (RFC 4291 §2.6.1); pick a host address such as %v", p, p.Masked().Addr().Next())
	}
	return nil
}

// Addr6 returns Config.Addr6 (zero when IPv6 is off).
func (st *Stack) Addr6() netip.Prefix { return st.cfg.Addr6 }

// LinkLocal6 returns the router's IPv6 link-local address, or the zero Addr
// when IPv6 is off.
func (st *Stack) LinkLocal6() netip.Addr {
	if st.v6 == nil {
		return netip.Addr{}
	}
	return netipAddr(st.v6.ll)
}

// isForeignUnicast6 reports whether a is an IPv6 destination the handlers
// may see: global or unique-local unicast, not ours, not on the hub's own
// prefix (those hosts are on-link and talk to each other directly).
func (st *Stack) isForeignUnicast6(a tcpip.Address) bool {
	if st.v6 == nil || a.Len() != 16 || st.v6.isOwn(a) {
		return false
	}
	ip := netipAddr(a)
	if !ip.IsGlobalUnicast() || ip.IsLinkLocalUnicast() || ip.Is4In6() || st.v6.pfx.Contains(ip) {
		return false
	}
	return true
}

// validClientSrc6 reports whether a is an acceptable IPv6 flow source: a
// unicast address other than ours, link-local included. A router must not
// forward link-local sources (RFC 4291 §2.5.6), but flows end here and leave
// from the host's own address, and replies come back on the link. Linux
// picks its link-local address as the source when its global one is still
// tentative (duplicate address detection, about a second after an RA):
// dropping those SYNs made the connection hang for its whole timeout.
func (st *Stack) validClientSrc6(a tcpip.Address) bool {
	if st.v6 == nil || a.Len() != 16 || st.v6.isOwn(a) {
		return false
	}
	ip := netipAddr(a)
	return (ip.IsGlobalUnicast() || ip.IsLinkLocalUnicast()) && !ip.Is4In6()
}

// filterIPv6 decides an inbound IPv6 packet (p, after the Ethernet header)
// before gVisor sees it. It keeps the router from claiming addresses that
// are not its own: with spoofing on, gVisor answers a Neighbor Solicitation
// for any target (network/ipv6/icmp.go checkLocalAddress returns true for a
// spoofing NIC), which would break every client's neighbour discovery and
// duplicate address detection. It drops:
//   - multicast other than all-nodes, all-routers, All_DHCP_Servers and the
//     router's solicited-node groups;
//   - Neighbor Solicitations for other targets; Neighbor Advertisements and
//     packets from another MAC claiming the router's addresses (a conflict,
//     answered by defend);
//   - Router Advertisements (another router on the hub; counted), Router
//     Solicitations (answered by the RA sender, not gVisor), redirects and
//     MLD.
func (e *linkEndpoint) filterIPv6(frame []byte, pktType tcpip.PacketType) bool {
	v := e.v6
	p := frame[ethHeaderLen:]
	if v == nil {
		e.ctr.dropProto.Add(1)
		return false
	}
	ip := header.IPv6(p)
	if len(p) < header.IPv6MinimumSize || !ip.IsValid(len(p)) {
		e.ctr.dropMalformed.Add(1)
		return false
	}
	src, dst := ip.SourceAddress(), ip.DestinationAddress()
	srcMAC := header.Ethernet(frame).SourceAddress()
	if v.isOwn(src) {
		e.ctr.dropNDPConflict.Add(1)
		e.defend("an IPv6 packet from the router's address", net.HardwareAddr(srcMAC))
		return false
	}
	multicast := header.IsV6MulticastAddress(dst)
	if multicast != (pktType != tcpip.PacketHost) {
		e.ctr.dropNotForUs.Add(1) // multicast IP in a unicast frame or the reverse
		return false
	}
	if multicast && dst != header.IPv6AllNodesMulticastAddress && dst != header.IPv6AllRoutersLinkLocalMulticastAddress &&
		dst != dhcp6ServersAddr && dst != v.snAddr && dst != v.snLL {
		e.ctr.dropNotForUs.Add(1)
		return false
	}
	if ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
		if ip.NextHeader() == uint8(header.IPv6HopByHopOptionsExtHdrIdentifier) && multicast {
			e.ctr.dropNDPOther.Add(1) // MLD reports and queries (router alert)
			return false
		}
		return true
	}
	m := ip.Payload()
	if len(m) < header.ICMPv6MinimumSize {
		e.ctr.dropMalformed.Add(1)
		return false
	}
	switch m[0] {
	case icmp6RouterSolicit:
		// RFC 4861 §6.1.1: hop limit 255, code 0, ICMP length ≥ 8.
		if ip.HopLimit() != 255 || m[1] != 0 || len(m) < 8 {
			e.ctr.dropMalformed.Add(1)
			return false
		}
		e.ctr.routerSolicits.Add(1)
		if e.onRS != nil {
			e.onRS(srcMAC, src)
		}
		return false
	case icmp6NeighborSolicit:
		if len(m) < header.ICMPv6NeighborSolicitMinimumSize {
			e.ctr.dropMalformed.Add(1)
			return false
		}
		if t := tcpip.AddrFrom16Slice(m[8:24]); !v.isOwn(t) && !e.isProxyNDP(t) {
			e.ctr.dropNDPOther.Add(1)
			return false
		}
		return true
	case icmp6NeighborAdvert:
		if len(m) < header.ICMPv6NeighborAdvertMinimumSize {
			e.ctr.dropMalformed.Add(1)
			return false
		}
		if v.isOwn(tcpip.AddrFrom16Slice(m[8:24])) {
			e.ctr.dropNDPConflict.Add(1)
			e.defend("a Neighbor Advertisement claiming the router's IPv6 address", net.HardwareAddr(srcMAC))
			return false
		}
		return true
	case icmp6RouterAdvert:
		e.ctr.foreignRAs.Add(1)
		e.ctr.dropNDPOther.Add(1)
		return false
	case icmp6Redirect, icmp6MLDQuery, icmp6MLDReport, icmp6MLDDone, icmp6MLDv2Report:
		e.ctr.dropNDPOther.Add(1)
		return false
	}
	return true
}

// isProxyNDP reports whether the router answers Neighbor Solicitations for
// t besides its own addresses. None today: the host-loopback alias is IPv4.
func (e *linkEndpoint) isProxyNDP(tcpip.Address) bool { return false }

// fixOutboundNS rewrites the source of a Neighbor Solicitation gVisor sends
// on behalf of a foreign address (a reply from a spoofed source needs the
// client's MAC) to the router's link-local address. Left alone, the client
// would add a neighbour entry for that foreign address (RFC 4861 §7.2.3)
// and the solicitation would advertise a host the hub does not have. f is
// a whole outbound frame.
func (e *linkEndpoint) fixOutboundNS(f []byte) {
	v := e.v6
	if v == nil || len(f) < ethHeaderLen+header.IPv6MinimumSize+header.ICMPv6NeighborSolicitMinimumSize {
		return
	}
	ip := header.IPv6(f[ethHeaderLen:])
	if ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) {
		return
	}
	m := ip.Payload()
	if len(m) < header.ICMPv6NeighborSolicitMinimumSize || m[0] != icmp6NeighborSolicit {
		return
	}
	src := ip.SourceAddress()
	if v.isOwn(src) || src.Unspecified() {
		return
	}
	ip.SetSourceAddress(v.ll)
	setICMPv6Checksum(m, v.ll, ip.DestinationAddress())
}

// setICMPv6Checksum fills in the checksum of the ICMPv6 message m sent from
// src to dst (RFC 4443 §2.3: over the pseudo-header and the message).
func setICMPv6Checksum(m []byte, src, dst tcpip.Address) {
	m[2], m[3] = 0, 0
	xsum := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, src, dst, uint16(len(m)))
	binary.BigEndian.PutUint16(m[2:], ^checksum.Checksum(m, xsum))
}

// validChecksums6 verifies the transport checksum of an IPv6 packet whose
// next header is TCP, UDP or ICMPv6 (no extension headers). It reports
// checked=false for packets it cannot check (extension headers, fragments):
// those go to gVisor unmarked, and gVisor verifies them itself.
func validChecksums6(p []byte) (ok, checked bool) {
	ip := header.IPv6(p)
	if len(p) < header.IPv6MinimumSize || !ip.IsValid(len(p)) {
		return true, false // the stack's own parsing rejects it
	}
	payload := ip.Payload()
	proto := ip.TransportProtocol()
	switch proto {
	case header.TCPProtocolNumber:
		if len(payload) < header.TCPMinimumSize {
			return true, false
		}
	case header.UDPProtocolNumber:
		if len(payload) < header.UDPMinimumSize {
			return true, false
		}
		// A zero UDP checksum is invalid over IPv6 (RFC 8200 §8.1).
	case header.ICMPv6ProtocolNumber:
		if len(payload) < header.ICMPv6MinimumSize {
			return true, false
		}
	default:
		return true, false
	}
	xsum := header.PseudoHeaderChecksum(proto, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(payload)))
	return checksum.Checksum(payload, xsum) == 0xffff, true
}

// writeIPv6 frames payload as one IPv6 packet (hop limit hops) in Ethernet
// to dstMAC and queues it. Like writeIPv4 it bypasses gVisor; IPv6 routers
// do not fragment, so payloads over the MTU are an error.
func (st *Stack) writeIPv6(dstMAC tcpip.LinkAddress, src, dst tcpip.Address, proto tcpip.TransportProtocolNumber, hops uint8, payload []byte) error {
	if st.closed.Load() {
		return fmt.Errorf("netstack: stack closed")
	}
	if header.IPv6MinimumSize+len(payload) > int(st.ep.MTU()) {
		return fmt.Errorf("netstack: IPv6 packet of %d bytes exceeds the MTU %d", header.IPv6MinimumSize+len(payload), st.ep.MTU())
	}
	f := make([]byte, ethHeaderLen+header.IPv6MinimumSize+len(payload))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: st.mac, DstAddr: dstMAC, Type: header.IPv6ProtocolNumber})
	header.IPv6(f[ethHeaderLen:]).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(payload)),
		TransportProtocol: proto,
		HopLimit:          hops,
		SrcAddr:           src,
		DstAddr:           dst,
	})
	copy(f[ethHeaderLen+header.IPv6MinimumSize:], payload)
	return st.ep.enqueueFrames([][]byte{f})
}

// neighborAdvert builds an unsolicited Neighbor Advertisement for target
// with the router and override flags set and the router's MAC as target
// link-layer address (RFC 4861 §7.2.6), to all-nodes. It re-teaches clients
// after someone claimed the router's address.
func (e *linkEndpoint) neighborAdvert(target tcpip.Address) []byte {
	const msgLen = header.ICMPv6NeighborAdvertMinimumSize + 8
	f := make([]byte, ethHeaderLen+header.IPv6MinimumSize+msgLen)
	dst := header.IPv6AllNodesMulticastAddress
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: e.mac, DstAddr: header.EthernetAddressFromMulticastIPv6Address(dst), Type: header.IPv6ProtocolNumber})
	header.IPv6(f[ethHeaderLen:]).Encode(&header.IPv6Fields{
		PayloadLength: msgLen, TransportProtocol: header.ICMPv6ProtocolNumber, HopLimit: 255,
		SrcAddr: e.v6.ll, DstAddr: dst,
	})
	m := f[ethHeaderLen+header.IPv6MinimumSize:]
	m[0] = icmp6NeighborAdvert
	m[4] = 0x80 | 0x20 // R (router), O (override); not S: unsolicited
	copy(m[8:24], target.AsSlice())
	m[24], m[25] = 2, 1 // target link-layer address option, 8 bytes
	copy(m[26:32], e.mac)
	setICMPv6Checksum(m, e.v6.ll, dst)
	return f
}

// configure6 adds the router's IPv6 addresses, the default route and the
// DHCPv6 servers group, and installs the ICMPv6 default handler.
func (st *Stack) configure6() error {
	s := st.s
	for _, a := range []tcpip.AddressWithPrefix{
		{Address: st.v6.addr, PrefixLen: st.cfg.Addr6.Bits()},
		{Address: st.v6.ll, PrefixLen: 64},
	} {
		pa := tcpip.ProtocolAddress{Protocol: ipv6.ProtocolNumber, AddressWithPrefix: a}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: add IPv6 address %v: %v", a, err)
		}
	}
	// gVisor delivers multicast only for joined groups (all-nodes and the
	// solicited-node groups are joined with the addresses).
	if err := s.JoinGroup(ipv6.ProtocolNumber, nicID, dhcp6ServersAddr); err != nil {
		return fmt.Errorf("netstack: join ff02::1:2: %v", err)
	}
	s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	s.SetTransportProtocolHandler(icmp.ProtocolNumber6, st.icmp6Default)
	return nil
}

// icmp6Default is the ICMPv6 default handler, the twin of icmpDefault: the
// ipv6 layer calls it for echo requests (and replies) no endpoint took, and
// skips its own reply when it returns true (network/ipv6/icmp.go,
// "Skip the built-in ICMP echo reply if the request was consumed by a
// per-stack default handler"). gVisor answers pings to the router's own
// addresses; every other echo request goes to the echo handler, never to a
// fake reply (PEERS.md §3 pitfall 5).
func (st *Stack) icmp6Default(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	if st.isRouterAddr(id.LocalAddress) {
		return false
	}
	h := header.ICMPv6(pkt.TransportHeader().Slice())
	if len(h) < header.ICMPv6EchoMinimumSize || h.Type() != header.ICMPv6EchoRequest {
		return true
	}
	if !st.isForeignUnicast(id.LocalAddress) || !st.validClientSrc(id.RemoteAddress) {
		return true
	}
	ip := header.IPv6(pkt.NetworkHeader().Slice())
	if len(ip) < header.IPv6MinimumSize {
		return true
	}
	hp := st.echoHandler.Load()
	if hp == nil {
		st.fctr.echoUnhandled.Add(1)
		return true
	}
	req := EchoRequest{
		Src:     netipAddr(id.RemoteAddress),
		Dst:     netipAddr(id.LocalAddress),
		ID:      h.Ident(),
		Seq:     h.Sequence(),
		TTL:     ip.HopLimit(),
		Payload: pkt.Data().AsRange().ToSlice(),
	}
	req.q = quotePacket(pkt)
	st.fctr.echoRequests.Add(1)
	(*hp)(req)
	return true
}

// writeEchoReply6 answers an ICMPv6 echo request (WriteEchoReply for IPv6).
func (st *Stack) writeEchoReply6(req EchoRequest, payload []byte) error {
	msg := make([]byte, header.ICMPv6EchoMinimumSize+len(payload))
	h := header.ICMPv6(msg)
	h.SetType(header.ICMPv6EchoReply)
	h.SetIdent(req.ID)
	h.SetSequence(req.Seq)
	copy(msg[header.ICMPv6EchoMinimumSize:], payload)
	src, dst := tcpip.AddrFrom16(req.Dst.As16()), tcpip.AddrFrom16(req.Src.As16())
	setICMPv6Checksum(msg, src, dst)
	return st.writeIPv6(req.q.mac, src, dst, header.ICMPv6ProtocolNumber, 64, msg)
}

// icmp6Code maps a reject kind to an ICMPv6 destination unreachable code
// (RFC 4443 §3.1); ok is false for RejectRST.
func icmp6Code(how Reject) (code uint8, ok bool) {
	switch how {
	case RejectNetUnreachable:
		return 0, true // no route to destination
	case RejectAdminProhibited:
		return 1, true
	case RejectHostUnreachable:
		return 3, true // address unreachable
	case RejectPortUnreachable:
		return 4, true
	}
	return 0, false
}

// writeICMPv6Error sends an ICMPv6 error of type typ/code from the router's
// address to the source of the quoted packet (RFC 4443 §2.4: as much of it
// as fits; our quote is at most maxQuote bytes). Errors come from the
// router's own (unique local) address, as a router's would.
func (st *Stack) writeICMPv6Error(q quote, typ, code uint8) error {
	if len(q.data) < header.IPv6MinimumSize || q.mac == "" || st.v6 == nil {
		return fmt.Errorf("netstack: ICMPv6 error: no quoted packet")
	}
	if !st.s.AllowICMPMessage() {
		st.fctr.icmpErrorsLimited.Add(1)
		return errICMPRateLimited
	}
	orig := header.IPv6(q.data)
	msg := make([]byte, 8+len(q.data))
	msg[0], msg[1] = typ, code
	copy(msg[8:], q.data)
	src := st.v6.addr
	if header.IsV6LinkLocalUnicastAddress(orig.SourceAddress()) {
		src = st.v6.ll
	}
	setICMPv6Checksum(msg, src, orig.SourceAddress())
	if err := st.writeIPv6(q.mac, src, orig.SourceAddress(), header.ICMPv6ProtocolNumber, 64, msg); err != nil {
		return err
	}
	st.fctr.icmpErrorsSent.Add(1)
	return nil
}

// writeUnreachable sends a destination unreachable of kind how about the
// quoted packet, ICMPv4 or ICMPv6 as the packet was.
func (st *Stack) writeUnreachable(q quote, how Reject) error {
	if len(q.data) > 0 && q.data[0]>>4 == 6 {
		code, ok := icmp6Code(how)
		if !ok {
			return fmt.Errorf("netstack: %v is not an ICMP unreachable kind", how)
		}
		return st.writeICMPv6Error(q, 1, code)
	}
	return st.writeICMPError(q, header.ICMPv4DstUnreachable, icmpCode(how))
}
