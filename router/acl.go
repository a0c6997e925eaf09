package router

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Proto is the transport protocol of a flow or a rule.
type Proto uint8

const (
	ProtoAny  Proto = iota // rules only: matches every protocol
	ProtoTCP               // TCP
	ProtoUDP               // UDP
	ProtoICMP              // ICMP (and ICMPv6) echo
)

func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// Action is what a matching Rule does.
type Action uint8

const (
	Deny  Action = iota // refuse the flow (RST / ICMP administratively prohibited)
	Allow               // forward the flow
)

func (a Action) String() string {
	if a == Allow {
		return "allow"
	}
	return "deny"
}

// Rule is one ACL entry. The rules are evaluated in order and the first one
// that matches a new flow decides; a flow that matches no rule is allowed.
//
// A zero field matches anything: Proto ProtoAny, an invalid (zero) From or
// To prefix, and PortLo == PortHi == 0. A rule with a port range matches only
// TCP and UDP flows (ICMP has no ports). From matches the client (source)
// address on the hub, To the destination; an IPv4 prefix never matches an
// IPv6 address and vice versa (IPv4-mapped IPv6 addresses are unmapped first).
type Rule struct {
	Action Action
	Proto  Proto
	From   netip.Prefix
	To     netip.Prefix
	PortLo uint16
	PortHi uint16
}

// Match reports whether the rule applies to a new flow of protocol p from
// client src to dst (dst's port is ignored for ICMP).
func (r Rule) Match(p Proto, src netip.Addr, dst netip.AddrPort) bool {
	if r.Proto != ProtoAny && r.Proto != p {
		return false
	}
	if r.From.IsValid() && !r.From.Contains(src.Unmap()) {
		return false
	}
	if r.To.IsValid() && !r.To.Contains(dst.Addr().Unmap()) {
		return false
	}
	if r.PortLo != 0 || r.PortHi != 0 {
		if p != ProtoTCP && p != ProtoUDP {
			return false
		}
		if port := dst.Port(); port < r.PortLo || port > r.PortHi {
			return false
		}
	}
	return true
}

// String returns the rule in the text form ParseRule accepts; ParseRule of
// the result yields the same Rule.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString(r.Action.String())
	b.WriteByte(' ')
	b.WriteString(r.Proto.String())
	if r.From.IsValid() {
		b.WriteString(" from ")
		b.WriteString(r.From.String())
	}
	if r.To.IsValid() {
		b.WriteString(" to ")
		b.WriteString(r.To.String())
	}
	if r.PortLo != 0 || r.PortHi != 0 {
		b.WriteString(" port ")
		b.WriteString(strconv.Itoa(int(r.PortLo)))
		if r.PortHi != r.PortLo {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(int(r.PortHi)))
		}
	}
	return b.String()
}

const ruleHead = `allow|deny [tcp|udp|icmp|any] [from PREFIX] [to PREFIX] [port N|N-M]`

// RuleSyntax documents the text form of a Rule.
const RuleSyntax = ruleHead + `
  PREFIX is a CIDR prefix (10.0.0.0/8, fd00::/8), a single address (an /32 or /128) or "any".
  Keywords are case-insensitive; the clauses may appear in any order, each at most once.
  "port" needs tcp, udp or any (then it matches TCP and UDP only); ports are 1-65535.`

// ParseRule parses the text form of a Rule (see RuleSyntax), for example
//
//	deny tcp to 10.0.0.0/8 port 22
//	allow udp from 192.168.30.0/24 to 8.8.8.8 port 53
//	deny any to 169.254.169.254
//
// Errors name the offending token and its position (1-based word number).
func ParseRule(s string) (Rule, error) {
	words := strings.Fields(s)
	if len(words) == 0 {
		return Rule{}, errors.New("router: empty rule (want " + ruleHead + ")")
	}
	fail := func(i int, format string, args ...any) (Rule, error) {
		return Rule{}, fmt.Errorf("router: rule %q: word %d %q: %s", s, i+1, words[i], fmt.Sprintf(format, args...))
	}
	var r Rule
	switch strings.ToLower(words[0]) {
	case "allow", "permit", "accept":
		r.Action = Allow
	case "deny", "drop", "reject", "block":
		r.Action = Deny
	default:
		return fail(0, "want allow or deny")
	}
	i := 1
	if i < len(words) {
		if p, ok := parseProto(words[i]); ok {
			r.Proto = p
			i++
		}
	}
	var seenFrom, seenTo, seenPort bool
	portWord := -1
	for i < len(words) {
		kw := strings.ToLower(words[i])
		var seen *bool
		switch kw {
		case "from":
			seen = &seenFrom
		case "to":
			seen = &seenTo
		case "port", "ports":
			seen = &seenPort
		default:
			if _, ok := parseProto(words[i]); ok {
				return fail(i, "protocol must come right after %s", words[0])
			}
			return fail(i, "unexpected token (want from, to or port)")
		}
		if *seen {
			return fail(i, "%s given twice", kw)
		}
		*seen = true
		if i+1 >= len(words) {
			return fail(i, "missing value after %s", kw)
		}
		val := words[i+1]
		switch kw {
		case "from", "to":
			p, err := parsePrefix(val)
			if err != nil {
				return fail(i+1, "%v", err)
			}
			if kw == "from" {
				r.From = p
			} else {
				r.To = p
			}
		default:
			lo, hi, err := parsePorts(val)
			if err != nil {
				return fail(i+1, "%v", err)
			}
			r.PortLo, r.PortHi = lo, hi
			portWord = i
		}
		i += 2
	}
	if portWord >= 0 && r.Proto == ProtoICMP {
		return fail(portWord, "icmp has no ports")
	}
	return r, nil
}

