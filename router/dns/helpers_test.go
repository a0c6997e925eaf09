package dns

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// fakeUpstream is a miekg/dns server on 127.0.0.1 (UDP and TCP, same port).
type fakeUpstream struct {
	addr     string
	udpCount atomic.Int32
	tcpCount atomic.Int32
	mu       sync.Mutex
	lastQ    *mdns.Msg
}

// answerFunc builds the upstream's answer; network is "udp" or "tcp".
type answerFunc func(network string, q *mdns.Msg) *mdns.Msg

func newFakeUpstream(t testing.TB, f answerFunc) *fakeUpstream {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no free UDP+TCP port pair on loopback")
	}
	u := &fakeUpstream{addr: pc.LocalAddr().String()}
	h := func(network string) mdns.HandlerFunc {
		return func(w mdns.ResponseWriter, q *mdns.Msg) {
			if network == "udp" {
				u.udpCount.Add(1)
			} else {
				u.tcpCount.Add(1)
			}
			u.mu.Lock()
			u.lastQ = q.Copy()
			u.mu.Unlock()
			if m := f(network, q); m != nil {
				w.WriteMsg(m)
			}
		}
	}
	for _, srv := range []*mdns.Server{
		{PacketConn: pc, Handler: h("udp")},
		{Listener: ln, Handler: h("tcp")},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { defer close(done); srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { srv.Shutdown(); <-done })
	}
	return u
}

func (u *fakeUpstream) last() *mdns.Msg {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.lastQ
}

// blackhole is a UDP socket that reads queries and never answers.
func blackhole(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// records answers A, AAAA, MX and TXT for any name.
func records(network string, q *mdns.Msg) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetReply(q)
	m.RecursionAvailable = true
	qq := q.Question[0]
	h := mdns.RR_Header{Name: qq.Name, Rrtype: qq.Qtype, Class: mdns.ClassINET, Ttl: 300}
	switch qq.Qtype {
	case mdns.TypeA:
		m.Answer = append(m.Answer, &mdns.A{Hdr: h, A: net.IPv4(203, 0, 113, 7)})
	case mdns.TypeAAAA:
		m.Answer = append(m.Answer, &mdns.AAAA{Hdr: h, AAAA: net.ParseIP("2001:db8::7")})
	case mdns.TypeMX:
		m.Answer = append(m.Answer, &mdns.MX{Hdr: h, Preference: 10, Mx: "mail." + qq.Name})
	case mdns.TypeTXT:
		m.Answer = append(m.Answer, &mdns.TXT{Hdr: h, Txt: []string{"v=spf1 -all", "second"}})
	case mdns.TypeSRV:
		m.Answer = append(m.Answer, &mdns.SRV{Hdr: h, Priority: 1, Weight: 2, Port: 5060, Target: "sip." + qq.Name})
	default:
		m.Rcode = mdns.RcodeNameError
		m.Ns = append(m.Ns, &mdns.SOA{Hdr: mdns.RR_Header{Name: "example.", Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: 60},
			Ns: "ns.example.", Mbox: "h.example.", Serial: 1, Refresh: 1, Retry: 1, Expire: 1, Minttl: 30})
	}
	if opt := q.IsEdns0(); opt != nil {
		m.SetEdns0(4096, opt.Do())
	}
	return m
}

// testServer runs a Server on loopback sockets.
type testServer struct {
	srv     *Server
	udpAddr string
	tcpAddr string
}

func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	if cfg.RateLimit == 0 {
		cfg.RateLimit = -1
	}
	s, err := New(cfg, pc, ln)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &testServer{srv: s, udpAddr: pc.LocalAddr().String(), tcpAddr: ln.Addr().String()}
}

func query(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	m.Id = 0x4242
	return m
}

// ask sends q over network to addr and returns the answer; the miekg
// client fails if the transaction id differs.
func ask(t testing.TB, network, addr string, q *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: network, Timeout: 10 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s query %v: %v", network, q.Question, err)
	}
	if r.Id != q.Id {
		t.Fatalf("id %#x, want %#x", r.Id, q.Id)
	}
	return r
}

// fakeExchanger answers without any network and records the servers asked.
type fakeExchanger struct {
	mu      sync.Mutex
	servers []string
	answer  func(server string, q *mdns.Msg) (*mdns.Msg, error)
}

func (f *fakeExchanger) exchange(ctx context.Context, _ time.Time, m *mdns.Msg, network, server string) (*mdns.Msg, error) {
	f.mu.Lock()
	f.servers = append(f.servers, network+" "+server)
	f.mu.Unlock()
	if f.answer != nil {
		return f.answer(server, m)
	}
	return records(network, m), nil
}

func (f *fakeExchanger) asked() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.servers...)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }
func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var testClient = netip.MustParseAddr("192.168.30.10")
