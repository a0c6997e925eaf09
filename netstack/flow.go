package netstack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// errRequestDone is returned by Accept on a request that was already
// accepted or rejected.
var errRequestDone = errors.New("netstack: request already accepted or rejected")

// quote is what an ICMP error about a packet needs: the Ethernet source it
// came from and the start of the offending datagram (IP header and at least
// 8 bytes of transport header, RFC 792).
type quote struct {
	mac  tcpip.LinkAddress
	data []byte
}

// maxQuote bounds the quoted datagram so that an ICMP error stays within
// 576 bytes (RFC 1812 §4.3.2.3: 576 - 20 - 8).
const maxQuote = 548

// quotePacket copies pkt's link source and network+transport headers plus up
// to maxQuote bytes in total of the datagram.
func quotePacket(pkt *stack.PacketBuffer) quote {
	var q quote
	if lh := pkt.LinkHeader().Slice(); len(lh) >= ethHeaderLen {
		q.mac = header.Ethernet(lh).SourceAddress()
	}
	nh, th := pkt.NetworkHeader().Slice(), pkt.TransportHeader().Slice()
	n := min(len(nh)+len(th)+pkt.Data().Size(), maxQuote)
	q.data = make([]byte, 0, n)
	q.data = append(q.data, nh...)
	q.data = append(q.data, th[:min(len(th), n-len(q.data))]...)
	if rest := n - len(q.data); rest > 0 {
		q.data = append(q.data, pkt.Data().AsRange().SubRange(0).Capped(rest).ToSlice()...)
	}
	return q
}

func addrPort(a tcpip.Address, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netipAddr(a), port)
}

// netipAddr converts a 4- or 16-byte gVisor address (the zero netip.Addr
// for any other length).
func netipAddr(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// ---- TCP ----

type tcpRequestState struct {
	st   *Stack
	fr   *tcp.ForwarderRequest
	id   stack.TransportEndpointID
	syn  quote
	mu   sync.Mutex
	done bool // guarded by mu: Accept or Reject was called
}

// SetTCPHandler sets the handler for SYNs to non-local addresses; h runs in
// its own goroutine per request and must call Accept or Reject exactly once
// before it returns (if it returns without doing so, the request is rejected
// with RST). With no handler, such SYNs are answered with RST. It may be
// called at any time; nil removes the handler.
//
// Removing the handler (nil) also aborts the handshakes that Accept is
// still waiting for (Accept returns an error): a client that never answers
// the SYN-ACK would otherwise keep its handler, and an owner's Close that
// waits for its handlers, blocked for the minute gVisor spends
// retransmitting.
func (st *Stack) SetTCPHandler(h func(*TCPRequest)) {
	if h == nil {
		st.hs.mu.Lock()
		st.tcpHandler.Store(nil)
		st.hs.mu.Unlock()
		st.hs.abortAll()
		return
	}
	st.tcpHandler.Store(&h)
}

// handshakes are the wait queues of Accepts blocked in gVisor's passive
// handshake (ForwarderRequest.CreateEndpoint waits for a writable event on
// the queue it is given, then fails unless the endpoint is connected, so a
// notification aborts a handshake that is still in progress).
type handshakes struct {
	mu sync.Mutex
	m  map[*waiter.Queue]struct{}
}

// abortAll wakes every handshake in progress.
func (h *handshakes) abortAll() {
	h.mu.Lock()
	qs := make([]*waiter.Queue, 0, len(h.m))
	for q := range h.m {
		qs = append(qs, q)
	}
	h.mu.Unlock()
	for _, q := range qs {
		q.Notify(waiter.WritableEvents)
	}
}

// begin registers q unless the stack is closed or has no TCP handler; the
// check and the registration happen under the lock SetTCPHandler(nil) takes,
// so an abort is never missed.
func (st *Stack) beginHandshake(q *waiter.Queue) bool {
	st.hs.mu.Lock()
	defer st.hs.mu.Unlock()
	if st.closed.Load() || st.tcpHandler.Load() == nil {
		return false
	}
	if st.hs.m == nil {
		st.hs.m = make(map[*waiter.Queue]struct{})
	}
	st.hs.m[q] = struct{}{}
	return true
}

func (st *Stack) endHandshake(q *waiter.Queue) {
	st.hs.mu.Lock()
	delete(st.hs.m, q)
	st.hs.mu.Unlock()
}

// tcpDefault is the TCP default handler: packets that match no endpoint.
// SYNs to foreign unicast addresses go to the forwarder (their headers are
// kept for an ICMP reject); anything to the router address returns false so
// gVisor answers with RST; packets to broadcast/multicast or from bogus
// sources are dropped.
func (st *Stack) tcpDefault(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	if st.isRouterAddr(id.LocalAddress) {
		return false
	}
	if !st.isForeignUnicast(id.LocalAddress) || !st.validClientSrc(id.RemoteAddress) {
		return true
	}
	if th := header.TCP(pkt.TransportHeader().Slice()); len(th) >= header.TCPMinimumSize {
		if f := th.Flags(); f.Contains(header.TCPFlagSyn) && !f.Contains(header.TCPFlagAck) {
			st.syns.put(id, pkt)
		}
	}
	return st.tcpFwd.HandlePacket(id, pkt)
}

// forwardTCP runs in the goroutine gVisor's forwarder starts per SYN.
func (st *Stack) forwardTCP(fr *tcp.ForwarderRequest) {
	id := fr.ID()
	req := &TCPRequest{
		Src: addrPort(id.RemoteAddress, id.RemotePort),
		Dst: addrPort(id.LocalAddress, id.LocalPort),
	}
	req.st, req.fr, req.id = st, fr, id
	req.syn, _ = st.syns.take(id)
	if !st.handlers.enter() {
		req.finish(true)
		return
	}
	defer st.handlers.exit()
	st.fctr.tcpRequests.Add(1)
	hp := st.tcpHandler.Load()
	if hp == nil {
		req.Reject(RejectRST)
		return
	}
	defer func() {
		if req.finish(true) {
			st.fctr.tcpRejected.Add(1)
			st.log.Warn("netstack: TCP handler returned without Accept or Reject; sent RST", "src", req.Src, "dst", req.Dst)
		}
	}()
	(*hp)(req)
}

// finish completes the forwarder request once (Complete must be called
// exactly once or the in-flight slot leaks). It reports whether this call
// did it.
func (r *TCPRequest) finish(rst bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return false
	}
	r.done = true
	r.fr.Complete(rst)
	r.st.syns.drop(r.id) // SYN retransmits seen while in flight
	return true
}

