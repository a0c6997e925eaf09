package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/acrouter/acrouter/router"
	"github.com/acrouter/acrouter/vpnlink/hubdial"
)

// config is everything acrouter can be told, from a TOML file (--config) and
// flags; flags override the file. Every field has a TOML key (the struct tags)
// and a flag (registerFlags).
type config struct {
	Hub    hubConfig    `toml:"hub"`
	Router routerConfig `toml:"router"`
	DHCP   dhcpConfig   `toml:"dhcp"`
	DNS    dnsConfig    `toml:"dns"`
	IPv6   ipv6Config   `toml:"ipv6"`
	Status statusConfig `toml:"status"`
	Log    logConfig    `toml:"log"`

	StateDir string `toml:"state_dir"`
}

type hubConfig struct {
	Server             string   `toml:"server"`
	Hub                string   `toml:"hub"`
	User               string   `toml:"user"`
	PasswordFile       string   `toml:"password_file"`
	Auth               string   `toml:"auth"` // "password" (SHA-0 hashed) or "plain" (RADIUS/NT users)
	ServerCertSHA256   string   `toml:"server_cert_sha256"`
	InsecureSkipVerify bool     `toml:"insecure_skip_verify"`
	QueueFrames        int      `toml:"queue_frames"`
	MaxBackoff         duration `toml:"max_backoff"`

	// Reaching the server through a proxy or an SSH server (hubdial).
	Proxy                string `toml:"proxy"`
	ProxyPasswordFile    string `toml:"proxy_password_file"`
	SSHKeyFile           string `toml:"ssh_key_file"`
	SSHKeyPassphraseFile string `toml:"ssh_key_passphrase_file"`
	SSHKnownHosts        string `toml:"ssh_known_hosts"`
}

type routerConfig struct {
	IP                   string   `toml:"ip"`  // router address with prefix length, e.g. 192.168.30.1/24
	MAC                  string   `toml:"mac"` // empty: generated once and kept in the state directory
	MTU                  int      `toml:"mtu"`
	MaxSessions          int      `toml:"max_sessions"`
	MaxSessionsPerClient int      `toml:"max_sessions_per_client"`
	MaxInFlightDials     int      `toml:"max_inflight_dials"`
	DialTimeout          duration `toml:"dial_timeout"`
	TCPIdleTimeout       duration `toml:"tcp_idle_timeout"`
	UDPIdleTimeout       duration `toml:"udp_idle_timeout"`
	DNSIdleTimeout       duration `toml:"dns_idle_timeout"`
	Rules                []string `toml:"rules"`
	NoDefaultDeny        bool     `toml:"no_default_deny"`
	Forwards             []string `toml:"forwards"`       // "tcp 0.0.0.0:8022 -> 192.168.30.50:22"
	LoopbackAlias        string   `toml:"loopback_alias"` // off when empty
	AdaptiveProcs        bool     `toml:"adaptive_procs"`
	TCPRack              bool     `toml:"tcp_rack"`
	MemoryTrim           bool     `toml:"memory_trim"`
}

type dhcpConfig struct {
	Enabled      bool     `toml:"enabled"`
	PoolStart    string   `toml:"pool_start"`
	PoolEnd      string   `toml:"pool_end"`
	LeaseTime    duration `toml:"lease_time"`
	NoGateway    bool     `toml:"no_gateway"`
	DNS          []string `toml:"dns"`
	Domain       string   `toml:"domain"`
	Search       []string `toml:"search"`
	MTU          int      `toml:"mtu"`
	Routes       []string `toml:"routes"`       // "10.0.0.0/8 via 192.168.30.1"
	Reservations []string `toml:"reservations"` // "02:00:00:00:00:01=192.168.30.20"

	// Starvation defence (router/dhcp guard.go).
	NewClientRate       float64  `toml:"new_client_rate"`       // new clients per second; 0: derived from the pool; -1: no cap
	NewClientBurst      int      `toml:"new_client_burst"`      // 0: derived from the pool
	ProbationLease      duration `toml:"probation_lease"`       // 0: no probation
	MaxBroadcastReplies float64  `toml:"max_broadcast_replies"` // per second; 0: no cap
	OfferHold           duration `toml:"offer_hold"`
}

type dnsConfig struct {
	Enabled    bool     `toml:"enabled"`
	Upstreams  []string `toml:"upstreams"`
	ResolvConf string   `toml:"resolv_conf"`
	Hosts      []string `toml:"hosts"` // "name=addr[,addr…]"
	RouterName string   `toml:"router_name"`
	Timeout    duration `toml:"timeout"`
	CacheSize  int      `toml:"cache_size"`
	RateLimit  int      `toml:"rate_limit"` // queries per second per client
}

type ipv6Config struct {
	Enabled         bool     `toml:"enabled"`
	Prefix          string   `toml:"prefix"`        // router address + /64; empty: a ULA derived from the MAC
	DefaultRoute    string   `toml:"default_route"` // auto, on, off
	DHCPv6          string   `toml:"dhcpv6"`        // off, stateless, stateful
	DHCPv6LeaseTime duration `toml:"dhcpv6_lease_time"`
}

type statusConfig struct {
	Listen    string `toml:"listen"` // empty: no status API
	TokenFile string `toml:"token_file"`
	Pprof     bool   `toml:"pprof"` // Go's profiler under /debug/pprof/
}

