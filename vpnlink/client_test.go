package vpnlink_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

func newHub(t testing.TB, cfg vpnlinktest.Config) *vpnlinktest.Hub {
	t.Helper()
	if cfg.Users == nil {
		cfg.Users = []vpnlinktest.User{
			{Name: "alice", Password: "secret"},
			{Name: "bob", Password: "hunter2"},
			{Name: "nobridge", Password: "pw", NoBridge: true, NoRouting: true},
			{Name: "clientmode", Password: "pw", NoBridge: true, NoRouting: true, ClientModeOnly: true},
			{Name: "radius", Password: "plain", PlainOnly: true},
		}
	}
	h, err := vpnlinktest.NewHub(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func clientCfg(t testing.TB, h *vpnlinktest.Hub, user, pw string) vpnlink.Config {
	return vpnlink.Config{
		Server: "hub.test:443", Hub: "DEFAULT", User: user, Password: pw,
		Dial: h.Dial, CertSHA256: h.CertSHA256(), Logger: testLogger(t),
	}
}

func dial(t testing.TB, cfg vpnlink.Config) *vpnlink.Client {
	t.Helper()
	c, err := vpnlink.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// frame builds an Ethernet frame; the payload is tagged with i.
func frame(dst, src byte, i int) []byte {
	f := []byte{0x02, 0, 0, 0, 0, dst, 0x02, 0, 0, 0, 0, src, 0x08, 0x00}
	if dst == 0xff {
		copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	}
	return fmt.Appendf(f, "payload %06d %s", i, bytes.Repeat([]byte{'x'}, 40))
}

func TestLoginAndStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		c := dial(t, clientCfg(t, h, "Alice", "secret"))
		st := c.Status()
		if st.State != vpnlink.StateConnected || st.SessionName != "SID-ALICE-1" || !st.BridgeMode ||
			st.ServerBuild != 9674 || st.ServerVersion != 501 || st.CertSHA256 != h.CertSHA256() ||
			st.Timeout != 20*time.Second || st.Logins != 1 || st.LastError != nil {
			t.Fatalf("status = %+v", st)
		}
		ss := h.Sessions()
		if len(ss) != 1 || ss[0].Name != "SID-ALICE-1" || !ss[0].BridgeMode || ss[0].Connections != 1 {
			t.Fatalf("hub sessions = %+v", ss)
		}
		// Keep-alives flow both ways while idle.
		time.Sleep(30 * time.Second)
		synctest.Wait()
		st = c.Status()
		if st.KeepAlivesIn < 3 || st.KeepAlivesOut < 3 || st.State != vpnlink.StateConnected {
			t.Fatalf("after 30 s idle: %+v", st)
		}
		c.Close()
		if st := c.Status(); st.State != vpnlink.StateClosed {
			t.Fatalf("state after Close = %v", st.State)
		}
		if _, err := c.ReadFrame(make([]byte, 1600)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadFrame after Close: %v", err)
		}
		if err := c.WriteFrames([][]byte{frame(0xff, 1, 0)}); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("WriteFrames after Close: %v", err)
		}
	})
}

func TestLoginErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mod       func(*vpnlink.Config)
		reject    uint32
		want      error
		code      uint32 // 0: not a ServerError
		permanent bool
		text      string
	}{
		{"wrong password", func(c *vpnlink.Config) { c.Password = "nope" }, 0, vpnlink.ErrAuthFailed, 9, true, "wrong user name or password"},
		{"unknown user", func(c *vpnlink.Config) { c.User = "mallory" }, 0, vpnlink.ErrAuthFailed, 9, true, "wrong user name or password"},
		{"unknown hub", func(c *vpnlink.Config) { c.Hub = "NOPE" }, 0, vpnlink.ErrHubNotFound, 8, true, `"NOPE" does not exist`},
		{"bridge denied", func(c *vpnlink.Config) { c.User, c.Password = "nobridge", "pw" }, 0, vpnlink.ErrBridgeModeDenied, 108, true, "NoBridge"},
		{"client mode only", func(c *vpnlink.Config) { c.User, c.Password = "clientmode", "pw" }, 0, vpnlink.ErrBridgeModeDenied, 0, true, "client mode"},
		{"radius user hashed", func(c *vpnlink.Config) { c.User, c.Password = "radius", "plain" }, 0, vpnlink.ErrAuthFailed, 9, true, ""},
		{"hub busy", nil, 16, vpnlink.ErrHubBusy, 16, false, "busy"},
		{"too many sessions", nil, 20, vpnlink.ErrTooManySessions, 20, false, "MultiLogins"},
		{"ip denied", nil, 109, vpnlink.ErrIPDenied, 109, true, "IP address"},
		{"access denied", nil, 12, vpnlink.ErrAccessDenied, 12, true, "access denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHub(t, vpnlinktest.Config{})
				h.RejectLogins(tc.reject)
				cfg := clientCfg(t, h, "alice", "secret")
				if tc.mod != nil {
					tc.mod(&cfg)
				}
				c, err := vpnlink.Dial(context.Background(), cfg)
				if err == nil {
					c.Close()
					t.Fatal("Dial succeeded")
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				var se *vpnlink.ServerError
				if gotSE := errors.As(err, &se); gotSE != (tc.code != 0) || (gotSE && se.Code != tc.code) {
					t.Fatalf("err = %#v, want ServerError code %d", err, tc.code)
				}
				if vpnlink.IsPermanent(err) != tc.permanent {
					t.Fatalf("IsPermanent(%v) = %v", err, !tc.permanent)
				}
				if !strings.Contains(err.Error(), tc.text) {
					t.Fatalf("message %q lacks %q", err, tc.text)
				}
				if strings.Contains(err.Error(), cfg.Password) && cfg.Password != "" {
					t.Fatalf("message leaks the password: %q", err)
				}
			})
		})
	}
}

func TestPlainPassword(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		cfg := clientCfg(t, h, "radius", "plain")
		cfg.Auth = vpnlink.AuthPlainPassword
		c := dial(t, cfg)
		if st := c.Status(); st.SessionName != "SID-RADIUS-1" {
			t.Fatalf("status %+v", st)
		}
	})
}

func TestCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		st, err := vpnlink.Check(context.Background(), clientCfg(t, h, "alice", "secret"))
		if err != nil || st.SessionName != "SID-ALICE-1" || !st.BridgeMode || st.State != vpnlink.StateConnected {
			t.Fatalf("Check = %+v, %v", st, err)
		}
		st, err = vpnlink.Check(context.Background(), clientCfg(t, h, "alice", "bad"))
		if !errors.Is(err, vpnlink.ErrAuthFailed) || !errors.Is(st.LastError, vpnlink.ErrAuthFailed) {
			t.Fatalf("Check(bad) = %+v, %v", st, err)
		}
	})
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []vpnlink.Config{
		{Hub: "h", User: "u"},
		{Server: "nocolon", Hub: "h", User: "u"},
		{Server: "h:1", Hub: "h", User: "u", CertSHA256: "abcd"},
		{Server: "h:1", Hub: "h", User: "u", Auth: 7},
	} {
		if _, err := vpnlink.Dial(context.Background(), cfg); !errors.Is(err, vpnlink.ErrConfig) || !vpnlink.IsPermanent(err) {
			t.Errorf("Dial(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

func TestCertPinMismatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		cfg := clientCfg(t, h, "alice", "secret")
		wrong := strings.Repeat("ab:", 31) + "ab"
		cfg.CertSHA256 = wrong
		_, err := vpnlink.Dial(context.Background(), cfg)
		var cm *vpnlink.CertMismatchError
		if !errors.As(err, &cm) || !vpnlink.IsPermanent(err) {
			t.Fatalf("err = %v, want CertMismatchError", err)
		}
		if cm.Got != h.CertSHA256() || !strings.Contains(err.Error(), h.CertSHA256()) ||
			!strings.Contains(err.Error(), strings.ReplaceAll(wrong, ":", "")) {
			t.Fatalf("message must name both fingerprints: %v", err)
		}
		// Upper case with colons is accepted as a pin.
		var sb strings.Builder
		for i, r := range strings.ToUpper(h.CertSHA256()) {
			if i > 0 && i%2 == 0 {
				sb.WriteByte(':')
			}
			sb.WriteRune(r)
		}
		cfg.CertSHA256 = sb.String()
		dial(t, cfg)
	})
}

