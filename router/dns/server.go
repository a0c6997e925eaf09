package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// Stats are cumulative counters since New.
type Stats struct {
	UDPQueries, TCPQueries uint64
	LocalAnswers           uint64 // Static / RouterName answers
	CacheHits, CacheMisses uint64
	Forwarded              uint64 // queries sent upstream (first attempt)
	Failovers              uint64 // attempts on a further upstream
	TCPRetries             uint64 // truncated UDP answers retried over TCP
	UpstreamErrors         uint64 // failed upstream attempts (timeout, refused, bad answer)
	ServFail               uint64 // SERVFAILs we generated (all upstreams failed)
	RateLimited            uint64 // queries REFUSED by the per-client limit
	Busy                   uint64 // UDP queries refused because MaxInflight was reached
	Malformed              uint64 // undecodable queries (FORMERR or dropped)
	Refused                uint64 // other queries we refuse (zone transfers, non-QUERY)
	Truncated              uint64 // answers truncated to the client's UDP size
	TCPConnsRejected       uint64 // TCP connections over MaxTCPConns
	WriteErrors            uint64
	ResolvConfReloads      uint64
	Coalesced              uint64 // queries that shared an identical in-flight upstream exchange
	UpstreamMismatches     uint64 // unexpected datagrams on upstream UDP sockets (possible spoofing; socket dropped)
	CacheEntries           int
}

type counters struct {
	udpQ, tcpQ, local, hits, misses, fwd, failover, tcpRetry, upErr, servFail atomic.Uint64
	rateLimited, busy, malformed, refused, truncated, tcpRejected, writeErr   atomic.Uint64
	reloads, coalesced                                                        atomic.Uint64
}

// Server is the DNS redirector. It owns the conns passed to New: Close
// closes them.
type Server struct {
	cfg   Config
	log   *slog.Logger
	hosts atomic.Pointer[hostTable]
	ups   *upstreams
	ex    exchanger
	cache *cache
	rl    *rateLimiter
	c     counters

	udps     []net.PacketConn // guarded by mu (Serve adds)
	tcps     []net.Listener   // guarded by mu
	inflight chan struct{}
	jobs     chan udpJob // unbuffered: idle workers wait on it
	workers  atomic.Int64
	tcpSem   chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	tcpConns map[net.Conn]struct{}

	flMu    sync.Mutex
	flights map[cacheKey]*flight

	logMu   sync.Mutex
	lastLog map[string]time.Time

	onCoalesce func() // test hook
}

// New starts serving DNS on udp and/or tcp (either may be nil).
func New(cfg Config, udp net.PacketConn, tcp net.Listener) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.Serve(udp, tcp); err != nil {
		return nil, err
	}
	return s, nil
}

// Serve adds another pair of sockets to serve on (either may be nil), for
// example the router's IPv6 address next to its IPv4 one. Close closes
// them too. It fails once the server is closed (and then closes them).
func (s *Server) Serve(udp net.PacketConn, tcp net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		if udp != nil {
			udp.Close()
		}
		if tcp != nil {
			tcp.Close()
		}
		return errors.New("dns: server closed")
	}
	if udp != nil {
		s.udps = append(s.udps, udp)
		s.wg.Add(1)
		go s.serveUDP(udp)
	}
	if tcp != nil {
		s.tcps = append(s.tcps, tcp)
		s.wg.Add(1)
		go s.serveTCP(tcp)
	}
	return nil
}

func newServer(cfg Config) (*Server, error) {
	n, ht, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: n, log: n.Logger,
		ups:      newUpstreams(n.Upstreams, n.ResolvConf, n.Now),
		ex:       n.upstream,
		cache:    newCache(n.CacheSize, n.MaxCacheTTL),
		inflight: make(chan struct{}, n.MaxInflight),
		jobs:     make(chan udpJob),
		tcpSem:   make(chan struct{}, n.MaxTCPConns),
		tcpConns: map[net.Conn]struct{}{},
		lastLog:  map[string]time.Time{},
		flights:  map[cacheKey]*flight{},
	}
	if n.RateLimit > 0 {
		s.rl = newRateLimiter(n.RateLimit, n.RateBurst, n.Now)
	}
	if s.ex == nil {
		s.ex = newNetExchanger(n.Timeout)
	}
	s.hosts.Store(ht)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// SetHosts replaces the dynamic part of the local name table (for example
