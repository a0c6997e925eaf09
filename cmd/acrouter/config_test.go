package main

import (
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func parseForTest(t *testing.T, file string, args ...string) (config, error) {
	t.Helper()
	if file != "" {
		p := filepath.Join(t.TempDir(), "acrouter.toml")
		if err := os.WriteFile(p, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", p}, args...)
	}
	fs := flag.NewFlagSet("acrouter", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return parseArgs(fs, args)
}

func TestFlagsOverrideFile(t *testing.T) {
	file := `
[hub]
server = "vpn.example.com:443"
hub = "FILEHUB"
user = "router"
[router]
ip = "10.1.0.1/16"
max_sessions = 100
rules = ["deny tcp to 10.0.0.0/8 port 22"]
[dns]
upstreams = ["10.0.0.53"]
`
	cfg, err := parseForTest(t, file, "--hub", "FLAGHUB", "--max-sessions=200", "--rule", "allow any")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Hub.Hub != "FLAGHUB" || cfg.Hub.Server != "vpn.example.com:443" {
		t.Errorf("hub: got %+v", cfg.Hub)
	}
	if cfg.Router.MaxSessions != 200 || cfg.Router.IP != "10.1.0.1/16" {
		t.Errorf("router: got %+v", cfg.Router)
	}
	if len(cfg.Router.Rules) != 1 || cfg.Router.Rules[0] != "allow any" {
		t.Errorf("a rule flag must replace the file's rules, got %q", cfg.Router.Rules)
	}
	if len(cfg.DNS.Upstreams) != 1 {
		t.Errorf("file lists without flags must stay, got %q", cfg.DNS.Upstreams)
	}
	s, err := cfg.validate(true)
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("10.1.0.1/16"); s.RouterPrefix != want {
		t.Errorf("prefix %v, want %v", s.RouterPrefix, want)
	}
	if s.PoolStart != netip.MustParseAddr("10.1.0.10") || s.PoolEnd != netip.MustParseAddr("10.1.0.200") {
		t.Errorf("default pool %v-%v", s.PoolStart, s.PoolEnd)
	}
}

func TestDefaultsMatchSecureNAT(t *testing.T) {
	cfg, err := parseForTest(t, "", "--server", "h:5555", "--hub", "H", "--user", "u")
	if err != nil {
		t.Fatal(err)
	}
	s, err := cfg.validate(true)
	if err != nil {
		t.Fatal(err)
	}
	if s.RouterPrefix.String() != "192.168.30.1/24" || s.PoolStart.String() != "192.168.30.10" || s.PoolEnd.String() != "192.168.30.200" {
		t.Errorf("got %v %v-%v", s.RouterPrefix, s.PoolStart, s.PoolEnd)
	}
	if cfg.DHCP.LeaseTime.Duration != 7200*time.Second || cfg.Router.TCPIdleTimeout.Duration != 1800*time.Second || cfg.Router.MaxSessions != 4096 {
		t.Errorf("defaults: %+v %+v", cfg.DHCP, cfg.Router)
	}
}

func TestBadConfigNamesKeyValueAndExpectation(t *testing.T) {
	cases := []struct {
		name, file string
		args       []string
		want       []string
	}{
		{"unknown key", "[router]\nipp = \"1.2.3.4/24\"\n", nil, []string{"unknown key", "router.ipp"}},
		{"syntax", "[router\n", nil, []string{"line ", "table name"}},
		{"bad duration", "[router]\ndial_timeout = \"ten\"\n", nil, []string{"dial_timeout", "not a duration"}},
		{"bad ip", "", []string{"--ip", "192.168.30.1"}, []string{"router.ip", `"192.168.30.1"`, "prefix length"}},
		{"network address", "", []string{"--ip", "192.168.30.0/24"}, []string{"router.ip", "host address"}},
		{"no server", "", []string{"--server", ""}, []string{"hub.server", "host:port"}},
		{"bad port", "", []string{"--server", "h:99999"}, []string{"hub.server", "1 to 65535"}},
		{"bad mac", "", []string{"--mac", "01:00:00:00:00:01"}, []string{"router.mac", "unicast"}},
		{"max sessions", "", []string{"--max-sessions", "0"}, []string{"router.max_sessions", `"0"`, "1 to"}},
		{"pool outside", "", []string{"--dhcp-pool-start", "10.0.0.1"}, []string{"dhcp.pool_start", "inside the router subnet"}},
		{"bad route", "", []string{"--dhcp-route", "10.0.0.0/8 192.168.30.1"}, []string{"dhcp.routes", "via"}},
		{"bad reserve", "", []string{"--dhcp-reserve", "zz=1.2.3.4"}, []string{"dhcp.reservations", "MAC=IP"}},
		{"alias in pool", "", []string{"--loopback-alias", "192.168.30.20"}, []string{"router.loopback_alias", "outside the DHCP pool"}},
		{"alias reserved", "", []string{"--loopback-alias", "192.168.30.5", "--dhcp-reserve", "02:00:00:00:00:01=192.168.30.5"}, []string{"router.loopback_alias", "reserved"}},
		{"alias loopback", "", []string{"--loopback-alias", "127.0.0.1"}, []string{"router.loopback_alias", "unicast"}},
		{"bad forward", "", []string{"--forward", "tcp 0.0.0.0:80 => 192.168.30.5:80"}, []string{"router.forwards", "->"}},
		{"bad auth", "", []string{"--auth", "cert"}, []string{"hub.auth", "password or plain"}},
		{"pin and insecure", "", []string{"--server-cert-sha256", strings.Repeat("ab", 32), "--insecure-skip-verify"}, []string{"contradict"}},
		{"bad pin", "", []string{"--server-cert-sha256", "abc"}, []string{"server_cert_sha256", "64 hex"}},
		{"status without token", "", []string{"--status", "0.0.0.0:8765"}, []string{"status.listen", "token"}},
		{"log level", "", []string{"--log-level", "loud"}, []string{"log.level", "debug, info"}},
		{"argv password", "", []string{"secret"}, []string{"never taken from the command line"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--server", "h:5555", "--hub", "H", "--user", "u"}, tc.args...)
			cfg, err := parseForTest(t, tc.file, args...)
			if err == nil {
				_, err = cfg.validate(true)
			}
			if err == nil {
				t.Fatalf("accepted a bad config")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestPasswordFileMustNotBeWorldReadable(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "pw")
	if err := os.WriteFile(p, []byte("s3cret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.Hub.PasswordFile = p
	if _, err := cfg.hubPassword(); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable password file: err = %v", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	pw, err := cfg.hubPassword()
	if err != nil || pw != "s3cret" {
		t.Fatalf("got %q, %v", pw, err)
	}
	cfg.Hub.PasswordFile = ""
	t.Setenv("ACROUTER_PASSWORD", "fromenv")
	if pw, err := cfg.hubPassword(); err != nil || pw != "fromenv" {
		t.Fatalf("env: got %q, %v", pw, err)
	}
}

func TestStateDirKeepsMAC(t *testing.T) {
	d, err := openStateDir(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	m1, err := d.routerMAC()
	if err != nil {
		t.Fatal(err)
	}
	if m1[0]&0x02 == 0 || m1[0]&0x01 != 0 {
		t.Errorf("MAC %v is not a locally administered unicast address", m1)
	}
	m2, err := d.routerMAC()
	if err != nil || m2.String() != m1.String() {
		t.Errorf("second read: %v, %v; want %v", m2, err, m1)
	}
	if err := os.WriteFile(d.path("mac"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.routerMAC(); err == nil || !strings.Contains(err.Error(), "not a MAC") {
		t.Errorf("corrupt MAC file: err = %v", err)
	}
}

func TestFDLimitWarning(t *testing.T) {
	limit, warn := checkFDLimit(1)
	if limit == 0 || warn != "" {
		t.Fatalf("one session must fit: limit %d, %q", limit, warn)
	}
	over := int(limit) // limit sessions plus the reserve cannot fit
	if _, warn := checkFDLimit(over); !strings.Contains(warn, "open-file limit") || !strings.Contains(warn, "fd-limit") {
		t.Fatalf("warning %q", warn)
	}
}

func TestProxyConfig(t *testing.T) {
	for _, tc := range []struct {
		proxy, want string
	}{
		{"ftp://h:21", "hub.proxy"},
		{"http://bob:secret@h:3128", "contains a password"},
		{"ftp://bob:secret@h:21", "hub.proxy"},
	} {
		cfg, err := parseForTest(t, "", "--server", "h:5555", "--hub", "H", "--user", "u", "--proxy", tc.proxy)
		if err == nil {
			_, err = cfg.validate(true)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--proxy %s: %v, want %q", tc.proxy, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("the error shows the proxy password: %v", err)
		}
	}
	cfg, err := parseForTest(t, "", "--server", "h:5555", "--hub", "H", "--user", "u", "--proxy", "socks5://bob@127.0.0.1:1080")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.validate(true); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ACROUTER_PROXY_PASSWORD", "pw")
	d, err := cfg.hubDialer(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
}

func TestIPv6AndStarvationKeys(t *testing.T) {
	file := `
[hub]
server = "vpn.example.com:443"
hub = "H"
user = "u"
[dhcp]
new_client_rate = 0.5
probation_lease = "0s"
max_broadcast_replies = 0
[ipv6]
prefix = "fd12:3456:789a::1/64"
default_route = "off"
dhcpv6 = "stateful"
`
	cfg, err := parseForTest(t, file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := cfg.validate(true)
	if err != nil {
		t.Fatal(err)
	}
	if s.IPv6Prefix != netip.MustParsePrefix("fd12:3456:789a::1/64") || cfg.IPv6.DefaultRoute != "off" || cfg.IPv6.DHCPv6 != "stateful" || !cfg.IPv6.Enabled {
		t.Errorf("ipv6: %+v %v", cfg.IPv6, s.IPv6Prefix)
	}
	if cfg.DHCP.NewClientRate != 0.5 || offIfZero(cfg.DHCP.ProbationLease.Duration) != -1 || offIfZeroF(cfg.DHCP.MaxBroadcastReplies) != -1 {
		t.Errorf("dhcp: %+v", cfg.DHCP)
	}
	for _, tt := range []struct{ args, want string }{
		{"--ipv6-prefix fd12::1/48", "ipv6.prefix (--ipv6-prefix) = \"fd12::1/48\": expected a /64"},
		{"--ipv6-prefix fe80::1/64", "expected a unique local (fc00::/7) or global unicast address"},
		{"--ipv6-prefix fd12::/64", "not the prefix itself"},
		{"--ipv6-prefix 10.0.0.1/24", "expected an IPv6 address with prefix length"},
		{"--ipv6-default-route maybe", "ipv6.default_route (--ipv6-default-route) = \"maybe\": expected auto, on or off"},
		{"--dhcpv6 full", "ipv6.dhcpv6 (--dhcpv6) = \"full\": expected off, stateless or stateful"},
		{"--dhcp-new-client-rate -3", "dhcp.new_client_rate"},
		{"--dhcp-probation-lease 1s", "dhcp.probation_lease"},
		{"--dhcpv6-lease-time 1s", "ipv6.dhcpv6_lease_time"},
	} {
		args := append([]string{"--server", "h:5555", "--hub", "H", "--user", "u"}, strings.Fields(tt.args)...)
		cfg, err := parseForTest(t, "", args...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cfg.validate(true); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want it to contain %q", tt.args, err, tt.want)
		}
	}
}
