package hubdial

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// dialErr dials target through d and returns the error, failing the test
// when the dial succeeds or the error is not an *Error that names the proxy.
func dialErr(t *testing.T, d Dialer, proxy, target string) error {
	t.Helper()
	c, err := d.DialContext(ctxT(t), "tcp", target)
	if err == nil {
		c.Close()
		t.Fatal("dial succeeded, want an error")
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T is not a *hubdial.Error: %v", err, err)
	}
	if proxy != "" && !strings.Contains(err.Error(), proxy) {
		t.Errorf("error does not name the proxy %s: %v", proxy, err)
	}
	t.Logf("error: %v", err)
	return err
}

func wantIn(t *testing.T, err error, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
}

func wantNot(t *testing.T, err error, secret string) {
	t.Helper()
	if secret != "" && strings.Contains(err.Error(), secret) {
		t.Errorf("error %q contains the secret %q", err, secret)
	}
}

func TestHTTPErrors(t *testing.T) {
	echo := echoServer(t)
	const secret = "hunter2-secret"
	t.Run("NoCredentials407", func(t *testing.T) {
		p := newHTTPProxy(t, "bob", secret)
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr()}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyAuthRequired) || !IsPermanent(err) {
			t.Fatalf("want ErrProxyAuthRequired (permanent), got %v", err)
		}
		wantIn(t, err, "proxy authentication required", "HTTP 407", "no user name configured", `Basic realm="fake"`, echo.Addr())
	})
	t.Run("WrongPassword407", func(t *testing.T) {
		p := newHTTPProxy(t, "bob", secret)
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr(), Username: "bob", Password: "wrong-" + secret}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyAuthRequired) {
			t.Fatalf("want ErrProxyAuthRequired, got %v", err)
		}
		wantIn(t, err, "proxy authentication required", `user "bob"`)
		wantNot(t, err, secret)
		if got, _ := p.lastAuth.Load().(string); !strings.HasPrefix(got, "Basic ") {
			t.Errorf("proxy saw Proxy-Authorization %q", got)
		}
	})
	t.Run("WrongPassword401", func(t *testing.T) { // tinyproxy's answer to wrong credentials
		p := newHTTPProxy(t, "", "")
		p.status = 401
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr(), Username: "bob", Password: secret}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyAuthRequired) {
			t.Fatalf("want ErrProxyAuthRequired, got %v", err)
		}
		wantIn(t, err, "proxy authentication required", "HTTP 401", `user "bob"`)
		wantNot(t, err, secret)
	})
	t.Run("Forbidden", func(t *testing.T) {
		p := newHTTPProxy(t, "", "")
		p.status = 403
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr()}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyRefused) || IsPermanent(err) {
			t.Fatalf("want ErrProxyRefused (not permanent), got %v", err)
		}
		wantIn(t, err, "HTTP 403 Forbidden")
	})
	t.Run("NotHTTP", func(t *testing.T) {
		p := newHTTPProxy(t, "", "")
		p.raw = "SSH-2.0-OpenSSH_9.2\r\n"
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr()}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrBadProxyReply) {
			t.Fatalf("want ErrBadProxyReply, got %v", err)
		}
		wantIn(t, err, "not an HTTP reply", "SSH-2.0")
	})
	t.Run("HugeHeader", func(t *testing.T) {
		p := newHTTPProxy(t, "", "")
		p.raw = "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\r\n", 40) + "\r\n"
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr()}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrBadProxyReply) {
			t.Fatalf("want ErrBadProxyReply, got %v", err)
		}
		wantIn(t, err, "longer than 16384 bytes")
	})
	t.Run("ClosedWithoutReply", func(t *testing.T) {
		p := newHTTPProxy(t, "", "")
		p.raw = "HTTP/1.1 200 OK\r\n" // and then EOF before the blank line
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr()}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		wantIn(t, err, "cut short", "proxy closed the connection")
	})
	t.Run("Silent", func(t *testing.T) {
		p := newFakeServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr(), HandshakeTimeout: 100 * time.Millisecond}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("want a deadline error, got %v", err)
		}
		wantIn(t, err, "no answer within 100ms")
	})
	t.Run("Cancelled", func(t *testing.T) {
		p := newFakeServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr()}, nil)
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := d.DialContext(ctx, "tcp", echo.Addr())
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("want context.Canceled, got %v", err)
		}
	})
	t.Run("ProxyDown", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		d, _ := New(Config{Kind: HTTP, Proxy: addr}, nil)
		err := dialErr(t, d, addr, echo.Addr())
		wantIn(t, err, "connect", "refused")
	})
	t.Run("TunnelWorks", func(t *testing.T) {
		p := newHTTPProxy(t, "bob", secret)
		d, _ := New(Config{Kind: HTTP, Proxy: p.Addr(), Username: "bob", Password: secret}, nil)
		echoCheck(t, d, echo.Addr())
	})
}

