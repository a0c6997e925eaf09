package dhcp

import (
	"net"
	"net/netip"
	"slices"
	"time"
)

// LeaseState is the state of a lease record.
type LeaseState string

// Lease states as reported by Leases.
const (
	StateOffered     LeaseState = "offered"     // offered, awaiting REQUEST (held for OfferHold)
	StateBound       LeaseState = "bound"       // ACKed and not expired
	StateExpired     LeaseState = "expired"     // was bound; kept so the client gets it again
	StateReleased    LeaseState = "released"    // RELEASEd by the client; kept for affinity
	StateQuarantined LeaseState = "quarantined" // DECLINEd or found in use by Probe; no owner
)

// Lease describes one address record.
type Lease struct {
	MAC      net.HardwareAddr // empty for quarantined addresses
	ClientID []byte           // option 61, if the client sent one
	IP       netip.Addr
	Hostname string    // option 12, sanitised
	Expiry   time.Time // lease (or offer hold, or quarantine) end
	State    LeaseState
	// Probation is set for a bound lease of Config.ProbationLease that the
	// client has not renewed yet (see the starvation defence in guard.go).
	Probation bool
}

// lease is one record. Records are never deleted, only made inactive (their
// number is bounded by pool size plus reservations); an inactive record's
// address can be given to another client.
type lease struct {
	key      string // client key; "" for quarantine records
	mac      net.HardwareAddr
	clientID []byte
	ip       uint32
	hostname string
	expiry   time.Time
	state    LeaseState // offered, bound, released or quarantined
	// probation: a bound lease of ProbationLease, not yet renewed; boundAt
	// is when that probation began (see guard.go).
	probation bool
	boundAt   time.Time
}

func (l *lease) active(now time.Time) bool {
	return l.state != StateReleased && now.Before(l.expiry)
}

// pool is the pure address-assignment core: no I/O, time passed in.
type pool struct {
	d     *derived
	byIP  map[uint32]*lease
	byKey map[string]*lease
	// next is the lowest pool address that may never have had a record.
	// Addresses below it all have records (or are special); see fresh.
	next uint32
	// newClients admits clients without a record; fullLeases decides
	// whether a binding that is not a renewal gets LeaseTime or probation.
	newClients, fullLeases *bucket
	// specialInPool counts pool addresses that are never leased dynamically.
	specialInPool int
}

func newPool(d *derived) *pool {
	p := &pool{d: d, byIP: map[uint32]*lease{}, byKey: map[string]*lease{}, next: d.poolStart,
		newClients: newBucket(d.newRate, d.newBurst)}
	if d.probation > 0 {
		p.fullLeases = newBucket(d.newBurst/d.leaseTime.Seconds(), d.newBurst)
	}
	if p.inPool(d.server) {
		p.specialInPool++
	}
	if d.hasGateway && d.gateway != d.server && p.inPool(d.gateway) {
		p.specialInPool++
	}
	for ip := range d.reservedByIP { // never the server or gateway (derive)
		if p.inPool(ip) {
			p.specialInPool++
		}
	}
	return p
}

// known reports whether the client has a record or a reservation; unknown
// clients need a new-client token to be offered or bound.
func (p *pool) known(key, mac string) bool {
	if p.byKey[key] != nil {
		return true
	}
	_, reserved := p.d.reservedByMAC[mac]
	return reserved
}

// admitNew takes a new-client token (guard.go).
func (p *pool) admitNew(now time.Time) bool { return p.newClients.take(now) }

// refundNew returns a token taken by admitNew for a request not served.
func (p *pool) refundNew() { p.newClients.refund() }

// special reports addresses that are never handed out dynamically.
func (p *pool) special(ip uint32) bool {
	if ip == p.d.server || (p.d.hasGateway && ip == p.d.gateway) || ip <= p.d.netBase || ip >= p.d.bcast {
		return true
	}
	_, reserved := p.d.reservedByIP[ip]
	return reserved
}

func (p *pool) inPool(ip uint32) bool { return ip >= p.d.poolStart && ip <= p.d.poolEnd }

