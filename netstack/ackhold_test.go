package netstack

import (
	"bytes"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// tcpFrame builds an Ethernet frame with a TCP segment from src to dst
// (both IPv4 or both IPv6). opts are raw TCP options (padded to 4 bytes).
func tcpFrame(src, dst netip.AddrPort, flags header.TCPFlags, seq, ack uint32, opts, payload []byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, header.TCPOptionNOP)
	}
	tcpLen := header.TCPMinimumSize + len(opts) + len(payload)
	ipLen := header.IPv4MinimumSize
	etype := header.IPv4ProtocolNumber
	if src.Addr().Is6() {
		ipLen, etype = header.IPv6MinimumSize, header.IPv6ProtocolNumber
	}
	f := make([]byte, ethHeaderLen+ipLen+tcpLen)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(fzRouterMAC), DstAddr: "\x02\x00\x00\x00\x00\x01", Type: etype})
	ip := f[ethHeaderLen:]
	if src.Addr().Is4() {
		header.IPv4(ip).Encode(&header.IPv4Fields{TotalLength: uint16(ipLen + tcpLen), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4())})
	} else {
		header.IPv6(ip).Encode(&header.IPv6Fields{PayloadLength: uint16(tcpLen), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
			SrcAddr: tcpip.AddrFrom16(src.Addr().As16()), DstAddr: tcpip.AddrFrom16(dst.Addr().As16())})
	}
	t := header.TCP(ip[ipLen:])
	t.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: uint8(header.TCPMinimumSize + len(opts)), Flags: flags, WindowSize: 1000})
	copy(t[header.TCPMinimumSize:], opts)
	copy(t[header.TCPMinimumSize+len(opts):], payload)
	return f
}

var (
	ahRouter = netip.MustParseAddrPort("10.77.0.1:80")
	ahClient = netip.MustParseAddrPort("192.168.30.10:40000")
	ahOther  = netip.MustParseAddrPort("192.168.30.11:40001")
	ahTS     = []byte{header.TCPOptionNOP, header.TCPOptionNOP, header.TCPOptionTS, 10, 0, 0, 0, 1, 0, 0, 0, 2}
)

// TestACKHolderDecisions walks one flow through the holder's rules.
func TestACKHolderDecisions(t *testing.T) {
	var ctr linkCounters
	h := newACKHolder(time.Hour, 1500, &ctr, func() {})
	defer h.timer.Stop()
	ack := func(n uint32, opts []byte) []byte {
		return tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1000, n, opts, nil)
	}
	steps := []struct {
		name        string
		frame       []byte
		held        bool   // filter keeps it
		dropsFrame  []byte // the held frame it supersedes, if any
		wantDelayed uint64
	}{
		{name: "first frame of a flow (SYN-ACK) passes", frame: tcpFrame(ahRouter, ahClient, header.TCPFlagSyn|header.TCPFlagAck, 999, 5000, nil, nil)},
		{name: "ACK of 64 new bytes is held", frame: ack(5064, ahTS), held: true, wantDelayed: 1},
		{name: "ACK of 100 more replaces it", frame: ack(5164, ahTS), held: true, wantDelayed: 2},
		{name: "the response supersedes the held ACK", frame: tcpFrame(ahRouter, ahClient, header.TCPFlagAck|header.TCPFlagPsh, 1000, 5164, nil, []byte("reply")), wantDelayed: 2},
		{name: "duplicate ACK passes", frame: ack(5164, nil), wantDelayed: 2},
		{name: "ACK with SACK blocks passes", frame: ack(5200, []byte{header.TCPOptionNOP, header.TCPOptionNOP, header.TCPOptionSACK, 10, 0, 0, 0x20, 0, 0, 0, 0x30, 0}), wantDelayed: 2},
		{name: "ACK of two full segments passes (bulk keeps its clock)", frame: ack(5200+2*1460, nil), wantDelayed: 2},
		{name: "ACK of one segment is held", frame: ack(5200+3*1460, nil), held: true, wantDelayed: 3},
		{name: "FIN supersedes it", frame: tcpFrame(ahRouter, ahClient, header.TCPFlagFin|header.TCPFlagAck, 1005, 5200+3*1460, nil, nil), wantDelayed: 3},
	}
	var lastHeld []byte
	for _, s := range steps {
		send, dropped := h.filter(s.frame)
		if s.held != (send == nil) {
			t.Fatalf("%s: held %v, want %v", s.name, send == nil, s.held)
		}
		if send != nil && !bytes.Equal(send, s.frame) {
			t.Fatalf("%s: filter returned another frame", s.name)
		}
		wantDrop := lastHeld != nil
		if wantDrop != (dropped != nil) || dropped != nil && !bytes.Equal(dropped, lastHeld) {
			t.Fatalf("%s: dropped %x, want the held frame %x", s.name, dropped, lastHeld)
		}
		lastHeld = nil
		if s.held {
			lastHeld = s.frame
		}
		if got := ctr.acksDelayed.Load(); got != s.wantDelayed {
			t.Fatalf("%s: %d delayed, want %d", s.name, got, s.wantDelayed)
		}
	}
	if got := ctr.acksSuperseded.Load(); got != 3 {
		t.Errorf("superseded %d, want 3", got)
	}
	if h.nheld != 0 || h.armed {
		t.Errorf("after the FIN: %d held, timer armed %v", h.nheld, h.armed)
	}
}

