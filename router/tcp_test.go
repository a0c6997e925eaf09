package router

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var testClient = netip.MustParseAddrPort("192.168.30.10:40000")

func clientPort(i int) netip.AddrPort {
	return netip.AddrPortFrom(testClient.Addr(), uint16(40000+i))
}

// startTCP runs handleTCP for a new fake request like the stack would and
// returns the client's end and the request.
func startTCP(t *testing.T, r *Router, src, dst netip.AddrPort) (*net.TCPConn, *fakeTCPReq) {
	t.Helper()
	virt, client := tcpPair(t)
	req := newFakeTCPReq(virt)
	go r.handleTCP(src, dst, req)
	return client, req
}

func TestTCPEchoAndNATLog(t *testing.T) {
	leakCheck(t)
	log, logBuf := testLogger(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true, NATLog: true, Logger: log}, nil)
	dst := tcpEchoServer(t)
	client, req := startTCP(t, r, testClient, dst)
	if got := req.wait(t); got != "accept" {
		t.Fatalf("request: %s", got)
	}
	msg := bytes.Repeat([]byte("hello router "), 10000)
	go client.Write(msg)
	if got := readFull(t, client, len(msg)); !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
	fl := r.Flows()
	if len(fl) != 1 || fl[0].Proto != ProtoTCP || fl[0].Client != testClient || fl[0].Dest != dst ||
		fl[0].BytesOut != uint64(len(msg)) || fl[0].BytesIn != uint64(len(msg)) || fl[0].State != StateOpen {
		t.Fatalf("Flows() = %+v", fl)
	}
	if f := fl[0]; f.ID != 1 || f.Created.IsZero() || f.Age < 0 || f.LastActivity.Before(f.Created) ||
		time.Since(f.LastActivity) > waitLimit || f.PacketsOut == 0 || f.PacketsIn == 0 {
		t.Fatalf("Flows() times/counters: %+v", f)
	}
	if acl := r.ACL(); len(acl) != 0 {
		t.Errorf("ACL() with NoDefaultDeny and no rules = %v", acl)
	}
	if c := r.Config(); c.MaxSessions != DefaultMaxSessions || !c.NATLog {
		t.Errorf("Config() = %+v", c)
	}
	client.CloseWrite()
	expectEOF(t, client)
	waitFor(t, "flow to close", func() bool { return r.Stats().FlowsClosed == 1 })
	st := r.Stats()
	if st.FlowsOpen != 0 || st.FlowsCreatedTCP != 1 || st.BytesOut != uint64(len(msg)) || st.BytesIn != uint64(len(msg)) {
		t.Errorf("Stats() = %+v", st)
	}
	logs := logBuf.String()
	for _, want := range []string{"msg=\"nat open\" id=1 proto=tcp client=" + testClient.String() + " dest=" + dst.String(),
		"msg=\"nat close\"", "bytes_out=130000", "bytes_in=130000", "reason=fin"} {
		if !strings.Contains(logs, want) {
			t.Errorf("NAT log lacks %q:\n%s", want, logs)
		}
	}
}

func TestTCPHalfClose(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	// The server reads until EOF, then answers with the byte count: only
	// works if our FIN reaches it while its direction stays open.
	dst := tcpServer(t, func(c *net.TCPConn) {
		n, _ := io.Copy(io.Discard, c)
		c.Write([]byte(strings.Repeat("x", int(n%1000)) + "done"))
		c.CloseWrite()
	})
	client, req := startTCP(t, r, testClient, dst)
	if got := req.wait(t); got != "accept" {
		t.Fatalf("request: %s", got)
	}
	if _, err := client.Write(make([]byte, 1234)); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	if got := string(readFull(t, client, 234+4)); got != strings.Repeat("x", 234)+"done" {
		t.Fatalf("reply %q", got)
	}
	expectEOF(t, client)
	waitFor(t, "flow to close", func() bool { return r.Stats().FlowsClosed == 1 })
}