func TestTrustOnFirstUse(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		h1 := newHub(t, vpnlinktest.Config{})
		cfg := clientCfg(t, h1, "alice", "secret")
		cfg.CertSHA256 = ""
		cfg.StateDir = dir
		c := dial(t, cfg)
		c.Close()
		b, err := os.ReadFile(filepath.Join(dir, vpnlink.KnownHostsFile))
		if err != nil || !strings.Contains(string(b), "hub.test:443 "+h1.CertSHA256()+"\n") {
			t.Fatalf("known servers file = %q, %v", b, err)
		}
		// Same server again: accepted from the file.
		dial(t, cfg).Close()
		// Another certificate under the same name: refused.
		h2 := newHub(t, vpnlinktest.Config{})
		cfg.Dial = h2.Dial
		_, err = vpnlink.Dial(context.Background(), cfg)
		var cm *vpnlink.CertMismatchError
		if !errors.As(err, &cm) || cm.Want != h1.CertSHA256() || cm.Got != h2.CertSHA256() ||
			!strings.Contains(err.Error(), filepath.Join(dir, vpnlink.KnownHostsFile)) {
			t.Fatalf("err = %v, want mismatch naming both fingerprints and the file", err)
		}
		// Another server name is stored separately (the file keeps both).
		cfg.Server = "other.test:5555"
		dial(t, cfg).Close()
		b, _ = os.ReadFile(filepath.Join(dir, vpnlink.KnownHostsFile))
		if !strings.Contains(string(b), "hub.test:443 "+h1.CertSHA256()) || !strings.Contains(string(b), "other.test:5555 "+h2.CertSHA256()) {
			t.Fatalf("known servers file = %q", b)
		}
		// No leftover temp files.
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 {
			t.Fatalf("state dir has %d entries", len(ents))
		}
		// InsecureSkipVerify accepts anything.
		cfg.Server = "hub.test:443"
		cfg.InsecureSkipVerify = true
		dial(t, cfg).Close()
	})
}

func TestNotSoftEther(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such page", http.StatusNotFound)
	}))
	defer srv.Close()
	cfg := vpnlink.Config{Server: srv.Listener.Addr().String(), Hub: "DEFAULT", User: "alice", Password: "x",
		InsecureSkipVerify: true, Logger: testLogger(t)}
	_, err := vpnlink.Dial(context.Background(), cfg)
	if !errors.Is(err, vpnlink.ErrNotSoftEther) || !vpnlink.IsPermanent(err) || !strings.Contains(err.Error(), "404") {
		t.Fatalf("err = %v, want ErrNotSoftEther mentioning 404", err)
	}

	plain := httptest.NewServer(http.NotFoundHandler()) // no TLS
	defer plain.Close()
	cfg.Server = plain.Listener.Addr().String()
	_, err = vpnlink.Dial(context.Background(), cfg)
	if !errors.Is(err, vpnlink.ErrTLS) {
		t.Fatalf("err = %v, want ErrTLS", err)
	}
}

