package dhcp

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestEncodeRoutesRFC3442(t *testing.T) {
	rs := []Route{
		{Dst: netip.MustParsePrefix("10.0.0.0/8"), Gateway: netip.MustParseAddr("192.168.30.1")},
		{Dst: netip.MustParsePrefix("172.16.0.0/12"), Gateway: netip.MustParseAddr("192.168.30.254")},
		{Dst: netip.MustParsePrefix("192.168.100.0/24"), Gateway: netip.MustParseAddr("192.168.30.1")},
		{Dst: netip.MustParsePrefix("10.17.0.0/17"), Gateway: netip.MustParseAddr("0.0.0.0")},
		{Dst: netip.MustParsePrefix("198.51.100.7/32"), Gateway: netip.MustParseAddr("192.168.30.2")},
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gateway: netip.MustParseAddr("192.168.30.1")},
	}
	// Hand-computed per RFC 3442 §3: width, significant octets, router.
	want := []byte{
		8, 10, 192, 168, 30, 1,
		12, 172, 16, 192, 168, 30, 254,
		24, 192, 168, 100, 192, 168, 30, 1,
		17, 10, 17, 0, 0, 0, 0, 0,
		32, 198, 51, 100, 7, 192, 168, 30, 2,
		0, 192, 168, 30, 1,
	}
	if got := EncodeRoutes(rs); !bytes.Equal(got, want) {
		t.Fatalf("EncodeRoutes:\n got %v\nwant %v", got, want)
	}
}

func TestDORAOptions(t *testing.T) {
	cfg := baseConfig()
	cfg.DNS = []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("192.168.30.1")}
	cfg.Domain = "lan.example"
	cfg.SearchList = []string{"lan.example", "corp"}
	cfg.MTU = 1400
	cfg.Routes = []Route{
		{Dst: netip.MustParsePrefix("10.0.0.0/8")},
		{Dst: netip.MustParsePrefix("172.16.0.0/12"), Gateway: netip.MustParseAddr("192.168.30.254")},
	}
	h := start(t, cfg)
	h.send(discover(1, dhcpv4.WithOption(dhcpv4.OptHostName("my host!"))))
	offer, to := h.recv()
	if to.String() != "255.255.255.255:68" {
		t.Errorf("OFFER sent to %v, want broadcast", to)
	}
	if !offer.YourIPAddr.Equal(ip4("192.168.30.10")) {
		t.Errorf("first offer yiaddr = %v, want 192.168.30.10", offer.YourIPAddr)
	}
	if offer.OpCode != dhcpv4.OpcodeBootReply || !bytes.Equal(offer.ClientHWAddr, mac(1)) {
		t.Errorf("bad reply header: %v", offer.Summary())
	}
	ack := h.dora(1)
	checks := []struct {
		code uint8
		want []byte
	}{
		{53, []byte{5}},
		{54, []byte{192, 168, 30, 1}},
		{51, []byte{0, 0, 0x1c, 0x20}}, // 7200
		{58, []byte{0, 0, 0x0e, 0x10}}, // 3600
		{59, []byte{0, 0, 0x18, 0x9c}}, // 6300
		{1, []byte{255, 255, 255, 0}},
		{3, []byte{192, 168, 30, 1}},
		{6, []byte{192, 168, 30, 1, 1, 1, 1, 1}},
		{15, []byte("lan.example")},
		{119, []byte("\x03lan\x07example\x00\x04corp\x00")},
		{26, []byte{0x05, 0x78}},
		{121, []byte{8, 10, 192, 168, 30, 1, 12, 172, 16, 192, 168, 30, 254, 0, 192, 168, 30, 1}},
		{249, []byte{8, 10, 192, 168, 30, 1, 12, 172, 16, 192, 168, 30, 254, 0, 192, 168, 30, 1}},
	}
	for _, c := range checks {
		if got := ack.Options.Get(dhcpv4.GenericOptionCode(c.code)); !bytes.Equal(got, c.want) {
			t.Errorf("option %d = %v, want %v", c.code, got, c.want)
		}
	}
	if ack.Options.Has(dhcpv4.OptionHostName) {
		t.Error("server echoed option 12")
	}
	ls := h.srv.Leases()
	if len(ls) != 1 || ls[0].IP != netip.MustParseAddr("192.168.30.10") || ls[0].State != StateBound ||
		ls[0].Hostname != "myhost" || !bytes.Equal(ls[0].MAC, mac(1)) ||
		!ls[0].Expiry.Equal(h.clk.Now().Add(7200*time.Second)) {
		t.Errorf("Leases() = %+v", ls)
	}
	st := h.srv.Stats()
	if st.Discover != 2 || st.Offer != 2 || st.Request != 1 || st.Ack != 1 || st.BoundLeases != 1 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestNoGatewayRoutes(t *testing.T) {
	cfg := baseConfig()
	cfg.NoGateway = true
	cfg.NoRouterDNS = true
	cfg.DNS = []netip.Addr{netip.MustParseAddr("9.9.9.9")}
	cfg.Routes = []Route{{Dst: netip.MustParsePrefix("10.0.0.0/8")}}
	h := start(t, cfg)
	ack := h.dora(1)
	if ack.Options.Has(dhcpv4.OptionRouter) {
		t.Error("option 3 sent in NoGateway mode")
	}
	if got, want := ack.Options.Get(dhcpv4.OptionClasslessStaticRoute), []byte{8, 10, 192, 168, 30, 1}; !bytes.Equal(got, want) {
		t.Errorf("option 121 = %v, want %v (no default route)", got, want)
	}
	if got := ack.DNS(); len(got) != 1 || !got[0].Equal(ip4("9.9.9.9")) {
		t.Errorf("DNS = %v", got)
	}
}

