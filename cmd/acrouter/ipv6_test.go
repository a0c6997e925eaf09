package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack/netstacktest"
	"github.com/acrouter/acrouter/router"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
	mdns "github.com/miekg/dns"
)

// dualStackClient puts a dual-stack client on the test router's hub and
// waits until it configured IPv6 from the router's advertisements.
func dualStackClient(t *testing.T, extraArgs ...string) (*app, *netstacktest.Host, netstacktest.NDPState) {
	t.Helper()
	a, hub := startTestRouter(t, 0, extraArgs...)
	h, err := netstacktest.NewDualStackHost(hub.Attach(), net.HardwareAddr{2, 0xac, 0, 0, 0, 0x60},
		netip.MustParsePrefix("192.168.30.60/24"), netip.MustParseAddr("192.168.30.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ndp, err := h.WaitNDP(ctx, func(s netstacktest.NDPState) bool {
		return len(s.Addrs) > 0 && len(s.RDNSS) > 0 && len(s.DefaultRouters) > 0
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, h, ndp
}

func TestIPv6EndToEnd(t *testing.T) {
	a, h, ndp := dualStackClient(t, "--ipv6-default-route", "on", "--dhcp-search", "lab.test")
	router6 := a.ipv6.prefix.Addr()
	if want := ulaFromMAC(a.mac); a.ipv6.prefix != want || !strings.HasPrefix(router6.String(), "fd") {
		t.Fatalf("router IPv6 %v, want the MAC-derived ULA %v", a.ipv6.prefix, want)
	}
	if !a.ipv6.prefix.Masked().Contains(ndp.Addrs[0].Addr()) {
		t.Errorf("client SLAAC address %v outside %v", ndp.Addrs[0], a.ipv6.prefix.Masked())
	}
	if !slices.Equal(ndp.RDNSS, []netip.Addr{router6}) || !slices.Equal(ndp.DNSSL, []string{"lab.test"}) || ndp.DHCPv6 != "other-config" {
		t.Errorf("RA: RDNSS %v DNSSL %v DHCPv6 %q", ndp.RDNSS, ndp.DNSSL, ndp.DHCPv6)
	}

	// DNS over IPv6, UDP and TCP: a static name and the router's own AAAA.
	for _, network := range []string{"udp", "tcp"} {
		var c net.Conn
		var err error
		dst := netip.AddrPortFrom(router6, 53)
		if network == "udp" {
			c, err = h.DialUDP(dst)
		} else {
			c, err = h.DialTCP(ctxT(t), dst)
		}
		if err != nil {
			t.Fatal(err)
		}
		dc := &mdns.Conn{Conn: c}
		for _, q := range []struct {
			name string
			typ  uint16
			want string
		}{{"www.lab.test.", mdns.TypeA, "10.77.0.1"}, {"acrouter.", mdns.TypeAAAA, router6.String()}} {
			m := new(mdns.Msg)
			m.SetQuestion(q.name, q.typ)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if err := dc.WriteMsg(m); err != nil {
				t.Fatal(err)
			}
			r, err := dc.ReadMsg()
			if err != nil || len(r.Answer) != 1 || !strings.HasSuffix(r.Answer[0].String(), q.want) {
				t.Errorf("%s %s over IPv6 %s: %v %v", q.name, mdns.TypeToString[q.typ], network, r, err)
			}
		}
		c.Close()
	}

	// A TCP flow to an IPv6 destination (carried to a loopback HTTP server).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello over IPv6") })}
	go srv.Serve(ln)
	defer srv.Close()
	dst := netip.AddrPortFrom(netip.MustParseAddr("2001:db8:99::80"), uint16(ln.Addr().(*net.TCPAddr).Port))
	c, err := h.DialTCP(ctxT(t), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.0\r\nHost: lan\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	body, _ := io.ReadAll(c)
	if !bytes.Contains(body, []byte("hello over IPv6")) {
		t.Fatalf("HTTP over IPv6: %q", body)
	}
	flows := a.router.Flows()
	if !slices.ContainsFunc(flows, func(f router.Flow) bool { return f.Dest == dst && f.Client.Addr() == ndp.Addrs[0].Addr() }) {
		t.Errorf("flow table %+v lacks %v → %v", flows, ndp.Addrs[0].Addr(), dst)
	}

	// Stateless DHCPv6: an Information-Request gets the DNS server.
	rep := dhcp6Exchange(t, h, dhcpv6.MessageTypeInformationRequest)
	if dns := rep.Options.DNS(); len(dns) != 1 || !dns[0].Equal(router6.AsSlice()) {
		t.Errorf("DHCPv6 DNS %v, want %v", dns, router6)
	}
}

// dhcp6Exchange sends one DHCPv6 message of type typ (with an IA_NA and
// rapid commit for a Solicit) from the client's link-local address to
// ff02::1:2 and returns the reply.
func dhcp6Exchange(t *testing.T, h *netstacktest.Host, typ dhcpv6.MessageType) *dhcpv6.Message {
	t.Helper()
	pc, err := h.ListenUDP(netip.MustParseAddrPort("[::]:546"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	m, err := dhcpv6.NewMessage()
	if err != nil {
		t.Fatal(err)
	}
	m.MessageType = typ
	m.AddOption(dhcpv6.OptClientID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: net.HardwareAddr{2, 0xac, 0, 0, 0, 0x60}}))
	if typ == dhcpv6.MessageTypeSolicit {
		dhcpv6.WithIAID([4]byte{0, 0, 0, 1})(m)
		dhcpv6.WithRapidCommit(m)
	}
	pc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := pc.WriteTo(m.ToBytes(), &net.UDPAddr{IP: net.ParseIP("ff02::1:2"), Port: 547}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	for range 16 {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("DHCPv6 %v: %v", typ, err)
		}
		d, err := dhcpv6.FromBytes(buf[:n])
		if err != nil {
			continue
		}
		if rep, ok := d.(*dhcpv6.Message); ok && rep.TransactionID == m.TransactionID {
			return rep
		}
	}
	t.Fatalf("no DHCPv6 reply to %v", typ)
	return nil
}

func TestIPv6StatefulDHCPv6(t *testing.T) {
	a, hub := startTestRouter(t, 0, "--dhcpv6", "stateful")
	h, err := netstacktest.NewDualStackHost(hub.Attach(), net.HardwareAddr{2, 0xac, 0, 0, 0, 0x60},
		netip.MustParsePrefix("192.168.30.60/24"), netip.MustParseAddr("192.168.30.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ndp, err := h.WaitNDP(ctxT(t), func(s netstacktest.NDPState) bool { return s.DHCPv6 != "" })
	if err != nil || ndp.DHCPv6 != "managed" || len(ndp.Addrs) != 0 {
		t.Fatalf("RA with stateful DHCPv6: mode %q, SLAAC addresses %v (want managed, none): %v", ndp.DHCPv6, ndp.Addrs, err)
	}
	rep := dhcp6Exchange(t, h, dhcpv6.MessageTypeSolicit)
	ia := rep.Options.OneIANA()
	if rep.MessageType != dhcpv6.MessageTypeReply || ia == nil || ia.Options.OneAddress() == nil {
		t.Fatalf("rapid-commit Solicit: %v", rep)
	}
	got, _ := netip.AddrFromSlice(ia.Options.OneAddress().IPv6Addr)
	if pool := dhcp6Pool(a.ipv6.prefix); !pool.Contains(got) {
		t.Errorf("address %v outside the pool %v", got, pool)
	}
	if l := a.dhcp6.Leases(); len(l) != 1 || l[0].Addr != got {
		t.Errorf("leases %+v", l)
	}
	// The status API lists the binding next to the DHCPv4 leases.
	if docs := a.Leases(); !slices.ContainsFunc(docs, func(d leaseDoc) bool { return d.IP == got.String() && d.DUID != "" }) {
		t.Errorf("status leases %+v lack %v", docs, got)
	}
	if d := a.Status(); d.Router.IPv6 != a.ipv6.prefix.String() || d.Router.DHCPv6 != "stateful" || !strings.HasPrefix(d.Router.LinkLocal6, "fe80::") {
		t.Errorf("status router %+v", d.Router)
	}
}

func TestIPv6Off(t *testing.T) {
	a, hub := startTestRouter(t, 0, "--ipv6=false")
	h, err := netstacktest.NewDualStackHost(hub.Attach(), net.HardwareAddr{2, 0xac, 0, 0, 0, 0x60},
		netip.MustParsePrefix("192.168.30.60/24"), netip.MustParseAddr("192.168.30.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// The client's Router Solicitations (3, a second apart) go unanswered
	// and are counted as an unhandled protocol.
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if st, err := h.WaitNDP(ctx, func(s netstacktest.NDPState) bool { return len(s.Addrs) > 0 || s.DHCPv6 != "" }); err == nil {
		t.Fatalf("IPv6 off, yet the client configured %+v", st)
	}
	if s := a.stack.Stats(); s.DropOtherProtocol == 0 || s.RAsSent != 0 || a.stack.Addr6().IsValid() || a.dhcp6 != nil {
		t.Errorf("IPv6 off: DropOtherProtocol %d RAsSent %d Addr6 %v", s.DropOtherProtocol, s.RAsSent, a.stack.Addr6())
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHasIPv6DefaultRoute(t *testing.T) {
	const (
		def    = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n"
		reject = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
		ula    = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
	)
	for _, tt := range []struct {
		table string
		want  bool
	}{{def + ula, true}, {reject + ula, false}, {ula, false}, {"", false}, {"garbage\n", false}} {
		if got := hasIPv6DefaultRoute(strings.NewReader(tt.table)); got != tt.want {
			t.Errorf("%q: %v, want %v", tt.table, got, tt.want)
		}
	}
}

func TestULAFromMAC(t *testing.T) {
	a := ulaFromMAC(net.HardwareAddr{2, 0, 0, 0, 0, 1})
	b := ulaFromMAC(net.HardwareAddr{2, 0, 0, 0, 0, 2})
	if a == b || a.Bits() != 64 || a.Addr().As16()[0] != 0xfd || a.Addr().As16()[15] != 1 {
		t.Errorf("ULAs %v %v", a, b)
	}
	if a != ulaFromMAC(net.HardwareAddr{2, 0, 0, 0, 0, 1}) {
		t.Error("ULA not stable for one MAC")
	}
}