func TestTwoClientsBroadcast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		a := dial(t, clientCfg(t, h, "alice", "secret"))
		b := dial(t, clientCfg(t, h, "bob", "hunter2"))
		port := h.Attach()
		defer port.Close()
		bc := frame(0xff, 1, 1)
		if err := a.WriteFrames([][]byte{bc}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1600)
		n, err := b.ReadFrame(buf)
		if err != nil || !bytes.Equal(buf[:n], bc) {
			t.Fatalf("bob got %q, %v", buf[:n], err)
		}
		n, err = port.ReadFrame(buf)
		if err != nil || !bytes.Equal(buf[:n], bc) {
			t.Fatalf("port got %q, %v", buf[:n], err)
		}
		// The hub learned alice's MAC: a unicast reply reaches only her.
		uc := frame(1, 9, 2)
		if err := port.WriteFrames([][]byte{uc}); err != nil {
			t.Fatal(err)
		}
		n, err = a.ReadFrame(buf)
		if err != nil || !bytes.Equal(buf[:n], uc) {
			t.Fatalf("alice got %q, %v", buf[:n], err)
		}
		synctest.Wait()
		if st := b.Status(); st.FramesIn != 1 {
			t.Fatalf("bob received %d frames, want only the broadcast", st.FramesIn)
		}
		// A frame larger than the caller's buffer is an error for that frame only.
		port.WriteFrames([][]byte{frame(1, 9, 3)})
		if _, err := a.ReadFrame(make([]byte, 20)); err == nil {
			t.Fatal("short buffer accepted")
		}
		// Oversize frames are dropped and counted.
		a.WriteFrames([][]byte{make([]byte, vpnlink.MaxFrameSize+1)})
		if st := a.Status(); st.DropOversize != 1 {
			t.Fatalf("DropOversize = %d", st.DropOversize)
		}
	})
}

func TestResumeAfterDrop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		c := dial(t, clientCfg(t, h, "alice", "secret"))
		time.Sleep(time.Minute) // a healthy link: reconnect at once after a loss
		port := h.Attach()
		defer port.Close()
		if n := h.DropConnections(); n != 1 {
			t.Fatalf("dropped %d connections", n)
		}
		synctest.Wait()
		st := c.Status()
		if st.State != vpnlink.StateConnected || st.SessionName != "SID-ALICE-1" || st.Resumes != 1 ||
			st.Reconnects != 1 || st.Logins != 1 || st.LastError == nil {
			t.Fatalf("after drop: %+v", st)
		}
		if ss := h.Sessions(); len(ss) != 1 || ss[0].Resumes != 1 {
			t.Fatalf("hub sessions %+v", ss)
		}
		// Frames flow on the resumed connection.
		f := frame(0xff, 1, 7)
		c.WriteFrames([][]byte{f})
		buf := make([]byte, 1600)
		if n, err := port.ReadFrame(buf); err != nil || !bytes.Equal(buf[:n], f) {
			t.Fatalf("port got %q, %v", buf[:n], err)
		}
	})
}

func TestReloginAfterExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		c := dial(t, clientCfg(t, h, "alice", "secret"))
		time.Sleep(time.Minute) // a healthy link: reconnect at once after a loss
		h.ExpireSessions()
		synctest.Wait()
		st := c.Status()
		if st.State != vpnlink.StateConnected || st.SessionName != "SID-ALICE-2" || st.Logins != 2 || st.Resumes != 0 || st.Reconnects != 1 {
			t.Fatalf("after expiry: %+v", st)
		}
		att := h.LoginAttempts()
		if len(att) != 3 || att[1].Method != "additional_connect" || att[1].Code != 13 || att[2].Method != "login" || att[2].Code != 0 {
			t.Fatalf("attempts %+v", att)
		}
	})
}