// echoCheck dials the echo server through d and checks a round trip.
func echoCheck(t *testing.T, d Dialer, addr string) {
	t.Helper()
	c, err := d.DialContext(ctxT(t), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("hello through the proxy")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func TestHTTPBufferedBytesKept(t *testing.T) {
	// a proxy that sends the first bytes of the hub's data in the same
	// segment as its reply: they must not be lost
	p := newFakeServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			l, err := br.ReadString('\n')
			if err != nil || l == "\r\n" {
				break
			}
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\nEARLY")
		io.Copy(c, br)
	})
	d, _ := New(Config{Kind: HTTP, Proxy: p.Addr()}, nil)
	c, err := d.DialContext(ctxT(t), "tcp", "hub.test:443")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("-late"))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 10)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "EARLY-late" {
		t.Fatalf("read %q, want EARLY-late", got)
	}
}

func TestSOCKS5Errors(t *testing.T) {
	echo := echoServer(t)
	const secret = "s0cks-secret"
	t.Run("WrongPassword", func(t *testing.T) {
		p := newSOCKSProxy(t, "carol", secret)
		d, _ := New(Config{Kind: SOCKS5, Proxy: p.Addr(), Username: "carol", Password: "bad-" + secret}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyAuthFailed) || !IsPermanent(err) {
			t.Fatalf("want ErrProxyAuthFailed (permanent), got %v", err)
		}
		wantIn(t, err, "authenticate", `user "carol"`, "rejected")
		wantNot(t, err, secret)
	})
	t.Run("NoCredentials", func(t *testing.T) {
		p := newSOCKSProxy(t, "carol", secret)
		d, _ := New(Config{Kind: SOCKS5, Proxy: p.Addr()}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyAuthFailed) {
			t.Fatalf("want ErrProxyAuthFailed, got %v", err)
		}
		wantIn(t, err, "no acceptable authentication method", "none configured")
	})
	for code := byte(1); code <= 9; code++ {
		t.Run(fmt.Sprintf("Reply%d", code), func(t *testing.T) {
			p := newSOCKSProxy(t, "", "")
			p.reply = code
			d, _ := New(Config{Kind: SOCKS5, Proxy: p.Addr()}, nil)
			err := dialErr(t, d, p.Addr(), echo.Addr())
			var re *SOCKSReplyError
			if !errors.As(err, &re) || re.Code != code || !errors.Is(err, ErrProxyRefused) {
				t.Fatalf("want SOCKSReplyError{%d} wrapping ErrProxyRefused, got %v", code, err)
			}
			want := map[byte]string{1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
				3: "network unreachable", 4: "host unreachable", 5: "connection refused", 6: "TTL expired",
				7: "command not supported", 8: "address type not supported", 9: "unassigned"}[code]
			wantIn(t, err, fmt.Sprintf("SOCKS5 reply %d", code), want)
		})
	}
	t.Run("NotSOCKS", func(t *testing.T) {
		p := newFakeServer(t, func(c net.Conn) { io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n") })
		d, _ := New(Config{Kind: SOCKS5, Proxy: p.Addr()}, nil)
		err := dialErr(t, d, p.Addr(), echo.Addr())
		if !errors.Is(err, ErrBadProxyReply) {
			t.Fatalf("want ErrBadProxyReply, got %v", err)
		}
		wantIn(t, err, "is it a SOCKS5 proxy?")
	})
	t.Run("TunnelWorks", func(t *testing.T) {
		p := newSOCKSProxy(t, "carol", secret)
		d, _ := New(Config{Kind: SOCKS5, Proxy: p.Addr(), Username: "carol", Password: secret}, nil)
		echoCheck(t, d, echo.Addr())
		if got := p.lastTarget.Load(); got != echo.Addr() {
			t.Fatalf("proxy asked for %v, want %s", got, echo.Addr())
		}
	})
	t.Run("IPv6Target", func(t *testing.T) {
		req, err := socksConnectRequest("[2001:db8::1]:5555")
		if err != nil {
			t.Fatal(err)
		}
		want := append([]byte{5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8}, make([]byte, 11)...)
		want = append(want, 1, 0x15, 0xb3)
		if !bytes.Equal(req, want) {
			t.Fatalf("request %x, want %x", req, want)
		}
	})
}

func TestSSHErrors(t *testing.T) {
	echo := echoServer(t)
	t.Run("WrongPassword", func(t *testing.T) {
		f := newSSHFixture(t)
		cfg := f.config()
		cfg.KeyFile, cfg.Password = "", "wrong-ssh-pass"
		d, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		err = dialErr(t, d, f.srv.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyAuthFailed) || !IsPermanent(err) {
			t.Fatalf("want ErrProxyAuthFailed (permanent), got %v", err)
		}
		wantIn(t, err, "SSH server", `login as "tunnel" refused`, "password")
		wantNot(t, err, "wrong-ssh-pass")
	})
	t.Run("UnauthorizedKey", func(t *testing.T) {
		f := newSSHFixture(t)
		cfg := f.config()
		cfg.KeyFile, _ = writeKey(t, f.dir, "other", "")
		d, _ := New(cfg, nil)
		defer d.Close()
		err := dialErr(t, d, f.srv.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyAuthFailed) {
			t.Fatalf("want ErrProxyAuthFailed, got %v", err)
		}
		wantIn(t, err, "publickey", cfg.KeyFile)
	})
	t.Run("UnknownHostKey", func(t *testing.T) {
		f := newSSHFixture(t)
		cfg := f.config()
		cfg.KnownHostsFile = filepath.Join(f.dir, "empty_known_hosts")
		os.WriteFile(cfg.KnownHostsFile, nil, 0o600)
		d, _ := New(cfg, nil)
		defer d.Close()
		err := dialErr(t, d, f.srv.Addr(), echo.Addr())
		if !errors.Is(err, ErrHostKeyUnknown) || !IsPermanent(err) {
			t.Fatalf("want ErrHostKeyUnknown (permanent), got %v", err)
		}
		wantIn(t, err, knownhosts.Normalize(f.srv.Addr()), ssh.FingerprintSHA256(f.srv.hostKey.PublicKey()), "ssh-ed25519", cfg.KnownHostsFile, "ssh-keyscan")
		if f.srv.handshakes.Load() != 0 {
			t.Errorf("the client logged in although the host key is unknown")
		}
	})
	t.Run("HostKeyMismatch", func(t *testing.T) {
		f := newSSHFixture(t)
		other := newTestKey(t)
		kh := filepath.Join(f.dir, "other_known_hosts")
		os.WriteFile(kh, []byte(knownhosts.Line([]string{knownhosts.Normalize(f.srv.Addr())}, other.PublicKey())+"\n"), 0o600)
		cfg := f.config()
		cfg.KnownHostsFile = kh
		d, _ := New(cfg, nil)
		defer d.Close()
		err := dialErr(t, d, f.srv.Addr(), echo.Addr())
		if !errors.Is(err, ErrHostKeyMismatch) || !IsPermanent(err) {
			t.Fatalf("want ErrHostKeyMismatch (permanent), got %v", err)
		}
		wantIn(t, err, "HOST KEY MISMATCH", knownhosts.Normalize(f.srv.Addr()),
			ssh.FingerprintSHA256(f.srv.hostKey.PublicKey()), ssh.FingerprintSHA256(other.PublicKey()), kh+":1")
		if f.srv.handshakes.Load() != 0 {
			t.Errorf("the client logged in although the host key is wrong")
		}
	})
	t.Run("InsecureIgnoreHostKey", func(t *testing.T) {
		f := newSSHFixture(t)
		cfg := f.config()
		cfg.KnownHostsFile = filepath.Join(f.dir, "does-not-exist")
		cfg.InsecureIgnoreHostKey = true
		d, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		echoCheck(t, d, echo.Addr())
	})
	t.Run("MissingKnownHosts", func(t *testing.T) {
		f := newSSHFixture(t)
		cfg := f.config()
		cfg.KnownHostsFile = filepath.Join(f.dir, "does-not-exist")
		_, err := New(cfg, nil)
		if !errors.Is(err, ErrConfig) {
			t.Fatalf("want ErrConfig, got %v", err)
		}
		wantIn(t, err, "known_hosts", "does-not-exist")
	})
	t.Run("ForwardingProhibited", func(t *testing.T) {
		f := newSSHFixture(t)
		f.srv.noForward.Store(true)
		d, _ := New(f.config(), nil)
		defer d.Close()
		err := dialErr(t, d, f.srv.Addr(), echo.Addr())
		if !errors.Is(err, ErrProxyRefused) {
			t.Fatalf("want ErrProxyRefused, got %v", err)
		}
		wantIn(t, err, "administratively prohibited", "port forwarding")
		var oce *ssh.OpenChannelError
		if !errors.As(err, &oce) || oce.Reason != ssh.Prohibited {
			t.Errorf("OpenChannelError not wrapped: %v", err)
		}
	})
	t.Run("EncryptedKey", func(t *testing.T) {
		f := newSSHFixture(t)
		keyFile, pub := writeKey(t, f.dir, "enc", "open sesame")
		f.srv.authorized = pub
		cfg := f.config()
		cfg.KeyFile = keyFile
		_, err := New(cfg, nil)
		if !errors.Is(err, ErrConfig) {
			t.Fatalf("encrypted key without passphrase: want ErrConfig, got %v", err)
		}
		wantIn(t, err, "is encrypted", "passphrase file")
		pf := filepath.Join(f.dir, "pass")
		os.WriteFile(pf, []byte("wrong\n"), 0o600)
		cfg.KeyPassphraseFile = pf
		_, err = New(cfg, nil)
		if !errors.Is(err, ErrConfig) {
			t.Fatalf("wrong passphrase: want ErrConfig, got %v", err)
		}
		wantIn(t, err, "cannot decrypt")
		wantNot(t, err, "open sesame")
		os.WriteFile(pf, []byte("open sesame\n"), 0o600)
		d, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		echoCheck(t, d, echo.Addr())
	})
	t.Run("Reuse", func(t *testing.T) {
		f := newSSHFixture(t)
		d, _ := New(f.config(), nil)
		defer d.Close()
		for range 3 {
			echoCheck(t, d, echo.Addr())
		}
		if n := f.srv.handshakes.Load(); n != 1 {
			t.Fatalf("%d SSH handshakes for 3 dials, want 1", n)
		}
		f.srv.KillSSH()
		// the next dial finds the connection dead (at once or when used) and makes a new one
		echoCheck(t, d, echo.Addr())
		if n := f.srv.handshakes.Load(); n != 2 {
			t.Fatalf("%d SSH handshakes after the kill, want 2", n)
		}
	})
	t.Run("CloseEndsChannels", func(t *testing.T) {
		f := newSSHFixture(t)
		d, _ := New(f.config(), nil)
		c, err := d.DialContext(ctxT(t), "tcp", echo.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil { // waits for the channel's goroutines
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read after the Dialer's Close: %v, want the channel ended", err)
		}
		if _, err := d.DialContext(ctxT(t), "tcp", echo.Addr()); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("dial after Close: %v, want net.ErrClosed", err)
		}
	})
	t.Run("KeepAliveUnanswered", func(t *testing.T) {
		f := newSSHFixture(t)
		f.srv.deafKeepAlive.Store(true)
		cfg := f.config()
		cfg.KeepAlive = 10 * time.Millisecond
		dl, _ := New(cfg, testLogger(t))
		defer dl.Close()
		d := dl.(*sshDialer)
		c, err := d.DialContext(ctxT(t), "tcp", echo.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		d.mu.Lock()
		s := d.cur
		d.mu.Unlock()
		select { // the watchdog ends the connection after two intervals
		case <-s.dead:
		case <-ctxT(t).Done():
			t.Fatal("SSH connection still up although no keep-alive was answered")
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("channel Read after the connection was dropped: %v, want it ended", err)
		}
		f.srv.deafKeepAlive.Store(false)
		echoCheck(t, d, echo.Addr())
		if n := f.srv.handshakes.Load(); n != 2 {
			t.Fatalf("%d SSH handshakes, want 2 (a new connection after the dead one)", n)
		}
	})
	t.Run("KeepAlive", func(t *testing.T) {
		f := newSSHFixture(t)
		cfg := f.config()
		cfg.KeepAlive = 10 * time.Millisecond
		d, _ := New(cfg, nil)
		defer d.Close()
		echoCheck(t, d, echo.Addr())
		ctx := ctxT(t)
		for f.srv.keepalives.Load() < 3 {
			select {
			case <-ctx.Done():
				t.Fatalf("only %d keep-alives", f.srv.keepalives.Load())
			case <-time.After(10 * time.Millisecond):
			}
		}
		echoCheck(t, d, echo.Addr())
		if n := f.srv.handshakes.Load(); n != 1 {
			t.Fatalf("%d SSH handshakes, want 1: keep-alives answered with failure must not end the connection", n)
		}
	})
}

func TestChanConnDeadlines(t *testing.T) {
	echo := echoServer(t)
	f := newSSHFixture(t)
	d, _ := New(f.config(), nil)
	defer d.Close()
	t.Run("Read", func(t *testing.T) {
		c, err := d.DialContext(ctxT(t), "tcp", echo.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		buf := make([]byte, 64)
		if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read with nothing to read: %v, want os.ErrDeadlineExceeded", err)
		}
		var ne net.Error
		if _, err := c.Read(buf); !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read after the deadline: %v, want a timeout net.Error", err)
		}
		// clearing the deadline makes the connection usable again, nothing lost
		c.SetReadDeadline(time.Time{})
		c.Write([]byte("after"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, buf[:5]); err != nil || string(buf[:5]) != "after" {
			t.Fatalf("read %q, %v", buf[:5], err)
		}
		// a deadline moved into the past wakes a blocked Read
		c.SetReadDeadline(time.Time{})
		errc := make(chan error, 1)
		go func() {
			_, err := c.Read(buf)
			errc <- err
		}()
		time.AfterFunc(20*time.Millisecond, func() { c.SetReadDeadline(time.Unix(1, 0)) })
		if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked Read: %v, want os.ErrDeadlineExceeded", err)
		}
	})
	t.Run("SmallReads", func(t *testing.T) {
		c, err := d.DialContext(ctxT(t), "tcp", echo.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := bytes.Repeat([]byte("0123456789"), 10000)
		go c.Write(msg)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, 0, len(msg))
		b := make([]byte, 7)
		for len(got) < len(msg) {
			n, err := c.Read(b)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, b[:n]...)
		}
		if !bytes.Equal(got, msg) {
			t.Fatal("data corrupted through small reads")
		}
	})
	t.Run("WriteBlocked", func(t *testing.T) {
		f.srv.sink.Store(true)
		defer f.srv.sink.Store(false)
		c, err := d.DialContext(ctxT(t), "tcp", echo.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		<-f.srv.sinkStarted
		c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		// more than the SSH window: the write blocks until the deadline
		_, err = c.Write(make([]byte, 8<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked Write: %v, want os.ErrDeadlineExceeded", err)
		}
		if _, err := c.Write([]byte("x")); err == nil {
			t.Fatalf("Write after a timed-out write succeeded; the channel should be closed")
		}
	})
}

func TestParseProxyURL(t *testing.T) {
	cases := []struct {
		in      string
		want    Config
		wantErr string
	}{
		{"", Config{Kind: Direct}, ""},
		{"direct", Config{Kind: Direct}, ""},
		{"http://proxy.corp:3128", Config{Kind: HTTP, Proxy: "proxy.corp:3128"}, ""},
		{"http://bob@proxy.corp:3128/", Config{Kind: HTTP, Proxy: "proxy.corp:3128", Username: "bob"}, ""},
		{"HTTP://bob:pw%40x@10.0.0.1:8080", Config{Kind: HTTP, Proxy: "10.0.0.1:8080", Username: "bob", Password: "pw@x"}, ""},
		{"socks5://gw", Config{Kind: SOCKS5, Proxy: "gw:1080"}, ""},
		{"socks5h://u:p@[2001:db8::1]:1081", Config{Kind: SOCKS5, Proxy: "[2001:db8::1]:1081", Username: "u", Password: "p"}, ""},
		{"ssh://tunnel@bastion", Config{Kind: SSH, Proxy: "bastion:22", Username: "tunnel"}, ""},
		{"ssh://tunnel@bastion:2222", Config{Kind: SSH, Proxy: "bastion:2222", Username: "tunnel"}, ""},
		{"http://proxy.corp", Config{}, "no port"},
		{"ssh://bastion", Config{}, "no user"},
		{"https://proxy:443", Config{}, "not supported"},
		{"socks4://proxy:1080", Config{}, "SOCKS4"},
		{"ftp://x:1", Config{}, "unknown scheme"},
		{"http://proxy:99999", Config{}, "bad port"},
		{"http://proxy:3128/path", Config{}, "only scheme"},
		{"http://:3128", Config{}, "no host"},
		{"http://bob:topsecret@proxy", Config{}, "no port"},
	}
	for _, tc := range cases {
		got, err := ParseProxyURL(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrConfig) {
				t.Errorf("ParseProxyURL(%q) = %+v, %v; want error with %q", tc.in, got, err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "topsecret") {
				t.Errorf("ParseProxyURL(%q) error shows the password: %v", tc.in, err)
			}
			continue
		}
		if err != nil || got.String() != tc.want.String() || got.Password != tc.want.Password || got.Username != tc.want.Username {
			t.Errorf("ParseProxyURL(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestConfigStringAndValidation(t *testing.T) {
	c := Config{Kind: HTTP, Proxy: "p:3128", Username: "bob", Password: "topsecret"}
	if s := c.String(); s != "http://bob:***@p:3128" {
		t.Errorf("String() = %q", s)
	}
	if s := fmt.Sprint(Config{}); s != "direct" {
		t.Errorf("String() of the zero Config = %q", s)
	}
	bad := []struct {
		cfg  Config
		want string
	}{
		{Config{Kind: "gopher", Proxy: "p:1"}, "unknown kind"},
		{Config{Kind: HTTP, Proxy: "noport"}, "not host:port"},
		{Config{Kind: HTTP, Proxy: "p:1", Username: "a:b"}, "must not contain"},
		{Config{Kind: SOCKS5, Proxy: "p:1", Username: strings.Repeat("u", 256)}, "255 bytes"},
		{Config{Kind: SOCKS5, Proxy: "p:1", Password: "x"}, "without a user name"},
		{Config{Kind: SSH, Proxy: "p:22"}, "no SSH user name"},
		{Config{Kind: SSH, Proxy: "p:22", Username: "u", InsecureIgnoreHostKey: true}, "private key file or a password"},
		{Config{Kind: SSH, Proxy: "p:22", Username: "u", KeyFile: "/nonexistent/key"}, "/nonexistent/key"},
		{Config{Kind: HTTP, Proxy: "p:1", KeyFile: "/k"}, "ssh:// only"},
		{Config{Kind: SOCKS5, Proxy: "p:1", KnownHostsFile: "/k"}, "ssh:// only"},
		{Config{Proxy: "p:1"}, "without a proxy kind"},
		{Config{Kind: Direct, Password: "x"}, "without a proxy kind"},
	}
	for _, b := range bad {
		_, err := New(b.cfg, nil)
		if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("New(%v) = %v; want ErrConfig with %q", b.cfg, err, b.want)
		}
	}
	d, _ := New(Config{Kind: HTTP, Proxy: "127.0.0.1:9"}, nil)
	if _, err := d.DialContext(t.Context(), "udp", "h:1"); !errors.Is(err, ErrConfig) {
		t.Errorf("udp through a proxy: %v, want ErrConfig", err)
	}
}
