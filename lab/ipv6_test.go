//go:build interop

package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// IPv6 through acrouter with real clients: the client namespace's Linux
// kernel configures itself from acrouter's Router Advertisements (SLAAC,
// default route), rdisc6 shows the advertised options, ISC dhclient -6 asks
// acrouter's DHCPv6 server (stateless and stateful), and curl, ping -6, dig
// and a UDP exchange reach an IPv6 LAN (fd77::/64 between the router and
// LAN namespaces) through host IPv6 sockets of the unprivileged acrouter.

const (
	v6LAN      = "fd77::1"
	v6Rtr      = "fd77::2"
	v6Prefix   = "fd55:ac::1/64"
	v6Router   = "fd55:ac::1"
	v6HTTPPort = 8086
	v6UDPPort  = 7007
)

func TestIPv6Interop(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	setupIPv6LAN(t, ctx)

	r := startAcrouter(t, ctx, "acrouter-v6", "--ipv6-prefix", v6Prefix, "--ipv6-default-route", "on", "--dhcp-search", lab.DNSZone)

	// The router advertisement as a real tool decodes it.
	out, err := lab.Exec(ctx, lab.NSCLab, "rdisc6", "-1", "-w", "2000", "eth0")
	if err != nil {
		t.Fatalf("rdisc6: %v\n%s", err, out)
	}
	t.Logf("rdisc6:\n%s", out)
	for key, want := range map[string]string{"Router lifetime": "1800", "Prefix": "fd55:ac::/64", "Recursive DNS server": v6Router,
		"DNS search list": lab.DNSZone, "Stateful other conf.": "Yes", "Stateful address conf.": "No", "Autonomous address conf.": "Yes"} {
		if got := rdiscField(out, key); !strings.HasPrefix(got, want) {
			t.Errorf("rdisc6 %s: %q, want %s", key, got, want)
		}
	}

	// The kernel's own SLAAC address and default route.
	addr := waitSLAAC(t, ctx, "fd55:ac:")
	t.Logf("client SLAAC address %s", addr)

	t.Run("HTTPOverIPv6", func(t *testing.T) {
		out, err := lab.Exec(ctx, lab.NSCLab, "curl", "-6", "-sS", "-m", "10", fmt.Sprintf("http://[%s]:%d/", v6LAN, v6HTTPPort))
		// The LAN sees the router host's own address (the flow left through a
		// host socket), not the hub client's.
		if err != nil || !strings.Contains(out, "hello over IPv6 from "+v6Rtr) {
			t.Fatalf("curl over IPv6: %v %q", err, out)
		}
	})
	t.Run("UDPOverIPv6", func(t *testing.T) {
		c, err := DialInNS(lab.NSCLab)(ctx, "udp6", fmt.Sprintf("[%s]:%d", v6LAN, v6UDPPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		for i := range 3 {
			msg := fmt.Sprintf("datagram %d", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 256)
			n, err := c.Read(buf)
			if err != nil || string(buf[:n]) != msg {
				t.Fatalf("UDP echo over IPv6: %q %v", buf[:n], err)
			}
		}
	})
	t.Run("PingOverIPv6", func(t *testing.T) {
		out, err := lab.Exec(ctx, lab.NSCLab, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", v6LAN)
		if err != nil {
			t.Fatalf("ping -6 through acrouter: %v\n%s", err, out)
		}
		// And the router's own address is answered by acrouter itself.
		if out, err := lab.Exec(ctx, lab.NSCLab, "ping", "-6", "-c", "1", "-W", "2", v6Router); err != nil {
			t.Fatalf("ping -6 %s: %v\n%s", v6Router, err, out)
		}
	})
	t.Run("DNSOverIPv6", func(t *testing.T) {
		for _, q := range []struct{ args, want string }{
			{"www." + lab.DNSZone + " A", lab.LANIP.String()},
			{"acrouter AAAA", v6Router},
			{"www." + lab.DNSZone + " A +tcp", lab.LANIP.String()},
		} {
			args := append([]string{"dig", "+short", "+time=3", "+tries=1", "@" + v6Router}, strings.Fields(q.args)...)
			out, err := lab.Exec(ctx, lab.NSCLab, args...)
			if err != nil || strings.TrimSpace(out) != q.want {
				t.Errorf("dig %s over IPv6: %q %v, want %s", q.args, out, err, q.want)
			}
		}
	})
	t.Run("StatelessDHCPv6", func(t *testing.T) {
		env := dhclient6(t, ctx, "-S")
		if !strings.Contains(env["new_dhcp6_name_servers"], v6Router) || !strings.Contains(env["new_dhcp6_domain_search"], lab.DNSZone) {
			t.Fatalf("dhclient -6 -S: %v", env)
		}
	})
	var st struct {
		Router struct {
			IPv6       string `json:"ipv6"`
			LinkLocal6 string `json:"ipv6_link_local"`
			DHCPv6     string `json:"dhcpv6"`
		} `json:"router"`
	}
	r.statusJSON(t, ctx, "/status", &st)
	if st.Router.IPv6 != v6Prefix || !strings.HasPrefix(st.Router.LinkLocal6, "fe80::") || st.Router.DHCPv6 != "stateless" {
		t.Errorf("/status router: %+v", st.Router)
	}
}

// TestIPv6StatefulDHCPv6Interop: with stateful DHCPv6 the kernel forms no
// SLAAC address (the prefix is not autonomous) and ISC dhclient gets one
// from acrouter's pool.
func TestIPv6StatefulDHCPv6Interop(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	flushClientIPv6(ctx)
	t.Cleanup(func() { flushClientIPv6(context.Background()) })
	r := startAcrouter(t, ctx, "acrouter-v6s", "--ipv6-prefix", v6Prefix, "--dhcpv6", "stateful")
	out, err := lab.Exec(ctx, lab.NSCLab, "rdisc6", "-1", "-w", "2000", "eth0")
	if err != nil || rdiscField(out, "Stateful address conf.") != "Yes" || rdiscField(out, "Autonomous address conf.") != "No" {
		t.Fatalf("rdisc6 (want the M flag): %v\n%s", err, out)
	}
	env := dhclient6(t, ctx)
	got := env["new_ip6_address"]
	if !strings.HasPrefix(got, "fd55:ac::1:") {
		t.Fatalf("dhclient -6 got address %q, want one from fd55:ac::1:0/112 (%v)", got, env)
	}
	var leases []struct {
		IP   string `json:"ip"`
		DUID string `json:"duid"`
	}
	r.statusJSON(t, ctx, "/leases", &leases)
	found := false
	for _, l := range leases {
		found = found || l.IP == got && l.DUID != ""
	}
	if !found {
		t.Errorf("/leases %+v lacks %s", leases, got)
	}
	t.Logf("stateful DHCPv6 address %s", got)
}

// rdiscField returns the value after "key ... :" in rdisc6 output.
func rdiscField(out, key string) string {
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// setupIPv6LAN gives the router and LAN namespaces IPv6 addresses and runs
// an HTTP server and a UDP echo on the LAN side; all undone at cleanup.
func setupIPv6LAN(t *testing.T, ctx context.Context) {
	t.Helper()
	steps := [][]string{
		{lab.NSLAN, "ip", "addr", "replace", v6LAN + "/64", "dev", "lanbr", "nodad"},
		{lab.NSRtr, "ip", "addr", "replace", v6Rtr + "/64", "dev", "lan0", "nodad"},
	}
	for _, s := range steps {
		if out, err := lab.Exec(ctx, s[0], s[1:]...); err != nil {
			t.Fatalf("%v: %v\n%s", s, err, out)
		}
	}
	t.Cleanup(func() {
		c := context.Background()
		lab.Exec(c, lab.NSLAN, "ip", "addr", "del", v6LAN+"/64", "dev", "lanbr")
		lab.Exec(c, lab.NSRtr, "ip", "addr", "del", v6Rtr+"/64", "dev", "lan0")
		flushClientIPv6(c)
	})
	flushClientIPv6(ctx)
	ln, err := ListenInNS(lab.NSLAN, "tcp6", fmt.Sprintf("[%s]:%d", v6LAN, v6HTTPPort))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "hello over IPv6 from %s\n", host)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	// Precondition: the router namespace reaches it directly.
	c, err := DialInNS(lab.NSRtr)(ctx, "tcp6", fmt.Sprintf("[%s]:%d", v6LAN, v6HTTPPort))
	if err != nil {
		t.Fatalf("the router namespace cannot reach the IPv6 LAN itself: %v", err)
	}
	c.Close()
	pc, err := ListenPacketInNS(lab.NSLAN, "udp6", fmt.Sprintf("[%s]:%d", v6LAN, v6UDPPort))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
}

// flushClientIPv6 removes what earlier routers' advertisements left in the
// client namespace and makes sure it accepts advertisements.
func flushClientIPv6(ctx context.Context) {
	lab.Exec(ctx, lab.NSCLab, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0", "net.ipv6.conf.eth0.accept_ra=1", "net.ipv6.conf.eth0.accept_ra_defrtr=1")
	lab.Exec(ctx, lab.NSCLab, "ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global")
	lab.Exec(ctx, lab.NSCLab, "ip", "-6", "route", "flush", "proto", "ra")
}

// waitSLAAC waits (bounded) until the client kernel has a global address
// starting with prefix and an IPv6 default route, and returns the address.
func waitSLAAC(t *testing.T, ctx context.Context, prefix string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		addrs, _ := lab.Exec(ctx, lab.NSCLab, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
		routes, _ := lab.Exec(ctx, lab.NSCLab, "ip", "-6", "route", "show", "default")
		for _, f := range strings.Fields(addrs) {
			if strings.HasPrefix(f, prefix) && strings.Contains(routes, "via fe80::") {
				a, _, _ := strings.Cut(f, "/")
				return a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SLAAC address in %s… and default route after 15 s:\n%s\n%s", prefix, addrs, routes)
		}
		time.Sleep(200 * time.Millisecond) // kernel state: polled, bounded by the deadline
	}
}

// dhclient6 runs ISC dhclient -6 once (extra: e.g. -S for stateless) in the
// client namespace with a script that records its environment, and returns
// the variables of the final BOUND6/RENEW6 call.
func dhclient6(t *testing.T, ctx context.Context, extra ...string) map[string]string {
	t.Helper()
	dir, err := os.MkdirTemp("", "acr-dhclient6-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	envFile := filepath.Join(dir, "env")
	script := filepath.Join(dir, "script")
	// The script only records; it configures nothing (no resolv.conf).
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncase \"$reason\" in BOUND6|RENEW6|REBIND6|REBOOT6) env > "+envFile+";; esac\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"timeout", "30", "dhclient", "-6", "-1", "-v", "-sf", script,
		"-lf", filepath.Join(dir, "leases"), "-pf", filepath.Join(dir, "pid")}, extra...)
	args = append(args, "eth0")
	out, err := lab.Exec(ctx, lab.NSCLab, args...)
	// -1 exits after one attempt; kill a daemonised one if it stayed.
	if pid, rerr := os.ReadFile(filepath.Join(dir, "pid")); rerr == nil {
		lab.Exec(context.Background(), lab.NSCLab, "kill", strings.TrimSpace(string(pid)))
	}
	b, ferr := os.ReadFile(envFile)
	if ferr != nil {
		t.Fatalf("dhclient -6 %v: %v / %v\n%s", extra, err, ferr, out)
	}
	env := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	return env
}
