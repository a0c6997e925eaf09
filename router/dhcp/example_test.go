package dhcp_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	"github.com/acrouter/acrouter/router/dhcp"
)

// Wiring as cmd/acrouter would do it: conn comes from netstack's
// Stack.ListenDHCP and Probe from Stack.ProbeAddr.
func ExampleNew() {
	var conn net.PacketConn                                   // st.ListenDHCP()
	var probe func(context.Context, netip.Addr) (bool, error) // st.ProbeAddr
	srv, err := dhcp.New(conn, dhcp.Config{
		ServerIP:  netip.MustParseAddr("192.168.30.1"),
		Subnet:    netip.MustParsePrefix("192.168.30.0/24"),
		DNS:       []netip.Addr{netip.MustParseAddr("192.168.30.1")},
		Domain:    "lan",
		Routes:    []dhcp.Route{{Dst: netip.MustParsePrefix("10.0.0.0/8")}},
		StateFile: "/var/lib/acrouter/dhcp-leases.json",
		Reservations: map[string]netip.Addr{
			"52:54:00:12:34:56": netip.MustParseAddr("192.168.30.5"),
		},
		Probe:  probe,
		Logger: slog.Default(),
	})
	if err != nil {
		slog.Error("dhcp", "err", err)
		return
	}
	defer srv.Close()
	for _, l := range srv.Leases() {
		slog.Info("lease", "mac", l.MAC, "ip", l.IP, "host", l.Hostname, "state", l.State, "until", l.Expiry)
	}
}