// Accept completes the client's handshake and returns the connection (with
// TCP keepalive enabled: 60 s idle, 30 s interval, 9 probes). If the
// handshake cannot be completed (the client gave up), it returns an error and
// the request is finished. Accept after Accept or Reject returns an error.
func (r *TCPRequest) Accept() (TCPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return nil, errRequestDone
	}
	r.done = true
	defer r.st.syns.drop(r.id)
	wq := new(waiter.Queue)
	if !r.st.beginHandshake(wq) {
		r.fr.Complete(true)
		r.st.fctr.tcpAcceptFailed.Add(1)
		return nil, fmt.Errorf("netstack: accept %v -> %v: %w", r.Src, r.Dst, net.ErrClosed)
	}
	ep, terr := r.fr.CreateEndpoint(wq)
	r.st.endHandshake(wq)
	if terr != nil {
		r.fr.Complete(true)
		r.st.fctr.tcpAcceptFailed.Add(1)
		return nil, fmt.Errorf("netstack: accept %v -> %v: %v", r.Src, r.Dst, terr)
	}
	r.fr.Complete(false)
	r.st.fctr.tcpAccepted.Add(1)
	setKeepalive(ep)
	return newTCPConn(wq, ep), nil
}

func setKeepalive(ep tcpip.Endpoint) {
	idle := tcpip.KeepaliveIdleOption(keepaliveIdle)
	intvl := tcpip.KeepaliveIntervalOption(keepaliveInterval)
	_ = ep.SetSockOpt(&idle)
	_ = ep.SetSockOpt(&intvl)
	_ = ep.SetSockOptInt(tcpip.KeepaliveCountOption, keepaliveCount)
	ep.SocketOptions().SetKeepAlive(true)
}

