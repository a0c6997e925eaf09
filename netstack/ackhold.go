package netstack

import (
	"encoding/binary"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Delayed ACKs at the link.
//
// gVisor's TCP acknowledges received data at once: it has no delayed ACK.
// For request/response traffic this doubles the frames the router sends:
// a pure ACK for every request, then the response, which carries the same
// acknowledgement. Each frame crosses the hub, and on the server side costs
// a TLS decryption, a switch, a thread wake-up and a write to the client's
// bridge, on the same cores that carry the response.
//
// The ackHolder keeps a pure ACK back for up to hold (Config.ACKHold). If
// the flow sends anything else meanwhile (data, FIN, RST, another ACK) it
// carries the same or a later acknowledgement, so the held ACK is
// superseded and dropped; otherwise it is sent when hold expires. Like a
// delayed ACK (RFC 1122 §4.2.3.2, RFC 5681 §4.2), only an ACK for less than
// two full-sized segments of new data is held, so a bulk stream is
// acknowledged at once and keeps its ACK clock (holding those ACKs cost 25 %
// of upload throughput in the lab). Window updates, duplicate ACKs and ACKs
// with SACK blocks (loss recovery), and the first ACK seen for a flow are
// sent at once. A held ACK never reorders a flow: whatever the flow
// sends next replaces it.
//
// The frames live in a small direct-mapped table keyed by the TCP 4-tuple;
// a flow whose slot holds another flow's ACK is simply not delayed. All of
// it is guarded by the endpoint's qmu, which WritePackets holds while it
// copies frames anyway.

// ackSlots is the size of the table (a power of two).
const ackSlots = 1024

type ackKey [37]byte // family, source and destination address, ports

type ackSlot struct {
	key     ackKey
	used    bool
	lastAck uint32 // acknowledgement number of the flow's last frame
	frame   []byte // the held ACK, or nil
	due     int64  // when it must go (monotonic nanoseconds, see ackHolder.now)
	listed  bool   // in ackHolder.held
}

type ackHolder struct {
	hold       time.Duration
	maxAdvance uint32    // hold only ACKs for at most this much new data (two segments)
	start      time.Time // origin of the slots' due times
	slots      []ackSlot // ackSlots entries
	held       []int     // slots that may hold a frame (see listed)
	nheld      int       // slots that hold a frame
	armed      bool      // timer runs
	timer      *time.Timer

	ctr *linkCounters // acksDelayed, acksSuperseded
}

// newACKHolder returns a holder for a link with IP MTU mtu; fire must call
// takeDue.
func newACKHolder(hold time.Duration, mtu uint32, ctr *linkCounters, fire func()) *ackHolder {
	mss := max(mtu, 1280) - header.IPv4MinimumSize - header.TCPMinimumSize
	h := &ackHolder{hold: hold, maxAdvance: 2*mss - 1, start: time.Now(), slots: make([]ackSlot, ackSlots), ctr: ctr}
	h.timer = time.AfterFunc(time.Hour, fire)
	h.timer.Stop()
	return h
}

func (h *ackHolder) now() int64 { return int64(time.Since(h.start)) }

// tcpInfo is what the holder needs of an outbound frame.
type tcpInfo struct {
	key  ackKey
	ack  uint32
	pure bool // ACK flag only, no payload, no SACK option
	acks bool // carries an acknowledgement (ACK flag)
}

// parseTCPFrame reads an Ethernet frame carrying TCP over IPv4 (no
// fragment) or IPv6 (no extension header). ok is false for anything else.
func parseTCPFrame(f []byte) (ti tcpInfo, ok bool) {
	if len(f) < ethHeaderLen {
		return ti, false
	}
	ip := f[ethHeaderLen:]
	var tcpOff, end int
	switch binary.BigEndian.Uint16(f[12:14]) {
	case uint16(header.IPv4ProtocolNumber):
		if len(ip) < header.IPv4MinimumSize {
			return ti, false
		}
		h := header.IPv4(ip)
		hl := int(h.HeaderLength())
		if hl < header.IPv4MinimumSize || h.Protocol() != uint8(header.TCPProtocolNumber) ||
			h.FragmentOffset() != 0 || h.Flags()&header.IPv4FlagMoreFragments != 0 {
			return ti, false
		}
		tcpOff, end = hl, int(h.TotalLength())
		ti.key[0] = 4
		copy(ti.key[1:5], ip[12:16])
		copy(ti.key[17:21], ip[16:20])
	case uint16(header.IPv6ProtocolNumber):
		if len(ip) < header.IPv6MinimumSize {
			return ti, false
		}
		h := header.IPv6(ip)
		if h.NextHeader() != uint8(header.TCPProtocolNumber) {
			return ti, false
		}
		tcpOff, end = header.IPv6MinimumSize, header.IPv6MinimumSize+int(h.PayloadLength())
		ti.key[0] = 6
		copy(ti.key[1:33], ip[8:40])
	default:
		return ti, false
	}
	if end > len(ip) || tcpOff+header.TCPMinimumSize > end {
		return ti, false
	}
	t := header.TCP(ip[tcpOff:end])
	off := int(t.DataOffset())
	if off < header.TCPMinimumSize || off > len(t) {
		return ti, false
	}
	copy(ti.key[33:37], t[0:4]) // source and destination port
	ti.ack = t.AckNumber()
	flags := t.Flags()
	ti.acks = flags&header.TCPFlagAck != 0
	ti.pure = flags == header.TCPFlagAck && off == len(t) && !hasSACK(t[header.TCPMinimumSize:off])
	return ti, true
}

// hasSACK reports whether TCP options opts carry SACK blocks (kind 5).
func hasSACK(opts []byte) bool {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return false
		case header.TCPOptionNOP:
			i++
			continue
		case header.TCPOptionSACK:
			return true
		}
		if i+1 >= len(opts) || opts[i+1] < 2 {
			return false
		}
		i += int(opts[i+1])
	}
	return false
}

