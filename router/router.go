package router

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/acrouter/acrouter/netstack"
)

// Router forwards the TCP, UDP and ICMP echo flows that a netstack.Stack
// hands out onto host sockets, under the ACL and the session limits.
type Router struct {
	cfg   Config
	log   *slog.Logger
	rlog  *rateLogger
	acl   atomic.Pointer[acl] // replaced whole by SetRules
	table *flowTable
	st    *netstack.Stack // nil in unit tests that drive the handlers directly
	echo  echoWriter      // st, or a fake
	epoch time.Time       // origin of the activity clock (now)

	ctx    context.Context // canceled by Close; parent of every flow's context
	cancel context.CancelFunc

	dialsInFlight atomic.Int64

	mu     sync.Mutex     // guards closed and the 0→1 transition of wg
	closed bool           // Close has begun: enter fails
	wg     sync.WaitGroup // every goroutine running router code
	pool   *goPool        // workers for copy runs (gopool.go); closed after wg

	icmp *icmpForwarder
	fwd  forwarder  // inbound port forwards (forward.go)
	poll lazyPoller // idle flows' host sockets (hostpoll.go)

	// Counters; the byte totals of ended flows are in the table.
	created [ProtoICMP + 1]atomic.Uint64
	evicted atomic.Uint64
	refused [numRefusals]atomic.Uint64
}

// New starts a Router on st: it installs st's TCP, UDP and ICMP echo
// handlers. Close removes them and ends every flow.
func New(st *netstack.Stack, cfg Config) (*Router, error) {
	if st == nil {
		return nil, errors.New("router: nil netstack.Stack")
	}
	r, err := newRouter(cfg, st)
	if err != nil {
		return nil, err
	}
	r.st = st
	st.SetTCPHandler(r.onTCP)
	st.SetUDPHandler(r.onUDP)
	st.SetICMPEchoHandler(r.onEcho)
	if err := r.startAlias(); err != nil { // alias.go
		r.Close()
		return nil, err
	}
	if err := r.startForwards(); err != nil { // forward.go
		r.Close()
		return nil, err
	}
	return r, nil
}

// newRouter builds a Router without touching a Stack; echo receives echo
// replies and ICMP errors (nil: ICMP is not forwarded).
func newRouter(cfg Config, echo echoWriter) (*Router, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Router{
		cfg:    cfg,
		log:    log,
		rlog:   newRateLogger(log, time.Second),
		table:  newFlowTable(cfg.MaxSessions, cfg.MaxSessionsPerClient),
		pool:   newGoPool(poolMaxIdle, poolIdleFor),
		echo:   echo,
		epoch:  time.Now(),
		ctx:    ctx,
		cancel: cancel,
	}
	a := newACL(cfg.Rules, cfg.NoDefaultDeny)
	r.acl.Store(&a)
	r.checkFDLimit()
	if echo != nil {
		r.icmp = newICMPForwarder(r)
	}
	return r, nil
}

// Close stops accepting flows, ends every flow and waits for every
// goroutine the Router started. It is safe to call more than once.
func (r *Router) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.wg.Wait()
		r.pool.close()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.closeForwards() // stop the port-forward listeners (forward.go)
	if r.st != nil {
		r.st.SetTCPHandler(nil)
		r.st.SetUDPHandler(nil)
		r.st.SetICMPEchoHandler(nil)
	}
	for _, f := range r.table.close() {
		f.shutdown(reasonShutdown)
	}
	r.cancel()
	if r.icmp != nil {
		r.icmp.close()
	}
	r.wg.Wait()
	r.pool.close() // no task is left to submit another
	return nil
}

// enter registers a goroutine running router code; it fails once Close has
// begun. Every successful enter is paired with r.wg.Done.
func (r *Router) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.wg.Add(1)
	return true
}

// acceptRefusal is the reason for a failed Accept: the stack aborts
// pending handshakes when Close removes the handlers.
func (r *Router) acceptRefusal() Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return RefusedClosing
	}
	return RefusedAccept
}

// now is the activity clock: monotonic nanoseconds since New.
func (r *Router) now() int64 { return int64(time.Since(r.epoch)) }

// Close reasons, as they appear in the NAT log.
const (
	reasonFIN      = "fin"      // both sides finished normally
	reasonIdle     = "idle"     // idle timeout
	reasonEvicted  = "evicted"  // made room for a new flow at a session cap
	reasonShutdown = "shutdown" // Router.Close
)

// newFlow creates a flow and admits it to the table. On refusal it counts
// and logs the refusal and returns nil.
func (r *Router) newFlow(p Proto, client, dest netip.AddrPort) (*flow, Refusal, bool) {
	return r.admitFlow(&flow{proto: p, client: client, dest: dest, evictable: p != ProtoTCP})
}