// Reject refuses the connection: RejectRST sends a reset, the other kinds
// send the matching ICMP destination unreachable quoting the client's SYN
// (falling back to RST if the SYN was not captured). Calling it after
// Accept or Reject does nothing.
func (r *TCPRequest) Reject(how Reject) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return
	}
	r.done = true
	defer r.st.syns.drop(r.id)
	r.st.fctr.tcpRejected.Add(1)
	if how == RejectRST || r.syn.data == nil {
		r.fr.Complete(true)
		return
	}
	if err := r.st.writeUnreachable(r.syn, how); err != nil {
		r.st.log.Debug("netstack: ICMP reject failed; sending RST", "src", r.Src, "dst", r.Dst, "err", err)
		r.fr.Complete(true)
		return
	}
	r.fr.Complete(false)
}

// synTable keeps the headers of SYNs handed to the forwarder until its
// handler goroutine picks them up (tcp.ForwarderRequest does not expose the
// packet). It is bounded; when full, stale entries (SYNs the forwarder
// dropped) are swept, and if that frees nothing new SYNs are not kept (their
// ICMP rejects degrade to RST).
type synTable struct {
	mu  sync.Mutex
	max int
	m   map[stack.TransportEndpointID]synEntry // guarded by mu
}

type synEntry struct {
	q  quote
	at time.Time
}

const synStale = 30 * time.Second

func (t *synTable) init(max int) {
	t.max = max
	t.m = make(map[stack.TransportEndpointID]synEntry)
}

func (t *synTable) put(id stack.TransportEndpointID, pkt *stack.PacketBuffer) {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.m[id]; !ok && len(t.m) >= t.max {
		for k, e := range t.m {
			if now.Sub(e.at) > synStale {
				delete(t.m, k)
			}
		}
		if len(t.m) >= t.max {
			return
		}
	}
	t.m[id] = synEntry{q: quotePacket(pkt), at: now}
}

func (t *synTable) take(id stack.TransportEndpointID) (quote, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[id]
	delete(t.m, id)
	return e.q, ok
}

func (t *synTable) drop(id stack.TransportEndpointID) {
	t.mu.Lock()
	delete(t.m, id)
	t.mu.Unlock()
}

// ---- UDP ----

// maxPendingUDP bounds UDP flows whose handler has not yet decided, and
// maxQueuedPerFlow the datagrams kept for each.
const (
	maxPendingUDP    = 4096
	maxQueuedPerFlow = 16
)

type udpRequestState struct {
	st   *Stack
	fr   *udp.ForwarderRequest
	id   stack.TransportEndpointID
	pend *udpPending
	mu   sync.Mutex
	done bool // guarded by mu
}

// udpPending is a flow whose request is with the handler.
type udpPending struct {
	first  quote
	queued []*stack.PacketBuffer // later datagrams; guarded by udpPendingTable.mu
}

type udpPendingTable struct {
	mu sync.Mutex
	m  map[stack.TransportEndpointID]*udpPending // guarded by mu
}

func (t *udpPendingTable) init() { t.m = make(map[stack.TransportEndpointID]*udpPending) }

// remove deletes the flow and returns its queued datagrams (owned by the
// caller, who must DecRef them).
func (t *udpPendingTable) remove(id stack.TransportEndpointID) []*stack.PacketBuffer {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.m[id]
	if !ok {
		return nil
	}
	delete(t.m, id)
	q := p.queued
	p.queued = nil
	return q
}

// SetUDPHandler sets the handler for the first datagram of a new (src, dst)
// flow to a non-local unicast address; h runs in its own goroutine and must
// call Accept or Reject exactly once before it returns (otherwise the flow
// is rejected with port unreachable). Broadcast and multicast datagrams never
// reach it. With no handler, datagrams to foreign addresses are dropped
// silently.
func (st *Stack) SetUDPHandler(h func(*UDPRequest)) {
	if h == nil {
		st.udpHandler.Store(nil)
		return
	}
	st.udpHandler.Store(&h)
}

