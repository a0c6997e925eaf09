package vpnlink

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/acrouter/acrouter/vpnlink/internal/proto"
)

// maxResponseBody bounds a handshake response body (hello/welcome PACKs are
// a few KiB; SoftEther's own client allows more, but nothing legitimate
// comes close to this).
const maxResponseBody = 1 << 20

// bufSize of the connection's bufio.Reader: holds a full header line and
// several TLS records of data-phase traffic.
const bufSize = 64 << 10

// idleConn is the TCP connection under TLS. Once the data phase starts,
// every read must complete within the session timeout: that is the
// dead-link detector (ConnectionReceive in src/Cedar/Connection.c drops a
// socket after Timeout ms without a record).
type idleConn struct {
	net.Conn
	timeout atomic.Int64 // ns; 0 = no per-read deadline

	// Write coalescing: between beginBatch and endBatch, writes (the TLS
	// records crypto/tls writes one by one, 16 KiB each) collect in wbuf
	// and go out with one write call.
	wmu       sync.Mutex
	buffering bool         // guarded by wmu
	wbuf      []byte       // guarded by wmu
	grown     grownBuffers // guarded by wmu
}

func (c *idleConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	if c.buffering {
		c.wbuf = append(c.wbuf, p...)
		c.wmu.Unlock()
		return len(p), nil
	}
	c.wmu.Unlock()
	return c.Conn.Write(p)
}

// beginBatch starts collecting writes.
func (c *idleConn) beginBatch() {
	c.wmu.Lock()
	c.buffering = true
	c.wmu.Unlock()
}

// endBatch writes what was collected since beginBatch with one call.
func (c *idleConn) endBatch() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.buffering = false
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	if c.grown.keep(time.Now(), len(c.wbuf), cap(c.wbuf)) {
		c.wbuf = c.wbuf[:0]
	} else {
		c.wbuf = nil
	}
	return err
}

func (c *idleConn) Read(p []byte) (int, error) {
	if t := c.timeout.Load(); t > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(time.Duration(t)))
	}
	return c.Conn.Read(p)
}

// wire is one TLS connection during and after the handshake.
type wire struct {
	raw    *idleConn
	tc     *tls.Conn
	br     *bufio.Reader
	certFP string

	product        string
	version, build uint32
	random         []byte
}

func (w *wire) close() { w.raw.Close() }

// hello is what the server sent in reply to the signature.
func (c *Client) tlsConfig(fp *string) *tls.Config {
	return &tls.Config{
		ServerName: c.cfg.ServerName,
		MinVersion: tls.VersionTLS12,
		// Verification is done by VerifyConnection: pin, TOFU or insecure.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, cert := range cs.PeerCertificates {
				raw[i] = cert.Raw
			}
			got, err := c.trust.verify(raw)
			*fp = got
			return err
		},
	}
}

