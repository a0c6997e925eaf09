package dhcp

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Stats are cumulative counters since New.
type Stats struct {
	Received  uint64 // datagrams read
	Malformed uint64 // undecodable or invalid requests (dropped)
	// Requests by message type.
	Discover, Request, Decline, Release, Inform, OtherType uint64
	// Replies handed to the conn (counted before the write).
	Offer, Ack, Nak    uint64
	PoolExhausted      uint64 // DISCOVERs that found no free address
	Declined           uint64 // addresses quarantined after a DECLINE
	ProbeInUse         uint64 // fresh addresses a Probe found in use (quarantined)
	ProbeErrors        uint64 // Probe calls that failed (address treated as free)
	ProbeBusy          uint64 // DISCOVERs dropped because all probe slots were busy or over the probe rate
	IgnoredOtherServer uint64 // REQUESTs for another server (our offer withdrawn)
	WriteErrors        uint64
	ReadErrors         uint64
	SaveErrors         uint64 // failed StateFile writes
	// Starvation defence (guard.go).
	RateLimited        uint64 // requests of new clients dropped by the new-client rate cap
	BroadcastLimited   uint64 // broadcast replies (and DISCOVERs needing one) dropped by MaxBroadcastReplies
	ProbationGranted   uint64 // bindings given a probation lease
	ProbationConfirmed uint64 // probation leases renewed in time (upgraded to LeaseTime)
	// Gauges.
	BoundLeases     int // bound, unexpired leases now
	ProbationLeases int // of which on probation
	PoolSize        int // addresses PoolStart..PoolEnd
	PoolFree        int // pool addresses assignable to a new client now
	LeaseRecords    int // records in the lease table (memory; at most PoolSize plus reservations)
}

type counters struct {
	received, malformed                                  atomic.Uint64
	discover, request, decline, release, inform, other   atomic.Uint64
	offer, ack, nak                                      atomic.Uint64
	exhausted, declined, probeInUse, probeErr, probeBusy atomic.Uint64
	otherServer, writeErr, readErr, saveErr              atomic.Uint64
	rateLimited, probation, confirmed, bcastLimited      atomic.Uint64
}

// Server is a DHCPv4 server on one PacketConn (bound to port 67, able to
// send to 255.255.255.255:68). It owns conn: Close closes it.
type Server struct {
	conn  net.PacketConn
	cfg   Config
	d     *derived
	log   *slog.Logger
	rl    *rateLog
	probe func(ctx context.Context, ip uint32) (bool, error)

	mu   sync.Mutex // guards pool, preProbed, preRunning
	pool *pool
	// Config.PreProbe: addresses found free by a probe in advance (when),
	// and whether such a probe runs.
	preProbed  map[uint32]time.Time
	preRunning bool

	wmu   sync.Mutex // serialises conn writes (serve loop and probe goroutines)
	bcast *bucket    // broadcast replies (guarded by wmu); nil: unlimited
	// probes paces conflict probes (guarded by mu); see guard.go.
	probes *bucket

	c        counters
	probeSem chan struct{}
	saveCh   chan struct{}
	dirty    atomic.Bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closeMu  sync.Mutex
	closed   bool
}

var broadcastAddr = &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}

// New validates cfg, loads cfg.StateFile if set and starts serving conn in
// its own goroutine.
func New(conn net.PacketConn, cfg Config) (*Server, error) {
	if conn == nil {
		return nil, errors.New("dhcp: nil PacketConn")
	}
	s, err := newServer(conn, cfg)
	if err != nil {
		return nil, err
	}
	s.wg.Add(2)
	go s.serve()
	go s.saver()
	s.kickPreProbe()
	return s, nil
}

func newServer(conn net.PacketConn, cfg Config) (*Server, error) {
	d, err := cfg.derive()
	if err != nil {
		return nil, err
	}
	s := &Server{
		conn: conn, cfg: cfg, d: d, log: d.log, rl: newRateLog(d.now),
		pool: newPool(d), probeSem: make(chan struct{}, maxProbes), saveCh: make(chan struct{}, 1),
		preProbed: make(map[uint32]time.Time),
		bcast:     newBucket(d.bcastRate, d.bcastBurst), probes: newBucket(probeRate, probeBurst),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if cfg.Probe != nil {
		s.probe = func(ctx context.Context, ip uint32) (bool, error) { return cfg.Probe(ctx, u2a(ip)) }
	}
	if cfg.StateFile != "" {
		n, err := s.load()
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			s.log.Warn("dhcp: ignoring unreadable lease state", "file", cfg.StateFile, "err", err)
		default:
			s.log.Info("dhcp: leases loaded", "file", cfg.StateFile, "leases", n)
		}
	}
	return s, nil
}