// The hub holds a session for its timeout; after a longer outage the
// client logs in again instead of resuming.
func TestReloginAfterLongOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{Timeout: 10 * time.Second})
		cfg := clientCfg(t, h, "alice", "secret")
		cfg.MinBackoff, cfg.MaxBackoff = time.Second, 4*time.Second
		c := dial(t, cfg)
		time.Sleep(time.Minute) // a healthy link: reconnect at once after a loss
		h.RejectLogins(16)
		h.DropConnections()
		time.Sleep(30 * time.Second)
		h.RejectLogins(0)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		st := c.Status()
		if st.State != vpnlink.StateConnected || st.SessionName != "SID-ALICE-2" || !errors.Is(st.LastError, vpnlink.ErrHubBusy) {
			t.Fatalf("status %+v", st)
		}
		if ss := h.Sessions(); len(ss) != 1 || ss[0].Name != "SID-ALICE-2" {
			t.Fatalf("old session not expired by the hub: %+v", ss)
		}
	})
}

func TestQueueDuringOutage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		cfg := clientCfg(t, h, "alice", "secret")
		cfg.QueueFrames = 100
		c := dial(t, cfg)
		time.Sleep(time.Minute) // a healthy link: reconnect at once after a loss
		port := h.Attach()
		defer port.Close()
		h.RejectLogins(16) // resumes fail until cleared
		h.DropConnections()
		synctest.Wait()
		if st := c.Status(); st.State != vpnlink.StateReconnecting {
			t.Fatalf("state %v", st.State)
		}
		before := c.Status().BatchesOut
		var frames [][]byte
		for i := range 120 {
			frames = append(frames, frame(0xff, 1, i))
		}
		if err := c.WriteFrames(frames); err != nil {
			t.Fatal(err)
		}
		if st := c.Status(); st.Queued != 100 || st.DropTxQueue != 20 {
			t.Fatalf("queued %d dropped %d, want 100/20", st.Queued, st.DropTxQueue)
		}
		h.RejectLogins(0)
		time.Sleep(cfg.MinBackoff + vpnlink.DefaultMinBackoff) // past the first backoff
		synctest.Wait()
		st := c.Status()
		if st.State != vpnlink.StateConnected || st.SessionName != "SID-ALICE-1" || st.Resumes != 1 {
			t.Fatalf("not resumed: %+v", st)
		}
		if st.BatchesOut-before != 1 {
			t.Fatalf("queued frames went out in %d writes, want 1 batch", st.BatchesOut-before)
		}
		buf := make([]byte, 1600)
		for i := range 100 {
			n, err := port.ReadFrame(buf)
			if err != nil || !bytes.Equal(buf[:n], frames[i]) {
				t.Fatalf("frame %d = %q, %v", i, buf[:n], err)
			}
		}
	})
}

func TestGarbageEndsConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		c := dial(t, clientCfg(t, h, "alice", "secret"))
		time.Sleep(time.Minute) // a healthy link: reconnect at once after a loss
		synctest.Wait()
		if n := h.SendGarbage(); n != 1 {
			t.Fatalf("garbage to %d connections", n)
		}
		synctest.Wait()
		st := c.Status()
		if !errors.Is(st.LastError, vpnlink.ErrMalformed) || !strings.Contains(st.LastError.Error(), "malformed") {
			t.Fatalf("LastError = %v", st.LastError)
		}
		if st.State != vpnlink.StateConnected || st.Resumes != 1 {
			t.Fatalf("not recovered: %+v", st)
		}
	})
}

func TestDeadLinkDetection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{Timeout: 10 * time.Second})
		c := dial(t, clientCfg(t, h, "alice", "secret"))
		h.Stall(true)
		time.Sleep(9 * time.Second)
		synctest.Wait()
		if st := c.Status(); st.State != vpnlink.StateConnected {
			t.Fatalf("declared dead before the timeout: %+v", st)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		st := c.Status()
		if !errors.Is(st.LastError, vpnlink.ErrLinkDead) {
			t.Fatalf("LastError = %v, want ErrLinkDead", st.LastError)
		}
		h.Stall(false)
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if st := c.Status(); st.State != vpnlink.StateConnected || st.Reconnects == 0 {
			t.Fatalf("not recovered: %+v", st)
		}
	})
}

func TestBackoffGrowthAndCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{Timeout: 5 * time.Second})
		cfg := clientCfg(t, h, "alice", "secret")
		cfg.MinBackoff, cfg.MaxBackoff = time.Second, 8*time.Second
		c := dial(t, cfg)
		time.Sleep(time.Minute) // a healthy link: reconnect at once after a loss
		h.RejectLogins(16)      // transient
		h.DropConnections()
		time.Sleep(60 * time.Second)
		att := h.LoginAttempts()[1:]
		if len(att) < 8 {
			t.Fatalf("only %d attempts in 60 s", len(att))
		}
		for i := 1; i < len(att); i++ {
			gap := att[i].Time.Sub(att[i-1].Time)
			d := min(cfg.MaxBackoff, cfg.MinBackoff<<(i-1))
			if gap < d/2 || gap > d {
				t.Fatalf("gap %d = %v, want in [%v, %v]", i, gap, d/2, d)
			}
			if att[i].Code != 16 {
				t.Fatalf("attempt %d code %d", i, att[i].Code)
			}
		}
		if !errors.Is(c.Status().LastError, vpnlink.ErrHubBusy) {
			t.Fatalf("LastError = %v", c.Status().LastError)
		}
		// A permanent error (wrong password) waits the maximum every time.
		h.RejectLogins(9)
		time.Sleep(10 * time.Second) // let the pending transient retry pass
		n0 := len(h.LoginAttempts())
		time.Sleep(60 * time.Second)
		att = h.LoginAttempts()[n0-1:]
		if len(att) < 7 {
			t.Fatalf("only %d attempts", len(att))
		}
		for i := 1; i < len(att); i++ {
			gap := att[i].Time.Sub(att[i-1].Time)
			if gap < cfg.MaxBackoff*9/10 || gap > cfg.MaxBackoff {
				t.Fatalf("permanent-error gap %d = %v, want ≈ %v", i, gap, cfg.MaxBackoff)
			}
		}
		if !vpnlink.IsPermanent(c.Status().LastError) {
			t.Fatalf("LastError = %v", c.Status().LastError)
		}
		h.RejectLogins(0)
		time.Sleep(cfg.MaxBackoff)
		synctest.Wait()
		if st := c.Status(); st.State != vpnlink.StateConnected {
			t.Fatalf("not reconnected: %+v", st)
		}
	})
}

func TestHandshakeTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var peers []net.Conn
		defer func() {
			for _, p := range peers {
				p.Close()
			}
		}()
		cfg := vpnlink.Config{Server: "silent.test:443", Hub: "DEFAULT", User: "alice", Password: "x", InsecureSkipVerify: true,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				a, b := net.Pipe() // nobody answers on b
				peers = append(peers, b)
				go io.Copy(io.Discard, b)
				return a, nil
			}}
		start := time.Now()
		_, err := vpnlink.Dial(context.Background(), cfg)
		if !errors.Is(err, vpnlink.ErrTLS) || time.Since(start) != vpnlink.DefaultHandshakeTimeout {
			t.Fatalf("err = %v after %v", err, time.Since(start))
		}
		// The caller's context bounds Dial too.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		start = time.Now()
		if _, err = vpnlink.Dial(ctx, cfg); err == nil || time.Since(start) != 3*time.Second {
			t.Fatalf("err = %v after %v", err, time.Since(start))
		}
	})
}

func TestWaitFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		c := dial(t, clientCfg(t, h, "alice", "secret"))
		h.ExpireSessions()
		st, err := c.WaitFor(context.Background(), func(st vpnlink.Status) bool { return st.Logins == 2 })
		if err != nil || st.SessionName != "SID-ALICE-2" {
			t.Fatalf("WaitFor = %+v, %v", st, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := c.WaitFor(ctx, func(st vpnlink.Status) bool { return false }); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitFor timeout: %v", err)
		}
	})
}

