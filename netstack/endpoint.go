package netstack

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

const (
	ethHeaderLen = header.EthernetMinimumSize // 14: dst MAC, src MAC, EtherType

	// writeQueueFrames bounds the outbound queue between gVisor and the
	// writer goroutine. When it is full the sending goroutine flushes a
	// batch itself (backpressure, see roomLocked).
	writeQueueFrames = 1024

	// maxBatchFrames bounds one WriteFrames call.
	maxBatchFrames = 256

	// readBufSize is the read buffer handed to Link.ReadFrame. It is larger
	// than any valid frame so that oversized frames are counted as
	// DropTooBig here rather than becoming opaque link errors.
	readBufSize = 64 << 10

	// readBatchFrames bounds the frames taken per BatchReader.ReadFrames
	// call (and so per GRO flush).
	readBatchFrames = 256
)

// linkCounters are the endpoint's own counters (atomics, read by Stats).
type linkCounters struct {
	framesIn, bytesIn, framesOut, bytesOut  atomic.Uint64
	dropTooBig, dropMalformed, dropNotForUs atomic.Uint64
	dropOwnSource, dropQueueFull, dropProto atomic.Uint64
	dropARPConflict, dropARPOther           atomic.Uint64
	dropNDPConflict, dropNDPOther           atomic.Uint64
	routerSolicits, raSent, raLimited       atomic.Uint64
	foreignRAs                              atomic.Uint64
	readErrors, writeErrors                 atomic.Uint64
	acksDelayed, acksSuperseded             atomic.Uint64
}

// linkEndpoint is the stack's Ethernet NIC: a stack.LinkEndpoint on a Link.
// Inbound, readLoop reads frames, filters them (see accept) and hands them to
// the stack's dispatcher. Outbound, WritePackets copies each packet into a
// pooled frame buffer and queues it; writeLoop hands the queue to
// Link.WriteFrames in batches.
type linkEndpoint struct {
	link   Link
	mac    tcpip.LinkAddress
	addr   tcpip.Address // router address (ARP filtering and rewriting)
	log    *slog.Logger
	ctr    *linkCounters
	onDHCP func(src net.HardwareAddr, ip [4]byte) // foreign DHCP server hook, or nil
	v6     *v6addrs                               // IPv6 addresses; nil: IPv4 only
	onRS   func(tcpip.LinkAddress, tcpip.Address) // Router Solicitation hook (with v6)

	// proxyARP are extra addresses answered like addr in ARP (the
	// router's host-loopback alias; see Stack.AddProxyARP in dial.go).
	// Copy-on-write under proxyMu; nil or empty almost always.
	proxyMu  sync.Mutex
	proxyARP atomic.Pointer[[]tcpip.Address]

	mtu atomic.Uint32 // IP MTU

	dispMu     sync.RWMutex
	dispatcher stack.NetworkDispatcher // guarded by dispMu

	// gro coalesces the TCP segments of one delivered batch.
	groMu sync.Mutex
	gro   gro.GRO // guarded by groMu

	// Outbound queue. qmu guards queue, free, qclosed.
	qmu     sync.Mutex
	queue   [][]byte // frames waiting for writeLoop
	free    [][]byte // recycled frame buffers (cap frameCap)
	gsoBuf  []byte   // a host-GSO packet, flattened before it is cut (gso.go)
	qclosed bool
	wake    chan struct{} // cap 1: queue became non-empty or closed
	ackh    *ackHolder    // delayed pure ACKs (ackhold.go); nil: none. Guarded by qmu.

	// wmu serialises Link.WriteFrames (the Link allows one writer at a
	// time) and guards batch. Lock order: wmu before qmu.
	wmu   sync.Mutex
	batch [][]byte

	frameCap   int
	writerDone chan struct{}
	readerDone chan struct{}
	closeOnce  sync.Once
	stopped    atomic.Bool // set by Close: readLoop stops delivering

	def defender // announcements when our MAC or address is claimed

	probes probeTable // addresses ProbeAddr waits on (see probe.go)
}

var _ stack.LinkEndpoint = (*linkEndpoint)(nil)