// open connects, runs TLS, posts the signature and reads the hello
// (ClientConnect/ClientUploadSignature/ClientDownloadHello in
// src/Cedar/Protocol.c). On success the deadline set for the handshake
// is still in force; the caller finishes and clears it.
func (c *Client) open(ctx context.Context) (_ *wire, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	conn, err := c.cfg.Dial(ctx, "tcp", c.cfg.Server)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.cfg.Server, err)
	}
	w := &wire{raw: &idleConn{Conn: conn}}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	w.tc = tls.Client(w.raw, c.tlsConfig(&w.certFP))
	if err := w.tc.HandshakeContext(ctx); err != nil {
		var cm *CertMismatchError
		if errors.As(err, &cm) || errors.Is(err, ErrTLS) || errors.Is(err, ErrConfig) {
			return nil, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w with %s: timed out or cancelled: %w", ErrTLS, c.cfg.Server, err)
		}
		return nil, fmt.Errorf("%w with %s (is this the SoftEther listener port?): %w", ErrTLS, c.cfg.Server, err)
	}
	w.br = bufio.NewReaderSize(w.tc, bufSize)

	// Signature: the 10-byte VPNCONNECT body that every open-source server
	// accepts instead of the WaterMark (ServerDownloadSignature).
	req := proto.AppendRequest(nil, proto.TargetConnect, c.cfg.ServerName, proto.ContentTypeSig, []byte(proto.SignatureBody), time.Time{})
	if _, err := w.tc.Write(req); err != nil {
		return nil, c.ioErr(ctx, "sending the VPN signature", err)
	}
	hello, err := c.readPack(ctx, w, "VPN signature")
	if err != nil {
		return nil, err
	}
	if code, _ := hello.Int("error"); code != 0 {
		return nil, &ServerError{Code: code, Hub: c.cfg.Hub, User: c.cfg.User}
	}
	w.product, _ = hello.Str("hello")
	w.version, _ = hello.Int("version")
	w.build, _ = hello.Int("build")
	w.random, _ = hello.Data("random")
	if w.product == "" || len(w.random) != proto.SHA0Size {
		return nil, fmt.Errorf("%w: %s answered the VPN signature without a valid hello (product %q, %d-byte challenge)",
			ErrNotSoftEther, c.cfg.Server, w.product, len(w.random))
	}
	return w, nil
}

// roundTrip posts p to /vpnsvc/vpn.cgi and reads the reply PACK.
func (c *Client) roundTrip(ctx context.Context, w *wire, p *proto.Pack, what string) (*proto.Pack, error) {
	body, err := p.Marshal()
	if err != nil {
		return nil, fmt.Errorf("%w: build %s: %w", ErrProtocol, what, err)
	}
	req := proto.AppendRequest(make([]byte, 0, len(body)+256), proto.TargetVPN, c.cfg.ServerName, proto.ContentTypePack, body, time.Now())
	if _, err := w.tc.Write(req); err != nil {
		return nil, c.ioErr(ctx, "sending the "+what, err)
	}
	reply, err := c.readPack(ctx, w, what)
	if err != nil {
		return nil, err
	}
	if code, _ := reply.Int("error"); code != 0 {
		return nil, &ServerError{Code: code, Hub: c.cfg.Hub, User: c.cfg.User}
	}
	return reply, nil
}

// readPack reads an HTTP response carrying a PACK (HttpClientRecv).
func (c *Client) readPack(ctx context.Context, w *wire, what string) (*proto.Pack, error) {
	resp, err := proto.ReadResponse(w.br, maxResponseBody)
	if err != nil {
		if errors.Is(err, proto.ErrBadHTTP) {
			return nil, fmt.Errorf("%w: %s sent an invalid HTTP reply to the %s: %v", ErrNotSoftEther, c.cfg.Server, what, err)
		}
		return nil, c.ioErr(ctx, "waiting for the reply to the "+what, err)
	}
	if resp.Proto != "HTTP/1.1" || resp.Status != 200 || resp.Header.Get("Content-Type") != proto.ContentTypePack || len(resp.Body) == 0 {
		return nil, fmt.Errorf("%w: %s answered the %s with %q %d %q (Content-Type %q); check host and port",
			ErrNotSoftEther, c.cfg.Server, what, resp.Proto, resp.Status, resp.Reason, resp.Header.Get("Content-Type"))
	}
	p, err := proto.ParsePack(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%w: %s sent an unparsable reply to the %s: %v", ErrNotSoftEther, c.cfg.Server, what, err)
	}
	return p, nil
}

func (c *Client) ioErr(ctx context.Context, doing string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("handshake with %s timed out or was cancelled while %s: %w", c.cfg.Server, doing, err)
	}
	if err == io.EOF {
		return fmt.Errorf("%s closed the connection while %s", c.cfg.Server, doing)
	}
	return fmt.Errorf("connection to %s failed while %s: %w", c.cfg.Server, doing, err)
}

