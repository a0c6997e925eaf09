// Package vpnlinktest is an in-memory SoftEther VPN virtual hub for tests:
// the server side of the native protocol handshake (real TLS with a
// generated self-signed certificate, hello challenge, SHA-0 password check,
// welcome with session key, error PACKs, additional_connect resume with a
// session hold time), a learning Ethernet switch between sessions, raw
// frame ports without TLS (Attach) and fault injection.
//
// Behaviour follows SoftEther's ServerAccept/ServerDownloadSignature in
// src/Cedar/Protocol.c and ConnectionReceive/SessionMain in
// src/Cedar/Connection.c, Session.c as far as a client can observe it.
package vpnlinktest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"time"
)

// User is an account on the hub.
type User struct {
	Name     string // case-insensitive
	Password string
	// NoBridge and NoRouting are the user's policies. With both set a
	// bridge-mode login is refused with error 108, unless ClientModeOnly.
	NoBridge, NoRouting bool
	// ClientModeOnly makes the hub accept a bridge request anyway and
	// answer with policy:NoBridge=1, policy:NoRouting=1 (a server that
	// silently granted client mode), to test the client's welcome check.
	ClientModeOnly bool
	// PlainOnly: only authtype 2 (plain password, like a RADIUS user)
	// works; hashed logins fail with error 9.
	PlainOnly bool
}

// Config configures a Hub.
type Config struct {
	HubName string        // default "DEFAULT"
	Users   []User        // default: alice/secret
	Timeout time.Duration // session timeout and hold time; default 20 s
	Product string        // hello string; default like Debian's 5.01
	Version uint32        // default 501
	Build   uint32        // default 9674
	// QueueFrames bounds frames queued per session (also while it has no
	// connection); default 1024.
	QueueFrames int
	Logger      *slog.Logger
}

// Attempt records one authentication request.
type Attempt struct {
	Time   time.Time
	Method string // "login" or "additional_connect"
	User   string
	Code   uint32 // 0 = accepted
}

// SessionInfo describes a session.
type SessionInfo struct {
	Name                            string
	User                            string
	BridgeMode, NoBridge, NoRouting bool
	Connections                     int
	Resumes                         int
	KeepAlivesIn                    int // keep-alive records received from the client
	FramesIn                        int // frames received from the client
}

// Hub is an in-memory virtual hub.
type Hub struct {
	cfg    Config
	log    *slog.Logger
	tlsCfg *tls.Config
	certFP string
	sw     *switchboard

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	conns     map[net.Conn]*sconn // nil value while handshaking
	sessions  map[string]*session // by session key
	nextSID   int
	nextCID   int
	reject    uint32
	stalled   chan struct{} // closed when the stall ends; nil if not stalled
	attempts  []Attempt
	listeners []net.Listener
	sni       []string
	breakRes  bool
	closed    bool
}

// NewHub creates a hub with a fresh self-signed ECDSA certificate.
func NewHub(cfg Config) (*Hub, error) {
	if cfg.HubName == "" {
		cfg.HubName = "DEFAULT"
	}
	if cfg.Users == nil {
		cfg.Users = []User{{Name: "alice", Password: "secret"}}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 20 * time.Second
	}
	if cfg.Product == "" {
		cfg.Product = "SoftEther VPN Server Developer Edition (64 bit) (Open Source) [vpnlinktest]"
	}
	if cfg.Version == 0 {
		cfg.Version = 501
	}
	if cfg.Build == 0 {
		cfg.Build = 9674
	}
	if cfg.QueueFrames <= 0 {
		cfg.QueueFrames = 1024
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(cert.Certificate[0])
	h := &Hub{
		cfg:      cfg,
		log:      cfg.Logger,
		certFP:   hex.EncodeToString(sum[:]),
		conns:    map[net.Conn]*sconn{},
		sessions: map[string]*session{},
		sw:       newSwitchboard(),
	}
	h.tlsCfg = &tls.Config{
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			h.mu.Lock()
			h.sni = append(h.sni, hello.ServerName)
			h.mu.Unlock()
			return &cert, nil
		},
		// No tickets: over a synchronous net.Pipe an unread TLS 1.3
		// NewSessionTicket would block the server.
		SessionTicketsDisabled: true,
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	return h, nil
}

// selfSigned makes a certificate in memory (SoftEther generates a
// self-signed RSA one; the key type does not matter to the client).
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "vpnlinktest hub"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"hub.test"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// CertSHA256 returns the hex SHA-256 of the hub certificate's DER.
func (h *Hub) CertSHA256() string { return h.certFP }

// HubName returns the configured hub name.
func (h *Hub) HubName() string { return h.cfg.HubName }

// Dial returns the client end of an in-memory connection to the hub
// (net.Pipe); the address is ignored. Usable as vpnlink.Config.Dial.
func (h *Hub) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	cli, srv := net.Pipe()
	if err := h.startConn(srv); err != nil {
		cli.Close()
		return nil, err
	}
	return cli, nil
}

