package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Host GSO at the link (netstack/PERF.md, lever 13).
//
// The endpoint tells gVisor it segments TCP itself (HostGSOSupported, like a
// NIC with TSO). gVisor's TCP sender then hands over one packet of up to
// gsoMaxSize per send, its IP header built once, with only the pseudo-header
// sum in the TCP checksum field (Linux's CHECKSUM_PARTIAL), and the endpoint
// cuts it into MSS-sized frames while copying it into frame buffers. With
// gVisor's own software GSO every MSS-sized piece went through a packet
// buffer, the IP layer, the NIC and the queueing discipline on its own.
//
// Every TCP packet of an endpoint comes this way, so a packet that already
// fits one frame still needs its checksum completed here.

// gsoMaxSize bounds a host-GSO packet: the IPv4 total length and the IPv6
// payload length are 16-bit fields.
const gsoMaxSize = 60 << 10

// gsoLayout is where the headers of a host-GSO TCP packet are.
type gsoLayout struct {
	ipLen, tcpOff, hdrLen int
	pseudo                uint16 // pseudo-header sum without the length
}

// parseGSO finds the headers of the host-GSO TCP packet b (Ethernet + IP +
// TCP + payload, as gVisor built it); ok is false for a packet it cannot
// cut.
func parseGSO(b []byte, gso stack.GSO) (l gsoLayout, ok bool) {
	const ipOff = ethHeaderLen
	var src, dst []byte
	switch gso.Type {
	case stack.GSOTCPv4:
		if len(b) < ipOff+header.IPv4MinimumSize {
			return l, false
		}
		l.ipLen = int(header.IPv4(b[ipOff:]).HeaderLength())
		src, dst = b[ipOff+12:ipOff+16], b[ipOff+16:ipOff+20]
	case stack.GSOTCPv6:
		if len(b) < ipOff+header.IPv6MinimumSize || header.IPv6(b[ipOff:]).NextHeader() != uint8(header.TCPProtocolNumber) {
			return l, false
		}
		l.ipLen = header.IPv6MinimumSize
		src, dst = b[ipOff+8:ipOff+24], b[ipOff+24:ipOff+40]
	default:
		return l, false
	}
	l.tcpOff = ipOff + l.ipLen
	if l.ipLen < header.IPv4MinimumSize || len(b) < l.tcpOff+header.TCPMinimumSize {
		return l, false
	}
	off := int(header.TCP(b[l.tcpOff:]).DataOffset())
	l.hdrLen = l.tcpOff + off
	if off < header.TCPMinimumSize || l.hdrLen > len(b) {
		return l, false
	}
	l.pseudo = checksum.Combine(checksum.Checksum(dst, checksum.Checksum(src, 0)), uint16(header.TCPProtocolNumber))
	return l, true
}

// setTCPChecksum completes the TCP checksum of the frame f.
func (l gsoLayout) setTCPChecksum(f []byte) {
	t := header.TCP(f[l.tcpOff:])
	t.SetChecksum(0)
	t.SetChecksum(^checksum.Checksum(t, checksum.Combine(l.pseudo, uint16(len(t)))))
}

// appendTCPFramesLocked appends to dst the frames of the host-GSO TCP packet
// b, each with complete checksums and passed through the ACK holder. Frames
// come from the free list. qmu is held.
func (e *linkEndpoint) appendTCPFramesLocked(dst [][]byte, b []byte, gso stack.GSO) [][]byte {
	const ipOff = ethHeaderLen
	l, ok := parseGSO(b, gso)
	if !ok {
		e.ctr.dropMalformed.Add(1)
		return dst
	}
	hdrLen, tcpOff := l.hdrLen, l.tcpOff
	payload := b[hdrLen:]
	mss := int(gso.MSS)
	if mss <= 0 || mss > e.frameCap-hdrLen {
		mss = e.frameCap - hdrLen
	}
	if mss <= 0 {
		e.ctr.dropTooBig.Add(1)
		return dst
	}
	th := header.TCP(b[tcpOff:])
	seq := th.SequenceNumber()
	flags := th.Flags()
	var id uint16
	if gso.Type == stack.GSOTCPv4 {
		id = header.IPv4(b[ipOff:]).ID()
	}
	for i, off := 0, 0; i == 0 || off < len(payload); i++ {
		end := min(off+mss, len(payload))
		n := hdrLen + end - off
		f := e.takeFrameLocked(n)
		copy(f, b[:hdrLen])
		copy(f[hdrLen:], payload[off:end])
		if gso.Type == stack.GSOTCPv4 {
			ip := header.IPv4(f[ipOff:])
			ip.SetTotalLength(uint16(n - ipOff))
			ip.SetID(id + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		} else {
			header.IPv6(f[ipOff:]).SetPayloadLength(uint16(n - tcpOff))
		}
		t := header.TCP(f[tcpOff:])
		t.SetSequenceNumber(seq + uint32(off))
		fl := flags
		if end < len(payload) { // not the last: FIN and PSH belong to the last
			fl &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if i > 0 { // CWR only on the first (RFC 3168 §6.1.2, as TSO does)
			fl &^= header.TCPFlagCwr
		}
		t.SetFlags(uint8(fl))
		l.setTCPChecksum(f)
		if f = e.holdACKLocked(f); f != nil {
			dst = append(dst, f)
		}
		off = end
	}
	return dst
}
