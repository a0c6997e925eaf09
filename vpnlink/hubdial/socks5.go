package hubdial

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
)

// SOCKS5 constants (RFC 1928, RFC 1929).
const (
	socksVersion     = 5
	socksMethodNone  = 0x00
	socksMethodUser  = 0x02
	socksMethodNoAcc = 0xff
	socksAuthVersion = 1
	socksCmdConnect  = 1
	socksAtypIPv4    = 1
	socksAtypDomain  = 3
	socksAtypIPv6    = 4
)

// socksReplyText is the meaning of the REP field (RFC 1928 §6).
var socksReplyText = [...]string{
	1: "general SOCKS server failure",
	2: "connection not allowed by ruleset",
	3: "network unreachable",
	4: "host unreachable",
	5: "connection refused",
	6: "TTL expired",
	7: "command not supported",
	8: "address type not supported",
}

// SOCKSReplyError is a SOCKS5 reply other than "succeeded". It wraps
// ErrProxyRefused.
type SOCKSReplyError struct{ Code byte }

func (e *SOCKSReplyError) Error() string {
	if int(e.Code) < len(socksReplyText) && socksReplyText[e.Code] != "" {
		return fmt.Sprintf("%v: SOCKS5 reply %d: %s", ErrProxyRefused, e.Code, socksReplyText[e.Code])
	}
	return fmt.Sprintf("%v: SOCKS5 reply %d (unassigned)", ErrProxyRefused, e.Code)
}

func (e *SOCKSReplyError) Unwrap() error { return ErrProxyRefused }

type socksDialer struct {
	cfg Config
	log *slog.Logger
}

// DialContext connects to the proxy and asks it to CONNECT to addr. A host
// name in addr is sent as a name (the proxy resolves it, like socks5h).
func (d *socksDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	fail := func(op string, err error) error {
		return &Error{Kind: SOCKS5, Proxy: d.cfg.Proxy, Op: op, Target: addr, Err: exchangeErr(ctx, err, d.cfg.HandshakeTimeout)}
	}
	if err := checkTarget(network, addr); err != nil {
		return nil, fail("request", err)
	}
	req, err := socksConnectRequest(addr)
	if err != nil {
		return nil, fail("request", err)
	}
	c, err := dialProxy(ctx, &d.cfg, addr)
	if err != nil {
		return nil, err
	}
	stop := handshakeDeadline(ctx, c, d.cfg.HandshakeTimeout)
	op, err := d.handshake(c, req)
	stop()
	if err != nil {
		c.Close()
		return nil, fail(op, err)
	}
	d.log.Debug("connected through SOCKS5 proxy", "target", addr)
	return c, nil
}

func (d *socksDialer) handshake(c net.Conn, req []byte) (op string, err error) {
	var buf [2]byte
	greet := []byte{socksVersion, 1, socksMethodNone}
	if d.cfg.Username != "" {
		greet = []byte{socksVersion, 2, socksMethodNone, socksMethodUser}
	}
	if _, err := c.Write(greet); err != nil {
		return "greeting", err
	}
	method, err := readMethodReply(c, &buf)
	if err != nil {
		return "greeting", err
	}
	switch method {
	case socksMethodNone:
	case socksMethodUser:
		if d.cfg.Username == "" {
			return "greeting", fmt.Errorf("%w: proxy chose username/password authentication, but no user name is configured", ErrProxyAuthFailed)
		}
		auth := make([]byte, 0, 3+len(d.cfg.Username)+len(d.cfg.Password))
		auth = append(auth, socksAuthVersion, byte(len(d.cfg.Username)))
		auth = append(auth, d.cfg.Username...)
		auth = append(auth, byte(len(d.cfg.Password)))
		auth = append(auth, d.cfg.Password...)
		_, err := c.Write(auth)
		clear(auth)
		if err != nil {
			return "authenticate", err
		}
		st, err := readAuthReply(c, &buf)
		if err != nil {
			return "authenticate", err
		}
		if st != 0 {
			return "authenticate", fmt.Errorf("%w: user %q and password rejected (RFC 1929 status %d)", ErrProxyAuthFailed, d.cfg.Username, st)
		}
	case socksMethodNoAcc:
		if d.cfg.Username == "" {
			return "greeting", fmt.Errorf("%w: no acceptable authentication method (the proxy needs credentials; none configured)", ErrProxyAuthFailed)
		}
		return "greeting", fmt.Errorf("%w: no acceptable authentication method (offered none and username/password)", ErrProxyAuthFailed)
	default:
		return "greeting", fmt.Errorf("%w: proxy chose method %#x that was not offered", ErrBadProxyReply, method)
	}
	if _, err := c.Write(req); err != nil {
		return "request", err
	}
	if _, err := readConnectReply(c); err != nil {
		return "request", err
	}
	return "", nil
}

