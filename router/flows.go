package router

import (
	"cmp"
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Refusal is why a new flow was not forwarded.
type Refusal uint8

const (
	RefusedACL             Refusal = iota // an ACL rule denied it
	RefusedSessionLimit                   // MaxSessions reached, nothing evictable
	RefusedClientLimit                    // MaxSessionsPerClient reached, nothing evictable
	RefusedDialLimit                      // MaxInFlightDials reached
	RefusedClientDialLimit                // MaxInFlightDialsPerClient reached
	RefusedFDLimit                        // the process ran out of file descriptors
	RefusedConnRefused                    // the destination refused the connection
	RefusedUnreachable                    // host or network unreachable
	RefusedTimeout                        // the dial timed out
	RefusedDialError                      // any other dial/socket error
	RefusedAccept                         // the virtual side failed to complete (client gone)
	RefusedClosing                        // the router is closing
	numRefusals
)

var refusalNames = [numRefusals]string{
	RefusedACL:             "acl",
	RefusedSessionLimit:    "session-limit",
	RefusedClientLimit:     "client-limit",
	RefusedDialLimit:       "dial-limit",
	RefusedClientDialLimit: "client-dial-limit",
	RefusedFDLimit:         "fd-limit",
	RefusedConnRefused:     "conn-refused",
	RefusedUnreachable:     "unreachable",
	RefusedTimeout:         "dial-timeout",
	RefusedDialError:       "dial-error",
	RefusedAccept:          "accept-failed",
	RefusedClosing:         "closing",
}

func (r Refusal) String() string {
	if r < numRefusals {
		return refusalNames[r]
	}
	return "unknown"
}

// FlowState is the life-cycle state of a flow.
type FlowState uint32

const (
	StateDialing    FlowState = iota // TCP: connecting to the destination
	StateOpen                        // forwarding
	StateHalfClosed                  // TCP: one direction has finished (FIN)
	StateClosed                      // gone (only seen in the NAT log)
)

func (s FlowState) String() string {
	switch s {
	case StateDialing:
		return "dialing"
	case StateOpen:
		return "open"
	case StateHalfClosed:
		return "half-closed"
	case StateClosed:
		return "closed"
	}
	return "unknown"
}

// Flow is a snapshot of one NAT session, as returned by Router.Flows.
type Flow struct {
	ID     uint64
	Proto  Proto
	Client netip.AddrPort // the hub client; for ICMP the port is its echo identifier
	Dest   netip.AddrPort // the destination; for ICMP the port is 0
	State  FlowState
	// BytesOut/PacketsOut count client→destination payload, BytesIn/PacketsIn
	// destination→client. For TCP a "packet" is one read from the socket.
	BytesOut, BytesIn     uint64
	PacketsOut, PacketsIn uint64
	Created               time.Time
	Age                   time.Duration
	LastActivity          time.Time
	// Inbound marks a port-forward connection (Router.AddForward): Client
	// is the hub client it reaches, Dest the host-side peer that connected.
	Inbound bool
}

// flow is one entry of the flow table. The counters and the activity clock
// are atomics written by the data path; everything else is set before the
// flow is published or guarded by the table mutex.
type flow struct {
	id        uint64
	proto     Proto
	client    netip.AddrPort
	dest      netip.AddrPort
	created   time.Time // wall + monotonic
	evictable bool      // UDP/ICMP: may be evicted at the session caps
	inbound   bool      // a port-forward connection (forward.go)

	last       atomic.Int64 // monotonic nanoseconds since the router's epoch
	state      atomic.Uint32
	bytesOut   atomic.Uint64
	bytesIn    atomic.Uint64
	packetsOut atomic.Uint64
	packetsIn  atomic.Uint64

	// ctx is canceled, with a closeReason as cause, when the flow must end
	// (idle, evicted, Close) or has ended. Both are set before the flow is
	// published. Nothing should derive a context from ctx or call its Done
	// for the flow's whole life: either gives ctx a children map or a
	// channel, ~0.8 KB per flow. The end hooks (Router.onEnd) close the
	// flow's sockets instead; shutdown and abort run them.
	ctx    context.Context
	cancel context.CancelCauseFunc

	hookMu sync.Mutex
	hooks  *endHook // guarded by hookMu; run once by endHooks
	fired  bool     // guarded by hookMu: endHooks has run
}

// endHook is one function registered by Router.onEnd.
type endHook struct {
	next *endHook
	r    *Router
	fn   func()
}

func (f *flow) setState(s FlowState) { f.state.Store(uint32(s)) }

// closeReason is a flow's close reason as a context cause.
type closeReason string

func (c closeReason) Error() string { return string(c) }

// shutdown ends the flow with reason; the first reason given (or error, see
// abort) wins.
func (f *flow) shutdown(reason string) {
	if f.cancel != nil {
		f.cancel(closeReason(reason))
		f.endHooks()
	}
}

// abort ends the flow because of an I/O error.
func (f *flow) abort(err error) {
	if f.cancel != nil {
		f.cancel(err)
		f.endHooks()
	}
}

// endHooks starts the registered end hooks, each in a goroutine owned by
// its Router (whose wg count the hook holds), once; f.ctx is canceled
// already, so a hook registered later runs at once (Router.onEnd).
func (f *flow) endHooks() {
	f.hookMu.Lock()
	if f.fired {
		f.hookMu.Unlock()
		return
	}
	f.fired = true
	h := f.hooks
	f.hooks = nil
	f.hookMu.Unlock()
	for ; h != nil; h = h.next {
		go h.run()
	}
}

func (h *endHook) run() {
	defer h.r.wg.Done()
	h.fn()
}

// reason returns why the flow ended (or "" while it has not).
func (f *flow) reason() string {
	if f.ctx == nil {
		return ""
	}
	switch c := context.Cause(f.ctx).(type) {
	case nil:
		return ""
	case closeReason:
		return string(c)
	default:
		if errors.Is(c, context.Canceled) {
			return reasonShutdown // the router's context
		}
		return "error: " + c.Error()
	}
}

// touch records activity now.
func (f *flow) touch(now int64) { f.last.Store(now) }

// flowTable tracks the live flows and enforces MaxSessions and
// MaxSessionsPerClient. It does no I/O: callers act on what it returns.
type flowTable struct {
	max, maxPerClient int

	mu        sync.Mutex
	flows     map[*flow]struct{}          // every live flow
	evictable evictSet                    // the UDP/ICMP subset
	perClient map[netip.Addr]*clientFlows // per client address
	closed    bool                        // no more adds
	nextID    uint64                      // last ID handed out
	byProto   [ProtoICMP + 1]int          // live flows per protocol
	ended     uint64                      // flows finished
	// Byte and packet totals of finished flows.
	bytesOut, bytesIn, packetsOut, packetsIn uint64
}

// clientFlows is one client's share of the table.
type clientFlows struct {
	n         int      // live flows
	dialing   int      // TCP dials in flight
	evictable evictSet // the client's UDP/ICMP flows
}

func newFlowTable(max, maxPerClient int) *flowTable {
	return &flowTable{
		max:          max,
		maxPerClient: maxPerClient,
		flows:        make(map[*flow]struct{}),
		evictable:    evictSet{flows: make(map[*flow]struct{})},
		perClient:    make(map[netip.Addr]*clientFlows),
	}
}

// evictMinIdle is how long a UDP/ICMP flow must have been idle before a new
// flow at a session cap may evict it. It keeps active flows from being
// thrashed by a flood of new ones.
const evictMinIdle = time.Second

// add inserts f (assigning its ID) if the caps allow, evicting at most one
// idle UDP/ICMP flow per cap to make room. now is the current activity clock
// (same scale as flow.last). It returns the evicted flows, which the caller
// must shut down (they are already out of the table), or ok=false and the
// refusal reason.
func (t *flowTable) add(f *flow, now int64) (evicted []*flow, reason Refusal, ok bool) {
	client := f.client.Addr()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, RefusedClosing, false
	}
	cf := t.perClient[client]
	if cf != nil && t.maxPerClient > 0 && cf.n >= t.maxPerClient {
		v := cf.evictable.victim(now)
		if v == nil {
			return nil, RefusedClientLimit, false
		}
		t.removeLocked(v)
		evicted = append(evicted, v)
		cf = t.perClient[client] // removeLocked may have dropped it
	}
	if t.max > 0 && len(t.flows) >= t.max {
		// Not after a per-client eviction: that freed a global slot too.
		v := t.evictable.victim(now)
		if v == nil {
			return nil, RefusedSessionLimit, false
		}
		t.removeLocked(v)
		evicted = append(evicted, v)
		cf = t.perClient[client]
	}
	if cf == nil {
		cf = &clientFlows{evictable: evictSet{flows: make(map[*flow]struct{})}}
		t.perClient[client] = cf
	}
	t.nextID++
	f.id = t.nextID
	t.flows[f] = struct{}{}
	if f.evictable {
		t.evictable.flows[f] = struct{}{}
		cf.evictable.flows[f] = struct{}{}
	}
	cf.n++
	t.byProto[f.proto]++
	return evicted, 0, true
}

