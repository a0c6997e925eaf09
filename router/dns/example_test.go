package dns_test

import (
	"log/slog"
	"net"
	"net/netip"

	"github.com/acrouter/acrouter/router/dns"
)

// Wiring as cmd/acrouter would do it: udp and tcp come from netstack's
// Stack.ListenUDP(53) and Stack.ListenTCP(53). With no Upstreams, the host's
// /etc/resolv.conf is followed.
func ExampleNew() {
	var udp net.PacketConn // st.ListenUDP(53)
	var tcp net.Listener   // st.ListenTCP(53)
	srv, err := dns.New(dns.Config{
		RouterName: "router.lan",
		RouterAddr: netip.MustParseAddr("192.168.30.1"),
		Static:     map[string][]netip.Addr{"nas.lan": {netip.MustParseAddr("192.168.30.5")}},
		Logger:     slog.Default(),
	}, udp, tcp)
	if err != nil {
		slog.Error("dns", "err", err)
		return
	}
	defer srv.Close()
	// DHCP host names can be published as they change:
	_ = srv.SetHosts(map[string][]netip.Addr{"laptop.lan": {netip.MustParseAddr("192.168.30.10")}})
}
