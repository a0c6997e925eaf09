package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoPacket builds what gVisor hands a host-GSO link: Ethernet, IP (total
// length of the whole packet, checksum valid), TCP with options and only the
// pseudo-header sum in its checksum field, then the payload.
func gsoPacket(v6 bool, payload []byte, flags header.TCPFlags) ([]byte, stack.GSO) {
	src4, dst4 := tcpip.AddrFrom4([4]byte{192, 168, 30, 1}), tcpip.AddrFrom4([4]byte{192, 168, 30, 10})
	src6 := tcpip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1})
	dst6 := tcpip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10})
	opts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2} // NOP NOP timestamps
	tcpLen := header.TCPMinimumSize + len(opts) + len(payload)
	ipLen := header.IPv4MinimumSize
	if v6 {
		ipLen = header.IPv6MinimumSize
	}
	b := make([]byte, ethHeaderLen+ipLen+tcpLen)
	eth := header.Ethernet(b)
	eth.Encode(&header.EthernetFields{SrcAddr: "\x02\x00\x00\x00\x00\x01", DstAddr: "\x02\x00\x00\x00\x00\x02", Type: header.IPv4ProtocolNumber})
	var src, dst tcpip.Address
	gso := stack.GSO{NeedsCsum: true, CsumOffset: header.TCPChecksumOffset, MSS: 1448, MaxSize: gsoMaxSize}
	if v6 {
		eth.Encode(&header.EthernetFields{SrcAddr: "\x02\x00\x00\x00\x00\x01", DstAddr: "\x02\x00\x00\x00\x00\x02", Type: header.IPv6ProtocolNumber})
		header.IPv6(b[ethHeaderLen:]).Encode(&header.IPv6Fields{PayloadLength: uint16(tcpLen), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: src6, DstAddr: dst6})
		src, dst = src6, dst6
		gso.Type, gso.L3HdrLen, gso.MSS = stack.GSOTCPv6, header.IPv6MinimumSize, 1428
	} else {
		ip := header.IPv4(b[ethHeaderLen:])
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(ipLen + tcpLen), ID: 65534, Flags: header.IPv4FlagDontFragment, TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src4, DstAddr: dst4})
		ip.SetChecksum(^ip.CalculateChecksum())
		src, dst = src4, dst4
		gso.Type, gso.L3HdrLen = stack.GSOTCPv4, header.IPv4MinimumSize
	}
	t := header.TCP(b[ethHeaderLen+ipLen:])
	t.Encode(&header.TCPFields{SrcPort: 9000, DstPort: 40000, SeqNum: 0xfffff000, AckNum: 77, DataOffset: uint8(header.TCPMinimumSize + len(opts)), Flags: flags, WindowSize: 512})
	copy(t[header.TCPMinimumSize:], opts)
	copy(t[header.TCPMinimumSize+len(opts):], payload)
	t.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen)))
	return b, gso
}

// TestHostGSOFrames: every frame cut from a host-GSO packet is a valid
// MTU-sized TCP segment (IP and TCP checksums, lengths, sequence numbers
// across the 32-bit wrap, IPv4 IDs, FIN/PSH only on the last, CWR only on the
// first), and together they carry the payload exactly once.
func TestHostGSOFrames(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, size := range []int{0, 1, 1428, 1429, 1448, 1449, 3 * 1448, 40000, gsoMaxSize - 200} {
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			flags := header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr
			b, gso := gsoPacket(v6, payload, flags)
			e := &linkEndpoint{frameCap: 1500 + ethHeaderLen, ctr: new(linkCounters)}
			frames := e.appendTCPFramesLocked(nil, b, gso)
			mss := int(gso.MSS)
			want := max(1, (size+mss-1)/mss)
			if len(frames) != want {
				t.Fatalf("v6=%v size %d: %d frames, want %d", v6, size, len(frames), want)
			}
			var got []byte
			for i, f := range frames {
				if len(f) > e.frameCap {
					t.Fatalf("v6=%v size %d frame %d: %d bytes, over the MTU", v6, size, i, len(f))
				}
				var th header.TCP
				var src, dst tcpip.Address
				if v6 {
					ip := header.IPv6(f[ethHeaderLen:])
					if int(ip.PayloadLength()) != len(f)-ethHeaderLen-header.IPv6MinimumSize {
						t.Fatalf("v6 frame %d: payload length %d for %d bytes", i, ip.PayloadLength(), len(f))
					}
					th, src, dst = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
				} else {
					ip := header.IPv4(f[ethHeaderLen:])
					if !ip.IsChecksumValid() || int(ip.TotalLength()) != len(f)-ethHeaderLen {
						t.Fatalf("v4 size %d frame %d: IP checksum valid %v, total length %d for %d bytes", size, i, ip.IsChecksumValid(), ip.TotalLength(), len(f))
					}
					if ip.ID() != uint16(65534+i) {
						t.Fatalf("v4 frame %d: IP ID %d, want %d", i, ip.ID(), uint16(65534+i))
					}
					th, src, dst = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
				}
				body := th.Payload()
				xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(th)))
				if !th.IsChecksumValid(src, dst, checksum.Checksum(body, 0), uint16(len(body))) {
					t.Fatalf("v6=%v size %d frame %d: TCP checksum invalid (pseudo %#x)", v6, size, i, xsum)
				}
				if wantSeq := 0xfffff000 + uint32(len(got)); th.SequenceNumber() != wantSeq {
					t.Fatalf("v6=%v frame %d: seq %#x, want %#x", v6, i, th.SequenceNumber(), wantSeq)
				}
				last := i == len(frames)-1
				fl := th.Flags()
				if fl.Contains(header.TCPFlagFin) != last || fl.Contains(header.TCPFlagPsh) != last || fl.Contains(header.TCPFlagCwr) != (i == 0) || !fl.Contains(header.TCPFlagAck) {
					t.Fatalf("v6=%v size %d frame %d of %d: flags %v", v6, size, i, len(frames), fl)
				}
				got = append(got, body...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("v6=%v size %d: the frames carry %d bytes that differ from the %d sent", v6, size, len(got), len(payload))
			}
		}
	}
}