// SoftEther 5.01 accepts a resume and then drops the socket: the client
// must fall back to a new login instead of looping.
func TestBrokenResumeFallsBackToLogin(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		c := dial(t, clientCfg(t, h, "alice", "secret"))
		time.Sleep(time.Minute)
		h.BreakResumes(true)
		h.DropConnections()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		st := c.Status()
		if st.State != vpnlink.StateConnected || st.SessionName != "SID-ALICE-2" || st.Logins != 2 {
			t.Fatalf("status %+v", st)
		}
		if n := len(h.LoginAttempts()); n != 3 { // login, resume (broken), login
			t.Fatalf("%d attempts: %+v", n, h.LoginAttempts())
		}
		// The verdict is per session: once the server resumes again (as
		// SoftEther 5.01 does for a connection cut and re-opened at once),
		// the next loss resumes the new session.
		time.Sleep(time.Minute)
		h.BreakResumes(false)
		h.DropConnections()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		att := h.LoginAttempts()
		if len(att) != 4 || att[3].Method != "additional_connect" || att[3].Code != 0 || c.Status().SessionName != "SID-ALICE-2" {
			t.Fatalf("attempts %+v, status %+v", att, c.Status())
		}
	})
}

// A server that drops every connection right after the welcome is retried
// with growing delays, not in a tight loop.
func TestFlappingLinkBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		cfg := clientCfg(t, h, "alice", "secret")
		cfg.MinBackoff, cfg.MaxBackoff = time.Second, 8*time.Second
		c := dial(t, cfg)
		h.BreakResumes(true)
		h.ExpireSessions() // every login now ends at once
		stop := make(chan struct{})
		go func() { // expire each new session as soon as it appears
			for {
				select {
				case <-stop:
					return
				case <-c.Changed():
					h.ExpireSessions()
				}
			}
		}()
		time.Sleep(60 * time.Second)
		close(stop)
		synctest.Wait()
		var logins []time.Time
		for _, a := range h.LoginAttempts() {
			if a.Method == "login" && a.Code == 0 {
				logins = append(logins, a.Time)
			}
		}
		// Delays double from 0.5–1 s up to 4–8 s: about 10 logins in 60 s.
		if len(logins) < 4 || len(logins) > 14 {
			t.Fatalf("%d logins in 60 s", len(logins))
		}
		if gap := logins[len(logins)-1].Sub(logins[len(logins)-2]); gap < cfg.MaxBackoff/2 {
			t.Fatalf("last gap %v: delays do not grow to the cap", gap)
		}
	})
}

// Without pin or StateDir, reconnects must meet the certificate of the
// first connection.
func TestReconnectCertChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h1 := newHub(t, vpnlinktest.Config{})
		h2 := newHub(t, vpnlinktest.Config{})
		cur := h1
		var mu sync.Mutex
		cfg := clientCfg(t, h1, "alice", "secret")
		cfg.CertSHA256 = ""
		cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			h := cur
			mu.Unlock()
			return h.Dial(ctx, network, addr)
		}
		c := dial(t, cfg)
		time.Sleep(time.Minute)
		mu.Lock()
		cur = h2
		mu.Unlock()
		h1.DropConnections()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		st := c.Status()
		var cm *vpnlink.CertMismatchError
		if st.State != vpnlink.StateReconnecting || !errors.As(st.LastError, &cm) || cm.Want != h1.CertSHA256() || cm.Got != h2.CertSHA256() {
			t.Fatalf("status %+v", st)
		}
		if len(h2.Sessions()) != 0 {
			t.Fatal("logged in to the impostor")
		}
	})
}

