//go:build interop

package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/acrouter/acrouter/vpnlink"
)

// etherTypeLab is the IEEE "local experimental" EtherType 1; the test frames
// use it so that nothing else on the hub mistakes them for real traffic.
const etherTypeLab = 0x88b5

// recordingDial wraps DialInNS(ns) and remembers the local address of every
// connection it made (to kill exactly those with ss -K).
type recordingDial struct {
	ns    string
	mu    sync.Mutex
	local []string
}

func (r *recordingDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := DialInNS(r.ns)(ctx, network, addr)
	if err == nil {
		r.mu.Lock()
		r.local = append(r.local, c.LocalAddr().String())
		r.mu.Unlock()
	}
	return c, err
}

func (r *recordingDial) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.local) == 0 {
		return ""
	}
	return r.local[len(r.local)-1]
}

// linkConfig is a vpnlink.Config for the lab's hub LAB, dialing from the router
// namespace (a non-local address, so hub policies apply).
func linkConfig(t *testing.T, user, password string) vpnlink.Config {
	t.Helper()
	return vpnlink.Config{
		Server:     lab.Server,
		Hub:        lab.Hub,
		User:       user,
		Password:   password,
		StateDir:   t.TempDir(),
		Dial:       DialInNS(lab.NSRtr),
		Logger:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
		MinBackoff: 100 * time.Millisecond,
		MaxBackoff: 2 * time.Second,
		ClientName: "acrouter lab " + t.Name(),
	}
}

// dialLink logs in (bounded) and closes the client at the end of the test.
func dialLink(t *testing.T, cfg vpnlink.Config) *vpnlink.Client {
	t.Helper()
	ctx := testCtx(t, 20*time.Second)
	t0 := time.Now()
	c, err := vpnlink.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("vpnlink.Dial %s@%s hub %s: %v", cfg.User, cfg.Server, cfg.Hub, err)
	}
	st := c.Status()
	t.Logf("logged in as %s in %v: session %s, bridge mode %v", cfg.User, time.Since(t0).Round(time.Millisecond), st.SessionName, st.BridgeMode)
	t.Cleanup(func() { // Close may already have happened (tapFrames, the test itself)
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Logf("Close %s: %v", st.SessionName, err)
		}
	})
	return c
}

// frameTap reads every frame of a client on its own goroutine and hands the
// lab's test frames (etherTypeLab) to Expect. Close of the client ends it; the
// test's cleanup waits for it.
type frameTap struct {
	frames chan []byte
	done   chan struct{}
}

func tapFrames(t *testing.T, c *vpnlink.Client) *frameTap {
	ft := &frameTap{frames: make(chan []byte, 256), done: make(chan struct{})}
	go func() {
		defer close(ft.done)
		buf := make([]byte, 2048)
		for {
			n, err := c.ReadFrame(buf)
			if err != nil {
				return // closed
			}
			if n >= 14 && binary.BigEndian.Uint16(buf[12:14]) == etherTypeLab {
				select {
				case ft.frames <- bytes.Clone(buf[:n]):
				default: // test not reading: drop
				}
			}
		}
	}()
	// registered after dialLink's cleanup, so it runs first: close, then wait
	t.Cleanup(func() {
		_ = c.Close()
		select {
		case <-ft.done:
		case <-time.After(10 * time.Second):
			t.Errorf("ReadFrame did not return within 10s of Close")
		}
	})
	return ft
}