func TestRenewAndRebind(t *testing.T) {
	h := start(t, baseConfig())
	ack := h.dora(1)
	ip := ack.YourIPAddr
	// RENEWING: unicast with ciaddr, no server id or requested IP.
	h.clk.Advance(3600 * time.Second)
	h.send(request(1, dhcpv4.WithClientIP(ip)))
	renew, to := h.recv()
	if renew.MessageType() != dhcpv4.MessageTypeAck || !renew.YourIPAddr.Equal(ip) || !renew.ClientIPAddr.Equal(ip) {
		t.Fatalf("renew: %v", renew.Summary())
	}
	if to.String() != ip.String()+":68" {
		t.Errorf("renew ACK sent to %v, want unicast %v:68", to, ip)
	}
	if l := h.srv.Leases()[0]; !l.Expiry.Equal(h.clk.Now().Add(7200 * time.Second)) {
		t.Errorf("renew did not extend the lease: %v", l.Expiry)
	}
	// REBINDING after the lease would have ended without the renewal.
	h.clk.Advance(6300 * time.Second)
	h.send(request(1, dhcpv4.WithClientIP(ip), dhcpv4.WithBroadcast(true)))
	rebind, _ := h.recv()
	if rebind.MessageType() != dhcpv4.MessageTypeAck || !rebind.YourIPAddr.Equal(ip) {
		t.Fatalf("rebind: %v", rebind.Summary())
	}
	// Renewing someone else's address is refused.
	h.send(request(2, dhcpv4.WithClientIP(ip)))
	if nak, to := h.recv(); nak.MessageType() != dhcpv4.MessageTypeNak || to.String() != "255.255.255.255:68" {
		t.Fatalf("foreign renew: %v to %v, want broadcast NAK", nak.Summary(), to)
	}
}

