package dhcp

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestBucket(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := newBucket(0.5, 3) // one token per 2 s, burst 3
	for i := range 3 {
		if !b.take(t0) {
			t.Fatalf("burst token %d refused", i)
		}
	}
	if b.take(t0) || b.take(t0.Add(1900*time.Millisecond)) {
		t.Fatal("token granted beyond the burst before the refill")
	}
	if !b.take(t0.Add(2 * time.Second)) {
		t.Fatal("no token after 2 s at 0.5/s")
	}
	if !b.has(t0.Add(time.Hour)) || b.tokens != 3 {
		t.Fatalf("after an hour: %v tokens, want the burst (3)", b.tokens)
	}
	b.take(t0.Add(time.Hour))
	b.refund()
	b.refund()
	if b.tokens != 3 {
		t.Fatalf("refund overfilled: %v", b.tokens)
	}
	var unlimited *bucket = newBucket(-1, 0)
	if unlimited != nil || !unlimited.take(t0) {
		t.Fatal("a negative rate must mean unlimited")
	}
}

func TestGuardDefaults(t *testing.T) {
	d, err := (&Config{ServerIP: netip.MustParseAddr("192.168.30.1"), Subnet: netip.MustParsePrefix("192.168.30.0/24")}).derive()
	if err != nil {
		t.Fatal(err)
	}
	if d.poolSize != 191 || d.newBurst != 23 || d.probation != 90*time.Second || d.offerHold != 30*time.Second {
		t.Fatalf("pool %d burst %v probation %v hold %v", d.poolSize, d.newBurst, d.probation, d.offerHold)
	}
	if want := 23.0 / 120; d.newRate != want {
		t.Fatalf("rate %v, want %v", d.newRate, want)
	}
	// The documented bound: offers+probation (2B) plus full leases (2B) ≤ half the pool.
	if 4*d.newBurst > float64(d.poolSize)/2 {
		t.Fatalf("4×burst %v exceeds half the pool", 4*d.newBurst)
	}
	small, err := (&Config{ServerIP: netip.MustParseAddr("10.0.0.1"), Subnet: netip.MustParsePrefix("10.0.0.0/29")}).derive()
	if err != nil {
		t.Fatal(err)
	}
	if small.newBurst != minNewClientBurst || small.newRate != minNewClientRate {
		t.Fatalf("small pool: burst %v rate %v", small.newBurst, small.newRate)
	}
	off, err := (&Config{ServerIP: netip.MustParseAddr("10.0.0.1"), Subnet: netip.MustParsePrefix("10.0.0.0/24"),
		NewClientRate: -1, ProbationLease: -1}).derive()
	if err != nil || off.newRate >= 0 || off.probation != 0 {
		t.Fatalf("disabled: %v rate %v probation %v", err, off.newRate, off.probation)
	}
	long, _ := (&Config{ServerIP: netip.MustParseAddr("10.0.0.1"), Subnet: netip.MustParsePrefix("10.0.0.0/24"),
		LeaseTime: time.Minute, ProbationLease: 2 * time.Minute}).derive()
	if long.probation != 0 {
		t.Fatalf("probation %v not shorter than the lease must be off", long.probation)
	}
	for _, c := range []Config{{NewClientBurst: -1}, {ProbationLease: time.Second}} {
		c.ServerIP, c.Subnet = netip.MustParseAddr("10.0.0.1"), netip.MustParsePrefix("10.0.0.0/24")
		if _, err := c.derive(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

func leaseSecs(m *dhcpv4.DHCPv4) uint32 {
	v := m.Options.Get(dhcpv4.OptionIPAddressLeaseTime)
	if len(v) != 4 {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

// TestProbationLifecycle: once the full-lease budget is spent, a new client
// gets a probation lease (in the OFFER and the ACK); renewing too early
// keeps it on probation, renewing from a quarter of it on upgrades it.
func TestProbationLifecycle(t *testing.T) {
	cfg := baseConfig()
	cfg.NewClientBurst = 2
	h := start(t, cfg)
	for i := 1; i <= 2; i++ {
		if s := leaseSecs(h.dora(i)); s != 7200 {
			t.Fatalf("client %d within the budget: lease %d s, want 7200", i, s)
		}
	}
	// The new-client bucket (burst 2, 2 per minute) refills in a minute;
	// the full-lease budget (2 per 2 h) does not.
	h.clk.Advance(time.Minute)
	h.send(discover(3))
	offer, _ := h.recv()
	if s := leaseSecs(offer); s != 90 {
		t.Fatalf("OFFER beyond the full-lease budget: %d s, want 90", s)
	}
	h.send(request(3, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr))))
	ack, _ := h.recv()
	if ack.MessageType() != dhcpv4.MessageTypeAck || leaseSecs(ack) != 90 ||
		binary.BigEndian.Uint32(ack.Options.Get(dhcpv4.OptionRenewTimeValue)) != 45 {
		t.Fatalf("ACK on probation: %v", ack.Summary())
	}
	ip := ack.YourIPAddr
	var l Lease
	for _, x := range h.srv.Leases() {
		if x.IP == netip.AddrFrom4([4]byte(ip.To4())) {
			l = x
		}
	}
	if !l.Probation || l.State != StateBound {
		t.Fatalf("lease %+v: want bound on probation", l)
	}
	renew := func() *dhcpv4.DHCPv4 {
		h.send(request(3, dhcpv4.WithClientIP(ip)))
		m, _ := h.recv()
		if m.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("renew: %v", m.Summary())
		}
		return m
	}
	h.clk.Advance(10 * time.Second) // before a quarter of 90 s
	if s := leaseSecs(renew()); s != 90 {
		t.Fatalf("early renewal: %d s, want 90 (still on probation)", s)
	}
	h.clk.Advance(35 * time.Second) // T1: 45 s after binding
	if s := leaseSecs(renew()); s != 7200 {
		t.Fatalf("renewal at T1: %d s, want 7200", s)
	}
	st := h.srv.Stats()
	if st.ProbationGranted != 1 || st.ProbationConfirmed != 1 || st.ProbationLeases != 0 || st.BoundLeases != 3 {
		t.Fatalf("stats %+v", st)
	}
	// A client on probation that never renews loses the address.
	h.send(discover(4))
	o4, _ := h.recv()
	h.send(request(4, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(o4.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(o4.YourIPAddr))))
	if a4, _ := h.recv(); leaseSecs(a4) != 90 {
		t.Fatalf("client 4: %v", a4.Summary())
	}
	if st := h.srv.Stats(); st.ProbationLeases != 1 {
		t.Fatalf("ProbationLeases = %d, want 1", st.ProbationLeases)
	}
	h.clk.Advance(91 * time.Second)
	if st := h.srv.Stats(); st.BoundLeases != 3 || st.ProbationLeases != 0 {
		t.Fatalf("after the probation ended: %+v", st)
	}
}

// TestDeclineOnProbationBounded: a DECLINE by a client on probation keeps the
// address out of service only until its lease would have ended.
func TestDeclineOnProbationBounded(t *testing.T) {
	cfg := baseConfig()
	cfg.NewClientBurst = 1
	h := start(t, cfg)
	h.dora(1)                  // spends the full-lease budget
	h.clk.Advance(time.Minute) // refills the new-client bucket
	ip := h.dora(2).YourIPAddr
	dec, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(2)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.30.1"))))
	h.send(dec)
	h.send(discover(1)) // processed after the DECLINE
	h.recv()
	ls := h.srv.Leases()
	var q *Lease
	for i := range ls {
		if ls[i].State == StateQuarantined {
			q = &ls[i]
		}
	}
	if q == nil || q.IP.String() != ip.String() {
		t.Fatalf("no quarantine of %v in %+v", ip, ls)
	}
	if want := h.clk.Now().Add(90 * time.Second); !q.Expiry.Equal(want) {
		t.Fatalf("quarantine until %v, want the probation end %v (not +10 min)", q.Expiry, want)
	}
}

// attacker plays starvation clients against a server by calling handlePacket
// directly (the reply, if any, is in conn.out when it returns).
type attacker struct {
	t       *testing.T
	s       *Server
	conn    *memConn
	rng     *rand.Rand
	n       int // clients played
	offers  int
	acks    int
	direct  int // INIT-REBOOT REQUESTs sent without a DISCOVER
	poolLow uint32
}

func newAttacker(t *testing.T, s *Server, conn *memConn) *attacker {
	return &attacker{t: t, s: s, conn: conn, rng: rand.New(rand.NewPCG(1, 2)), poolLow: s.d.poolStart}
}

// reply returns the server's reply to the last packet, if any.
func (a *attacker) reply() *dhcpv4.DHCPv4 {
	select {
	case r := <-a.conn.out:
		m, err := dhcpv4.FromBytes(r.b)
		if err != nil {
			a.t.Fatalf("undecodable reply: %v", err)
		}
		return m
	default:
		return nil
	}
}

// client plays one random-MAC client: DISCOVER and REQUEST for the OFFER
// (every third one sends an INIT-REBOOT REQUEST for a random pool address
// instead, skipping the DISCOVER).
func (a *attacker) client() {
	hw := make(net.HardwareAddr, 6)
	for i := range hw {
		hw[i] = byte(a.rng.Uint32())
	}
	hw[0] = hw[0]&0xfe | 0x02
	a.n++
	x := dhcpv4.TransactionID{byte(a.n >> 24), byte(a.n >> 16), byte(a.n >> 8), byte(a.n)}
	if a.n%3 == 0 {
		a.direct++
		want := u2ip(a.poolLow + uint32(a.rng.IntN(a.s.d.poolSize)))
		r, _ := dhcpv4.New(dhcpv4.WithTransactionID(x), dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(want)))
		a.s.handlePacket(r.ToBytes())
		if m := a.reply(); m != nil && m.MessageType() == dhcpv4.MessageTypeAck {
			a.acks++
		}
		return
	}
	d, _ := dhcpv4.New(dhcpv4.WithTransactionID(x), dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithBroadcast(true))
	a.s.handlePacket(d.ToBytes())
	o := a.reply()
	if o == nil {
		return
	}
	if o.MessageType() != dhcpv4.MessageTypeOffer {
		a.t.Fatalf("DISCOVER answered with %v", o.Summary())
	}
	a.offers++
	r, _ := dhcpv4.NewRequestFromOffer(o)
	a.s.handlePacket(r.ToBytes())
	if m := a.reply(); m != nil && m.MessageType() == dhcpv4.MessageTypeAck {
		a.acks++
	}
}

// dora runs a full exchange for a well-behaved client (handlePacket
// directly) and returns the ACK, or nil if the DISCOVER went unanswered.
func (a *attacker) dora(i int) *dhcpv4.DHCPv4 {
	a.s.handlePacket(discover(i).ToBytes())
	o := a.reply()
	if o == nil {
		return nil
	}
	a.s.handlePacket(request(i, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(o.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(o.YourIPAddr))).ToBytes())
	ack := a.reply()
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		a.t.Fatalf("client %d: REQUEST after OFFER not ACKed: %v", i, ack)
	}
	return ack
}