func testFrame(dst, src net.HardwareAddr, nonce []byte) []byte {
	f := make([]byte, 0, 64)
	f = append(f, dst...)
	f = append(f, src...)
	f = binary.BigEndian.AppendUint16(f, etherTypeLab)
	f = append(f, nonce...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

func newNonce(t *testing.T) []byte {
	b := make([]byte, 16)
	rand.Read(b)
	return b
}

// sendUntilSeen writes frame from `from` every 250 ms until `to` reads a test
// frame carrying nonce (bounded by ctx); returns how long it took.
func sendUntilSeen(ctx context.Context, from *vpnlink.Client, to *frameTap, frame, nonce []byte) (time.Duration, error) {
	t0 := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	sends := 0
	for {
		if err := from.WriteFrames([][]byte{frame}); err != nil {
			return 0, fmt.Errorf("WriteFrames: %w", err)
		}
		sends++
	wait:
		for {
			select {
			case f := <-to.frames:
				if bytes.Contains(f, nonce) {
					return time.Since(t0), nil
				}
			case <-tick.C:
				break wait
			case <-ctx.Done():
				return 0, fmt.Errorf("frame not received after %d sends in %v: %w", sends, time.Since(t0), ctx.Err())
			}
		}
	}
}

var (
	broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	macA      = net.HardwareAddr{0x02, 0xac, 0x00, 0x00, 0xaa, 0x01}
	macB      = net.HardwareAddr{0x02, 0xac, 0x00, 0x00, 0xbb, 0x01}
)

// exchange checks frames both ways between a and b: a broadcast from a, then a
// unicast from b to a's MAC (which the hub learned from the broadcast).
func exchange(t *testing.T, what string, a, b *vpnlink.Client, ta, tb *frameTap) {
	t.Helper()
	ctx := testCtx(t, 15*time.Second)
	n1 := newNonce(t)
	d, err := sendUntilSeen(ctx, a, tb, testFrame(broadcast, macA, n1), n1)
	if err != nil {
		t.Fatalf("%s: broadcast a→b: %v", what, err)
	}
	t.Logf("%s: broadcast a→b seen after %v", what, d.Round(time.Microsecond))
	n2 := newNonce(t)
	d, err = sendUntilSeen(ctx, b, ta, testFrame(macA, macB, n2), n2)
	if err != nil {
		t.Fatalf("%s: unicast b→a: %v", what, err)
	}
	t.Logf("%s: unicast b→a seen after %v", what, d.Round(time.Microsecond))
}

// waitStatus polls Status until cond holds (bounded by ctx).
func waitStatus(ctx context.Context, c *vpnlink.Client, cond func(vpnlink.Status) bool) (vpnlink.Status, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st := c.Status()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("status condition not met: %w; last status %+v", ctx.Err(), st)
		case <-tick.C:
		}
	}
}

func sessionNames(ss []Session) []string {
	var n []string
	for _, s := range ss {
		n = append(n, s.Name)
	}
	return n
}

func hasSession(ss []Session, name string) bool {
	for _, s := range ss {
		if s.Name == name {
			return true
		}
	}
	return false
}

// (1) A bridge-mode login from the router namespace appears in SessionList,
// SessionGet shows bridge/router mode, and Close removes the session.
func TestVPNLinkLogin(t *testing.T) {
	c := dialLink(t, linkConfig(t, lab.RouterUser, lab.RouterPassword))
	st := c.Status()
	t.Logf("server: product %q version %v build %v; cert SHA-256 %s", st.ServerProduct, st.ServerVersion, st.ServerBuild, st.CertSHA256)
	if !st.BridgeMode {
		t.Errorf("Status().BridgeMode = false for user %s", lab.RouterUser)
	}
	if st.SessionName == "" {
		t.Fatal("Status().SessionName empty")
	}
	ctx := testCtx(t, 30*time.Second)
	t0 := time.Now()
	ss, err := lab.WaitSessions(ctx, lab.Hub, func(ss []Session) bool { return hasSession(ss, st.SessionName) })
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if s.Name == st.SessionName {
			t.Logf("SessionList after %v: %+v", time.Since(t0).Round(time.Millisecond), s)
			if s.User != lab.RouterUser {
				t.Errorf("session user %q, want %q", s.User, lab.RouterUser)
			}
			if !strings.Contains(s.SourceHost, lab.RtrIP.String()) {
				t.Errorf("session source %q, want %s (a non-local session)", s.SourceHost, lab.RtrIP)
			}
		}
	}
	g, err := lab.SessionGet(ctx, lab.Hub, st.SessionName)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SessionGet: Bridge / Router Mode=%q, TCP connections=%q, Encryption=%q, client product=%q",
		g["Bridge / Router Mode"], g["Number of TCP Connections"], g["Encryption"], g["Client Product Name (Reported)"])
	if g["Bridge / Router Mode"] != "Yes" {
		t.Errorf("SessionGet %s: Bridge / Router Mode = %q, want Yes", st.SessionName, g["Bridge / Router Mode"])
	}
	t0 = time.Now()
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("Close took %v", time.Since(t0).Round(time.Millisecond))
	// SoftEther has no in-band goodbye: the server keeps a session whose TCP
	// connections are gone for its timeout (default 20 s) so that it can be
	// resumed (protocol notes §7.3). Bound: timeout + slack.
	wctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	if _, err := lab.WaitSessions(wctx, lab.Hub, func(ss []Session) bool { return !hasSession(ss, st.SessionName) }); err != nil {
		t.Fatalf("session still listed 45 s after Close: %v", err)
	}
	t.Logf("session gone from SessionList %v after Close", time.Since(t0).Round(time.Millisecond))
}

