package hubdial

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
)

// FuzzConnectResponse feeds arbitrary proxy replies to the CONNECT reply
// decoder: no panic, bounded consumption, sane results.
func FuzzConnectResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 Connection established\r\n\r\n",
		"HTTP/1.0 200 OK\r\nProxy-Agent: tinyproxy/1.11.1\r\n\r\nTLS...",
		"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 403 Forbidden\n\n",
		"HTTP/1.1 200\r\n\r\n",
		"SSH-2.0-OpenSSH_9.2\r\n",
		"HTTP/1.1 2000 x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nbroken header line\r\n\r\n",
		"\x05\x00",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		const max = 1024
		cr := &countReader{r: bytes.NewReader(b)}
		br := bufio.NewReaderSize(cr, 256)
		r, err := readConnectResponse(br, max)
		consumed := cr.n - br.Buffered()
		if consumed > max+256 {
			t.Fatalf("consumed %d bytes with a limit of %d", consumed, max)
		}
		if err != nil {
			return
		}
		if r.Code < 100 || r.Code > 999 || !strings.HasPrefix(r.Proto, "HTTP/1.") {
			t.Fatalf("accepted %+v", r)
		}
		head := b[:consumed]
		if !bytes.HasSuffix(head, []byte("\n\n")) && !bytes.HasSuffix(head, []byte("\n\r\n")) {
			t.Fatalf("stopped before the end of the header: %q", head)
		}
		for _, s := range []string{r.Reason, r.ProxyAuthenticate} {
			for _, c := range []byte(s) {
				if (c < 0x20 || c > 0x7e) && c != 0xe2 && c != 0x80 && c != 0xa6 { // "…" is allowed
					t.Fatalf("unsanitized byte %#x in %q", c, s)
				}
			}
		}
	})
}

type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// FuzzSOCKSReplies feeds arbitrary bytes to the SOCKS5 reply decoders.
func FuzzSOCKSReplies(f *testing.F) {
	for _, s := range [][]byte{
		{5, 0},
		{5, 2, 1, 0},
		{5, 0xff},
		{1, 1},
		{5, 0, 0, 1, 127, 0, 0, 1, 0x15, 0xb3},
		{5, 0, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80},
		append([]byte{5, 0, 0, 3, 9}, "fake.test\x12\x34"...),
		{5, 5, 0, 1, 0, 0, 0, 0, 0, 0},
		{5, 0, 0, 9},
		{4, 0x5a, 0, 0},
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var buf [2]byte
		readMethodReply(bytes.NewReader(b), &buf)
		readAuthReply(bytes.NewReader(b), &buf)
		r := bytes.NewReader(b)
		bound, err := readConnectReply(r)
		if consumed := len(b) - r.Len(); consumed > 4+1+255+2 {
			t.Fatalf("consumed %d bytes", consumed)
		}
		if err != nil {
			if bound != "" {
				t.Fatalf("address %q with error %v", bound, err)
			}
			return
		}
		if b[1] != 0 {
			t.Fatalf("accepted reply code %d", b[1])
		}
		if _, _, err := net.SplitHostPort(bound); err != nil {
			t.Fatalf("bound address %q: %v", bound, err)
		}
	})
}