func (a *attacker) renew(i int, ip net.IP) *dhcpv4.DHCPv4 {
	a.s.handlePacket(request(i, dhcpv4.WithClientIP(ip)).ToBytes())
	return a.reply()
}

// checkBounds asserts the starvation-defence invariants at one moment.
func checkBounds(t *testing.T, s *Server, when string) Stats {
	t.Helper()
	st := s.Stats()
	if st.PoolFree < st.PoolSize/2 {
		t.Fatalf("%s: %d of %d pool addresses free: a flood took more than half the pool (%+v)", when, st.PoolFree, st.PoolSize, st)
	}
	if st.LeaseRecords > st.PoolSize {
		t.Fatalf("%s: %d lease records for a pool of %d", when, st.LeaseRecords, st.PoolSize)
	}
	s.mu.Lock()
	keys := len(s.pool.byKey)
	s.mu.Unlock()
	if keys > st.LeaseRecords {
		t.Fatalf("%s: %d client keys for %d records", when, keys, st.LeaseRecords)
	}
	return st
}

// TestStarvationFlood plays the lab's flood (3000 random MACs in batches of
// 100 every 400 ms, DISCOVER+REQUEST or INIT-REBOOT REQUEST) against the
// default /24 configuration: at least half the pool stays free throughout,
// the existing client renews, a client arriving during the flood gets a
// lease once the flood is over (on its RFC 2131 retransmission schedule),
// and a client arriving after it gets one on its first DISCOVER.
func TestStarvationFlood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		conn := newMemConn()
		s, err := newServer(conn, baseConfig())
		if err != nil {
			t.Fatal(err)
		}
		a := newAttacker(t, s, conn)
		old := a.dora(1)
		if old == nil || leaseSecs(old) != 7200 {
			t.Fatalf("first client before the flood: %v", old)
		}
		// Client 2 arrives 2 s into the flood and retransmits its DISCOVER
		// after 4, 8, 16, 32 and 64 s (RFC 2131 §4.1, without the jitter).
		start := time.Now()
		next2, wait2 := start.Add(2*time.Second), 4*time.Second
		var got2 time.Duration
		try2 := func() {
			if got2 != 0 || time.Now().Before(next2) {
				return
			}
			if a.dora(2) != nil {
				got2 = time.Since(start)
				return
			}
			next2, wait2 = next2.Add(wait2), min(2*wait2, 64*time.Second)
		}
		for b := 0; b < 30; b++ {
			for range 100 {
				a.client()
			}
			try2()
			if b == 15 {
				if m := a.renew(1, old.YourIPAddr); m == nil || m.MessageType() != dhcpv4.MessageTypeAck || leaseSecs(m) != 7200 {
					t.Fatalf("existing client could not renew during the flood: %v", m)
				}
			}
			checkBounds(t, s, "during the flood")
			time.Sleep(400 * time.Millisecond)
		}
		flood := time.Since(start)
		st := checkBounds(t, s, "after the flood")
		t.Logf("flood of %d clients in %v: %d offers, %d acks to the attacker (%d INIT-REBOOT REQUESTs); %d rate-limited, %d on probation, %d bound, %d of %d free, %d records",
			a.n, flood, a.offers, a.acks, a.direct, st.RateLimited, st.ProbationLeases, st.BoundLeases, st.PoolFree, st.PoolSize, st.LeaseRecords)
		if st.RateLimited+st.BroadcastLimited < 2500 || st.PoolExhausted != 0 {
			t.Fatalf("RateLimited %d, BroadcastLimited %d, PoolExhausted %d: the caps did not refuse the flood",
				st.RateLimited, st.BroadcastLimited, st.PoolExhausted)
		}
		// Client 2 keeps retransmitting; it gets a lease once the bucket
		// has refilled, on its next retransmission.
		for got2 == 0 && time.Since(start) < 5*time.Minute {
			time.Sleep(time.Until(next2))
			try2()
		}
		if got2 == 0 {
			t.Fatal("client 2 (arrived during the flood) got no lease in 5 minutes")
		}
		t.Logf("client 2 (arrived 2 s into a %v flood) got a lease after %v", flood.Round(time.Millisecond), got2)
		// A client arriving 1/rate after the flood gets a lease at once, even
		// after client 2 took a token.
		time.Sleep(time.Duration(float64(time.Second) / s.d.newRate))
		if a.dora(3) == nil {
			t.Fatal("client 3, arriving after the flood, got no OFFER")
		}
		// The flood's probation leases end; its full leases are at most 2B.
		time.Sleep(s.d.offerHold + s.d.probation)
		st = checkBounds(t, s, "after the probation")
		if st.ProbationLeases > 1 || float64(st.BoundLeases) > 2*s.d.newBurst+3 {
			t.Fatalf("after the probation: %+v", st)
		}
	})
}

