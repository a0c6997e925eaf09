package hubdial

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
)

// maxResponseHeader bounds the proxy's reply to CONNECT (status line and
// header lines); a proxy that sends more is refused.
const maxResponseHeader = 16 << 10

type httpDialer struct {
	cfg Config
	log *slog.Logger
}

// DialContext connects to the proxy and asks it to CONNECT to addr (RFC 9110
// §9.3.6). On a 2xx reply the connection carries the bytes to and from addr.
// SoftEther's client does the same (ProxyHttpConnect in src/Mayaqua/Proxy.c,
// which takes 401, 403 and 407 as an authentication failure; here 403 is
// reported as a refusal, since proxies send it for access rules).
func (d *httpDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkTarget(network, addr); err != nil {
		return nil, &Error{Kind: HTTP, Proxy: d.cfg.Proxy, Op: "CONNECT", Target: addr, Err: err}
	}
	c, err := dialProxy(ctx, &d.cfg, addr)
	if err != nil {
		return nil, err
	}
	stop := handshakeDeadline(ctx, c, d.cfg.HandshakeTimeout)
	conn, err := d.connect(c, addr)
	if err != nil {
		stop()
		c.Close()
		return nil, &Error{Kind: HTTP, Proxy: d.cfg.Proxy, Op: "CONNECT", Target: addr, Err: exchangeErr(ctx, err, d.cfg.HandshakeTimeout)}
	}
	stop()
	d.log.Debug("connected through HTTP proxy", "target", addr)
	return conn, nil
}

func (d *httpDialer) connect(c net.Conn, addr string) (net.Conn, error) {
	var req bytes.Buffer
	fmt.Fprintf(&req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: acrouter\r\nProxy-Connection: keep-alive\r\n", addr, addr)
	if d.cfg.Username != "" {
		cred := base64.StdEncoding.EncodeToString([]byte(d.cfg.Username + ":" + d.cfg.Password))
		req.WriteString("Proxy-Authorization: Basic " + cred + "\r\n")
	}
	req.WriteString("\r\n")
	if _, err := c.Write(req.Bytes()); err != nil {
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	br := bufio.NewReaderSize(c, 4096)
	resp, err := readConnectResponse(br, maxResponseHeader)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.Code >= 200 && resp.Code <= 299:
	case resp.Code == 407, resp.Code == 401 && d.cfg.Username != "":
		// tinyproxy (1.11) answers wrong credentials with 401
		how := "no user name configured"
		if d.cfg.Username != "" {
			how = fmt.Sprintf("credentials of user %q not accepted", d.cfg.Username)
		}
		if resp.ProxyAuthenticate != "" {
			how += "; proxy asks for " + resp.ProxyAuthenticate
		}
		return nil, fmt.Errorf("%w (HTTP %d; %s)", ErrProxyAuthRequired, resp.Code, how)
	default:
		return nil, fmt.Errorf("%w: HTTP %d %s", ErrProxyRefused, resp.Code, resp.Reason)
	}
	if br.Buffered() > 0 { // bytes from the hub that came with the reply
		return &bufferedConn{Conn: c, r: br}, nil
	}
	return c, nil
}

// checkTarget accepts TCP to host:port only.
func checkTarget(network, addr string) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return fmt.Errorf("%w: network %q (only tcp goes through a proxy)", ErrConfig, network)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" || strings.ContainsAny(addr, " \r\n") {
		return fmt.Errorf("%w: hub address %q is not host:port", ErrConfig, addr)
	}
	return nil
}

// connectResponse is the header of a proxy's reply to CONNECT.
type connectResponse struct {
	Proto             string // "HTTP/1.1"
	Code              int
	Reason            string
	ProxyAuthenticate string // first Proxy-Authenticate header (scheme and realm), sanitized
}

// readConnectResponse reads the status line and header lines up to and
// including the empty line, at most max bytes. It reads nothing after the
// header.
func readConnectResponse(br *bufio.Reader, max int) (connectResponse, error) {
	var r connectResponse
	total := 0
	first := true
	for {
		line, err := br.ReadSlice('\n')
		total += len(line)
		if total > max {
			return r, fmt.Errorf("%w: reply header longer than %d bytes", ErrBadProxyReply, max)
		}
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return r, fmt.Errorf("%w: reply header line longer than %d bytes", ErrBadProxyReply, br.Size())
			}
			if first && total == 0 {
				return r, fmt.Errorf("no reply to CONNECT: %w", err)
			}
			return r, fmt.Errorf("reply to CONNECT cut short: %w", err)
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		if first {
			first = false
			if err := parseStatusLine(string(line), &r); err != nil {
				return r, err
			}
			continue
		}
		if len(line) == 0 {
			return r, nil
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue // tolerate junk header lines; only the status matters
		}
		if r.ProxyAuthenticate == "" && strings.EqualFold(string(bytes.TrimSpace(k)), "Proxy-Authenticate") {
			r.ProxyAuthenticate = sanitize(string(bytes.TrimSpace(v)), 80)
		}
	}
}

func parseStatusLine(line string, r *connectResponse) error {
	proto, rest, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") {
		return fmt.Errorf("%w: not an HTTP reply: %q (is it an HTTP proxy?)", ErrBadProxyReply, sanitize(line, 40))
	}
	code, reason, _ := strings.Cut(strings.TrimLeft(rest, " "), " ")
	n, err := strconv.Atoi(code)
	if err != nil || len(code) != 3 || n < 100 {
		return fmt.Errorf("%w: bad status line %q", ErrBadProxyReply, sanitize(line, 60))
	}
	r.Proto, r.Code, r.Reason = proto, n, sanitize(reason, 60)
	return nil
}

// sanitize makes network text safe for logs: printable ASCII, bounded length.
func sanitize(s string, max int) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if b.Len() >= max {
			b.WriteString("…")
			break
		}
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// bufferedConn returns what the reader already buffered before reading on.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

// Close does nothing: the dialer holds no connections of its own.
func (d *httpDialer) Close() error { return nil }
