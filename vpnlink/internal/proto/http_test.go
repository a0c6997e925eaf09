package proto

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func newBR(s string) *bufio.Reader {
	return bufio.NewReaderSize(strings.NewReader(s), MaxHeaderLine+64)
}

func TestHTTPRequestRoundTrip(t *testing.T) {
	body := []byte(SignatureBody)
	raw := AppendRequest(nil, TargetConnect, "192.0.2.1", ContentTypeSig, body, time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC))
	if !bytes.Contains(raw, []byte("\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n")) {
		t.Errorf("date header missing: %q", raw)
	}
	req, err := ReadRequest(newBR(string(raw)), MaxPackBody)
	if err != nil {
		t.Fatal(err)
	}
	if req.Method != "POST" || req.Target != TargetConnect || req.Proto != "HTTP/1.1" ||
		req.Header.Get("content-type") != ContentTypeSig || string(req.Body) != SignatureBody {
		t.Fatalf("request = %+v", req)
	}
}

func TestHTTPResponse(t *testing.T) {
	raw := AppendResponse(nil, 200, "OK", ContentTypePack, []byte{1, 2, 3})
	raw = append(raw, "trailing data-phase bytes"...)
	br := newBR(string(raw))
	resp, err := ReadResponse(br, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 200 || resp.Proto != "HTTP/1.1" || !bytes.Equal(resp.Body, []byte{1, 2, 3}) {
		t.Fatalf("response = %+v", resp)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "trailing data-phase bytes" {
		t.Fatalf("reader consumed past the body: %q", rest)
	}
	// LF-only line ends are accepted.
	if resp, err := ReadResponse(newBR("HTTP/1.1 403 Forbidden\nContent-Length: 2\n\nno"), 10); err != nil || resp.Status != 403 {
		t.Fatalf("LF-only: %+v %v", resp, err)
	}
}

func TestHTTPReject(t *testing.T) {
	for name, s := range map[string]string{
		"short start":   "HTTP/1.1 200\r\n\r\n",
		"bad status":    "HTTP/1.1 abc OK\r\n\r\n",
		"no colon":      "HTTP/1.1 200 OK\r\nBroken\r\n\r\n",
		"empty value":   "HTTP/1.1 200 OK\r\nX-A:\r\n\r\n",
		"long line":     "HTTP/1.1 200 OK\r\nX-A: " + strings.Repeat("a", MaxHeaderLine) + "\r\n\r\n",
		"many lines":    "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-A: b\r\n", MaxHeaderLines+1) + "\r\n",
		"big body":      "HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
		"bad length":    "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"cut header":    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",
		"cut body":      "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab",
		"cut firstline": "HTTP/1.1 20",
	} {
		if _, err := ReadResponse(newBR(s), 1<<20); !errors.Is(err, ErrBadHTTP) {
			t.Errorf("%s: err = %v, want ErrBadHTTP", name, err)
		}
	}
	if _, err := ReadResponse(newBR(""), 10); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
}

func FuzzHTTPResponse(f *testing.F) {
	f.Add(AppendResponse(nil, 200, "OK", ContentTypePack, []byte{0, 0, 0, 0}))
	f.Add([]byte("HTTP/1.1 404 Not Found\nContent-Length: 0\n\n"))
	f.Add([]byte("HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, err := ReadResponse(bufio.NewReaderSize(bytes.NewReader(b), MaxHeaderLine+64), 1<<16)
		if err != nil {
			return
		}
		if len(resp.Body) > 1<<16 || len(resp.Header) > MaxHeaderLines {
			t.Fatalf("limits exceeded: body %d, %d headers", len(resp.Body), len(resp.Header))
		}
	})
}