// socksConnectRequest builds VER CMD RSV ATYP DST.ADDR DST.PORT.
func socksConnectRequest(addr string) ([]byte, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("%w: bad port in %q", ErrConfig, addr)
	}
	b := []byte{socksVersion, socksCmdConnect, 0}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Zone() == "" {
		ip = ip.Unmap()
		if ip.Is4() {
			b = append(b, socksAtypIPv4)
		} else {
			b = append(b, socksAtypIPv6)
		}
		b = append(b, ip.AsSlice()...)
	} else {
		if len(host) > 255 {
			return nil, fmt.Errorf("%w: host name longer than 255 bytes", ErrConfig)
		}
		b = append(b, socksAtypDomain, byte(len(host)))
		b = append(b, host...)
	}
	return binary.BigEndian.AppendUint16(b, uint16(port)), nil
}

// readMethodReply reads VER METHOD.
func readMethodReply(r io.Reader, buf *[2]byte) (byte, error) {
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return 0, err
	}
	if buf[0] != socksVersion {
		return 0, fmt.Errorf("%w: version %d in method reply (is it a SOCKS5 proxy?)", ErrBadProxyReply, buf[0])
	}
	return buf[1], nil
}

// readAuthReply reads VER STATUS of RFC 1929.
func readAuthReply(r io.Reader, buf *[2]byte) (byte, error) {
	if _, err := io.ReadFull(r, buf[:]); err != nil {
		return 0, err
	}
	if buf[0] != socksAuthVersion {
		return 0, fmt.Errorf("%w: version %d in authentication reply", ErrBadProxyReply, buf[0])
	}
	return buf[1], nil
}

// readConnectReply reads VER REP RSV ATYP BND.ADDR BND.PORT and returns the
// bound address as text. It reads exactly the reply, never more.
func readConnectReply(r io.Reader) (string, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", err
	}
	if h[0] != socksVersion {
		return "", fmt.Errorf("%w: version %d in connect reply", ErrBadProxyReply, h[0])
	}
	if h[1] != 0 {
		return "", &SOCKSReplyError{Code: h[1]}
	}
	var a [1 + 255 + 2]byte
	var host string
	switch h[3] {
	case socksAtypIPv4:
		if _, err := io.ReadFull(r, a[:4+2]); err != nil {
			return "", err
		}
		host = netip.AddrFrom4([4]byte(a[:4])).String()
		return net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(a[4:])))), nil
	case socksAtypIPv6:
		if _, err := io.ReadFull(r, a[:16+2]); err != nil {
			return "", err
		}
		host = netip.AddrFrom16([16]byte(a[:16])).String()
		return net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(a[16:])))), nil
	case socksAtypDomain:
		if _, err := io.ReadFull(r, a[:1]); err != nil {
			return "", err
		}
		n := int(a[0])
		if _, err := io.ReadFull(r, a[:n+2]); err != nil {
			return "", err
		}
		return net.JoinHostPort(hostnameText(a[:n]), strconv.Itoa(int(binary.BigEndian.Uint16(a[n:])))), nil
	}
	return "", fmt.Errorf("%w: address type %d in connect reply", ErrBadProxyReply, h[3])
}

// Close does nothing: the dialer holds no connections of its own.
func (d *socksDialer) Close() error { return nil }

// hostnameText shows a host name from the network with every byte that
// does not belong in one replaced by '?'.
func hostnameText(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
			out[i] = c
		default:
			out[i] = '?'
		}
	}
	return string(out)
}