type logConfig struct {
	Level  string `toml:"level"`  // debug, info, warn, error
	Format string `toml:"format"` // text or json
	NAT    bool   `toml:"nat"`    // log NAT flow open/close
}

// duration is a time.Duration written as "10s", "30m" in TOML and flags.
type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (use e.g. 10s, 30m, 2h)", b)
	}
	d.Duration = v
	return nil
}

func (d duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func defaultConfig() config {
	return config{
		Hub: hubConfig{
			Auth:        "password",
			QueueFrames: 1024,
			MaxBackoff:  duration{10 * time.Second},
		},
		Router: routerConfig{
			// SecureNAT's defaults (NiSetDefaultVhOption, src/Cedar/Nat.c), so
			// existing SoftEther setups feel at home.
			IP:                   "192.168.30.1/24",
			MTU:                  1500,
			MaxSessions:          4096,
			MaxSessionsPerClient: 1024,
			MaxInFlightDials:     512,
			DialTimeout:          duration{10 * time.Second},
			TCPIdleTimeout:       duration{1800 * time.Second},
			UDPIdleTimeout:       duration{60 * time.Second},
			DNSIdleTimeout:       duration{10 * time.Second},
			AdaptiveProcs:        true,
			MemoryTrim:           true,
		},
		DHCP: dhcpConfig{
			Enabled:             true,
			LeaseTime:           duration{7200 * time.Second},
			ProbationLease:      duration{90 * time.Second},
			MaxBroadcastReplies: 10,
			OfferHold:           duration{30 * time.Second},
		},
		DNS: dnsConfig{
			Enabled:    true,
			ResolvConf: "/etc/resolv.conf",
			RouterName: "acrouter",
			Timeout:    duration{2 * time.Second},
			CacheSize:  1024,
			RateLimit:  100,
		},
		IPv6: ipv6Config{
			Enabled:         true,
			DefaultRoute:    "auto",
			DHCPv6:          "stateless",
			DHCPv6LeaseTime: duration{time.Hour},
		},
		Status: statusConfig{Listen: "127.0.0.1:8765"},
		Log:    logConfig{Level: "info", Format: "text", NAT: true},
	}
}

// loadConfigFile decodes a TOML file over cfg. Unknown keys are errors, so a
// typo never silently does nothing.
func loadConfigFile(path string, cfg *config) error {
	md, err := toml.DecodeFile(path, cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return fmt.Errorf("config %s: line %d: key %s: %s", path, pe.Position.Line, pe.LastKey, pe.Message)
			}
			return fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return fmt.Errorf("config %s: unknown key(s): %s", path, strings.Join(keys, ", "))
	}
	return nil
}

// flagDoc records, for --help, which config key a flag sets.
type flagDoc struct{ flag, key string }

