package dns

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// pending is a query that needs an upstream answer.
type pending struct {
	q       *mdns.Msg // the client's query as parsed; never sent as is
	id      uint16    // the client's transaction id
	key     cacheKey
	hasOPT  bool
	do      bool
	maxSize int // largest reply the client accepts
}

// answer handles one query. It returns the reply to send, or a pending
// query that needs the upstream (then out is nil), or neither (drop).
func (s *Server) answer(raw []byte, client netip.Addr, tcp bool) (out []byte, p *pending) {
	if len(raw) < 12 || raw[2]&0x80 != 0 { // too short, or a response (loop guard)
		s.c.malformed.Add(1)
		return nil, nil
	}
	q := new(mdns.Msg)
	if err := q.Unpack(raw); err != nil {
		s.c.malformed.Add(1)
		return formErr(raw), nil
	}
	p = &pending{q: q, id: q.Id, maxSize: mdns.MinMsgSize}
	if opt := q.IsEdns0(); opt != nil {
		p.hasOPT, p.do = true, opt.Do()
		p.maxSize = max(int(opt.UDPSize()), mdns.MinMsgSize)
	}
	if tcp {
		p.maxSize = mdns.MaxMsgSize
	}
	if s.rl != nil && !s.rl.allow(client) {
		s.c.rateLimited.Add(1)
		s.warn("ratelimit", "dns: client over its query rate; REFUSED", "client", client)
		return s.reply(q, mdns.RcodeRefused, p), nil
	}
	switch {
	case q.Opcode != mdns.OpcodeQuery:
		s.c.refused.Add(1)
		return s.reply(q, mdns.RcodeNotImplemented, p), nil
	case len(q.Question) != 1:
		s.c.malformed.Add(1)
		return s.reply(q, mdns.RcodeFormatError, p), nil
	case q.Question[0].Qtype == mdns.TypeAXFR || q.Question[0].Qtype == mdns.TypeIXFR:
		s.c.refused.Add(1)
		return s.reply(q, mdns.RcodeRefused, p), nil
	}
	if m := s.local(q); m != nil {
		s.c.local.Add(1)
		return s.finalize(m, p), nil
	}
	p.key = keyOf(q)
	if m := s.cache.get(p.key, s.cfg.Now()); m != nil {
		s.c.hits.Add(1)
		return s.finalize(m, p), nil
	}
	s.c.misses.Add(1)
	return nil, p
}

// finish resolves p upstream and returns the reply (SERVFAIL if every
// upstream failed).
func (s *Server) finish(ctx context.Context, p *pending) []byte {
	r, err := s.resolve(ctx, p)
	if err != nil {
		if ctx.Err() != nil {
			return nil // shutting down
		}
		s.c.servFail.Add(1)
		s.warn("servfail", "dns: no upstream answered; SERVFAIL", "name", p.q.Question[0].Name, "err", err)
		return s.reply(p.q, mdns.RcodeServerFailure, p)
	}
	return s.finalize(r, p)
}

// flight is one upstream resolution that identical queries wait for.
type flight struct {
	done chan struct{}
	r    *mdns.Msg // read-only once done is closed
	err  error
}

