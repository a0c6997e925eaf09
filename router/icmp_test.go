package router

import (
	"bytes"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
)

type echoEvent struct {
	kind    string // "reply", "unreachable:<how>", "time-exceeded"
	req     netstack.EchoRequest
	payload []byte
}

// fakeEcho records what the router sends back to clients.
type fakeEcho struct{ events chan echoEvent }

func newFakeEcho() *fakeEcho { return &fakeEcho{events: make(chan echoEvent, 64)} }

func (e *fakeEcho) WriteEchoReply(req netstack.EchoRequest, payload []byte) error {
	e.events <- echoEvent{"reply", req, bytes.Clone(payload)}
	return nil
}

func (e *fakeEcho) WriteICMPUnreachable(req netstack.EchoRequest, how netstack.Reject) error {
	e.events <- echoEvent{"unreachable:" + how.String(), req, nil}
	return nil
}

func (e *fakeEcho) WriteICMPTimeExceeded(req netstack.EchoRequest) error {
	e.events <- echoEvent{"time-exceeded", req, nil}
	return nil
}

func (e *fakeEcho) next(t *testing.T) echoEvent {
	t.Helper()
	select {
	case ev := <-e.events:
		return ev
	case <-time.After(waitLimit):
		t.Fatal("no ICMP answer")
		return echoEvent{}
	}
}

func echoReq(dst string, id, seq uint16, ttl uint8, payload string) netstack.EchoRequest {
	return netstack.EchoRequest{
		Src: testClient.Addr(), Dst: netip.MustParseAddr(dst),
		ID: id, Seq: seq, TTL: ttl, Payload: []byte(payload),
	}
}

func TestICMPEchoForwarded(t *testing.T) {
	leakCheck(t)
	fe := newFakeEcho()
	r := newTestRouter(t, Config{NoDefaultDeny: true}, fe)
	if r.icmp.mode == icmpUnavailable {
		t.Skipf("this host allows no ICMP sockets (ping_group_range %s, no CAP_NET_RAW)", pingGroupRange())
	}
	t.Logf("ICMP mode: %v", r.icmp.mode)
	checkEchoForwarding(t, r, fe)
}

// checkEchoForwarding pings 127.0.0.1 through r with two identifiers and
// checks the replies, the counters and Close.
func checkEchoForwarding(t *testing.T, r *Router, fe *fakeEcho) {
	t.Helper()
	for seq := uint16(1); seq <= 3; seq++ {
		r.onEcho(echoReq("127.0.0.1", 0x4242, seq, 64, "ping payload"))
		ev := fe.next(t)
		if ev.kind != "reply" || ev.req.ID != 0x4242 || ev.req.Seq != seq || ev.req.Src != testClient.Addr() ||
			ev.req.Dst != netip.MustParseAddr("127.0.0.1") || string(ev.payload) != "ping payload" {
			t.Fatalf("seq %d: got %s id=%#x seq=%d %v→%v payload %q", seq, ev.kind, ev.req.ID, ev.req.Seq, ev.req.Src, ev.req.Dst, ev.payload)
		}
	}
	// A second identifier is a second flow, mapped back to its own ID.
	r.onEcho(echoReq("127.0.0.1", 7, 1, 64, "other"))
	if ev := fe.next(t); ev.kind != "reply" || ev.req.ID != 7 || string(ev.payload) != "other" {
		t.Fatalf("second flow: %+v", ev)
	}
	st := r.Stats()
	if st.FlowsOpenICMP != 2 || st.EchoRequests != 4 || st.EchoReplies != 4 {
		t.Fatalf("Stats = %+v", st)
	}
	r.Close()
	if st := r.Stats(); st.FlowsOpen != 0 || st.FlowsClosed != 2 {
		t.Fatalf("after Close: %+v", st)
	}
}

