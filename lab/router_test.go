//go:build interop

package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// routerUnderTest is acrouter running as the unprivileged user in the router
// namespace, joined to hub LAB of the real server.
type routerUnderTest struct {
	proc      *Proc
	statusURL string // inside NSRtr
}

// startAcrouter builds acrouter and runs it as "nobody" (no capabilities) in
// the router namespace, with its status API on the namespace's loopback.
func startAcrouter(t *testing.T, ctx context.Context, name string, extra ...string) *routerUnderTest {
	t.Helper()
	bin, err := lab.Build(ctx, "github.com/acrouter/acrouter/cmd/acrouter", "acrouter")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := lab.UnprivilegedDir(name)
	if err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "password")
	if err := os.WriteFile(pw, []byte(lab.RouterPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	uid, gid, err := unprivIDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(pw, uid, gid); err != nil {
		t.Fatal(err)
	}
	args := append([]string{bin,
		"--server", lab.Server, "--hub", lab.Hub, "--user", lab.RouterUser, "--password-file", pw,
		"--state-dir", filepath.Join(dir, "state"), "--dns-resolv-conf", lab.Env["LAB_RESOLV_CONF"],
		"--status", "127.0.0.1:8765"}, extra...)
	// The process outlives the test's context (cancelled before cleanups
	// run); the cleanup stops it with SIGTERM and checks a clean exit.
	p, err := lab.StartUnprivileged(context.WithoutCancel(ctx), lab.NSRtr, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("acrouter exit: %v\n%s", err, lastLines(p.Log(), 10))
		}
	})
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := p.WaitLog(wctx, "virtual host up"); err != nil {
		t.Fatal(err)
	}
	return &routerUnderTest{proc: p, statusURL: "http://127.0.0.1:8765"}
}

// statusJSON fetches a status API path from inside the router namespace.
func (r *routerUnderTest) statusJSON(t *testing.T, ctx context.Context, path string, v any) {
	t.Helper()
	out, err := lab.Exec(ctx, lab.NSRtr, "curl", "-sS", "-m", "5", r.statusURL+path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, out)
	}
}