// (2) Two sessions on hub LAB exchange frames through the real hub.
func TestVPNLinkFrames(t *testing.T) {
	a := dialLink(t, linkConfig(t, lab.RouterUser, lab.RouterPassword))
	b := dialLink(t, linkConfig(t, lab.ClientUser, lab.ClientPassword))
	ta, tb := tapFrames(t, a), tapFrames(t, b)
	exchange(t, "fresh sessions", a, b, ta, tb)
}

// (3) Login errors are typed.
func TestVPNLinkLoginErrors(t *testing.T) {
	cases := []struct {
		name  string
		mod   func(*vpnlink.Config)
		want  error
		check string // substring the message should carry
	}{
		{"WrongPassword", func(c *vpnlink.Config) { c.Password = "not-" + c.Password }, vpnlink.ErrAuthFailed, lab.RouterUser},
		{"UnknownHub", func(c *vpnlink.Config) { c.Hub = "NOSUCHHUB" }, vpnlink.ErrHubNotFound, "NOSUCHHUB"},
		{"NoBridgePolicy", func(c *vpnlink.Config) { c.User, c.Password = lab.NoBridgeUser, lab.NoBridgePassword }, vpnlink.ErrBridgeModeDenied, lab.NoBridgeUser},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := linkConfig(t, lab.RouterUser, lab.RouterPassword)
			tc.mod(&cfg)
			ctx := testCtx(t, 20*time.Second)
			t0 := time.Now()
			c, err := vpnlink.Dial(ctx, cfg)
			if err == nil {
				c.Close()
				t.Fatalf("Dial succeeded, want %v", tc.want)
			}
			t.Logf("after %v: %v", time.Since(t0).Round(time.Millisecond), err)
			if !errors.Is(err, tc.want) {
				t.Fatalf("errors.Is(err, %v) = false; err = %v", tc.want, err)
			}
			var se *vpnlink.ServerError
			if !errors.As(err, &se) {
				t.Errorf("error is not a *vpnlink.ServerError: %T", err)
			} else {
				t.Logf("server error code %d", se.Code)
			}
			if !vpnlink.IsPermanent(err) {
				t.Errorf("IsPermanent = false for %v", err)
			}
			if !strings.Contains(err.Error(), tc.check) {
				t.Errorf("message %q does not name %q", err, tc.check)
			}
			if strings.Contains(err.Error(), cfg.Password) {
				t.Errorf("message %q contains the password", err)
			}
		})
	}
}

