package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func TestPassThroughTypes(t *testing.T) {
	up := newFakeUpstream(t, records)
	ts := startServer(t, Config{Upstreams: []string{up.addr}})
	for _, network := range []string{"udp", "tcp"} {
		addr := ts.udpAddr
		if network == "tcp" {
			addr = ts.tcpAddr
		}
		for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypeMX, mdns.TypeTXT, mdns.TypeSRV} {
			name := network + "." + mdns.TypeToString[qt] + ".Example.COM."
			q := query(name, qt)
			q.Id = 0x1234 + qt
			r := ask(t, network, addr, q)
			want := records("udp", q)
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("%s %s: %v", network, name, r)
			}
			if got, w := r.Answer[0].String(), want.Answer[0].String(); got != w {
				t.Errorf("%s: answer %q, want %q", network, got, w)
			}
			if r.Question[0].Name != name {
				t.Errorf("question spelling changed to %q", r.Question[0].Name)
			}
			if r.IsEdns0() != nil {
				t.Error("OPT in a reply to a non-EDNS query")
			}
		}
	}
	// Upstream sees a query id of its own, not the client's.
	if up.last() == nil || up.last().Id == 0x1234+mdns.TypeSRV {
		t.Error("client id leaked upstream (or no query seen)")
	}
}

func TestDNSSECBitsPassThrough(t *testing.T) {
	up := newFakeUpstream(t, func(network string, q *mdns.Msg) *mdns.Msg {
		m := records(network, q)
		opt := q.IsEdns0()
		if opt != nil && opt.Do() && q.CheckingDisabled {
			m.AuthenticatedData = true
			m.Answer = append(m.Answer, &mdns.RRSIG{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeRRSIG,
				Class: mdns.ClassINET, Ttl: 300}, TypeCovered: mdns.TypeA, Algorithm: 13, Labels: 2, OrigTtl: 300,
				Expiration: 2000000000, Inception: 1700000000, KeyTag: 4242, SignerName: "example.", Signature: "AAAA"})
		}
		return m
	})
	ts := startServer(t, Config{Upstreams: []string{up.addr}})
	q := query("secure.example.", mdns.TypeA)
	q.SetEdns0(1232, true)
	q.CheckingDisabled = true
	r := ask(t, "udp", ts.udpAddr, q)
	if !r.AuthenticatedData || len(r.Answer) != 2 || r.Answer[1].Header().Rrtype != mdns.TypeRRSIG {
		t.Fatalf("DNSSEC answer not passed through: %v", r)
	}
	if opt := r.IsEdns0(); opt == nil || !opt.Do() {
		t.Fatal("reply lacks OPT with DO")
	}
	// The same question without DO is a different cache entry.
	q2 := query("secure.example.", mdns.TypeA)
	q2.SetEdns0(1232, false)
	if r := ask(t, "udp", ts.udpAddr, q2); len(r.Answer) != 1 {
		t.Fatalf("non-DO query got the DO answer: %v", r)
	}
	if up.udpCount.Load() != 2 {
		t.Fatalf("upstream queries %d, want 2", up.udpCount.Load())
	}
}

func bigTXT(network string, q *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetReply(q)
	if network == "udp" {
		m.Truncated = true // what a server does when the answer does not fit
		return m
	}
	for i := range 40 {
		m.Answer = append(m.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeTXT,
			Class: mdns.ClassINET, Ttl: 300}, Txt: []string{strings.Repeat("x", 50) + string(rune('a'+i%26))}})
	}
	return m
}

