package dhcp6

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
)

var (
	serverMAC = net.HardwareAddr{0x02, 0xac, 0, 0, 0, 1}
	pool      = netip.MustParsePrefix("fd00:ac::1:0/112")
	routerDNS = netip.MustParseAddr("fd00:ac::1")
)

func testServer(t testing.TB, mod func(*Config)) *Server {
	t.Helper()
	cfg := Config{ServerMAC: serverMAC, DNS: []netip.Addr{routerDNS}, Domains: []string{"lan.example"}, Pool: pool}
	if mod != nil {
		mod(&cfg)
	}
	s, err := newServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func clientDUID(i byte) dhcpv6.DUID {
	return &dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: net.HardwareAddr{0x02, 0xcc, 0, 0, 0, i}}
}

// exchange sends msg through handle and decodes the answer (nil: none).
func exchange(t testing.TB, s *Server, msg *dhcpv6.Message) *dhcpv6.Message {
	t.Helper()
	out := s.handle(msg.ToBytes())
	if out == nil {
		return nil
	}
	d, err := dhcpv6.FromBytes(out)
	if err != nil {
		t.Fatalf("server sent an undecodable message: %v", err)
	}
	m, ok := d.(*dhcpv6.Message)
	if !ok || m.TransactionID != msg.TransactionID {
		t.Fatalf("reply %v does not answer transaction %v", d, msg.TransactionID)
	}
	return m
}

func newMsg(t testing.TB, typ dhcpv6.MessageType, cid dhcpv6.DUID, mods ...dhcpv6.Modifier) *dhcpv6.Message {
	m, err := dhcpv6.NewMessage()
	if err != nil {
		t.Fatal(err)
	}
	m.MessageType = typ
	if cid != nil {
		m.AddOption(dhcpv6.OptClientID(cid))
	}
	for _, f := range mods {
		f(m)
	}
	return m
}

func withIA(iaid byte) dhcpv6.Modifier { return dhcpv6.WithIAID([4]byte{0, 0, 0, iaid}) }

func iaAddr(t testing.TB, m *dhcpv6.Message) (netip.Addr, *dhcpv6.OptStatusCode) {
	t.Helper()
	ia := m.Options.OneIANA()
	if ia == nil {
		t.Fatalf("%v: no IA_NA", m.MessageType)
	}
	if a := ia.Options.OneAddress(); a != nil {
		ip, _ := netip.AddrFromSlice(a.IPv6Addr)
		return ip, nil
	}
	return netip.Addr{}, ia.Options.Status()
}