func newLinkEndpoint(link Link, mac tcpip.LinkAddress, addr tcpip.Address, mtu uint32, ackHold time.Duration, log *slog.Logger, ctr *linkCounters) *linkEndpoint {
	e := &linkEndpoint{
		link:       link,
		mac:        mac,
		addr:       addr,
		log:        log,
		ctr:        ctr,
		wake:       make(chan struct{}, 1),
		frameCap:   int(mtu) + ethHeaderLen,
		writerDone: make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	e.mtu.Store(mtu)
	e.gro.Init(true)
	if ackHold > 0 {
		e.ackh = newACKHolder(ackHold, mtu, ctr, e.ackExpired)
	}
	return e
}

// start launches the reader and writer goroutines. It is called once the
// NIC exists, so that every frame read has a dispatcher.
func (e *linkEndpoint) start() {
	go e.writeLoop()
	go e.readLoop()
}

// MTU implements stack.LinkEndpoint: the IP MTU.
func (e *linkEndpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint. The frame buffers are sized at
// creation; a larger MTU is clamped to it.
func (e *linkEndpoint) SetMTU(mtu uint32) {
	if max := uint32(e.frameCap - ethHeaderLen); mtu > max {
		mtu = max
	}
	e.mtu.Store(mtu)
}

// MaxHeaderLength implements stack.LinkEndpoint.
func (e *linkEndpoint) MaxHeaderLength() uint16 { return ethHeaderLen }

// LinkAddress implements stack.LinkEndpoint.
func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress { return e.mac }

// SetLinkAddress implements stack.LinkEndpoint; the MAC is fixed.
func (e *linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint. RX checksum "offload": the
// endpoint verifies inbound checksums itself (validChecksums) before GRO,
// because gVisor's NIC marks every packet from a link without this
// capability as unverified, and a GRO-merged segment carries no valid
// checksum. Outbound checksums are computed by the stack.
func (e *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired | stack.CapabilityRXChecksumOffload
}

// Host GSO: the TCP sender builds segments of up to gsoMaxSize, so its
// per-segment bookkeeping (send queue, RACK, SACK scoreboard) runs once per
// 60 KiB instead of once per 1 460 bytes, and hands each to the IP layer
// once; the endpoint cuts it into frames (gso.go).
var _ stack.GSOEndpoint = (*linkEndpoint)(nil)

// GSOMaxSize implements stack.GSOEndpoint.
func (e *linkEndpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint.
func (e *linkEndpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

// Attach implements stack.LinkEndpoint.
func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	e.dispMu.Lock()
	e.dispatcher = d
	e.dispMu.Unlock()
}

// IsAttached implements stack.LinkEndpoint.
func (e *linkEndpoint) IsAttached() bool {
	e.dispMu.RLock()
	defer e.dispMu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements stack.LinkEndpoint. The goroutines are waited for by
// Stack.Close, which knows when the Link is closed.
func (e *linkEndpoint) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements stack.LinkEndpoint.
func (e *linkEndpoint) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(ethHeaderLen))
	src := pkt.EgressRoute.LocalLinkAddress
	if src == "" {
		src = e.mac
	}
	eth.Encode(&header.EthernetFields{
		SrcAddr: src,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (e *linkEndpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(ethHeaderLen)
	return ok
}

// Close implements stack.LinkEndpoint: gVisor calls it when the NIC is
// removed. It stops the writer after it has flushed what is queued.
func (e *linkEndpoint) Close() {
	e.closeOnce.Do(func() {
		e.qmu.Lock()
		if e.ackh != nil {
			e.queue = e.ackh.drain(e.queue) // writeLoop sends what is queued before it exits
		}
		e.qclosed = true
		e.qmu.Unlock()
		e.kick()
	})
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *linkEndpoint) SetOnCloseAction(func()) {}

// WritePackets implements stack.LinkWriter. It copies every packet into a
// frame buffer. When nobody else is writing and nothing is queued it hands
// the frames to the Link itself (writeDirect); otherwise it queues them for
// writeLoop, waiting only when the queue is full (backpressure).
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	if e.wmu.TryLock() {
		n, err := e.writeDirect(pkts)
		e.wmu.Unlock()
		return n, err
	}
	e.qmu.Lock()
	closed := e.qclosed
	e.qmu.Unlock()
	if closed {
		return 0, &tcpip.ErrClosedForSend{}
	}
	return e.queuePackets(pkts.AsSlice()), nil
}

// writeDirect writes pkts to the Link on the calling goroutine, sparing the
// hand-off to writeLoop (one goroutine wake-up less per burst: lower
// request/response latency and less CPU; the Link's WriteFrames queues and
// waits at most briefly for room, see the Link contract). Frames already queued go first, so every
// sender's frames keep their order. wmu is held.
func (e *linkEndpoint) writeDirect(pkts stack.PacketBufferList) (int, tcpip.Error) {
	for i := 0; i < writeQueueFrames/maxBatchFrames+1; i++ {
		if k, _ := e.flushLocked(); k == 0 {
			break
		}
	}
	n := 0
	for all := pkts.AsSlice(); len(all) > 0; {
		e.qmu.Lock()
		if e.qclosed {
			e.qmu.Unlock()
			return n, &tcpip.ErrClosedForSend{}
		}
		batch := e.batch[:0]
		for len(all) > 0 && len(batch) < maxBatchFrames {
			pkt := all[0]
			all = all[1:]
			batch = e.appendFramesLocked(batch, pkt)
			n++ // a frame the ACK holder keeps is sent later (or dropped, superseded)
		}
		e.qmu.Unlock()
		if len(batch) > 0 {
			e.write(batch)
		}
		e.recycle(batch)
		e.batch = batch[:0]
	}
	return n, nil
}

// queuePackets queues pkts for writeLoop (the WritePackets queue path).
func (e *linkEndpoint) queuePackets(pkts []*stack.PacketBuffer) int {
	n := 0
	e.qmu.Lock()
	if e.qclosed {
		e.qmu.Unlock()
		return 0
	}
	for _, pkt := range pkts {
		if !e.roomLocked() {
			break
		}
		if len(e.queue) >= writeQueueFrames {
			e.ctr.dropQueueFull.Add(1)
			continue
		}
		e.queue = e.appendFramesLocked(e.queue, pkt)
		n++
	}
	e.qmu.Unlock()
	if n > 0 {
		e.kick()
	}
	return n
}

// appendFramesLocked appends pkt's frames to dst: one frame, or one per MSS
// of a host-GSO TCP packet (gso.go), each through the outbound fixes and the
// ACK holder. qmu is held.
func (e *linkEndpoint) appendFramesLocked(dst [][]byte, pkt *stack.PacketBuffer) [][]byte {
	size := pkt.Size()
	gso := pkt.GSOOptions
	hostGSO := gso.Type != stack.GSONone && gso.NeedsCsum
	if hostGSO && size > e.frameCap {
		if cap(e.gsoBuf) < size {
			e.gsoBuf = make([]byte, size)
		}
		b := e.gsoBuf[:size]
		return e.appendTCPFramesLocked(dst, b[:copyPacket(b, pkt)], gso)
	}
	if size > e.frameCap {
		e.ctr.dropTooBig.Add(1)
		return dst
	}
	f := e.takeFrameLocked(size)
	f = f[:copyPacket(f, pkt)]
	if pkt.NetworkProtocolNumber == header.ARPProtocolNumber && !e.fixOutboundARP(f) {
		e.free = append(e.free, f[:cap(f)])
		return dst
	}
	if hostGSO {
		// One frame already: only the TCP checksum is left to complete.
		l, ok := parseGSO(f, gso)
		if !ok || gso.MSS > 0 && len(f)-l.hdrLen > int(gso.MSS) {
			// Malformed, or more than the peer's MSS: the cutter counts
			// or cuts it.
			dst = e.appendTCPFramesLocked(dst, f, gso)
			e.free = append(e.free, f[:cap(f)])
			return dst
		}
		l.setTCPChecksum(f)
	} else if pkt.NetworkProtocolNumber == header.IPv6ProtocolNumber {
		e.fixOutboundNS(f)
	}
	if f = e.holdACKLocked(f); f != nil {
		dst = append(dst, f)
	}
	return dst
}

// holdACKLocked passes f through the ACK holder: it returns f to send now,
// or nil if the holder keeps it. A frame the holder drops (superseded) goes
// back to the free list. qmu is held.
func (e *linkEndpoint) holdACKLocked(f []byte) []byte {
	if e.ackh == nil {
		return f
	}
	send, dropped := e.ackh.filter(f)
	if dropped != nil {
		e.free = append(e.free, dropped[:cap(dropped)])
	}
	return send
}

// ackExpired runs on the ACK holder's timer: held ACKs whose time has come
// go to the write queue.
func (e *linkEndpoint) ackExpired() {
	e.qmu.Lock()
	if e.qclosed {
		e.qmu.Unlock()
		return
	}
	k := len(e.queue)
	e.queue = e.ackh.takeDue(e.queue)
	k = len(e.queue) - k
	e.qmu.Unlock()
	if k > 0 {
		e.kick()
	}
}

// enqueueFrames queues frames built outside gVisor (copied).
func (e *linkEndpoint) enqueueFrames(frames [][]byte) error {
	e.qmu.Lock()
	if e.qclosed {
		e.qmu.Unlock()
		return net.ErrClosed
	}
	n := 0
	for _, src := range frames {
		if !e.roomLocked() {
			break
		}
		if f := e.frameLocked(len(src)); f != nil {
			copy(f, src)
			e.queue = append(e.queue, f)
			n++
		}
	}
	e.qmu.Unlock()
	if n > 0 {
		e.kick()
	}
	if n < len(frames) {
		return errors.New("netstack: write queue full")
	}
	return nil
}

// roomLocked makes room in a full queue by flushing a batch on the calling
// goroutine: backpressure instead of drops when the writer goroutine falls
// behind (with two cores, gVisor's senders easily outrun it). qmu is held on
// entry and exit; it reports false if the endpoint closed meanwhile.
func (e *linkEndpoint) roomLocked() bool {
	for i := 0; len(e.queue) >= writeQueueFrames && i < 4; i++ {
		e.qmu.Unlock()
		e.flush()
		e.qmu.Lock()
	}
	return !e.qclosed
}

// frameLocked returns a frame buffer of length size for the queue, or nil
// (counted) if the frame is too big or the queue is full. qmu must be held.
func (e *linkEndpoint) frameLocked(size int) []byte {
	if size > e.frameCap {
		// Cannot happen without GSO (not enabled); count, don't crash.
		e.ctr.dropTooBig.Add(1)
		return nil
	}
	if len(e.queue) >= writeQueueFrames {
		e.ctr.dropQueueFull.Add(1)
		return nil
	}
	return e.takeFrameLocked(size)
}

// takeFrameLocked returns a frame buffer of length size ≤ frameCap from the
// free list or a new one. qmu must be held.
func (e *linkEndpoint) takeFrameLocked(size int) []byte {
	if k := len(e.free); k > 0 {
		f := e.free[k-1]
		e.free = e.free[:k-1]
		return f[:size]
	}
	return make([]byte, size, e.frameCap)
}

// recycle returns written frame buffers to the free list and clears batch.
func (e *linkEndpoint) recycle(batch [][]byte) {
	e.qmu.Lock()
	for i, f := range batch {
		if len(e.free) < writeQueueFrames {
			e.free = append(e.free, f[:cap(f)])
		}
		batch[i] = nil
	}
	e.qmu.Unlock()
}

func (e *linkEndpoint) kick() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// copyPacket copies the whole packet (link header included) into dst, which
// must be pkt.Size() long, without allocating.
func copyPacket(dst []byte, pkt *stack.PacketBuffer) int {
	vl, off := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil && n < len(dst); v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

// fixOutboundARP makes outbound ARP requests carry the router address as
// sender. With spoofing on, gVisor resolves a client's MAC using the route's
// local address, which for a forwarded flow is the foreign address ("who has
// 192.168.30.10, tell 1.2.3.4"); clients should only ever learn the
// router's own IP-to-MAC binding from us. It reports false for an ARP reply
// claiming any other address (the inbound filter means gVisor should never
// produce one; this is defence in depth, as gvisor-tap-vsock does), which
// must not be sent.
func (e *linkEndpoint) fixOutboundARP(f []byte) bool {
	if len(f) < ethHeaderLen+header.ARPSize {
		return true
	}
	a := header.ARP(f[ethHeaderLen:])
	if !a.IsValid() {
		return true
	}
	switch a.Op() {
	case header.ARPRequest:
		copy(a.ProtocolAddressSender(), e.addr.AsSlice())
	case header.ARPReply:
		if sender := tcpip.AddrFrom4Slice(a.ProtocolAddressSender()); sender != e.addr && !e.isProxyARP(sender) {
			e.log.Debug("netstack: dropped a spoofed ARP reply", "ip", net.IP(a.ProtocolAddressSender()).String())
			return false
		}
	}
	return true
}

// writeLoop hands queued frames to the Link in batches until Close, then
// flushes what is left and exits.
func (e *linkEndpoint) writeLoop() {
	defer close(e.writerDone)
	for {
		<-e.wake
		for {
			k, closed := e.flush()
			if k == 0 {
				if closed {
					return
				}
				break
			}
		}
	}
}

// flush writes up to maxBatchFrames queued frames with one WriteFrames call
// and returns how many, and whether the queue is closed. wmu makes taking a
// batch and writing it one step, so batches reach the Link in queue order
// whichever goroutine flushes.
func (e *linkEndpoint) flush() (int, bool) {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	return e.flushLocked()
}

// flushLocked is flush with wmu held.
func (e *linkEndpoint) flushLocked() (int, bool) {
	e.qmu.Lock()
	closed := e.qclosed
	k := min(len(e.queue), maxBatchFrames)
	e.batch = append(e.batch[:0], e.queue[:k]...)
	rest := copy(e.queue, e.queue[k:])
	clear(e.queue[rest:])
	e.queue = e.queue[:rest]
	e.qmu.Unlock()
	if k == 0 {
		return 0, closed
	}
	e.write(e.batch)
	e.recycle(e.batch)
	return k, closed
}

func (e *linkEndpoint) write(batch [][]byte) {
	var bytes uint64
	for _, f := range batch {
		bytes += uint64(len(f))
	}
	if err := e.link.WriteFrames(batch); err != nil {
		e.ctr.writeErrors.Add(uint64(len(batch)))
		if !errors.Is(err, net.ErrClosed) {
			e.log.Debug("netstack: link write failed", "frames", len(batch), "err", err)
		}
		return
	}
	e.ctr.framesOut.Add(uint64(len(batch)))
	e.ctr.bytesOut.Add(bytes)
}

// readLoop reads frames until the Link reports that it is closed. A Link
// that implements BatchReader hands over bursts of frames; the TCP segments
// of each burst are coalesced (GRO) and flushed to the stack at its end.
func (e *linkEndpoint) readLoop() {
	defer close(e.readerDone)
	br, batched := e.link.(BatchReader)
	var buf []byte
	var frames [][]byte
	if batched {
		frames = make([][]byte, readBatchFrames)
	} else {
		buf = make([]byte, readBufSize)
	}
	consecutiveErrs := 0
	for {
		var n int
		var err error
		if batched {
			n, err = br.ReadFrames(frames)
		} else {
			n, err = e.link.ReadFrame(buf)
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			e.ctr.readErrors.Add(1)
			consecutiveErrs++
			if consecutiveErrs%1000 == 1 {
				e.log.Warn("netstack: link read failed", "err", err, "consecutive", consecutiveErrs)
			}
			if consecutiveErrs > 16 {
				// A link that fails without being closed must not make
				// this loop spin; back off a little.
				time.Sleep(time.Millisecond)
			}
			continue
		}
		consecutiveErrs = 0
		if e.stopped.Load() {
			continue // Close is waiting for the owner to close the Link
		}
		if batched {
			e.deliver(frames[:min(n, len(frames))]...)
			clear(frames)
		} else {
			e.deliver(buf[:n])
		}
	}
}

// deliver filters inbound frames, verifies their checksums and hands them to
// the stack, coalescing consecutive TCP segments of a flow (GRO). It must
// not retain the frames.
func (e *linkEndpoint) deliver(frames ...[]byte) {
	e.dispMu.RLock()
	d := e.dispatcher
	e.dispMu.RUnlock()
	e.groMu.Lock()
	defer e.groMu.Unlock()
	e.gro.Dispatcher = d
	for _, f := range frames {
		e.enqueue(f, d != nil)
	}
	if d != nil {
		e.gro.Flush()
	}
}

// enqueue filters and checks one frame and adds it to the GRO batch. groMu
// is held.
func (e *linkEndpoint) enqueue(frame []byte, attached bool) {
	proto, pktType, ok := e.accept(frame)
	if !ok {
		return
	}
	verified := true
	switch proto {
	case header.IPv4ProtocolNumber:
		if !validChecksums(frame[ethHeaderLen:]) {
			e.ctr.dropMalformed.Add(1)
			return
		}
	case header.IPv6ProtocolNumber:
		ok, checked := validChecksums6(frame[ethHeaderLen:])
		if !ok {
			e.ctr.dropMalformed.Add(1)
			return
		}
		verified = checked
	}
	e.ctr.framesIn.Add(1)
	e.ctr.bytesIn.Add(uint64(len(frame)))
	if !attached {
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: buffer.MakeWithData(frame), // copies into pooled chunks
	})
	pkt.LinkHeader().Consume(ethHeaderLen)
	pkt.PktType = pktType
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = verified
	e.gro.Enqueue(pkt)
	pkt.DecRef() // gvisor-tap-vsock#107: without this, buffers leak
}

// validChecksums verifies the IPv4 header checksum and, for unfragmented
// TCP, UDP and ICMP, the transport checksum of ip (an IPv4 packet, possibly
// followed by Ethernet padding). A packet too malformed to check is let
// through: the stack's own parsing rejects it. Fragments carry no complete
// transport checksum; the stack does not verify it after reassembly either
// (the capability covers the whole packet), which is acceptable because the
// hub link is TLS-protected and a client can only corrupt its own flows.
func validChecksums(ip []byte) bool {
	if len(ip) < header.IPv4MinimumSize {
		return true
	}
	h := header.IPv4(ip)
	hl, tl := int(h.HeaderLength()), int(h.TotalLength())
	if !h.IsValid(len(ip)) || hl < header.IPv4MinimumSize || tl < hl || tl > len(ip) {
		return true
	}
	if !h.IsChecksumValid() {
		return false
	}
	if h.FragmentOffset() != 0 || h.Flags()&header.IPv4FlagMoreFragments != 0 {
		return true
	}
	payload := ip[hl:tl]
	switch tcpip.TransportProtocolNumber(h.Protocol()) {
	case header.TCPProtocolNumber:
		if len(payload) < header.TCPMinimumSize {
			return true
		}
	case header.UDPProtocolNumber:
		if len(payload) < header.UDPMinimumSize || header.UDP(payload).Checksum() == 0 {
			return true // RFC 768: zero means no checksum
		}
	case header.ICMPv4ProtocolNumber:
		return len(payload) < header.ICMPv4MinimumSize || checksum.Checksum(payload, 0) == 0xffff
	default:
		return true
	}
	xsum := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(h.Protocol()), h.SourceAddress(), h.DestinationAddress(), uint16(len(payload)))
	return checksum.Checksum(payload, xsum) == 0xffff
}

// accept decides whether an inbound frame goes to the stack. It drops:
// runts and oversized frames; frames whose source is our MAC or a group
// address; unicast frames to other hosts (the hub floods unknown unicast, and
// spoofing mode would otherwise make us forward other hosts' traffic);
// EtherTypes other than IPv4, ARP and (with IPv6 on) IPv6; NDP and
// ARP that gVisor in spoofing mode
// would answer for addresses that are not ours (see filterARP).
func (e *linkEndpoint) accept(frame []byte) (tcpip.NetworkProtocolNumber, tcpip.PacketType, bool) {
	if len(frame) < ethHeaderLen {
		e.ctr.dropMalformed.Add(1)
		return 0, 0, false
	}
	if len(frame) > e.frameCap {
		e.ctr.dropTooBig.Add(1)
		return 0, 0, false
	}
	eth := header.Ethernet(frame)
	src := eth.SourceAddress()
	if src == e.mac {
		e.ctr.dropOwnSource.Add(1)
		e.defend("a frame with the router's MAC as source", net.HardwareAddr(src))
		return 0, 0, false
	}
	if src[0]&1 != 0 { // group bit set: not a valid source address
		e.ctr.dropMalformed.Add(1)
		return 0, 0, false
	}
	proto := eth.Type()
	if proto == header.IPv4ProtocolNumber && e.onDHCP != nil {
		// Before the destination filter: a foreign server's unicast
		// offer only reaches us when the hub floods it.
		e.checkForeignDHCP(frame)
	}
	var pktType tcpip.PacketType
	switch dst := eth.DestinationAddress(); {
	case dst == e.mac:
		pktType = tcpip.PacketHost
	case dst == header.EthernetBroadcastAddress:
		pktType = tcpip.PacketBroadcast
	case header.IsMulticastEthernetAddress(dst):
		pktType = tcpip.PacketMulticast
	default:
		e.ctr.dropNotForUs.Add(1)
		return 0, 0, false
	}
	switch proto {
	case header.IPv4ProtocolNumber:
		if pktType == tcpip.PacketMulticast {
			// We join no multicast groups; spoofing mode would otherwise
			// hand multicast flows to the forwarders.
			e.ctr.dropNotForUs.Add(1)
			return 0, 0, false
		}
	case header.ARPProtocolNumber:
		if !e.filterARP(frame[ethHeaderLen:]) {
			return 0, 0, false
		}
	case header.IPv6ProtocolNumber:
		if !e.filterIPv6(frame, pktType) {
			return 0, 0, false
		}
	default:
		e.ctr.dropProto.Add(1)
		return 0, 0, false
	}
	return proto, pktType, true
}

// filterARP lets through ARP replies (they feed the neighbour cache) and
// requests whose target is the router address. gVisor answers every request
// when the NIC spoofs (arp.go: CheckLocalAddress is true for any address),
// which would claim every IP on the hub, break client-to-client traffic and
// make clients' duplicate-address probes fail. Packets that claim the
// router address as sender from another MAC are an address conflict and
// dropped so they cannot poison anything.
func (e *linkEndpoint) filterARP(p []byte) bool {
	if len(p) < header.ARPSize {
		e.ctr.dropMalformed.Add(1)
		return false
	}
	a := header.ARP(p)
	if !a.IsValid() {
		e.ctr.dropMalformed.Add(1)
		return false
	}
	if tcpip.AddrFrom4Slice(a.ProtocolAddressSender()) == e.addr {
		e.ctr.dropARPConflict.Add(1)
		e.defend("an ARP packet claiming the router's address", net.HardwareAddr(a.HardwareAddressSender()))
		return false
	}
	e.probes.seen(tcpip.AddrFrom4Slice(a.ProtocolAddressSender()))
	switch a.Op() {
	case header.ARPReply:
		return true
	case header.ARPRequest:
		if target := tcpip.AddrFrom4Slice(a.ProtocolAddressTarget()); target == e.addr || e.isProxyARP(target) {
			return true
		}
	}
	e.ctr.dropARPOther.Add(1)
	return false
}

// checkForeignDHCP reports a DHCP server reply (UDP 67 -> 68) sent by
// another host on the hub.
func (e *linkEndpoint) checkForeignDHCP(frame []byte) {
	ip := header.IPv4(frame[ethHeaderLen:])
	if len(ip) < header.IPv4MinimumSize || ip.Protocol() != uint8(header.UDPProtocolNumber) {
		return
	}
	hl := int(ip.HeaderLength())
	if hl < header.IPv4MinimumSize || len(ip) < hl+header.UDPMinimumSize || ip.FragmentOffset() != 0 {
		return
	}
	u := header.UDP(ip[hl:])
	if u.SourcePort() != 67 || u.DestinationPort() != 68 {
		return
	}
	mac := make(net.HardwareAddr, 6)
	copy(mac, header.Ethernet(frame).SourceAddress())
	e.onDHCP(mac, ip.SourceAddress().As4())
}
