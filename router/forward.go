package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Inbound port forwarding: a listener on the router's host (opened as the
// process's user) whose connections (TCP) or datagrams (UDP, one mapping per
// remote peer) are carried to a port of a hub client, from the router
// address. SoftEther's SecureNAT has no equivalent (its users asked for it in
// SoftEtherVPN issues #693 and #918).
//
// Forwarded connections are flows like the NAT's own: they count against
// MaxSessions and MaxSessionsPerClient (the hub client being the "client"),
// appear in Flows with Inbound set and in the NAT log with inbound=true, and
// end with Close. The ACL does not apply to them: a forward is an explicit
// decision of the operator.

// PortForward is one inbound forward: connections to Listen on the router's
// host reach To on the hub.
type PortForward struct {
	Proto  Proto          // ProtoTCP or ProtoUDP
	Listen netip.AddrPort // host address and port to listen on; 0.0.0.0 = every IPv4 address, [::] = every IPv6 address (a separate rule from 0.0.0.0); port 0 = any free port (see ForwardInfo.Bound)
	To     netip.AddrPort // a hub client's IPv4 address and port, inside the router's subnet
}

// PortForwardSyntax documents the text form of a PortForward.
const PortForwardSyntax = `tcp|udp LISTEN -> CLIENT_IP:PORT
  LISTEN is ADDRESS:PORT on the router's host (0.0.0.0:8022, 127.0.0.1:8022, [::]:8022) or :PORT (every IPv4 address; [::] listens on IPv6 only).
  CLIENT_IP is a hub client's IPv4 address in the router's subnet. Ports are 1-65535; listening on
  ports below 1024 needs the host's net.ipv4.ip_unprivileged_port_start sysctl to allow it.
  e.g.  tcp 0.0.0.0:8022 -> 192.168.30.50:22      udp :5353 -> 192.168.30.60:53`

// String returns the rule in the text form ParsePortForward accepts.
func (pf PortForward) String() string {
	return pf.Proto.String() + " " + pf.Listen.String() + " -> " + pf.To.String()
}