// Close stops the server, closes conn, waits for its goroutines and writes
// the state file one last time.
func (s *Server) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closeMu.Unlock()
	s.cancel()
	err := s.conn.Close()
	s.wg.Wait()
	if serr := s.save(); serr != nil && err == nil {
		err = serr
	}
	return err
}

// Leases returns a snapshot of the lease table (offered, bound, expired and
// released records with an owner, and active quarantines), by address.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool.leases(s.d.now())
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	c := &s.c
	st := Stats{
		Received: c.received.Load(), Malformed: c.malformed.Load(),
		Discover: c.discover.Load(), Request: c.request.Load(), Decline: c.decline.Load(),
		Release: c.release.Load(), Inform: c.inform.Load(), OtherType: c.other.Load(),
		Offer: c.offer.Load(), Ack: c.ack.Load(), Nak: c.nak.Load(),
		PoolExhausted: c.exhausted.Load(), Declined: c.declined.Load(),
		ProbeInUse: c.probeInUse.Load(), ProbeErrors: c.probeErr.Load(), ProbeBusy: c.probeBusy.Load(),
		IgnoredOtherServer: c.otherServer.Load(), WriteErrors: c.writeErr.Load(),
		ReadErrors: c.readErr.Load(), SaveErrors: c.saveErr.Load(),
		RateLimited: c.rateLimited.Load(), BroadcastLimited: c.bcastLimited.Load(), ProbationGranted: c.probation.Load(), ProbationConfirmed: c.confirmed.Load(),
		PoolSize: s.d.poolSize,
	}
	s.mu.Lock()
	now := s.d.now()
	used := 0
	for ip, l := range s.pool.byIP {
		if l.state == StateBound && l.key != "" && l.active(now) {
			st.BoundLeases++
			if l.probation {
				st.ProbationLeases++
			}
		}
		if l.active(now) && s.pool.inPool(ip) && !s.pool.special(ip) {
			used++
		}
	}
	st.PoolFree = max(0, s.d.poolSize-s.pool.specialInPool-used)
	st.LeaseRecords = len(s.pool.byIP)
	s.mu.Unlock()
	return st
}

func (s *Server) isClosed() bool {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	return s.closed
}

func (s *Server) serve() {
	defer s.wg.Done()
	buf := make([]byte, 4096)
	backoff := time.Duration(0)
	for {
		n, _, err := s.conn.ReadFrom(buf)
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.c.readErr.Add(1)
			s.rl.warn(s.log, "read", "dhcp: read error", "err", err)
			// Back off on persistent errors so a broken conn cannot spin.
			backoff = min(max(2*backoff, time.Millisecond), time.Second)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		s.handlePacket(buf[:n])
	}
}

// handlePacket processes one datagram. It never panics on bad input.
func (s *Server) handlePacket(b []byte) {
	s.c.received.Add(1)
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		s.malformed("undecodable packet", err)
		return
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		s.malformed("not a BOOTREQUEST", nil)
		return
	}
	if len(req.ClientHWAddr) == 0 {
		s.malformed("no client hardware address", nil)
		return
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		s.c.discover.Add(1)
		s.handleDiscover(req)
	case dhcpv4.MessageTypeRequest:
		s.c.request.Add(1)
		s.handleRequest(req)
	case dhcpv4.MessageTypeDecline:
		s.c.decline.Add(1)
		s.handleDecline(req)
	case dhcpv4.MessageTypeRelease:
		s.c.release.Add(1)
		s.handleRelease(req)
	case dhcpv4.MessageTypeInform:
		s.c.inform.Add(1)
		s.handleInform(req)
	default:
		s.c.other.Add(1)
	}
}

