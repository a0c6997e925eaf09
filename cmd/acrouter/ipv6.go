package main

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/router/dhcp6"
)

// ulaFromMAC derives the router's default IPv6 address: a unique local
// prefix fdXX:XXXX:XXXX::/48 (RFC 4193 §3.1), subnet 0, host ::1. The 40-bit
// global ID is a hash of the router MAC (which the state directory keeps),
// so the prefix is random-looking, as RFC 4193 §3.2 asks, and stable across
// restarts without storing it.
func ulaFromMAC(mac net.HardwareAddr) netip.Prefix {
	h := sha256.Sum256(append([]byte("acrouter ULA global ID\x00"), mac...))
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], h[:5])
	a[15] = 1
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// dhcp6Pool is the stateful DHCPv6 pool inside the /64: <prefix>::1:0/112
// (65 536 addresses, away from SLAAC's EUI-64 and random identifiers).
func dhcp6Pool(p netip.Prefix) netip.Prefix {
	a := p.Masked().Addr().As16()
	a[13] = 1
	return netip.PrefixFrom(netip.AddrFrom16(a), 112)
}

// hostHasIPv6DefaultRoute reports whether this host has a usable IPv6
// default route (/proc/net/ipv6_route: destination ::/0, RTF_UP, not
// RTF_REJECT). It reads a file; it sends nothing.
func hostHasIPv6DefaultRoute() bool {
	f, err := os.Open("/proc/net/ipv6_route")
	if err != nil {
		return false
	}
	defer f.Close()
	return hasIPv6DefaultRoute(f)
}

func hasIPv6DefaultRoute(r io.Reader) bool {
	const rtfUp, rtfReject = 0x0001, 0x0200
	sc := bufio.NewScanner(r)
	for n := 0; sc.Scan() && n < 100000; n++ {
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[0] != strings.Repeat("0", 32) || f[1] != "00" {
			continue
		}
		flags, err := strconv.ParseUint(f[8], 16, 32)
		if err != nil || flags&rtfUp == 0 || flags&rtfReject != 0 || f[9] == "lo" {
			continue
		}
		return true
	}
	return false
}

// ipv6Settings resolves what the IPv6 side needs at start.
type ipv6Plan struct {
	prefix       netip.Prefix
	defaultRoute bool
}

func (a *app) planIPv6() ipv6Plan {
	p := a.set.IPv6Prefix
	if !p.IsValid() {
		p = ulaFromMAC(a.mac)
	}
	dr := a.cfg.IPv6.DefaultRoute == "on" || a.cfg.IPv6.DefaultRoute == "auto" && hostHasIPv6DefaultRoute()
	return ipv6Plan{prefix: p, defaultRoute: dr}
}

// raConfig builds the Router Advertisement contents.
func (a *app) raConfig(plan ipv6Plan) netstack.RAConfig {
	ra := netstack.RAConfig{
		DefaultRouter: plan.defaultRoute,
		OtherConfig:   a.cfg.IPv6.DHCPv6 != "off",
		Managed:       a.cfg.IPv6.DHCPv6 == "stateful",
		DNSSL:         a.searchDomains(),
	}
	if a.cfg.DNS.Enabled {
		ra.RDNSS = []netip.Addr{plan.prefix.Addr()}
	}
	return ra
}

// searchDomains is the DHCP domain followed by the search list, deduplicated.
func (a *app) searchDomains() []string {
	var out []string
	for _, d := range append([]string{a.cfg.DHCP.Domain}, a.cfg.DHCP.Search...) {
		d = strings.TrimSuffix(strings.TrimSpace(d), ".")
		if d != "" && !contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// startIPv6Services serves DNS on the router's IPv6 address and starts the
// DHCPv6 server, as configured. The stack already has IPv6 on.
func (a *app) startIPv6Services(plan ipv6Plan) error {
	if a.dns != nil {
		udp, err := a.stack.ListenUDP6(53)
		if err != nil {
			return fmt.Errorf("dns over IPv6: %w", err)
		}
		tcp, err := a.stack.ListenTCP6(53)
		if err != nil {
			udp.Close()
			return fmt.Errorf("dns over IPv6: %w", err)
		}
		if err := a.dns.Serve(udp, tcp); err != nil {
			return fmt.Errorf("dns over IPv6: %w", err)
		}
	}
	if a.cfg.IPv6.DHCPv6 == "off" {
		return nil
	}
	conn, err := a.stack.ListenDHCPv6()
	if err != nil {
		return fmt.Errorf("dhcpv6: %w", err)
	}
	c := dhcp6.Config{
		ServerMAC: a.mac,
		Domains:   a.searchDomains(),
		LeaseTime: a.cfg.IPv6.DHCPv6LeaseTime.Duration,
		Logger:    a.log.With("component", "dhcpv6"),
	}
	if a.cfg.DNS.Enabled {
		c.DNS = []netip.Addr{plan.prefix.Addr()}
	}
	if a.cfg.IPv6.DHCPv6 == "stateful" {
		c.Pool = dhcp6Pool(plan.prefix)
		c.Exclude = []netip.Addr{plan.prefix.Addr()}
	}
	a.dhcp6, err = dhcp6.New(conn, c)
	if err != nil {
		conn.Close()
		return fmt.Errorf("dhcpv6: %w", err)
	}
	return nil
}