func parseProto(w string) (Proto, bool) {
	switch strings.ToLower(w) {
	case "tcp":
		return ProtoTCP, true
	case "udp":
		return ProtoUDP, true
	case "icmp", "icmp4", "icmp6", "icmpv6", "ping":
		return ProtoICMP, true
	case "any", "all", "ip":
		return ProtoAny, true
	}
	return 0, false
}

// parsePrefix accepts a CIDR prefix, a bare address or "any" (the zero
// Prefix). The prefix is masked (10.1.2.3/8 → 10.0.0.0/8) and unmapped.
func parsePrefix(w string) (netip.Prefix, error) {
	if strings.EqualFold(w, "any") {
		return netip.Prefix{}, nil
	}
	if strings.Contains(w, "/") {
		p, err := netip.ParsePrefix(w)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a CIDR prefix: %v", err)
		}
		if p.Addr().Zone() != "" {
			return netip.Prefix{}, errors.New("zones are not allowed")
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(w)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an address or prefix: %v", err)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, errors.New("zones are not allowed")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parsePorts(w string) (lo, hi uint16, err error) {
	los, his, isRange := strings.Cut(w, "-")
	l, err := parsePort(los)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return l, l, nil
	}
	h, err := parsePort(his)
	if err != nil {
		return 0, 0, err
	}
	if h < l {
		return 0, 0, fmt.Errorf("port range %d-%d is reversed", l, h)
	}
	return l, h, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want a number 1-65535", s)
	}
	return uint16(n), nil
}

// DefaultDenyRules returns the rules that New puts in front of
// Config.Rules unless Config.NoDefaultDeny is set: the host's own loopback
// (a hub client must not reach services bound to 127.0.0.1 on the router's
// host), "this network" 0.0.0.0/8 and ::, link-local (which includes the
// cloud metadata service 169.254.169.254), multicast and the limited
// broadcast address, and the IPv6 spellings of the metadata service.
// (Rules match IPv4-mapped IPv6 destinations as their IPv4 address, so
// [::ffff:127.0.0.1] is denied as 127.0.0.1.)
func DefaultDenyRules() []Rule {
	deny := func(p string) Rule {
		return Rule{Action: Deny, To: netip.MustParsePrefix(p)}
	}
	return []Rule{
		deny("127.0.0.0/8"),
		deny("::1/128"),
		deny("0.0.0.0/8"),
		deny("::/128"),
		deny("169.254.0.0/16"),
		deny("fe80::/10"),
		deny("224.0.0.0/4"),
		deny("ff00::/8"),
		deny("255.255.255.255/32"),
		// The cloud metadata service over IPv6 (AWS: fd00:ec2::254), and
		// 169.254.169.254 through the well-known NAT64 prefix (RFC 6052).
		deny("fd00:ec2::254/128"),
		deny("64:ff9b::a9fe:a9fe/128"),
	}
}

// acl is the compiled rule list: the default denies (unless disabled)
// followed by the configured rules. It is immutable after New.
type acl struct {
	rules      []Rule
	numDefault int // how many of rules are DefaultDenyRules
}

func newACL(rules []Rule, noDefault bool) acl {
	var a acl
	if !noDefault {
		a.rules = DefaultDenyRules()
		a.numDefault = len(a.rules)
	}
	a.rules = append(a.rules, rules...)
	return a
}

// check returns whether the flow is allowed and the index of the deciding
// rule in a.rules (-1 when no rule matched: allowed by default).
func (a *acl) check(p Proto, src netip.Addr, dst netip.AddrPort) (bool, int) {
	for i := range a.rules {
		if a.rules[i].Match(p, src, dst) {
			return a.rules[i].Action == Allow, i
		}
	}
	return true, -1
}