func TestTCPHalfClosedStateVisible(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	release := make(chan struct{})
	dst := tcpServer(t, func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		<-release
		c.Write([]byte("late"))
	})
	client, req := startTCP(t, r, testClient, dst)
	req.wait(t)
	client.CloseWrite()
	waitFor(t, "half-closed state", func() bool {
		fl := r.Flows()
		return len(fl) == 1 && fl[0].State == StateHalfClosed
	})
	close(release)
	if got := string(readFull(t, client, 4)); got != "late" {
		t.Fatalf("got %q after half-close", got)
	}
}

func TestTCPConnRefused(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	_, req := startTCP(t, r, testClient, closedPort(t))
	if got := req.wait(t); got != "rst" {
		t.Fatalf("closed port answered %q, want rst", got)
	}
	waitFor(t, "flow cleanup", func() bool { return r.Stats().FlowsOpen == 0 })
	if st := r.Stats(); st.Refused["conn-refused"] != 1 || st.RefusedTotal != 1 {
		t.Errorf("Refused = %v", st.Refused)
	}
}

func TestTCPDefaultACLDeniesLoopback(t *testing.T) {
	leakCheck(t)
	dialed := make(chan string, 1)
	r := newTestRouter(t, Config{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed <- addr
		return nil, io.EOF
	}}, nil)
	dst := tcpEchoServer(t) // 127.0.0.1: reachable, but the default ACL says no
	_, req := startTCP(t, r, testClient, dst)
	if got := req.wait(t); got != "admin-prohibited" {
		t.Fatalf("loopback destination answered %q, want admin-prohibited", got)
	}
	select {
	case a := <-dialed:
		t.Fatalf("dialed %s despite the ACL", a)
	default:
	}
	if st := r.Stats(); st.Refused["acl"] != 1 || st.FlowsCreated != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestTCPACLRule(t *testing.T) {
	leakCheck(t)
	dst := tcpEchoServer(t)
	rule, err := ParseRule("deny tcp to 127.0.0.0/8 port " + strconv.Itoa(int(dst.Port())))
	if err != nil {
		t.Fatal(err)
	}
	r := newTestRouter(t, Config{NoDefaultDeny: true, Rules: []Rule{rule}}, nil)
	_, req := startTCP(t, r, testClient, dst)
	if got := req.wait(t); got != "admin-prohibited" {
		t.Fatalf("denied port answered %q", got)
	}
	other := tcpEchoServer(t)
	_, req = startTCP(t, r, clientPort(1), other)
	if got := req.wait(t); got != "accept" {
		t.Fatalf("allowed port answered %q", got)
	}
	if n := r.Stats().Refused["acl"]; n != 1 {
		t.Errorf("acl refusals %d", n)
	}
}