// registerFlags binds a flag to every setting. The flags write straight into
// cfg, so parsing them after the file was loaded makes flags override it.
func registerFlags(fs *flag.FlagSet, cfg *config) []flagDoc {
	var docs []flagDoc
	str := func(p *string, name, key, usage string) {
		fs.StringVar(p, name, *p, usage)
		docs = append(docs, flagDoc{name, key})
	}
	num := func(p *int, name, key, usage string) {
		fs.IntVar(p, name, *p, usage)
		docs = append(docs, flagDoc{name, key})
	}
	boolean := func(p *bool, name, key, usage string) {
		fs.BoolVar(p, name, *p, usage)
		docs = append(docs, flagDoc{name, key})
	}
	dur := func(p *duration, name, key, usage string) {
		fs.Var(p, name, usage)
		docs = append(docs, flagDoc{name, key})
	}
	flt := func(p *float64, name, key, usage string) {
		fs.Float64Var(p, name, *p, usage)
		docs = append(docs, flagDoc{name, key})
	}
	list := func(p *[]string, name, key, usage string) {
		fs.Var((*listFlag)(p), name, usage+" (repeatable)")
		docs = append(docs, flagDoc{name, key})
	}

	str(&cfg.StateDir, "state-dir", "state_dir", "directory for the MAC address, known hub certificates and DHCP leases (default $XDG_STATE_HOME/acrouter)")

	h := &cfg.Hub
	str(&h.Server, "server", "hub.server", "SoftEther VPN Server address `host:port`")
	str(&h.Hub, "hub", "hub.hub", "virtual hub name")
	str(&h.User, "user", "hub.user", "hub user name (the user must be allowed bridge or routing mode)")
	str(&h.PasswordFile, "password-file", "hub.password_file", "file holding the hub password (not world-readable); or set ACROUTER_PASSWORD")
	str(&h.Auth, "auth", "hub.auth", "authentication: password (hashed, local hub users) or plain (RADIUS/NT users)")
	str(&h.ServerCertSHA256, "server-cert-sha256", "hub.server_cert_sha256", "pin the server certificate by its SHA-256 fingerprint (hex); default: trust on first use")
	boolean(&h.InsecureSkipVerify, "insecure-skip-verify", "hub.insecure_skip_verify", "do not verify the server certificate at all (tests only)")
	num(&h.QueueFrames, "queue-frames", "hub.queue_frames", "frames queued while the hub link is down (tail-drop beyond)")
	dur(&h.MaxBackoff, "max-backoff", "hub.max_backoff", "longest wait between reconnect attempts")
	str(&h.Proxy, "proxy", "hub.proxy", "reach the server through `URL`: http://[user@]host:port (CONNECT), socks5://[user@]host[:1080], ssh://user@host[:22] (port forwarding)")
	str(&h.ProxyPasswordFile, "proxy-password-file", "hub.proxy_password_file", "file holding the proxy or SSH password (or set ACROUTER_PROXY_PASSWORD)")
	str(&h.SSHKeyFile, "ssh-key", "hub.ssh_key_file", "private key for an ssh:// proxy")
	str(&h.SSHKeyPassphraseFile, "ssh-key-passphrase-file", "hub.ssh_key_passphrase_file", "file holding the passphrase of --ssh-key")
	str(&h.SSHKnownHosts, "ssh-known-hosts", "hub.ssh_known_hosts", "known_hosts file for an ssh:// proxy (default ~/.ssh/known_hosts)")

	r := &cfg.Router
	str(&r.IP, "ip", "router.ip", "router address on the hub with prefix length")
	str(&r.MAC, "mac", "router.mac", "router MAC address (default: generated once, kept in the state directory)")
	num(&r.MTU, "mtu", "router.mtu", "MTU of the virtual NIC")
	num(&r.MaxSessions, "max-sessions", "router.max_sessions", "maximum concurrent NAT sessions")
	num(&r.MaxSessionsPerClient, "max-sessions-per-client", "router.max_sessions_per_client", "maximum concurrent NAT sessions per hub client")
	num(&r.MaxInFlightDials, "max-inflight-dials", "router.max_inflight_dials", "maximum concurrent outbound TCP connection attempts")
	dur(&r.DialTimeout, "dial-timeout", "router.dial_timeout", "timeout of an outbound TCP connect")
	dur(&r.TCPIdleTimeout, "tcp-idle-timeout", "router.tcp_idle_timeout", "idle TCP flows are closed after this")
	dur(&r.UDPIdleTimeout, "udp-idle-timeout", "router.udp_idle_timeout", "idle UDP flows are closed after this")
	dur(&r.DNSIdleTimeout, "dns-idle-timeout", "router.dns_idle_timeout", "idle UDP flows to port 53 are closed after this")
	list(&r.Rules, "rule", "router.rules", "access rule, e.g. \"deny tcp to 10.0.0.0/8 port 22\"")
	boolean(&r.NoDefaultDeny, "no-default-deny", "router.no_default_deny", "drop the built-in deny rules (host loopback, link-local, metadata)")
	list(&r.Forwards, "forward", "router.forwards", "inbound port forward \"tcp|udp LISTEN_ADDR:PORT -> CLIENT_IP:PORT\", e.g. \"tcp 0.0.0.0:8022 -> 192.168.30.50:22\"")
	boolean(&r.TCPRack, "tcp-rack", "router.tcp_rack", "RACK-TLP loss detection for the router's TCP towards hub clients (off: classic duplicate-ACK/SACK recovery, which did not stall after burst losses in the lab; on: better with clients whose frames reorder)")
	boolean(&r.AdaptiveProcs, "adaptive-procs", "router.adaptive_procs", "run on one core while lightly loaded (lowest latency) and on all of them under load (ignored when GOMAXPROCS is set)")
	boolean(&r.MemoryTrim, "memory-trim", "router.memory_trim", "after a busy spell, once the router has been quiet for 2 s, collect garbage and return free memory to the OS")
	str(&r.LoopbackAlias, "loopback-alias", "router.loopback_alias", "virtual `address` that leads hub clients to this host's 127.0.0.1 (off by default; exposes host-loopback services to every hub client)")

	d := &cfg.DHCP
	boolean(&d.Enabled, "dhcp", "dhcp.enabled", "run the virtual DHCP server")
	str(&d.PoolStart, "dhcp-pool-start", "dhcp.pool_start", "first address of the pool (default .10 of the router subnet)")
	str(&d.PoolEnd, "dhcp-pool-end", "dhcp.pool_end", "last address of the pool (default .200 of the router subnet)")
	dur(&d.LeaseTime, "dhcp-lease-time", "dhcp.lease_time", "lease time")
	boolean(&d.NoGateway, "dhcp-no-gateway", "dhcp.no_gateway", "do not hand out a default gateway (use with dhcp-route for split tunnelling)")
	list(&d.DNS, "dhcp-dns", "dhcp.dns", "extra DNS server handed out after the router")
	str(&d.Domain, "dhcp-domain", "dhcp.domain", "domain name (option 15)")
	list(&d.Search, "dhcp-search", "dhcp.search", "domain search list entry (option 119)")
	num(&d.MTU, "dhcp-mtu", "dhcp.mtu", "interface MTU handed out (option 26; 0 = none)")
	list(&d.Routes, "dhcp-route", "dhcp.routes", "classless static route \"PREFIX via GATEWAY\" (options 121 and 249)")
	list(&d.Reservations, "dhcp-reserve", "dhcp.reservations", "reservation \"MAC=IP\"")
	flt(&d.NewClientRate, "dhcp-new-client-rate", "dhcp.new_client_rate", "new DHCP clients served per second (starvation defence; 0 = derived from the pool size, -1 = no cap)")
	num(&d.NewClientBurst, "dhcp-new-client-burst", "dhcp.new_client_burst", "burst of new DHCP clients (0 = pool size / 8, at least 4)")
	dur(&d.ProbationLease, "dhcp-probation-lease", "dhcp.probation_lease", "lease time of bindings beyond the full-lease budget until their first renewal (0 = no probation)")
	flt(&d.MaxBroadcastReplies, "dhcp-max-broadcast-replies", "dhcp.max_broadcast_replies", "DHCP broadcast replies per second (keeps under SoftEther's broadcast storm filter; 0 = no cap)")
	dur(&d.OfferHold, "dhcp-offer-hold", "dhcp.offer_hold", "how long an offered address stays reserved for its client")

	n := &cfg.DNS
	boolean(&n.Enabled, "dns", "dns.enabled", "run the DNS redirector on the router address")
	list(&n.Upstreams, "dns-upstream", "dns.upstreams", "upstream resolver host:port (default: the resolv.conf nameservers)")
	str(&n.ResolvConf, "dns-resolv-conf", "dns.resolv_conf", "resolv.conf to take upstream resolvers from (re-read on change)")
	list(&n.Hosts, "dns-host", "dns.hosts", "static entry \"name=addr[,addr…]\"")
	str(&n.RouterName, "dns-router-name", "dns.router_name", "name that resolves to the router itself")
	dur(&n.Timeout, "dns-timeout", "dns.timeout", "per-query upstream timeout")
	num(&n.CacheSize, "dns-cache-size", "dns.cache_size", "answers kept in the cache (0 = no cache)")
	num(&n.RateLimit, "dns-rate-limit", "dns.rate_limit", "queries per second allowed per client")

	v6 := &cfg.IPv6
	boolean(&v6.Enabled, "ipv6", "ipv6.enabled", "IPv6 on the hub: router advertisements, DHCPv6, DNS and flows to IPv6 destinations")
	str(&v6.Prefix, "ipv6-prefix", "ipv6.prefix", "router IPv6 address with its /64, e.g. fd12:3456:789a::1/64 (default: a unique local prefix derived from the router MAC)")
	str(&v6.DefaultRoute, "ipv6-default-route", "ipv6.default_route", "advertise the router as the clients' IPv6 default router: auto (when this host has an IPv6 default route), on, off")
	str(&v6.DHCPv6, "dhcpv6", "ipv6.dhcpv6", "DHCPv6 service: off, stateless (DNS only; addresses by SLAAC) or stateful (addresses from DHCPv6 too)")
	dur(&v6.DHCPv6LeaseTime, "dhcpv6-lease-time", "ipv6.dhcpv6_lease_time", "valid lifetime of stateful DHCPv6 addresses")

	s := &cfg.Status
	str(&s.Listen, "status", "status.listen", "status API and page address (empty: off); a non-loopback address needs status-token-file")
	str(&s.TokenFile, "status-token-file", "status.token_file", "file holding the bearer token of the status API")
	boolean(&s.Pprof, "pprof", "status.pprof", "serve Go's profiler (CPU, heap, goroutines, trace) under /debug/pprof/ on the status API")

	l := &cfg.Log
	str(&l.Level, "log-level", "log.level", "log level: debug, info, warn, error")
	str(&l.Format, "log-format", "log.format", "log format: text or json")
	boolean(&l.NAT, "nat-log", "log.nat", "log every NAT flow open and close")
	return docs
}