func (k *ackKey) slot() int {
	// FNV-1a over the key; the table is small and the key short.
	h := uint32(2166136261)
	for _, b := range k {
		h ^= uint32(b)
		h *= 16777619
	}
	return int(h & (ackSlots - 1))
}

// filter decides about outbound frame f: it returns f to send it now, or
// nil if the holder kept it. A frame f supersedes may come back in
// dropped (to recycle). qmu is held.
func (h *ackHolder) filter(f []byte) (send, dropped []byte) {
	ti, ok := parseTCPFrame(f)
	if !ok {
		return f, nil
	}
	s := &h.slots[ti.key.slot()]
	if s.used && s.key != ti.key {
		if s.frame != nil {
			return f, nil // the slot holds another flow's ACK: no delay for this one
		}
		s.used = false // take the slot over
	}
	if !s.used {
		*s = ackSlot{key: ti.key, used: true, lastAck: ti.ack, listed: s.listed}
		return f, nil
	}
	if s.frame != nil {
		// Anything this flow sends acknowledges at least as much (gVisor
		// always sends its current RcvNxt).
		dropped, s.frame = s.frame, nil
		h.nheld--
		h.ctr.acksSuperseded.Add(1)
	}
	advance := ti.ack - s.lastAck
	if ti.acks {
		s.lastAck = ti.ack
	}
	if !ti.pure || !ti.acks || int32(advance) <= 0 || advance > h.maxAdvance {
		if h.nheld == 0 && h.armed {
			h.armed = false
			h.timer.Stop()
		}
		return f, dropped
	}
	if dropped == nil {
		s.due = h.now() + int64(h.hold)
	} // else: keep the first ACK's deadline, so a stream of ACKs is not held forever
	s.frame = f
	h.nheld++
	h.ctr.acksDelayed.Add(1)
	if !s.listed {
		s.listed = true
		h.held = append(h.held, ti.key.slot())
	}
	if !h.armed {
		h.armed = true
		h.timer.Reset(h.hold)
	}
	return nil, dropped
}

// takeDue appends to out the held frames whose time has come and re-arms the
// timer for the rest. qmu is held.
func (h *ackHolder) takeDue(out [][]byte) [][]byte {
	now := h.now()
	next := int64(-1)
	keep := h.held[:0]
	for _, i := range h.held {
		s := &h.slots[i]
		if s.frame == nil {
			s.listed = false
			continue
		}
		if s.due <= now {
			out = append(out, s.frame)
			s.frame = nil
			s.listed = false
			h.nheld--
			continue
		}
		if next < 0 || s.due < next {
			next = s.due
		}
		keep = append(keep, i)
	}
	clear(h.held[len(keep):])
	h.held = keep
	h.armed = next >= 0
	if h.armed {
		h.timer.Reset(time.Duration(next - now))
	}
	return out
}

// drain appends every held frame to out and stops the timer (Close).
// qmu is held.
func (h *ackHolder) drain(out [][]byte) [][]byte {
	for _, i := range h.held {
		s := &h.slots[i]
		if s.frame != nil {
			out = append(out, s.frame)
			s.frame = nil
		}
		s.listed = false
	}
	h.held = h.held[:0]
	h.nheld = 0
	h.armed = false
	h.timer.Stop()
	return out
}
