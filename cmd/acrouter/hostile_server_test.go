package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/acrouter/acrouter/vpnlink"
)

// A hostile "SoftEther server": whatever acrouter's hub link meets, it must
// end with a clear error, in bounded time and memory — never hang.

// hostileServer accepts TLS connections on loopback, reads the client's
// first HTTP request (headers and body) and hands the connection to answer.
func hostileServer(t *testing.T, answer func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil) // only for its self-signed certificate
	srv.StartTLS()
	cert := srv.TLS
	srv.Close()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: cert.Certificates})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				br := bufio.NewReader(c)
				n := 0
				for { // request line and headers
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if v, ok := strings.CutPrefix(strings.ToLower(line), "content-length:"); ok {
						n, _ = strconv.Atoi(strings.TrimSpace(v))
					}
					if line == "\r\n" {
						break
					}
				}
				if _, err := io.CopyN(io.Discard, br, int64(min(n, 1<<20))); err != nil {
					return
				}
				answer(c, br)
			}()
		}
	}()
	return ln.Addr().String()
}

func httpHead(w io.Writer, contentLength int64) {
	fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: Keep-Alive\r\nContent-Length: %d\r\n\r\n", contentLength)
}

// dialHostile dials addr like acrouter does (pinning nothing, TLS not
// verified) with a 3 s budget (the caller's context; vpnlink's own 15 s
// handshake timeout is tested in vpnlink) and returns the error, the time it took and
// the bytes allocated meanwhile.
func dialHostile(t *testing.T, addr string, pin string) (error, time.Duration, uint64) {
	t.Helper()
	cfg := vpnlink.Config{Server: addr, Hub: "LAB", User: "router", Password: "router-pass",
		InsecureSkipVerify: pin == "", CertSHA256: pin, Logger: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	t0 := time.Now()
	c, err := vpnlink.Dial(ctx, cfg)
	d := time.Since(t0)
	runtime.ReadMemStats(&m1)
	if err == nil {
		c.Close()
		t.Fatalf("login to a hostile server succeeded")
	}
	return err, d, m1.TotalAlloc - m0.TotalAlloc
}

func TestHostileServer(t *testing.T) {
	const memBound = 32 << 20   // bytes allocated per attempt
	bigCount := func() []byte { // a PACK claiming 2^32-1 elements
		b := binary.BigEndian.AppendUint32(nil, 0xffffffff)
		return append(b, make([]byte, 64)...)
	}
	bigElement := func() []byte { // one element whose name claims 2 GiB
		b := binary.BigEndian.AppendUint32(nil, 1)
		b = binary.BigEndian.AppendUint32(b, 0x7fffffff)
		return append(b, "hello"...)
	}
	bigValues := func() []byte { // one "data" element with 2^31 values of 2 GiB each
		b := binary.BigEndian.AppendUint32(nil, 1)
		b = binary.BigEndian.AppendUint32(b, 6)
		b = append(b, "hello"...)
		b = binary.BigEndian.AppendUint32(b, 4) // VALUE_DATA
		b = binary.BigEndian.AppendUint32(b, 0x7fffffff)
		b = binary.BigEndian.AppendUint32(b, 0x7fffffff)
		return append(b, make([]byte, 100)...)
	}
	for _, c := range []struct {
		name   string
		answer func(c net.Conn, br *bufio.Reader)
		want   string // in the error, lower case
	}{
		{"garbage hello", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 not http at all\r\n\r\n")
		}, "softether"},
		{"HTTP 200 with a garbage PACK", func(c net.Conn, br *bufio.Reader) {
			httpHead(c, 32)
			c.Write([]byte(strings.Repeat("\xde\xad\xbe\xef", 8)))
		}, "pack"},
		{"PACK claiming 2^32-1 elements", func(c net.Conn, br *bufio.Reader) {
			b := bigCount()
			httpHead(c, int64(len(b)))
			c.Write(b)
		}, "pack"},
		{"PACK element name of 2 GiB", func(c net.Conn, br *bufio.Reader) {
			b := bigElement()
			httpHead(c, int64(len(b)))
			c.Write(b)
		}, "pack"},
		{"PACK value of 2 GiB", func(c net.Conn, br *bufio.Reader) {
			b := bigValues()
			httpHead(c, int64(len(b)))
			c.Write(b)
		}, "pack"},
		{"huge Content-Length streamed", func(c net.Conn, br *bufio.Reader) {
			httpHead(c, 200<<20)
			zero := make([]byte, 64<<10)
			for i := 0; i < 3200; i++ { // up to 200 MiB, until the client hangs up
				if _, err := c.Write(zero); err != nil {
					return
				}
			}
		}, "limit"},
		{"endless headers", func(c net.Conn, br *bufio.Reader) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\n")
			for i := 0; i < 1<<20; i++ {
				if _, err := fmt.Fprintf(c, "X-Keep-Alive-%d: %s\r\n", i, strings.Repeat("k", 100)); err != nil {
					return
				}
			}
		}, ""},
		{"trickle: a byte every 200 ms, forever", func(c net.Conn, br *bufio.Reader) {
			for i := 0; i < 200; i++ {
				if _, err := c.Write([]byte{"HTTP/1.1 200 OK\r\nX: "[min(i, 19)]}); err != nil {
					return
				}
				time.Sleep(200 * time.Millisecond) // the server's pace, not a wait
			}
		}, ""},
		{"silence after the request", func(c net.Conn, br *bufio.Reader) {
			io.Copy(io.Discard, br) // reads, never answers
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := hostileServer(t, c.answer)
			err, d, alloc := dialHostile(t, addr, "")
			t.Logf("%v after %v, %.1f MiB allocated", err, d.Round(time.Millisecond), float64(alloc)/(1<<20))
			if d > 4*time.Second {
				t.Errorf("took %v: the 3 s context did not bound it", d)
			}
			if alloc > memBound {
				t.Errorf("allocated %d MiB for one hostile handshake (bound %d MiB)", alloc>>20, memBound>>20)
			}
			if c.want != "" && !strings.Contains(strings.ToLower(err.Error()), c.want) {
				t.Errorf("error %q does not name the problem (%q)", err, c.want)
			}
			if err.Error() == "" || strings.Contains(err.Error(), "router-pass") {
				t.Errorf("bad error text %q", err)
			}
		})
	}

	t.Run("wrong certificate", func(t *testing.T) {
		addr := hostileServer(t, func(c net.Conn, br *bufio.Reader) {})
		pin := strings.Repeat("ab", 32)
		err, d, _ := dialHostile(t, addr, pin)
		var cm *vpnlink.CertMismatchError
		if !errors.As(err, &cm) || !vpnlink.IsPermanent(err) {
			t.Fatalf("err = %v, want a permanent *CertMismatchError", err)
		}
		t.Logf("%v after %v", err, d.Round(time.Millisecond))
	})
}