func TestReleaseThenSameIP(t *testing.T) {
	cfg := baseConfig()
	var changes atomic.Int32
	cfg.OnChange = func() { changes.Add(1) }
	h := start(t, cfg)
	first := h.dora(1).YourIPAddr
	h.dora(2)
	rel, _ := dhcpv4.NewReleaseFromACK(&dhcpv4.DHCPv4{YourIPAddr: first, ClientHWAddr: mac(1),
		Options: dhcpv4.Options{54: []byte{192, 168, 30, 1}}})
	h.send(rel)
	h.dora(3) // takes a never-used address, not client 1's released one
	if ls := h.srv.Leases(); ls[0].State != StateReleased || !bytes.Equal(ls[0].MAC, mac(1)) {
		t.Fatalf("after release: %+v", ls)
	}
	if again := h.dora(1).YourIPAddr; !again.Equal(first) {
		t.Fatalf("re-DISCOVER after release got %v, want %v", again, first)
	}
	if h.srv.Stats().Release != 1 {
		t.Error("release not counted")
	}
	if n := changes.Load(); n != 5 { // 4 binds + 1 release
		t.Errorf("OnChange called %d times, want 5", n)
	}
}

func TestClientIdentifierKeysLease(t *testing.T) {
	h := start(t, baseConfig())
	cid := dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{0xff, 1, 2, 3, 4}))
	a := h.dora(1, cid)
	if !bytes.Equal(a.Options.Get(dhcpv4.OptionClientIdentifier), []byte{0xff, 1, 2, 3, 4}) {
		t.Error("option 61 not echoed (RFC 6842)")
	}
	b := h.dora(2, cid) // same client id, different chaddr
	if !a.YourIPAddr.Equal(b.YourIPAddr) {
		t.Fatalf("same client-id got %v then %v", a.YourIPAddr, b.YourIPAddr)
	}
}

func TestReservation(t *testing.T) {
	cfg := baseConfig()
	cfg.PoolStart = netip.MustParseAddr("192.168.30.10")
	cfg.PoolEnd = netip.MustParseAddr("192.168.30.11")
	cfg.Reservations = map[string]netip.Addr{
		"02-00-00-00-00-07": netip.MustParseAddr("192.168.30.250"), // outside the pool
		"02:00:00:00:00:08": netip.MustParseAddr("192.168.30.11"),  // inside the pool
	}
	h := start(t, cfg)
	if got := h.dora(7).YourIPAddr; !got.Equal(ip4("192.168.30.250")) {
		t.Errorf("reserved client 7 got %v", got)
	}
	if got := h.dora(1).YourIPAddr; !got.Equal(ip4("192.168.30.10")) {
		t.Errorf("client 1 got %v", got)
	}
	// .11 is reserved for client 8, so client 2 finds the pool exhausted.
	h.send(discover(2))
	if got := h.dora(8).YourIPAddr; !got.Equal(ip4("192.168.30.11")) {
		t.Errorf("reserved client 8 got %v", got)
	}
	if h.srv.Stats().PoolExhausted != 1 {
		t.Errorf("client 2 was not refused: %+v", h.srv.Stats())
	}
	// A reserved client asking for another address is NAKed.
	h.send(request(7, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.30.10")))))
	if nak, _ := h.recv(); nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("want NAK, got %v", nak.Summary())
	}
}

func TestPersistenceAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := baseConfig()
	cfg.StateFile = filepath.Join(dir, "sub", "leases.json") // directory created on save
	clk := newClock()
	cfg.Now = clk.Now
	h := start(t, cfg)
	h.dora(1)
	b := h.dora(2).YourIPAddr
	h.dora(3)
	if err := h.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if !fileExists(cfg.StateFile) {
		t.Fatal("state file not written")
	}
	// New server, same file: client 2 gets its address back, even when it
	// comes first and its DISCOVER asks for nothing.
	clk.Advance(time.Hour)
	h2 := start(t, cfg)
	if n := len(h2.srv.Leases()); n != 3 {
		t.Fatalf("loaded %d leases, want 3", n)
	}
	if got := h2.dora(2).YourIPAddr; !got.Equal(b) {
		t.Fatalf("after restart client 2 got %v, want %v", got, b)
	}
	h2.srv.Close()
	// After all leases expired, a restart drops them.
	clk.Advance(3 * time.Hour)
	h3 := start(t, cfg)
	if n := len(h3.srv.Leases()); n != 0 {
		t.Fatalf("expired leases loaded: %d", n)
	}
}

