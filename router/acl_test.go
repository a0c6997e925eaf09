package router

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseRule(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		in   string
		want Rule
	}{
		{"deny tcp to 10.0.0.0/8 port 22", Rule{Action: Deny, Proto: ProtoTCP, To: pfx("10.0.0.0/8"), PortLo: 22, PortHi: 22}},
		{"allow", Rule{Action: Allow}},
		{"deny any", Rule{Action: Deny}},
		{"ALLOW UDP FROM 192.168.30.0/24 TO 8.8.8.8 PORT 53", Rule{Action: Allow, Proto: ProtoUDP, From: pfx("192.168.30.0/24"), To: pfx("8.8.8.8/32"), PortLo: 53, PortHi: 53}},
		{"deny to 169.254.169.254", Rule{Action: Deny, To: pfx("169.254.169.254/32")}},
		{"deny icmp to 1.2.3.4/16", Rule{Action: Deny, Proto: ProtoICMP, To: pfx("1.2.0.0/16")}},
		{"allow tcp port 1000-2000 to any from 10.1.0.0/16", Rule{Action: Allow, Proto: ProtoTCP, From: pfx("10.1.0.0/16"), PortLo: 1000, PortHi: 2000}},
		{"  deny   udp   to fd00::/8  ", Rule{Action: Deny, Proto: ProtoUDP, To: pfx("fd00::/8")}},
		{"deny to ::ffff:10.0.0.1", Rule{Action: Deny, To: pfx("10.0.0.1/32")}},
		{"deny to ::ffff:10.0.0.0/104", Rule{Action: Deny, To: pfx("10.0.0.0/8")}},
		{"allow any port 1-65535", Rule{Action: Allow, PortLo: 1, PortHi: 65535}},
	}
	for _, tt := range tests {
		got, err := ParseRule(tt.in)
		if err != nil {
			t.Errorf("ParseRule(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseRule(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
		// String round-trips.
		again, err := ParseRule(got.String())
		if err != nil || again != got {
			t.Errorf("ParseRule(%q.String() = %q) = %+v, %v; want %+v", tt.in, got.String(), again, err, got)
		}
	}
}

func TestParseRuleErrors(t *testing.T) {
	tests := []struct {
		in      string
		wantSub []string // all must appear in the error
	}{
		{"", []string{"empty rule"}},
		{"   ", []string{"empty rule"}},
		{"permit-all", []string{`word 1 "permit-all"`, "want allow or deny"}},
		{"deny tcp to 10.0.0.0/8 prot 22", []string{`word 5 "prot"`, "want from, to or port"}},
		{"deny tcp to", []string{`word 3 "to"`, "missing value"}},
		{"deny tcp to 10.0.0.0/33", []string{`word 4 "10.0.0.0/33"`, "CIDR"}},
		{"deny tcp to example.com", []string{`word 4 "example.com"`, "not an address"}},
		{"deny tcp port 0", []string{`word 4 "0"`, "1-65535"}},
		{"deny tcp port 65536", []string{`word 4 "65536"`}},
		{"deny tcp port 22-21", []string{`word 4 "22-21"`, "reversed"}},
		{"deny tcp port 22-", []string{`word 4 "22-"`}},
		{"deny tcp port ssh", []string{`word 4 "ssh"`}},
		{"deny icmp port 7", []string{`word 3 "port"`, "icmp has no ports"}},
		{"deny to 1.2.3.4 to 5.6.7.8", []string{`word 4 "to"`, "given twice"}},
		{"deny to 1.2.3.4 tcp", []string{`word 4 "tcp"`, "protocol must come right after"}},
		{"deny to fe80::1%eth0", []string{"zones"}},
	}
	for _, tt := range tests {
		_, err := ParseRule(tt.in)
		if err == nil {
			t.Errorf("ParseRule(%q): no error", tt.in)
			continue
		}
		for _, sub := range tt.wantSub {
			if !strings.Contains(err.Error(), sub) {
				t.Errorf("ParseRule(%q) error %q lacks %q", tt.in, err, sub)
			}
		}
	}
}

func TestRuleMatch(t *testing.T) {
	r := func(s string) Rule {
		t.Helper()
		x, err := ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	a := netip.MustParseAddr
	ap := netip.MustParseAddrPort
	client := a("192.168.30.10")
	tests := []struct {
		rule  string
		proto Proto
		src   netip.Addr
		dst   netip.AddrPort
		want  bool
	}{
		{"deny tcp to 10.0.0.0/8 port 22", ProtoTCP, client, ap("10.1.2.3:22"), true},
		{"deny tcp to 10.0.0.0/8 port 22", ProtoTCP, client, ap("10.1.2.3:23"), false},
		{"deny tcp to 10.0.0.0/8 port 22", ProtoUDP, client, ap("10.1.2.3:22"), false},
		{"deny tcp to 10.0.0.0/8 port 22", ProtoTCP, client, ap("11.1.2.3:22"), false},
		{"deny any port 20-25", ProtoUDP, client, ap("1.1.1.1:20"), true},
		{"deny any port 20-25", ProtoUDP, client, ap("1.1.1.1:25"), true},
		{"deny any port 20-25", ProtoUDP, client, ap("1.1.1.1:26"), false},
		{"deny any port 20-25", ProtoICMP, client, ap("1.1.1.1:0"), false}, // ports never match ICMP
		{"deny any to 1.1.1.1", ProtoICMP, client, ap("1.1.1.1:0"), true},
		{"deny from 192.168.30.0/28", ProtoTCP, client, ap("1.1.1.1:80"), true},
		{"deny from 192.168.30.16/28", ProtoTCP, client, ap("1.1.1.1:80"), false},
		{"deny to 10.0.0.0/8", ProtoTCP, client, ap("[::ffff:10.0.0.1]:80"), true}, // mapped → unmapped
		{"deny to 10.0.0.0/8", ProtoTCP, client, ap("[fd00::1]:80"), false},        // family mismatch
		{"deny to ::/0", ProtoTCP, client, ap("10.0.0.1:80"), false},
		{"allow", ProtoICMP, client, ap("10.0.0.1:0"), true},
	}
	for _, tt := range tests {
		if got := r(tt.rule).Match(tt.proto, tt.src, tt.dst); got != tt.want {
			t.Errorf("%q.Match(%v, %v, %v) = %v, want %v", tt.rule, tt.proto, tt.src, tt.dst, got, tt.want)
		}
	}
}

func TestACLFirstMatchAndDefaults(t *testing.T) {
	must := func(s string) Rule {
		x, err := ParseRule(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	rules := []Rule{
		must("allow tcp to 10.0.0.5 port 443"),
		must("deny tcp to 10.0.0.0/8"),
		must("allow tcp to 127.0.0.1"), // shadowed by the default denies
	}
	client := netip.MustParseAddr("192.168.30.10")
	ap := netip.MustParseAddrPort
	tests := []struct {
		noDefault bool
		proto     Proto
		dst       string
		want      bool
		wantIdx   int // -1: no rule matched
	}{
		{false, ProtoTCP, "10.0.0.5:443", true, 11},
		{false, ProtoTCP, "10.0.0.5:80", false, 12},
		{false, ProtoTCP, "8.8.8.8:80", true, -1},
		{false, ProtoTCP, "127.0.0.1:80", false, 0},
		{false, ProtoUDP, "127.9.9.9:53", false, 0},
		{false, ProtoTCP, "[::1]:80", false, 1},
		{false, ProtoUDP, "0.1.2.3:53", false, 2},
		{false, ProtoTCP, "169.254.169.254:80", false, 4},
		{false, ProtoTCP, "[fe80::1]:80", false, 5},
		{false, ProtoUDP, "239.1.1.1:5353", false, 6},
		{false, ProtoUDP, "[ff02::fb]:5353", false, 7},
		{false, ProtoUDP, "255.255.255.255:67", false, 8},
		{false, ProtoTCP, "[::ffff:127.0.0.1]:80", false, 0},
		{false, ProtoTCP, "[fd00:ec2::254]:80", false, 9},
		{false, ProtoTCP, "[64:ff9b::169.254.169.254]:80", false, 10},
		{false, ProtoTCP, "[2001:db8::1]:80", true, -1},
		{false, ProtoICMP, "127.0.0.1:0", false, 0},
		{true, ProtoTCP, "127.0.0.1:80", true, 2},
		{true, ProtoTCP, "10.9.9.9:80", false, 1},
		{true, ProtoTCP, "169.254.169.254:80", true, -1},
	}
	for _, tt := range tests {
		a := newACL(rules, tt.noDefault)
		got, idx := a.check(tt.proto, client, ap(tt.dst))
		if got != tt.want || idx != tt.wantIdx {
			t.Errorf("noDefault=%v %v %s: allowed=%v rule %d, want %v rule %d", tt.noDefault, tt.proto, tt.dst, got, idx, tt.want, tt.wantIdx)
		}
	}
	if n := len(DefaultDenyRules()); n != 11 {
		t.Errorf("DefaultDenyRules: %d rules, the table above assumes 11", n)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{MaxSessions: -1},
		{DialTimeout: -1},
		{Rules: []Rule{{Action: Deny, Proto: ProtoICMP, PortLo: 1, PortHi: 1}}},
		{Rules: []Rule{{Action: Deny, PortLo: 5, PortHi: 4}}},
		{Rules: []Rule{{Action: 7}}},
	}
	for i, c := range bad {
		if err := c.withDefaults().validate(); err == nil {
			t.Errorf("config %d %+v: no error", i, c)
		}
	}
	c := Config{}.withDefaults()
	if err := c.validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	if c.MaxSessions != 4096 || c.MaxSessionsPerClient != 1024 || c.MaxInFlightDials != 1024 ||
		c.DialTimeout != DefaultDialTimeout || c.TCPIdleTimeout != DefaultTCPIdleTimeout ||
		c.UDPIdleTimeout != DefaultUDPIdleTimeout || c.DNSIdleTimeout != DefaultDNSIdleTimeout {
		t.Errorf("defaults: %+v", c)
	}
	if c := (Config{MaxSessions: 10}).withDefaults(); c.MaxSessionsPerClient != 10 {
		t.Errorf("MaxSessionsPerClient default with MaxSessions 10 = %d", c.MaxSessionsPerClient)
	}
}

// FuzzParseRule: config text never panics the parser, and every rule it
// accepts is valid and survives String → ParseRule unchanged.
func FuzzParseRule(f *testing.F) {
	for _, s := range []string{
		"deny tcp to 10.0.0.0/8 port 22",
		"allow udp from 192.168.30.0/24 to 8.8.8.8 port 53",
		"deny any to 169.254.169.254",
		"allow icmp from fd00::/8",
		"deny tcp port 1-65535",
		"deny to ::ffff:10.0.0.0/104",
		"permit",
		"deny tcp to",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRule(s)
		if err != nil {
			if r != (Rule{}) {
				t.Fatalf("error with a non-zero rule: %+v", r)
			}
			return
		}
		if err := r.validate(); err != nil {
			t.Fatalf("ParseRule(%q) accepted an invalid rule %+v: %v", s, r, err)
		}
		again, err := ParseRule(r.String())
		if err != nil || again != r {
			t.Fatalf("ParseRule(%q) = %+v; String %q re-parses as %+v, %v", s, r, r.String(), again, err)
		}
	})
}

func TestSetRulesReplacesACL(t *testing.T) {
	r := &Router{}
	a := newACL(nil, false)
	r.acl.Store(&a)
	dst := netip.MustParseAddrPort("10.1.2.3:22")
	src := netip.MustParseAddr("192.168.30.10")
	if ok, _ := r.acl.Load().check(ProtoTCP, src, dst); !ok {
		t.Fatal("allowed by default before the reload")
	}
	rule, err := ParseRule("deny tcp to 10.0.0.0/8 port 22")
	if err != nil {
		t.Fatal(err)
	}
	r.SetRules([]Rule{rule}, false)
	if ok, _ := r.acl.Load().check(ProtoTCP, src, dst); ok {
		t.Fatal("still allowed after SetRules")
	}
	if got := r.ACL(); len(got) != len(DefaultDenyRules())+1 {
		t.Fatalf("ACL has %d rules", len(got))
	}
	r.SetRules(nil, true)
	if got := r.ACL(); len(got) != 0 {
		t.Fatalf("ACL after SetRules(nil, true): %v", got)
	}
}