// MarshalText implements encoding.TextMarshaler (the String form).
func (pf PortForward) MarshalText() ([]byte, error) { return []byte(pf.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler (ParsePortForward).
func (pf *PortForward) UnmarshalText(b []byte) error {
	p, err := ParsePortForward(string(b))
	if err != nil {
		return err
	}
	*pf = p
	return nil
}

// ParsePortForward parses the text form of a PortForward (see
// PortForwardSyntax), for example "tcp 0.0.0.0:8022 -> 192.168.30.50:22".
// Spaces around "->" are optional. Errors name the offending part.
func ParsePortForward(s string) (PortForward, error) {
	fail := func(format string, args ...any) (PortForward, error) {
		return PortForward{}, fmt.Errorf("router: port forward %q: %s (want %s)", s, fmt.Sprintf(format, args...), "tcp|udp LISTEN_ADDR:PORT -> CLIENT_IP:PORT")
	}
	words := strings.Fields(s)
	if len(words) == 0 {
		return fail("empty")
	}
	var pf PortForward
	switch strings.ToLower(words[0]) {
	case "tcp":
		pf.Proto = ProtoTCP
	case "udp":
		pf.Proto = ProtoUDP
	default:
		return fail("protocol %q: want tcp or udp", words[0])
	}
	rest := strings.Join(words[1:], " ")
	listen, to, ok := strings.Cut(rest, "->")
	if !ok {
		return fail(`missing "->"`)
	}
	listen, to = strings.TrimSpace(listen), strings.TrimSpace(to)
	if listen == "" {
		return fail("missing the listen address before ->")
	}
	if to == "" {
		return fail("missing the client address after ->")
	}
	if strings.ContainsAny(listen, " \t") || strings.ContainsAny(to, " \t") || strings.Contains(to, "->") {
		return fail("unexpected extra words")
	}
	if strings.HasPrefix(listen, ":") {
		listen = "0.0.0.0" + listen
	}
	var err error
	if pf.Listen, err = parseAddrPort(listen); err != nil {
		return fail("listen address %q: %v", listen, err)
	}
	if pf.To, err = parseAddrPort(to); err != nil {
		return fail("client address %q: %v", to, err)
	}
	if err := pf.validate(); err != nil {
		return fail("%v", err)
	}
	return pf, nil
}

// parseAddrPort parses ADDR:PORT with a decimal port 1-65535.
func parseAddrPort(s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, errors.New("want ADDRESS:PORT")
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address", host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, fmt.Errorf("port %q: want 1-65535", port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

// validate checks what can be checked without the stack.
func (pf PortForward) validate() error {
	if pf.Proto != ProtoTCP && pf.Proto != ProtoUDP {
		return fmt.Errorf("protocol %v: want tcp or udp", pf.Proto)
	}
	l := pf.Listen.Addr()
	if !l.IsValid() {
		return errors.New("no listen address")
	}
	if l.IsMulticast() {
		return fmt.Errorf("listen address %v is multicast", l)
	}
	to := pf.To.Addr().Unmap()
	switch {
	case !to.Is4():
		return fmt.Errorf("client address %v: want an IPv4 address (the hub is IPv4)", pf.To.Addr())
	case pf.To.Port() == 0:
		return errors.New("client port 0")
	case to.IsLoopback() || to.IsUnspecified() || to.IsMulticast() || to == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("client address %v is not a unicast host address", to)
	}
	return nil
}

// ForwardInfo describes one port forward and its counters (Router.Forwards).
type ForwardInfo struct {
	// Rule is the forward as added. (A named field, not embedded: the
	// embedded MarshalText would make JSON encode only the rule.)
	Rule PortForward
	// Bound is the address listened on (Listen, with port 0 resolved).
	Bound netip.AddrPort
	// Connections counts the TCP connections forwarded (or, for UDP, the
	// remote peers mapped) since the forward was added; Active those open now.
	Connections uint64
	Active      int
	// Refused counts connections (UDP: peers) that were not forwarded:
	// session limits, or the hub client refused or did not answer.
	Refused uint64
	// BytesToClient is payload from the host side to the hub client,
	// BytesFromClient the reverse (live connections included).
	BytesToClient, BytesFromClient uint64
}

// forwarder holds the Router's port forwards.
type forwarder struct {
	mu     sync.Mutex
	closed bool       // Router.Close began: no more adds
	rules  []*fwdRule // in the order added
}

// fwdRule is one running forward.
type fwdRule struct {
	pf    PortForward
	bound netip.AddrPort
	ln    net.Listener // TCP
	pc    *net.UDPConn // UDP
	wg    sync.WaitGroup

	conns, refused atomic.Uint64

	mu         sync.Mutex
	removed    bool                           // guarded by mu
	live       map[*flow]struct{}             // guarded by mu
	peers      map[netip.AddrPort]*udpMapping // guarded by mu (UDP)
	toClient   uint64                         // guarded by mu: bytes of ended flows
	fromClient uint64                         // guarded by mu
}

// udpMapping is one remote peer of a UDP forward.
type udpMapping struct {
	f    *flow
	conn net.Conn // netstack UDP socket connected to the hub client
}

// reasonForwardRemoved ends the flows of a removed forward.
const reasonForwardRemoved = "forward removed"

// AddForward starts a port forward: it listens on pf.Listen now (as the
// process's user) and carries each connection (TCP) or remote peer (UDP) to
// pf.To on the hub. It fails if the Router has no stack, pf is invalid,
// pf.To is not a client address of the router's subnet (or is the loopback
// alias), the same protocol and listen address is already forwarded, or
// the listen fails (the error then names the port and, for "permission
// denied", the sysctl net.ipv4.ip_unprivileged_port_start).
func (r *Router) AddForward(pf PortForward) error {
	pf.To = netip.AddrPortFrom(pf.To.Addr().Unmap(), pf.To.Port())
	pf.Listen = netip.AddrPortFrom(pf.Listen.Addr().Unmap(), pf.Listen.Port())
	if err := pf.validate(); err != nil {
		return fmt.Errorf("router: forward %v: %w", pf, err)
	}
	if r.st == nil {
		return fmt.Errorf("router: forward %v: no netstack.Stack to reach the hub", pf)
	}
	pfx := r.st.Prefix()
	to := pf.To.Addr()
	switch {
	case !pfx.Contains(to):
		return fmt.Errorf("router: forward %v: %v is not in the router's subnet %v", pf, to, pfx.Masked())
	case to == pfx.Addr():
		return fmt.Errorf("router: forward %v: %v is the router's own address", pf, to)
	case to == pfx.Masked().Addr() || to == broadcastAddr(pfx):
		return fmt.Errorf("router: forward %v: %v is the subnet's network or broadcast address", pf, to)
	case to == r.cfg.LoopbackAlias:
		return fmt.Errorf("router: forward %v: %v is the loopback alias, not a hub client", pf, to)
	}
	x := &r.fwd
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return fmt.Errorf("router: forward %v: %w", pf, net.ErrClosed)
	}
	for _, o := range x.rules {
		if o.pf.Proto == pf.Proto && pf.Listen.Port() != 0 && (o.pf.Listen == pf.Listen || o.bound == pf.Listen) {
			return fmt.Errorf("router: forward %v: %v %v is already forwarded (%v)", pf, pf.Proto, pf.Listen, o.pf)
		}
	}
	rule := &fwdRule{pf: pf, live: make(map[*flow]struct{})}
	if err := rule.listen(); err != nil {
		return err
	}
	if !r.enter() {
		rule.closeListener()
		return fmt.Errorf("router: forward %v: %w", pf, net.ErrClosed)
	}
	x.rules = append(x.rules, rule)
	rule.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer rule.wg.Done()
		if pf.Proto == ProtoTCP {
			r.serveTCPForward(rule)
		} else {
			r.serveUDPForward(rule)
		}
	}()
	r.log.Debug("port forward added", "rule", pf.String(), "bound", rule.bound.String())
	return nil
}

// RemoveForward stops a forward added with AddForward: pf must equal the
// rule as added (or name its bound address when it was added with port 0).
// It closes the listener, ends the forward's open connections and waits
// for them, so the port is free when it returns.
func (r *Router) RemoveForward(pf PortForward) error {
	pf.To = netip.AddrPortFrom(pf.To.Addr().Unmap(), pf.To.Port())
	pf.Listen = netip.AddrPortFrom(pf.Listen.Addr().Unmap(), pf.Listen.Port())
	x := &r.fwd
	x.mu.Lock()
	i := slices.IndexFunc(x.rules, func(o *fwdRule) bool {
		return o.pf == pf || o.pf.Proto == pf.Proto && o.bound == pf.Listen && o.pf.To == pf.To
	})
	if i < 0 {
		var hint string
		for _, o := range x.rules {
			if o.pf.Proto == pf.Proto && (o.pf.Listen == pf.Listen || o.bound == pf.Listen) {
				hint = fmt.Sprintf("; %v %v forwards to %v", o.pf.Proto, o.pf.Listen, o.pf.To)
			}
		}
		x.mu.Unlock()
		return fmt.Errorf("router: remove forward %v: no such forward%s", pf, hint)
	}
	rule := x.rules[i]
	x.rules = slices.Delete(x.rules, i, i+1)
	x.mu.Unlock()
	rule.stop()
	rule.wg.Wait()
	r.log.Debug("port forward removed", "rule", rule.pf.String())
	return nil
}

// Forwards returns the running forwards in the order they were added.
func (r *Router) Forwards() []ForwardInfo {
	x := &r.fwd
	x.mu.Lock()
	rules := slices.Clone(x.rules)
	x.mu.Unlock()
	out := make([]ForwardInfo, 0, len(rules))
	for _, rule := range rules {
		fi := ForwardInfo{
			Rule:        rule.pf,
			Bound:       rule.bound,
			Connections: rule.conns.Load(),
			Refused:     rule.refused.Load(),
		}
		rule.mu.Lock()
		fi.Active = len(rule.live)
		fi.BytesToClient, fi.BytesFromClient = rule.toClient, rule.fromClient
		for f := range rule.live {
			fi.BytesToClient += f.bytesIn.Load()
			fi.BytesFromClient += f.bytesOut.Load()
		}
		rule.mu.Unlock()
		out = append(out, fi)
	}
	return out
}

// startForwards starts Config.Forwards (from New).
func (r *Router) startForwards() error {
	for _, pf := range r.cfg.Forwards {
		if err := r.AddForward(pf); err != nil {
			return err
		}
	}
	return nil
}

// closeForwards stops every listener (from Close, after closed is set; the
// flows end with the table and Close waits for the goroutines).
func (r *Router) closeForwards() {
	x := &r.fwd
	x.mu.Lock()
	x.closed = true
	rules := x.rules
	x.mu.Unlock()
	for _, rule := range rules {
		rule.stop()
	}
}

// listen opens the rule's host socket.
func (rule *fwdRule) listen() error {
	pf := rule.pf
	network := "tcp4"
	if !pf.Listen.Addr().Is4() {
		network = "tcp6"
	}
	if pf.Proto == ProtoUDP {
		network = "udp" + network[3:]
	}
	var lc net.ListenConfig
	if pf.Proto == ProtoTCP {
		ln, err := lc.Listen(context.Background(), network, pf.Listen.String())
		if err != nil {
			return listenError(pf, err, unprivilegedPortStart())
		}
		rule.ln = ln
		rule.bound = ln.Addr().(*net.TCPAddr).AddrPort()
	} else {
		pc, err := lc.ListenPacket(context.Background(), network, pf.Listen.String())
		if err != nil {
			return listenError(pf, err, unprivilegedPortStart())
		}
		rule.pc = pc.(*net.UDPConn)
		rule.bound = rule.pc.LocalAddr().(*net.UDPAddr).AddrPort()
		rule.peers = make(map[netip.AddrPort]*udpMapping)
	}
	rule.bound = netip.AddrPortFrom(rule.bound.Addr().Unmap(), rule.bound.Port())
	return nil
}

// listenError explains a failed listen. portStart is the value of
// net.ipv4.ip_unprivileged_port_start ("" if unknown).
func listenError(pf PortForward, err error, portStart string) error {
	port := pf.Listen.Port()
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		limit := "this host's lowest unprivileged port"
		if portStart != "" {
			limit = "port " + portStart
		}
		return fmt.Errorf("router: forward %v: cannot listen on %v port %d: permission denied; "+
			"unprivileged users may only bind ports from %s up (sysctl net.ipv4.ip_unprivileged_port_start); "+
			"use a higher port or lower that sysctl: %w", pf, pf.Proto, port, limit, err)
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("router: forward %v: %v port %d on %v is already in use: %w", pf, pf.Proto, port, pf.Listen.Addr(), err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("router: forward %v: %v is not an address of this host: %w", pf, pf.Listen.Addr(), err)
	}
	return fmt.Errorf("router: forward %v: listen on %v: %w", pf, pf.Listen, err)
}

// unprivilegedPortStart reads net.ipv4.ip_unprivileged_port_start ("" if
// unavailable).
func unprivilegedPortStart() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// closeListener closes the rule's host socket.
func (rule *fwdRule) closeListener() {
	if rule.ln != nil {
		rule.ln.Close()
	}
	if rule.pc != nil {
		rule.pc.Close()
	}
}

// stop closes the listener and ends the rule's flows; the rule's
// goroutines then exit (rule.wg). Safe to call more than once.
func (rule *fwdRule) stop() {
	rule.closeListener()
	rule.mu.Lock()
	rule.removed = true
	flows := make([]*flow, 0, len(rule.live))
	for f := range rule.live {
		flows = append(flows, f)
	}
	rule.mu.Unlock()
	for _, f := range flows {
		f.shutdown(reasonForwardRemoved)
	}
}

// admit registers f with the rule; it fails once the rule is stopping.
func (rule *fwdRule) admit(f *flow) bool {
	rule.mu.Lock()
	defer rule.mu.Unlock()
	if rule.removed {
		return false
	}
	rule.live[f] = struct{}{}
	return true
}

// ended moves f's counters into the rule's totals; f's I/O has stopped.
func (rule *fwdRule) ended(f *flow) {
	rule.mu.Lock()
	defer rule.mu.Unlock()
	if _, ok := rule.live[f]; !ok {
		return
	}
	delete(rule.live, f)
	rule.toClient += f.bytesIn.Load()
	rule.fromClient += f.bytesOut.Load()
}

// newInboundFlow admits a forwarded connection from peer to the flow table
// and the rule. Client is the hub client (pf.To) and Dest the peer, so that
// the per-client caps apply to the hub client and BytesIn is peer→client.
func (r *Router) newInboundFlow(rule *fwdRule, peer netip.AddrPort) *flow {
	p := rule.pf.Proto
	f, _, ok := r.admitFlow(&flow{proto: p, client: rule.pf.To, dest: peer, evictable: p != ProtoTCP, inbound: true})
	if !ok {
		rule.refused.Add(1)
		return nil
	}
	if !rule.admit(f) {
		r.discard(f)
		return nil
	}
	return f
}

// serveTCPForward accepts connections until the listener is closed. It
// runs inside an enter section.
func (r *Router) serveTCPForward(rule *fwdRule) {
	backoff := 5 * time.Millisecond
	for {
		c, err := rule.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || r.ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like: log, back off
			// (bounded), retry; stop() closing the listener ends it.
			r.rlog.Log(slog.LevelWarn, "forward-accept", "router: port forward accept failed",
				slog.String("rule", rule.pf.String()), slog.String("err", err.Error()))
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-r.ctx.Done():
				t.Stop()
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		peer := addrPortOf(c.RemoteAddr())
		f := r.newInboundFlow(rule, peer)
		if f == nil {
			resetClose(c)
			continue
		}
		r.wg.Add(1) // inside this goroutine's enter section
		rule.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer rule.wg.Done()
			r.forwardTCPConn(rule, f, c)
		}()
	}
}