func (s *Server) malformed(what string, err error) {
	s.c.malformed.Add(1)
	if err != nil {
		s.rl.warn(s.log, "malformed", "dhcp: dropping malformed request", "problem", what, "err", err)
	} else {
		s.rl.warn(s.log, "malformed", "dhcp: dropping malformed request", "problem", what)
	}
}

// clientKey identifies the client: option 61 if present, else chaddr.
func clientKey(req *dhcpv4.DHCPv4) (key string, cid []byte) {
	if id := req.Options.Get(dhcpv4.OptionClientIdentifier); len(id) > 0 {
		return "id:" + hex.EncodeToString(id), id
	}
	return "hw:" + req.ClientHWAddr.String(), nil
}

func ipU32(ip net.IP) uint32 {
	ip4 := ip.To4()
	if ip4 == nil {
		return 0
	}
	return uint32(ip4[0])<<24 | uint32(ip4[1])<<16 | uint32(ip4[2])<<8 | uint32(ip4[3])
}

func (s *Server) inSubnet(ip uint32) bool { return ip >= s.d.netBase && ip <= s.d.bcast }

func (s *Server) handleDiscover(req *dhcpv4.DHCPv4) {
	key, cid := clientKey(req)
	mac := req.ClientHWAddr.String()
	host := sanitizeHostname(req.HostName())
	now := s.d.now()

	if s.replyDest(req, false) == broadcastAddr && !s.bcastAvailable(2) {
		// Keep a token for the ACK that follows the OFFER.
		s.c.bcastLimited.Add(1)
		s.rl.warn(s.log, "bcastlimit", "dhcp: broadcast reply rate reached; DISCOVER dropped", "mac", mac)
		return
	}
	s.mu.Lock()
	newClient := !s.pool.known(key, mac)
	if newClient && !s.pool.admitNew(now) {
		s.mu.Unlock()
		s.rateLimited(mac)
		return
	}
	ip, fresh, ok := s.pool.choose(key, mac, ipU32(req.RequestedIPAddress()), now)
	if !ok {
		if newClient {
			s.pool.refundNew()
		}
		s.mu.Unlock()
		s.c.exhausted.Add(1)
		s.rl.warn(s.log, "exhausted", "dhcp: address pool exhausted", "mac", mac)
		return
	}
	hw := append(net.HardwareAddr(nil), req.ClientHWAddr...)
	s.pool.offer(key, hw, cid, ip, host, now)
	preProbed := fresh && s.takePreProbedLocked(ip, now)
	s.mu.Unlock()

	if !fresh || s.probe == nil || preProbed {
		s.sendOffer(req, key, mac, ip)
		if fresh {
			s.kickPreProbe()
		}
		return
	}
	busy := true
	s.mu.Lock()
	if s.probes.take(now) {
		select {
		case s.probeSem <- struct{}{}:
			busy = false
		default:
			s.probes.refund()
		}
	}
	if busy {
		s.pool.cancelOffer(key, now)
		if newClient {
			s.pool.refundNew()
		}
	}
	s.mu.Unlock()
	if busy {
		s.c.probeBusy.Add(1)
		s.rl.warn(s.log, "probebusy", "dhcp: conflict probes busy or over their rate; DISCOVER dropped", "mac", mac)
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.probeSem }()
		s.probeAndOffer(req, key, mac, hw, cid, host, ip)
	}()
}

