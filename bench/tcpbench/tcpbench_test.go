package main

import (
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSummarizeNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted input
		d = append(d, time.Duration(i)*time.Microsecond)
	}
	s := summarize(d)
	if s.N != 100 || s.Min != 1 || s.Max != 100 || s.P50 != 50 || s.P90 != 90 || s.P99 != 99 || s.Mean != 50.5 {
		t.Fatalf("summary %+v", s)
	}
	if d[0] != 100*time.Microsecond {
		t.Fatal("summarize reordered its input")
	}
	if one := summarize([]time.Duration{7 * time.Microsecond}); one.P50 != 7 || one.P99 != 7 {
		t.Fatalf("single sample: %+v", one)
	}
	if (summarize(nil) != Latency{}) {
		t.Fatal("empty sample not zero")
	}
}

// startEcho runs the echo server's accept loop on a loopback listener.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{conns: map[net.Conn]struct{}{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.acceptLoop(ln)
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		s.closeAll()
		s.wg.Wait()
	})
	return ln.Addr().String()
}

func TestClientModesOnLoopback(t *testing.T) {
	addr := startEcho(t)
	r, err := runConnect([]string{"-a", addr, "-n", "20"})
	if err != nil {
		t.Fatal(err)
	}
	if c := r.(ConnectResult); c.OK != 20 || c.Connect.N != 20 || c.Errors.Total != 0 {
		t.Fatalf("connect: %+v", c)
	}
	r, err = runRR([]string{"-a", addr, "-n", "100", "-warmup", "5", "-s", "64"})
	if err != nil {
		t.Fatal(err)
	}
	if c := r.(RRResult); c.OK != 100 || c.RTT.N != 100 || c.Errors.Total != 0 || c.RTT.P50 <= 0 {
		t.Fatalf("rr: %+v", c)
	}
	r, err = runCPS([]string{"-a", addr, "-c", "4", "-d", "2s", "-cap", "25"})
	if err != nil {
		t.Fatal(err)
	}
	if c := r.(CPSResult); c.OK != 100 || c.Total.N != 100 || c.Errors.Total != 0 {
		t.Fatalf("cps (4 workers x 25): %+v", c)
	}
	ready := filepath.Join(t.TempDir(), "ready")
	r, err = runHold([]string{"-a", addr, "-n", "50", "-rate", "100000", "-hold", "0s", "-ready", ready})
	if err != nil {
		t.Fatal(err)
	}
	h := r.(HoldResult)
	if h.Established != 50 || h.AliveAfterOpen != 50 || h.AliveAfterHold != 50 || h.FirstFailAt != -1 || h.StoppedBy != "target" {
		t.Fatalf("hold: %+v", h)
	}
	if b, err := os.ReadFile(ready); err != nil || strings.TrimSpace(string(b)) != "50" {
		t.Fatalf("ready file: %q %v", b, err)
	}
}

func TestHoldCountsFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every open is refused
	r, err := runHold([]string{"-a", addr, "-n", "50", "-rate", "100000", "-maxfail", "5", "-p", "1", "-hold", "0s"})
	if err != nil {
		t.Fatal(err)
	}
	h := r.(HoldResult)
	if h.Established != 0 || h.FirstFailAt != 0 || h.StoppedBy != "max-failures" || h.OpenErrors.Kinds["refused"] != 5 {
		t.Fatalf("hold against a closed port: %+v", h)
	}
}

// fakeDNS answers every query with rcode 3 and, for the name "x.test", an
// echo of its ID mangled once first (a stale reply the client must skip).
func fakeDNS(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := buf[:n]
			stale := append([]byte(nil), q...)
			binary.BigEndian.PutUint16(stale, binary.BigEndian.Uint16(q)+1)
			stale[2] |= 0x80
			pc.WriteTo(stale, from)
			resp := append([]byte(nil), q...)
			resp[2] |= 0x80
			resp[3] = (resp[3] &^ 0xf) | 3
			pc.WriteTo(resp, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String()
}

func TestDNSMode(t *testing.T) {
	srv := fakeDNS(t)
	for _, kind := range []string{"miss", "hit"} {
		r, err := runDNS([]string{"-s", srv, "-n", "30", "-mode", kind})
		if err != nil {
			t.Fatal(err)
		}
		d := r.(DNSResult)
		if d.Sent != 30 || d.Answered != 30 || d.RCodes["NXDOMAIN"] != 30 || d.Errors.Total != 0 {
			t.Fatalf("%s: %+v", kind, d)
		}
	}
}

func TestParseReply(t *testing.T) {
	q, err := buildQuery(nil, 0x1234, "WwW.lab.test.")
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != 12+len("\x03WwW\x03lab\x04test\x00")+4 {
		t.Fatalf("query length %d", len(q))
	}
	resp := append([]byte(nil), q...)
	resp[2] |= 0x80
	binary.BigEndian.PutUint16(resp[6:], 2)
	copy(resp[13:16], "www") // resolvers may change the case
	r, err := parseReply(resp, q)
	if err != nil || r.RCode != 0 || r.Answers != 2 || r.ID != 0x1234 {
		t.Fatalf("reply %+v %v", r, err)
	}
	if _, err := parseReply(q, q); err == nil {
		t.Fatal("a query (QR clear) was accepted as a reply")
	}
	other := append([]byte(nil), resp...)
	other[14] = 'X'
	if _, err := parseReply(other, q); err == nil {
		t.Fatal("a reply for another name was accepted")
	}
	if _, err := parseReply(resp[:20], q); err == nil {
		t.Fatal("a truncated question was accepted")
	}
	if _, err := buildQuery(nil, 1, "a..b"); err == nil {
		t.Fatal("empty label accepted")
	}
}

func FuzzParseReply(f *testing.F) {
	q, _ := buildQuery(nil, 7, "www.lab.test")
	good := append([]byte(nil), q...)
	good[2] |= 0x80
	f.Add(good)
	f.Add([]byte{})
	f.Add(q[:11])
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := parseReply(p, q)
		if err == nil && (r.ID != 7 || len(p) < len(q)) {
			t.Fatalf("accepted %x as %+v", p, r)
		}
	})
}