func TestICMPRefusals(t *testing.T) {
	leakCheck(t)
	fe := newFakeEcho()
	r := newTestRouter(t, Config{}, fe) // default ACL: loopback denied
	if r.icmp.mode == icmpUnavailable {
		r.onEcho(echoReq("127.0.0.1", 1, 1, 64, "x"))
		if st := r.Stats(); st.EchoDropped != 1 || st.FlowsCreated != 0 {
			t.Fatalf("unavailable mode: %+v", st)
		}
		select {
		case ev := <-fe.events:
			t.Fatalf("unavailable mode answered %+v (must not fabricate)", ev)
		default:
		}
		return
	}
	r.onEcho(echoReq("127.0.0.1", 1, 1, 64, "x"))
	if ev := fe.next(t); ev.kind != "unreachable:admin-prohibited" {
		t.Fatalf("denied ping: %s", ev.kind)
	}
	r.onEcho(echoReq("198.51.100.1", 1, 1, 1, "x"))
	if ev := fe.next(t); ev.kind != "time-exceeded" {
		t.Fatalf("TTL 1 ping: %s", ev.kind)
	}
	if st := r.Stats(); st.Refused["acl"] != 1 || st.FlowsCreated != 0 {
		t.Fatalf("Stats = %+v", st)
	}
}

func TestICMPIdleExpiry(t *testing.T) {
	leakCheck(t)
	fe := newFakeEcho()
	r := newTestRouter(t, Config{NoDefaultDeny: true, ICMPIdleTimeout: 50 * time.Millisecond}, fe)
	if r.icmp.mode == icmpUnavailable {
		t.Skip("no ICMP sockets")
	}
	r.onEcho(echoReq("127.0.0.1", 9, 1, 64, "x"))
	fe.next(t)
	waitFor(t, "echo flow expiry", func() bool { return r.Stats().FlowsClosed == 1 })
	r.icmp.mu.Lock()
	n, m := len(r.icmp.flows), len(r.icmp.byRaw)
	r.icmp.mu.Unlock()
	if n != 0 || m != 0 {
		t.Fatalf("expired flow still mapped: %d flows, %d raw ids", n, m)
	}
}

func TestChecksum(t *testing.T) {
	// Echo request id 1 seq 1 payload "abcd": checksum over the message
	// must verify to zero.
	msg := marshalEcho(nil, icmpEchoRequest, 1, 1, []byte("abcde"))
	if c := checksum(msg); c != 0 {
		t.Fatalf("checksum of a checksummed message = %#x, want 0", c)
	}
	// RFC 1071 example: 00 01 f2 03 f4 f5 f6 f7 → sum 0xddf2, checksum 0x220d.
	if c := checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); c != 0x220d {
		t.Fatalf("RFC 1071 example: %#x", c)
	}
}

// TestICMPPingSocketMode checks the unprivileged path (ICMP datagram
// sockets) in a private user and network namespace, where the test may set
// net.ipv4.ping_group_range for itself. It re-runs itself there.
func TestICMPPingSocketMode(t *testing.T) {
	if os.Getenv("ROUTER_TEST_PINGNS") == "1" {
		if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 0"), 0); err != nil {
			t.Skipf("SETUP-SKIP: set ping_group_range in the namespace: %v", err)
		}
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Skipf("SETUP-SKIP: ip link set lo up: %v %s", err, out)
		}
		leakCheck(t)
		fe := newFakeEcho()
		r := newTestRouter(t, Config{NoDefaultDeny: true}, fe)
		if r.icmp.mode != icmpPingSocket {
			t.Fatalf("mode %v in a namespace with ping_group_range 0 0", r.icmp.mode)
		}
		checkEchoForwarding(t, r, fe)
		t.Log("ping-socket mode verified")
		return
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare(1)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip(8)")
	}
	cmd := exec.Command(unshare, "--user", "--map-root-user", "--net", os.Args[0],
		"-test.run=^TestICMPPingSocketMode$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "ROUTER_TEST_PINGNS=1")
	out, err := cmd.CombinedOutput()
	if err != nil && strings.Contains(string(out), "unshare failed") {
		t.Skipf("cannot create a user namespace here: %s", out)
	}
	if strings.Contains(string(out), "SETUP-SKIP") {
		t.Skipf("namespace setup not possible here:\n%s", out)
	}
	if err != nil || !strings.Contains(string(out), "ping-socket mode verified") {
		t.Fatalf("in the namespace: %v\n%s", err, out)
	}
}
