package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Defaults. The pool, lease time, gateway and DNS defaults follow SecureNAT
// (src/Cedar/Nat.c NiSetDefaultVhOption: pool 192.168.30.10-192.168.30.200,
// lease 7200 s, gateway and DNS = the virtual host address).
const (
	DefaultLeaseTime      = 7200 * time.Second
	DefaultOfferHold      = 30 * time.Second
	DefaultProbationLease = 90 * time.Second
	// DefaultMaxBroadcastReplies keeps DHCP broadcasts under SoftEther's
	// broadcast storm threshold (guard.go).
	DefaultMaxBroadcastReplies = 10
	DefaultQuarantineTime      = 10 * time.Minute
	DefaultProbeTimeout        = 1 * time.Second

	// MaxPoolSize bounds memory: at most one lease record per pool address.
	MaxPoolSize = 1 << 20
	// MaxRoutes is SecureNAT's limit on pushed classless routes
	// (src/Mayaqua/TcpIp.h MAX_DHCP_CLASSLESS_ROUTE_ENTRIES).
	MaxRoutes = 64
	// maxProbes bounds concurrent conflict probes (and their goroutines).
	maxProbes = 16
	// maxProbeCandidates bounds how many in-use addresses one DISCOVER skips.
	maxProbeCandidates = 4
)

// Route is one classless static route pushed with options 121 and 249.
type Route struct {
	Dst netip.Prefix // IPv4 destination network
	// Gateway is the next hop. The zero netip.Addr means Config.Gateway;
	// 0.0.0.0 means "on-link" (RFC 3442 router address 0).
	Gateway netip.Addr
}