// probeAndOffer probes ip (and up to maxProbeCandidates-1 alternatives) and
// sends an OFFER for the first address not in use.
func (s *Server) probeAndOffer(req *dhcpv4.DHCPv4, key, mac string, hw net.HardwareAddr, cid []byte, host string, ip uint32) {
	for range maxProbeCandidates {
		ctx, cancel := context.WithTimeout(s.ctx, s.d.probeTimeout)
		inUse, err := s.probe(ctx, ip)
		cancel()
		if s.ctx.Err() != nil {
			return
		}
		if errors.Is(err, context.DeadlineExceeded) {
			// No answer within ProbeTimeout: nobody uses the address.
			inUse, err = false, nil
		}
		if err != nil {
			s.c.probeErr.Add(1)
			s.rl.warn(s.log, "probeerr", "dhcp: address probe failed; assuming free", "ip", u2a(ip), "err", err)
		}
		if err != nil || !inUse {
			s.sendOffer(req, key, mac, ip)
			s.kickPreProbe()
			return
		}
		s.c.probeInUse.Add(1)
		s.log.Warn("dhcp: address in use by an unknown host; quarantined", "ip", u2a(ip), "for", s.d.quarantine)
		now := s.d.now()
		s.mu.Lock()
		s.pool.quarantine(ip, now)
		next, _, ok := s.pool.choose(key, mac, 0, now)
		probeOK := ok && s.probes.take(now)
		if probeOK {
			s.pool.offer(key, hw, cid, next, host, now)
		}
		s.mu.Unlock()
		if ok && !probeOK {
			s.c.probeBusy.Add(1)
			s.rl.warn(s.log, "probebusy", "dhcp: conflict probes over their rate; no offer", "mac", mac)
			return
		}
		if !ok {
			s.c.exhausted.Add(1)
			s.rl.warn(s.log, "exhausted", "dhcp: address pool exhausted", "mac", mac)
			return
		}
		ip = next
	}
	s.mu.Lock()
	s.pool.cancelOffer(key, s.d.now())
	s.mu.Unlock()
	s.rl.warn(s.log, "probegiveup", "dhcp: too many addresses in use; no offer", "mac", mac)
}

// preProbeFresh is how long a probe in advance (Config.PreProbe) vouches
// for an address.
const preProbeFresh = 30 * time.Second

// takePreProbedLocked reports (and forgets) whether ip was found free by a
// probe in advance within preProbeFresh. mu is held.
func (s *Server) takePreProbedLocked(ip uint32, now time.Time) bool {
	t, ok := s.preProbed[ip]
	delete(s.preProbed, ip)
	return ok && now.Sub(t) >= 0 && now.Sub(t) < preProbeFresh
}

// kickPreProbe (Config.PreProbe) probes the address the next new client
// would be offered, in the background, so that its DISCOVER is answered at
// once instead of after ProbeTimeout. One such probe at a time, within the
// probe rate; it runs at start and after every offer of a fresh address.
func (s *Server) kickPreProbe() {
	if !s.cfg.PreProbe || s.probe == nil || s.ctx.Err() != nil {
		return
	}
	now := s.d.now()
	s.mu.Lock()
	ip := s.pool.peekNew()
	t, known := s.preProbed[ip]
	if s.preRunning || ip == 0 || known && now.Sub(t) < preProbeFresh/2 || !s.probes.take(now) {
		s.mu.Unlock()
		return
	}
	select {
	case s.probeSem <- struct{}{}:
	default:
		s.probes.refund()
		s.mu.Unlock()
		return
	}
	s.preRunning = true
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.probeSem }()
		ctx, cancel := context.WithTimeout(s.ctx, s.d.probeTimeout)
		inUse, err := s.probe(ctx, ip)
		cancel()
		now := s.d.now()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.preRunning = false
		if s.ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, context.DeadlineExceeded) || err == nil && !inUse:
			for a, t := range s.preProbed { // a few entries at most
				if now.Sub(t) >= preProbeFresh {
					delete(s.preProbed, a)
				}
			}
			s.preProbed[ip] = now
		case err == nil && inUse:
			s.c.probeInUse.Add(1)
			s.pool.quarantine(ip, now)
			s.log.Warn("dhcp: address in use by an unknown host; quarantined", "ip", u2a(ip), "for", s.d.quarantine)
		}
	}()
}

// sendOffer offers ip with the lease time a REQUEST would get now.
func (s *Server) sendOffer(req *dhcpv4.DHCPv4, key, mac string, ip uint32) {
	s.mu.Lock()
	lt, _ := s.pool.leaseFor(key, mac, ip, s.d.now(), false)
	s.mu.Unlock()
	resp := s.reply(req, dhcpv4.MessageTypeOffer, ip, lt)
	s.send(req, resp, s.replyDest(req, false), &s.c.offer)
}

// rateLimited counts and (rate-limited) logs a request of a new client
// dropped by the new-client cap.
func (s *Server) rateLimited(mac string) {
	s.c.rateLimited.Add(1)
	s.rl.warn(s.log, "ratelimit", "dhcp: too many new clients; request dropped (possible starvation attack)", "mac", mac)
}

