package netstack_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
)

// TestAcceptAbortedWhenHandlerRemoved: a client that sends a SYN and never
// completes the handshake (SYN flood, or a client that vanished) must not
// keep Accept — and so the owner's Close, which waits for its handlers —
// blocked for the minute gVisor spends retransmitting SYN-ACKs. Removing the
// TCP handler (what router.Close does first) aborts handshakes in progress.
// Found by lab/flood_test.go: acrouter hung on SIGTERM after a SYN flood.
func TestAcceptAbortedWhenHandlerRemoved(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	entered := make(chan struct{})
	res := make(chan error, 1)
	r.st.SetTCPHandler(func(q *netstack.TCPRequest) {
		close(entered)
		c, err := q.Accept() // the client never ACKs: blocks in the handshake
		if c != nil {
			c.Close()
		}
		res <- err
	})
	r.send(synFrame(netip.AddrPortFrom(hostIP, 40001), foreignTCP, 1))
	<-entered
	// The SYN-ACK goes out: the handshake is in progress.
	r.expect("SYN-ACK", func(f []byte) bool {
		ip, ok := ipOf(f)
		return ok && ip.Protocol() == 6 && len(ip.Payload()) >= 14 && ip.Payload()[13] == 0x12
	})
	select {
	case err := <-res:
		t.Fatalf("Accept returned before the handshake completed: %v", err)
	default:
	}
	r.st.SetTCPHandler(nil)
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("Accept of a half-open handshake succeeded after the handler was removed")
		}
		t.Logf("Accept aborted: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5 s after the TCP handler was removed")
	}
	// A new handler works again.
	got := make(chan *netstack.TCPRequest, 1)
	r.st.SetTCPHandler(func(q *netstack.TCPRequest) { got <- q; q.Reject(netstack.RejectRST) })
	r.send(synFrame(netip.AddrPortFrom(hostIP, 40002), foreignTCP, 2))
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no request after the handler was set again")
	}
}
