package proto

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Minimal HTTP/1.1 framing of the SoftEther handshake (RecvHttpHeader,
// HttpClientSend/HttpClientRecv, HttpServerSend/HttpServerRecvEx in
// src/Mayaqua/HTTP.c; constants in src/Mayaqua/HTTP.h).
const (
	MaxHeaderLine  = 4096  // HTTP_HEADER_LINE_MAX_SIZE
	MaxHeaderLines = 128   // HTTP_HEADER_MAX_LINES
	MaxPackBody    = 65536 // HTTP_PACK_MAX_SIZE (client → server PACKs)

	TargetConnect   = "/vpnsvc/connect.cgi" // HTTP_VPN_TARGET2
	TargetVPN       = "/vpnsvc/vpn.cgi"     // HTTP_VPN_TARGET
	SignatureBody   = "VPNCONNECT"          // HTTP_VPN_TARGET_POSTDATA
	ContentTypePack = "application/octet-stream"
	ContentTypeSig  = "image/jpeg"
	KeepAliveHeader = "timeout=15; max=19" // HTTP_KEEP_ALIVE
)

// ErrBadHTTP reports an HTTP message outside the rules SoftEther applies.
var ErrBadHTTP = errors.New("malformed HTTP message")

// Header holds header fields by lower-cased name.
type Header map[string]string

// Get returns the value of name (case-insensitive).
func (h Header) Get(name string) string { return h[strings.ToLower(name)] }

// Response is a parsed HTTP response.
type Response struct {
	Proto  string
	Status int
	Reason string
	Header Header
	Body   []byte
}

// Request is a parsed HTTP request.
type Request struct {
	Method, Target, Proto string
	Header                Header
	Body                  []byte
}

// AppendRequest appends a POST request with the given body.
func AppendRequest(dst []byte, target, host, contentType string, body []byte, now time.Time) []byte {
	dst = append(dst, "POST "...)
	dst = append(dst, target...)
	dst = append(dst, " HTTP/1.1\r\nConnection: Keep-Alive\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\nContent-Type: "...)
	dst = append(dst, contentType...)
	if !now.IsZero() {
		dst = append(dst, "\r\nDate: "...)
		dst = now.UTC().AppendFormat(dst, "Mon, 02 Jan 2006 15:04:05 GMT")
	}
	dst = append(dst, "\r\nHost: "...)
	dst = append(dst, host...)
	dst = append(dst, "\r\nKeep-Alive: "...)
	dst = append(dst, KeepAliveHeader...)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, body...)
}

// AppendResponse appends a response with the given body.
func AppendResponse(dst []byte, status int, reason, contentType string, body []byte) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, reason...)
	dst = append(dst, "\r\nConnection: Keep-Alive\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(body)), 10)
	dst = append(dst, "\r\nContent-Type: "...)
	dst = append(dst, contentType...)
	dst = append(dst, "\r\nKeep-Alive: "...)
	dst = append(dst, KeepAliveHeader...)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, body...)
}

// readLine returns one line without its LF and optional CR. The bufio
// buffer must hold at least MaxHeaderLine+2 bytes.
func readLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || (err == nil && len(line) > MaxHeaderLine+2) {
		return "", fmt.Errorf("%w: header line longer than %d bytes", ErrBadHTTP, MaxHeaderLine)
	}
	if err != nil {
		if err == io.EOF && len(line) > 0 {
			return "", fmt.Errorf("%w: stream ended inside the header", ErrBadHTTP)
		}
		return "", err
	}
	line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
	if len(line) > MaxHeaderLine {
		return "", fmt.Errorf("%w: header line longer than %d bytes", ErrBadHTTP, MaxHeaderLine)
	}
	return string(line), nil
}

// readHeader reads the start line and header fields.
func readHeader(br *bufio.Reader) (start []string, h Header, err error) {
	first, err := readLine(br)
	if err != nil {
		return nil, nil, err
	}
	start = strings.SplitN(first, " ", 3)
	if len(start) < 3 {
		return nil, nil, fmt.Errorf("%w: bad start line %.64q", ErrBadHTTP, first)
	}
	h = Header{}
	for i := 0; ; i++ {
		line, err := readLine(br)
		if err != nil {
			if err == io.EOF {
				err = fmt.Errorf("%w: stream ended inside the header", ErrBadHTTP)
			}
			return nil, nil, err
		}
		if line == "" {
			return start, h, nil
		}
		if i >= MaxHeaderLines {
			return nil, nil, fmt.Errorf("%w: more than %d header lines", ErrBadHTTP, MaxHeaderLines)
		}
		name, value, ok := strings.Cut(line, ":")
		value = strings.TrimSpace(value)
		name = strings.TrimSpace(name)
		if !ok || value == "" || name == "" {
			return nil, nil, fmt.Errorf("%w: bad header line %.64q", ErrBadHTTP, line)
		}
		h[strings.ToLower(name)] = value
	}
}

func readBody(br *bufio.Reader, h Header, maxBody int) ([]byte, error) {
	cl := h.Get("Content-Length")
	if cl == "" {
		return nil, nil
	}
	n, err := strconv.ParseUint(cl, 10, 31)
	if err != nil {
		return nil, fmt.Errorf("%w: bad Content-Length %.32q", ErrBadHTTP, cl)
	}
	if n > uint64(maxBody) {
		return nil, fmt.Errorf("%w: body of %d bytes (limit %d)", ErrBadHTTP, n, maxBody)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: stream ended inside the body", ErrBadHTTP)
		}
		return nil, err
	}
	return body, nil
}

// ReadResponse reads one response; the body is read only if it has a
// Content-Length of at most maxBody bytes. A clean EOF before the first byte
// is returned as io.EOF.
func ReadResponse(br *bufio.Reader, maxBody int) (*Response, error) {
	start, h, err := readHeader(br)
	if err != nil {
		return nil, err
	}
	status, err := strconv.Atoi(start[1])
	if err != nil || status < 100 || status > 999 {
		return nil, fmt.Errorf("%w: bad status %.16q", ErrBadHTTP, start[1])
	}
	r := &Response{Proto: start[0], Status: status, Reason: start[2], Header: h}
	if r.Body, err = readBody(br, h, maxBody); err != nil {
		return nil, err
	}
	return r, nil
}

// ReadRequest reads one request (for the test hub).
func ReadRequest(br *bufio.Reader, maxBody int) (*Request, error) {
	start, h, err := readHeader(br)
	if err != nil {
		return nil, err
	}
	r := &Request{Method: start[0], Target: start[1], Proto: start[2], Header: h}
	if r.Body, err = readBody(br, h, maxBody); err != nil {
		return nil, err
	}
	return r, nil
}