func (s *Server) handleRequest(req *dhcpv4.DHCPv4) {
	key, cid := clientKey(req)
	mac := req.ClientHWAddr.String()
	sid := req.ServerIdentifier()
	reqIP := ipU32(req.RequestedIPAddress())
	ciaddr := ipU32(req.ClientIPAddr)
	now := s.d.now()

	// RFC 2131 §4.3.2: which state the client is in decides the address.
	var target uint32
	switch {
	case sid != nil: // SELECTING
		if ipU32(sid) != s.d.server {
			s.mu.Lock()
			s.pool.cancelOffer(key, now)
			s.mu.Unlock()
			s.c.otherServer.Add(1)
			return
		}
		target = reqIP
		if target == 0 {
			target = ciaddr
		}
	case reqIP != 0: // INIT-REBOOT
		target = reqIP
	default: // RENEWING (unicast) or REBINDING (broadcast)
		target = ciaddr
	}
	if target == 0 {
		s.malformed("REQUEST without an address", nil)
		return
	}

	s.mu.Lock()
	reason := ""
	if !s.inSubnet(target) {
		reason = "address not on this network"
	} else if r, has := s.d.reservedByMAC[mac]; has && r != target && s.pool.usable(r, key, mac, now) {
		reason = "client has a different reserved address"
	} else if !s.pool.usable(target, key, mac, now) {
		reason = "address not available"
	}
	if reason == "" && s.replyDest(req, false) == broadcastAddr && !s.bcastAvailable(1) {
		// The ACK could not be sent: do not bind (the client retransmits).
		s.mu.Unlock()
		s.c.bcastLimited.Add(1)
		s.rl.warn(s.log, "bcastlimit", "dhcp: broadcast reply rate reached; REQUEST dropped", "mac", mac)
		return
	}
	if reason == "" && !s.pool.known(key, mac) && !s.pool.admitNew(now) {
		// A binding without an OFFER (INIT-REBOOT) of a client without a
		// record: the same cap as its DISCOVER would meet. Silence, not a
		// NAK: the client retries, then falls back to DISCOVER.
		s.mu.Unlock()
		s.rateLimited(mac)
		return
	}
	var hostname string
	var renewed bool
	var g grant
	var lt time.Duration
	if reason == "" {
		old := s.pool.byKey[key]
		renewed = old != nil && old.ip == target && old.state == StateBound && old.active(now)
		var l *lease
		l, g = s.pool.bind(key, append(net.HardwareAddr(nil), req.ClientHWAddr...), cid, target,
			sanitizeHostname(req.HostName()), now)
		hostname, lt = l.hostname, l.expiry.Sub(now)
	}
	s.mu.Unlock()

	switch g {
	case grantProbation:
		s.c.probation.Add(1)
	case grantConfirm:
		s.c.confirmed.Add(1)
	}
	if reason != "" {
		s.log.Info("dhcp: NAK", "mac", mac, "ip", u2a(target), "reason", reason)
		s.send(req, s.nak(req, reason), s.replyDest(req, true), &s.c.nak)
		return
	}
	if renewed {
		s.log.Debug("dhcp: lease renewed", "mac", mac, "ip", u2a(target))
	} else {
		s.log.Info("dhcp: lease bound", "mac", mac, "ip", u2a(target), "hostname", hostname, "lease", lt,
			"probation", g == grantProbation || g == grantReprobe)
	}
	s.changed()
	s.send(req, s.reply(req, dhcpv4.MessageTypeAck, target, lt), s.replyDest(req, false), &s.c.ack)
}

func (s *Server) handleDecline(req *dhcpv4.DHCPv4) {
	if sid := req.ServerIdentifier(); sid != nil && ipU32(sid) != s.d.server {
		return
	}
	key, _ := clientKey(req)
	ip := ipU32(req.RequestedIPAddress())
	now := s.d.now()
	s.mu.Lock()
	l := s.pool.byIP[ip]
	owned := l != nil && l.key == key
	if owned {
		s.pool.decline(ip, now)
	}
	s.mu.Unlock()
	if !owned {
		s.rl.warn(s.log, "decline", "dhcp: DECLINE for an address the client does not hold; ignored",
			"mac", req.ClientHWAddr.String(), "ip", u2a(ip))
		return
	}
	s.c.declined.Add(1)
	s.log.Warn("dhcp: client declined address (conflict); quarantined", "mac", req.ClientHWAddr.String(),
		"ip", u2a(ip), "for", s.d.quarantine)
	s.changed()
}