// admitFlow gives f its context and times and admits it to the table,
// shutting down the flows evicted to make room. On refusal it counts and
// logs the refusal and returns nil.
func (r *Router) admitFlow(f *flow) (*flow, Refusal, bool) {
	f.created = time.Now()
	f.ctx, f.cancel = context.WithCancelCause(r.ctx)
	now := r.now()
	f.last.Store(now)
	evicted, why, ok := r.table.add(f, now)
	for _, v := range evicted {
		r.evicted.Add(1)
		v.shutdown(reasonEvicted)
	}
	if !ok {
		f.cancel(nil)
		r.refuse(why, f.proto, f.client, f.dest, nil)
		return nil, why, false
	}
	r.created[f.proto].Add(1)
	return f, 0, true
}

// finish removes f from the table, adds its counters to the totals and
// writes the NAT close line. The flow's owner calls it once, after its I/O
// has stopped; reason is used unless the flow was ended with another one.
func (r *Router) finish(f *flow, reason string) {
	f.cancel(closeReason(reason))
	reason = f.reason()
	f.setState(StateClosed)
	// The log line first: once Stats counts the flow closed, its line is out.
	defer r.table.finish(f)
	if r.cfg.NATLog {
		r.log.LogAttrs(context.Background(), slog.LevelInfo, "nat close",
			slog.Uint64("id", f.id),
			slog.String("proto", f.proto.String()),
			slog.String("client", f.client.String()),
			slog.String("dest", f.dest.String()),
			slog.Uint64("bytes_out", f.bytesOut.Load()),
			slog.Uint64("bytes_in", f.bytesIn.Load()),
			slog.Duration("duration", time.Since(f.created).Round(time.Millisecond)),
			slog.String("reason", reason), inboundAttr(f))
	}
}

// opened marks f open and writes the NAT open line.
func (r *Router) opened(f *flow) {
	f.setState(StateOpen)
	if r.cfg.NATLog {
		r.log.LogAttrs(context.Background(), slog.LevelInfo, "nat open",
			slog.Uint64("id", f.id),
			slog.String("proto", f.proto.String()),
			slog.String("client", f.client.String()),
			slog.String("dest", f.dest.String()), inboundAttr(f))
	}
}

// refuse counts a refused flow and logs it at a bounded rate (one line per
// reason per second, with the number of lines suppressed in between).
func (r *Router) refuse(why Refusal, p Proto, client, dest netip.AddrPort, err error) {
	r.refused[why].Add(1)
	level := slog.LevelInfo
	msg := "nat refused"
	switch why {
	case RefusedSessionLimit, RefusedClientLimit, RefusedDialLimit, RefusedClientDialLimit:
		level = slog.LevelWarn
	case RefusedFDLimit:
		level = slog.LevelError
		msg = "nat refused: out of file descriptors; raise the process limit (ulimit -n) or lower MaxSessions"
	case RefusedClosing:
		return
	}
	attrs := []slog.Attr{
		slog.String("reason", why.String()),
		slog.String("proto", p.String()),
		slog.String("client", client.String()),
		slog.String("dest", dest.String()),
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	r.rlog.Log(level, why.String(), msg, attrs...)
}

// classifyDialError maps a failed dial to a refusal reason and the answer
// the client gets.
func classifyDialError(err error) (Refusal, netstack.Reject) {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return RefusedConnRefused, netstack.RejectRST
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return RefusedUnreachable, netstack.RejectHostUnreachable
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN):
		return RefusedUnreachable, netstack.RejectNetUnreachable
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		// A host firewall or policy refused the socket operation.
		return RefusedDialError, netstack.RejectAdminProhibited
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return RefusedFDLimit, netstack.RejectRST
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return RefusedTimeout, netstack.RejectHostUnreachable
	}
	return RefusedDialError, netstack.RejectRST
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// checkFDLimit warns once at start when MaxSessions cannot be met because
// every flow holds one host socket (file descriptor).
func (r *Router) checkFDLimit() {
	limit, ok := fdLimit()
	if !ok {
		return
	}
	const reserve = 64 // listeners, logs, the hub connection, ...
	if need := uint64(r.cfg.MaxSessions) + reserve; limit < need {
		r.log.Warn("router: MaxSessions exceeds the open-file limit; flows beyond it will be refused (fd-limit)",
			"max_sessions", r.cfg.MaxSessions, "nofile_limit", limit, "want", need)
	}
}

// dialer returns the function used to open host sockets.
func (r *Router) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	addr = r.hostDialAddr(addr) // the loopback alias leads to 127.0.0.1 (alias.go)
	if r.cfg.Dial != nil {
		c, err := r.cfg.Dial(ctx, network, addr)
		if err == nil {
			r.setKeepAlive(c)
		}
		return c, err
	}
	d := net.Dialer{KeepAliveConfig: r.keepAliveConfig()}
	if r.cfg.TCPKeepAlive < 0 {
		d.KeepAlive = -1
	}
	return d.DialContext(ctx, network, addr)
}

func (r *Router) keepAliveConfig() net.KeepAliveConfig {
	if r.cfg.TCPKeepAlive < 0 {
		return net.KeepAliveConfig{Enable: false}
	}
	return net.KeepAliveConfig{Enable: true, Idle: r.cfg.TCPKeepAlive, Interval: 15 * time.Second, Count: 4}
}