// forwardTCPConn dials the hub client for host connection c and splices
// the two until both directions finish or the flow ends.
func (r *Router) forwardTCPConn(rule *fwdRule, f *flow, c net.Conn) {
	f.setState(StateDialing)
	ctx, cancel := context.WithTimeout(f.ctx, r.cfg.DialTimeout)
	client, err := r.st.DialTCP(ctx, rule.pf.To)
	cancel()
	if err != nil {
		why, _ := classifyDialError(err)
		if f.ctx.Err() != nil {
			why = RefusedClosing
		}
		resetClose(c)
		r.discard(f)
		rule.ended(f)
		rule.refused.Add(1)
		r.refuse(why, ProtoTCP, f.client, f.dest, err)
		return
	}
	r.setKeepAlive(c)
	rule.conns.Add(1)
	r.opened(f)
	r.spliceTCP(f, client, c)
	rule.ended(f)
}

// resetClose closes a host TCP connection with a reset, which tells the
// peer at once that nothing is behind the port right now.
func resetClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// serveUDPForward reads datagrams from the host socket until it is closed
// and hands each to its peer's mapping, creating mappings for new peers.
// It runs inside an enter section.
func (r *Router) serveUDPForward(rule *fwdRule) {
	bp := udpBufPool.Get().(*[]byte)
	defer udpBufPool.Put(bp)
	buf := *bp
	for {
		n, peer, err := rule.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || r.ctx.Err() != nil {
				return
			}
			if transientUDPError(err) {
				continue
			}
			r.rlog.Log(slog.LevelWarn, "forward-read", "router: port forward read failed",
				slog.String("rule", rule.pf.String()), slog.String("err", err.Error()))
			t := time.NewTimer(50 * time.Millisecond) // bounded retry; Close/remove ends it
			select {
			case <-t.C:
			case <-r.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		rule.mu.Lock()
		m := rule.peers[peer]
		rule.mu.Unlock()
		if m == nil || m.f.ctx.Err() != nil {
			if m = r.newUDPMapping(rule, peer); m == nil {
				continue // refused: dropped
			}
		}
		f := m.f
		f.touch(r.now())
		f.bytesIn.Add(uint64(n))
		f.packetsIn.Add(1)
		if _, err := m.conn.Write(buf[:n]); err != nil && !transientUDPError(err) {
			f.abort(connError(err))
		}
	}
}

// newUDPMapping opens a mapping for a new remote peer: a flow, a netstack
// socket connected to the hub client and a goroutine relaying the client's
// datagrams back to the peer until the flow ends (idle, evicted, removed).
func (r *Router) newUDPMapping(rule *fwdRule, peer netip.AddrPort) *udpMapping {
	f := r.newInboundFlow(rule, peer)
	if f == nil {
		return nil
	}
	conn, err := r.st.DialUDP(rule.pf.To)
	if err != nil {
		why, _ := classifyDialError(err)
		r.discard(f)
		rule.ended(f)
		rule.refused.Add(1)
		r.refuse(why, ProtoUDP, f.client, f.dest, err)
		return nil
	}
	m := &udpMapping{f: f, conn: conn}
	rule.mu.Lock()
	rule.peers[peer] = m
	rule.mu.Unlock()
	rule.conns.Add(1)
	r.opened(f)
	timeout := r.cfg.UDPIdleTimeout
	if rule.pf.To.Port() == 53 {
		timeout = r.cfg.DNSIdleTimeout
	}
	idle := r.startIdleTimer(f, timeout)
	stop := r.onEnd(f, func() { conn.Close() })
	r.wg.Add(1) // inside serveUDPForward's enter section
	rule.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer rule.wg.Done()
		r.relayUDPReplies(rule, m, peer)
		idle.stop()
		stop()
		conn.Close()
		rule.mu.Lock()
		if rule.peers[peer] == m {
			delete(rule.peers, peer)
		}
		rule.mu.Unlock()
		r.finish(f, "closed")
		rule.ended(f)
	}()
	return m
}

// relayUDPReplies copies datagrams from the hub client to the peer until
// the mapping's socket fails (closed when the flow ends).
func (r *Router) relayUDPReplies(rule *fwdRule, m *udpMapping, peer netip.AddrPort) {
	read, free := newChunkReader(m.conn, &udpBufPool, false)
	defer free()
	f := m.f
	for {
		data, release, err := read()
		if err != nil {
			if f.ctx.Err() == nil && transientUDPError(err) {
				continue
			}
			f.abort(connError(err))
			return
		}
		f.touch(r.now())
		f.bytesOut.Add(uint64(len(data)))
		f.packetsOut.Add(1)
		_, werr := rule.pc.WriteToUDPAddrPort(data, peer)
		release()
		if werr != nil && !transientUDPError(werr) {
			f.abort(connError(werr))
			return
		}
	}
}

// broadcastAddr is the directed broadcast address of p.
func broadcastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		a[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom4(a)
}

// inboundAttr marks port-forward flows in the NAT log (an empty Attr, which
// handlers omit, for the others).
func inboundAttr(f *flow) slog.Attr {
	if f.inbound {
		return slog.Bool("inbound", true)
	}
	return slog.Attr{}
}