// listFlag is a repeatable string flag. The first use on the command line
// replaces the list from the config file; later uses append.
type listFlag []string

func (l *listFlag) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, "; ")
}

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func (d *duration) Set(v string) error { return d.UnmarshalText([]byte(v)) }

// parseArgs turns argv (without the program name and subcommand) into a
// config: defaults, then the --config file, then the flags.
func parseArgs(fs *flag.FlagSet, argv []string) (config, error) {
	cfg := defaultConfig()
	path, err := findConfigFlag(argv)
	if err != nil {
		return cfg, err
	}
	if path != "" {
		if err := loadConfigFile(path, &cfg); err != nil {
			return cfg, err
		}
	}
	fs.String("config", path, "TOML configuration `file`; flags override it")
	// A list flag given on the command line replaces the file's list.
	fileLists := map[string]*[]string{
		"rule": &cfg.Router.Rules, "forward": &cfg.Router.Forwards, "dhcp-dns": &cfg.DHCP.DNS, "dhcp-search": &cfg.DHCP.Search,
		"dhcp-route": &cfg.DHCP.Routes, "dhcp-reserve": &cfg.DHCP.Reservations,
		"dns-upstream": &cfg.DNS.Upstreams, "dns-host": &cfg.DNS.Hosts,
	}
	for _, a := range argv {
		name := strings.TrimLeft(strings.SplitN(a, "=", 2)[0], "-")
		if p, ok := fileLists[name]; ok && strings.HasPrefix(a, "-") {
			*p = nil
		}
	}
	registerFlags(fs, &cfg)
	if err := fs.Parse(argv); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q (the password is never taken from the command line; use --password-file or ACROUTER_PASSWORD)", fs.Arg(0))
	}
	return cfg, nil
}