// Config configures the DHCP server. Only ServerIP and Subnet are required.
type Config struct {
	// ServerIP is the router address on the segment (e.g. 192.168.30.1).
	// It is the server identifier (option 54) and never leased.
	ServerIP netip.Addr
	// Subnet is the segment's prefix (e.g. 192.168.30.0/24); sent as option 1.
	Subnet netip.Prefix
	// PoolStart and PoolEnd bound the dynamic pool (inclusive). Defaults:
	// for a /24, .10 to .200 like SecureNAT; for a larger subnet, base+10
	// to the last address before broadcast; for a smaller one, all host
	// addresses. ServerIP, Gateway, reserved, network and broadcast
	// addresses are skipped. At most MaxPoolSize addresses.
	PoolStart, PoolEnd netip.Addr
	// Gateway is sent as option 3. Default: ServerIP.
	Gateway netip.Addr
	// NoGateway omits option 3 and the default route in option 121/249.
	NoGateway bool
	// DNS lists extra resolvers sent in option 6 after ServerIP (duplicates
	// dropped). Set NoRouterDNS to send only these.
	DNS         []netip.Addr
	NoRouterDNS bool
	// Domain is option 15 (omitted if empty).
	Domain string
	// SearchList is option 119 (omitted if empty).
	SearchList []string
	// MTU is option 26; 0 omits it (SecureNAT sends none). Range 68..65535.
	MTU int
	// LeaseTime is option 51. Default DefaultLeaseTime (7200 s). T1 (58)
	// is half of it, T2 (59) seven eighths.
	LeaseTime time.Duration
	// Routes are sent as options 121 and 249 (RFC 3442 encoding). Unless
	// NoGateway, a default route via Gateway is added, because clients
	// ignore option 3 when option 121 is present (RFC 3442 §4).
	// At most MaxRoutes.
	Routes []Route
	// Reservations maps a MAC address (any form net.ParseMAC accepts) to
	// a fixed address inside Subnet (it may lie outside the pool). A reserved
	// address is never given to another client.
	Reservations map[string]netip.Addr
	// StateFile, if set, persists bound leases as JSON (atomic temp file +
	// rename, at most once per second and on Close) and loads them in New;
	// expired leases are dropped on load.
	StateFile string
	// Probe, if set, is asked before a fresh address is offered (e.g. an
	// ARP probe). In-use addresses are skipped and quarantined for
	// QuarantineTime. Probes run in their own goroutines, at most 16.
	Probe func(ctx context.Context, ip netip.Addr) (inUse bool, err error)
	// ProbeTimeout bounds one Probe call; a probe still unanswered then
	// (context.DeadlineExceeded) means the address is free. Default
	// DefaultProbeTimeout (1 s); clients retransmit DISCOVER after ~4 s.
	ProbeTimeout time.Duration
	// QuarantineTime is how long a DECLINEd or probed-in-use address is
	// kept out of the pool. Default DefaultQuarantineTime (10 min).
	QuarantineTime time.Duration
	// OfferHold is how long an OFFERed address stays reserved for the client
	// that was offered it. Default DefaultOfferHold (30 s): clients REQUEST
	// within a second or two of the OFFER, and a short hold bounds what a
	// DISCOVER flood can tie up (see guard.go).
	OfferHold time.Duration
	// PreProbe keeps the address the next new client would get probed in
	// advance (in the background, at start and after each offer of a
	// fresh address; trusted for 30 s), so that a new client's OFFER needs
	// no probe and goes out at once instead of after ProbeTimeout.
	PreProbe bool

	// Starvation defence (see guard.go for the design and the bound it gives).
	//
	// NewClientRate caps how many clients the server holds no record for
	// (new MACs or client identifiers) it makes an OFFER to, or binds
	// without one, per second; NewClientBurst is the bucket size. Requests
	// from new clients over the cap are dropped (clients retransmit) and
	// counted in Stats.RateLimited. Known clients, renewals and reserved
	// MACs never wait. Defaults: burst max(4, P/8) and rate
	// burst/(OfferHold+ProbationLease), at least 2 per minute, for a pool of
	// P addresses (191 addresses: burst 23, about 11.5 per minute).
	// NewClientRate < 0 disables the cap.
	NewClientRate  float64
	NewClientBurst int
	// ProbationLease is the lease time given to a binding that is not a
	// renewal once the full-lease budget is spent (NewClientBurst full
	// leases per LeaseTime). The client's first renewal, from a quarter of
	// ProbationLease on, upgrades it to LeaseTime; a client that never
	// renews loses the address when it ends. Default DefaultProbationLease
	// (90 s); < 0 disables probation (every binding gets LeaseTime).
	ProbationLease time.Duration
	// MaxBroadcastReplies caps the replies sent to the broadcast address
	// (OFFER, ACK and NAK to clients without an address) per second, with a
	// burst of one second's worth; a DISCOVER is dropped unless two fit
	// (its OFFER and the ACK). SoftEther's hub drops a session's broadcasts
	// once more than 32 per second share a source and destination (see
	// guard.go), which would silence every DHCP reply for a while. Default
	// DefaultMaxBroadcastReplies (10: at most 15 in any 500 ms); < 0
	// disables the cap (e.g. with the NoBroadcastLimiter policy).
	MaxBroadcastReplies float64
	// OnChange, if set, is called after a lease is bound, renewed, released
	// or declined (e.g. to publish host names in DNS via Leases). It runs on
	// the server goroutine without locks held and must not block.
	OnChange func()
	// Logger receives log lines; nil discards. Noisy lines are rate-limited.
	Logger *slog.Logger
	// Now returns the current time (tests). Default time.Now.
	Now func() time.Time
}

// derived is the validated, normalised configuration.
type derived struct {
	server, gateway    uint32
	netBase, bcast     uint32
	mask               net.IPMask
	poolStart, poolEnd uint32
	reservedByMAC      map[string]uint32
	reservedByIP       map[uint32]string
	dns                []net.IP
	routes             []byte // RFC 3442 encoding, shared by 121 and 249
	leaseTime          time.Duration
	offerHold          time.Duration
	probation          time.Duration // 0: off
	newRate, newBurst  float64       // new-client bucket; newRate < 0: unlimited
	poolSize           int           // addresses in PoolStart..PoolEnd
	bcastRate          float64       // broadcast replies per second; < 0: unlimited
	bcastBurst         float64
	quarantine         time.Duration
	probeTimeout       time.Duration
	hasGateway         bool
	searchList, domain []byte
	mtu                int
	now                func() time.Time
	log                *slog.Logger
}

