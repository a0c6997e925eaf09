package router_test

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/router"
)

// Wiring as cmd/acrouter does it: a stack on the hub link, the router on
// the stack. Close the router before the stack.
func ExampleNew() {
	var link netstack.Link // *vpnlink.Client in cmd/acrouter
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	st, err := netstack.New(link, netstack.Config{
		MAC:  net.HardwareAddr{0x02, 0xac, 0, 0, 0, 1},
		Addr: netip.MustParsePrefix("192.168.30.1/24"),
	})
	if err != nil {
		log.Error("netstack", "err", err)
		return
	}
	defer st.Close()
	deny, _ := router.ParseRule("deny tcp to 10.0.0.0/8 port 22")
	r, err := router.New(st, router.Config{Rules: []router.Rule{deny}, NATLog: true, Logger: log})
	if err != nil {
		log.Error("router", "err", err)
		return
	}
	defer r.Close()
}

func ExampleParseRule() {
	for _, s := range []string{
		"deny tcp to 10.0.0.0/8 port 22",
		"ALLOW udp from 192.168.30.0/24 to 8.8.8.8 port 53",
		"deny to 169.254.169.254",
		"deny tcp to 10.0.0.0/8 prot 22",
	} {
		r, err := router.ParseRule(s)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Println(r)
	}
	// Output:
	// deny tcp to 10.0.0.0/8 port 22
	// allow udp from 192.168.30.0/24 to 8.8.8.8/32 port 53
	// deny any to 169.254.169.254/32
	// error: router: rule "deny tcp to 10.0.0.0/8 prot 22": word 5 "prot": unexpected token (want from, to or port)
}