// TestStarvationSustained floods for 10 minutes at 50 new MACs per second:
// the bound holds however long the flood lasts, and the table stays capped.
func TestStarvationSustained(t *testing.T) {
	if testing.Short() {
		t.Skip("long flood")
	}
	synctest.Test(t, func(t *testing.T) {
		conn := newMemConn()
		s, err := newServer(conn, baseConfig())
		if err != nil {
			t.Fatal(err)
		}
		a := newAttacker(t, s, conn)
		ip := a.dora(1).YourIPAddr
		for sec := range 600 {
			for range 50 {
				a.client()
			}
			if sec%60 == 0 {
				if m := a.renew(1, ip); m == nil || m.MessageType() != dhcpv4.MessageTypeAck {
					t.Fatalf("minute %d: existing client's renewal: %v", sec/60, m)
				}
			}
			checkBounds(t, s, "sustained flood")
			time.Sleep(time.Second)
		}
		st := s.Stats()
		t.Logf("10 min flood, %d clients: %d offers, %d acks; %d rate-limited, %d probation granted, %d bound (%d on probation), %d of %d free, %d records",
			a.n, a.offers, a.acks, st.RateLimited, st.ProbationGranted, st.BoundLeases, st.ProbationLeases, st.PoolFree, st.PoolSize, st.LeaseRecords)
		time.Sleep(time.Duration(float64(time.Second) / s.d.newRate))
		if a.dora(2) == nil {
			t.Fatal("a new client got no lease after the flood")
		}
	})
}