func TestCorruptStateFileIgnored(t *testing.T) {
	cfg := baseConfig()
	cfg.StateFile = filepath.Join(t.TempDir(), "leases.json")
	if err := writeFileAtomic(cfg.StateFile, map[string]int{"version": 99}); err != nil {
		t.Fatal(err)
	}
	h := start(t, cfg)
	if got := h.dora(1).YourIPAddr; !got.Equal(ip4("192.168.30.10")) {
		t.Fatalf("got %v", got)
	}
}

func TestPoolExhaustion(t *testing.T) {
	cfg := baseConfig()
	cfg.PoolStart = netip.MustParseAddr("192.168.30.10")
	cfg.PoolEnd = netip.MustParseAddr("192.168.30.11")
	h := start(t, cfg)
	h.dora(1)
	h.dora(2)
	h.send(discover(3))
	h.send(discover(1)) // processed after client 3's: its OFFER is the next reply
	if m, _ := h.recv(); m.TransactionID != xid(1) {
		t.Fatalf("client 3 got a reply: %v", m.Summary())
	}
	if st := h.srv.Stats(); st.PoolExhausted != 1 {
		t.Fatalf("PoolExhausted = %d", st.PoolExhausted)
	}
	// Client 2 renews; once client 1's lease expires, client 3 gets its address.
	h.clk.Advance(time.Hour)
	h.send(request(2, dhcpv4.WithClientIP(ip4("192.168.30.11"))))
	if m, _ := h.recv(); m.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("renew: %v", m.Summary())
	}
	h.clk.Advance(time.Hour + time.Second)
	if got := h.dora(3).YourIPAddr; !got.Equal(ip4("192.168.30.10")) {
		t.Fatalf("client 3 got %v, want client 1's expired .10", got)
	}
}

func TestDeclineQuarantines(t *testing.T) {
	h := start(t, baseConfig())
	ip := h.dora(1).YourIPAddr
	dec, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.30.1"))))
	h.send(dec)
	next := h.dora(1).YourIPAddr
	if next.Equal(ip) {
		t.Fatalf("declined address %v offered again", ip)
	}
	if got := h.dora(2).YourIPAddr; got.Equal(ip) {
		t.Fatal("quarantined address given to another client")
	}
	ls := h.srv.Leases()
	if ls[0].IP != netip.MustParseAddr(ip.String()) || ls[0].State != StateQuarantined {
		t.Fatalf("Leases = %+v", ls)
	}
	if st := h.srv.Stats(); st.Decline != 1 || st.Declined != 1 {
		t.Fatalf("Stats = %+v", st)
	}
	// A DECLINE for an address the client does not hold is ignored.
	dec2, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(3)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(next)))
	h.send(dec2)
	h.dora(4)
	if st := h.srv.Stats(); st.Declined != 1 {
		t.Fatalf("foreign DECLINE quarantined: %+v", st)
	}
	// After the quarantine the address is usable again.
	h.clk.Advance(DefaultQuarantineTime + time.Second)
	if got := h.dora(5, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip))).YourIPAddr; !got.Equal(ip) {
		t.Fatalf("after quarantine got %v, want %v", got, ip)
	}
}