// TestACKHolderExpiry: a held ACK nobody supersedes goes out once its time
// has come (takeDue), never before; flows are independent; drain empties
// the holder.
func TestACKHolderExpiry(t *testing.T) {
	var ctr linkCounters
	h := newACKHolder(time.Hour, 1500, &ctr, func() {})
	defer h.timer.Stop()
	for _, c := range []netip.AddrPort{ahClient, ahOther} {
		h.filter(tcpFrame(ahRouter, c, header.TCPFlagAck, 1, 100, nil, nil))
	}
	a := tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1, 164, nil, nil)
	b := tcpFrame(ahRouter, ahOther, header.TCPFlagAck, 1, 164, nil, nil)
	for _, f := range [][]byte{a, b} {
		if send, _ := h.filter(f); send != nil {
			t.Fatal("pure ACK not held")
		}
	}
	if out := h.takeDue(nil); len(out) != 0 || !h.armed {
		t.Fatalf("before the deadline: %d frames out, armed %v", len(out), h.armed)
	}
	h.slots[h.held[0]].due = 0 // a's time has come
	out := h.takeDue(nil)
	if len(out) != 1 || !bytes.Equal(out[0], a) || h.nheld != 1 || !h.armed {
		t.Fatalf("after a's deadline: %d frames out, %d held, armed %v", len(out), h.nheld, h.armed)
	}
	if out := h.drain(nil); len(out) != 1 || !bytes.Equal(out[0], b) || h.nheld != 0 || h.armed {
		t.Fatalf("drain: %d frames, %d held, armed %v", len(out), h.nheld, h.armed)
	}
}

// TestACKHolderIPv6AndOthers: IPv6 flows are held like IPv4 ones; frames
// that are not TCP, and malformed ones, pass untouched.
func TestACKHolderIPv6AndOthers(t *testing.T) {
	var ctr linkCounters
	h := newACKHolder(time.Hour, 1500, &ctr, func() {})
	defer h.timer.Stop()
	r6, c6 := netip.MustParseAddrPort("[fd77::1]:80"), netip.MustParseAddrPort("[fd55::10]:40000")
	h.filter(tcpFrame(r6, c6, header.TCPFlagAck, 1, 100, nil, nil))
	if send, _ := h.filter(tcpFrame(r6, c6, header.TCPFlagAck, 1, 101, nil, nil)); send != nil {
		t.Error("IPv6 pure ACK not held")
	}
	v4 := tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1, 100, nil, nil)
	for name, f := range map[string][]byte{
		"runt":          v4[:20],
		"truncated TCP": v4[:ethHeaderLen+header.IPv4MinimumSize+10],
		"ARP":           append(append([]byte{}, v4[:12]...), 0x08, 0x06),
	} {
		if send, dropped := h.filter(f); !bytes.Equal(send, f) || dropped != nil {
			t.Errorf("%s: not passed through", name)
		}
	}
	// Two flows in one slot: the second is not delayed while the first
	// holds the slot.
	h2 := newACKHolder(time.Hour, 1500, &ctr, func() {})
	defer h2.timer.Stop()
	f1 := tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1, 100, nil, nil)
	ti, _ := parseTCPFrame(f1)
	var collide []byte
	for p := uint16(1); p != 0 && collide == nil; p++ {
		f := tcpFrame(ahRouter, netip.AddrPortFrom(ahOther.Addr(), p), header.TCPFlagAck, 1, 100, nil, nil)
		if tj, _ := parseTCPFrame(f); tj.key.slot() == ti.key.slot() {
			collide = f
		}
	}
	if collide == nil {
		t.Fatal("no colliding port found")
	}
	h2.filter(f1)
	if send, _ := h2.filter(tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1, 150, nil, nil)); send != nil {
		t.Fatal("pure ACK not held")
	}
	if send, _ := h2.filter(collide); send == nil {
		t.Error("a flow whose slot holds another flow's ACK was delayed")
	}
}