// TestGuardDisabled: with NewClientRate < 0 and ProbationLease < 0 the server
// behaves as before the defence: a flood exhausts the pool.
func TestGuardDisabled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := baseConfig()
		cfg.NewClientRate, cfg.ProbationLease, cfg.MaxBroadcastReplies = -1, -1, -1
		conn := newMemConn()
		s, err := newServer(conn, cfg)
		if err != nil {
			t.Fatal(err)
		}
		a := newAttacker(t, s, conn)
		for range 1000 {
			a.client()
		}
		st := s.Stats()
		if st.RateLimited != 0 || st.PoolFree != 0 || st.PoolExhausted == 0 || st.ProbationGranted != 0 {
			t.Fatalf("defence disabled: %+v", st)
		}
	})
}

// TestProbationPersisted: a probation lease stays one across a restart, and
// so do the defence's bucket levels.
func TestProbationPersisted(t *testing.T) {
	cfg := baseConfig()
	cfg.NewClientBurst = 1
	cfg.StateFile = filepath.Join(t.TempDir(), "leases.json")
	h := start(t, cfg)
	h.dora(1)
	h.clk.Advance(time.Minute)
	ip := h.dora(2).YourIPAddr
	if err := h.srv.Close(); err != nil {
		t.Fatal(err)
	}
	cfg.Now = h.clk.Now
	h2 := start(t, cfg)
	var n int
	for _, l := range h2.srv.Leases() {
		if l.Probation {
			n++
			if l.IP.String() != ip.String() {
				t.Fatalf("probation lease %+v, want %v", l, ip)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d probation leases after the restart, want 1: %+v", n, h2.srv.Leases())
	}
	// The spent full-lease budget survives the restart too: a flood cannot
	// get a second one by waiting for (or causing) a restart.
	h.clk.Advance(time.Minute) // one new-client token (h2 runs on h.clk)
	if s := leaseSecs(h2.dora(3)); s != 90 {
		t.Fatalf("new client after the restart: lease %d s, want probation (90 s)", s)
	}
}

// BenchmarkLeaseTableMemory reports the heap held per lease record (a /16
// pool filled by distinct clients with host names).
func BenchmarkLeaseTableMemory(b *testing.B) {
	const n = 50000
	for b.Loop() {
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		cfg := Config{ServerIP: netip.MustParseAddr("10.0.0.1"), Subnet: netip.MustParsePrefix("10.0.0.0/16"),
			NewClientRate: -1, Now: func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }}
		d, err := cfg.derive()
		if err != nil {
			b.Fatal(err)
		}
		p := newPool(d)
		now := d.now()
		for i := range n {
			hw := mac(i)
			key := "id:01" + hw.String()
			ip, _, ok := p.choose(key, hw.String(), 0, now)
			if !ok {
				b.Fatal("pool exhausted")
			}
			p.bind(key, hw, append([]byte{1}, hw...), ip, "host-name-of-a-client", now)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/n, "B/record")
		runtime.KeepAlive(p)
	}
}

// TestBroadcastPacing: replies to clients without an address stay under
// MaxBroadcastReplies (10/s, burst 10), a DISCOVER is only answered if its
// ACK fits too, and unicast renewals are never held back.
func TestBroadcastPacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		conn := newMemConn()
		cfg := baseConfig()
		cfg.NewClientRate = -1 // isolate the broadcast cap
		s, err := newServer(conn, cfg)
		if err != nil {
			t.Fatal(err)
		}
		a := newAttacker(t, s, conn)
		renewer := a.dora(1000) // 2 broadcasts
		offers := 0
		for i := range 20 {
			s.handlePacket(discover(i).ToBytes())
			if m := a.reply(); m != nil {
				offers++
			}
		}
		// 8 tokens left after client 1000: OFFERs while at least 2 remain.
		if offers != 7 {
			t.Fatalf("%d OFFERs at one instant, want 7 (burst 10, 2 used, 1 kept for an ACK)", offers)
		}
		s.handlePacket(request(0, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.30.1"))),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.30.11")))).ToBytes())
		if m := a.reply(); m == nil || m.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("the ACK for an OFFERed client was not sent: %v", m)
		}
		if m := a.renew(1000, renewer.YourIPAddr); m == nil || m.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("unicast renewal held back by the broadcast cap: %v", m)
		}
		if st := s.Stats(); st.BroadcastLimited != 13 || st.Offer != 8 || st.Ack != 3 {
			t.Fatalf("stats: %+v", st)
		}
		time.Sleep(time.Second) // 10 more tokens
		if a.dora(2000) == nil {
			t.Fatal("no OFFER after the budget refilled")
		}
	})
}