// DHCP client host names), keeping Config.Static and RouterName. Safe for
// concurrent use.
func (s *Server) SetHosts(hosts map[string][]netip.Addr) error {
	merged := make(map[string][]netip.Addr, len(s.cfg.Static)+len(hosts))
	for k, v := range hosts {
		merged[k] = v
	}
	for k, v := range s.cfg.Static {
		merged[k] = v
	}
	c := s.cfg
	c.Static = merged
	c.Upstreams = nil
	_, ht, err := c.normalize()
	if err != nil {
		return err
	}
	s.hosts.Store(ht)
	return nil
}

// Close stops serving, closes the conns, aborts upstream exchanges and
// waits for every goroutine.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for c := range s.tcpConns {
		c.Close()
	}
	udps, tcps := s.udps, s.tcps
	s.mu.Unlock()
	s.cancel()
	var errs []error
	for _, u := range udps {
		errs = append(errs, u.Close())
	}
	for _, l := range tcps {
		errs = append(errs, l.Close())
	}
	if e, ok := s.ex.(interface{ close() }); ok {
		e.close() // wakes upstream UDP exchanges in flight
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	c := &s.c
	return Stats{
		UDPQueries: c.udpQ.Load(), TCPQueries: c.tcpQ.Load(), LocalAnswers: c.local.Load(),
		CacheHits: c.hits.Load(), CacheMisses: c.misses.Load(), Forwarded: c.fwd.Load(),
		Failovers: c.failover.Load(), TCPRetries: c.tcpRetry.Load(), UpstreamErrors: c.upErr.Load(),
		ServFail: c.servFail.Load(), RateLimited: c.rateLimited.Load(), Busy: c.busy.Load(),
		Malformed: c.malformed.Load(), Refused: c.refused.Load(), Truncated: c.truncated.Load(),
		TCPConnsRejected: c.tcpRejected.Load(), WriteErrors: c.writeErr.Load(),
		ResolvConfReloads: c.reloads.Load(), Coalesced: c.coalesced.Load(), CacheEntries: s.cache.len(),
		UpstreamMismatches: s.upstreamMismatches(),
	}
}