func TestTCPSessionCaps(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true, MaxSessions: 3, MaxSessionsPerClient: 2}, nil)
	dst := tcpEchoServer(t)
	for i := range 2 {
		_, req := startTCP(t, r, clientPort(i), dst)
		if got := req.wait(t); got != "accept" {
			t.Fatalf("flow %d: %s", i, got)
		}
	}
	_, req := startTCP(t, r, clientPort(2), dst)
	if got := req.wait(t); got != "rst" {
		t.Fatalf("3rd flow of one client: %s, want rst", got)
	}
	other := netip.MustParseAddrPort("192.168.30.11:5000")
	_, req = startTCP(t, r, other, dst)
	if got := req.wait(t); got != "accept" {
		t.Fatalf("other client: %s", got)
	}
	_, req = startTCP(t, r, netip.MustParseAddrPort("192.168.30.12:5000"), dst)
	if got := req.wait(t); got != "rst" {
		t.Fatalf("4th flow overall: %s, want rst", got)
	}
	st := r.Stats()
	if st.Refused["client-limit"] != 1 || st.Refused["session-limit"] != 1 || st.FlowsOpen != 3 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestTCPDialLimitDoesNotBlockOthers(t *testing.T) {
	leakCheck(t)
	blackhole := "192.0.2.1:80"
	hd := &hangDialer{hang: map[string]bool{blackhole: true}, started: make(chan string, 8)}
	r := newTestRouter(t, Config{NoDefaultDeny: true, MaxInFlightDials: 3, MaxInFlightDialsPerClient: 3, DialTimeout: time.Hour, Dial: hd.Dial}, nil)
	bh := netip.MustParseAddrPort(blackhole)
	var hanging []*fakeTCPReq
	for i := range 2 {
		_, req := startTCP(t, r, clientPort(i), bh)
		hanging = append(hanging, req)
		hd.waitStarted(t)
	}
	// Two dials hang; a good destination still connects right away.
	dst := tcpEchoServer(t)
	client, req := startTCP(t, r, clientPort(10), dst)
	if got := req.wait(t); got != "accept" {
		t.Fatalf("good flow: %s", got)
	}
	client.Write([]byte("ping"))
	if got := string(readFull(t, client, 4)); got != "ping" {
		t.Fatalf("echo %q", got)
	}
	// Fill the last slot, then one more: refused at once.
	_, req3 := startTCP(t, r, clientPort(3), bh)
	hanging = append(hanging, req3)
	hd.waitStarted(t)
	if n := r.Stats().DialsInFlight; n != 3 {
		t.Fatalf("DialsInFlight = %d", n)
	}
	_, req = startTCP(t, r, clientPort(4), netip.MustParseAddrPort("192.0.2.2:80"))
	if got := req.wait(t); got != "rst" {
		t.Fatalf("over the dial cap: %s, want rst", got)
	}
	if n := r.Stats().Refused["dial-limit"]; n != 1 {
		t.Errorf("dial-limit refusals %d", n)
	}
	// Close ends the hanging dials; their requests get an answer.
	r.Close()
	for _, q := range hanging {
		if got := q.wait(t); got != "rst" {
			t.Errorf("hanging dial after Close: %s", got)
		}
	}
}

func TestTCPDialTimeout(t *testing.T) {
	leakCheck(t)
	hd := &hangDialer{hang: map[string]bool{"192.0.2.1:80": true}, started: make(chan string, 1)}
	r := newTestRouter(t, Config{NoDefaultDeny: true, DialTimeout: 50 * time.Millisecond, Dial: hd.Dial}, nil)
	_, req := startTCP(t, r, testClient, netip.MustParseAddrPort("192.0.2.1:80"))
	if got := req.wait(t); got != "host-unreachable" {
		t.Fatalf("timed-out dial answered %q", got)
	}
	waitFor(t, "refusal count", func() bool { return r.Stats().Refused["dial-timeout"] == 1 })
}

func TestTCPIdleTimeout(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true, TCPIdleTimeout: 100 * time.Millisecond, NATLog: true}, nil)
	dst := tcpEchoServer(t)
	client, req := startTCP(t, r, testClient, dst)
	req.wait(t)
	// No traffic: the router closes both sides; the client sees the close.
	client.SetReadDeadline(time.Now().Add(waitLimit))
	var b [1]byte
	if n, err := client.Read(b[:]); n != 0 || err == nil {
		t.Fatalf("read after idle = %d, %v", n, err)
	}
	waitFor(t, "flow closed", func() bool { return r.Stats().FlowsClosed == 1 })
}

func TestTCPCloseEndsFlows(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	dst := tcpEchoServer(t)
	var clients []*net.TCPConn
	for i := range 5 {
		c, req := startTCP(t, r, clientPort(i), dst)
		if got := req.wait(t); got != "accept" {
			t.Fatal(got)
		}
		clients = append(clients, c)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		c.SetReadDeadline(time.Now().Add(waitLimit))
		var b [1]byte
		if n, err := c.Read(b[:]); n != 0 || err == nil {
			t.Fatalf("client read after Close = %d, %v", n, err)
		}
	}
	if st := r.Stats(); st.FlowsOpen != 0 || st.FlowsClosed != 5 {
		t.Errorf("after Close: %+v", st)
	}
	// New requests after Close are refused.
	_, req := startTCP(t, r, clientPort(9), dst)
	if got := req.wait(t); got != "rst" {
		t.Errorf("after Close: %s", got)
	}
}