// (4) A TCP drop is survived by resuming the SAME session (additional_connect
// with the session key); frames flow again and the link stays up. The drop is
// made with ss -K on the server's side (the server sees the socket die; the
// client gets a RST) and, separately, on the client's side.
//
// SoftEther before 5.02.5185 built with OpenSSL 3 — Debian 12's 5.01.9674 —
// accepts additional_connect for such a session and then closes the new socket
// at its first read (stale OpenSSL error queue; fixed upstream in b2ec1bd5 and
// 98852b77, first in tag 5.02.5185). SoftEther's own cascade client cannot
// resume there either: it logs in to a new session (checked in this lab with
// vpnbridge, a cascade with /MAXTCP:1 and ss -K). On such a server the test
// requires vpnlink's fallback instead: one resume attempt, then a new login,
// frames flowing again and a stable link. On a server without the bug it
// requires the same session.
func TestVPNLinkResumeAfterTCPKill(t *testing.T) {
	t.Run("ServerSide", func(t *testing.T) {
		testResume(t, func(ctx context.Context, local string) (int, error) { return lab.KillConns(ctx, local) })
	})
	t.Run("ClientSide", func(t *testing.T) {
		testResume(t, func(ctx context.Context, local string) (int, error) { return lab.KillClientConns(ctx, local) })
	})
}

// serverCanResume reports whether the lab's server can resume sessions: not
// when it is older than 5.02.5185 and its binary links OpenSSL 3.
func serverCanResume(t *testing.T, st vpnlink.Status) (bool, string) {
	old := st.ServerVersion < 502 || (st.ServerVersion == 502 && st.ServerBuild < 5185)
	ldd, err := exec.Command("ldd", lab.Env["LAB_VPNSERVER_BIN"]).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", lab.Env["LAB_VPNSERVER_BIN"], err)
	}
	ssl3 := strings.Contains(string(ldd), "libssl.so.3")
	why := fmt.Sprintf("server %d build %d, OpenSSL 3: %v", st.ServerVersion, st.ServerBuild, ssl3)
	return !(old && ssl3), why
}