func TestTruncatedUpstreamRetriesTCP(t *testing.T) {
	up := newFakeUpstream(t, bigTXT)
	ts := startServer(t, Config{Upstreams: []string{up.addr}})
	// A non-EDNS UDP client gets a truncated answer with TC ...
	q := query("big.example.", mdns.TypeTXT)
	c := &mdns.Client{Net: "udp", Timeout: 10 * time.Second}
	r, _, err := c.Exchange(q, ts.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	r.Compress = true // as it was on the wire
	if !r.Truncated || len(r.Answer) >= 40 || r.Len() > 512 {
		t.Fatalf("want TC answer ≤512 bytes, got TC=%v answers=%d len=%d", r.Truncated, len(r.Answer), r.Len())
	}
	// ... and over TCP the whole answer (from the cache).
	r = ask(t, "tcp", ts.tcpAddr, q)
	if r.Truncated || len(r.Answer) != 40 {
		t.Fatalf("TCP answer: TC=%v answers=%d", r.Truncated, len(r.Answer))
	}
	// An EDNS client with a large buffer gets it all over UDP (cached too).
	q3 := query("big.example.", mdns.TypeTXT)
	q3.SetEdns0(4096, false)
	if r := ask(t, "udp", ts.udpAddr, q3); r.Truncated || len(r.Answer) != 40 {
		t.Fatalf("EDNS 4096 answer: TC=%v answers=%d", r.Truncated, len(r.Answer))
	}
	if up.udpCount.Load() != 1 || up.tcpCount.Load() != 1 {
		t.Fatalf("upstream udp=%d tcp=%d, want 1 and 1", up.udpCount.Load(), up.tcpCount.Load())
	}
	st := ts.srv.Stats()
	if st.TCPRetries != 1 || st.Truncated != 1 || st.CacheHits != 2 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestUpstreamDownServFail(t *testing.T) {
	ts := startServer(t, Config{Upstreams: []string{blackhole(t)}, Timeout: 100 * time.Millisecond})
	r := ask(t, "udp", ts.udpAddr, query("down.example.", mdns.TypeA))
	if r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", mdns.RcodeToString[r.Rcode])
	}
	// Our own SERVFAIL is not cached.
	ask(t, "udp", ts.udpAddr, query("down.example.", mdns.TypeA))
	if st := ts.srv.Stats(); st.ServFail != 2 || st.UpstreamErrors != 2 || st.CacheHits != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestQueryBudget(t *testing.T) {
	third := newFakeUpstream(t, records)
	ts := startServer(t, Config{Upstreams: []string{blackhole(t), blackhole(t), third.addr},
		Timeout: 100 * time.Millisecond, QueryTimeout: 150 * time.Millisecond})
	r := ask(t, "udp", ts.udpAddr, query("budget.example.", mdns.TypeA))
	if r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL once the budget is used up", mdns.RcodeToString[r.Rcode])
	}
	if n := third.udpCount.Load(); n != 0 {
		t.Fatalf("third upstream asked after the budget ran out")
	}
}

func TestFailoverToSecondUpstream(t *testing.T) {
	up := newFakeUpstream(t, records)
	ts := startServer(t, Config{Upstreams: []string{blackhole(t), up.addr}, Timeout: 100 * time.Millisecond})
	r := ask(t, "udp", ts.udpAddr, query("fail.example.", mdns.TypeA))
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("got %v", r)
	}
	// The failed upstream is now tried last: the next query goes straight
	// to the working one.
	ask(t, "udp", ts.udpAddr, query("fail2.example.", mdns.TypeA))
	st := ts.srv.Stats()
	if st.Failovers != 1 || st.UpstreamErrors != 1 || st.Forwarded != 2 {
		t.Fatalf("Stats = %+v", st)
	}
	if up.udpCount.Load() != 2 {
		t.Fatalf("working upstream saw %d queries", up.udpCount.Load())
	}
}

func TestFailoverOnServFailAndRefused(t *testing.T) {
	bad := newFakeUpstream(t, func(network string, q *mdns.Msg) *mdns.Msg {
		m := new(mdns.Msg)
		return m.SetRcode(q, mdns.RcodeRefused)
	})
	good := newFakeUpstream(t, records)
	ts := startServer(t, Config{Upstreams: []string{bad.addr, good.addr}})
	if r := ask(t, "udp", ts.udpAddr, query("x.example.", mdns.TypeA)); r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("got %v", r)
	}
	// With only the refusing upstream, its answer is passed on.
	ts2 := startServer(t, Config{Upstreams: []string{bad.addr}})
	if r := ask(t, "udp", ts2.udpAddr, query("x.example.", mdns.TypeA)); r.Rcode != mdns.RcodeRefused {
		t.Fatalf("got %v", r)
	}
}