// TestHostGSOFramesMalformed: packets the endpoint cannot cut are counted
// and dropped, not sent or panicked on.
func TestHostGSOFramesMalformed(t *testing.T) {
	b, gso := gsoPacket(false, make([]byte, 3000), header.TCPFlagAck)
	e := &linkEndpoint{frameCap: 1500 + ethHeaderLen, ctr: new(linkCounters)}
	bad := append([]byte(nil), b...)
	bad[ethHeaderLen+header.IPv4MinimumSize+12] = 0x10 // TCP data offset 4 bytes
	for name, c := range map[string]struct {
		b   []byte
		gso stack.GSO
	}{
		"truncated IP":      {b[:ethHeaderLen+10], gso},
		"truncated TCP":     {b[:ethHeaderLen+header.IPv4MinimumSize+8], gso},
		"short data offset": {bad, gso},
		"unknown GSO type":  {b, stack.GSO{Type: stack.GSOGvisor, NeedsCsum: true, MSS: 1448}},
	} {
		before := e.ctr.dropMalformed.Load()
		if frames := e.appendTCPFramesLocked(nil, c.b, c.gso); len(frames) != 0 {
			t.Errorf("%s: %d frames sent", name, len(frames))
		}
		if e.ctr.dropMalformed.Load() != before+1 {
			t.Errorf("%s: not counted as malformed", name)
		}
	}
}

// TestHostGSOPacketPath: appendFramesLocked, as gVisor's packets reach it,
// completes the checksum of a packet that fits one frame in place and cuts
// one that is bigger than the frame or than the peer's MSS.
func TestHostGSOPacketPath(t *testing.T) {
	for _, c := range []struct {
		size, mss, frames int
	}{
		{0, 1448, 1},      // a pure ACK
		{100, 1448, 1},    // a response
		{1448, 1448, 1},   // a full segment
		{1400, 536, 3},    // fits the frame but not the peer's MSS
		{20000, 1448, 14}, // a burst
	} {
		b, gso := gsoPacket(false, bytes.Repeat([]byte{0xab}, c.size), header.TCPFlagAck|header.TCPFlagPsh)
		gso.MSS = uint16(c.mss)
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		pkt.GSOOptions = gso
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
		e := &linkEndpoint{frameCap: 1500 + ethHeaderLen, ctr: new(linkCounters)}
		frames := e.appendFramesLocked(nil, pkt)
		pkt.DecRef()
		if len(frames) != c.frames {
			t.Fatalf("size %d, MSS %d: %d frames, want %d", c.size, c.mss, len(frames), c.frames)
		}
		total := 0
		for i, f := range frames {
			ip := header.IPv4(f[ethHeaderLen:])
			th := header.TCP(ip.Payload())
			body := th.Payload()
			if len(body) > c.mss || !ip.IsChecksumValid() || !th.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(body, 0), uint16(len(body))) {
				t.Fatalf("size %d, MSS %d, frame %d: %d payload bytes, IP checksum valid %v, TCP checksum valid %v", c.size, c.mss, i, len(body),
					ip.IsChecksumValid(), th.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(body, 0), uint16(len(body))))
			}
			total += len(body)
		}
		if total != c.size {
			t.Fatalf("size %d, MSS %d: frames carry %d bytes", c.size, c.mss, total)
		}
	}
}
