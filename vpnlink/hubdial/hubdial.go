// Package hubdial opens the TCP connection to a SoftEther VPN Server the way
// SoftEther's own client can: directly, through an HTTP proxy (CONNECT, with
// basic authentication), through a SOCKS5 proxy (RFC 1928, username/password
// per RFC 1929) or through an SSH server's port forwarding (direct-tcpip,
// key or password authentication, host key checked against known_hosts).
//
// A Dialer's DialContext fits vpnlink.Config.Dial:
//
//	d, err := hubdial.New(cfg, logger)
//	...
//	defer d.Close()
//	link, err := vpnlink.Dial(ctx, vpnlink.Config{..., Dial: d.DialContext})
//
// The proxy kinds follow SoftEther's client (proxy types PROXY_DIRECT,
// PROXY_HTTP, PROXY_SOCKS5 in src/Cedar/Cedar.h; its exchanges are
// ProxyHttpConnect and ProxySocks5Connect in src/Mayaqua/Proxy.c: CONNECT
// with Proxy-Authorization: Basic, success on any 2xx; SOCKS5 offering "no
// authentication" and username/password, a host name sent as ATYP 3). The
// HTTP CONNECT and SOCKS5 clients are written here; SSH uses
// golang.org/x/crypto/ssh.
//
// Passwords and passphrases never reach logs or error messages.
package hubdial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Kind is how the hub is reached.
type Kind string

// The kinds of Config.Kind.
const (
	Direct Kind = "direct"
	HTTP   Kind = "http"   // HTTP proxy, CONNECT method
	SOCKS5 Kind = "socks5" // SOCKS5 proxy; the hub's host name is resolved by the proxy
	SSH    Kind = "ssh"    // SSH server, direct-tcpip port forwarding
)

// Config configures a Dialer.
type Config struct {
	Kind Kind // default Direct
	// Proxy is host:port of the HTTP/SOCKS5 proxy or of the SSH server.
	Proxy string

	// Username and Password authenticate to the proxy (HTTP basic, SOCKS5
	// RFC 1929) or, for SSH, are the login name and (optional) password.
	// Password is a secret: it is never logged or put in an error.
	Username string
	Password string

	// SSH only. KeyFile is a private key in OpenSSH/PEM form; an encrypted
	// key is decrypted with the passphrase read from KeyPassphraseFile
	// (trailing newline removed). Key and password may both be given; the
	// key is tried first.
	KeyFile           string
	KeyPassphraseFile string
	// KnownHostsFile is the OpenSSH known_hosts file the server's host key
	// must be listed in; default ~/.ssh/known_hosts. An unknown or
	// different key is refused (ErrHostKeyUnknown, ErrHostKeyMismatch).
	KnownHostsFile string
	// InsecureIgnoreHostKey accepts any SSH host key. Tests only.
	InsecureIgnoreHostKey bool
	// KeepAlive is the interval of SSH keep-alive requests on the shared
	// SSH connection; one unanswered for KeepAlive*2 ends that connection
	// (the next dial makes a new one). Default 30 s; negative: off.
	KeepAlive time.Duration

	// ConnectTimeout bounds the TCP connect to the proxy or SSH server
	// (default 10 s); HandshakeTimeout bounds the proxy exchange or the
	// SSH handshake and login after it (default 15 s). The caller's
	// context bounds both as well.
	ConnectTimeout   time.Duration
	HandshakeTimeout time.Duration

	// Dial opens the TCP connection to the proxy (or, for Direct, to the
	// hub); default a net.Dialer. For tests and network namespaces.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// String describes the configuration without secrets.
func (c Config) String() string {
	k := c.Kind
	if k == "" {
		k = Direct
	}
	if k == Direct {
		return "direct"
	}
	var b strings.Builder
	b.WriteString(string(k))
	b.WriteString("://")
	if c.Username != "" {
		b.WriteString(url.User(c.Username).String())
		if c.Password != "" {
			b.WriteString(":***")
		}
		b.WriteString("@")
	}
	b.WriteString(c.Proxy)
	return b.String()
}

// Dialer opens connections to the hub. DialContext fits vpnlink.Config.Dial.
// Close releases what the Dialer holds (the shared SSH connection) and waits
// for its goroutines; connections it returned are closed with it when they
// ride on that SSH connection.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	Close() error
}