// findConfigFlag pre-scans argv for --config, which must be read before the
// other flags so that they can override it.
func findConfigFlag(argv []string) (string, error) {
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if a == "--" {
			break
		}
		for _, p := range []string{"--config", "-config"} {
			if a == p {
				if i+1 >= len(argv) {
					return "", errors.New("flag needs an argument: --config")
				}
				return argv[i+1], nil
			}
			if strings.HasPrefix(a, p+"=") {
				return a[len(p)+1:], nil
			}
		}
	}
	return "", nil
}

// settings are the validated, typed values derived from config.
type settings struct {
	RouterPrefix  netip.Prefix
	RouterMAC     net.HardwareAddr // nil: from the state directory
	PoolStart     netip.Addr
	PoolEnd       netip.Addr
	DHCPDNS       []netip.Addr
	Routes        []routeSetting
	Reservations  map[string]netip.Addr
	Hosts         map[string][]netip.Addr
	LogLevel      int // slog.Level
	Forwards      []router.PortForward
	LoopbackAlias netip.Addr   // zero: off
	IPv6Prefix    netip.Prefix // zero with IPv6 on: derived from the MAC at start
}

type routeSetting struct {
	Dst     netip.Prefix
	Gateway netip.Addr
}

// badValue names the key, the value and what is expected.
func badValue(key string, value any, expected string) error {
	return fmt.Errorf("config key %s = %q: expected %s", key, fmt.Sprint(value), expected)
}