func testResume(t *testing.T, kill func(ctx context.Context, local string) (int, error)) {
	rd := &recordingDial{ns: lab.NSRtr}
	cfgA := linkConfig(t, lab.RouterUser, lab.RouterPassword)
	cfgA.Dial = rd.dial
	a := dialLink(t, cfgA)
	b := dialLink(t, linkConfig(t, lab.ClientUser, lab.ClientPassword))
	ta, tb := tapFrames(t, a), tapFrames(t, b)
	exchange(t, "before the kill", a, b, ta, tb)

	before := a.Status()
	canResume, why := serverCanResume(t, before)
	local := rd.last()
	ctx := testCtx(t, 40*time.Second)
	prev, err := lab.SessionsOf(ctx, lab.Hub, lab.RouterUser)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	n, err := kill(ctx, local)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed %d connection(s) of %s (client %s); %s → resume expected: %v", n, before.SessionName, local, why, canResume)
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, err := waitStatus(wctx, a, func(s vpnlink.Status) bool {
		if s.State != vpnlink.StateConnected {
			return false
		}
		if canResume {
			return s.Resumes > before.Resumes
		}
		return s.Logins > before.Logins
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("recovered after %v: resumes %d→%d, logins %d→%d, reconnects %d→%d, session %s→%s, last error %v",
		time.Since(t0).Round(time.Millisecond), before.Resumes, st.Resumes, before.Logins, st.Logins,
		before.Reconnects, st.Reconnects, before.SessionName, st.SessionName, st.LastError)
	if rd.last() == local {
		t.Errorf("no new TCP connection was dialed")
	}
	ss, err := lab.SessionsOf(ctx, lab.Hub, lab.RouterUser)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sessions of %s on the server: before %v, after %v", lab.RouterUser, sessionNames(prev), sessionNames(ss))
	if canResume {
		if st.Resumes != before.Resumes+1 || st.Logins != before.Logins {
			t.Errorf("resumes %d→%d, logins %d→%d: want one resume and no new login", before.Resumes, st.Resumes, before.Logins, st.Logins)
		}
		if st.SessionName != before.SessionName {
			t.Errorf("session name changed %s → %s: the session was not resumed", before.SessionName, st.SessionName)
		}
		for _, s := range ss {
			if !hasSession(prev, s.Name) {
				t.Errorf("a new session %s appeared: the client logged in again instead of resuming", s.Name)
			}
		}
	} else {
		if st.Logins != before.Logins+1 || st.Reconnects > before.Reconnects+2 {
			t.Errorf("logins %d→%d, reconnects %d→%d: want one new login after at most one broken resume",
				before.Logins, st.Logins, before.Reconnects, st.Reconnects)
		}
		if st.SessionName == before.SessionName || !hasSession(ss, st.SessionName) {
			t.Errorf("new session %s not on the server (%v)", st.SessionName, sessionNames(ss))
		}
	}
	exchange(t, "after the recovery", a, b, ta, tb)
	if end := a.Status(); end.Reconnects != st.Reconnects || end.SessionName != st.SessionName {
		t.Errorf("link not stable after the recovery: reconnects %d→%d, session %s→%s, last error %v",
			st.Reconnects, end.Reconnects, st.SessionName, end.SessionName, end.LastError)
	}
}

// (5) After a vpnserver restart the client logs in again (new session) within
// 30 s and frames flow again.
func TestVPNLinkReloginAfterServerRestart(t *testing.T) {
	a := dialLink(t, linkConfig(t, lab.RouterUser, lab.RouterPassword))
	b := dialLink(t, linkConfig(t, lab.ClientUser, lab.ClientPassword))
	ta, tb := tapFrames(t, a), tapFrames(t, b)
	exchange(t, "before the restart", a, b, ta, tb)
	beforeA, beforeB := a.Status(), b.Status()

	ctx := testCtx(t, 90*time.Second)
	t0 := time.Now()
	if err := lab.RestartServer(ctx); err != nil {
		t.Fatal(err)
	}
	tRestart := time.Since(t0)
	relogin := func(c *vpnlink.Client, before vpnlink.Status) vpnlink.Status {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		st, err := waitStatus(wctx, c, func(s vpnlink.Status) bool {
			return s.State == vpnlink.StateConnected && s.SessionName != "" && s.SessionName != before.SessionName
		})
		if err != nil {
			t.Fatalf("no new login within 30 s of the restart: %v", err)
		}
		return st
	}
	stA := relogin(a, beforeA)
	stB := relogin(b, beforeB)
	t.Logf("server restart took %v; logged in again %v after it was stopped: a %s→%s (reconnects %d→%d), b %s→%s",
		tRestart.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), beforeA.SessionName, stA.SessionName,
		beforeA.Reconnects, stA.Reconnects, beforeB.SessionName, stB.SessionName)
	if stA.Reconnects <= beforeA.Reconnects || stA.Logins <= beforeA.Logins {
		t.Errorf("Reconnects %d→%d, Logins %d→%d: want both to increase", beforeA.Reconnects, stA.Reconnects, beforeA.Logins, stA.Logins)
	}
	if !stA.BridgeMode {
		t.Errorf("BridgeMode false after the re-login")
	}
	if _, err := lab.WaitSessions(ctx, lab.Hub, func(ss []Session) bool { return hasSession(ss, stA.SessionName) }); err != nil {
		t.Fatal(err)
	}
	exchange(t, "after the restart", a, b, ta, tb)
}

// serverFingerprint fetches the server certificate over TLS from the router
// namespace, independently of vpnlink.
func serverFingerprint(t *testing.T) string {
	ctx := testCtx(t, 10*time.Second)
	raw, err := DialInNS(lab.NSRtr)(ctx, "tcp", lab.Server)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	defer c.Close()
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(c.ConnectionState().PeerCertificates[0].Raw)
	return hex.EncodeToString(sum[:])
}

func normFP(s string) string { return strings.ToLower(strings.ReplaceAll(s, ":", "")) }

// filesContaining lists the files under dir whose content contains s (any case, colons ignored).
func filesContaining(t *testing.T, dir, s string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(normFP(string(b)), normFP(s)) {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// (6) Trust on first use: the first login remembers the server certificate in
// StateDir; a wrong pin fails with CertMismatchError naming both fingerprints;
// a changed server certificate fails against the remembered one. Runs last:
// it regenerates the server certificate.
func TestVPNLinkTOFU(t *testing.T) {
	real := serverFingerprint(t)
	t.Logf("server certificate SHA-256 (own TLS handshake): %s", real)
	cfg := linkConfig(t, lab.RouterUser, lab.RouterPassword)
	stateDir := cfg.StateDir

	t.Run("FirstUseRemembers", func(t *testing.T) {
		c := dialLink(t, cfg)
		st := c.Status()
		if normFP(st.CertSHA256) != real {
			t.Errorf("Status().CertSHA256 = %s, want %s", st.CertSHA256, real)
		}
		if f := filesContaining(t, stateDir, real); len(f) == 0 {
			t.Fatalf("no file in StateDir %s holds the fingerprint %s", stateDir, real)
		} else {
			t.Logf("fingerprint stored in %v", f)
		}
		c.Close()
		dialLink(t, cfg) // second use: the remembered certificate matches
	})

	t.Run("WrongPin", func(t *testing.T) {
		pcfg := linkConfig(t, lab.RouterUser, lab.RouterPassword)
		sum := sha256.Sum256([]byte("not the server certificate"))
		wrong := hex.EncodeToString(sum[:])
		var colon []string
		for i := 0; i < len(wrong); i += 2 {
			colon = append(colon, strings.ToUpper(wrong[i:i+2]))
		}
		pcfg.CertSHA256 = strings.Join(colon, ":") // the colon form users copy from tools
		ctx := testCtx(t, 20*time.Second)
		c, err := vpnlink.Dial(ctx, pcfg)
		if err == nil {
			c.Close()
			t.Fatal("Dial with a wrong pin succeeded")
		}
		t.Logf("wrong pin: %v", err)
		var cm *vpnlink.CertMismatchError
		if !errors.As(err, &cm) {
			t.Fatalf("error %T is not a *vpnlink.CertMismatchError: %v", err, err)
		}
		if normFP(cm.Want) != wrong || normFP(cm.Got) != real {
			t.Errorf("CertMismatchError Want=%s Got=%s, want Want=%s Got=%s", cm.Want, cm.Got, wrong, real)
		}
		if msg := normFP(err.Error()); !strings.Contains(msg, wrong) || !strings.Contains(msg, real) {
			t.Errorf("message does not name both fingerprints: %v", err)
		}
		if !vpnlink.IsPermanent(err) {
			t.Errorf("IsPermanent = false for a certificate mismatch")
		}
	})

	t.Run("RightPin", func(t *testing.T) {
		pcfg := linkConfig(t, lab.RouterUser, lab.RouterPassword)
		pcfg.CertSHA256 = real
		dialLink(t, pcfg)
	})

	t.Run("ChangedCertificate", func(t *testing.T) {
		ctx := testCtx(t, 30*time.Second)
		if _, err := lab.VPNCmd(ctx, "/CMD", "ServerCertRegenerate", "acrouter-lab-regenerated"); err != nil {
			t.Fatal(err)
		}
		now := serverFingerprint(t)
		if now == real {
			t.Fatalf("ServerCertRegenerate did not change the certificate")
		}
		t.Logf("server certificate regenerated: %s", now)
		c, err := vpnlink.Dial(ctx, cfg) // same StateDir: remembers the old certificate
		if err == nil {
			c.Close()
			t.Fatal("Dial succeeded although the remembered certificate changed")
		}
		t.Logf("changed certificate: %v", err)
		var cm *vpnlink.CertMismatchError
		if !errors.As(err, &cm) {
			t.Fatalf("error %T is not a *vpnlink.CertMismatchError: %v", err, err)
		}
		if normFP(cm.Want) != real || normFP(cm.Got) != now {
			t.Errorf("CertMismatchError Want=%s Got=%s, want Want=%s Got=%s", cm.Want, cm.Got, real, now)
		}
	})
}