// evictSet is a set of evictable flows that finds eviction victims without
// scanning the whole set on every call, which matters when a flood of new
// flows meets a full table of 65536 sessions:
//   - a scan keeps up to max(evictBatch, size/8) eligible flows, least
//     recently active first, and later calls take from that queue (checking each is still
//     in the set and still idle);
//   - a scan that finds nothing eligible records the earliest clock value at
//     which a member could become eligible (activity only moves forward and
//     new members start at "now"), and no scan happens before then.
type evictSet struct {
	flows     map[*flow]struct{}
	queue     []*flow // candidates from the last scan, least recently active first
	idleUntil int64   // no member can be eligible before this clock value
}

const evictBatch = 256 // minimum candidates kept per scan

// victim returns the least recently active member idle for at least
// evictMinIdle, or nil. (Queued candidates were the least recently active
// at scan time; a flow that was idle then and has stayed idle is still
// older than any flow active since.)
func (e *evictSet) victim(now int64) *flow {
	for len(e.queue) > 0 {
		f := e.queue[0]
		e.queue[0] = nil
		e.queue = e.queue[1:]
		if _, ok := e.flows[f]; ok && now-f.last.Load() >= int64(evictMinIdle) {
			return f
		}
	}
	if now < e.idleUntil {
		return nil
	}
	type cand struct {
		f    *flow
		last int64
	}
	var cands []cand
	minLast := now
	for f := range e.flows {
		last := f.last.Load()
		if now-last >= int64(evictMinIdle) {
			cands = append(cands, cand{f, last})
		} else {
			minLast = min(minLast, last)
		}
	}
	if len(cands) == 0 {
		e.idleUntil = minLast + int64(evictMinIdle)
		return nil
	}
	slices.SortFunc(cands, func(a, b cand) int { return cmp.Compare(a.last, b.last) })
	// Keep a batch proportional to the set so that the O(n log n) scan is
	// amortized over n/8 evictions.
	batch := max(evictBatch, len(e.flows)/8)
	cands = cands[:min(len(cands), batch+1)]
	e.queue = e.queue[:0]
	for _, c := range cands[1:] {
		e.queue = append(e.queue, c.f)
	}
	return cands[0].f
}

