package dns

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// FuzzHandleQuery feeds arbitrary bytes as a UDP (and TCP) query through
// the whole query path with a fake upstream.
func FuzzHandleQuery(f *testing.F) {
	for _, q := range []*mdns.Msg{
		query("example.com.", mdns.TypeA),
		query("printer.lan.", mdns.TypeAAAA),
		query("5.30.168.192.in-addr.arpa.", mdns.TypePTR),
		query("big.example.", mdns.TypeTXT).SetEdns0(4096, true),
		query("example.", mdns.TypeAXFR),
	} {
		b, _ := q.Pack()
		f.Add(b)
	}
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0})
	fx := &fakeExchanger{answer: func(server string, q *mdns.Msg) (*mdns.Msg, error) {
		if q.Question[0].Qtype == mdns.TypeTXT {
			return bigTXT("tcp", q), nil
		}
		return records("udp", q), nil
	}}
	s, err := newServer(Config{
		Upstreams: []string{"192.0.2.1:53"}, upstream: fx, CacheSize: 16, RateLimit: -1,
		Static: map[string][]netip.Addr{"printer.lan": {netip.MustParseAddr("192.168.30.5"), netip.MustParseAddr("fd00::5")}},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 65535 {
			return
		}
		for _, tcp := range []bool{false, true} {
			out, p := s.answer(b, testClient, tcp)
			if p != nil {
				out = s.finish(s.ctx, p)
			}
			if out == nil {
				continue
			}
			if len(out) < 12 || out[0] != b[0] || out[1] != b[1] || out[2]&0x80 == 0 {
				t.Fatalf("reply %x to %x: not a response with the query id", out, b)
			}
			if !tcp && p != nil && len(out) > p.maxSize {
				t.Fatalf("UDP reply of %d bytes exceeds the client's %d", len(out), p.maxSize)
			}
		}
	})
}

// udpRoundTrip sends q on c and reads one reply (a lost datagram fails the
// benchmark instead of hanging it).
func udpRoundTrip(b *testing.B, c net.Conn, q, buf []byte) {
	if _, err := c.Write(q); err != nil {
		b.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(buf)
	if err != nil || n < 12 || binary.BigEndian.Uint16(buf) != binary.BigEndian.Uint16(q) {
		b.Fatalf("bad reply: %v", err)
	}
}

func BenchmarkDNSCacheHit(b *testing.B) {
	up := newFakeUpstream(b, records)
	ts := startServer(b, Config{Upstreams: []string{up.addr}})
	q := packQuery(b, query("www.example.com.", mdns.TypeA))
	c, err := net.Dial("udp", ts.udpAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 65535)
	udpRoundTrip(b, c, q, buf) // prime the cache
	b.Run("handler", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if out, _ := ts.srv.answer(q, testClient, false); out == nil {
				b.Fatal("miss")
			}
		}
	})
	b.Run("udp", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			udpRoundTrip(b, c, q, buf)
		}
	})
	if up.udpCount.Load() != 1 {
		b.Fatalf("upstream queried %d times", up.udpCount.Load())
	}
}

func BenchmarkDNSForward(b *testing.B) {
	up := newFakeUpstream(b, records)
	ts := startServer(b, Config{Upstreams: []string{up.addr}, CacheSize: -1})
	q := packQuery(b, query("www.example.com.", mdns.TypeA))
	c, err := net.Dial("udp", ts.udpAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 65535)
	b.ReportAllocs()
	for b.Loop() {
		udpRoundTrip(b, c, q, buf)
	}
}
