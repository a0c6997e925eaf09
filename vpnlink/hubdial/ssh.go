package hubdial

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshDialer keeps one SSH connection and opens a direct-tcpip channel on it
// per DialContext (RFC 4254 §7.2), as SoftEther 1.0's SSH tunnelling did
// with an external client. A dead connection (keep-alive unanswered, TCP
// error) is dropped and the next dial makes a new one.
type sshDialer struct {
	cfg        Config
	log        *slog.Logger
	auth       []ssh.AuthMethod
	authNames  []string
	hostKeys   ssh.HostKeyCallback // nil: InsecureIgnoreHostKey
	knownHosts string

	sem    chan struct{} // cap 1: held while a connection is made
	done   chan struct{} // closed by Close
	mu     sync.Mutex
	cur    *sshSession
	closed bool
	wg     sync.WaitGroup
}

// sshSession is one SSH connection.
type sshSession struct {
	client *ssh.Client
	dead   chan struct{} // closed when the connection has ended
}

func newSSHDialer(cfg Config, log *slog.Logger) (*sshDialer, error) {
	cerr := func(format string, a ...any) error {
		return &Error{Kind: SSH, Proxy: cfg.Proxy, Op: "configure", Err: fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)}
	}
	if cfg.Username == "" {
		return nil, cerr("no SSH user name")
	}
	d := &sshDialer{cfg: cfg, log: log, sem: make(chan struct{}, 1), done: make(chan struct{})}
	if cfg.KeyFile != "" {
		signer, err := loadKey(cfg.KeyFile, cfg.KeyPassphraseFile)
		if err != nil {
			return nil, cerr("%v", err)
		}
		d.auth = append(d.auth, ssh.PublicKeys(signer))
		d.authNames = append(d.authNames, "publickey ("+cfg.KeyFile+", "+ssh.FingerprintSHA256(signer.PublicKey())+")")
	} else if cfg.KeyPassphraseFile != "" {
		return nil, cerr("key passphrase file given without a key file")
	}
	if cfg.Password != "" {
		pw := cfg.Password
		d.auth = append(d.auth, ssh.Password(pw),
			// servers with PAM ask through keyboard-interactive: answer
			// every hidden prompt with the password
			ssh.KeyboardInteractive(func(_, _ string, qs []string, echos []bool) ([]string, error) {
				ans := make([]string, len(qs))
				for i := range qs {
					if !echos[i] {
						ans[i] = pw
					}
				}
				return ans, nil
			}))
		d.authNames = append(d.authNames, "password")
	}
	if len(d.auth) == 0 {
		return nil, cerr("SSH needs a private key file or a password")
	}
	if !cfg.InsecureIgnoreHostKey {
		kh := cfg.KnownHostsFile
		if kh == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return nil, cerr("no known_hosts file given and no home directory: %v", err)
			}
			kh = filepath.Join(home, ".ssh", "known_hosts")
		}
		cb, err := knownhosts.New(kh)
		if err != nil {
			return nil, cerr("known_hosts file: %v (the SSH server's host key must be listed there; e.g. ssh-keyscan -p PORT HOST >> %s, after checking the key)", err, kh)
		}
		d.hostKeys, d.knownHosts = cb, kh
	}
	return d, nil
}

// loadKey reads an OpenSSH/PEM private key, decrypting it with the
// passphrase in passFile when it is encrypted.
func loadKey(keyFile, passFile string) (ssh.Signer, error) {
	pem, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("SSH key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	switch {
	case err == nil:
		if passFile != "" {
			return nil, fmt.Errorf("SSH key %s is not encrypted, but a passphrase file is given", keyFile)
		}
		return signer, nil
	case errors.As(err, &missing):
		if passFile == "" {
			return nil, fmt.Errorf("SSH key %s is encrypted: give its passphrase file", keyFile)
		}
		pass, err := os.ReadFile(passFile)
		if err != nil {
			return nil, fmt.Errorf("SSH key passphrase: %w", err)
		}
		pass = []byte(strings.TrimRight(string(pass), "\r\n"))
		signer, err = ssh.ParsePrivateKeyWithPassphrase(pem, pass)
		clear(pass)
		if err != nil {
			return nil, fmt.Errorf("SSH key %s: cannot decrypt with the passphrase from %s: %w", keyFile, passFile, err)
		}
		return signer, nil
	}
	return nil, fmt.Errorf("SSH key %s: %w", keyFile, err)
}

func (d *sshDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkTarget(network, addr); err != nil {
		return nil, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "open channel", Target: addr, Err: err}
	}
	var last error
	for attempt := range 2 { // a connection found dead when used is replaced once
		s, fresh, err := d.session(ctx)
		if err != nil {
			return nil, err
		}
		c, err := d.open(ctx, s, addr)
		if err == nil {
			return c, nil
		}
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) || ctx.Err() != nil || fresh {
			return nil, err
		}
		d.log.Info("SSH connection failed when used; making a new one", "attempt", attempt+1, "err", err)
		d.drop(s)
		last = err
	}
	return nil, last
}

