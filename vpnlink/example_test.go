package vpnlink_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

func ExampleDial() {
	hub, err := vpnlinktest.NewHub(vpnlinktest.Config{Users: []vpnlinktest.User{{Name: "alice", Password: "secret"}}})
	if err != nil {
		panic(err)
	}
	defer hub.Close()

	cfg := vpnlink.Config{
		Server: "vpn.example:443", Hub: "DEFAULT", User: "alice", Password: "secret",
		CertSHA256: hub.CertSHA256(), // or StateDir for trust on first use
		Dial:       hub.Dial,         // omit for a real server
	}
	c, err := vpnlink.Dial(context.Background(), cfg)
	if err != nil {
		panic(err)
	}
	defer c.Close()
	st := c.Status()
	fmt.Println(st.State, st.SessionName, st.BridgeMode)

	cfg.Password = "wrong"
	_, err = vpnlink.Dial(context.Background(), cfg)
	fmt.Println(errors.Is(err, vpnlink.ErrAuthFailed), vpnlink.IsPermanent(err))
	// Output:
	// connected SID-ALICE-1 true
	// true true
}