func TestNAKAndIgnore(t *testing.T) {
	h := start(t, baseConfig())
	held := h.dora(1).YourIPAddr
	cases := []struct {
		name string
		req  *dhcpv4.DHCPv4
	}{
		{"init-reboot other subnet", request(2, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("10.1.2.3"))))},
		{"init-reboot held by another", request(2, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(held)))},
		{"selecting server address", request(2, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.30.1"))),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.30.1"))))},
		{"outside pool", request(2, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.30.201"))))},
	}
	for _, c := range cases {
		h.send(c.req)
		m, to := h.recv()
		if m.MessageType() != dhcpv4.MessageTypeNak || to.String() != "255.255.255.255:68" || m.YourIPAddr.To4()[0] != 0 {
			t.Errorf("%s: got %v to %v, want broadcast NAK", c.name, m.Summary(), to)
		}
		if !net.IP(m.Options.Get(dhcpv4.OptionServerIdentifier)).Equal(ip4("192.168.30.1")) {
			t.Errorf("%s: NAK without server id", c.name)
		}
	}
	// SELECTING another server: our offer is withdrawn, no reply.
	h.send(discover(3))
	offer, _ := h.recv()
	h.send(request(3, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("192.168.30.254")))))
	h.send(discover(4))
	if m, _ := h.recv(); m.TransactionID != xid(4) {
		t.Fatalf("want client 4's OFFER (no reply to client 3), got %v", m.Summary())
	}
	for _, l := range h.srv.Leases() {
		if bytes.Equal(l.MAC, mac(3)) && l.State != StateReleased {
			t.Fatalf("client 3's offer not withdrawn: %+v", l)
		}
	}
	st := h.srv.Stats()
	if st.Nak != 4 || st.IgnoredOtherServer != 1 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestInitRebootUnknownFreeAddress(t *testing.T) {
	// After a restart without state, a client that still believes in its
	// address keeps it if nobody else holds it.
	h := start(t, baseConfig())
	h.send(request(1, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.30.77")))))
	if m, _ := h.recv(); m.MessageType() != dhcpv4.MessageTypeAck || !m.YourIPAddr.Equal(ip4("192.168.30.77")) {
		t.Fatalf("got %v", m.Summary())
	}
}

func TestInform(t *testing.T) {
	h := start(t, baseConfig())
	inf, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeInform),
		dhcpv4.WithClientIP(ip4("192.168.30.5")))
	h.send(inf)
	m, to := h.recv()
	if m.MessageType() != dhcpv4.MessageTypeAck || to.String() != "192.168.30.5:68" {
		t.Fatalf("INFORM reply %v to %v", m.Summary(), to)
	}
	if m.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || m.YourIPAddr.To4()[0] != 0 {
		t.Error("INFORM ACK carries a lease")
	}
	if len(m.Router()) != 1 || len(m.DNS()) != 1 {
		t.Error("INFORM ACK lacks configuration")
	}
	if len(h.srv.Leases()) != 0 {
		t.Error("INFORM created a lease")
	}
}

func TestProbeInUseSkipped(t *testing.T) {
	var mu sync.Mutex
	var probed []netip.Addr
	cfg := baseConfig()
	cfg.Probe = func(ctx context.Context, ip netip.Addr) (bool, error) {
		mu.Lock()
		probed = append(probed, ip)
		mu.Unlock()
		switch ip.String() {
		case "192.168.30.10":
			return true, nil
		case "192.168.30.11":
			return false, errors.New("probe broke")
		}
		return false, nil
	}
	h := start(t, cfg)
	h.send(discover(1))
	offer, _ := h.recv()
	if !offer.YourIPAddr.Equal(ip4("192.168.30.11")) {
		t.Fatalf("offered %v, want .11 (.10 in use)", offer.YourIPAddr)
	}
	h.dora(2)
	mu.Lock()
	got := append([]netip.Addr(nil), probed...)
	mu.Unlock()
	if len(got) != 3 || got[0].String() != "192.168.30.10" || got[1].String() != "192.168.30.11" || got[2].String() != "192.168.30.12" {
		t.Fatalf("probed %v", got)
	}
	// Client 1's renewed DISCOVER is not probed again (its own offer).
	h.dora(1)
	mu.Lock()
	n := len(probed)
	mu.Unlock()
	if n != 3 {
		t.Fatalf("own address probed again: %d probes", n)
	}
	st := h.srv.Stats()
	if st.ProbeInUse != 1 || st.ProbeErrors != 1 {
		t.Fatalf("Stats = %+v", st)
	}
	if ls := h.srv.Leases(); ls[0].IP.String() != "192.168.30.10" || ls[0].State != StateQuarantined {
		t.Fatalf("in-use address not quarantined: %+v", ls)
	}
}