// TestACKHoldEndToEnd: through the link endpoint, a request answered within
// the hold time costs one frame (the response carries the ACK); one that is
// not answered gets its ACK when the hold expires. With the hold off every
// pure ACK goes at once.
func TestACKHoldEndToEnd(t *testing.T) {
	for _, hold := range []time.Duration{0, 20 * time.Millisecond} {
		l := &recordLink{captureLink: newCaptureLink(), got: make(chan []byte, 16)}
		var ctr linkCounters
		e := newLinkEndpoint(l, tcpip.LinkAddress(fzRouterMAC), tcpip.AddrFrom4(fzRouter.As4()), 1500, hold, slog.New(slog.DiscardHandler), &ctr)
		e.start()
		write := func(f []byte) {
			var pkts stack.PacketBufferList
			pkts.PushBack(stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)}))
			if n, err := e.WritePackets(pkts); n != 1 || err != nil {
				t.Fatalf("WritePackets: %d, %v", n, err)
			}
			pkts.DecRef()
		}
		synack := tcpFrame(ahRouter, ahClient, header.TCPFlagSyn|header.TCPFlagAck, 999, 5000, nil, nil)
		ack1 := tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1000, 5064, nil, nil)
		reply := tcpFrame(ahRouter, ahClient, header.TCPFlagAck|header.TCPFlagPsh, 1000, 5064, nil, []byte("pong"))
		ack2 := tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1004, 5128, nil, nil)
		write(synack)
		write(ack1)
		write(reply)
		start := time.Now()
		write(ack2)
		want := [][]byte{synack, reply, ack2}
		if hold == 0 {
			want = [][]byte{synack, ack1, reply, ack2}
		}
		for i, w := range want {
			select {
			case f := <-l.got:
				if !bytes.Equal(f, w) {
					t.Fatalf("hold %v: frame %d is not the expected one", hold, i)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("hold %v: frame %d never sent", hold, i)
			}
		}
		if hold > 0 && time.Since(start) < hold {
			t.Errorf("hold %v: the lone ACK went after %v", hold, time.Since(start))
		}
		e.Close()
		<-e.writerDone
		if hold > 0 && (ctr.acksDelayed.Load() != 2 || ctr.acksSuperseded.Load() != 1) {
			t.Errorf("hold %v: delayed %d, superseded %d; want 2, 1", hold, ctr.acksDelayed.Load(), ctr.acksSuperseded.Load())
		}
		select {
		case f := <-l.got:
			t.Errorf("hold %v: extra frame %x", hold, f)
		default:
		}
		l.Close()
		<-e.readerDone
	}
}

// recordLink passes every written frame (copied) to got.
type recordLink struct {
	*captureLink
	mu  sync.Mutex
	got chan []byte
}

func (l *recordLink) WriteFrames(frames [][]byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range frames {
		l.got <- append([]byte(nil), f...)
	}
	return nil
}

// FuzzACKHolder feeds arbitrary frames (two per input, so that one can
// supersede the other) through the holder: it must never panic, return a
// frame it was not given, or lose count of what it holds.
func FuzzACKHolder(f *testing.F) {
	f.Add(tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1, 100, ahTS, nil), tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1, 164, nil, nil))
	f.Add(tcpFrame(ahRouter, ahClient, header.TCPFlagAck, 1, 100, []byte{header.TCPOptionSACK, 2, 5}, nil), []byte{})
	f.Add(tcpFrame(netip.MustParseAddrPort("[fd77::1]:80"), netip.MustParseAddrPort("[fd55::10]:4"), header.TCPFlagAck, 1, 100, nil, []byte("x")), []byte{1, 2})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var ctr linkCounters
		h := newACKHolder(time.Hour, 1500, &ctr, func() {})
		defer h.timer.Stop()
		var held [][]byte
		for _, fr := range [][]byte{a, b, a, b} {
			if len(fr) == 0 {
				continue // (no frame is empty; nil would read as "held")
			}
			fr = append([]byte(nil), fr...)
			send, dropped := h.filter(fr)
			if send != nil && &send[0] != &fr[0] {
				t.Fatal("filter returned a frame it was not given")
			}
			if dropped != nil {
				found := false
				for i, x := range held {
					if len(x) > 0 && &x[0] == &dropped[0] {
						held = append(held[:i], held[i+1:]...)
						found = true
						break
					}
				}
				if !found {
					t.Fatal("filter dropped a frame it did not hold")
				}
			}
			if send == nil {
				held = append(held, fr)
			}
		}
		if h.nheld != len(held) {
			t.Fatalf("holder counts %d, holds %d", h.nheld, len(held))
		}
		if out := h.drain(nil); len(out) != len(held) {
			t.Fatalf("drain gave %d frames, %d held", len(out), len(held))
		}
	})
}