// session returns the current SSH connection, making one if there is none.
func (d *sshDialer) session(ctx context.Context) (_ *sshSession, fresh bool, _ error) {
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, false, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "connect", Err: ctx.Err()}
	case <-d.done:
		return nil, false, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "connect", Err: net.ErrClosed}
	}
	defer func() { <-d.sem }()
	d.mu.Lock()
	s := d.cur
	d.mu.Unlock()
	if s != nil && !isClosed(s.dead) {
		return s, false, nil
	}
	s, err := d.connect(ctx)
	if err != nil {
		return nil, false, err
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		s.client.Close()
		return nil, false, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "connect", Err: net.ErrClosed}
	}
	d.cur = s
	d.wg.Add(2)
	d.mu.Unlock()
	go d.watch(s)
	go d.keepAlive(s)
	return s, true, nil
}

func (d *sshDialer) connect(ctx context.Context) (*sshSession, error) {
	fail := func(op string, err error) error {
		return &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: op, Err: err}
	}
	raw, err := dialProxy(ctx, &d.cfg, "")
	if err != nil {
		return nil, err
	}
	var hostKeyErr error
	conf := &ssh.ClientConfig{
		User:          d.cfg.Username,
		Auth:          d.auth,
		ClientVersion: "SSH-2.0-acrouter",
		HostKeyCallback: func(host string, remote net.Addr, key ssh.PublicKey) error {
			if d.hostKeys == nil {
				return nil
			}
			if err := d.hostKeys(host, remote, key); err != nil {
				hostKeyErr = d.explainHostKey(host, key, err)
				return hostKeyErr
			}
			return nil
		},
		HostKeyAlgorithms: d.knownAlgorithms(),
	}
	stop := handshakeDeadline(ctx, raw, d.cfg.HandshakeTimeout)
	cc, chans, reqs, err := ssh.NewClientConn(raw, d.cfg.Proxy, conf)
	stop()
	if err != nil {
		raw.Close()
		switch {
		case hostKeyErr != nil:
			return nil, fail("host key", hostKeyErr)
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, fail("authenticate", fmt.Errorf("%w: SSH login as %q refused (tried %s): %w",
				ErrProxyAuthFailed, d.cfg.Username, strings.Join(d.authNames, ", "), err))
		}
		return nil, fail("handshake", exchangeErr(ctx, err, d.cfg.HandshakeTimeout))
	}
	d.log.Info("SSH connection up", "server_version", sanitize(string(cc.ServerVersion()), 80), "user", d.cfg.Username)
	return &sshSession{client: ssh.NewClient(cc, chans, reqs), dead: make(chan struct{})}, nil
}

// knownAlgorithms restricts the host key algorithms to those of the keys
// known_hosts lists for the server, so that a server offering several host
// keys is not refused for showing one that is not listed.
func (d *sshDialer) knownAlgorithms() []string {
	if d.hostKeys == nil {
		return nil
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil
	}
	probe, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil
	}
	_, port, _ := net.SplitHostPort(d.cfg.Proxy)
	p, _ := strconv.Atoi(port)
	var ke *knownhosts.KeyError
	if !errors.As(d.hostKeys(d.cfg.Proxy, &net.TCPAddr{IP: net.IPv4zero, Port: p}, probe.PublicKey()), &ke) {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	add := func(a ...string) {
		for _, x := range a {
			if !seen[x] {
				seen[x] = true
				algos = append(algos, x)
			}
		}
	}
	for _, k := range ke.Want {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return algos
}

// explainHostKey turns a known_hosts verdict into a message that names the
// host, the key it offered and what to do.
func (d *sshDialer) explainHostKey(host string, key ssh.PublicKey, err error) error {
	fp := key.Type() + " " + ssh.FingerprintSHA256(key)
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case errors.As(err, &re):
		return fmt.Errorf("%w: %s offered %s, revoked in %s:%d", ErrHostKeyRevoked, knownhosts.Normalize(host), fp, re.Revoked.Filename, re.Revoked.Line)
	case errors.As(err, &ke) && len(ke.Want) == 0:
		h, p, _ := net.SplitHostPort(host)
		return fmt.Errorf("%w: %s offered %s, which is not in %s; if that is the server's key, add it (e.g. ssh-keyscan -p %s %s >> %s)",
			ErrHostKeyUnknown, knownhosts.Normalize(host), fp, d.knownHosts, p, h, d.knownHosts)
	case errors.As(err, &ke):
		var want []string
		for _, k := range ke.Want {
			want = append(want, fmt.Sprintf("%s %s (%s:%d)", k.Key.Type(), ssh.FingerprintSHA256(k.Key), k.Filename, k.Line))
		}
		return fmt.Errorf("%w for %s: it offered %s, but known_hosts has %s; someone may be intercepting the connection (if the key really changed, replace that line)",
			ErrHostKeyMismatch, knownhosts.Normalize(host), fp, strings.Join(want, ", "))
	}
	return fmt.Errorf("host key check: %w", err)
}

