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
}

func newPool(d *derived) *pool {
	return &pool{d: d, byIP: map[uint32]*lease{}, byKey: map[string]*lease{}, next: d.poolStart}
}

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
	}
	l := p.byIP[ip]
	if l == nil {
		l = &lease{ip: ip}
		p.byIP[ip] = l
	} else if l.key != key && l.key != "" {
		delete(p.byKey, l.key)
	}
	l.key, l.mac, l.clientID, l.state, l.expiry = key, mac, cid, state, expiry
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

// bind makes the lease bound until now+LeaseTime.
func (p *pool) bind(key string, mac net.HardwareAddr, cid []byte, ip uint32, host string, now time.Time) *lease {
	return p.assign(key, mac, cid, ip, host, StateBound, now.Add(p.d.leaseTime))
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
	l := p.byIP[ip]
	if l == nil {
		l = &lease{ip: ip}
		p.byIP[ip] = l
	} else if l.key != "" {
		delete(p.byKey, l.key)
	}
	*l = lease{ip: ip, state: StateQuarantined, expiry: now.Add(p.d.quarantine)}
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
		})
	}
	sortLeases(out)
	return out
}

func sortLeases(ls []Lease) {
	slices.SortFunc(ls, func(a, b Lease) int { return a.IP.Compare(b.IP) })
}