// beginDial counts a dial for f's client unless the client already has
// max dials in flight. f must be in the table; call endDial after.
func (t *flowTable) beginDial(f *flow, max int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	cf := t.perClient[f.client.Addr()]
	if cf == nil || cf.dialing >= max {
		return false
	}
	cf.dialing++
	return true
}

func (t *flowTable) endDial(f *flow) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cf := t.perClient[f.client.Addr()]; cf != nil {
		cf.dialing--
	}
}

// remove takes f out of the table; it reports false if f was not in it
// (already removed or evicted).
func (t *flowTable) remove(f *flow) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.removeLocked(f)
}

func (t *flowTable) removeLocked(f *flow) bool {
	if _, ok := t.flows[f]; !ok {
		return false
	}
	delete(t.flows, f)
	delete(t.evictable.flows, f)
	client := f.client.Addr()
	if cf := t.perClient[client]; cf != nil {
		delete(cf.evictable.flows, f)
		if cf.n--; cf.n <= 0 {
			delete(t.perClient, client)
		}
	}
	t.byProto[f.proto]--
	return true
}

// close marks the table closed (add fails from now on) and returns every
// live flow; they stay in the table until their owners remove them.
func (t *flowTable) close() []*flow {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	return t.snapshotLocked()
}

func (t *flowTable) snapshot() []*flow {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.snapshotLocked()
}

func (t *flowTable) snapshotLocked() []*flow {
	out := make([]*flow, 0, len(t.flows))
	for f := range t.flows {
		out = append(out, f)
	}
	return out
}

// finish removes f if it is still in the table (eviction and close take
// flows out early) and adds its counters to the totals. The flow's owner
// calls it exactly once, after the flow's I/O has stopped.
func (t *flowTable) finish(f *flow) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.removeLocked(f)
	t.ended++
	t.bytesOut += f.bytesOut.Load()
	t.bytesIn += f.bytesIn.Load()
	t.packetsOut += f.packetsOut.Load()
	t.packetsIn += f.packetsIn.Load()
}

// tableStats is a consistent snapshot of the table's counters: the byte
// totals include the live flows.
type tableStats struct {
	total                                    int
	open                                     [ProtoICMP + 1]int
	ended                                    uint64
	bytesOut, bytesIn, packetsOut, packetsIn uint64
}

func (t *flowTable) stats() tableStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := tableStats{
		total: len(t.flows), open: t.byProto, ended: t.ended,
		bytesOut: t.bytesOut, bytesIn: t.bytesIn, packetsOut: t.packetsOut, packetsIn: t.packetsIn,
	}
	for f := range t.flows {
		s.bytesOut += f.bytesOut.Load()
		s.bytesIn += f.bytesIn.Load()
		s.packetsOut += f.packetsOut.Load()
		s.packetsIn += f.packetsIn.Load()
	}
	return s
}

// clientCount returns the live flows of one client.
func (t *flowTable) clientCount(a netip.Addr) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cf := t.perClient[a]; cf != nil {
		return cf.n
	}
	return 0
}