// TestProbePacing: conflict probes (each an ARP resolution of up to three
// broadcasts) start at most probeBurst at once and probeRate per second.
func TestProbePacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		conn := newMemConn()
		cfg := baseConfig()
		cfg.NewClientRate, cfg.MaxBroadcastReplies = -1, -1
		var probes int
		var mu sync.Mutex
		cfg.Probe = func(ctx context.Context, ip netip.Addr) (bool, error) {
			mu.Lock()
			probes++
			mu.Unlock()
			return false, nil
		}
		s, err := New(conn, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for i := range 30 {
			conn.in <- discover(i).ToBytes()
		}
		synctest.Wait()
		mu.Lock()
		n := probes
		mu.Unlock()
		if st := s.Stats(); n != probeBurst || st.Offer != probeBurst || st.ProbeBusy != 30-probeBurst {
			t.Fatalf("%d probes, stats %+v; want %d probes and OFFERs, the rest ProbeBusy", n, st, probeBurst)
		}
		time.Sleep(time.Second)
		for i := 100; i < 110; i++ {
			conn.in <- discover(i).ToBytes()
		}
		synctest.Wait()
		mu.Lock()
		n = probes
		mu.Unlock()
		if n != probeBurst+probeRate {
			t.Fatalf("%d probes after 1 s more, want %d", n, probeBurst+probeRate)
		}
	})
}