// Errors; test with errors.Is. Every error from a Dialer is an *Error that
// names the proxy, the step that failed and the hub address.
var (
	// HTTP 407 from the proxy.
	ErrProxyAuthRequired = errors.New("proxy authentication required")
	// SOCKS5 username/password rejected, no acceptable SOCKS5 method, or
	// SSH authentication failed.
	ErrProxyAuthFailed = errors.New("proxy authentication failed")
	// The proxy answered but would not connect to the hub (HTTP status
	// other than 2xx and 407, SOCKS5 reply code, SSH channel rejected).
	ErrProxyRefused = errors.New("proxy refused the connection")
	// The proxy's reply was not the protocol it should speak.
	ErrBadProxyReply = errors.New("malformed proxy reply")
	// SSH host key not in known_hosts / different from the one there / revoked.
	ErrHostKeyUnknown  = errors.New("SSH host key unknown")
	ErrHostKeyMismatch = errors.New("SSH HOST KEY MISMATCH")
	ErrHostKeyRevoked  = errors.New("SSH host key revoked")
	// The Config is unusable.
	ErrConfig = errors.New("invalid proxy configuration")
)

// Error is what a Dialer returns.
type Error struct {
	Kind   Kind
	Proxy  string // host:port of the proxy or SSH server
	Op     string // "connect", "CONNECT", "greeting", "authenticate", "request", "handshake", "open channel"
	Target string // hub address asked for
	Err    error
}

func (e *Error) Error() string {
	if e.Kind == Direct || e.Kind == "" {
		return fmt.Sprintf("hubdial: %s %s: %v", e.Op, e.Target, e.Err)
	}
	what := string(e.Kind) + " proxy"
	if e.Kind == SSH {
		what = "SSH server"
	}
	if e.Target != "" {
		return fmt.Sprintf("hubdial: %s %s: %s (to %s): %v", what, e.Proxy, e.Op, e.Target, e.Err)
	}
	return fmt.Sprintf("hubdial: %s %s: %s: %v", what, e.Proxy, e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// IsPermanent tells whether err needs a configuration change rather than a
// retry: authentication, host key and configuration errors.
func IsPermanent(err error) bool {
	for _, p := range []error{ErrProxyAuthRequired, ErrProxyAuthFailed, ErrHostKeyUnknown, ErrHostKeyMismatch, ErrHostKeyRevoked, ErrConfig} {
		if errors.Is(err, p) {
			return true
		}
	}
	return false
}

const (
	defaultConnectTimeout   = 10 * time.Second
	defaultHandshakeTimeout = 15 * time.Second
	defaultKeepAlive        = 30 * time.Second
)

// New checks cfg and returns a Dialer. For SSH it reads the key and
// known_hosts files now (errors name the file) but connects only on the
// first DialContext. logger may be nil.
func New(cfg Config, logger *slog.Logger) (Dialer, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Kind == "" {
		cfg.Kind = Direct
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = defaultKeepAlive
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	cerr := func(format string, a ...any) error {
		return &Error{Kind: cfg.Kind, Proxy: cfg.Proxy, Op: "configure", Err: fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)}
	}
	if cfg.Kind != Direct {
		if _, port, err := net.SplitHostPort(cfg.Proxy); err != nil || port == "" {
			return nil, cerr("proxy address %q is not host:port", cfg.Proxy)
		}
	}
	if cfg.Kind != SSH && (cfg.KeyFile != "" || cfg.KeyPassphraseFile != "" || cfg.KnownHostsFile != "" || cfg.InsecureIgnoreHostKey) {
		return nil, cerr("SSH key, known_hosts and host key options apply to ssh:// only, not to %s", cfg.Kind)
	}
	if cfg.Kind == Direct && (cfg.Username != "" || cfg.Password != "" || cfg.Proxy != "") {
		return nil, cerr("proxy address or credentials given without a proxy kind")
	}
	logger = logger.With("proxy", cfg.String())
	switch cfg.Kind {
	case Direct:
		return &directDialer{cfg: cfg}, nil
	case HTTP:
		if strings.ContainsAny(cfg.Username, ":\r\n") {
			return nil, cerr("HTTP proxy user name must not contain ':' or line breaks")
		}
		return &httpDialer{cfg: cfg, log: logger}, nil
	case SOCKS5:
		if len(cfg.Username) > 255 || len(cfg.Password) > 255 {
			return nil, cerr("SOCKS5 user name and password are limited to 255 bytes each (RFC 1929)")
		}
		if cfg.Password != "" && cfg.Username == "" {
			return nil, cerr("SOCKS5 password given without a user name")
		}
		return &socksDialer{cfg: cfg, log: logger}, nil
	case SSH:
		return newSSHDialer(cfg, logger)
	}
	return nil, cerr("unknown kind %q (want direct, http, socks5 or ssh)", cfg.Kind)
}

// ParseProxyURL parses "http://[user[:password]@]host:port",
// "socks5://[user[:password]@]host[:port]" (port default 1080; "socks5h" is
// accepted as a synonym), "ssh://user[:password]@host[:port]" (port default
// 22) or "direct" / "". An HTTP proxy needs its port. A password in the URL
// is accepted but is better kept in a file (it shows in process lists).
func ParseProxyURL(s string) (Config, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "direct" || s == "direct://" {
		return Config{Kind: Direct}, nil
	}
	bad := func(format string, a ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: proxy URL %s: "+format, append([]any{ErrConfig, redactURL(s)}, a...)...)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("not a URL")
	}
	var c Config
	defPort := ""
	switch strings.ToLower(u.Scheme) {
	case "http":
		c.Kind = HTTP
	case "socks5", "socks5h":
		c.Kind, defPort = SOCKS5, "1080"
	case "ssh":
		c.Kind, defPort = SSH, "22"
	case "https":
		return bad("TLS to the proxy itself is not supported; use http:// (the hub connection is TLS anyway)")
	case "socks4", "socks4a":
		return bad("SOCKS4 is not supported; use socks5://")
	default:
		return bad("unknown scheme %q (want http, socks5 or ssh)", u.Scheme)
	}
	if u.Opaque != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return bad("only scheme://[user@]host:port is allowed")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return bad("no host")
	}
	if port == "" {
		if defPort == "" {
			return bad("no port (an HTTP proxy has no standard port; e.g. http://proxy:3128)")
		}
		port = defPort
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return bad("bad port %q", port)
	}
	c.Proxy = net.JoinHostPort(host, port)
	if u.User != nil {
		c.Username = u.User.Username()
		c.Password, _ = u.User.Password()
	}
	if c.Kind == SSH && c.Username == "" {
		return bad("no user (ssh://user@host)")
	}
	return c, nil
}

// redactURL hides a password in a proxy URL for error messages.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "***")
			return u.String()
		}
		return u.String()
	}
	if i := strings.LastIndex(s, "@"); i >= 0 {
		return "***@" + s[i+1:]
	}
	return s
}