// validate checks every value and derives the typed settings. needHub is false
// for subcommands that do not talk to the hub.
func (c *config) validate(needHub bool) (settings, error) {
	var s settings
	var errs []error
	bad := func(key string, value any, expected string) { errs = append(errs, badValue(key, value, expected)) }

	if needHub {
		if c.Hub.Server == "" {
			bad("hub.server (--server)", "", "the SoftEther VPN Server as host:port")
		} else if _, port, err := net.SplitHostPort(c.Hub.Server); err != nil {
			bad("hub.server (--server)", c.Hub.Server, "host:port, e.g. vpn.example.com:443")
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			bad("hub.server (--server)", c.Hub.Server, "a port from 1 to 65535")
		}
		if c.Hub.Hub == "" {
			bad("hub.hub (--hub)", "", "the virtual hub name")
		}
		if c.Hub.User == "" {
			bad("hub.user (--user)", "", "the hub user name")
		}
	}
	switch c.Hub.Auth {
	case "password", "plain":
	default:
		bad("hub.auth (--auth)", c.Hub.Auth, "password or plain")
	}
	if c.Hub.ServerCertSHA256 != "" {
		if _, err := normalizeFingerprint(c.Hub.ServerCertSHA256); err != nil {
			bad("hub.server_cert_sha256 (--server-cert-sha256)", c.Hub.ServerCertSHA256, "64 hex digits (colons allowed)")
		}
		if c.Hub.InsecureSkipVerify {
			errs = append(errs, errors.New("config: hub.server_cert_sha256 and hub.insecure_skip_verify contradict each other; use one"))
		}
	}
	if c.Hub.Proxy != "" {
		if pc, err := hubdial.ParseProxyURL(c.Hub.Proxy); err != nil {
			bad("hub.proxy (--proxy)", redactURL(c.Hub.Proxy), "http://[user@]host:port, socks5://[user@]host[:port] or ssh://user@host[:port] ("+err.Error()+")")
		} else if pc.Password != "" {
			errs = append(errs, errors.New("config key hub.proxy: the URL contains a password, which other users can see in the process list; put it in hub.proxy_password_file (--proxy-password-file) or ACROUTER_PROXY_PASSWORD"))
		}
	}
	if c.Hub.QueueFrames < 0 || c.Hub.QueueFrames > 1<<20 {
		bad("hub.queue_frames (--queue-frames)", c.Hub.QueueFrames, "0 to 1048576")
	}
	if c.Hub.MaxBackoff.Duration < time.Second || c.Hub.MaxBackoff.Duration > time.Hour {
		bad("hub.max_backoff (--max-backoff)", c.Hub.MaxBackoff, "1s to 1h")
	}

	p, err := netip.ParsePrefix(c.Router.IP)
	switch {
	case err != nil:
		bad("router.ip (--ip)", c.Router.IP, "an IPv4 address with prefix length, e.g. 192.168.30.1/24")
	case !p.Addr().Is4():
		bad("router.ip (--ip)", c.Router.IP, "an IPv4 address (the IPv6 address is ipv6.prefix)")
	case p.Bits() < 8 || p.Bits() > 30:
		bad("router.ip (--ip)", c.Router.IP, "a prefix length from /8 to /30")
	case p.Addr() == p.Masked().Addr() || p.Addr() == lastAddr(p):
		bad("router.ip (--ip)", c.Router.IP, "a host address, not the network or broadcast address")
	default:
		s.RouterPrefix = p
	}
	if c.Router.MAC != "" {
		mac, err := net.ParseMAC(c.Router.MAC)
		if err != nil || len(mac) != 6 || mac[0]&1 == 1 {
			bad("router.mac (--mac)", c.Router.MAC, "a unicast 6-byte MAC address like 02:ac:00:00:00:01")
		} else {
			s.RouterMAC = mac
		}
	}
	intRange := func(key string, v, lo, hi int) {
		if v < lo || v > hi {
			bad(key, v, fmt.Sprintf("a whole number from %d to %d", lo, hi))
		}
	}
	intRange("router.mtu (--mtu)", c.Router.MTU, 576, 1500)
	intRange("router.max_sessions (--max-sessions)", c.Router.MaxSessions, 1, 1<<20)
	intRange("router.max_sessions_per_client (--max-sessions-per-client)", c.Router.MaxSessionsPerClient, 1, 1<<20)
	intRange("router.max_inflight_dials (--max-inflight-dials)", c.Router.MaxInFlightDials, 1, 1<<16)
	durRange := func(key string, d duration, lo, hi time.Duration) {
		if d.Duration < lo || d.Duration > hi {
			bad(key, d, fmt.Sprintf("a duration from %v to %v", lo, hi))
		}
	}
	durRange("router.dial_timeout (--dial-timeout)", c.Router.DialTimeout, 100*time.Millisecond, 5*time.Minute)
	durRange("router.tcp_idle_timeout (--tcp-idle-timeout)", c.Router.TCPIdleTimeout, time.Second, 30*24*time.Hour)
	durRange("router.udp_idle_timeout (--udp-idle-timeout)", c.Router.UDPIdleTimeout, time.Second, 24*time.Hour)
	durRange("router.dns_idle_timeout (--dns-idle-timeout)", c.Router.DNSIdleTimeout, time.Second, 24*time.Hour)

	for _, v := range c.Router.Forwards {
		pf, err := router.ParsePortForward(v)
		if err != nil {
			bad("router.forwards (--forward)", v, "\"tcp|udp LISTEN_ADDR:PORT -> CLIENT_IP:PORT\" ("+err.Error()+")")
			continue
		}
		s.Forwards = append(s.Forwards, pf)
	}
	if c.Router.LoopbackAlias != "" {
		a, err := netip.ParseAddr(c.Router.LoopbackAlias)
		switch {
		case err != nil || !a.Is4():
			bad("router.loopback_alias (--loopback-alias)", c.Router.LoopbackAlias, "an IPv4 address")
		case a.IsLoopback() || a.IsUnspecified() || a.IsMulticast():
			bad("router.loopback_alias (--loopback-alias)", c.Router.LoopbackAlias, "an ordinary unicast address that hub clients can send to, e.g. 192.168.30.2")
		case s.RouterPrefix.IsValid() && a == s.RouterPrefix.Addr():
			bad("router.loopback_alias (--loopback-alias)", c.Router.LoopbackAlias, "an address other than the router's own")
		default:
			s.LoopbackAlias = a
		}
	}

	// IPv6.
	if c.IPv6.Prefix != "" {
		p, err := netip.ParsePrefix(c.IPv6.Prefix)
		a := p.Addr()
		switch {
		case err != nil || !a.Is6() || a.Is4In6():
			bad("ipv6.prefix (--ipv6-prefix)", c.IPv6.Prefix, "an IPv6 address with prefix length, e.g. fd12:3456:789a::1/64")
		case p.Bits() != 64:
			bad("ipv6.prefix (--ipv6-prefix)", c.IPv6.Prefix, "a /64 (clients form their addresses from a 64-bit interface identifier)")
		case a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsLoopback() || a.IsUnspecified():
			bad("ipv6.prefix (--ipv6-prefix)", c.IPv6.Prefix, "a unique local (fc00::/7) or global unicast address")
		case a == p.Masked().Addr():
			bad("ipv6.prefix (--ipv6-prefix)", c.IPv6.Prefix, "a host address of the prefix such as "+p.Masked().Addr().Next().String()+", not the prefix itself")
		default:
			s.IPv6Prefix = p
		}
	}
	switch c.IPv6.DefaultRoute {
	case "auto", "on", "off":
	default:
		bad("ipv6.default_route (--ipv6-default-route)", c.IPv6.DefaultRoute, "auto, on or off")
	}
	switch c.IPv6.DHCPv6 {
	case "off", "stateless", "stateful":
	default:
		bad("ipv6.dhcpv6 (--dhcpv6)", c.IPv6.DHCPv6, "off, stateless or stateful")
	}
	durRange("ipv6.dhcpv6_lease_time (--dhcpv6-lease-time)", c.IPv6.DHCPv6LeaseTime, time.Minute, 365*24*time.Hour)

	// DHCP.
	if s.RouterPrefix.IsValid() {
		s.PoolStart, s.PoolEnd = defaultPool(s.RouterPrefix)
	}
	parseInSubnet := func(key, v string) netip.Addr {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			bad(key, v, "an IPv4 address")
			return netip.Addr{}
		}
		if s.RouterPrefix.IsValid() && !s.RouterPrefix.Masked().Contains(a) {
			bad(key, v, "an address inside the router subnet "+s.RouterPrefix.Masked().String())
			return netip.Addr{}
		}
		return a
	}
	if c.DHCP.PoolStart != "" {
		s.PoolStart = parseInSubnet("dhcp.pool_start (--dhcp-pool-start)", c.DHCP.PoolStart)
	}
	if c.DHCP.PoolEnd != "" {
		s.PoolEnd = parseInSubnet("dhcp.pool_end (--dhcp-pool-end)", c.DHCP.PoolEnd)
	}
	if s.PoolStart.IsValid() && s.PoolEnd.IsValid() && s.PoolEnd.Less(s.PoolStart) {
		bad("dhcp.pool_end (--dhcp-pool-end)", s.PoolEnd, "an address not below dhcp.pool_start "+s.PoolStart.String())
	}
	durRange("dhcp.lease_time (--dhcp-lease-time)", c.DHCP.LeaseTime, time.Minute, 365*24*time.Hour)
	if r := c.DHCP.NewClientRate; r != -1 && (r < 0 || r > 10000) {
		bad("dhcp.new_client_rate (--dhcp-new-client-rate)", r, "0 (derived from the pool), -1 (no cap) or up to 10000 per second")
	}
	intRange("dhcp.new_client_burst (--dhcp-new-client-burst)", c.DHCP.NewClientBurst, 0, 1<<20)
	if c.DHCP.ProbationLease.Duration != 0 {
		durRange("dhcp.probation_lease (--dhcp-probation-lease)", c.DHCP.ProbationLease, 30*time.Second, 24*time.Hour)
	}
	if r := c.DHCP.MaxBroadcastReplies; r < 0 || r > 100000 {
		bad("dhcp.max_broadcast_replies (--dhcp-max-broadcast-replies)", r, "0 (no cap) or up to 100000 per second")
	}
	durRange("dhcp.offer_hold (--dhcp-offer-hold)", c.DHCP.OfferHold, 5*time.Second, 10*time.Minute)
	for _, v := range c.DHCP.DNS {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			bad("dhcp.dns (--dhcp-dns)", v, "an IPv4 address")
			continue
		}
		s.DHCPDNS = append(s.DHCPDNS, a)
	}
	if c.DHCP.MTU != 0 {
		intRange("dhcp.mtu (--dhcp-mtu)", c.DHCP.MTU, 576, 1500)
	}
	for _, v := range c.DHCP.Routes {
		rt, err := parseRoute(v)
		if err != nil {
			bad("dhcp.routes (--dhcp-route)", v, "\"PREFIX via GATEWAY\", e.g. \"10.0.0.0/8 via 192.168.30.1\"")
			continue
		}
		s.Routes = append(s.Routes, rt)
	}
	s.Reservations = map[string]netip.Addr{}
	for _, v := range c.DHCP.Reservations {
		m, a, ok := strings.Cut(v, "=")
		mac, err1 := net.ParseMAC(strings.TrimSpace(m))
		ip, err2 := netip.ParseAddr(strings.TrimSpace(a))
		if !ok || err1 != nil || len(mac) != 6 || err2 != nil || !ip.Is4() {
			bad("dhcp.reservations (--dhcp-reserve)", v, "\"MAC=IP\", e.g. \"02:00:00:00:00:01=192.168.30.20\"")
			continue
		}
		if s.RouterPrefix.IsValid() && !s.RouterPrefix.Masked().Contains(ip) {
			bad("dhcp.reservations (--dhcp-reserve)", v, "an address inside the router subnet "+s.RouterPrefix.Masked().String())
			continue
		}
		s.Reservations[mac.String()] = ip
	}

	if a := s.LoopbackAlias; a.IsValid() && c.DHCP.Enabled {
		if s.PoolStart.IsValid() && s.PoolEnd.IsValid() && !a.Less(s.PoolStart) && !s.PoolEnd.Less(a) {
			bad("router.loopback_alias (--loopback-alias)", a, fmt.Sprintf("an address outside the DHCP pool %v-%v (a client would get it as its own address)", s.PoolStart, s.PoolEnd))
		}
		for mac, ip := range s.Reservations {
			if ip == a {
				bad("router.loopback_alias (--loopback-alias)", a, "an address not reserved for a client (dhcp.reservations gives it to "+mac+")")
			}
		}
	}

	// DNS.
	for _, v := range c.DNS.Upstreams {
		if _, err := netip.ParseAddrPort(v); err != nil {
			if _, err := netip.ParseAddr(v); err != nil {
				bad("dns.upstreams (--dns-upstream)", v, "an IP address with optional port, e.g. 10.0.0.53:53 or [fd00::53]:53")
			}
		}
	}
	s.Hosts = map[string][]netip.Addr{}
	for _, v := range c.DNS.Hosts {
		name, addrs, ok := strings.Cut(v, "=")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			bad("dns.hosts (--dns-host)", v, "\"name=addr[,addr…]\"")
			continue
		}
		for _, a := range strings.Split(addrs, ",") {
			ip, err := netip.ParseAddr(strings.TrimSpace(a))
			if err != nil {
				bad("dns.hosts (--dns-host)", v, "\"name=addr[,addr…]\" with IP addresses")
				break
			}
			s.Hosts[name] = append(s.Hosts[name], ip)
		}
	}
	durRange("dns.timeout (--dns-timeout)", c.DNS.Timeout, 100*time.Millisecond, time.Minute)
	intRange("dns.cache_size (--dns-cache-size)", c.DNS.CacheSize, 0, 1<<20)
	intRange("dns.rate_limit (--dns-rate-limit)", c.DNS.RateLimit, 1, 1<<20)

	// Status and logs.
	if c.Status.Listen != "" {
		host, _, err := net.SplitHostPort(c.Status.Listen)
		if err != nil {
			bad("status.listen (--status)", c.Status.Listen, "host:port, e.g. 127.0.0.1:8765")
		} else if !isLoopbackHost(host) && c.Status.TokenFile == "" {
			errs = append(errs, fmt.Errorf("config key status.listen = %q is not a loopback address: set status.token_file (--status-token-file) so that the API requires a bearer token", c.Status.Listen))
		}
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug":
		s.LogLevel = -4
	case "info", "":
		s.LogLevel = 0
	case "warn", "warning":
		s.LogLevel = 4
	case "error":
		s.LogLevel = 8
	default:
		bad("log.level (--log-level)", c.Log.Level, "debug, info, warn or error")
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format (--log-format)", c.Log.Format, "text or json")
	}
	return s, errors.Join(errs...)
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// defaultPool is SecureNAT's .10–.200 (NiSetDefaultVhOption, src/Cedar/Nat.c)
// placed in the router's subnet, clipped for small subnets.
func defaultPool(p netip.Prefix) (netip.Addr, netip.Addr) {
	base := p.Masked().Addr().As4()
	size := uint32(1) << (32 - p.Bits())
	lo, hi := uint32(10), uint32(200)
	if size <= 256 && hi > size-2 {
		hi = size - 2
	}
	if lo > hi {
		lo = 1
	}
	b := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	return u32addr(b + lo), u32addr(b + hi)
}

