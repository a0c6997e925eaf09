//go:build interop

package lab

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// lab is the one lab shared by every test of this binary (set up by TestMain).
var lab *Lab

// TestMain brings a lab up under a unique prefix (env ACR_LAB_PREFIX overrides;
// ACR_LAB_KEEP=1 leaves it running), runs the tests and takes it down, also on
// failure. A detached guard takes it down if this process dies early.
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Getenv("ACR_LAB_HELPER") == "icmp-echo" { // re-executed by TestHarness/Unprivileged
		return icmpEchoHelper(os.Args[len(os.Args)-1])
	}
	if os.Geteuid() != 0 {
		fmt.Println("lab: interop tests need root (network namespaces); skipped")
		return 0
	}
	logf := func(format string, args ...any) {
		fmt.Printf("lab: "+format+"\n", args...)
	}
	o := Options{Prefix: os.Getenv("ACR_LAB_PREFIX"), Logf: logf}
	keep := os.Getenv("ACR_LAB_KEEP") == "1"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	l, err := Up(ctx, o)
	cancel()
	if l != nil && !keep {
		if gerr := l.Guard(os.Getpid()); gerr != nil {
			logf("guard: %v", gerr)
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := l.Down(ctx); err != nil {
				logf("%v", err)
			}
		}()
	}
	if err != nil {
		logf("lab up failed: %v", err)
		return 1
	}
	lab = l
	ictx, icancel := context.WithTimeout(context.Background(), 30*time.Second)
	info, err := l.ServerInfo(ictx)
	icancel()
	if err == nil {
		logf("server: %s, %s (%s)", info["Product Name"], info["Version"], info["Build"])
	}
	code := m.Run()
	if code != 0 {
		logf("tests failed; lab state and logs kept in %s", l.State)
	} else if !keep {
		defer func() { _ = os.RemoveAll(l.State) }() // after Down (defers run last-in first-out)
	}
	return code
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// httpFirstLine fetches http://LANIP:HTTPPort/ with dial and returns its first line.
func httpFirstLine(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error)) (string, error) {
	tr := &http.Transport{DialContext: dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/", net.JoinHostPort(lab.LANIP.String(), fmt.Sprint(lab.HTTPPort))), nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("HTTP %s", resp.Status)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestHarness checks the lab itself: LAN services, DialInNS, vpncmd parsing,
// DHCP and HTTP through the SNAT hub's SecureNAT, unprivileged processes.
func TestHarness(t *testing.T) {
	t.Run("DialInNS", func(t *testing.T) {
		ctx := testCtx(t, 10*time.Second)
		t0 := time.Now()
		line, err := httpFirstLine(ctx, DialInNS(lab.NSRtr))
		if err != nil {
			t.Fatalf("HTTP from %s: %v", lab.NSRtr, err)
		}
		if line != lab.HTTPFirstLine {
			t.Fatalf("first line %q, want %q", line, lab.HTTPFirstLine)
		}
		t.Logf("HTTP GET from %s via DialInNS: %q in %v", lab.NSRtr, line, time.Since(t0))
		// every thread is back in the original namespace: no socket of the
		// router namespace can be bound here, and threads report the root ns
		if pc, err := net.ListenPacket("udp4", net.JoinHostPort(lab.RtrIP.String(), "0")); err == nil {
			pc.Close()
			t.Fatalf("bound %s outside %s: a thread was left in the namespace", lab.RtrIP, lab.NSRtr)
		}
		for range 20 {
			pc, err := ListenPacketInNS(lab.NSRtr, "udp4", net.JoinHostPort(lab.RtrIP.String(), "0"))
			if err != nil {
				t.Fatalf("ListenPacketInNS: %v", err)
			}
			pc.Close()
		}
		root, err := os.Readlink("/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 64)
		for range cap(errc) {
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				ns, err := os.Readlink("/proc/thread-self/ns/net")
				if err == nil && ns != root {
					err = fmt.Errorf("thread in %s, want %s", ns, root)
				}
				errc <- err
			}()
		}
		for range cap(errc) {
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("UDPEcho", func(t *testing.T) {
		ctx := testCtx(t, 10*time.Second)
		c, err := DialInNS(lab.NSRtr)(ctx, "udp", net.JoinHostPort(lab.LANIP.String(), fmt.Sprint(lab.EchoPort)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := []byte("acrouter-lab-udp-echo")
		buf := make([]byte, 100)
		for i := range 5 { // UDP: a few bounded tries
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err == nil {
				if string(buf[:n]) != string(msg) {
					t.Fatalf("echo %q, want %q", buf[:n], msg)
				}
				t.Logf("UDP echo answered on try %d", i+1)
				return
			}
		}
		t.Fatal("no UDP echo after 5 tries")
	})
	t.Run("VPNCmd", func(t *testing.T) {
		ctx := testCtx(t, 30*time.Second)
		ss, err := lab.SessionList(ctx, lab.SNATHub)
		if err != nil {
			t.Fatal(err)
		}
		var snat, bridge bool
		for _, s := range ss {
			snat = snat || strings.HasPrefix(s.Name, "SID-SECURENAT-")
			bridge = bridge || strings.HasPrefix(s.Name, "SID-LOCALBRIDGE-")
		}
		if !snat || !bridge {
			t.Fatalf("hub %s sessions %+v: want a SecureNAT and a local bridge session", lab.SNATHub, ss)
		}
		g, err := lab.SessionGet(ctx, lab.SNATHub, ss[0].Name)
		if err != nil {
			t.Fatal(err)
		}
		if g["Session Name"] != ss[0].Name {
			t.Fatalf("SessionGet %s: Session Name %q", ss[0].Name, g["Session Name"])
		}
	})
	t.Run("SecureNAT", func(t *testing.T) {
		ctx := testCtx(t, 40*time.Second)
		t0 := time.Now()
		lease, err := lab.DHCP(ctx, "csnat")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("DHCP from SecureNAT in %v: %s/%s gw %s dns %s", time.Since(t0).Round(time.Millisecond),
			lease["LEASE_IP"], lease["LEASE_PREFIX"], lease["LEASE_ROUTER"], lease["LEASE_DNS"])
		t0 = time.Now()
		line, err := httpFirstLine(ctx, DialInNS(lab.NSCSNAT))
		if err != nil {
			t.Fatalf("HTTP through SecureNAT: %v", err)
		}
		if line != lab.HTTPFirstLine {
			t.Fatalf("first line %q, want %q", line, lab.HTTPFirstLine)
		}
		t.Logf("HTTP GET through SecureNAT: %q in %v", line, time.Since(t0))
		out, err := lab.Exec(ctx, lab.NSCSNAT, "dig", "+short", "+time=2", "+tries=2", "@"+lease["LEASE_ROUTER"], "www."+lab.DNSZone, "A")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != lab.LANIP.String() {
			t.Fatalf("www.%s via SecureNAT DNS = %q, want %s", lab.DNSZone, out, lab.LANIP)
		}
	})
	t.Run("DownAfterFailedUp", func(t *testing.T) {
		// a second lab next to the shared one, whose vpnserver cannot start
		ctx := testCtx(t, 60*time.Second)
		prefix := fmt.Sprintf("acrf%d", os.Getpid())
		state := t.TempDir()
		t0 := time.Now()
		_, err := Up(ctx, Options{Prefix: prefix, State: state, Env: []string{"LAB_VPNSERVER_BIN=/bin/false", "LAB_START_TIMEOUT=3"}})
		if err == nil {
			t.Fatal("lab.sh up succeeded with /bin/false as vpnserver")
		}
		t.Logf("up failed as expected after %v: %s", time.Since(t0).Round(time.Millisecond), lastLines(err.Error(), 1))
		f := &Lab{Script: lab.Script, Prefix: prefix, State: state, logf: t.Logf,
			base: append(os.Environ(), "LAB_PREFIX="+prefix, "LAB_STATE="+state)}
		if err := f.Down(ctx); err != nil {
			t.Fatal(err)
		}
		left, _ := filepath.Glob("/run/netns/" + prefix + "-*")
		etc, _ := filepath.Glob("/etc/netns/" + prefix + "-*")
		if len(left)+len(etc) != 0 {
			t.Fatalf("left behind: %v %v", left, etc)
		}
		// the shared lab is untouched
		if line, err := httpFirstLine(ctx, DialInNS(lab.NSRtr)); err != nil || line != lab.HTTPFirstLine {
			t.Fatalf("shared lab broken after the second lab's down: %q %v", line, err)
		}
	})
	t.Run("Unprivileged", func(t *testing.T) {
		ctx := testCtx(t, 20*time.Second)
		dir, err := lab.UnprivilegedDir("selftest")
		if err != nil {
			t.Fatal(err)
		}
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		self, err := lab.InstallBinary(exe, "lab.test")
		if err != nil {
			t.Fatal(err)
		}
		p, err := lab.StartUnprivileged(ctx, lab.NSRtr, "selftest", "sh", "-c",
			`id -u; grep CapEff /proc/self/status; echo ok >"$1/written"; cat /etc/resolv.conf; `+
				`curl -sS -m 5 "http://$2/" | head -1; env ACR_LAB_HELPER=icmp-echo "$3" "$4"; echo done`,
			"sh", dir, fmt.Sprintf("%s:%d", lab.LANIP, lab.HTTPPort), self, lab.LANIP.String())
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.Done():
		case <-ctx.Done():
			p.Stop(time.Second)
			t.Fatal("unprivileged process did not finish")
		}
		out := p.Log()
		t.Logf("unprivileged run:\n%s", out)
		for _, want := range []string{"65534\n", "CapEff:\t0000000000000000", "nameserver " + lab.LANIP.String(), lab.HTTPFirstLine, "icmp-echo-ok", "done"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		if b, err := os.ReadFile(dir + "/written"); err != nil || string(b) != "ok\n" {
			t.Errorf("state dir not writable by the unprivileged user: %q %v", b, err)
		}
	})
}

// icmpEchoHelper pings dst once with an unprivileged ICMP datagram socket
// (needs net.ipv4.ping_group_range, which lab.sh sets in the router namespace).
func icmpEchoHelper(dst string) int {
	c, err := icmp.ListenPacket("udp4", "0.0.0.0")
	if err != nil {
		fmt.Println("icmp-echo:", err)
		return 1
	}
	defer c.Close()
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 1, Seq: 1, Data: []byte("acrouter-lab")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		fmt.Println("icmp-echo:", err)
		return 1
	}
	if _, err := c.WriteTo(b, &net.UDPAddr{IP: net.ParseIP(dst)}); err != nil {
		fmt.Println("icmp-echo:", err)
		return 1
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			fmt.Println("icmp-echo:", err)
			return 1
		}
		if m, err := icmp.ParseMessage(1, buf[:n]); err == nil && m.Type == ipv4.ICMPTypeEchoReply {
			fmt.Println("icmp-echo-ok")
			return 0
		}
	}
}