// Serve accepts connections from ln (for example a loopback listener)
// until ln or the hub is closed.
func (h *Hub) Serve(ln net.Listener) error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return net.ErrClosed
	}
	h.listeners = append(h.listeners, ln)
	h.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		if err := h.startConn(c); err != nil {
			c.Close()
			return err
		}
	}
}

func (h *Hub) startConn(c net.Conn) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("vpnlinktest: hub %w", net.ErrClosed)
	}
	h.conns[c] = nil
	h.wg.Add(1)
	go h.serveConn(c)
	return nil
}

// Attach connects a raw frame port (a "host" on the hub without TLS).
func (h *Hub) Attach() *Port {
	p := &Port{hub: h, in: make(chan []byte, h.cfg.QueueFrames), closed: make(chan struct{})}
	h.sw.add(p)
	return p
}

// Sessions lists the current sessions (also those held without a
// connection), sorted by name.
func (h *Hub) Sessions() []SessionInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []SessionInfo
	for _, s := range h.sessions {
		s.mu.Lock()
		out = append(out, SessionInfo{Name: s.name, User: s.user, BridgeMode: !(s.noBridge && s.noRouting),
			NoBridge: s.noBridge, NoRouting: s.noRouting, Connections: len(s.conns), Resumes: s.resumes,
			KeepAlivesIn: s.kaIn, FramesIn: s.framesIn})
		s.mu.Unlock()
	}
	sortSessions(out)
	return out
}

// LoginAttempts returns every authentication request so far.
func (h *Hub) LoginAttempts() []Attempt {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Attempt(nil), h.attempts...)
}

// ServerNames returns the TLS SNI of every TLS handshake so far ("" when
// the client sent none).
func (h *Hub) ServerNames() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.sni...)
}

// DropConnections closes every TCP connection abruptly (sessions stay
// held for the timeout, as on a real server). It returns the count.
func (h *Hub) DropConnections() int {
	h.mu.Lock()
	var cs []net.Conn
	for c := range h.conns {
		cs = append(cs, c)
	}
	h.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
	return len(cs)
}

// BreakResumes makes the hub accept additional_connect and then close the
// new connection at once, as SoftEther 5.01 (Debian build 9674) was observed
// to do for a session whose connection had dropped.
func (h *Hub) BreakResumes(on bool) {
	h.mu.Lock()
	h.breakRes = on
	h.mu.Unlock()
}

// RejectLogins answers every login and resume with error code (0 = normal).
func (h *Hub) RejectLogins(code uint32) {
	h.mu.Lock()
	h.reject = code
	h.mu.Unlock()
}

// ExpireSessions ends every session now (resumes then get error 13) and
// closes their connections. It returns the count.
func (h *Hub) ExpireSessions() int {
	h.mu.Lock()
	ss := make([]*session, 0, len(h.sessions))
	for _, s := range h.sessions {
		ss = append(ss, s)
	}
	h.mu.Unlock()
	for _, s := range ss {
		h.removeSession(s)
	}
	return len(ss)
}

// Stall stops (true) or resumes (false) all data-phase reading and writing
// of the hub, like a black-holed path: clients see no keep-alives and their
// writes block.
func (h *Hub) Stall(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case on && h.stalled == nil:
		h.stalled = make(chan struct{})
	case !on && h.stalled != nil:
		close(h.stalled)
		h.stalled = nil
	}
}

// waitStall blocks while the hub is stalled; false if done closed first.
func (h *Hub) waitStall(done <-chan struct{}) bool {
	h.mu.Lock()
	ch := h.stalled
	h.mu.Unlock()
	if ch == nil {
		return true
	}
	select {
	case <-ch:
		return true
	case <-done:
		return false
	}
}

// SendGarbage writes bytes that are not a valid record to every
// data-phase connection. It returns the number of connections.
func (h *Hub) SendGarbage() int {
	h.mu.Lock()
	var scs []*sconn
	for _, sc := range h.conns {
		if sc != nil {
			scs = append(scs, sc)
		}
	}
	h.mu.Unlock()
	for _, sc := range scs {
		sc.tc.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
	}
	return len(scs)
}

// Close stops the hub, closes every connection and port, and waits for
// its goroutines.
func (h *Hub) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	for _, ln := range h.listeners {
		ln.Close()
	}
	if h.stalled != nil {
		close(h.stalled)
		h.stalled = nil
	}
	h.mu.Unlock()
	h.cancel()
	h.ExpireSessions()
	h.DropConnections()
	h.wg.Wait()
	h.sw.closeAll()
	return nil
}

func (h *Hub) record(a Attempt) {
	h.mu.Lock()
	h.attempts = append(h.attempts, a)
	h.mu.Unlock()
}

func (h *Hub) findUser(name string) (User, bool) {
	for _, u := range h.cfg.Users {
		if strings.EqualFold(u.Name, name) {
			return u, true
		}
	}
	return User{}, false
}

var errHubClosed = errors.New("vpnlinktest: hub closed")
