package dns

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// rawUpstream is a UDP upstream on loopback that hands every query to
// respond, which returns the datagrams to send back (in order).
type rawUpstream struct {
	addr string
	mu   sync.Mutex
	seen []rawQuery
}

type rawQuery struct {
	from *net.UDPAddr
	id   uint16
}

func newRawUpstream(t *testing.T, respond func(n int, q *mdns.Msg) [][]byte) *rawUpstream {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{addr: pc.LocalAddr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for n := 0; ; n++ {
			k, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			q := new(mdns.Msg)
			if q.Unpack(buf[:k]) != nil {
				continue
			}
			u.mu.Lock()
			u.seen = append(u.seen, rawQuery{from: from, id: q.Id})
			u.mu.Unlock()
			for _, d := range respond(n, q) {
				pc.WriteToUDP(d, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return u
}

func (u *rawUpstream) queries() []rawQuery {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]rawQuery(nil), u.seen...)
}

func packed(t testing.TB, m *mdns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A datagram that does not match the query (wrong ID, wrong question) is
// never taken as the answer: the socket is dropped and the query goes out
// again on a fresh socket (new source port) with a new ID.
func TestUpstreamMismatchDropsSocket(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoof func(q *mdns.Msg) *mdns.Msg
	}{
		{"wrong id", func(q *mdns.Msg) *mdns.Msg {
			m := records("udp", q)
			m.Id = q.Id ^ 0x5a5a
			return m
		}},
		{"wrong name", func(q *mdns.Msg) *mdns.Msg {
			q2 := q.Copy()
			q2.Question[0].Name = "evil.example."
			m := records("udp", q2)
			m.Id = q.Id
			return m
		}},
		{"wrong type", func(q *mdns.Msg) *mdns.Msg {
			q2 := q.Copy()
			q2.Question[0].Qtype = mdns.TypeAAAA
			m := records("udp", q2)
			m.Id = q.Id
			return m
		}},
		{"not a response", func(q *mdns.Msg) *mdns.Msg {
			m := q.Copy()
			return m
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newRawUpstream(t, func(n int, q *mdns.Msg) [][]byte {
				if n == 0 { // only the spoof, as if it won the race
					return [][]byte{packed(t, tc.spoof(q))}
				}
				return [][]byte{packed(t, records("udp", q))}
			})
			ts := startServer(t, Config{Upstreams: []string{up.addr}})
			r := ask(t, "udp", ts.udpAddr, query("www.example.com.", mdns.TypeA))
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "203.0.113.7" {
				t.Fatalf("answer %v", r)
			}
			qs := up.queries()
			if len(qs) != 2 {
				t.Fatalf("upstream saw %d queries, want 2 (spoofed, then a retry)", len(qs))
			}
			if qs[0].from.Port == qs[1].from.Port {
				t.Errorf("retry reused source port %d", qs[0].from.Port)
			}
			if qs[0].id == qs[1].id {
				t.Errorf("retry reused ID %#x", qs[0].id)
			}
			if st := ts.srv.Stats(); st.UpstreamMismatches != 1 {
				t.Errorf("UpstreamMismatches %d, want 1", st.UpstreamMismatches)
			}
		})
	}
}

// An upstream that only ever sends mismatching datagrams gets a bounded
// number of fresh sockets, then the client gets SERVFAIL.
func TestUpstreamAlwaysMismatchServFail(t *testing.T) {
	up := newRawUpstream(t, func(n int, q *mdns.Msg) [][]byte {
		m := records("udp", q)
		m.Id = q.Id + 1
		return [][]byte{packed(t, m)}
	})
	ts := startServer(t, Config{Upstreams: []string{up.addr}})
	r := ask(t, "udp", ts.udpAddr, query("www.example.com.", mdns.TypeA))
	if r.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", mdns.RcodeToString[r.Rcode])
	}
	if got := len(up.queries()); got != 1+mismatchRetries {
		t.Errorf("upstream saw %d queries, want %d", got, 1+mismatchRetries)
	}
}

// Sockets are reused for sequential queries, rotated after sockMaxUses,
// and every query has its own ID.
func TestUpstreamSocketRotation(t *testing.T) {
	up := newRawUpstream(t, func(n int, q *mdns.Msg) [][]byte { return [][]byte{packed(t, records("udp", q))} })
	ts := startServer(t, Config{Upstreams: []string{up.addr}, CacheSize: -1})
	c, err := net.Dial("udp", ts.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 4096)
	n := sockMaxUses + 3
	for i := range n {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		q := packed(t, query("www.example.com.", mdns.TypeA))
		if _, err := c.Write(q); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	qs := up.queries()
	if len(qs) != n {
		t.Fatalf("upstream saw %d queries, want %d", len(qs), n)
	}
	ports := map[int]int{}
	ids := map[uint16]bool{}
	for _, q := range qs {
		ports[q.from.Port]++
		ids[q.id] = true
	}
	if qs[0].from.Port != qs[sockMaxUses-1].from.Port {
		t.Errorf("sequential queries did not reuse the socket")
	}
	if qs[sockMaxUses].from.Port == qs[0].from.Port || len(ports) != 2 {
		t.Errorf("socket not rotated after %d uses: ports %v", sockMaxUses, ports)
	}
	if len(ids) < n-2 { // 35 random 16-bit IDs: a collision or two is possible, a counter or constant is not
		t.Errorf("only %d distinct IDs in %d queries", len(ids), n)
	}
}

// A truncated UDP answer that ends mid-record still yields a TC reply
// (header and question), which the caller retries over TCP.
func TestUpstreamTruncatedMidRecord(t *testing.T) {
	raw := newRawUpstream(t, func(n int, q *mdns.Msg) [][]byte {
		m := bigTXT("tcp", q)
		m.Truncated = true
		b := packed(t, m)
		return [][]byte{b[:len(b)-7]} // ends inside the last record
	})
	e := newNetExchanger(time.Second)
	defer e.close()
	q := query("big.example.", mdns.TypeTXT)
	r, err := e.exchange(context.Background(), time.Now().Add(5*time.Second), q, "udp", raw.addr)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated || r.Id != q.Id || len(r.Question) != 1 || r.Question[0] != q.Question[0] {
		t.Fatalf("reply %v", r)
	}
}

// close (Server.Close) aborts an exchange waiting for an upstream that
// never answers, long before its deadline.
func TestUpstreamExchangeAborted(t *testing.T) {
	got := make(chan struct{}, 1)
	up := newRawUpstream(t, func(n int, q *mdns.Msg) [][]byte { got <- struct{}{}; return nil })
	e := newNetExchanger(time.Hour)
	errc := make(chan error, 1)
	go func() {
		_, err := e.exchange(context.Background(), time.Now().Add(time.Hour), query("x.example.", mdns.TypeA), "udp", up.addr)
		errc <- err
	}()
	<-got // the query is out; the exchange waits for the reply
	e.close()
	if err := <-errc; err == nil {
		t.Fatal("exchange succeeded without an answer")
	}
	if _, err := e.exchange(context.Background(), time.Now().Add(time.Hour), query("x.example.", mdns.TypeA), "udp", up.addr); err == nil {
		t.Fatal("exchange after close succeeded")
	}
}

func TestCheckReply(t *testing.T) {
	q := query("WwW.Example.com.", mdns.TypeA)
	qb := packed(t, q)
	good := records("udp", query("www.EXAMPLE.com.", mdns.TypeA))
	good.Id = q.Id
	if _, err := checkReply(packed(t, good), qb); err != nil {
		t.Fatalf("matching reply rejected: %v", err)
	}
	for name, mut := range map[string]func(b []byte) []byte{
		"short":        func(b []byte) []byte { return b[:11] },
		"id":           func(b []byte) []byte { b[1] ^= 1; return b },
		"qr":           func(b []byte) []byte { b[2] &^= 0x80; return b },
		"opcode":       func(b []byte) []byte { b[2] |= 0x10; return b },
		"qdcount":      func(b []byte) []byte { b[5] = 2; return b },
		"name":         func(b []byte) []byte { b[13] = 'x'; return b },
		"label length": func(b []byte) []byte { b[12] = 4; return b },
		"pointer":      func(b []byte) []byte { b[12] = 0xc0; return b },
		"type":         func(b []byte) []byte { i := bytes.Index(b, []byte{3, 'c', 'o', 'm', 0}) + 5; b[i+1] = 28; return b },
		"cut":          func(b []byte) []byte { return b[:12+len("www.example.com")+1] },
	} {
		b := mut(packed(t, good))
		if _, err := checkReply(b, qb); err == nil {
			t.Errorf("%s: mismatching reply accepted", name)
		}
	}
}

// FuzzCheckReply feeds arbitrary datagrams to the reply matcher: it must
// never panic or read past the datagram, and whatever it accepts must be a
// response with the query's ID and (when decodable) its question.
func FuzzCheckReply(f *testing.F) {
	q := query("www.example.com.", mdns.TypeA)
	qb, _ := q.Pack()
	good := records("udp", q)
	b, _ := good.Pack()
	f.Add(b)
	tc := bigTXT("tcp", query("www.example.com.", mdns.TypeA))
	tc.Id, tc.Truncated = q.Id, true
	b, _ = tc.Pack()
	f.Add(b[:len(b)-5])
	f.Add([]byte{0x42, 0x42, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'w', 'w', 'w', 0xc0, 12})
	f.Add(qb)
	f.Fuzz(func(t *testing.T, rep []byte) {
		off, err := checkReply(rep, qb)
		if err != nil {
			return
		}
		if off > len(rep) || rep[0] != qb[0] || rep[1] != qb[1] || rep[2]&0x80 == 0 {
			t.Fatalf("accepted %x (off %d)", rep, off)
		}
		m := new(mdns.Msg)
		if m.Unpack(rep) == nil {
			if len(m.Question) != 1 || !strings.EqualFold(m.Question[0].Name, q.Question[0].Name) ||
				m.Question[0].Qtype != q.Question[0].Qtype || m.Question[0].Qclass != q.Question[0].Qclass {
				t.Fatalf("accepted a reply to another question: %v", m.Question)
			}
		}
	})
}

// MaxInflight bounds concurrent upstream exchanges (the rest get SERVFAIL
// at once) and the worker goroutines, which are reused afterwards.
func TestInflightCapAndWorkers(t *testing.T) {
	g := &gateExchanger{started: make(chan struct{}, 16), release: make(chan struct{})}
	ts := startServer(t, Config{Upstreams: []string{"192.0.2.1:53"}, upstream: g, MaxInflight: 2, CacheSize: -1})
	c, err := net.Dial("udp", ts.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 5 {
		q := query(fmt.Sprintf("n%d.example.", i), mdns.TypeA)
		q.Id = uint16(100 + i)
		if _, err := c.Write(packed(t, q)); err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			<-g.started // the first two hold both slots
		}
	}
	buf := make([]byte, 4096)
	read := func() *mdns.Msg {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		m := new(mdns.Msg)
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for range 3 {
		if m := read(); m.Rcode != mdns.RcodeServerFailure || m.Id < 102 {
			t.Fatalf("over the cap: id %d rcode %s, want SERVFAIL for 102..104", m.Id, mdns.RcodeToString[m.Rcode])
		}
	}
	if w := ts.srv.workers.Load(); w != 2 {
		t.Fatalf("%d workers for 2 exchanges in flight", w)
	}
	close(g.release)
	for range 2 {
		if m := read(); m.Rcode != mdns.RcodeSuccess {
			t.Fatalf("released query: rcode %s", mdns.RcodeToString[m.Rcode])
		}
	}
	for i := range 20 { // sequential misses reuse the idle workers
		q := query(fmt.Sprintf("s%d.example.", i), mdns.TypeA)
		if _, err := c.Write(packed(t, q)); err != nil {
			t.Fatal(err)
		}
		<-g.started
		if m := read(); m.Rcode != mdns.RcodeSuccess {
			t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
		}
	}
	if w := ts.srv.workers.Load(); w > 2 {
		t.Fatalf("%d workers after sequential queries, cap 2", w)
	}
	if st := ts.srv.Stats(); st.Busy != 3 {
		t.Fatalf("Busy %d, want 3", st.Busy)
	}
}

// Idle sockets past their age are closed even when their upstream is
// never asked again (a resolv.conf change).
func TestUpstreamPoolSweep(t *testing.T) {
	p := newUDPPool()
	defer p.close()
	up := newRawUpstream(t, func(n int, q *mdns.Msg) [][]byte { return [][]byte{packed(t, records("udp", q))} })
	s, err := p.get(up.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.release(up.addr, s, true)
	if len(p.idle[up.addr]) != 1 {
		t.Fatalf("idle %v", p.idle)
	}
	s.born = s.born.Add(-2 * sockMaxAge) // as if it had idled that long
	p.mu.Lock()
	p.sweep(time.Now())
	p.mu.Unlock()
	if len(p.idle) != 0 {
		t.Fatalf("expired socket kept: %v", p.idle)
	}
	if _, err := s.c.Write([]byte{0}); err == nil {
		t.Fatal("expired socket not closed")
	}
}