// usable reports whether ip may be (or stay) assigned to the client with key
// and mac at now.
func (p *pool) usable(ip uint32, key, mac string, now time.Time) bool {
	if owner, reserved := p.d.reservedByIP[ip]; reserved {
		if owner != mac {
			return false
		}
	} else if !p.inPool(ip) || p.special(ip) {
		return false
	}
	l := p.byIP[ip]
	return l == nil || l.key == key || !l.active(now)
}

// choose picks an address for a DISCOVER: the client's reservation, its
// current or last record, the requested address if free, then a fresh one.
// fresh reports that the address was not the client's before (so it should
// be probed). ok is false when the pool is exhausted.
func (p *pool) choose(key, mac string, requested uint32, now time.Time) (ip uint32, fresh, ok bool) {
	if r, has := p.d.reservedByMAC[mac]; has && p.usable(r, key, mac, now) {
		return r, false, true
	}
	if l := p.byKey[key]; l != nil && p.usable(l.ip, key, mac, now) {
		return l.ip, false, true
	}
	if requested != 0 && p.usable(requested, key, mac, now) {
		return requested, true, true
	}
	ip, ok = p.free(key, mac, now)
	return ip, true, ok
}

// peekNew returns the never-used address free would give a new client
// next (0 when that range is exhausted), without taking it.
func (p *pool) peekNew() uint32 {
	for ip := p.next; ip != 0 && ip <= p.d.poolEnd; ip++ {
		if p.byIP[ip] == nil && !p.special(ip) {
			return ip
		}
	}
	return 0
}

// free returns an address with no record (ascending from p.next), else the
// inactive record that has been inactive longest.
func (p *pool) free(key, mac string, now time.Time) (uint32, bool) {
	for ; p.next != 0 && p.next <= p.d.poolEnd; p.next++ {
		if p.byIP[p.next] == nil && !p.special(p.next) {
			return p.next, true
		}
	}
	p.next = 0 // the never-used range is exhausted for good
	var best *lease
	for _, l := range p.byIP {
		if l.active(now) || !p.usable(l.ip, key, mac, now) {
			continue
		}
		if best == nil || l.expiry.Before(best.expiry) || (l.expiry.Equal(best.expiry) && l.ip < best.ip) {
			best = l
		}
	}
	if best == nil {
		return 0, false
	}
	return best.ip, true
}

// assign gives ip to the client, moving it off any other address it held.
func (p *pool) assign(key string, mac net.HardwareAddr, cid []byte, ip uint32, host string, state LeaseState, expiry time.Time) *lease {
	if old := p.byKey[key]; old != nil && old.ip != ip {
		old.key, old.state, old.expiry = "", StateReleased, time.Time{}
		old.mac, old.clientID, old.hostname = nil, nil, ""
		old.probation, old.boundAt = false, time.Time{}
	}
	l := p.byIP[ip]
	if l == nil {
		l = &lease{ip: ip}
		p.byIP[ip] = l
	} else if l.key != key && l.key != "" {
		delete(p.byKey, l.key)
	}
	l.key, l.mac, l.clientID, l.state, l.expiry = key, mac, cid, state, expiry
	l.probation, l.boundAt = false, time.Time{}
	if host != "" {
		l.hostname = host
	}
	p.byKey[key] = l
	return l
}

// offer holds ip for the client until now+OfferHold, without shortening a
// bound lease it already has on that address.
func (p *pool) offer(key string, mac net.HardwareAddr, cid []byte, ip uint32, host string, now time.Time) {
	if l := p.byKey[key]; l != nil && l.ip == ip && l.state == StateBound && l.active(now) {
		if host != "" {
			l.hostname = host
		}
		return
	}
	p.assign(key, mac, cid, ip, host, StateOffered, now.Add(p.d.offerHold))
}

// grant is how a binding was decided (see leaseFor).
type grant int

const (
	grantFull      grant = iota // LeaseTime: renewal, reservation or a full-lease token
	grantProbation              // ProbationLease for a new binding
	grantConfirm                // a probation lease renewed in time: now LeaseTime
	grantReprobe                // a probation lease renewed too early: probation again
)