// welcome is the parsed login reply (PackWelcome / ParseWelcomeFromPack).
type welcome struct {
	sessionName, connectionName string
	sessionKey                  []byte
	timeout                     time.Duration
	maxConnection               uint32
	noBridge, noRouting         bool
	msg                         string
}

// login opens a connection and logs in as a new bridge-mode session.
func (c *Client) login(ctx context.Context) (*wire, *welcome, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	w, err := c.open(ctx)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { w.raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	reply, err := c.roundTrip(ctx, w, loginPack(&c.cfg, w.random, c.uniqueID[:]), "login")
	if err != nil {
		w.close()
		return nil, nil, err
	}
	wel, err := c.parseWelcome(reply)
	if err != nil {
		w.close()
		return nil, nil, err
	}
	if !stop() {
		w.close()
		return nil, nil, fmt.Errorf("handshake with %s timed out or was cancelled", c.cfg.Server)
	}
	w.raw.SetDeadline(time.Time{})
	return w, wel, nil
}

func (c *Client) parseWelcome(p *proto.Pack) (*welcome, error) {
	wel := &welcome{}
	var ok1, ok2 bool
	wel.sessionName, ok1 = p.Str("session_name")
	wel.connectionName, ok2 = p.Str("connection_name")
	key, ok3 := p.Data("session_key")
	if !ok1 || !ok2 || !ok3 || len(key) != proto.SHA0Size {
		return nil, fmt.Errorf("%w: welcome from %s lacks session_name, connection_name or a 20-byte session_key", ErrProtocol, c.cfg.Server)
	}
	wel.sessionKey = bytesClone(key)
	ms, _ := p.Int("timeout")
	if ms == 0 {
		ms = 20000
	}
	// The server clamps to [5 s, 60 s] (ServerAccept); stay sane if not.
	wel.timeout = time.Duration(min(max(ms, 1000), 600000)) * time.Millisecond
	wel.maxConnection, _ = p.Int("max_connection")
	if !p.Bool("use_encrypt") {
		return nil, fmt.Errorf("%w: %s granted use_encrypt=0 (cleartext data phase), which this client refuses", ErrProtocol, c.cfg.Server)
	}
	if p.Bool("use_compress") || p.Bool("half_connection") {
		return nil, fmt.Errorf("%w: %s granted compression or half-connection, which were not requested", ErrProtocol, c.cfg.Server)
	}
	wel.noBridge = p.Bool("policy:NoBridge")
	wel.noRouting = p.Bool("policy:NoRouting")
	if m, ok := p.Data("Msg"); ok {
		wel.msg = string(m)
	}
	if wel.noBridge && wel.noRouting {
		return nil, fmt.Errorf("%w: the server accepted user %q on hub %q only in client mode (policy:NoBridge=1 and policy:NoRouting=1); "+
			"allow bridge or routing for the user: vpncmd UserPolicySet %s /NAME:NoBridge /VALUE:no",
			ErrBridgeModeDenied, c.cfg.User, c.cfg.Hub, c.cfg.User)
	}
	return wel, nil
}

// resume opens a connection and attaches it to the existing session with
// additional_connect + session key (ClientAdditionalConnect).
func (c *Client) resume(ctx context.Context, key []byte) (*wire, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	w, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { w.raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	reply, err := c.roundTrip(ctx, w, resumePack(&c.cfg, key), "session resume")
	if err != nil {
		w.close()
		return nil, err
	}
	if dir, _ := reply.Int("direction"); dir != 0 {
		w.close()
		return nil, fmt.Errorf("%w: resumed connection got direction %d (half-connection), expected both", ErrProtocol, dir)
	}
	if !stop() {
		w.close()
		return nil, fmt.Errorf("handshake with %s timed out or was cancelled", c.cfg.Server)
	}
	w.raw.SetDeadline(time.Time{})
	return w, nil
}

func bytesClone(b []byte) []byte { return append([]byte(nil), b...) }