func TestTCPAcceptFails(t *testing.T) {
	leakCheck(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true}, nil)
	dst := tcpEchoServer(t)
	req := newFakeTCPReq(nil)
	req.acceptErr = io.ErrUnexpectedEOF
	go r.handleTCP(testClient, dst, req)
	if got := req.wait(t); got != "accept" {
		t.Fatal(got)
	}
	waitFor(t, "accept-failed", func() bool { return r.Stats().Refused["accept-failed"] == 1 })
	if st := r.Stats(); st.FlowsOpen != 0 {
		t.Errorf("flow left open: %+v", st)
	}
}

func TestFDLimitRefusesCleanly(t *testing.T) {
	leakCheck(t)
	log, logBuf := testLogger(t)
	emfile := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("socket", syscall.EMFILE)}
	}
	r := newTestRouter(t, Config{NoDefaultDeny: true, Dial: emfile, Logger: log}, nil)
	for i := range 3 {
		_, req := startTCP(t, r, clientPort(i), netip.MustParseAddrPort("198.51.100.1:80"))
		if got := req.wait(t); got != "rst" {
			t.Fatalf("TCP at the fd limit: %s, want rst", got)
		}
	}
	_, ureq := startUDP(t, r, testClient, netip.MustParseAddrPort("198.51.100.1:53"))
	if got := ureq.wait(t); got != "rst" { // netstack turns it into port unreachable
		t.Fatalf("UDP at the fd limit: %s", got)
	}
	waitFor(t, "flows cleaned up", func() bool { return r.Stats().FlowsOpen == 0 })
	if n := r.Stats().Refused["fd-limit"]; n != 4 {
		t.Errorf("fd-limit refusals %d, want 4", n)
	}
	logs := logBuf.String()
	if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "out of file descriptors") {
		t.Errorf("no clear fd-limit error in the log:\n%s", logs)
	}
	// Rate-limited: 4 refusals within a second make 1 line.
	if n := strings.Count(logs, "out of file descriptors"); n != 1 {
		t.Errorf("%d fd-limit log lines, want 1 (rate-limited)", n)
	}
}

func TestTCPPerClientDialLimit(t *testing.T) {
	leakCheck(t)
	hd := &hangDialer{hang: map[string]bool{"192.0.2.1:80": true}, started: make(chan string, 4)}
	r := newTestRouter(t, Config{NoDefaultDeny: true, MaxInFlightDials: 8, MaxInFlightDialsPerClient: 2, DialTimeout: time.Hour, Dial: hd.Dial}, nil)
	bh := netip.MustParseAddrPort("192.0.2.1:80")
	var hanging []*fakeTCPReq
	for i := range 2 {
		_, req := startTCP(t, r, clientPort(i), bh)
		hanging = append(hanging, req)
		hd.waitStarted(t)
	}
	// This client is at its cap: refused at once...
	_, req := startTCP(t, r, clientPort(5), bh)
	if got := req.wait(t); got != "rst" {
		t.Fatalf("client over its dial cap: %s", got)
	}
	// ...while another client still gets through.
	other := netip.MustParseAddrPort("192.168.30.99:1000")
	_, req = startTCP(t, r, other, tcpEchoServer(t))
	if got := req.wait(t); got != "accept" {
		t.Fatalf("other client: %s", got)
	}
	if st := r.Stats(); st.Refused["client-dial-limit"] != 1 || st.Refused["dial-limit"] != 0 {
		t.Errorf("Refused = %v", st.Refused)
	}
	r.Close()
	for _, q := range hanging {
		q.wait(t)
	}
}