func u32addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	return u32addr(v | (uint32(1)<<(32-p.Bits()) - 1))
}

func parseRoute(v string) (routeSetting, error) {
	f := strings.Fields(v)
	if len(f) != 3 || f[1] != "via" {
		return routeSetting{}, errors.New("want PREFIX via GATEWAY")
	}
	p, err := netip.ParsePrefix(f[0])
	if err != nil || !p.Addr().Is4() {
		return routeSetting{}, errors.New("bad prefix")
	}
	g, err := netip.ParseAddr(f[2])
	if err != nil || !g.Is4() {
		return routeSetting{}, errors.New("bad gateway")
	}
	return routeSetting{Dst: p.Masked(), Gateway: g}, nil
}

// normalizeFingerprint accepts hex with or without colons and returns lower
// case hex of 32 bytes.
func normalizeFingerprint(v string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(v), ":", ""))
	if len(h) != 64 {
		return "", errors.New("not 64 hex digits")
	}
	for _, c := range h {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return "", errors.New("not hex")
		}
	}
	return h, nil
}

// defaultStateDir is $XDG_STATE_HOME/acrouter, else ~/.local/state/acrouter.
func defaultStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "acrouter"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" || home == "/" {
		return "", errors.New("no state directory: set --state-dir (no home directory to default to)")
	}
	return filepath.Join(home, ".local", "state", "acrouter"), nil
}