// resolve returns a private copy of the upstream answer for p, sharing one
// upstream exchange among identical concurrent queries (same cache key).
func (s *Server) resolve(ctx context.Context, p *pending) (*mdns.Msg, error) {
	s.flMu.Lock()
	if f, ok := s.flights[p.key]; ok {
		s.flMu.Unlock()
		s.c.coalesced.Add(1)
		if s.onCoalesce != nil {
			s.onCoalesce()
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if f.err != nil {
			return nil, f.err
		}
		return f.r.Copy(), nil
	}
	f := &flight{done: make(chan struct{})}
	s.flights[p.key] = f
	s.flMu.Unlock()

	f.r, f.err = s.forward(ctx, p)
	if f.err == nil {
		s.cache.put(p.key, f.r, s.cfg.Now()) // before the flight ends: later queries hit the cache
	}
	s.flMu.Lock()
	delete(s.flights, p.key)
	s.flMu.Unlock()
	close(f.done)
	if f.err != nil {
		return nil, f.err
	}
	return f.r.Copy(), nil
}

// forward tries the upstreams in order; a truncated UDP answer is retried
// over TCP on the same upstream.
func (s *Server) forward(ctx context.Context, p *pending) (*mdns.Msg, error) {
	servers, changed, err := s.ups.list()
	if changed {
		s.c.reloads.Add(1)
		s.log.Info("dns: upstream resolvers (re)loaded", "file", s.cfg.ResolvConf, "servers", servers, "err", err)
	}
	if err != nil {
		return nil, err
	}
	// Deadlines, not contexts: no timer or context allocation per query;
	// ctx only carries the server's shutdown.
	budget := time.Now().Add(s.cfg.QueryTimeout)
	uq := upstreamQuery(p.q)
	var last *mdns.Msg
	var lastErr error
	for i, srv := range servers {
		if i == 0 {
			s.c.fwd.Add(1)
		} else {
			s.c.failover.Add(1)
		}
		uq.Id = randID()
		r, err := s.attempt(ctx, budget, uq, "udp", srv)
		if err == nil && r.Truncated {
			s.c.tcpRetry.Add(1)
			r, err = s.attempt(ctx, budget, uq, "tcp", srv)
		}
		if err != nil {
			if ctx.Err() != nil || !time.Now().Before(budget) {
				s.c.upErr.Add(1)
				if lastErr == nil {
					lastErr = err
				}
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, fmt.Errorf("dns: query budget of %v used up: %w", s.cfg.QueryTimeout, lastErr)
			}
			s.c.upErr.Add(1)
			s.ups.markDown(srv)
			s.warn("upstream:"+srv, "dns: upstream failed", "server", srv, "err", err)
			lastErr = err
			continue
		}
		s.ups.markUp(srv)
		if (r.Rcode == mdns.RcodeServerFailure || r.Rcode == mdns.RcodeRefused) && i < len(servers)-1 {
			last = r
			continue
		}
		return r, nil
	}
	if last != nil {
		return last, nil
	}
	return nil, lastErr
}

// attempt runs one exchange, bounded by Timeout and the query's budget.
func (s *Server) attempt(ctx context.Context, budget time.Time, uq *mdns.Msg, network, srv string) (*mdns.Msg, error) {
	dl := time.Now().Add(s.cfg.Timeout)
	if budget.Before(dl) {
		dl = budget
	}
	r, err := s.ex.exchange(ctx, dl, uq, network, srv)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", network, srv, err)
	}
	if r == nil || r.Id != uq.Id || !r.Response || len(r.Question) != 1 ||
		!strings.EqualFold(r.Question[0].Name, uq.Question[0].Name) ||
		r.Question[0].Qtype != uq.Question[0].Qtype || r.Question[0].Qclass != uq.Question[0].Qclass {
		return nil, fmt.Errorf("%s %s: answer does not match the question", network, srv)
	}
	return r, nil
}

// upstreamQuery is the client's query as sent upstream: EDNS buffer size
// normalised, client cookies removed (they are bound to the client's
// address, not ours). Everything else, including the DO and CD bits and
// other EDNS options, passes through.
func upstreamQuery(q *mdns.Msg) *mdns.Msg {
	uq := q.Copy()
	if opt := uq.IsEdns0(); opt != nil {
		opt.SetUDPSize(uint16(min(max(int(opt.UDPSize()), ourUDPSize), mdns.DefaultMsgSize)))
		kept := opt.Option[:0]
		for _, o := range opt.Option {
			if o.Option() != mdns.EDNS0COOKIE {
				kept = append(kept, o)
			}
		}
		opt.Option = kept
	}
	return uq
}

// reply builds an empty reply with rcode.
func (s *Server) reply(q *mdns.Msg, rcode int, p *pending) []byte {
	m := new(mdns.Msg)
	m.SetRcode(q, rcode)
	m.RecursionAvailable = true
	return s.finalize(m, p)
}