func (r *Router) setKeepAlive(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok && r.cfg.TCPKeepAlive > 0 {
		_ = tc.SetKeepAliveConfig(r.keepAliveConfig())
	}
}

// Flows returns a snapshot of the live flows, ordered by ID (oldest first).
func (r *Router) Flows() []Flow {
	fs := r.table.snapshot()
	out := make([]Flow, 0, len(fs))
	now := time.Now()
	for _, f := range fs {
		last := r.epoch.Add(time.Duration(f.last.Load()))
		out = append(out, Flow{
			ID:           f.id,
			Proto:        f.proto,
			Client:       f.client,
			Dest:         f.dest,
			State:        FlowState(f.state.Load()),
			BytesOut:     f.bytesOut.Load(),
			BytesIn:      f.bytesIn.Load(),
			PacketsOut:   f.packetsOut.Load(),
			PacketsIn:    f.packetsIn.Load(),
			Created:      f.created,
			Age:          now.Sub(f.created),
			LastActivity: last,
			Inbound:      f.inbound,
		})
	}
	slices.SortFunc(out, func(a, b Flow) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Stats are the Router's counters. Bytes and packets include live flows.
type Stats struct {
	FlowsOpen                                 int // live flows (all protocols, including TCP dialing)
	FlowsOpenTCP, FlowsOpenUDP, FlowsOpenICMP int
	FlowsCreated                              uint64 // flows admitted to the table since New (a TCP flow whose dial then fails counts here and in Refused)
	FlowsCreatedTCP, FlowsCreatedUDP          uint64
	FlowsCreatedICMP                          uint64
	FlowsClosed                               uint64 // flows ended since New
	Evicted                                   uint64 // idle UDP/ICMP flows evicted at a session cap
	DialsInFlight                             int    // TCP dials pending now
	// Refused counts refused new flows by reason (Refusal.String(): "acl",
	// "session-limit", "client-limit", "dial-limit", "fd-limit",
	// "client-dial-limit", "conn-refused", "unreachable", "dial-timeout", "dial-error",
	// "accept-failed", "closing"); every reason is present.
	Refused      map[string]uint64
	RefusedTotal uint64
	// BytesOut/PacketsOut: client→destination payload; BytesIn/PacketsIn:
	// destination→client.
	BytesOut, BytesIn     uint64
	PacketsOut, PacketsIn uint64
	// ICMP echo forwarding.
	ICMPMode                  string // "ping-socket", "raw-socket" or "unavailable"
	EchoRequests, EchoReplies uint64 // forwarded requests, replies sent to clients
	EchoDropped               uint64 // requests not forwarded (no ICMP socket, send error, queue)
}

// Stats returns a snapshot of the counters.
func (r *Router) Stats() Stats {
	var s Stats
	t := r.table.stats()
	by := t.open
	s.FlowsOpen = t.total
	s.FlowsOpenTCP, s.FlowsOpenUDP, s.FlowsOpenICMP = by[ProtoTCP], by[ProtoUDP], by[ProtoICMP]
	s.FlowsCreatedTCP = r.created[ProtoTCP].Load()
	s.FlowsCreatedUDP = r.created[ProtoUDP].Load()
	s.FlowsCreatedICMP = r.created[ProtoICMP].Load()
	s.FlowsCreated = s.FlowsCreatedTCP + s.FlowsCreatedUDP + s.FlowsCreatedICMP
	s.FlowsClosed = t.ended
	s.Evicted = r.evicted.Load()
	s.DialsInFlight = int(r.dialsInFlight.Load())
	s.Refused = make(map[string]uint64, numRefusals)
	for i := range numRefusals {
		n := r.refused[i].Load()
		s.Refused[i.String()] = n
		s.RefusedTotal += n
	}
	s.BytesOut, s.BytesIn = t.bytesOut, t.bytesIn
	s.PacketsOut, s.PacketsIn = t.packetsOut, t.packetsIn
	s.ICMPMode = "unavailable"
	if r.icmp != nil {
		s.ICMPMode = r.icmp.mode.String()
		s.EchoRequests = r.icmp.requests.Load()
		s.EchoReplies = r.icmp.replies.Load()
		s.EchoDropped = r.icmp.dropped.Load()
	}
	return s
}

// Config returns the configuration in effect, defaults filled in.
func (r *Router) Config() Config {
	c := r.cfg
	c.Rules = slices.Clone(c.Rules)
	return c
}

// SetRules replaces the ACL (for a configuration reload): DefaultDenyRules
// unless noDefaultDeny, then rules. New flows are checked against the new
// list; open flows are not re-checked.
func (r *Router) SetRules(rules []Rule, noDefaultDeny bool) {
	a := newACL(slices.Clone(rules), noDefaultDeny)
	r.acl.Store(&a)
}

// ACL returns the rules in the order they are evaluated: DefaultDenyRules
// (unless Config.NoDefaultDeny), then Config.Rules (or those of the last SetRules). A flow matching none is
// allowed.
func (r *Router) ACL() []Rule { return slices.Clone(r.acl.Load().rules) }
