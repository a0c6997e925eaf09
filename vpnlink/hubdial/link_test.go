package hubdial

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

// startHub serves an in-memory hub on a loopback listener.
func startHub(t *testing.T) (*vpnlinktest.Hub, string) {
	t.Helper()
	hub, err := vpnlinktest.NewHub(vpnlinktest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		hub.Serve(ln)
	}()
	t.Cleanup(func() {
		ln.Close()
		hub.Close()
		<-done
	})
	return hub, ln.Addr().String()
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

const etherTypeTest = 0x88b5

func frame(dst, src net.HardwareAddr, nonce []byte) []byte {
	f := append(append(append([]byte{}, dst...), src...), 0x88, 0xb5)
	f = append(f, nonce...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	return f
}

type frameReader interface {
	ReadFrame([]byte) (int, error)
}

// tap hands the test frames read from r to a channel until r is closed.
func tap(t *testing.T, r frameReader, closeFn func() error) chan []byte {
	ch := make(chan []byte, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, err := r.ReadFrame(buf)
			if err != nil {
				return
			}
			if n >= 14 && binary.BigEndian.Uint16(buf[12:14]) == etherTypeTest {
				select {
				case ch <- bytes.Clone(buf[:n]):
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		closeFn()
		<-done
	})
	return ch
}

type frameWriter interface {
	WriteFrames([][]byte) error
}

// sendUntilSeen writes f from w every 100 ms until it shows up on seen.
func sendUntilSeen(t *testing.T, ctx context.Context, w frameWriter, seen chan []byte, f, nonce []byte) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := w.WriteFrames([][]byte{f}); err != nil {
			t.Fatalf("WriteFrames: %v", err)
		}
	wait:
		for {
			select {
			case got := <-seen:
				if bytes.Contains(got, nonce) {
					return
				}
			case <-tick.C:
				break wait
			case <-ctx.Done():
				t.Fatalf("frame never arrived: %v", ctx.Err())
			}
		}
	}
}

var (
	macClient = net.HardwareAddr{2, 0xac, 0, 0, 0xaa, 1}
	macPort   = net.HardwareAddr{2, 0xac, 0, 0, 0xbb, 1}
	bcast     = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

func nonce() []byte {
	b := make([]byte, 16)
	rand.Read(b)
	return b
}

// linkThrough logs a vpnlink.Client in to a loopback hub through d,
// exchanges frames both ways, drops every hub connection, waits for the
// client to come back (through d again) and exchanges frames again.
// redials reports how many proxy tunnels were made so far.
func linkThrough(t *testing.T, hub *vpnlinktest.Hub, hubAddr string, d Dialer, redials func() int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := vpnlink.Dial(ctx, vpnlink.Config{
		Server: hubAddr, Hub: hub.HubName(), User: "alice", Password: "secret",
		CertSHA256: hub.CertSHA256(), Dial: d.DialContext, Logger: testLogger(t),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("vpnlink.Dial through %T: %v", d, err)
	}
	port := hub.Attach()
	fromClient := tap(t, port, port.Close)
	fromPort := tap(t, c, c.Close)
	exchange := func(what string) {
		n1 := nonce()
		sendUntilSeen(t, ctx, c, fromClient, frame(bcast, macClient, n1), n1)
		n2 := nonce()
		sendUntilSeen(t, ctx, port, fromPort, frame(macClient, macPort, n2), n2)
		t.Logf("%s: frames exchanged both ways", what)
	}
	exchange("first connection")
	before := c.Status()
	tunnels := redials()
	if tunnels < 1 {
		t.Fatalf("no tunnel through the proxy was made (%d)", tunnels)
	}
	if n := hub.DropConnections(); n < 1 {
		t.Fatalf("DropConnections closed %d connections", n)
	}
	st, err := c.WaitFor(ctx, func(s vpnlink.Status) bool {
		return s.State == vpnlink.StateConnected && s.Reconnects > before.Reconnects
	})
	if err != nil {
		t.Fatalf("no reconnect after the drop: %v", err)
	}
	t.Logf("reconnected (resumes %d, reconnects %d, last error %v)", st.Resumes, st.Reconnects, st.LastError)
	if got := redials(); got <= tunnels {
		t.Fatalf("tunnels through the proxy %d → %d: the reconnect did not go through it", tunnels, got)
	}
	exchange("after the drop")
}

func TestLinkDirect(t *testing.T) {
	hub, addr := startHub(t)
	var n int64
	d, err := New(Config{Dial: func(ctx context.Context, network, a string) (net.Conn, error) {
		n++
		return (&net.Dialer{}).DialContext(ctx, network, a)
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	linkThrough(t, hub, addr, d, func() int64 { return n })
}

func TestLinkHTTPProxy(t *testing.T) {
	hub, addr := startHub(t)
	p := newHTTPProxy(t, "bob", "pr0xy pass:word")
	d, err := New(Config{Kind: HTTP, Proxy: p.Addr(), Username: "bob", Password: "pr0xy pass:word"}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	linkThrough(t, hub, addr, d, p.tunnel.Load)
}

func TestLinkSOCKS5(t *testing.T) {
	hub, addr := startHub(t)
	t.Run("NoAuth", func(t *testing.T) {
		p := newSOCKSProxy(t, "", "")
		d, err := New(Config{Kind: SOCKS5, Proxy: p.Addr()}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		linkThrough(t, hub, addr, d, p.tunnel.Load)
	})
	t.Run("UserPass", func(t *testing.T) {
		p := newSOCKSProxy(t, "carol", "s0cks")
		d, err := New(Config{Kind: SOCKS5, Proxy: p.Addr(), Username: "carol", Password: "s0cks"}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		linkThrough(t, hub, addr, d, p.tunnel.Load)
	})
	t.Run("HostName", func(t *testing.T) { // the name goes to the proxy (ATYP 3), which resolves it
		p := newSOCKSProxy(t, "", "")
		d, err := New(Config{Kind: SOCKS5, Proxy: p.Addr()}, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		_, port, _ := net.SplitHostPort(addr)
		linkThrough(t, hub, net.JoinHostPort("localhost", port), d, p.tunnel.Load)
		if got := p.lastTarget.Load(); got != net.JoinHostPort("localhost", port) {
			t.Fatalf("proxy was asked for %v, want the host name", got)
		}
	})
}

// sshFixture is an SSH server with a user that has a key and a password,
// and a known_hosts file that lists its host key.
type sshFixture struct {
	srv        *sshServer
	keyFile    string
	knownHosts string
	dir        string
}

func newSSHFixture(t testing.TB) *sshFixture {
	dir := t.TempDir()
	keyFile, pub := writeKey(t, dir, "id_ed25519", "")
	srv := newSSHServer(t, "tunnel", "ssh-pass", pub)
	kh := filepath.Join(dir, "known_hosts")
	line := knownhosts.Line([]string{knownhosts.Normalize(srv.Addr())}, srv.hostKey.PublicKey())
	if err := os.WriteFile(kh, []byte("# test\n"+line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &sshFixture{srv: srv, keyFile: keyFile, knownHosts: kh, dir: dir}
}

func (f *sshFixture) config() Config {
	return Config{Kind: SSH, Proxy: f.srv.Addr(), Username: "tunnel", KeyFile: f.keyFile, KnownHostsFile: f.knownHosts}
}

// writeKey writes a new ed25519 private key in OpenSSH form (encrypted when
// passphrase is set).
func writeKey(t testing.TB, dir, name, passphrase string) (string, ssh.PublicKey) {
	t.Helper()
	signer, priv := newRawKey(t)
	var blockBytes []byte
	if passphrase == "" {
		b, err := ssh.MarshalPrivateKey(priv, "test")
		if err != nil {
			t.Fatal(err)
		}
		blockBytes = pemEncode(b)
	} else {
		b, err := ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte(passphrase))
		if err != nil {
			t.Fatal(err)
		}
		blockBytes = pemEncode(b)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, blockBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, signer.PublicKey()
}

func TestLinkSSH(t *testing.T) {
	hub, addr := startHub(t)
	t.Run("Key", func(t *testing.T) {
		f := newSSHFixture(t)
		d, err := New(f.config(), testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		linkThrough(t, hub, addr, d, f.srv.tunnel.Load)
		// the drop killed the TCP to the hub, not the SSH connection: the
		// redial used the same SSH connection
		if n := f.srv.handshakes.Load(); n != 1 {
			t.Errorf("%d SSH handshakes for two channels, want 1 (connection reuse)", n)
		}
	})
	t.Run("Password", func(t *testing.T) {
		f := newSSHFixture(t)
		cfg := f.config()
		cfg.KeyFile, cfg.Password = "", "ssh-pass"
		d, err := New(cfg, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		linkThrough(t, hub, addr, d, f.srv.tunnel.Load)
	})
	t.Run("SSHConnectionDies", func(t *testing.T) {
		// the SSH connection itself is killed: the client's redial makes a
		// new SSH connection and the link comes back
		f := newSSHFixture(t)
		d, err := New(f.config(), testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		ctx := ctxT(t)
		c, err := vpnlink.Dial(ctx, vpnlink.Config{
			Server: addr, Hub: hub.HubName(), User: "alice", Password: "secret",
			CertSHA256: hub.CertSHA256(), Dial: d.DialContext, Logger: testLogger(t),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		port := hub.Attach()
		fromClient := tap(t, port, port.Close)
		n1 := nonce()
		sendUntilSeen(t, ctx, c, fromClient, frame(bcast, macClient, n1), n1)
		before := c.Status()
		if n := f.srv.KillSSH(); n != 1 {
			t.Fatalf("killed %d SSH connections, want 1", n)
		}
		if _, err := c.WaitFor(ctx, func(s vpnlink.Status) bool {
			return s.State == vpnlink.StateConnected && s.Reconnects > before.Reconnects
		}); err != nil {
			t.Fatal(err)
		}
		if n := f.srv.handshakes.Load(); n != 2 {
			t.Errorf("%d SSH handshakes, want 2 (a new SSH connection after the kill)", n)
		}
		n2 := nonce()
		sendUntilSeen(t, ctx, c, fromClient, frame(bcast, macClient, n2), n2)
		c.Close()
	})
}