// finalize adapts m (which the caller owns) to the client: its id and
// question spelling, EDNS only if it used EDNS, and truncation to its
// buffer size. It returns the packed reply.
func (s *Server) finalize(m *mdns.Msg, p *pending) []byte {
	m.Id = p.id
	m.Response = true
	if len(p.q.Question) == len(m.Question) {
		m.Question = p.q.Question
	}
	opt := m.IsEdns0()
	switch {
	case !p.hasOPT && opt != nil:
		extra := m.Extra[:0]
		for _, rr := range m.Extra {
			if rr.Header().Rrtype != mdns.TypeOPT {
				extra = append(extra, rr)
			}
		}
		m.Extra = extra
	case p.hasOPT && opt == nil:
		m.SetEdns0(ourUDPSize, p.do)
	case p.hasOPT:
		opt.SetUDPSize(ourUDPSize)
	}
	wasTC := m.Truncated
	m.Truncate(p.maxSize)
	if m.Truncated && !wasTC {
		s.c.truncated.Add(1)
	}
	b, err := m.Pack()
	if err != nil {
		s.warn("pack", "dns: cannot pack reply", "err", err)
		f := new(mdns.Msg)
		f.SetRcode(p.q, mdns.RcodeServerFailure)
		f.Id = p.id
		f.Question = nil
		b, _ = f.Pack()
	}
	return b
}

// formErr answers an undecodable query with FORMERR and no sections.
func formErr(raw []byte) []byte {
	b := make([]byte, 12)
	copy(b[:2], raw[:2])
	b[2] = 0x80 | raw[2]&0x78 // QR, original opcode
	b[3] = byte(mdns.RcodeFormatError)
	return b
}

// local answers names from Static/RouterName/SetHosts, or returns nil.
func (s *Server) local(q *mdns.Msg) *mdns.Msg {
	qq := q.Question[0]
	if qq.Qclass != mdns.ClassINET && qq.Qclass != mdns.ClassANY {
		return nil
	}
	ht := s.hosts.Load()
	name := strings.ToLower(qq.Name)
	addrs, isFwd := ht.fwd[name]
	names, isRev := ht.rev[name]
	if !isFwd && !isRev {
		return nil
	}
	m := new(mdns.Msg)
	m.SetReply(q)
	m.Authoritative, m.RecursionAvailable = true, true
	hdr := func(t uint16) mdns.RR_Header {
		return mdns.RR_Header{Name: qq.Name, Rrtype: t, Class: mdns.ClassINET, Ttl: uint32(StaticTTL / time.Second)}
	}
	for _, a := range addrs {
		switch {
		case a.Is4() && (qq.Qtype == mdns.TypeA || qq.Qtype == mdns.TypeANY):
			m.Answer = append(m.Answer, &mdns.A{Hdr: hdr(mdns.TypeA), A: a.AsSlice()})
		case a.Is6() && (qq.Qtype == mdns.TypeAAAA || qq.Qtype == mdns.TypeANY):
			m.Answer = append(m.Answer, &mdns.AAAA{Hdr: hdr(mdns.TypeAAAA), AAAA: a.AsSlice()})
		}
	}
	if qq.Qtype == mdns.TypePTR || qq.Qtype == mdns.TypeANY {
		for _, n := range names {
			m.Answer = append(m.Answer, &mdns.PTR{Hdr: hdr(mdns.TypePTR), Ptr: n})
		}
	}
	return m
}

// rateLimiter is a per-client token bucket.
type rateLimiter struct {
	mu    sync.Mutex
	rate  float64
	burst float64
	now   func() time.Time
	m     map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int, now func() time.Time) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(burst), now: now, m: map[netip.Addr]*bucket{}}
}

func (r *rateLimiter) allow(ip netip.Addr) bool {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.m[ip]
	if b == nil {
		if len(r.m) >= maxRateClients {
			full := time.Duration(r.burst / r.rate * float64(time.Second))
			for k, v := range r.m {
				if now.Sub(v.last) >= full {
					delete(r.m, k)
				}
			}
			if len(r.m) >= maxRateClients {
				return true // table full of active clients: fail open, memory stays bounded
			}
		}
		b = &bucket{tokens: r.burst, last: now}
		r.m[ip] = b
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(r.burst, b.tokens+dt.Seconds()*r.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