func TestStaticAndRouterName(t *testing.T) {
	up := newFakeUpstream(t, records)
	ts := startServer(t, Config{
		Upstreams:  []string{up.addr},
		Static:     map[string][]netip.Addr{"Printer.LAN": {netip.MustParseAddr("192.168.30.5"), netip.MustParseAddr("fd00::5")}},
		RouterName: "router", RouterAddr: netip.MustParseAddr("192.168.30.1"),
	})
	cases := []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"printer.lan.", mdns.TypeA, []string{"printer.lan.\t60\tIN\tA\t192.168.30.5"}},
		{"PRINTER.lan.", mdns.TypeAAAA, []string{"PRINTER.lan.\t60\tIN\tAAAA\tfd00::5"}},
		{"printer.lan.", mdns.TypeMX, nil},
		{"5.30.168.192.in-addr.arpa.", mdns.TypePTR, []string{"5.30.168.192.in-addr.arpa.\t60\tIN\tPTR\tprinter.lan."}},
		{"5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", mdns.TypePTR,
			[]string{"5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.\t60\tIN\tPTR\tprinter.lan."}},
		{"router.", mdns.TypeA, []string{"router.\t60\tIN\tA\t192.168.30.1"}},
		{"1.30.168.192.in-addr.arpa.", mdns.TypePTR, []string{"1.30.168.192.in-addr.arpa.\t60\tIN\tPTR\trouter."}},
	}
	for _, c := range cases {
		r := ask(t, "udp", ts.udpAddr, query(c.name, c.qtype))
		var got []string
		for _, rr := range r.Answer {
			got = append(got, rr.String())
		}
		if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || !slices.Equal(got, c.want) {
			t.Errorf("%s %s: rcode %d aa=%v answers %q, want %q", c.name, mdns.TypeToString[c.qtype], r.Rcode, r.Authoritative, got, c.want)
		}
	}
	if n := up.udpCount.Load(); n != 0 {
		t.Fatalf("local names went upstream %d times", n)
	}
	// SetHosts adds names without losing the static ones.
	if err := ts.srv.SetHosts(map[string][]netip.Addr{"laptop": {netip.MustParseAddr("192.168.30.11")}}); err != nil {
		t.Fatal(err)
	}
	if r := ask(t, "udp", ts.udpAddr, query("laptop.", mdns.TypeA)); len(r.Answer) != 1 {
		t.Fatalf("SetHosts name: %v", r)
	}
	if r := ask(t, "udp", ts.udpAddr, query("printer.lan.", mdns.TypeA)); len(r.Answer) != 1 {
		t.Fatalf("static name lost after SetHosts: %v", r)
	}
}

func TestCacheHitAndTTL(t *testing.T) {
	up := newFakeUpstream(t, records)
	clk := newClock()
	ts := startServer(t, Config{Upstreams: []string{up.addr}, Now: clk.Now})
	q := query("cached.example.", mdns.TypeA)
	ask(t, "udp", ts.udpAddr, q)
	clk.Advance(100 * time.Second)
	q.Id = 0x777
	r := ask(t, "tcp", ts.tcpAddr, q) // cache is shared by UDP and TCP
	if up.udpCount.Load() != 1 {
		t.Fatalf("upstream queried %d times, want 1", up.udpCount.Load())
	}
	if ttl := r.Answer[0].Header().Ttl; ttl != 200 {
		t.Fatalf("cached TTL %d, want 300-100", ttl)
	}
	// Negative answers are cached for the SOA minimum (30 s).
	nq := query("nx.example.", mdns.TypeCAA)
	if r := ask(t, "udp", ts.udpAddr, nq); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("got %v", r)
	}
	ask(t, "udp", ts.udpAddr, nq)
	if up.udpCount.Load() != 2 {
		t.Fatalf("NXDOMAIN not cached: %d upstream queries", up.udpCount.Load())
	}
	clk.Advance(201 * time.Second) // both entries expired
	ask(t, "udp", ts.udpAddr, q)
	ask(t, "udp", ts.udpAddr, nq)
	if up.udpCount.Load() != 4 {
		t.Fatalf("expired entries served: %d upstream queries", up.udpCount.Load())
	}
	if st := ts.srv.Stats(); st.CacheHits != 2 || st.CacheMisses != 4 || st.CacheEntries != 2 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestCacheLRUBound(t *testing.T) {
	c := newCache(2, time.Hour)
	now := time.Now()
	for i, n := range []string{"a.", "b.", "c."} {
		q := query(n, mdns.TypeA)
		c.put(keyOf(q), records("udp", q), now.Add(time.Duration(i)))
	}
	if c.len() != 2 || c.get(keyOf(query("a.", mdns.TypeA)), now) != nil || c.get(keyOf(query("c.", mdns.TypeA)), now) == nil {
		t.Fatal("LRU did not evict the oldest entry")
	}
	q := query("tc.", mdns.TypeA)
	m := records("udp", q)
	m.Truncated = true
	c.put(keyOf(q), m, now)
	if c.get(keyOf(q), now) != nil {
		t.Fatal("truncated answer cached")
	}
}

