package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/acrouter/acrouter/netstack/netstacktest"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

var (
	lanNet  = netip.MustParsePrefix("10.99.0.0/16")
	lanNet6 = netip.MustParsePrefix("2001:db8:99::/48") // also dialled on 127.0.0.1
)

// lanAddr is the address through which the client reaches a loopback
// listener of the test.
func lanAddr(t *testing.T, ln net.Listener) netip.AddrPort {
	t.Helper()
	ap := netip.MustParseAddrPort(ln.Addr().String())
	return netip.AddrPortFrom(netip.MustParseAddr("10.99.0.1"), ap.Port())
}

// startTestRouter runs the whole router (vpnlink → netstack → router, DHCP,
// DNS) on a new in-memory hub. hubQueue sets the hub's per-port queue (0: its
// default). Flows to lanNet are dialled on 127.0.0.1.
func startTestRouter(tb testing.TB, hubQueue int, extraArgs ...string) (*app, *vpnlinktest.Hub) {
	tb.Helper()
	hub, err := vpnlinktest.NewHub(vpnlinktest.Config{HubName: "LAB", Users: []vpnlinktest.User{{Name: "router", Password: "router-pass"}},
		QueueFrames: hubQueue})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { hub.Close() })

	args := append([]string{"--server", "hub.test:5555", "--hub", "LAB", "--user", "router",
		"--state-dir", tb.TempDir(), "--server-cert-sha256", hub.CertSHA256(),
		"--dns-upstream", "127.0.0.1:1", "--dns-host", "www.lab.test=10.77.0.1"}, extraArgs...)
	fs := flag.NewFlagSet("acrouter", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg, err := parseArgs(fs, args)
	if err != nil {
		tb.Fatal(err)
	}
	set, err := cfg.validate(true)
	if err != nil {
		tb.Fatal(err)
	}
	state, err := openStateDir(cfg.StateDir)
	if err != nil {
		tb.Fatal(err)
	}
	mac, err := state.routerMAC()
	if err != nil {
		tb.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	lc := linkConfig(cfg, state, "router-pass", log)
	lc.Dial = hub.Dial
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The "LAN" is the test host's loopback: flows to lanNet are dialled
	// on 127.0.0.1 with the same port (gVisor will not route 127.0.0.0/8
	// from a client, rightly).
	lanDial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err == nil && (lanNet.Contains(ap.Addr()) || lanNet6.Contains(ap.Addr())) {
			addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	a, err := startApp(ctx, cfg, set, lc, state, mac, log, lanDial)
	if err != nil {
		tb.Fatal(err)
	}
	a.argv = args
	tb.Cleanup(func() {
		if err := a.close(); err != nil {
			tb.Errorf("close: %v", err)
		}
	})
	return a, hub
}

// testApp runs the whole router on an in-memory hub and puts a client host
// (192.168.30.50) on the same hub.
func testApp(t *testing.T, extraArgs ...string) (*app, *netstacktest.Host, *vpnlinktest.Hub) {
	t.Helper()
	a, hub := startTestRouter(t, 0, extraArgs...)
	host, err := netstacktest.NewHost(hub.Attach(), net.HardwareAddr{2, 0xac, 0, 0, 0, 0x50},
		netip.MustParsePrefix("192.168.30.50/24"), netip.MustParseAddr("192.168.30.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	return a, host, hub
}

func TestEndToEndTCPThroughHub(t *testing.T) {
	a, host, hub := testApp(t)
	if s := hub.Sessions(); len(s) != 1 || !s[0].BridgeMode {
		t.Fatalf("hub sessions: %+v", s)
	}

	// A "LAN service" on the router host's loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "echo: "+line)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := host.DialTCP(ctx, lanAddr(t, ln))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "hello\n")
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "echo: hello\n" {
		t.Fatalf("got %q, %v", got, err)
	}

	// The flow is visible through the status API.
	srv, err := startStatusServer("127.0.0.1:0", newStatusHandler(a, "", false), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var flows []flowDoc
	getJSON(t, "http://"+srv.Addr()+"/sessions", &flows)
	found := false
	for _, f := range flows {
		if f.Proto == "tcp" && f.Dest == lanAddr(t, ln).String() && strings.HasPrefix(f.Client, "192.168.30.50:") {
			found = true
		}
	}
	if !found {
		t.Errorf("flow not in /sessions: %+v", flows)
	}
	var st statusDoc
	getJSON(t, "http://"+srv.Addr()+"/status", &st)
	if st.Hub.State != "connected" || !st.Hub.BridgeMode || st.Hub.SessionName == "" || st.Router.IP != "192.168.30.1/24" {
		t.Errorf("/status: %+v", st)
	}
}

func TestEndToEndDNSStaticThroughHub(t *testing.T) {
	_, host, _ := testApp(t)
	c, err := host.DialUDP(netip.MustParseAddrPort("192.168.30.1:53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := new(mdns.Msg)
	q.SetQuestion("www.lab.test.", mdns.TypeA)
	b, _ := q.Pack()
	// UDP may be lost before ARP settles; retry a bounded number of times.
	var resp mdns.Msg
	for i := 0; ; i++ {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 1500)
		n, err := c.Read(buf)
		if err == nil {
			if err := resp.Unpack(buf[:n]); err != nil {
				t.Fatal(err)
			}
			break
		}
		if i == 5 {
			t.Fatalf("no DNS answer: %v", err)
		}
	}
	if resp.Id != q.Id || len(resp.Answer) != 1 || resp.Answer[0].(*mdns.A).A.String() != "10.77.0.1" {
		t.Fatalf("answer: %v", resp.String())
	}
}

func TestACLRefusalsThroughHub(t *testing.T) {
	a, host, _ := testApp(t, "--rule", "deny tcp to 10.99.0.0/16 port 1-1023")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A configured deny rule.
	if c, err := host.DialTCP(ctx, netip.MustParseAddrPort("10.99.0.1:22")); err == nil {
		c.Close()
		t.Fatal("a denied destination was reachable")
	}
	// The default deny of link-local/metadata addresses.
	if c, err := host.DialTCP(ctx, netip.MustParseAddrPort("169.254.169.254:80")); err == nil {
		c.Close()
		t.Fatal("the metadata address was reachable")
	}
	// An allowed one still works.
	c, err := host.DialTCP(ctx, lanAddr(t, ln))
	if err != nil {
		t.Fatalf("allowed destination: %v", err)
	}
	c.Close()
	if n := a.router.Stats().Refused["acl"]; n < 2 {
		t.Errorf("refused[acl] = %d, want >= 2", n)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func TestReloadAppliesRules(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "acrouter.toml")
	write := func(rules string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte("[router]\nrules = ["+rules+"]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	a, host, _ := testApp(t, "--config", conf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := host.DialTCP(ctx, lanAddr(t, ln))
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	write(`"deny tcp to 10.99.0.0/16"`)
	var level slog.LevelVar
	a.reload(&level)
	if err := dial(); err == nil {
		t.Fatal("the reloaded deny rule was not applied")
	}
	write(`"deny tcp to"`) // broken: the running rules stay
	a.reload(&level)
	if err := dial(); err == nil {
		t.Fatal("a rejected reload changed the rules")
	}
}

// A LAN-side client reaches a service on a hub client through a port forward
// added at run time through the status API.
func TestPortForwardThroughStatusAPI(t *testing.T) {
	a, host, _ := testApp(t)
	ln, err := host.ListenTCP(2222)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.WriteString(c, "hello from the hub client\n")
	}()
	srv, err := startStatusServer("127.0.0.1:0", newStatusHandler(a, "tok", false), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := free.Addr().String()
	free.Close()
	code, body := doJSON(t, "POST", "http://"+srv.Addr()+"/forwards", "tok", `{"rule":"tcp `+listen+` -> 192.168.30.50:2222"}`)
	if code != 200 {
		t.Fatalf("POST /forwards: %d %s", code, body)
	}
	var fws []forwardDoc
	if err := json.Unmarshal([]byte(body), &fws); err != nil || len(fws) != 1 || fws[0].Bound != listen {
		t.Fatalf("forwards: %v %s", err, body)
	}
	c, err := net.DialTimeout("tcp", fws[0].Bound, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "hello from the hub client\n" {
		t.Fatalf("through the forward: %q, %v", line, err)
	}
	if code, body := doJSON(t, "DELETE", "http://"+srv.Addr()+"/forwards", "tok", `{"rule":"tcp `+fws[0].Bound+` -> 192.168.30.50:2222"}`); code != 200 {
		t.Fatalf("DELETE /forwards: %d %s", code, body)
	}
	if _, err := net.DialTimeout("tcp", fws[0].Bound, 2*time.Second); err == nil {
		t.Fatal("the forward still listens after DELETE")
	}
}

func TestReloadAppliesForwards(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "acrouter.toml")
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	p1, p2 := free(), free()
	write := func(rules ...string) {
		t.Helper()
		q := make([]string, len(rules))
		for i, r := range rules {
			q[i] = `"` + r + `"`
		}
		if err := os.WriteFile(conf, []byte("[router]\nforwards = ["+strings.Join(q, ",")+"]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r1 := "tcp " + p1 + " -> 192.168.30.50:2222"
	r2 := "tcp " + p2 + " -> 192.168.30.50:2222"
	write(r1)
	a, _, _ := testApp(t, "--config", conf)
	rules := func() []string {
		var out []string
		for _, f := range a.router.Forwards() {
			out = append(out, f.Rule.String())
		}
		return out
	}
	if got := rules(); len(got) != 1 || got[0] != r1 {
		t.Fatalf("at start: %q", got)
	}
	write(r2)
	var level slog.LevelVar
	a.reload(&level)
	if got := rules(); len(got) != 1 || got[0] != r2 {
		t.Fatalf("after the reload: %q, want only %q", got, r2)
	}
	if c, err := net.DialTimeout("tcp", p1, time.Second); err == nil {
		c.Close()
		t.Fatal("the removed forward still listens")
	}
}