func (s *Server) upstreamMismatches() uint64 {
	if e, ok := s.ex.(interface{ mismatches() uint64 }); ok {
		return e.mismatches()
	}
	return 0
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// warn logs at most one line per key every 10 s.
func (s *Server) warn(key, msg string, args ...any) {
	now := s.cfg.Now()
	s.logMu.Lock()
	if t, ok := s.lastLog[key]; ok && now.Sub(t) < 10*time.Second && !now.Before(t) {
		s.logMu.Unlock()
		return
	}
	s.lastLog[key] = now
	s.logMu.Unlock()
	s.log.Warn(msg, args...)
}

func addrOf(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func (s *Server) serveUDP(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 65535)
	var backoff time.Duration
	for {
		n, peer, err := pc.ReadFrom(buf)
		if err != nil {
			if !s.backOff("read", "dns: UDP read error", err, &backoff) {
				return
			}
			continue
		}
		backoff = 0
		s.c.udpQ.Add(1)
		out, p := s.answer(buf[:n], addrOf(peer), false)
		if out != nil {
			s.writeUDP(pc, out, peer)
			continue
		}
		if p == nil {
			continue
		}
		select {
		case s.inflight <- struct{}{}:
		default:
			s.c.busy.Add(1)
			s.warn("busy", "dns: too many upstream queries in flight; answering SERVFAIL")
			s.writeUDP(pc, s.reply(p.q, mdns.RcodeServerFailure, p), peer)
			continue
		}
		s.dispatch(udpJob{pc: pc, p: p, peer: peer})
	}
}

// udpJob is a UDP query that needs the upstream; it holds an inflight slot.
type udpJob struct {
	pc   net.PacketConn
	p    *pending
	peer net.Addr
}

// workerIdle is how long an idle upstream worker waits for the next job.
const workerIdle = 30 * time.Second

// dispatch hands j to an idle worker or starts one. Workers are long-lived
// so that a miss neither creates a goroutine nor grows a fresh stack; their
// number never exceeds MaxInflight (every job holds an inflight slot).
func (s *Server) dispatch(j udpJob) {
	select {
	case s.jobs <- j:
		return
	default:
	}
	if s.workers.Add(1) <= int64(cap(s.inflight)) {
		s.wg.Add(1)
		go s.worker(j)
		return
	}
	// As many workers as inflight slots (some just finishing a job): wait
	// for one; every job ends within QueryTimeout.
	s.workers.Add(-1)
	select {
	case s.jobs <- j:
	case <-s.ctx.Done():
		<-s.inflight
	}
}

func (s *Server) worker(j udpJob) {
	defer s.wg.Done()
	defer s.workers.Add(-1)
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		s.writeUDP(j.pc, s.finish(s.ctx, j.p), j.peer)
		<-s.inflight
		idle.Reset(workerIdle)
		select {
		case j = <-s.jobs:
		case <-idle.C:
			return
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *Server) writeUDP(pc net.PacketConn, b []byte, to net.Addr) {
	if b == nil {
		return
	}
	if _, err := pc.WriteTo(b, to); err != nil && !s.isClosed() {
		s.c.writeErr.Add(1)
		s.warn("write", "dns: UDP write error", "to", to.String(), "err", err)
	}
}

func (s *Server) serveTCP(l net.Listener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if !s.backOff("accept", "dns: TCP accept error", err, &backoff) {
				return
			}
			continue
		}
		backoff = 0
		select {
		case s.tcpSem <- struct{}{}:
		default:
			s.c.tcpRejected.Add(1)
			s.warn("tcpcap", "dns: too many TCP clients; connection closed", "max", s.cfg.MaxTCPConns)
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			<-s.tcpSem
			return
		}
		s.tcpConns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.tcpSem }()
			s.serveConn(c)
			s.mu.Lock()
			delete(s.tcpConns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// serveConn answers length-prefixed queries in order until the client
// closes, is idle for TCPIdleTimeout, or sends garbage.
func (s *Server) serveConn(c net.Conn) {
	client := addrOf(c.RemoteAddr())
	var hdr [2]byte
	buf := make([]byte, 512)
	for s.ctx.Err() == nil {
		c.SetReadDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if n < 12 {
			s.c.malformed.Add(1)
			return
		}
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		s.c.tcpQ.Add(1)
		out, p := s.answer(buf, client, true)
		if p != nil {
			out = s.finish(s.ctx, p)
		}
		if out == nil {
			continue
		}
		msg := make([]byte, 2+len(out))
		binary.BigEndian.PutUint16(msg, uint16(len(out)))
		copy(msg[2:], out)
		c.SetWriteDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		if _, err := c.Write(msg); err != nil {
			return
		}
	}
}

// backOff handles a read or accept error of a serving loop: false when the
// server is closing (the loop ends); otherwise it logs (rate-limited under
// key) and waits a backoff that doubles from 1 ms up to 1 s.
func (s *Server) backOff(key, msg string, err error, backoff *time.Duration) bool {
	if s.isClosed() || errors.Is(err, net.ErrClosed) {
		return false
	}
	s.warn(key, msg, "err", err)
	*backoff = min(max(2**backoff, time.Millisecond), time.Second)
	select {
	case <-s.ctx.Done():
		return false
	case <-time.After(*backoff):
		return true
	}
}
