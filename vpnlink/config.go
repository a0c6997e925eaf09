package vpnlink

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"
)

// AuthType selects how the password is presented to the server.
type AuthType int

const (
	// AuthPassword sends SHA0(SHA0(password‖USER)‖challenge) (authtype 1).
	// The password never leaves this process. Default.
	AuthPassword AuthType = iota
	// AuthPlainPassword sends the password itself inside TLS (authtype 2);
	// needed for users the server checks against RADIUS or NT domains.
	AuthPlainPassword
)

func (a AuthType) String() string {
	switch a {
	case AuthPassword:
		return "password"
	case AuthPlainPassword:
		return "plain-password"
	}
	return fmt.Sprintf("AuthType(%d)", int(a))
}

// Defaults.
const (
	DefaultQueueFrames      = 1024
	DefaultRecvQueue        = 1024
	DefaultMinBackoff       = 500 * time.Millisecond
	DefaultMaxBackoff       = 10 * time.Second
	DefaultHandshakeTimeout = 15 * time.Second // CONNECTING_TIMEOUT in src/Cedar/Connection.h
	DefaultClientName       = "acrouter User-mode Router"
)

// Config configures a Client. Server, Hub and User are required.
type Config struct {
	Server   string // host:port of the SoftEther VPN Server listener
	Hub      string // virtual hub name (case-insensitive)
	User     string
	Password string
	Auth     AuthType

	// TLS trust. CertSHA256 pins the server certificate (hex SHA-256 of
	// the DER, colons allowed). Without a pin the certificate is trusted
	// on first use and remembered in StateDir/known_servers (or only for
	// the life of the Client when StateDir is ""); later mismatches are
	// refused with a *CertMismatchError. InsecureSkipVerify accepts any
	// certificate (tests only).
	CertSHA256         string
	InsecureSkipVerify bool
	StateDir           string
	// ServerName is the TLS SNI; default the host part of Server. Go sends
	// no SNI for IP addresses.
	ServerName string

	// Dial opens the TCP connection (tests, proxies); default net.Dialer.
	Dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	Logger *slog.Logger

	// QueueFrames bounds the frames waiting to be sent, also during a
	// reconnect; more are dropped (tail drop, counted). Default 1024.
	QueueFrames int
	// RecvQueue bounds received frames not yet taken by ReadFrame(s)
	// (rounded to batches of up to 64); when it is full the reader stops
	// reading the connection until there is room (counted in RecvStalls).
	// Default 1024.
	RecvQueue int
	// Reconnect backoff: delays grow from MinBackoff (default 500 ms) by
	// doubling with jitter up to MaxBackoff (default 10 s). Errors that
	// need a configuration change (IsPermanent) wait MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// HandshakeTimeout bounds one connection attempt. Default 15 s.
	HandshakeTimeout time.Duration
	// ClientName is sent as client_str/hello. It must not contain
	// "client", "server" or "bridge" (they switch on server-side rules).
	ClientName string
}

func (c *Config) normalize() (pin string, err error) {
	if c.Server == "" || c.Hub == "" || c.User == "" {
		return "", fmt.Errorf("%w: Server, Hub and User are required", ErrConfig)
	}
	host, _, err := net.SplitHostPort(c.Server)
	if err != nil {
		return "", fmt.Errorf("%w: Server %q must be host:port: %v", ErrConfig, c.Server, err)
	}
	if c.Auth != AuthPassword && c.Auth != AuthPlainPassword {
		return "", fmt.Errorf("%w: unknown Auth %d", ErrConfig, c.Auth)
	}
	if c.CertSHA256 != "" {
		if pin, err = normalizeFingerprint(c.CertSHA256); err != nil {
			return "", err
		}
	}
	if c.ServerName == "" {
		c.ServerName = host
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = d.DialContext
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.QueueFrames <= 0 {
		c.QueueFrames = DefaultQueueFrames
	}
	if c.RecvQueue <= 0 {
		c.RecvQueue = DefaultRecvQueue
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.ClientName == "" {
		c.ClientName = DefaultClientName
	}
	return pin, nil
}

func (c *Config) knownHostsPath() string {
	if c.StateDir == "" {
		return ""
	}
	return filepath.Join(c.StateDir, KnownHostsFile)
}