// udpDefault is the UDP default handler: datagrams matching no endpoint.
func (st *Stack) udpDefault(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	if st.isRouterAddr(id.LocalAddress) {
		return false // closed port on the router: gVisor sends port unreachable
	}
	if !st.isForeignUnicast(id.LocalAddress) || !st.validClientSrc(id.RemoteAddress) {
		return true // broadcast, multicast, bogus source: drop silently
	}
	if st.udpHandler.Load() == nil || st.closed.Load() {
		return true
	}
	// The default handler runs before the endpoint's own length and
	// checksum checks; garbage must not start a flow.
	uh := header.UDP(pkt.TransportHeader().Slice())
	lenOK, sumOK := header.UDPValid(uh, func() uint16 { return pkt.Data().Checksum() }, uint16(pkt.Data().Size()),
		pkt.NetworkProtocolNumber, id.RemoteAddress, id.LocalAddress, false)
	if !lenOK || !sumOK {
		return true
	}
	t := &st.udp
	t.mu.Lock()
	if p, ok := t.m[id]; ok {
		if len(p.queued) < maxQueuedPerFlow {
			p.queued = append(p.queued, pkt.Clone())
		} else {
			st.fctr.udpPendingDrops.Add(1)
		}
		t.mu.Unlock()
		return true
	}
	if len(t.m) >= maxPendingUDP {
		t.mu.Unlock()
		st.fctr.udpPendingDrops.Add(1)
		return true
	}
	p := &udpPending{first: quotePacket(pkt)}
	t.m[id] = p
	t.mu.Unlock()
	// Forwarder.HandlePacket clones pkt into a request and calls
	// forwardUDP synchronously.
	return st.udpFwd.HandlePacket(id, pkt)
}

// forwardUDP is the udp.Forwarder's handler. It runs on the packet path, so
// it only starts the handler goroutine.
func (st *Stack) forwardUDP(fr *udp.ForwarderRequest) bool {
	id := fr.ID()
	st.udp.mu.Lock()
	p := st.udp.m[id]
	st.udp.mu.Unlock()
	req := &UDPRequest{
		Src: addrPort(id.RemoteAddress, id.RemotePort),
		Dst: addrPort(id.LocalAddress, id.LocalPort),
	}
	req.st, req.fr, req.id, req.pend = st, fr, id, p
	if p == nil || !st.handlers.enter() {
		releaseAll(st.udp.remove(id))
		return true
	}
	st.fctr.udpRequests.Add(1)
	go st.runUDP(req)
	return true
}

func (st *Stack) runUDP(req *UDPRequest) {
	defer st.handlers.exit()
	defer func() {
		if req.finishReject(RejectPortUnreachable) {
			st.log.Warn("netstack: UDP handler returned without Accept or Reject", "src", req.Src, "dst", req.Dst)
		}
	}()
	if hp := st.udpHandler.Load(); hp != nil {
		(*hp)(req)
	}
}

func releaseAll(pkts []*stack.PacketBuffer) {
	for _, p := range pkts {
		p.DecRef()
	}
}

// Accept creates the flow's connection: Read returns datagrams from Src to
// Dst (the first one included), Write sends a datagram from Dst to Src.
// Accept after Accept or Reject returns an error.
func (r *UDPRequest) Accept() (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return nil, errRequestDone
	}
	r.done = true
	if r.st.closed.Load() {
		releaseAll(r.st.udp.remove(r.id))
		return nil, fmt.Errorf("netstack: accept UDP %v -> %v: %w", r.Src, r.Dst, net.ErrClosed)
	}
	var wq waiter.Queue
	ep, terr := r.fr.CreateEndpoint(&wq)
	// From here on, new datagrams of the flow reach the endpoint directly;
	// hand over the ones that arrived while the handler decided.
	queued := r.st.udp.remove(r.id)
	defer releaseAll(queued)
	if terr != nil {
		return nil, fmt.Errorf("netstack: accept UDP %v -> %v: %v", r.Src, r.Dst, terr)
	}
	if te, ok := ep.(stack.TransportEndpoint); ok {
		for _, p := range queued {
			te.HandlePacket(r.id, p)
		}
	}
	r.st.fctr.udpAccepted.Add(1)
	return newUDPConn(&wq, ep), nil
}

// Reject refuses the flow with an ICMP destination unreachable quoting the
// first datagram (RejectRST means RejectPortUnreachable). Calling it after
// Accept or Reject does nothing.
func (r *UDPRequest) Reject(how Reject) { r.finishReject(how) }

func (r *UDPRequest) finishReject(how Reject) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return false
	}
	r.done = true
	releaseAll(r.st.udp.remove(r.id))
	r.st.fctr.udpRejected.Add(1)
	if how == RejectRST {
		how = RejectPortUnreachable
	}
	if err := r.st.writeUnreachable(r.pend.first, how); err != nil {
		r.st.log.Debug("netstack: UDP reject failed", "src", r.Src, "dst", r.Dst, "err", err)
	}
	return true
}
