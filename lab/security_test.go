//go:build interop

package lab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// hostTrap is a TCP listener and a UDP socket in the router namespace that
// count every connection and datagram: a service hub clients must never reach.
type hostTrap struct {
	addr     netip.AddrPort
	tcp      net.Listener
	udp      net.PacketConn
	accepted atomic.Int64
	datagram atomic.Int64
}

func newHostTrap(t *testing.T, addr netip.AddrPort) *hostTrap {
	t.Helper()
	h := &hostTrap{addr: addr}
	var err error
	if h.tcp, err = ListenInNS(lab.NSRtr, "tcp", addr.String()); err != nil {
		t.Fatal(err)
	}
	if h.udp, err = ListenPacketInNS(lab.NSRtr, "udp", addr.String()); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := h.tcp.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			c.Close()
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 2048)
		for {
			n, from, err := h.udp.ReadFrom(buf)
			if err != nil {
				return
			}
			h.datagram.Add(1)
			h.udp.WriteTo(buf[:n], from) // an echo: a leak would be answered
		}
	}()
	t.Cleanup(func() { h.tcp.Close(); h.udp.Close(); <-done; <-done })
	return h
}

// selfTest proves the trap counts: a connection and a datagram from its own
// namespace.
func (h *hostTrap) selfTest(t *testing.T, ctx context.Context) {
	t.Helper()
	dial := DialInNS(lab.NSRtr)
	c, err := dial(ctx, "tcp", h.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	u, err := dial(ctx, "udp", h.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("self"))
	u.Close()
	if err := waitFor(ctx, "trap self test", func() bool { return h.accepted.Load() == 1 && h.datagram.Load() == 1 }); err != nil {
		t.Fatal(err)
	}
	h.accepted.Store(0)
	h.datagram.Store(0)
}

// TestAccessControlInterop: configured deny rules and the default denies
// (host loopback, link-local/metadata) hold for TCP, UDP and ICMP from a hub
// client, checked at the host side (nothing arrives) and in /metrics.
func TestAccessControlInterop(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	// A "metadata service" on the router's host: 169.254.169.254 on its loopback.
	const meta = "169.254.169.254"
	if out, err := lab.Exec(ctx, lab.NSRtr, "ip", "addr", "add", meta+"/32", "dev", "lo"); err != nil {
		t.Fatal(out)
	}
	t.Cleanup(func() { lab.Exec(context.Background(), lab.NSRtr, "ip", "addr", "del", meta+"/32", "dev", "lo") })
	traps := []*hostTrap{
		newHostTrap(t, netip.MustParseAddrPort("127.0.0.1:18080")),
		newHostTrap(t, netip.MustParseAddrPort(meta+":80")),
	}
	for _, h := range traps {
		h.selfTest(t, ctx)
	}
	a := launchAcrouter(t, ctx, "acrouter-acl", "127.0.0.1:8769", "",
		"--rule", fmt.Sprintf("deny any to %s port %d", lab.LANIP, lab.EchoPort),
		"--rule", fmt.Sprintf("deny icmp to %s", lab.LANIP))
	lease, err := lab.DHCP(ctx, "clab")
	if err != nil {
		t.Fatal(err)
	}
	cip := netip.MustParseAddr(lease["LEASE_IP"])
	rmac, err := net.ParseMAC(a.st(t, ctx).Router.MAC)
	if err != nil {
		t.Fatal(err)
	}
	m0 := a.metrics(t, ctx)
	dial := DialInNS(lab.NSCLab)
	refused := func(err error) bool {
		return err != nil && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EACCES))
	}
	attempts := 0

	t.Run("TCP", func(t *testing.T) {
		for _, dst := range []string{fmt.Sprintf("%s:%d", lab.LANIP, lab.EchoPort), meta + ":80"} {
			attempts++
			c, err := dial(ctx, "tcp", dst)
			if err == nil {
				c.Close()
				t.Errorf("TCP to denied %s connected", dst)
			} else if !refused(err) {
				t.Errorf("TCP to denied %s: want an immediate refusal, got %v", dst, err)
			}
		}
		// Loopback cannot be addressed by a client's kernel: raw SYNs.
		raw, err := openRaw(lab.NSCLab, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		for i := range 3 {
			attempts++
			raw.send(ether(rmac, raw.mac, 0x0800, tcpSYN(netip.AddrPortFrom(cip, uint16(41000+i)), traps[0].addr, uint32(i))))
		}
		// Control: an allowed service works.
		if line, err := httpFirstLine(ctx, dial); err != nil || line != lab.HTTPFirstLine {
			t.Fatalf("allowed HTTP: %q %v", line, err)
		}
	})

	t.Run("UDP", func(t *testing.T) {
		for _, dst := range []string{fmt.Sprintf("%s:%d", lab.LANIP, lab.EchoPort), meta + ":80"} {
			attempts++
			c, err := dial(ctx, "udp", dst)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			for range 3 {
				c.Write([]byte("acl-probe"))
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			if n, err := c.Read(buf); err == nil {
				t.Errorf("UDP to denied %s answered %q", dst, buf[:n])
			}
			c.Close()
		}
		raw, err := openRaw(lab.NSCLab, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		attempts++
		raw.send(ether(rmac, raw.mac, 0x0800, udpPacket(netip.AddrPortFrom(cip, 41999), traps[0].addr, 1, []byte("to-loopback"))))
		// Control: allowed UDP (DNS through the router) works.
		if out, err := lab.Exec(ctx, lab.NSCLab, "dig", "+short", "+time=2", "+tries=2", "@192.168.30.1", "www."+lab.DNSZone); err != nil || strings.TrimSpace(out) != lab.LANIP.String() {
			t.Fatalf("allowed DNS: %q %v", out, err)
		}
	})

	t.Run("ICMP", func(t *testing.T) {
		for _, dst := range []string{lab.LANIP.String(), meta} {
			attempts++
			if out, err := lab.Exec(ctx, lab.NSCLab, "ping", "-c", "2", "-i", "0.3", "-W", "1", dst); err == nil {
				t.Errorf("ping to denied %s answered:\n%s", dst, out)
			}
		}
		// To the host's loopback, as a raw echo request; no reply may come.
		raw, err := openRaw(lab.NSCLab, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		attempts++
		for i := range 3 {
			raw.send(ether(rmac, raw.mac, 0x0800, icmpEcho(cip, netip.MustParseAddr("127.0.0.1"), 0x4242, uint16(i))))
		}
		buf := make([]byte, 2048)
		deadline := time.Now().Add(time.Second)
		for {
			n, err := raw.recv(buf, deadline)
			if err != nil {
				break
			}
			f := buf[:n]
			if len(f) >= 14+20+8 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[14+9] == 1 && f[14+20] == 0 &&
				binary.BigEndian.Uint16(f[14+24:]) == 0x4242 {
				t.Errorf("echo reply from %v for a ping to 127.0.0.1", net.IP(f[14+12:14+16]))
			}
		}
		// Control: an allowed destination (the hub namespace's LAN address) answers.
		if out, err := lab.Exec(ctx, lab.NSCLab, "ping", "-c", "1", "-W", "3", lab.Env["LAB_SERVER_IP"]); err != nil {
			t.Fatalf("allowed ping: %v\n%s", err, out)
		}
	})

	for _, h := range traps {
		if n, d := h.accepted.Load(), h.datagram.Load(); n != 0 || d != 0 {
			t.Errorf("host service %s was reached from the hub: %d connections, %d datagrams", h.addr, n, d)
		}
	}
	m1 := a.metrics(t, ctx)
	acl := m1[`acrouter_flows_refused_total{reason="acl"}`] - m0[`acrouter_flows_refused_total{reason="acl"}`]
	t.Logf("%d denied attempt groups (TCP, UDP, ICMP to the configured deny, metadata and host loopback); refused{acl} +%.0f; host traps saw nothing", attempts, acl)
	if acl < float64(attempts-3) { // gVisor may drop loopback destinations before the router sees them
		t.Errorf("refused{acl} grew by %.0f for %d denied attempts", acl, attempts)
	}
}

// TestStatusAPIAndSecretsInterop: a status API on a non-loopback address
// needs its token (from the LAN and from hub clients); acrouter refuses to
// start such an API without a token file; the hub password never shows in
// logs, the API or the process's argv/environment.
func TestStatusAPIAndSecretsInterop(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	status := lab.RtrIP.String() + ":8768"
	const token = "lab-status-token-4b1d"
	a := launchAcrouter(t, ctx, "acrouter-sec", status, token, "--log-level", "debug")
	lease, err := lab.DHCP(ctx, "clab")
	if err != nil {
		t.Fatal(err)
	}
	_ = lease

	curl := func(ns, tok, path string) (string, error) {
		args := []string{"curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"}
		if tok != "" {
			args = append(args, "-H", "Authorization: Bearer "+tok)
		}
		return lab.Exec(ctx, ns, append(args, "http://"+status+path)...)
	}
	for _, c := range []struct {
		who, ns, tok, path, want string
	}{
		{"LAN host, no token", lab.NSLAN, "", "/status", "401"},
		{"LAN host, no token", lab.NSLAN, "", "/metrics", "401"},
		{"LAN host, no token", lab.NSLAN, "", "/leases", "401"},
		{"LAN host, wrong token", lab.NSLAN, "wrong", "/status", "401"},
		{"LAN host, token", lab.NSLAN, token, "/status", "200"},
		{"hub client through the NAT, no token", lab.NSCLab, "", "/status", "401"},
		{"hub client through the NAT, wrong token", lab.NSCLab, "wrong", "/sessions", "401"},
	} {
		code, err := curl(c.ns, c.tok, c.path)
		if err != nil || code != c.want {
			t.Errorf("%s: GET %s → %q %v, want %s", c.who, c.path, code, err, c.want)
		}
	}
	// ?token= without the header works too (the page's links), wrong does not.
	if code, err := lab.Exec(ctx, lab.NSLAN, "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://"+status+"/status?token=nope"); err != nil || code != "401" {
		t.Errorf("?token=nope → %q %v", code, err)
	}

	// No token file with a non-loopback address: acrouter refuses to start.
	bin := filepath.Join(lab.State, "bin", "acrouter")
	uid, gid, _ := unprivIDs()
	out, err := lab.Exec(ctx, lab.NSRtr, "setpriv", fmt.Sprintf("--reuid=%d", uid), fmt.Sprintf("--regid=%d", gid), "--clear-groups", "--",
		"timeout", "20", bin, "--server", lab.Server, "--hub", lab.Hub, "--user", lab.RouterUser,
		"--password-file", filepath.Join(a.dir, "password"), "--state-dir", filepath.Join(a.dir, "state2"), "--status", lab.RtrIP.String()+":8770")
	if err == nil || !strings.Contains(out, "status.token_file") {
		t.Errorf("acrouter with a non-loopback status API and no token: err=%v\n%s", err, out)
	}

	// The password appears nowhere.
	pw := lab.RouterPassword
	var where []string
	for _, p := range []string{"/", "/status", "/sessions", "/leases", "/metrics"} {
		_, b, err := a.get(ctx, p, token)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), pw) {
			where = append(where, "GET "+p)
		}
	}
	for _, f := range []string{"cmdline", "environ"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", a.pid(), f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "cmdline" && !strings.Contains(string(b), "--password-file") {
			t.Fatalf("/proc/%d/cmdline is not acrouter's: %q", a.pid(), b)
		}
		if strings.Contains(string(b), pw) {
			where = append(where, "/proc/pid/"+f)
		}
	}
	// A reconnect and a refused flow put more into the (debug) log first.
	if _, err := lab.KillConns(ctx, lab.RtrIP.String()); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, "reconnect logged", func() bool {
		return strings.Count(a.proc.Log(), "logged in") >= 2 || strings.Contains(a.proc.Log(), "resumed session")
	}); err != nil {
		t.Fatal(err)
	}
	log := a.proc.Log()
	if strings.Contains(log, pw) {
		where = append(where, "log")
	}
	if len(where) > 0 {
		t.Errorf("the hub password appears in: %s", strings.Join(where, ", "))
	}
	t.Logf("password absent from the %d-byte debug log, 5 API documents, argv and environment; status API: 401 without/with a wrong token from the LAN and from hub clients", len(log))
}