func a4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u2a(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

func u2ip(u uint32) net.IP {
	return net.IPv4(byte(u>>24), byte(u>>16), byte(u>>8), byte(u)).To4()
}

// normMAC returns the canonical lower-case colon form of a MAC string.
func normMAC(s string) (string, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil {
		return "", err
	}
	return hw.String(), nil
}

func (c *Config) derive() (*derived, error) {
	d := &derived{now: c.Now, log: c.Logger}
	if d.now == nil {
		d.now = time.Now
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if !c.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcp: ServerIP %v is not an IPv4 address", c.ServerIP)
	}
	if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() {
		return nil, fmt.Errorf("dhcp: Subnet %v is not an IPv4 prefix", c.Subnet)
	}
	sub := c.Subnet.Masked()
	bits := sub.Bits()
	if bits > 30 || bits < 8 {
		return nil, fmt.Errorf("dhcp: Subnet %v: prefix length must be 8..30", c.Subnet)
	}
	if !sub.Contains(c.ServerIP) {
		return nil, fmt.Errorf("dhcp: ServerIP %v is outside Subnet %v", c.ServerIP, sub)
	}
	d.mask = net.CIDRMask(bits, 32)
	d.netBase = a4(sub.Addr())
	size := uint32(1) << (32 - bits)
	d.bcast = d.netBase + size - 1
	d.server = a4(c.ServerIP)
	inHost := func(u uint32) bool { return u > d.netBase && u < d.bcast }
	if !inHost(d.server) {
		return nil, fmt.Errorf("dhcp: ServerIP %v is the network or broadcast address", c.ServerIP)
	}

	// Pool.
	switch {
	case size == 256:
		d.poolStart, d.poolEnd = d.netBase+10, d.netBase+200
	case size > 256:
		d.poolStart, d.poolEnd = d.netBase+10, d.bcast-1
	default:
		d.poolStart, d.poolEnd = d.netBase+1, d.bcast-1
	}
	if c.PoolStart.IsValid() {
		if !c.PoolStart.Is4() || !inHost(a4(c.PoolStart)) {
			return nil, fmt.Errorf("dhcp: PoolStart %v is not a host address of %v", c.PoolStart, sub)
		}
		d.poolStart = a4(c.PoolStart)
	}
	if c.PoolEnd.IsValid() {
		if !c.PoolEnd.Is4() || !inHost(a4(c.PoolEnd)) {
			return nil, fmt.Errorf("dhcp: PoolEnd %v is not a host address of %v", c.PoolEnd, sub)
		}
		d.poolEnd = a4(c.PoolEnd)
	}
	if d.poolStart > d.poolEnd {
		return nil, fmt.Errorf("dhcp: pool start %v is after pool end %v", u2a(d.poolStart), u2a(d.poolEnd))
	}
	if n := uint64(d.poolEnd) - uint64(d.poolStart) + 1; n > MaxPoolSize {
		return nil, fmt.Errorf("dhcp: pool of %d addresses exceeds the limit of %d", n, MaxPoolSize)
	}

	// Gateway and DNS.
	d.hasGateway = !c.NoGateway
	d.gateway = d.server
	if c.Gateway.IsValid() {
		if !c.Gateway.Is4() || !sub.Contains(c.Gateway) {
			return nil, fmt.Errorf("dhcp: Gateway %v is not an IPv4 address in %v", c.Gateway, sub)
		}
		d.gateway = a4(c.Gateway)
	}
	seen := map[netip.Addr]bool{}
	if !c.NoRouterDNS {
		d.dns = append(d.dns, u2ip(d.server))
		seen[c.ServerIP] = true
	}
	for _, a := range c.DNS {
		if !a.Is4() {
			return nil, fmt.Errorf("dhcp: DNS server %v is not an IPv4 address", a)
		}
		if !seen[a] {
			seen[a] = true
			d.dns = append(d.dns, u2ip(a4(a)))
		}
	}

	// Timers.
	d.leaseTime = orDefault(c.LeaseTime, DefaultLeaseTime)
	if d.leaseTime < 10*time.Second || d.leaseTime > 0xfffffffe*time.Second {
		return nil, fmt.Errorf("dhcp: LeaseTime %v out of range (10s..2^32-2 s)", d.leaseTime)
	}
	d.offerHold = orDefault(c.OfferHold, DefaultOfferHold)
	d.poolSize = int(d.poolEnd - d.poolStart + 1)
	if err := d.deriveGuard(c); err != nil {
		return nil, err
	}
	d.quarantine = orDefault(c.QuarantineTime, DefaultQuarantineTime)
	d.probeTimeout = orDefault(c.ProbeTimeout, DefaultProbeTimeout)

	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return nil, fmt.Errorf("dhcp: MTU %d out of range 68..65535", c.MTU)
	}
	d.mtu = c.MTU
	if c.Domain != "" {
		if len(c.Domain) > 255 {
			return nil, errors.New("dhcp: Domain longer than 255 bytes")
		}
		d.domain = []byte(c.Domain)
	}
	if len(c.SearchList) > 0 {
		b, err := encodeSearchList(c.SearchList)
		if err != nil {
			return nil, err
		}
		d.searchList = b
	}

	// Routes.
	if len(c.Routes) > MaxRoutes {
		return nil, fmt.Errorf("dhcp: %d routes exceed the limit of %d", len(c.Routes), MaxRoutes)
	}
	if len(c.Routes) > 0 {
		rs := make([]Route, 0, len(c.Routes)+1)
		for _, r := range c.Routes {
			if !r.Dst.IsValid() || !r.Dst.Addr().Is4() {
				return nil, fmt.Errorf("dhcp: route destination %v is not an IPv4 prefix", r.Dst)
			}
			if !r.Gateway.IsValid() {
				r.Gateway = u2a(d.gateway)
			} else if !r.Gateway.Is4() {
				return nil, fmt.Errorf("dhcp: route %v gateway %v is not IPv4", r.Dst, r.Gateway)
			}
			rs = append(rs, r)
		}
		if d.hasGateway {
			rs = append(rs, Route{Dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), Gateway: u2a(d.gateway)})
		}
		d.routes = EncodeRoutes(rs)
	}

	// Reservations.
	d.reservedByMAC = make(map[string]uint32, len(c.Reservations))
	d.reservedByIP = make(map[uint32]string, len(c.Reservations))
	for m, ip := range c.Reservations {
		mac, err := normMAC(m)
		if err != nil {
			return nil, fmt.Errorf("dhcp: reservation %q: %w", m, err)
		}
		if !ip.Is4() || !inHost(a4(ip)) || a4(ip) == d.server || (d.hasGateway && a4(ip) == d.gateway) {
			return nil, fmt.Errorf("dhcp: reservation %s -> %v: not a free host address of %v", mac, ip, sub)
		}
		if other, dup := d.reservedByIP[a4(ip)]; dup {
			return nil, fmt.Errorf("dhcp: address %v reserved for both %s and %s", ip, other, mac)
		}
		if _, dup := d.reservedByMAC[mac]; dup {
			return nil, fmt.Errorf("dhcp: MAC %s reserved twice", mac)
		}
		d.reservedByMAC[mac] = a4(ip)
		d.reservedByIP[a4(ip)] = mac
	}
	return d, nil
}