// open asks the SSH server for a direct-tcpip channel to addr.
func (d *sshDialer) open(ctx context.Context, s *sshSession, addr string) (net.Conn, error) {
	host, ps, _ := net.SplitHostPort(addr)
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return nil, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "open channel", Target: addr, Err: fmt.Errorf("%w: bad port in %q", ErrConfig, addr)}
	}
	payload := ssh.Marshal(&struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}{host, uint32(port), "127.0.0.1", 0})
	type result struct {
		ch   ssh.Channel
		reqs <-chan *ssh.Request
		err  error
	}
	res := make(chan result, 1)
	abandoned := make(chan struct{})
	closedErr := &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "open channel", Target: addr, Err: net.ErrClosed}
	if !d.track(func() { // OpenChannel cannot be cancelled; it ends with the connection at the latest
		ch, reqs, err := s.client.OpenChannel("direct-tcpip", payload)
		select {
		case res <- result{ch, reqs, err}:
		case <-abandoned:
			if err == nil {
				ch.Close()
				ssh.DiscardRequests(reqs) // until the server confirms the close
			}
		}
	}) {
		return nil, closedErr
	}
	timer := time.NewTimer(d.cfg.HandshakeTimeout)
	defer timer.Stop()
	var r result
	select {
	case r = <-res:
	case <-ctx.Done():
		close(abandoned)
		return nil, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "open channel", Target: addr, Err: ctx.Err()}
	case <-timer.C:
		close(abandoned)
		s.client.Close() // a server that does not answer a channel open is of no use
		return nil, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "open channel", Target: addr,
			Err: fmt.Errorf("no answer within %v; SSH connection dropped", d.cfg.HandshakeTimeout)}
	}
	if r.err != nil {
		var oce *ssh.OpenChannelError
		if errors.As(r.err, &oce) {
			return nil, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "open channel", Target: addr,
				Err: &wrapped{msg: fmt.Sprintf("%v: SSH server: %s (is port forwarding to %s allowed for %q?)", ErrProxyRefused, openFailText(oce), addr, d.cfg.Username),
					errs: []error{ErrProxyRefused, oce}}}
		}
		return nil, &Error{Kind: SSH, Proxy: d.cfg.Proxy, Op: "open channel", Target: addr, Err: r.err}
	}
	c := newChanConn(r.ch, s.client.LocalAddr(), hubAddr(addr))
	if !d.track(func() { ssh.DiscardRequests(r.reqs) }) {
		r.ch.Close()
		return nil, closedErr
	}
	if !d.track(c.readLoop) {
		r.ch.Close()
		return nil, closedErr
	}
	d.log.Debug("SSH channel open", "target", addr)
	return c, nil
}

// watch marks s dead when its connection ends.
func (d *sshDialer) watch(s *sshSession) {
	defer d.wg.Done()
	err := s.client.Wait()
	close(s.dead)
	d.mu.Lock()
	if d.cur == s {
		d.cur = nil
	}
	closed := d.closed
	d.mu.Unlock()
	if !closed {
		d.log.Warn("SSH connection ended; the next dial makes a new one", "err", err)
	}
}

// keepAlive sends keepalive@openssh.com requests; one that is not answered
// within two intervals ends the connection.
func (d *sshDialer) keepAlive(s *sshSession) {
	defer d.wg.Done()
	if d.cfg.KeepAlive < 0 {
		<-s.dead
		return
	}
	t := time.NewTicker(d.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-s.dead:
			return
		case <-t.C:
		}
		watchdog := time.AfterFunc(2*d.cfg.KeepAlive, func() {
			d.log.Warn("SSH keep-alive not answered; dropping the connection", "after", 2*d.cfg.KeepAlive)
			s.client.Close()
		})
		_, _, err := s.client.SendRequest("keepalive@openssh.com", true, nil)
		watchdog.Stop()
		if err != nil {
			s.client.Close()
			return
		}
	}
}

// track runs f on a goroutine that Close waits for; false once closed.
func (d *sshDialer) track(f func()) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		f()
	}()
	return true
}

func (d *sshDialer) drop(s *sshSession) {
	s.client.Close()
	d.mu.Lock()
	if d.cur == s {
		d.cur = nil
	}
	d.mu.Unlock()
}

// Close ends the SSH connection (and so every channel on it) and waits for
// the Dialer's goroutines.
func (d *sshDialer) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.done)
	s := d.cur
	d.cur = nil
	d.mu.Unlock()
	// a connection being made right now ends up closed by session()
	if s != nil {
		s.client.Close()
	}
	d.wg.Wait()
	return nil
}

// wrapped is an error with its own message that still matches errs.
type wrapped struct {
	msg  string
	errs []error
}

func (w *wrapped) Error() string   { return w.msg }
func (w *wrapped) Unwrap() []error { return w.errs }

// openFailText is the reason and message of a refused channel, once each.
func openFailText(e *ssh.OpenChannelError) string {
	r, m := e.Reason.String(), sanitize(e.Message, 120)
	if m == "" || strings.Contains(m, r) {
		if m == "" {
			return r
		}
		return m
	}
	return r + ": " + m
}