func TestLargePool16(t *testing.T) {
	cfg := Config{ServerIP: netip.MustParseAddr("10.0.0.1"), Subnet: netip.MustParsePrefix("10.0.0.0/16"),
		MaxBroadcastReplies: -1} // 600 clients at one instant of the fake clock
	h := start(t, cfg)
	seen := map[string]bool{}
	const n = 600 // crosses several /24 boundaries
	for i := 1; i <= n; i++ {
		ack := h.dora(i)
		ip := ack.YourIPAddr.String()
		if seen[ip] {
			t.Fatalf("duplicate address %s", ip)
		}
		seen[ip] = true
		if i == 1 && !bytes.Equal(ack.Options.Get(dhcpv4.OptionSubnetMask), []byte{255, 255, 0, 0}) {
			t.Fatalf("mask = %v", ack.Options.Get(dhcpv4.OptionSubnetMask))
		}
	}
	if !seen["10.0.2.97"] || !seen["10.0.0.255"] || !seen["10.0.1.0"] {
		t.Fatalf("addresses not contiguous from 10.0.0.10: have 10.0.2.97=%v", seen["10.0.2.97"])
	}
	// Default pool of a /16 ends just before broadcast.
	if h.srv.d.poolEnd != a4(netip.MustParseAddr("10.0.255.254")) {
		t.Fatalf("pool end %v", u2a(h.srv.d.poolEnd))
	}
}

func TestMaxMessageSizeDropsOption249(t *testing.T) {
	cfg := baseConfig()
	for i := range 40 {
		cfg.Routes = append(cfg.Routes, Route{Dst: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)})
	}
	h := start(t, cfg)
	ack := h.dora(1)
	if len(ack.Options.Get(dhcpv4.OptionClasslessStaticRoute)) != 40*7+5 {
		t.Fatalf("option 121 length %d", len(ack.Options.Get(dhcpv4.OptionClasslessStaticRoute)))
	}
	if ack.Options.Has(dhcpv4.GenericOptionCode(249)) {
		t.Fatal("option 249 kept although the reply exceeds 548 bytes")
	}
	big := dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1500))
	if ack := h.dora(2, big); len(ack.Options.Get(dhcpv4.GenericOptionCode(249))) != 40*7+5 {
		t.Fatal("option 249 dropped although the client accepts 1500 bytes")
	}
}

