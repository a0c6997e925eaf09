package router

import (
	"fmt"
	"net/netip"
)

// Host-loopback alias (Config.LoopbackAlias): one virtual address that
// stands for the router host's own 127.0.0.1, so that hub clients can reach
// services listening only on the host's loopback (SoftEtherVPN issue #1633
// asks for this for SecureNAT).
//
// SECURITY: this is a deliberate hole in the default deny of 127.0.0.0/8.
// Every service bound to 127.0.0.1 on the router's host — often ones that
// trust loopback callers, such as databases, admin consoles, or acrouter's
// own status API — becomes reachable by every hub client, on every port,
// unless the ACL restricts it. Only the alias maps to loopback: the ACL sees
// the alias address (so "deny tcp to ALIAS" and "allow tcp to ALIAS port 8080"
// work as written), and any other 127.0.0.0/8 destination stays refused by
// the default deny. Prefer pairing the alias with rules that allow only the
// ports meant to be shared, followed by "deny any to ALIAS".

// loopback4 is where the alias leads.
var loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// hostAddr maps a flow destination to the address used on the host: the
// loopback alias becomes 127.0.0.1, anything else is unchanged.
func (r *Router) hostAddr(a netip.Addr) netip.Addr {
	if r.cfg.LoopbackAlias.IsValid() && a.Unmap() == r.cfg.LoopbackAlias {
		return loopback4
	}
	return a
}

// hostDialAddr is hostAddr for a dial address "ip:port".
func (r *Router) hostDialAddr(addr string) string {
	if !r.cfg.LoopbackAlias.IsValid() {
		return addr
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Addr().Unmap() != r.cfg.LoopbackAlias {
		return addr
	}
	return netip.AddrPortFrom(loopback4, ap.Port()).String()
}

// validateLoopbackAlias checks Config.LoopbackAlias without the stack.
func validateLoopbackAlias(a netip.Addr) error {
	if !a.IsValid() {
		return nil
	}
	switch {
	case !a.Is4():
		return fmt.Errorf("LoopbackAlias %v: want an IPv4 address", a)
	case a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("LoopbackAlias %v: want a unicast address outside 127.0.0.0/8 (it stands for 127.0.0.1)", a)
	case a.IsLinkLocalUnicast():
		return fmt.Errorf("LoopbackAlias %v: link-local addresses are denied by default; pick another", a)
	}
	return nil
}

// startAlias checks the alias against the stack's subnet and, when it is
// inside it, makes the stack answer ARP for it (from New).
func (r *Router) startAlias() error {
	a := r.cfg.LoopbackAlias
	if !a.IsValid() || r.st == nil {
		return nil
	}
	pfx := r.st.Prefix()
	if !pfx.Contains(a) {
		// Off-subnet: clients send to it through their default gateway
		// (the router); no ARP needed.
		r.log.Info("router: host-loopback alias enabled: hub clients reach the host's 127.0.0.1 through it (restrict it with the ACL)", "alias", a.String())
		return nil
	}
	switch {
	case a == pfx.Addr():
		return fmt.Errorf("router: LoopbackAlias %v is the router's own address", a)
	case a == pfx.Masked().Addr() || a == broadcastAddr(pfx):
		return fmt.Errorf("router: LoopbackAlias %v is the network or broadcast address of %v", a, pfx.Masked())
	}
	if err := r.st.AddProxyARP(a); err != nil {
		return fmt.Errorf("router: LoopbackAlias: %w", err)
	}
	r.log.Info("router: host-loopback alias enabled: hub clients reach the host's 127.0.0.1 through it (restrict it with the ACL); keep it out of the DHCP pool", "alias", a.String())
	return nil
}