func TestInformationRequest(t *testing.T) {
	s := testServer(t, func(c *Config) { c.Pool = netip.Prefix{} }) // stateless only
	rep := exchange(t, s, newMsg(t, dhcpv6.MessageTypeInformationRequest, nil))
	if rep == nil || rep.MessageType != dhcpv6.MessageTypeReply {
		t.Fatalf("reply %v", rep)
	}
	if dns := rep.Options.DNS(); len(dns) != 1 || !dns[0].Equal(routerDNS.AsSlice()) {
		t.Errorf("DNS %v", dns)
	}
	if l := rep.Options.DomainSearchList(); l == nil || !slices.Equal(l.Labels, []string{"lan.example"}) {
		t.Errorf("search list %v", l)
	}
	if rep.Options.ServerID() == nil || rep.Options.InformationRefreshTime(0) != DefaultInformationRefresh {
		t.Errorf("server ID %v refresh %v", rep.Options.ServerID(), rep.Options.InformationRefreshTime(0))
	}
	// Stateless only: a Solicit is not answered.
	if rep := exchange(t, s, newMsg(t, dhcpv6.MessageTypeSolicit, clientDUID(1), withIA(1))); rep != nil {
		t.Errorf("stateless server answered a Solicit: %v", rep)
	}
	if st := s.Stats(); st.InformationReplies != 1 || st.Ignored != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestStatefulLifecycle(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s := testServer(t, func(c *Config) { c.now = func() time.Time { return now } })
	cid := clientDUID(1)
	adv := exchange(t, s, newMsg(t, dhcpv6.MessageTypeSolicit, cid, withIA(7)))
	if adv == nil || adv.MessageType != dhcpv6.MessageTypeAdvertise {
		t.Fatalf("advertise %v", adv)
	}
	addr, st := iaAddr(t, adv)
	if st != nil || !pool.Contains(addr) {
		t.Fatalf("advertised %v status %v, want an address in %v", addr, st, pool)
	}
	if len(s.Leases()) != 0 {
		t.Errorf("an Advertise bound the address")
	}
	sid := dhcpv6.WithServerID(adv.Options.ServerID())
	// A Request with another server's ID is not for us.
	other := dhcpv6.WithServerID(clientDUID(99))
	if rep := exchange(t, s, newMsg(t, dhcpv6.MessageTypeRequest, cid, withIA(7), other)); rep != nil {
		t.Errorf("answered a Request for another server")
	}
	rep := exchange(t, s, newMsg(t, dhcpv6.MessageTypeRequest, cid, withIA(7), sid))
	if got, st := iaAddr(t, rep); got != addr || st != nil {
		t.Fatalf("request got %v (%v), advertised %v", got, st, addr)
	}
	ia := rep.Options.OneIANA()
	if a := ia.Options.OneAddress(); a.ValidLifetime != DefaultLeaseTime || ia.T1 != DefaultLeaseTime/2 || ia.T2 >= a.ValidLifetime {
		t.Errorf("lifetimes valid %v T1 %v T2 %v", a.ValidLifetime, ia.T1, ia.T2)
	}
	if l := s.Leases(); len(l) != 1 || l[0].Addr != addr || l[0].IAID != 7 || !l[0].Expires.Equal(now.Add(DefaultLeaseTime)) {
		t.Errorf("leases %+v", l)
	}
	// Renew later extends it.
	now = now.Add(30 * time.Minute)
	rep = exchange(t, s, newMsg(t, dhcpv6.MessageTypeRenew, cid, withIA(7), sid))
	if got, _ := iaAddr(t, rep); got != addr || !s.Leases()[0].Expires.Equal(now.Add(DefaultLeaseTime)) {
		t.Errorf("renew got %v, leases %+v", got, s.Leases())
	}
	// A second IA of the same client gets another address.
	rep = exchange(t, s, newMsg(t, dhcpv6.MessageTypeRequest, cid, withIA(8), sid))
	if got, _ := iaAddr(t, rep); got == addr || !pool.Contains(got) {
		t.Errorf("second IA got %v", got)
	}
	// Release, then a Renew finds no binding.
	exchange(t, s, newMsg(t, dhcpv6.MessageTypeRelease, cid, withIA(7), sid))
	rep = exchange(t, s, newMsg(t, dhcpv6.MessageTypeRenew, cid, withIA(7), sid))
	if _, st := iaAddr(t, rep); st == nil || st.StatusCode != iana.StatusNoBinding {
		t.Errorf("renew after release: status %v", st)
	}
	// Expiry: an hour and more later the second binding is gone.
	now = now.Add(2 * time.Hour)
	if l := s.Leases(); len(l) != 0 {
		t.Errorf("expired leases listed: %+v", l)
	}
}

func TestAddressStableAcrossRestarts(t *testing.T) {
	var got []netip.Addr
	for range 2 {
		s := testServer(t, nil)
		rep := exchange(t, s, newMsg(t, dhcpv6.MessageTypeSolicit, clientDUID(3), withIA(1), dhcpv6.WithRapidCommit))
		if rep.MessageType != dhcpv6.MessageTypeReply || len(s.Leases()) != 1 {
			t.Fatalf("rapid commit: %v, leases %v", rep.MessageType, s.Leases())
		}
		a, _ := iaAddr(t, rep)
		got = append(got, a)
	}
	if got[0] != got[1] {
		t.Errorf("addresses %v differ between two servers", got)
	}
}

func TestPoolExhaustionAndExclude(t *testing.T) {
	small := netip.MustParsePrefix("fd00:ac::2:0/124") // 16 addresses, :0 skipped
	excl := netip.MustParseAddr("fd00:ac::2:5")
	s := testServer(t, func(c *Config) { c.Pool = small; c.Exclude = []netip.Addr{excl} })
	seen := map[netip.Addr]bool{}
	for i := range 14 {
		rep := exchange(t, s, newMsg(t, dhcpv6.MessageTypeSolicit, clientDUID(byte(i)), withIA(1), dhcpv6.WithRapidCommit))
		a, st := iaAddr(t, rep)
		if st != nil || seen[a] || a == excl || !small.Contains(a) || a == small.Addr() {
			t.Fatalf("client %d: %v (%v)", i, a, st)
		}
		seen[a] = true
	}
	rep := exchange(t, s, newMsg(t, dhcpv6.MessageTypeSolicit, clientDUID(200), withIA(1), dhcpv6.WithRapidCommit))
	if _, st := iaAddr(t, rep); st == nil || st.StatusCode != iana.StatusNoAddrsAvail {
		t.Errorf("15th client: status %v, want NoAddrsAvail", st)
	}
	if st := s.Stats(); st.NoAddrsAvail != 1 || st.Bindings != 14 {
		t.Errorf("stats %+v", st)
	}
}

func TestMaxBindings(t *testing.T) {
	s := testServer(t, func(c *Config) { c.MaxBindings = 2 })
	for i := range 3 {
		rep := exchange(t, s, newMsg(t, dhcpv6.MessageTypeSolicit, clientDUID(byte(i)), withIA(1), dhcpv6.WithRapidCommit))
		_, st := iaAddr(t, rep)
		if (i < 2) != (st == nil) {
			t.Errorf("client %d: status %v", i, st)
		}
	}
}

func TestConfirm(t *testing.T) {
	s := testServer(t, nil)
	for _, tt := range []struct {
		addr string
		want iana.StatusCode
	}{{"fd00:ac::1:99", iana.StatusSuccess}, {"2001:db8::1", iana.StatusNotOnLink}} {
		m := newMsg(t, dhcpv6.MessageTypeConfirm, clientDUID(1),
			dhcpv6.WithIANA(dhcpv6.OptIAAddress{IPv6Addr: netip.MustParseAddr(tt.addr).AsSlice()}))
		rep := exchange(t, s, m)
		st := rep.Options.Status()
		if st == nil || st.StatusCode != tt.want {
			t.Errorf("confirm %s: %v, want %v", tt.addr, st, tt.want)
		}
	}
}

func TestBadConfig(t *testing.T) {
	for _, c := range []Config{
		{},
		{ServerMAC: serverMAC, DNS: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
		{ServerMAC: serverMAC, Pool: netip.MustParsePrefix("10.0.0.0/24")},
		{ServerMAC: serverMAC, LeaseTime: time.Second},
		{ServerMAC: serverMAC, MaxBindings: -1},
	} {
		if _, err := newServer(c); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
}

func TestServeOverUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	s, err := New(pc, Config{ServerMAC: serverMAC, DNS: []netip.Addr{routerDNS}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := net.Dial("udp6", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := newMsg(t, dhcpv6.MessageTypeInformationRequest, clientDUID(1))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(m.ToBytes()); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("garbage"))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	d, err := dhcpv6.FromBytes(buf[:n])
	if err != nil || d.Type() != dhcpv6.MessageTypeReply {
		t.Fatalf("reply %v %v", d, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// FuzzHandle feeds arbitrary datagrams to the message handler of a stateful
// server: no panic, and every answer decodes and carries our server ID.
func FuzzHandle(f *testing.F) {
	s := testServer(f, func(c *Config) { c.MaxBindings = 64 })
	cid := clientDUID(1)
	sid := dhcpv6.WithServerID(s.sid)
	for _, m := range []*dhcpv6.Message{
		newMsg(f, dhcpv6.MessageTypeInformationRequest, cid),
		newMsg(f, dhcpv6.MessageTypeSolicit, cid, withIA(1)),
		newMsg(f, dhcpv6.MessageTypeSolicit, cid, withIA(1), dhcpv6.WithRapidCommit),
		newMsg(f, dhcpv6.MessageTypeRequest, cid, withIA(1), sid),
		newMsg(f, dhcpv6.MessageTypeRenew, cid, withIA(1), sid),
		newMsg(f, dhcpv6.MessageTypeRebind, cid, withIA(1)),
		newMsg(f, dhcpv6.MessageTypeRelease, cid, withIA(1), sid),
		newMsg(f, dhcpv6.MessageTypeDecline, cid, withIA(1), sid),
		newMsg(f, dhcpv6.MessageTypeConfirm, cid, withIA(1)),
	} {
		f.Add(m.ToBytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		out := s.handle(b)
		if out == nil {
			return
		}
		d, err := dhcpv6.FromBytes(out)
		if err != nil {
			t.Fatalf("undecodable reply to %x: %v", b, err)
		}
		if sid := d.GetOneOption(dhcpv6.OptionServerID); sid == nil {
			t.Fatalf("reply without server ID to %x", b)
		}
	})
}
