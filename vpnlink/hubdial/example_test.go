package hubdial_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/hubdial"
)

// A vpnlink client that reaches the hub through an HTTP proxy; the proxy
// password comes from a file in real use (never from the command line).
func Example() {
	cfg, err := hubdial.ParseProxyURL("http://alice@proxy.corp.example:3128")
	if err != nil {
		fmt.Println(err)
		return
	}
	cfg.Password = "from --proxy-password-file"
	d, err := hubdial.New(cfg, slog.Default())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer d.Close() // after the client's Close
	fmt.Println(cfg)
	_ = func(ctx context.Context) (*vpnlink.Client, error) {
		return vpnlink.Dial(ctx, vpnlink.Config{
			Server: "vpn.example.com:443", Hub: "DEFAULT", User: "router", Password: "…",
			Dial: d.DialContext,
		})
	}
	// Output: http://alice:***@proxy.corp.example:3128
}
