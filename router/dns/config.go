package dns

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// Defaults.
const (
	DefaultResolvConf     = "/etc/resolv.conf"
	DefaultTimeout        = 2 * time.Second // per upstream attempt
	DefaultQueryTimeout   = 4 * time.Second // whole query, all attempts
	DefaultCacheSize      = 1024            // entries
	DefaultMaxCacheTTL    = time.Hour
	DefaultRateLimit      = 100 // queries per second per client IP
	DefaultRateBurst      = 200
	DefaultMaxTCPConns    = 64
	DefaultTCPIdleTimeout = 10 * time.Second
	DefaultMaxInflight    = 256 // concurrent upstream exchanges

	// StaticTTL is the TTL of answers from Static and RouterName.
	StaticTTL = 60 * time.Second
	// servFailTTL is how long an upstream SERVFAIL is cached.
	servFailTTL = 2 * time.Second
	// maxUpstreams bounds how many upstreams one query tries.
	maxUpstreams = 8
	// downPenalty moves an upstream that failed to the end of the order.
	downPenalty = 30 * time.Second
	// resolvCheckEvery is the minimum interval between stat calls on
	// ResolvConf.
	resolvCheckEvery = time.Second
	// ourUDPSize is the EDNS buffer size we advertise and use upstream
	// (DNS flag day 2020).
	ourUDPSize = 1232
	// maxRateClients bounds the per-client rate-limit table.
	maxRateClients = 65536
)

// Config configures the DNS redirector.
type Config struct {
	// Upstreams are resolvers as "host:port" (a bare address means port 53).
	// Tried in order with failover. If empty, the nameservers of ResolvConf
	// are used.
	Upstreams []string
	// ResolvConf is read when Upstreams is empty; default DefaultResolvConf.
	// All nameserver lines (IPv4 and IPv6, loopback ones like 127.0.0.53
	// included) are used, and the file is re-read when its mtime or size
	// changes (checked at most once a second).
	ResolvConf string
	// Timeout bounds one upstream attempt; default DefaultTimeout (2 s).
	Timeout time.Duration
	// QueryTimeout bounds all attempts for one query (default 4 s, below
	// the 5 s glibc clients wait), so a client gets SERVFAIL, not silence,
	// even when several upstreams are down. At least Timeout.
	QueryTimeout time.Duration
	// Static answers A, AAAA and the matching PTR queries locally (name →
	// addresses). Other types for these names get an empty NOERROR.
	Static map[string][]netip.Addr
	// RouterName, if set, resolves to RouterAddr and, when set,
	// RouterAddr6 (and back), like Static.
	RouterName  string
	RouterAddr  netip.Addr
	RouterAddr6 netip.Addr
	// CacheSize is the number of cached answers; default DefaultCacheSize,
	// negative disables the cache. TTLs are respected (capped at
	// MaxCacheTTL, default 1 h); negative answers use the SOA minimum
	// (RFC 2308); upstream SERVFAIL is cached for 2 s, our own never.
	CacheSize   int
	MaxCacheTTL time.Duration
	// RateLimit is the sustained queries/s allowed per client IP (default
	// DefaultRateLimit, negative disables) with bursts of RateBurst
	// (default DefaultRateBurst). Excess queries get REFUSED.
	RateLimit float64
	RateBurst int
	// MaxTCPConns caps concurrent TCP clients (default 64); TCPIdleTimeout
	// closes idle ones (default 10 s).
	MaxTCPConns    int
	TCPIdleTimeout time.Duration
	// MaxInflight caps concurrent upstream exchanges for UDP clients
	// (default 256); beyond it queries get SERVFAIL.
	MaxInflight int
	// Logger receives log lines; nil discards.
	Logger *slog.Logger
	// Now returns the current time (tests). Default time.Now.
	Now func() time.Time

	// upstream replaces the network exchange (tests).
	upstream exchanger
}

type hostTable struct {
	fwd map[string][]netip.Addr // canonical name → addresses
	rev map[string][]string     // reverse name → canonical names
}

func (c *Config) normalize() (Config, *hostTable, error) {
	n := *c
	if n.ResolvConf == "" {
		n.ResolvConf = DefaultResolvConf
	}
	if n.Timeout <= 0 {
		n.Timeout = DefaultTimeout
	}
	if n.QueryTimeout <= 0 {
		n.QueryTimeout = DefaultQueryTimeout
	}
	n.QueryTimeout = max(n.QueryTimeout, n.Timeout)
	if n.CacheSize == 0 {
		n.CacheSize = DefaultCacheSize
	}
	if n.MaxCacheTTL <= 0 {
		n.MaxCacheTTL = DefaultMaxCacheTTL
	}
	if n.RateLimit == 0 {
		n.RateLimit = DefaultRateLimit
	}
	if n.RateBurst <= 0 {
		n.RateBurst = DefaultRateBurst
	}
	if n.MaxTCPConns <= 0 {
		n.MaxTCPConns = DefaultMaxTCPConns
	}
	if n.TCPIdleTimeout <= 0 {
		n.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if n.MaxInflight <= 0 {
		n.MaxInflight = DefaultMaxInflight
	}
	if n.Logger == nil {
		n.Logger = slog.New(slog.DiscardHandler)
	}
	if n.Now == nil {
		n.Now = time.Now
	}
	n.Upstreams = nil
	for _, u := range c.Upstreams {
		hp, err := hostPort(u)
		if err != nil {
			return n, nil, err
		}
		n.Upstreams = append(n.Upstreams, hp)
	}
	ht := &hostTable{fwd: map[string][]netip.Addr{}, rev: map[string][]string{}}
	add := func(name string, addrs []netip.Addr) error {
		if _, ok := mdns.IsDomainName(name); !ok || name == "" {
			return fmt.Errorf("dns: static name %q is not a domain name", name)
		}
		cn := mdns.CanonicalName(name)
		for _, a := range addrs {
			if !a.IsValid() {
				return fmt.Errorf("dns: static name %q has an invalid address", name)
			}
			a = a.Unmap()
			ht.fwd[cn] = append(ht.fwd[cn], a)
			r, err := mdns.ReverseAddr(a.String())
			if err != nil {
				return fmt.Errorf("dns: static %q: %w", name, err)
			}
			ht.rev[r] = append(ht.rev[r], cn)
		}
		if len(addrs) == 0 {
			ht.fwd[cn] = ht.fwd[cn][:0:0]
		}
		return nil
	}
	for name, addrs := range c.Static {
		if err := add(name, addrs); err != nil {
			return n, nil, err
		}
	}
	if c.RouterName != "" {
		if !c.RouterAddr.IsValid() {
			return n, nil, fmt.Errorf("dns: RouterName %q without RouterAddr", c.RouterName)
		}
		addrs := []netip.Addr{c.RouterAddr}
		if c.RouterAddr6.IsValid() {
			addrs = append(addrs, c.RouterAddr6)
		}
		if err := add(c.RouterName, addrs); err != nil {
			return n, nil, err
		}
	}
	return n, ht, nil
}

// hostPort normalises an upstream to host:port (port 53 if absent).
func hostPort(s string) (string, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return net.JoinHostPort(a.String(), "53"), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return "", fmt.Errorf("dns: upstream %q is not host:port", s)
	}
	return net.JoinHostPort(host, port), nil
}