// dialProxy opens the TCP connection to the proxy within ConnectTimeout.
func dialProxy(ctx context.Context, cfg *Config, target string) (net.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	c, err := cfg.Dial(cctx, "tcp", cfg.Proxy)
	if err != nil {
		if ctx.Err() == nil && cctx.Err() != nil {
			err = fmt.Errorf("no TCP connection within %v: %w", cfg.ConnectTimeout, err)
		}
		return nil, &Error{Kind: cfg.Kind, Proxy: cfg.Proxy, Op: "connect", Target: target, Err: err}
	}
	return c, nil
}

// handshakeDeadline bounds the proxy exchange on c by HandshakeTimeout and
// ctx; the returned stop clears the deadline (call it on success).
func handshakeDeadline(ctx context.Context, c net.Conn, d time.Duration) (stop func()) {
	dl := time.Now().Add(d)
	if cd, ok := ctx.Deadline(); ok && cd.Before(dl) {
		dl = cd
	}
	c.SetDeadline(dl)
	after := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	return func() {
		after()
		c.SetDeadline(time.Time{})
	}
}

// exchangeErr turns an I/O error of a proxy exchange into a readable one.
func exchangeErr(ctx context.Context, err error, d time.Duration) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("no answer within %v: %w", d, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("proxy closed the connection: %w", err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("no answer within %v: %w", d, err)
	}
	return err
}

type directDialer struct{ cfg Config }

func (d *directDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, d.cfg.ConnectTimeout)
	defer cancel()
	c, err := d.cfg.Dial(cctx, network, addr)
	if err != nil {
		return nil, &Error{Kind: Direct, Op: "connect", Target: addr, Err: err}
	}
	return c, nil
}

func (d *directDialer) Close() error { return nil }