// leaseFor decides the lease for binding key (with mac) to ip at now
// (guard.go): LeaseTime for a renewal of the client's active full lease on
// ip, for a reserved MAC, for a probation lease renewed from a quarter of
// ProbationLease on, and when the full-lease bucket has a token (taken only
// if take); ProbationLease otherwise.
func (p *pool) leaseFor(key, mac string, ip uint32, now time.Time, take bool) (time.Duration, grant) {
	if p.d.probation == 0 {
		return p.d.leaseTime, grantFull
	}
	if r, has := p.d.reservedByMAC[mac]; has && r == ip {
		return p.d.leaseTime, grantFull
	}
	if old := p.byKey[key]; old != nil && old.ip == ip && old.state == StateBound && old.active(now) {
		switch {
		case !old.probation:
			return p.d.leaseTime, grantFull
		case now.Sub(old.boundAt) >= p.d.probation/4:
			return p.d.leaseTime, grantConfirm
		default:
			return p.d.probation, grantReprobe
		}
	}
	if (take && p.fullLeases.take(now)) || (!take && p.fullLeases.has(now)) {
		return p.d.leaseTime, grantFull
	}
	return p.d.probation, grantProbation
}

// bind makes the lease bound for the lease time leaseFor decides.
func (p *pool) bind(key string, mac net.HardwareAddr, cid []byte, ip uint32, host string, now time.Time) (*lease, grant) {
	dur, g := p.leaseFor(key, mac.String(), ip, now, true)
	boundAt := now
	if g == grantReprobe {
		boundAt = p.byKey[key].boundAt
	}
	l := p.assign(key, mac, cid, ip, host, StateBound, now.Add(dur))
	if g == grantProbation || g == grantReprobe {
		l.probation, l.boundAt = true, boundAt
	}
	return l, g
}

// release marks the client's lease on ip released; it stays the client's
// preferred address. Reports whether anything changed.
func (p *pool) release(key string, ip uint32, now time.Time) bool {
	l := p.byIP[ip]
	if l == nil || l.key != key || l.state == StateReleased {
		return false
	}
	l.state, l.expiry = StateReleased, now
	return true
}

// cancelOffer drops an outstanding offer (the client chose another server).
func (p *pool) cancelOffer(key string, now time.Time) {
	if l := p.byKey[key]; l != nil && l.state == StateOffered {
		l.state, l.expiry = StateReleased, now
	}
}

// quarantine takes ip out of service until now+QuarantineTime, removing any
// owner.
func (p *pool) quarantine(ip uint32, now time.Time) {
	p.quarantineUntil(ip, now.Add(p.d.quarantine))
}

// decline quarantines the client's address after a DECLINE. A client on
// probation (never renewed) cannot keep the address out of service beyond
// its lease end, so DECLINEs do not extend what a flood holds (guard.go).
func (p *pool) decline(ip uint32, now time.Time) {
	until := now.Add(p.d.quarantine)
	if l := p.byIP[ip]; l != nil && l.state == StateBound && l.probation && l.expiry.Before(until) {
		until = l.expiry
	}
	p.quarantineUntil(ip, until)
}

func (p *pool) quarantineUntil(ip uint32, until time.Time) {
	l := p.byIP[ip]
	if l == nil {
		l = &lease{ip: ip}
		p.byIP[ip] = l
	} else if l.key != "" {
		delete(p.byKey, l.key)
	}
	*l = lease{ip: ip, state: StateQuarantined, expiry: until}
}

// leases lists records with an owner or an active quarantine, by address.
func (p *pool) leases(now time.Time) []Lease {
	out := make([]Lease, 0, len(p.byKey))
	for _, l := range p.byIP {
		if l.key == "" && !(l.state == StateQuarantined && l.active(now)) {
			continue
		}
		st := l.state
		if st == StateBound && !l.active(now) {
			st = StateExpired
		}
		if st == StateOffered && !l.active(now) {
			continue
		}
		if st == StateQuarantined && !l.active(now) {
			continue
		}
		out = append(out, Lease{
			MAC: append(net.HardwareAddr(nil), l.mac...), ClientID: append([]byte(nil), l.clientID...),
			IP: u2a(l.ip), Hostname: l.hostname, Expiry: l.expiry, State: st,
			Probation: st == StateBound && l.probation,
		})
	}
	sortLeases(out)
	return out
}

func sortLeases(ls []Lease) {
	slices.SortFunc(ls, func(a, b Lease) int { return a.IP.Compare(b.IP) })
}