func TestRouterInterop(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	t0 := time.Now()
	r := startAcrouter(t, ctx, "acrouter-main")
	t.Logf("acrouter (uid nobody, no capabilities) joined hub %s on %s in %v", lab.Hub, lab.Server, time.Since(t0).Round(time.Millisecond))

	// The session is on the hub in bridge/routing mode.
	sess, err := lab.WaitSessions(ctx, lab.Hub, func(s []Session) bool {
		for _, x := range s {
			if strings.EqualFold(x.User, lab.RouterUser) {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sess {
		if strings.EqualFold(s.User, lab.RouterUser) {
			info, err := lab.SessionGet(ctx, lab.Hub, s.Name)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("hub session %s: %v", s.Name, info["Bridge / Router Mode"])
		}
	}

	// DHCP: a real client (busybox udhcpc) in the client namespace.
	t1 := time.Now()
	lease, err := lab.DHCP(ctx, "clab")
	if err != nil {
		t.Fatalf("DHCP through acrouter: %v\n%s", err, lastLines(r.proc.Log(), 10))
	}
	t.Logf("lease %v (udhcpc %v ms, total %v)", lease, lease["LEASE_ELAPSED_MS"], time.Since(t1).Round(time.Millisecond))
	ip, err := netip.ParseAddr(lease["LEASE_IP"])
	if err != nil || !netip.MustParsePrefix("192.168.30.0/24").Contains(ip) || ip.As4()[3] < 10 || ip.As4()[3] > 200 {
		t.Fatalf("lease address %q is not from the default pool 192.168.30.10-200", lease["LEASE_IP"])
	}
	if lease["LEASE_ROUTER"] != "192.168.30.1" || lease["LEASE_DNS"] != "192.168.30.1" || lease["LEASE_SERVER"] != "192.168.30.1" || lease["LEASE_TIME"] != "7200" {
		t.Fatalf("lease options: %v", lease)
	}
	// The client's resolver is the router, as a DHCP client would configure it.
	etc := "/etc/netns/" + lab.NSCLab
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(etc+"/resolv.conf", []byte("nameserver "+lease["LEASE_DNS"]+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lanIP := lab.LANIP.String()
	www := "www." + lab.DNSZone

	t.Run("DNSNameAndHTTPByName", func(t *testing.T) {
		out, err := lab.Exec(ctx, lab.NSCLab, "getent", "hosts", www)
		if err != nil || !strings.HasPrefix(out, lanIP) {
			t.Fatalf("resolve %s through acrouter: %q, %v", www, out, err)
		}
		page, err := lab.Exec(ctx, lab.NSCLab, "curl", "-sS", "-m", "10", fmt.Sprintf("http://%s:%d/", www, lab.HTTPPort))
		if err != nil || !strings.HasPrefix(page, lab.HTTPFirstLine) {
			t.Fatalf("HTTP by name: %q, %v", page, err)
		}
		// Other record types pass through: the zone's SOA/NS from dnsmasq.
		out, err = lab.Exec(ctx, lab.NSCLab, "dig", "+short", "+time=3", "+tries=1", "@"+lease["LEASE_DNS"], www, "A")
		if err != nil || strings.TrimSpace(out) != lanIP {
			t.Fatalf("dig A: %q %v", out, err)
		}
		out, err = lab.Exec(ctx, lab.NSCLab, "dig", "+short", "+tcp", "+time=3", "+tries=1", "@"+lease["LEASE_DNS"], www, "A")
		if err != nil || strings.TrimSpace(out) != lanIP {
			t.Fatalf("dig over TCP: %q %v", out, err)
		}
	})

	t.Run("DHCPHostNameInDNS", func(t *testing.T) {
		// The client asks again, now sending its host name (option 12);
		// the interface is left as it is (-s /bin/true).
		out, err := lab.Exec(ctx, lab.NSCLab, "timeout", "20", "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f",
			"-t", "5", "-T", "1", "-x", "hostname:clab-host", "-s", "/bin/true")
		if err != nil {
			t.Fatalf("udhcpc with host name: %v\n%s", err, out)
		}
		out, err = lab.Exec(ctx, lab.NSCLab, "getent", "hosts", "clab-host")
		if err != nil || !strings.HasPrefix(out, lease["LEASE_IP"]+" ") {
			t.Fatalf("clab-host should resolve to the client's lease %s: %q, %v", lease["LEASE_IP"], out, err)
		}
	})

	t.Run("HTTPByAddress", func(t *testing.T) {
		page, err := lab.Exec(ctx, lab.NSCLab, "curl", "-sS", "-m", "10", fmt.Sprintf("http://%s:%d/", lanIP, lab.HTTPPort))
		if err != nil || !strings.HasPrefix(page, lab.HTTPFirstLine) {
			t.Fatalf("HTTP: %q, %v", page, err)
		}
	})

	t.Run("UDPRequestResponse", func(t *testing.T) {
		dial := DialInNS(lab.NSCLab)
		c, err := dial(ctx, "udp", fmt.Sprintf("%s:%d", lanIP, lab.EchoPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A datagram larger than the MTU: fragments both ways.
		msg := []byte(strings.Repeat("acrouter-udp-", 300))
		buf := make([]byte, 8192)
		var n int
		for i := 0; i < 5; i++ { // UDP: bounded retries
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if n, err = c.Read(buf); err == nil {
				break
			}
		}
		if string(buf[:n]) != string(msg) {
			t.Fatalf("UDP echo of %d bytes: got %d bytes, %v", len(msg), n, err)
		}
	})

	t.Run("ClosedPortRefusedFast", func(t *testing.T) {
		dial := DialInNS(lab.NSCLab)
		t0 := time.Now()
		c, err := dial(ctx, "tcp", lanIP+":9")
		if err == nil {
			c.Close()
			t.Fatal("connected to a closed port")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("want connection refused, got %v", err)
		}
		t.Logf("connection refused after %v", time.Since(t0).Round(time.Microsecond))
	})

	t.Run("MetadataAddressRefused", func(t *testing.T) {
		dial := DialInNS(lab.NSCLab)
		c, err := dial(ctx, "tcp", "169.254.169.254:80")
		if err == nil {
			c.Close()
			t.Fatal("the link-local/metadata address was reachable")
		}
		// Refused with an RST or an ICMP unreachable/prohibited: either way
		// at once, not a timeout.
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Fatalf("want a refusal (RST or ICMP), got %v", err)
		}
	})

	t.Run("Ping", func(t *testing.T) {
		out, err := lab.Exec(ctx, lab.NSRtr, "sysctl", "-n", "net.ipv4.ping_group_range")
		if err != nil {
			t.Fatal(err)
		}
		out2, perr := lab.Exec(ctx, lab.NSCLab, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanIP)
		t.Logf("ping_group_range in the router namespace: %s", strings.TrimSpace(out))
		_, gid, err := unprivIDs()
		if err != nil {
			t.Fatal(err)
		}
		var lo, hi int
		fmt.Sscan(out, &lo, &hi)
		if lo <= gid && gid <= hi {
			if perr != nil {
				t.Fatalf("ping through acrouter: %v\n%s", perr, out2)
			}
		} else if perr == nil {
			t.Fatalf("ping answered although the router may not open ICMP sockets: fabricated?\n%s", out2)
		}
		// An address nobody has: no reply may be fabricated.
		if out, err := lab.Exec(ctx, lab.NSCLab, "ping", "-c", "1", "-W", "1", "10.77.0.99"); err == nil {
			t.Fatalf("ping to an absent address was answered:\n%s", out)
		}
	})

	t.Run("Iperf3BothDirections", func(t *testing.T) {
		port := fmt.Sprint(lab.IperfPorts[0])
		for _, dir := range []struct {
			name string
			args []string
		}{{"client→LAN", nil}, {"LAN→client", []string{"-R"}}} {
			args := append([]string{"timeout", "30", "iperf3", "-J", "-c", lanIP, "-p", port, "-t", "5"}, dir.args...)
			out, err := lab.Exec(ctx, lab.NSCLab, args...)
			if err != nil {
				t.Fatalf("iperf3 %s: %v\n%s", dir.name, err, lastLines(out, 5))
			}
			var res struct {
				Error string `json:"error"`
				End   struct {
					SumSent struct {
						BitsPerSecond float64 `json:"bits_per_second"`
						Retransmits   int     `json:"retransmits"`
					} `json:"sum_sent"`
					SumReceived struct {
						Bytes         float64 `json:"bytes"`
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("iperf3 JSON: %v", err)
			}
			if res.Error != "" || res.End.SumReceived.Bytes <= 0 {
				t.Fatalf("iperf3 %s moved nothing: %s", dir.name, res.Error)
			}
			t.Logf("iperf3 %s: %.0f Mbit/s received (%d retransmits)", dir.name, res.End.SumReceived.BitsPerSecond/1e6, res.End.SumSent.Retransmits)
		}
	})

	t.Run("StatusAPIAndPage", func(t *testing.T) {
		var st struct {
			Hub struct {
				State       string `json:"state"`
				SessionName string `json:"session_name"`
				BridgeMode  bool   `json:"bridge_mode"`
			} `json:"hub"`
		}
		r.statusJSON(t, ctx, "/status", &st)
		if st.Hub.State != "connected" || !st.Hub.BridgeMode || st.Hub.SessionName == "" {
			t.Fatalf("/status: %+v", st)
		}
		var leases []struct {
			MAC string `json:"mac"`
			IP  string `json:"ip"`
		}
		r.statusJSON(t, ctx, "/leases", &leases)
		found := false
		for _, l := range leases {
			if l.IP == lease["LEASE_IP"] && strings.EqualFold(l.MAC, lab.Env["LAB_CLAB_MAC"]) {
				found = true
			}
		}
		if !found {
			t.Fatalf("/leases lacks the client's lease %s: %+v", lease["LEASE_IP"], leases)
		}
		// The page, rendered by headless Chromium, shows the lease.
		if _, err := exec.LookPath("chromium"); err != nil {
			t.Fatalf("chromium is not installed (make interop installs it): %v", err)
		}
		profile, err := os.MkdirTemp("", "acr-chromium-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(profile)
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		dom, err := lab.Exec(cctx, lab.NSRtr, "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
			"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir="+profile, "--virtual-time-budget=5000", "--dump-dom", r.statusURL+"/")
		if err != nil && !strings.Contains(dom, "</html>") {
			t.Fatalf("chromium: %v\n%s", err, lastLines(dom, 5))
		}
		if !strings.Contains(dom, ">"+lease["LEASE_IP"]+"<") || !strings.Contains(dom, ">connected<") {
			t.Fatalf("the status page does not show the lease %s and link state:\n%s", lease["LEASE_IP"], dom)
		}
		t.Logf("status page rendered by Chromium shows lease %s and link connected", lease["LEASE_IP"])
	})

	// acrouter never needed a privilege: it runs as nobody without capabilities.
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.proc.Cmd.Process.Pid)); err == nil {
		// ip netns exec and setpriv exec acrouter in place: this is acrouter.
		for _, line := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(line, "CapEff:") && strings.TrimSpace(strings.TrimPrefix(line, "CapEff:")) != "0000000000000000" {
				t.Errorf("acrouter has effective capabilities: %s", line)
			}
		}
	}
}

func TestCheckCommandInterop(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	bin, err := lab.Build(ctx, "github.com/acrouter/acrouter/cmd/acrouter", "acrouter")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := lab.UnprivilegedDir("acrouter-check")
	if err != nil {
		t.Fatal(err)
	}
	uid, gid, err := unprivIDs()
	if err != nil {
		t.Fatal(err)
	}
	check := func(password string) (string, error) {
		pw := filepath.Join(dir, "password")
		if err := os.WriteFile(pw, []byte(password), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(pw, uid, gid); err != nil {
			t.Fatal(err)
		}
		return lab.Exec(ctx, lab.NSRtr, "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid), "--clear-groups",
			"--inh-caps=-all", "--", bin, "check", "--server", lab.Server, "--hub", lab.Hub, "--user", lab.RouterUser,
			"--password-file", pw, "--state-dir", filepath.Join(dir, "state"))
	}
	out, err := check(lab.RouterPassword)
	if err != nil || !strings.Contains(out, "verdict: acrouter can run") || !strings.Contains(out, "bridge/routing mode granted: true") {
		t.Fatalf("check with the right password: %v\n%s", err, out)
	}
	t.Logf("acrouter check:\n%s", out)
	out, err = check("wrong-password")
	if err == nil || !strings.Contains(out, "FAILED") || !strings.Contains(strings.ToLower(out), "password") {
		t.Fatalf("check with a wrong password: err=%v\n%s", err, out)
	}
	if strings.Contains(out, "wrong-password") {
		t.Fatalf("the password appears in the output:\n%s", out)
	}
	t.Logf("wrong password: %s", strings.TrimSpace(lastLines(out, 1)))
}
