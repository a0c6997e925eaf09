package netstack

import (
	"errors"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

var errICMPRateLimited = errors.New("netstack: ICMP error rate-limited")

type echoState struct {
	q quote // the request: client MAC and datagram start, for replies and errors
}

// SetICMPEchoHandler sets the handler for echo requests to non-local
// addresses. h is called synchronously on the packet path and must not block
// (hand the request to a goroutine or queue). The stack never answers such
// requests itself: without a handler, or when the handler does not reply,
// the client sees no reply. Echo requests to the router's own address are
// answered by the stack and never reach h; echo requests to broadcast or
// multicast addresses are ignored.
func (st *Stack) SetICMPEchoHandler(h func(EchoRequest)) {
	if h == nil {
		st.echoHandler.Store(nil)
		return
	}
	st.echoHandler.Store(&h)
}

// icmpDefault is the ICMPv4 default handler. The ipv4 layer calls it for
// echo requests and replies that no ICMP endpoint took. Returning true for
// an echo request makes gVisor skip its own reply (network/ipv4/icmp.go in
// this pin: "Skip the built-in ICMP echo reply if the request was consumed
// by a per-stack default handler", gvisor PR #11609; PEERS.md §3 pitfall 5).
// So: false only for the router's own address (gVisor replies), true for
// everything else.
func (st *Stack) icmpDefault(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	if st.isRouterAddr(id.LocalAddress) {
		return false
	}
	h := header.ICMPv4(pkt.TransportHeader().Slice())
	if len(h) < header.ICMPv4MinimumSize || h.Type() != header.ICMPv4Echo {
		return true
	}
	if !st.isForeignUnicast(id.LocalAddress) || !st.validClientSrc(id.RemoteAddress) {
		return true // no broadcast pings (smurf), no bogus sources
	}
	// Checksum-invalid requests are also delivered here (for raw sockets).
	if checksum.Checksum(h, pkt.Data().Checksum()) != 0xffff {
		return true
	}
	hp := st.echoHandler.Load()
	if hp == nil {
		st.fctr.echoUnhandled.Add(1)
		return true
	}
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	req := EchoRequest{
		Src:     netip.AddrFrom4(id.RemoteAddress.As4()),
		Dst:     netip.AddrFrom4(id.LocalAddress.As4()),
		ID:      h.Ident(),
		Seq:     h.Sequence(),
		TTL:     ip.TTL(),
		Payload: pkt.Data().AsRange().ToSlice(),
	}
	req.q = quotePacket(pkt)
	st.fctr.echoRequests.Add(1)
	(*hp)(req)
	return true
}

// WriteEchoReply sends an ICMP echo reply from req.Dst to req.Src with req's
// ID and Seq and the given payload (usually req.Payload), addressed to the
// Ethernet address the request came from. Replies larger than the MTU are
// fragmented. It does not retain payload.
func (st *Stack) WriteEchoReply(req EchoRequest, payload []byte) error {
	if req.q.mac == "" || req.Src.Is4() != req.Dst.Is4() {
		return errors.New("netstack: echo reply: request did not come from this stack")
	}
	if req.Src.Is6() {
		return st.writeEchoReply6(req, payload)
	}
	if len(payload) > 65535-header.IPv4MinimumSize-header.ICMPv4MinimumSize {
		return fmt.Errorf("netstack: echo reply: payload of %d bytes is too large", len(payload))
	}
	msg := make([]byte, header.ICMPv4MinimumSize+len(payload))
	h := header.ICMPv4(msg)
	h.SetType(header.ICMPv4EchoReply)
	h.SetCode(0)
	h.SetIdent(req.ID)
	h.SetSequence(req.Seq)
	copy(msg[header.ICMPv4MinimumSize:], payload)
	h.SetChecksum(^checksum.Checksum(msg, 0))
	src := tcpip.AddrFrom4(req.Dst.As4())
	dst := tcpip.AddrFrom4(req.Src.As4())
	return st.writeIPv4(req.q.mac, src, dst, header.ICMPv4ProtocolNumber, msg)
}

// WriteICMPUnreachable sends an ICMP destination unreachable (kind how;
// RejectRST is not valid here) from the router address to req.Src, quoting
// req's packet.
func (st *Stack) WriteICMPUnreachable(req EchoRequest, how Reject) error {
	if how == RejectRST || icmpCode(how) == 0xff {
		return fmt.Errorf("netstack: %v is not an ICMP unreachable kind", how)
	}
	if req.q.mac == "" {
		return errors.New("netstack: ICMP unreachable: request did not come from this stack")
	}
	return st.writeUnreachable(req.q, how)
}

// WriteICMPTimeExceeded sends an ICMP time exceeded in transit (code 0) from
// the router address to req.Src, quoting req's packet.
func (st *Stack) WriteICMPTimeExceeded(req EchoRequest) error {
	if req.q.mac == "" {
		return errors.New("netstack: ICMP time exceeded: request did not come from this stack")
	}
	if req.Src.Is6() {
		return st.writeICMPv6Error(req.q, 3, 0) // time exceeded, hop limit exceeded in transit
	}
	return st.writeICMPError(req.q, header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded)
}

// icmpCode maps an ICMP reject kind to its destination unreachable code
// (RFC 792, RFC 1812 §5.2.7.1); 0xff for RejectRST or unknown kinds.
func icmpCode(how Reject) header.ICMPv4Code {
	switch how {
	case RejectNetUnreachable:
		return header.ICMPv4NetUnreachable
	case RejectHostUnreachable:
		return header.ICMPv4HostUnreachable
	case RejectPortUnreachable:
		return header.ICMPv4PortUnreachable
	case RejectAdminProhibited:
		return header.ICMPv4AdminProhibited
	}
	return 0xff
}

// writeICMPError sends an ICMP error of type typ/code from the router
// address to the source of the quoted datagram.
func (st *Stack) writeICMPError(q quote, typ header.ICMPv4Type, code header.ICMPv4Code) error {
	if len(q.data) < header.IPv4MinimumSize || q.mac == "" {
		return errors.New("netstack: ICMP error: no quoted datagram")
	}
	// Share gVisor's ICMP budget (1000/s, burst 50 by default), which also
	// limits the errors and echo replies gVisor sends itself (RFC 1812
	// §4.3.2.8), so a flood of rejected flows cannot become an ICMP flood.
	if !st.s.AllowICMPMessage() {
		st.fctr.icmpErrorsLimited.Add(1)
		return errICMPRateLimited
	}
	orig := header.IPv4(q.data)
	msg := make([]byte, header.ICMPv4MinimumSize+len(q.data))
	h := header.ICMPv4(msg)
	h.SetType(typ)
	h.SetCode(code)
	copy(msg[header.ICMPv4MinimumSize:], q.data)
	h.SetChecksum(^checksum.Checksum(msg, 0))
	if err := st.writeIPv4(q.mac, st.addr, orig.SourceAddress(), header.ICMPv4ProtocolNumber, msg); err != nil {
		return err
	}
	st.fctr.icmpErrorsSent.Add(1)
	return nil
}

// writeIPv4 frames payload as IPv4 (fragmenting to the MTU) in Ethernet to
// dstMAC and queues the frames on the link. It bypasses gVisor: these
// packets have no endpoint (replies on behalf of foreign hosts, errors about
// packets gVisor handed to us).
func (st *Stack) writeIPv4(dstMAC tcpip.LinkAddress, src, dst tcpip.Address, proto tcpip.TransportProtocolNumber, payload []byte) error {
	if st.closed.Load() {
		return errors.New("netstack: stack closed")
	}
	mtu := int(st.ep.MTU())
	maxData := (mtu - header.IPv4MinimumSize) &^ 7 // fragment data is in 8-byte units
	id := uint16(st.ipID.Add(1))
	var frames [][]byte
	for off := 0; off < len(payload) || off == 0; {
		n := min(len(payload)-off, maxData)
		more := off+n < len(payload)
		f := make([]byte, ethHeaderLen+header.IPv4MinimumSize+n)
		header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: st.mac, DstAddr: dstMAC, Type: header.IPv4ProtocolNumber})
		ip := header.IPv4(f[ethHeaderLen:])
		var flags uint8
		if more {
			flags = header.IPv4FlagMoreFragments
		}
		ip.Encode(&header.IPv4Fields{
			TotalLength:    uint16(header.IPv4MinimumSize + n),
			ID:             id,
			Flags:          flags,
			FragmentOffset: uint16(off),
			TTL:            64,
			Protocol:       uint8(proto),
			SrcAddr:        src,
			DstAddr:        dst,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(f[ethHeaderLen+header.IPv4MinimumSize:], payload[off:off+n])
		frames = append(frames, f)
		off += n
		if n == 0 {
			break
		}
	}
	return st.ep.enqueueFrames(frames)
}
