package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"
)

// Config configures a Router. The zero value is usable: every zero field
// takes the default given in its comment.
type Config struct {
	// MaxSessions caps the flows (TCP, UDP and ICMP together, including
	// TCP flows still dialing) across all clients. Default 4096.
	// At the cap a new flow first evicts the least recently active UDP or
	// ICMP flow that has been idle for at least 1 s; if there is none the
	// new flow is refused (TCP: RST; UDP and ICMP: ICMP administratively
	// prohibited) and counted as RefusedSessionLimit. TCP flows are never
	// evicted. Each flow holds one host file descriptor: to run 65536
	// sessions the process's open-file limit must allow it (New warns when
	// it does not), and netstack.Config.MaxInFlightSYN should be at least
	// MaxInFlightDials.
	MaxSessions int
	// MaxSessionsPerClient caps the flows of one client (source address).
	// Default 1024 (or MaxSessions when that is smaller). At the cap the
	// client's own least recently active idle UDP/ICMP flow is evicted as
	// above, otherwise the flow is refused (RefusedClientLimit).
	MaxSessionsPerClient int
	// MaxInFlightDials caps the TCP dials to the host that may be pending
	// at once, so that black-holed destinations cannot hold every slot.
	// Over the cap a SYN is answered with an RST immediately
	// (RefusedDialLimit). Default 1024.
	MaxInFlightDials int
	// MaxInFlightDialsPerClient caps one client's pending TCP dials, so that
	// a single client dialing black holes cannot take every dial slot.
	// Over the cap: RST at once (RefusedClientDialLimit). Default
	// MaxInFlightDials/4 (at least 1).
	MaxInFlightDialsPerClient int

	// DialTimeout bounds a TCP dial to the destination. Default 10 s.
	DialTimeout time.Duration
	// TCPIdleTimeout closes a TCP flow with no data in either direction for
	// this long. Default 30 min.
	TCPIdleTimeout time.Duration
	// TCPKeepAlive is the idle time before the host-side socket starts TCP
	// keepalive probes (interval 15 s, 4 probes). Default 60 s; negative
	// disables keepalive.
	TCPKeepAlive time.Duration
	// UDPIdleTimeout closes a UDP flow with no datagram in either direction
	// for this long. Default 60 s.
	UDPIdleTimeout time.Duration
	// DNSIdleTimeout replaces UDPIdleTimeout for flows to port 53.
	// Default 10 s.
	DNSIdleTimeout time.Duration
	// ICMPIdleTimeout closes an echo flow (one client, destination and echo
	// identifier) after this long without a request or reply. Default 30 s.
	ICMPIdleTimeout time.Duration

	// Rules is the ACL, evaluated after DefaultDenyRules (unless
	// NoDefaultDeny); the first matching rule decides and a flow matching
	// none is allowed. Denied flows are answered with ICMP destination
	// unreachable, "administratively prohibited" (code 13).
	Rules []Rule
	// NoDefaultDeny drops DefaultDenyRules (host loopback, link-local,
	// multicast, ...) from the front of the ACL.
	NoDefaultDeny bool

	// NATLog writes one Info line per flow opened and closed (protocol,
	// client, destination, bytes, duration, close reason), in the spirit of
	// SoftEther's NAT log (src/Cedar/Virtual.c: NLog(v, "LH_NAT_TCP_CREATED",
	// id, client ip/port, dest ip/port) and the matching deleted lines).
	NATLog bool
	// Logger receives the NAT log, rate-limited refusal lines and errors.
	// Nil discards.
	Logger *slog.Logger

	// Dial opens host sockets: "tcp" with a host:port for TCP flows (the
	// context carries DialTimeout) and "udp" for UDP flows (the returned
	// conn must be connected to the destination). Nil uses a net.Dialer
	// with keepalive per TCPKeepAlive. Tests use it to inject failures.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// Forwards are inbound port forwards that New starts (see PortForward
	// and AddForward); New fails if one cannot listen. More can be added
	// and removed at run time.
	Forwards []PortForward
	// LoopbackAlias, if valid, is a virtual address that leads to the
	// router host's own 127.0.0.1 (zero: off, the default). SECURITY: it
	// exposes every service bound to the host's loopback to all hub
	// clients; see alias.go. The ACL sees the alias address, and the
	// default deny of 127.0.0.0/8 still holds for every other address.
	// Inside the router's subnet the stack answers ARP for it (keep it out
	// of the DHCP pool); outside, clients reach it through the router.
	LoopbackAlias netip.Addr
}