func TestMalformedCounted(t *testing.T) {
	h := start(t, baseConfig())
	for _, b := range [][]byte{nil, {1, 2, 3}, bytes.Repeat([]byte{0}, 300)} {
		h.conn.in <- b
	}
	reply := discover(1)
	reply.OpCode = dhcpv4.OpcodeBootReply
	h.send(reply)
	h.dora(2)
	if st := h.srv.Stats(); st.Malformed != 4 || st.Received != 6 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestConfigErrors(t *testing.T) {
	ok := baseConfig()
	mod := func(f func(*Config)) Config { c := ok; f(&c); return c }
	cases := map[string]Config{
		"no server":      mod(func(c *Config) { c.ServerIP = netip.Addr{} }),
		"ipv6 subnet":    mod(func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }),
		"server outside": mod(func(c *Config) { c.ServerIP = netip.MustParseAddr("10.0.0.1") }),
		"pool reversed": mod(func(c *Config) {
			c.PoolStart, c.PoolEnd = netip.MustParseAddr("192.168.30.50"), netip.MustParseAddr("192.168.30.40")
		}),
		"pool outside":    mod(func(c *Config) { c.PoolEnd = netip.MustParseAddr("192.168.31.40") }),
		"pool too large":  {ServerIP: netip.MustParseAddr("10.0.0.1"), Subnet: netip.MustParsePrefix("10.0.0.0/8")},
		"bad mtu":         mod(func(c *Config) { c.MTU = 20 }),
		"bad reservation": mod(func(c *Config) { c.Reservations = map[string]netip.Addr{"zz": netip.MustParseAddr("192.168.30.5")} }),
		"reserve server":  mod(func(c *Config) { c.Reservations = map[string]netip.Addr{"02:00:00:00:00:01": c.ServerIP} }),
		"v6 dns":          mod(func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("::1")} }),
		"bad search":      mod(func(c *Config) { c.SearchList = []string{"a..b"} }),
		"too many routes": mod(func(c *Config) { c.Routes = make([]Route, MaxRoutes+1) }),
	}
	for name, c := range cases {
		if _, err := New(newMemConn(), c); err == nil {
			t.Errorf("%s: New accepted invalid config", name)
		}
	}
	if _, err := New(nil, ok); err == nil {
		t.Error("nil conn accepted")
	}
	// Defaults for a /24: SecureNAT's .10-.200.
	d, err := ok.derive()
	if err != nil || u2a(d.poolStart).String() != "192.168.30.10" || u2a(d.poolEnd).String() != "192.168.30.200" ||
		d.leaseTime != 7200*time.Second {
		t.Fatalf("defaults: %v %v %v %v", err, u2a(d.poolStart), u2a(d.poolEnd), d.leaseTime)
	}
}

func TestCloseWaitsAndStopsReplies(t *testing.T) {
	conn := newMemConn()
	srv, err := New(conn, baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if _, err := conn.WriteTo(nil, nil); !errors.Is(err, net.ErrClosed) {
		t.Fatal("Close did not close the conn")
	}
}

// FuzzHandlePacket feeds arbitrary datagrams to the packet handler.
func FuzzHandlePacket(f *testing.F) {
	f.Add(discover(1).ToBytes())
	f.Add(request(1, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip4("192.168.30.10")))).ToBytes())
	f.Add(request(1, dhcpv4.WithClientIP(ip4("192.168.30.10"))).ToBytes())
	inf, _ := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeInform), dhcpv4.WithGatewayIP(ip4("10.9.9.9")))
	f.Add(inf.ToBytes())
	f.Add([]byte{1, 1, 6, 0})
	cfg := baseConfig()
	cfg.PoolStart = netip.MustParseAddr("192.168.30.10")
	cfg.PoolEnd = netip.MustParseAddr("192.168.30.13")
	cfg.Routes = []Route{{Dst: netip.MustParsePrefix("10.0.0.0/8")}}
	cfg.Reservations = map[string]netip.Addr{"02:00:00:00:00:01": netip.MustParseAddr("192.168.30.100")}
	s, err := newServer(newMemConn(), cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 65535 {
			return
		}
		s.handlePacket(b)
		s.mu.Lock()
		n := len(s.pool.byIP)
		s.mu.Unlock()
		if n > 4+1 {
			t.Fatalf("%d records for a 4-address pool plus one reservation", n)
		}
	})
}

