package dhcp

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// memConn is an in-memory net.PacketConn for the server side: datagrams the
// test injects come out of ReadFrom, and WriteTo hands replies to the test.
type memConn struct {
	in     chan []byte
	out    chan sent
	done   chan struct{}
	once   sync.Once
	failWr bool
}

type sent struct {
	b  []byte
	to net.Addr
}

func newMemConn() *memConn {
	return &memConn{in: make(chan []byte, 64), out: make(chan sent, 1024), done: make(chan struct{})}
}

func (c *memConn) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case b := <-c.in:
		return copy(p, b), &net.UDPAddr{IP: net.IPv4zero, Port: 68}, nil
	case <-c.done:
		return 0, nil, net.ErrClosed
	}
}

func (c *memConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	select {
	case c.out <- sent{append([]byte(nil), p...), addr}:
	default: // a test that does not read replies must not block the server
	}
	return len(p), nil
}

func (c *memConn) Close() error                       { c.once.Do(func() { close(c.done) }); return nil }
func (c *memConn) LocalAddr() net.Addr                { return &net.UDPAddr{IP: net.IPv4zero, Port: 67} }
func (c *memConn) SetDeadline(t time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(t time.Time) error { return nil }

// fakeClock is a settable clock for Config.Now.
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

// harness is a running server plus helpers acting as DHCP clients.
type harness struct {
	t    *testing.T
	conn *memConn
	srv  *Server
	clk  *fakeClock
}

func baseConfig() Config {
	return Config{
		ServerIP: netip.MustParseAddr("192.168.30.1"),
		Subnet:   netip.MustParsePrefix("192.168.30.0/24"),
	}
}

func start(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, conn: newMemConn(), clk: newClock()}
	if cfg.Now == nil {
		cfg.Now = h.clk.Now
	}
	srv, err := New(h.conn, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.srv = srv
	t.Cleanup(func() { srv.Close() })
	return h
}

func mac(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
}

func xid(i int) dhcpv4.TransactionID {
	return dhcpv4.TransactionID{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
}

func (h *harness) send(m *dhcpv4.DHCPv4) {
	h.t.Helper()
	select {
	case h.conn.in <- m.ToBytes():
	case <-time.After(10 * time.Second):
		h.t.Fatal("server not reading")
	}
}

// recv returns the next reply; it fails the test if none comes (the server
// always answers or drops synchronously, so tests pair every expected reply
// with a request).
func (h *harness) recv() (*dhcpv4.DHCPv4, net.Addr) {
	h.t.Helper()
	select {
	case s := <-h.conn.out:
		m, err := dhcpv4.FromBytes(s.b)
		if err != nil {
			h.t.Fatalf("server sent undecodable reply: %v", err)
		}
		return m, s.to
	case <-time.After(10 * time.Second):
		h.t.Fatal("no reply from server")
		return nil, nil
	}
}

func (h *harness) noPending() {
	h.t.Helper()
	select {
	case s := <-h.conn.out:
		m, _ := dhcpv4.FromBytes(s.b)
		h.t.Fatalf("unexpected reply: %v", m)
	default:
	}
}

func discover(i int, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{
		dhcpv4.WithTransactionID(xid(i)), dhcpv4.WithHwAddr(mac(i)),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeDiscover), dhcpv4.WithBroadcast(true),
	}, mods...)...)
	if err != nil {
		panic(err)
	}
	return m
}

func request(i int, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{
		dhcpv4.WithTransactionID(xid(i)), dhcpv4.WithHwAddr(mac(i)),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
	}, mods...)...)
	if err != nil {
		panic(err)
	}
	return m
}

func ip4(s string) net.IP { return net.ParseIP(s).To4() }

// dora runs DISCOVER/OFFER/REQUEST/ACK for client i and returns the ACK.
func (h *harness) dora(i int, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	h.t.Helper()
	h.send(discover(i, mods...))
	offer, _ := h.recv()
	if offer.MessageType() != dhcpv4.MessageTypeOffer || offer.TransactionID != xid(i) {
		h.t.Fatalf("client %d: want OFFER, got %v", i, offer.Summary())
	}
	h.send(request(i, append(mods,
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(offer.ServerIdentifier())),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))...))
	ack, _ := h.recv()
	if ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		h.t.Fatalf("client %d: want ACK for %v, got %v", i, offer.YourIPAddr, ack.Summary())
	}
	return ack
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