// Keep-alives go out every timeout/5…timeout/2 while idle (plus one at
// once), and not while data flows.
func TestKeepAliveSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{Timeout: 20 * time.Second})
		c := dial(t, clientCfg(t, h, "alice", "secret"))
		time.Sleep(200 * time.Second)
		synctest.Wait()
		ka := h.Sessions()[0].KeepAlivesIn
		if ka < 1+200/10 || ka > 1+200/4 {
			t.Fatalf("%d keep-alives in 200 s idle, want %d…%d", ka, 1+200/10, 1+200/4)
		}
		// Data every second postpones keep-alives.
		for i := range 100 {
			c.WriteFrames([][]byte{frame(0xff, 1, i)})
			time.Sleep(time.Second)
		}
		synctest.Wait()
		s := h.Sessions()[0]
		if s.KeepAlivesIn > ka+1 || s.FramesIn != 100 {
			t.Fatalf("while sending: %d more keep-alives, %d frames", s.KeepAlivesIn-ka, s.FramesIn)
		}
		if st := c.Status(); st.KeepAlivesOut != uint64(s.KeepAlivesIn) || st.BatchesOut != 100 {
			t.Fatalf("client status %+v", st)
		}
	})
}

// TestRecvBackpressure: with nobody reading, the reader fills the receive
// queue and then waits instead of dropping; every frame arrives later, in
// order, through ReadFrames (lent, batched) and ReadFrame. Close ends a
// stalled reader.
func TestRecvBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const total = 3000
		h := newHub(t, vpnlinktest.Config{QueueFrames: 2 * total})
		cfg := clientCfg(t, h, "alice", "secret")
		cfg.RecvQueue = 64 // two batches
		a := dial(t, cfg)
		port := h.Attach()
		defer port.Close()
		// Teach the hub alice's MAC.
		a.WriteFrames([][]byte{frame(0xff, 1, 0)})
		buf := make([]byte, 1600)
		if _, err := port.ReadFrame(buf); err != nil {
			t.Fatal(err)
		}
		var batch [][]byte
		for i := range total {
			batch = append(batch, frame(1, 9, i))
			if len(batch) == 100 {
				port.WriteFrames(batch)
				batch = batch[:0]
			}
		}
		synctest.Wait()
		st := a.Status()
		if st.RecvStalls == 0 || st.FramesIn >= total {
			t.Fatalf("reader did not wait: %d stalls, %d of %d frames read from the connection", st.RecvStalls, st.FramesIn, total)
		}
		got := 0
		lent := make([][]byte, 16)
		maxLent := 0
		for got < total {
			if got%2 == 0 {
				if got%4 == 0 {
					lent = make([][]byte, 256) // more than a batch
				} else {
					lent = lent[:16]
				}
				n, err := a.ReadFrames(lent)
				if err != nil || n < 1 || n > len(lent) {
					t.Fatalf("ReadFrames: %d, %v", n, err)
				}
				maxLent = max(maxLent, n)
				for _, f := range lent[:n] {
					if want := frame(1, 9, got); !bytes.Equal(f, want) {
						t.Fatalf("frame %d: %q, want %q", got, f, want)
					}
					got++
				}
			} else {
				n, err := a.ReadFrame(buf)
				if want := frame(1, 9, got); err != nil || !bytes.Equal(buf[:n], want) {
					t.Fatalf("frame %d: %q, %v; want %q", got, buf[:n], err, want)
				}
				got++
			}
		}
		if maxLent <= 64 {
			t.Errorf("ReadFrames lent at most %d frames at once from a backlog of queued batches", maxLent)
		}
		if st := a.Status(); st.DropRxQueue != 0 || st.FramesIn != total {
			t.Fatalf("after reading: %d dropped, %d received", st.DropRxQueue, st.FramesIn)
		}

		// A reader stalled on a full queue does not keep Close waiting.
		for i := 0; i < 200; i += 100 {
			var fs [][]byte
			for j := range 100 {
				fs = append(fs, frame(1, 9, i+j))
			}
			port.WriteFrames(fs)
		}
		synctest.Wait()
		if a.Status().RecvStalls <= st.RecvStalls {
			t.Fatal("reader did not stall again")
		}
		a.Close()
		if _, err := a.ReadFrames(lent); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadFrames after Close: %v", err)
		}
	})
}