func (s *Server) handleRelease(req *dhcpv4.DHCPv4) {
	if sid := req.ServerIdentifier(); sid != nil && ipU32(sid) != s.d.server {
		return
	}
	key, _ := clientKey(req)
	ip := ipU32(req.ClientIPAddr)
	s.mu.Lock()
	changed := s.pool.release(key, ip, s.d.now())
	s.mu.Unlock()
	if changed {
		s.log.Info("dhcp: lease released", "mac", req.ClientHWAddr.String(), "ip", u2a(ip))
		s.changed()
	}
}

func (s *Server) handleInform(req *dhcpv4.DHCPv4) {
	resp := s.reply(req, dhcpv4.MessageTypeAck, 0, 0)
	resp.ClientIPAddr = req.ClientIPAddr
	s.send(req, resp, s.replyDest(req, false), &s.c.ack)
}

// replyDest implements RFC 2131 §4.1: via the relay if giaddr is set,
// unicast to ciaddr if the client has an address (not for NAK), otherwise
// broadcast (we cannot unicast to an address the client does not have yet
// without injecting an ARP entry, and broadcast is always accepted).
func (s *Server) replyDest(req *dhcpv4.DHCPv4, nak bool) net.Addr {
	if gi := ipU32(req.GatewayIPAddr); gi != 0 {
		return &net.UDPAddr{IP: u2ip(gi), Port: dhcpv4.ServerPort}
	}
	if ci := ipU32(req.ClientIPAddr); ci != 0 && !nak {
		return &net.UDPAddr{IP: u2ip(ci), Port: dhcpv4.ClientPort}
	}
	return broadcastAddr
}

// send writes m to to. The reply counter is bumped before the write, so a
// client that has seen the reply also sees it counted; failures are
// counted as WriteErrors.
func (s *Server) send(req, m *dhcpv4.DHCPv4, to net.Addr, counter *atomic.Uint64) {
	b := s.encode(req, m)
	s.wmu.Lock()
	if to == broadcastAddr && !s.bcast.take(s.d.now()) {
		s.wmu.Unlock()
		s.c.bcastLimited.Add(1)
		s.rl.warn(s.log, "bcastlimit", "dhcp: broadcast reply rate reached; reply dropped", "type", m.MessageType().String())
		return
	}
	counter.Add(1)
	_, err := s.conn.WriteTo(b, to)
	s.wmu.Unlock()
	if err != nil && !s.isClosed() {
		s.c.writeErr.Add(1)
		s.rl.warn(s.log, "write", "dhcp: send failed", "to", to.String(), "err", err)
	}
}

// bcastAvailable reports whether n broadcast replies could be sent now.
func (s *Server) bcastAvailable(n float64) bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.bcast == nil {
		return true
	}
	s.bcast.refill(s.d.now())
	return s.bcast.tokens >= n
}

// changed schedules a state save and tells Config.OnChange.
func (s *Server) changed() {
	s.markDirty()
	if s.cfg.OnChange != nil {
		s.cfg.OnChange()
	}
}

func sanitizeHostname(h string) string {
	const max = 63
	b := make([]byte, 0, min(len(h), max))
	for i := 0; i < len(h) && len(b) < max; i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
			b = append(b, c)
		}
	}
	return string(b)
}

// rateLog lets one line per key through every rateLogEvery and counts the rest.
type rateLog struct {
	mu         sync.Mutex
	now        func() time.Time
	last       map[string]time.Time
	suppressed map[string]int
}

const rateLogEvery = 10 * time.Second

func newRateLog(now func() time.Time) *rateLog {
	return &rateLog{now: now, last: map[string]time.Time{}, suppressed: map[string]int{}}
}

func (r *rateLog) warn(l *slog.Logger, key, msg string, args ...any) {
	r.mu.Lock()
	now := r.now()
	if t, ok := r.last[key]; ok && now.Sub(t) < rateLogEvery {
		r.suppressed[key]++
		r.mu.Unlock()
		return
	}
	n := r.suppressed[key]
	r.last[key] = now
	r.suppressed[key] = 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.Warn(msg, args...)
}