func orDefault(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

// EncodeRoutes encodes routes as the value of option 121 (and 249) per
// RFC 3442 §3: for each route, the prefix length, the significant octets of
// the destination, and the 4-octet router address.
func EncodeRoutes(rs []Route) []byte {
	var b []byte
	for _, r := range rs {
		p := r.Dst.Masked()
		bits := p.Bits()
		dst := p.Addr().As4()
		gw := r.Gateway.As4()
		b = append(b, byte(bits))
		b = append(b, dst[:(bits+7)/8]...)
		b = append(b, gw[:]...)
	}
	return b
}

// encodeSearchList encodes option 119 (RFC 3397) without compression.
func encodeSearchList(names []string) ([]byte, error) {
	var b []byte
	for _, n := range names {
		n = strings.TrimSuffix(strings.TrimSpace(n), ".")
		if n == "" {
			continue
		}
		for _, l := range strings.Split(n, ".") {
			if len(l) == 0 || len(l) > 63 {
				return nil, fmt.Errorf("dhcp: search domain %q: bad label", n)
			}
			b = append(b, byte(len(l)))
			b = append(b, l...)
		}
		b = append(b, 0)
	}
	if len(b) > 1024 {
		return nil, errors.New("dhcp: search list longer than 1024 bytes")
	}
	return b, nil
}
