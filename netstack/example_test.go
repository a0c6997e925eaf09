package netstack_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/netstack/netstacktest"
)

// The router's pattern: dial the destination first, then accept, so the
// client sees a faithful RST or ICMP error when the destination fails.
func Example() {
	link, _ := netstacktest.Pipe() // in production: a *vpnlink.Client
	st, err := netstack.New(link, netstack.Config{
		MAC:  net.HardwareAddr{0x02, 0, 0, 0, 0, 1},
		Addr: netip.MustParsePrefix("192.168.30.1/24"),
	})
	if err != nil {
		panic(err)
	}
	defer st.Close() // also closes link (it implements io.Closer)

	st.SetTCPHandler(func(r *netstack.TCPRequest) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var d net.Dialer
		up, err := d.DialContext(ctx, "tcp", r.Dst.String())
		if err != nil {
			r.Reject(netstack.RejectHostUnreachable) // or RejectRST for "refused"
			return
		}
		defer up.Close()
		down, err := r.Accept()
		if err != nil {
			return
		}
		defer down.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			io.Copy(up, down)
			up.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(down, up)
		down.CloseWrite()
		<-done
	})
	st.SetICMPEchoHandler(func(req netstack.EchoRequest) {
		// Hand req to a worker that pings req.Dst; on a reply:
		// st.WriteEchoReply(req, replyPayload)
	})
}