// readSecretFile reads a password or token file and refuses one that other
// users can read.
func readSecretFile(key, path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: %s is not a regular file", key, path)
	}
	if st.Mode().Perm()&0o004 != 0 {
		return "", fmt.Errorf("%s: %s is readable by every user (mode %04o); run: chmod 600 %s", key, path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return "", fmt.Errorf("%s: %s is empty", key, path)
	}
	return v, nil
}

// hubPassword takes the password from the file, else ACROUTER_PASSWORD.
func (c *config) hubPassword() (string, error) {
	if c.Hub.PasswordFile != "" {
		return readSecretFile("hub.password_file (--password-file)", c.Hub.PasswordFile)
	}
	if v, ok := os.LookupEnv("ACROUTER_PASSWORD"); ok {
		return v, nil
	}
	return "", errors.New("no hub password: set --password-file (hub.password_file) or the ACROUTER_PASSWORD environment variable")
}

// hubDialer returns how to reach the server: direct, or through the proxy or
// SSH server of hub.proxy.
func (c *config) hubDialer(log *slog.Logger) (hubdial.Dialer, error) {
	proxy := c.Hub.Proxy
	if proxy == "" {
		proxy = "direct"
	}
	pc, err := hubdial.ParseProxyURL(proxy)
	if err != nil {
		return nil, fmt.Errorf("hub.proxy (--proxy): %w", err)
	}
	if c.Hub.ProxyPasswordFile != "" {
		if pc.Password, err = readSecretFile("hub.proxy_password_file (--proxy-password-file)", c.Hub.ProxyPasswordFile); err != nil {
			return nil, err
		}
	} else if v, ok := os.LookupEnv("ACROUTER_PROXY_PASSWORD"); ok && c.Hub.Proxy != "" {
		pc.Password = v
	}
	pc.KeyFile, pc.KeyPassphraseFile, pc.KnownHostsFile = c.Hub.SSHKeyFile, c.Hub.SSHKeyPassphraseFile, c.Hub.SSHKnownHosts
	d, err := hubdial.New(pc, log.With("component", "hubdial"))
	if err != nil {
		return nil, fmt.Errorf("hub.proxy (--proxy): %w", err)
	}
	return d, nil
}

// redactURL hides the password of a URL's user info, for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		if i, j := strings.Index(s, "://"), strings.LastIndex(s, "@"); i >= 0 && j > i {
			return s[:i+3] + "***" + s[j:]
		}
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "***")
	}
	return u.String()
}