func BenchmarkDHCPDiscoverAck(b *testing.B) {
	conn := newMemConn()
	cfg := Config{ServerIP: netip.MustParseAddr("10.0.0.1"), Subnet: netip.MustParsePrefix("10.0.0.0/16"),
		MaxBroadcastReplies: -1, NewClientRate: -1}
	s, err := newServer(conn, cfg)
	if err != nil {
		b.Fatal(err)
	}
	const clients = 4096
	disc := make([][]byte, clients)
	req := make([][]byte, clients)
	for i := range clients {
		disc[i] = discover(i).ToBytes()
		req[i] = request(i, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip4("10.0.0.1"))),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(u2ip(a4(netip.MustParseAddr("10.0.0.10"))+uint32(i))))).ToBytes()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		s.handlePacket(disc[i%clients])
		s.handlePacket(req[i%clients])
		<-conn.out
		r := <-conn.out
		if i == 0 {
			if m, err := dhcpv4.FromBytes(r.b); err != nil || m.MessageType() != dhcpv4.MessageTypeAck {
				b.Fatalf("want ACK, got %v %v", m, err)
			}
		}
	}
}

func TestProbeTimeoutMeansFree(t *testing.T) {
	cfg := baseConfig()
	cfg.ProbeTimeout = 10 * time.Millisecond
	cfg.Probe = func(ctx context.Context, ip netip.Addr) (bool, error) {
		<-ctx.Done() // like an ARP probe nobody answers
		return false, ctx.Err()
	}
	h := start(t, cfg)
	if got := h.dora(1).YourIPAddr; !got.Equal(ip4("192.168.30.10")) {
		t.Fatalf("got %v", got)
	}
	if st := h.srv.Stats(); st.ProbeErrors != 0 || st.ProbeInUse != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestCloseAbortsProbe(t *testing.T) {
	cfg := baseConfig()
	cfg.ProbeTimeout = time.Hour
	probing := make(chan struct{})
	cfg.Probe = func(ctx context.Context, ip netip.Addr) (bool, error) {
		close(probing)
		<-ctx.Done()
		return false, ctx.Err()
	}
	h := start(t, cfg)
	h.send(discover(1))
	<-probing
	if err := h.srv.Close(); err != nil { // must not wait for the hour
		t.Fatal(err)
	}
	h.noPending()
}

func TestPreProbeOffersAtOnce(t *testing.T) {
	var mu sync.Mutex
	var probed []string
	cfg := baseConfig()
	cfg.PreProbe = true
	cfg.Probe = func(ctx context.Context, ip netip.Addr) (bool, error) {
		mu.Lock()
		probed = append(probed, ip.String())
		mu.Unlock()
		return false, nil
	}
	h := start(t, cfg)
	waitPreProbed := func(ip string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			h.srv.mu.Lock()
			_, ok := h.srv.preProbed[a4(netip.MustParseAddr(ip))]
			running := h.srv.preRunning
			h.srv.mu.Unlock()
			if ok && !running {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never probed in advance", ip)
			}
			time.Sleep(time.Millisecond) // a background goroutine's result: polled, bounded
		}
	}
	waitPreProbed("192.168.30.10")
	h.send(discover(1))
	offer, _ := h.recv()
	if !offer.YourIPAddr.Equal(ip4("192.168.30.10")) {
		t.Fatalf("offered %v, want .10", offer.YourIPAddr)
	}
	// The offer needed no probe of its own; the next address is probed
	// in advance instead.
	waitPreProbed("192.168.30.11")
	mu.Lock()
	got := append([]string(nil), probed...)
	mu.Unlock()
	if len(got) != 2 || got[0] != "192.168.30.10" || got[1] != "192.168.30.11" {
		t.Fatalf("probed %v, want .10 (in advance) and .11 (in advance)", got)
	}
	// A pre-probe older than its freshness is not trusted.
	h.clk.Advance(preProbeFresh + time.Second)
	h.send(discover(2))
	offer, _ = h.recv()
	mu.Lock()
	n := len(probed)
	mu.Unlock()
	if !offer.YourIPAddr.Equal(ip4("192.168.30.11")) || n < 3 {
		t.Fatalf("stale pre-probe: offered %v after %d probes, want .11 probed again", offer.YourIPAddr, n)
	}
}
