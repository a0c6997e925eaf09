//go:build interop

package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestForwardInterop: inbound port forwarding and the host-loopback alias
// through the real server. acrouter (uid nobody, in the router namespace)
// forwards 10.77.0.2:18022/tcp and :18053/udp to services in the client
// namespace (reserved DHCP address 192.168.30.50), and leads the alias
// 192.168.30.2 to the router namespace's 127.0.0.1.
//
// Configuration keys assumed (cmd/acrouter, owned by the lead):
// router.forwards (flag --forward, repeatable) and router.loopback_alias
// (flag --loopback-alias).
func TestForwardInterop(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	const (
		clientIP  = "192.168.30.50"
		alias     = "192.168.30.2"
		fwdTCP    = 18022
		fwdUDP    = 18053
		svcTCP    = 2222
		svcUDP    = 2253
		loopSvc   = 18080 // on the router namespace's 127.0.0.1
		loopNone  = 18081 // nothing listens
		loopDeny  = 18082 // listens, denied by an ACL rule on the alias
		routerLAN = "10.77.0.2"
	)
	mac, err := lab.Exec(ctx, lab.NSCLab, "cat", "/sys/class/net/eth0/address")
	if err != nil {
		t.Fatal(err)
	}
	mac = strings.TrimSpace(mac)

	dir, err := lab.UnprivilegedDir("acrouter-forward-cfg")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "acrouter.toml")
	toml := fmt.Sprintf(`[router]
forwards = ["tcp 0.0.0.0:%d -> %s:%d", "udp 0.0.0.0:%d -> %s:%d"]
loopback_alias = %q
rules = ["deny tcp to %s port %d"]

[dhcp]
reservations = ["%s=%s"]
`, fwdTCP, clientIP, svcTCP, fwdUDP, clientIP, svcUDP, alias, alias, loopDeny, mac, clientIP)
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}

	// Services: TCP and UDP echo in the client namespace, TCP echo on the
	// router namespace's loopback (one allowed, one denied by the ACL).
	echoTCP := func(ns, addr string) {
		ln, err := ListenInNS(ns, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					defer c.Close()
					io.Copy(c, c)
					c.(*net.TCPConn).CloseWrite()
				})
			}
		})
		t.Cleanup(func() { ln.Close(); wg.Wait() })
	}
	echoTCP(lab.NSCLab, fmt.Sprintf("0.0.0.0:%d", svcTCP))
	echoTCP(lab.NSRtr, fmt.Sprintf("127.0.0.1:%d", loopSvc))
	echoTCP(lab.NSRtr, fmt.Sprintf("127.0.0.1:%d", loopDeny))
	pc, err := ListenPacketInNS(lab.NSCLab, "udp", fmt.Sprintf("0.0.0.0:%d", svcUDP))
	if err != nil {
		t.Fatal(err)
	}
	udpDone := make(chan struct{})
	go func() {
		defer close(udpDone)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-udpDone })

	const token = "lab-forward-token-7c2e"
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	uid, gid, err := unprivIDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tokenFile, uid, gid); err != nil {
		t.Fatal(err)
	}
	r := startAcrouter(t, ctx, "acrouter-forward", "--config", cfg, "--status-token-file", tokenFile)
	// api calls the status API inside the router namespace; it returns the
	// HTTP status code and the body.
	api := func(method, path, tok, body string) (string, string) {
		t.Helper()
		args := []string{"curl", "-sS", "-m", "10", "-X", method, "-w", "\n%{http_code}"}
		if tok != "" {
			args = append(args, "-H", "Authorization: Bearer "+tok)
		}
		if body != "" {
			args = append(args, "-H", "Content-Type: application/json", "-d", body)
		}
		out, err := lab.Exec(ctx, lab.NSRtr, append(args, r.statusURL+path)...)
		if err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, out)
		}
		out = strings.TrimRight(out, "\n")
		i := strings.LastIndexByte(out, '\n')
		return out[i+1:], out[:max(i, 0)]
	}
	lease, err := lab.DHCP(ctx, "clab")
	if err != nil {
		t.Fatalf("DHCP: %v\n%s", err, lastLines(r.proc.Log(), 10))
	}
	if lease["LEASE_IP"] != clientIP {
		t.Fatalf("lease %s, want the reservation %s", lease["LEASE_IP"], clientIP)
	}

	t.Run("TCPForwardFromLAN", func(t *testing.T) {
		t0 := time.Now()
		c, err := DialInNS(lab.NSLAN)(ctx, "tcp", fmt.Sprintf("%s:%d", routerLAN, fwdTCP))
		if err != nil {
			t.Fatalf("connect to the forward: %v\n%s", err, lastLines(r.proc.Log(), 10))
		}
		defer c.Close()
		// The first bytes make acrouter dial the client: time to the first echo.
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("first echo: %v\n%s", err, lastLines(r.proc.Log(), 10))
		}
		t.Logf("connect + first echo through the forward: %v", time.Since(t0).Round(time.Millisecond))
		t1 := time.Now()
		msg := bytes.Repeat([]byte("inbound-forward "), 1<<16) // 1 MiB
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(msg)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			werr <- err
		}()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(c) // the echo, then the service's FIN
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo through the forward: %d of %d bytes, %v\n%s", len(got), len(msg), err, lastLines(r.proc.Log(), 10))
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		// Informational only (no timing assertions). Bulk traffic in both
		// directions at once varies widely on this lab, through a forward and
		// through the NAT alike (40 ms to seconds for 4 MiB each way): upload
		// frames are lost at the local bridge and some losses end in RTOs.
		d := time.Since(t1)
		t.Logf("echoed 1 MiB through the forward in %v", d.Round(time.Millisecond))
	})

	t.Run("UDPForwardFromLAN", func(t *testing.T) {
		c, err := DialInNS(lab.NSLAN)(ctx, "udp", fmt.Sprintf("%s:%d", routerLAN, fwdUDP))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 2048)
		var n int
		for i := 0; i < 5; i++ { // UDP: bounded retries
			if _, err := c.Write([]byte("udp-forward")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if n, err = c.Read(buf); err == nil {
				break
			}
		}
		if string(buf[:n]) != "re:udp-forward" {
			t.Fatalf("UDP through the forward: %q, %v", buf[:n], err)
		}
	})

	t.Run("LoopbackAliasFromClient", func(t *testing.T) {
		dial := DialInNS(lab.NSCLab)
		c, err := dial(ctx, "tcp", fmt.Sprintf("%s:%d", alias, loopSvc))
		if err != nil {
			t.Fatalf("connect to the alias: %v\n%s", err, lastLines(r.proc.Log(), 10))
		}
		defer c.Close()
		c.Write([]byte("to the host's loopback"))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if got, err := io.ReadAll(c); err != nil || string(got) != "to the host's loopback" {
			t.Fatalf("echo through the alias: %q, %v", got, err)
		}
		// Nothing on 127.0.0.1:loopNone: refused (RST), not a hang.
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if c2, err := dial(dctx, "tcp", fmt.Sprintf("%s:%d", alias, loopNone)); err == nil {
			c2.Close()
			t.Error("a closed loopback port was reached through the alias")
		} else if !strings.Contains(err.Error(), "refused") {
			t.Errorf("closed loopback port through the alias: %v; want connection refused", err)
		}
		// The ACL sees the alias: its deny rule holds although a service listens.
		dctx2, cancel2 := context.WithTimeout(ctx, 5*time.Second)
		defer cancel2()
		if c3, err := dial(dctx2, "tcp", fmt.Sprintf("%s:%d", alias, loopDeny)); err == nil {
			c3.Close()
			t.Error("a port denied by the ACL was reached through the alias")
		} else if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("denied alias port: no answer (%v); want an ICMP rejection", err)
		}
	})

	t.Run("RuntimeAddRemove", func(t *testing.T) {
		rule := fmt.Sprintf("tcp 0.0.0.0:18023 -> %s:%d", clientIP, svcTCP)
		body := fmt.Sprintf(`{"rule": %q}`, rule)
		if code, out := api("POST", "/forwards", "", body); code != "401" {
			t.Fatalf("POST /forwards without the token: %s %s", code, out)
		}
		if code, out := api("POST", "/forwards", token, body); code != "200" || !strings.Contains(out, "18023") {
			t.Fatalf("POST /forwards: %s %s", code, out)
		}
		dial := DialInNS(lab.NSLAN)
		addr := routerLAN + ":18023"
		c, err := dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("connect to the forward added at run time: %v", err)
		}
		c.Write([]byte("runtime"))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != "runtime" {
			t.Fatalf("echo through the runtime forward: %q %v", got, err)
		}
		if code, out := api("DELETE", "/forwards", token, body); code != "200" || strings.Contains(out, "18023") {
			t.Fatalf("DELETE /forwards: %s %s", code, out)
		}
		if c, err := dial(ctx, "tcp", addr); err == nil {
			c.Close()
			t.Fatal("the removed forward still accepts connections")
		} else if !strings.Contains(err.Error(), "refused") {
			t.Errorf("connect after DELETE: %v; want connection refused", err)
		}
		if code, out := api("DELETE", "/forwards", token, body); code == "200" || !strings.Contains(out, "no such forward") {
			t.Errorf("second DELETE: %s %s", code, out)
		}
	})

	t.Run("StatusForwards", func(t *testing.T) {
		var fw []struct {
			Rule        string `json:"rule"`
			Connections uint64 `json:"connections"`
		}
		code, out := api("GET", "/forwards", token, "")
		if code != "200" {
			t.Fatalf("GET /forwards: %s %s", code, out)
		}
		if err := json.Unmarshal([]byte(out), &fw); err != nil {
			t.Fatalf("GET /forwards: %v: %s", err, out)
		}
		want := map[string]bool{
			fmt.Sprintf("tcp 0.0.0.0:%d -> %s:%d", fwdTCP, clientIP, svcTCP): false,
			fmt.Sprintf("udp 0.0.0.0:%d -> %s:%d", fwdUDP, clientIP, svcUDP): false,
		}
		for _, f := range fw {
			if _, ok := want[f.Rule]; ok {
				want[f.Rule] = f.Connections >= 1
			}
		}
		for rule, used := range want {
			if !used {
				t.Errorf("GET /forwards: %s missing or without connections: %+v", rule, fw)
			}
		}
	})
}