// Defaults.
const (
	DefaultMaxSessions          = 4096
	DefaultMaxSessionsPerClient = 1024
	DefaultMaxInFlightDials     = 1024
	DefaultDialTimeout          = 10 * time.Second
	DefaultTCPIdleTimeout       = 1800 * time.Second
	DefaultTCPKeepAlive         = 60 * time.Second
	DefaultUDPIdleTimeout       = 60 * time.Second
	DefaultDNSIdleTimeout       = 10 * time.Second
	DefaultICMPIdleTimeout      = 30 * time.Second
)

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxSessionsPerClient == 0 {
		c.MaxSessionsPerClient = min(DefaultMaxSessionsPerClient, c.MaxSessions)
	}
	if c.MaxInFlightDials == 0 {
		c.MaxInFlightDials = DefaultMaxInFlightDials
	}
	if c.MaxInFlightDialsPerClient == 0 {
		c.MaxInFlightDialsPerClient = max(1, c.MaxInFlightDials/4)
	}
	def(&c.DialTimeout, DefaultDialTimeout)
	def(&c.TCPIdleTimeout, DefaultTCPIdleTimeout)
	def(&c.TCPKeepAlive, DefaultTCPKeepAlive)
	def(&c.UDPIdleTimeout, DefaultUDPIdleTimeout)
	def(&c.DNSIdleTimeout, DefaultDNSIdleTimeout)
	def(&c.ICMPIdleTimeout, DefaultICMPIdleTimeout)
	return c
}

// validate checks a Config that has been through withDefaults.
func (c Config) validate() error {
	var errs []error
	if c.MaxSessions < 0 {
		errs = append(errs, fmt.Errorf("MaxSessions %d is negative", c.MaxSessions))
	}
	if c.MaxSessionsPerClient < 0 {
		errs = append(errs, fmt.Errorf("MaxSessionsPerClient %d is negative", c.MaxSessionsPerClient))
	}
	if c.MaxInFlightDials < 0 {
		errs = append(errs, fmt.Errorf("MaxInFlightDials %d is negative", c.MaxInFlightDials))
	}
	if c.MaxInFlightDialsPerClient < 0 {
		errs = append(errs, fmt.Errorf("MaxInFlightDialsPerClient %d is negative", c.MaxInFlightDialsPerClient))
	}
	for name, d := range map[string]time.Duration{
		"DialTimeout": c.DialTimeout, "TCPIdleTimeout": c.TCPIdleTimeout,
		"UDPIdleTimeout": c.UDPIdleTimeout, "DNSIdleTimeout": c.DNSIdleTimeout,
		"ICMPIdleTimeout": c.ICMPIdleTimeout,
	} {
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", name, d))
		}
	}
	if err := validateLoopbackAlias(c.LoopbackAlias); err != nil {
		errs = append(errs, err)
	}
	for i, pf := range c.Forwards {
		if err := pf.validate(); err != nil {
			errs = append(errs, fmt.Errorf("Forwards[%d] %q: %w", i, pf, err))
		}
	}
	for i, r := range c.Rules {
		if err := r.validate(); err != nil {
			errs = append(errs, fmt.Errorf("Rules[%d] %q: %w", i, r, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("router: invalid config: %w", err)
	}
	return nil
}

func (r Rule) validate() error {
	if r.Action != Allow && r.Action != Deny {
		return fmt.Errorf("unknown action %d", r.Action)
	}
	if r.Proto > ProtoICMP {
		return fmt.Errorf("unknown protocol %d", r.Proto)
	}
	if r.PortLo != 0 || r.PortHi != 0 {
		if r.PortLo == 0 || r.PortHi < r.PortLo {
			return fmt.Errorf("bad port range %d-%d", r.PortLo, r.PortHi)
		}
		if r.Proto == ProtoICMP {
			return errors.New("icmp has no ports")
		}
	}
	return nil
}