func TestRateLimit(t *testing.T) {
	up := newFakeUpstream(t, records)
	clk := newClock()
	ts := startServer(t, Config{Upstreams: []string{up.addr}, Now: clk.Now, RateLimit: 1, RateBurst: 2})
	codes := []int{}
	for range 3 {
		codes = append(codes, ask(t, "udp", ts.udpAddr, query("rl.example.", mdns.TypeA)).Rcode)
	}
	if !slices.Equal(codes, []int{mdns.RcodeSuccess, mdns.RcodeSuccess, mdns.RcodeRefused}) {
		t.Fatalf("rcodes %v", codes)
	}
	clk.Advance(time.Second)
	if r := ask(t, "udp", ts.udpAddr, query("rl.example.", mdns.TypeA)); r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("after refill: %v", r)
	}
	if st := ts.srv.Stats(); st.RateLimited != 1 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestParseResolvConf(t *testing.T) {
	in := `# comment
nameserver 127.0.0.53
search example.com
nameserver 2001:db8::1 ; trailing comment
nameserver fe80::1%eth0
nameserver 127.0.0.53
nameserver not-an-ip
nameserver
options edns0 trust-ad
  nameserver 192.0.2.9
`
	got, search := parseResolvConfAll(strings.NewReader(in))
	want := []string{"127.0.0.53:53", "[2001:db8::1]:53", "[fe80::1%eth0]:53", "192.0.2.9:53"}
	if !slices.Equal(got, want) || !slices.Equal(search, []string{"example.com"}) {
		t.Fatalf("got %q %q, want %q [example.com]", got, search, want)
	}
	path := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(path, []byte("search a.example b.example.\ndomain ignored.example\nsearch corp lan\nnameserver ::1\n"), 0o644)
	servers, search, err := ReadResolvConf(path)
	if err != nil || !slices.Equal(servers, []string{"[::1]:53"}) || !slices.Equal(search, []string{"corp", "lan"}) {
		t.Fatalf("ReadResolvConf: %q %q %v", servers, search, err)
	}
	if _, _, err := ReadResolvConf(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestResolvConfReread(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	write := func(s string, mtime time.Time) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	write("nameserver 192.0.2.1\n", t0)
	clk := newClock()
	fx := &fakeExchanger{}
	s, err := newServer(Config{ResolvConf: path, Now: clk.Now, upstream: fx})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	resolve := func(name string) {
		t.Helper()
		out, p := s.answer(packQuery(t, query(name, mdns.TypeA)), testClient, false)
		if p != nil {
			out = s.finish(s.ctx, p)
		}
		var m mdns.Msg
		if err := m.Unpack(out); err != nil || m.Rcode != mdns.RcodeSuccess {
			t.Fatalf("%s: %v %v", name, err, m)
		}
	}
	resolve("a.example.")
	write("nameserver 2001:db8::1\nnameserver 192.0.2.2\n", t0.Add(time.Minute))
	resolve("b.example.") // within a second: the old list is still used
	clk.Advance(2 * time.Second)
	resolve("c.example.")
	want := []string{"udp 192.0.2.1:53", "udp 192.0.2.1:53", "udp [2001:db8::1]:53"}
	if got := fx.asked(); !slices.Equal(got, want) {
		t.Fatalf("asked %q, want %q", got, want)
	}
	if st := s.Stats(); st.ResolvConfReloads != 2 {
		t.Fatalf("reloads = %d", st.ResolvConfReloads)
	}
	// An empty or missing file means SERVFAIL, not silence.
	os.Remove(path)
	clk.Advance(2 * time.Second)
	out, p := s.answer(packQuery(t, query("d.example.", mdns.TypeA)), testClient, false)
	out = s.finish(s.ctx, p)
	var m mdns.Msg
	if err := m.Unpack(out); err != nil || m.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("missing resolv.conf: %v %v", err, m)
	}
}

func packQuery(t testing.TB, q *mdns.Msg) []byte {
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMalformedAndRefused(t *testing.T) {
	s, err := newServer(Config{Upstreams: []string{"192.0.2.1:53"}, upstream: &fakeExchanger{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	// Garbage after a header: FORMERR with the id.
	out, p := s.answer([]byte{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff}, testClient, false)
	if p != nil || len(out) != 12 || out[0] != 0xab || out[1] != 0xcd || out[3]&0xf != mdns.RcodeFormatError || out[2]&0x80 == 0 {
		t.Fatalf("FORMERR reply %x", out)
	}
	// Too short and responses are dropped.
	for _, b := range [][]byte{{1, 2, 3}, packQuery(t, new(mdns.Msg).SetQuestion("x.", mdns.TypeA).SetRcode(query("x.", mdns.TypeA), 0))} {
		if out, p := s.answer(b, testClient, false); out != nil || p != nil {
			t.Fatalf("answered %x", b)
		}
	}
	axfr := query("example.", mdns.TypeAXFR)
	out, _ = s.answer(packQuery(t, axfr), testClient, true)
	var m mdns.Msg
	if err := m.Unpack(out); err != nil || m.Rcode != mdns.RcodeRefused || m.Id != axfr.Id {
		t.Fatalf("AXFR: %v %v", err, m)
	}
	if st := s.Stats(); st.Malformed != 3 || st.Refused != 1 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestTCPLimitsAndIdle(t *testing.T) {
	up := newFakeUpstream(t, records)
	ts := startServer(t, Config{Upstreams: []string{up.addr}, MaxTCPConns: 1, TCPIdleTimeout: 200 * time.Millisecond})
	a, err := net.Dial("tcp", ts.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// Two pipelined queries on one connection, answered in order.
	var buf []byte
	for _, n := range []string{"one.example.", "two.example."} {
		b := packQuery(t, query(n, mdns.TypeA))
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(b)))
		buf = append(buf, b...)
	}
	if _, err := a.Write(buf); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"one.example.", "two.example."} {
		var hdr [2]byte
		if _, err := io.ReadFull(a, hdr[:]); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(a, b); err != nil {
			t.Fatal(err)
		}
		var m mdns.Msg
		if err := m.Unpack(b); err != nil || m.Question[0].Name != n {
			t.Fatalf("pipelined answer %v %v", err, m.Question)
		}
	}
	// A second connection is over the cap and closed at once.
	b, err := net.Dial("tcp", ts.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := b.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection over the cap was served")
	}
	// The idle first connection is closed by the server.
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
	if st := ts.srv.Stats(); st.TCPConnsRejected != 1 || st.TCPQueries != 2 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestCloseWaits(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// An upstream exchange in flight is aborted by Close.
	started := make(chan struct{})
	s, err := New(Config{Upstreams: []string{"192.0.2.1:53"}, upstream: &blockingExchanger{started: started}}, pc, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(packQuery(t, query("slow.example.", mdns.TypeA)))
	<-started
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}

// blockingExchanger blocks every exchange until its context ends.
type blockingExchanger struct {
	once    sync.Once
	started chan struct{}
}

func (b *blockingExchanger) exchange(ctx context.Context, _ time.Time, m *mdns.Msg, network, server string) (*mdns.Msg, error) {
	b.once.Do(func() { close(b.started) })
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestConfigErrors(t *testing.T) {
	for name, c := range map[string]Config{
		"bad upstream":    {Upstreams: []string{"nohost"}},
		"bad static":      {Static: map[string][]netip.Addr{"bad..name": {netip.MustParseAddr("192.0.2.1")}}},
		"router w/o addr": {RouterName: "router"},
		"invalid address": {Static: map[string][]netip.Addr{"a": {{}}}},
	} {
		if _, err := New(c, nil, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if hp, err := hostPort("2001:db8::1"); err != nil || hp != "[2001:db8::1]:53" {
		t.Fatalf("hostPort: %q %v", hp, err)
	}
}

// gateExchanger blocks every exchange until release is closed.
type gateExchanger struct {
	calls   atomic.Int32
	started chan struct{}
	release chan struct{}
}

func (g *gateExchanger) exchange(ctx context.Context, _ time.Time, m *mdns.Msg, network, server string) (*mdns.Msg, error) {
	g.calls.Add(1)
	g.started <- struct{}{}
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return records(network, m), nil
}

func TestIdenticalQueriesCoalesced(t *testing.T) {
	g := &gateExchanger{started: make(chan struct{}, 8), release: make(chan struct{})}
	s, err := newServer(Config{Upstreams: []string{"192.0.2.1:53"}, upstream: g, RateLimit: -1, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	coalesced := make(chan struct{}, 8)
	s.onCoalesce = func() { coalesced <- struct{}{} }
	const n = 5
	replies := make(chan *mdns.Msg, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := query("same.example.", mdns.TypeA)
			q.Id = uint16(100 + i)
			out, p := s.answer(packQuery(t, q), testClient, false)
			if p != nil {
				out = s.finish(s.ctx, p)
			}
			m := new(mdns.Msg)
			if err := m.Unpack(out); err != nil || m.Id != q.Id {
				t.Errorf("reply %v id %d: %v", m, q.Id, err)
			}
			replies <- m
		}()
	}
	<-g.started
	for range n - 1 {
		<-coalesced
	}
	close(g.release)
	wg.Wait()
	close(replies)
	for m := range replies {
		if len(m.Answer) != 1 {
			t.Fatalf("reply without answer: %v", m)
		}
	}
	if c := g.calls.Load(); c != 1 {
		t.Fatalf("%d upstream exchanges for %d identical queries", c, n)
	}
	if st := s.Stats(); st.Coalesced != n-1 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestEDNSMatchesClient(t *testing.T) {
	// A contrary upstream: OPT when the query had none, none when it had one.
	up := newFakeUpstream(t, func(network string, q *mdns.Msg) *mdns.Msg {
		m := records(network, q)
		if q.IsEdns0() != nil {
			m.Extra = nil
		} else {
			m.SetEdns0(4096, false)
			if strings.HasPrefix(q.Question[0].Name, "badcookie") {
				m.Rcode = mdns.RcodeBadCookie // extended rcode: needs OPT
			}
		}
		return m
	})
	ts := startServer(t, Config{Upstreams: []string{up.addr}})
	if r := ask(t, "udp", ts.udpAddr, query("plain.example.", mdns.TypeA)); r.IsEdns0() != nil || len(r.Answer) != 1 {
		t.Fatalf("non-EDNS client got OPT: %v", r)
	}
	q := query("edns.example.", mdns.TypeA)
	q.SetEdns0(1400, true)
	r := ask(t, "udp", ts.udpAddr, q)
	if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != ourUDPSize || !opt.Do() {
		t.Fatalf("EDNS client got no OPT (or a wrong one): %v", r)
	}
	// An extended rcode cannot be expressed without OPT: SERVFAIL.
	if r := ask(t, "udp", ts.udpAddr, query("badcookie.example.", mdns.TypeA)); r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("got %v", r)
	}
	// The upstream never sees the client's cookie, and gets a sane buffer size.
	q2 := query("cookie.example.", mdns.TypeA)
	q2.SetEdns0(512, false)
	opt := q2.IsEdns0()
	opt.Option = append(opt.Option, &mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0102030405060708"},
		&mdns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2}})
	ask(t, "udp", ts.udpAddr, q2)
	uo := up.last().IsEdns0()
	if uo == nil || uo.UDPSize() != ourUDPSize || len(uo.Option) != 1 || uo.Option[0].Option() != 65001 {
		t.Fatalf("upstream OPT %v", uo)
	}
}

func TestServeIPv6Socket(t *testing.T) {
	up := newFakeUpstream(t, records)
	r6 := netip.MustParseAddr("fd00:ac::1")
	ts := startServer(t, Config{Upstreams: []string{up.addr}, RouterName: "router",
		RouterAddr: netip.MustParseAddr("192.168.30.1"), RouterAddr6: r6})
	pc, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.Serve(pc, ln); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ net, addr string }{{"udp", pc.LocalAddr().String()}, {"tcp", ln.Addr().String()}} {
		r := ask(t, c.net, c.addr, query("router.", mdns.TypeAAAA))
		if len(r.Answer) != 1 || r.Answer[0].(*mdns.AAAA).AAAA.String() != r6.String() {
			t.Errorf("%s over IPv6: %v", c.net, r.Answer)
		}
	}
	// The IPv4 socket still answers, and Close closes the added ones.
	if r := ask(t, "udp", ts.udpAddr, query("router.", mdns.TypeA)); len(r.Answer) != 1 {
		t.Errorf("IPv4 socket: %v", r.Answer)
	}
	ts.srv.Close()
	if _, err := ln.Accept(); err == nil {
		t.Error("added listener still open after Close")
	}
	if err := ts.srv.Serve(nil, nil); err == nil {
		t.Error("Serve after Close succeeded")
	}
}
