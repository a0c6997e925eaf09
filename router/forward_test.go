package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/netstack/netstacktest"
)

func TestParsePortForward(t *testing.T) {
	good := []struct {
		in   string
		want PortForward
		str  string
	}{
		{"tcp 0.0.0.0:8022 -> 192.168.30.50:22", PortForward{ProtoTCP, netip.MustParseAddrPort("0.0.0.0:8022"), netip.MustParseAddrPort("192.168.30.50:22")}, "tcp 0.0.0.0:8022 -> 192.168.30.50:22"},
		{"UDP :5353->192.168.30.60:53", PortForward{ProtoUDP, netip.MustParseAddrPort("0.0.0.0:5353"), netip.MustParseAddrPort("192.168.30.60:53")}, "udp 0.0.0.0:5353 -> 192.168.30.60:53"},
		{"  tcp   [::]:8080  ->  10.0.0.7:80 ", PortForward{ProtoTCP, netip.MustParseAddrPort("[::]:8080"), netip.MustParseAddrPort("10.0.0.7:80")}, "tcp [::]:8080 -> 10.0.0.7:80"},
		{"tcp 127.0.0.1:1 -> 192.168.30.50:65535", PortForward{ProtoTCP, netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("192.168.30.50:65535")}, "tcp 127.0.0.1:1 -> 192.168.30.50:65535"},
	}
	for _, tc := range good {
		got, err := ParsePortForward(tc.in)
		if err != nil {
			t.Errorf("ParsePortForward(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want || got.String() != tc.str {
			t.Errorf("ParsePortForward(%q) = %+v (%s), want %+v (%s)", tc.in, got, got, tc.want, tc.str)
		}
		again, err := ParsePortForward(got.String())
		if err != nil || again != got {
			t.Errorf("round trip of %q: %+v, %v", got, again, err)
		}
	}
	bad := []struct{ in, want string }{
		{"", "empty"},
		{"icmp 0.0.0.0:1 -> 192.168.30.5:1", `protocol "icmp"`},
		{"tcp 0.0.0.0:8022 192.168.30.50:22", `missing "->"`},
		{"tcp -> 192.168.30.50:22", "missing the listen address"},
		{"tcp 0.0.0.0:8022 ->", "missing the client address"},
		{"tcp 0.0.0.0:8022 -> 192.168.30.50", `client address "192.168.30.50": want ADDRESS:PORT`},
		{"tcp 0.0.0.0:0 -> 192.168.30.50:22", `listen address "0.0.0.0:0": port "0": want 1-65535`},
		{"tcp 0.0.0.0:70000 -> 192.168.30.50:22", `port "70000": want 1-65535`},
		{"tcp 0.0.0.0:8022 -> 192.168.30.50:0", `port "0": want 1-65535`},
		{"tcp host:8022 -> 192.168.30.50:22", `"host" is not an IP address`},
		{"tcp 0.0.0.0:8022 -> [fd00::5]:22", "want an IPv4 address"},
		{"tcp 0.0.0.0:8022 -> 127.0.0.1:22", "not a unicast host address"},
		{"tcp 0.0.0.0:8022 -> 192.168.30.50:22 extra", "unexpected extra words"},
		{"tcp 0.0.0.0:8022 -> 192.168.30.50:22 -> 1.2.3.4:5", "unexpected extra words"},
		{"tcp 224.0.0.1:8022 -> 192.168.30.50:22", "multicast"},
	}
	for _, tc := range bad {
		_, err := ParsePortForward(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePortForward(%q) error %v, want one containing %q", tc.in, err, tc.want)
		}
	}
	var pf PortForward
	if err := pf.UnmarshalText([]byte("tcp :8022 -> 192.168.30.50:22")); err != nil || pf.To.Port() != 22 {
		t.Errorf("UnmarshalText: %+v %v", pf, err)
	}
}

// clientAddr is netstacktest's Host address (the hub client).
var clientAddr = hostPrefix.Addr()

func mustForward(t *testing.T, s string) PortForward {
	t.Helper()
	pf, err := ParsePortForward(s)
	if err != nil {
		t.Fatal(err)
	}
	return pf
}

// forwardOf returns the ForwardInfo of pf (fails if absent).
func forwardOf(t *testing.T, r *Router, pf PortForward) ForwardInfo {
	t.Helper()
	for _, fi := range r.Forwards() {
		if fi.Rule == pf {
			return fi
		}
	}
	t.Fatalf("forward %v not in Forwards() = %+v", pf, r.Forwards())
	return ForwardInfo{}
}

// TestForwardTCP: a host-side client on 127.0.0.1 reaches a TCP service on
// the hub client through a forward; data and half-close go both ways, the
// client sees the router address, and the flow and counters are reported.
func TestForwardTCP(t *testing.T) {
	leakCheck(t)
	pf := PortForward{Proto: ProtoTCP, Listen: netip.MustParseAddrPort("127.0.0.1:0"), To: netip.AddrPortFrom(clientAddr, 22)}
	r, h := newNetRouter(t, Config{Forwards: []PortForward{pf}})
	l, err := h.ListenTCP(22)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type served struct {
		from string
		got  int
		err  error
	}
	done := make(chan served, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- served{err: err}
			return
		}
		defer c.Close()
		got, err := io.ReadAll(c) // until the host-side client's FIN
		if err == nil {
			_, err = c.Write([]byte("SSH-2.0-after-your-FIN"))
		}
		if err == nil {
			err = c.(netstack.TCPConn).CloseWrite()
		}
		done <- served{from: c.RemoteAddr().String(), got: len(got), err: err}
	}()
	fi := forwardOf(t, r, pf)
	if fi.Bound.Port() == 0 || fi.Bound.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("Bound = %v", fi.Bound)
	}
	c, err := net.Dial("tcp", fi.Bound.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("forward!"), 1<<16) // 512 KiB
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an inbound flow", func() bool {
		fs := r.Flows()
		return len(fs) == 1 && fs[0].Inbound && fs[0].Client == pf.To && fs[0].Proto == ProtoTCP
	})
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(waitLimit))
	reply, err := io.ReadAll(c)
	if err != nil || string(reply) != "SSH-2.0-after-your-FIN" {
		t.Fatalf("reply after half-close: %q, %v", reply, err)
	}
	s := <-done
	if s.err != nil || s.got != len(msg) {
		t.Fatalf("service got %d of %d bytes: %v", s.got, len(msg), s.err)
	}
	if ap, err := netip.ParseAddrPort(s.from); err != nil || ap.Addr() != routerPrefix.Addr() {
		t.Errorf("the service saw the connection from %s, want the router address", s.from)
	}
	waitFor(t, "the forward's connection to end", func() bool { return forwardOf(t, r, pf).Active == 0 })
	fi = forwardOf(t, r, pf)
	if fi.Connections != 1 || fi.Refused != 0 || fi.BytesFromClient != uint64(len(reply)) || fi.BytesToClient != uint64(len(msg)) {
		t.Errorf("ForwardInfo = %+v", fi)
	}
	if st := r.Stats(); st.FlowsCreatedTCP != 1 || st.FlowsOpen != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

// TestForwardTCPClientRefuses: nothing listens on the hub client: the
// host-side connection is reset and counted as refused.
func TestForwardTCPClientRefuses(t *testing.T) {
	leakCheck(t)
	r, _ := newNetRouter(t, Config{})
	pf := PortForward{Proto: ProtoTCP, Listen: netip.MustParseAddrPort("127.0.0.1:0"), To: netip.AddrPortFrom(clientAddr, 23)}
	if err := r.AddForward(pf); err != nil {
		t.Fatal(err)
	}
	// The reset may even beat connect's return on loopback.
	c, err := net.Dial("tcp", forwardOf(t, r, pf).Bound.String())
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(waitLimit))
		var n int
		n, err = c.Read(make([]byte, 1))
		if n != 0 {
			t.Fatalf("read %d bytes from a forward to a closed client port", n)
		}
	}
	if !errors.Is(err, syscall.ECONNRESET) && err != io.EOF {
		t.Fatalf("forward to a closed client port: %v; want a reset", err)
	}
	waitFor(t, "the refusal to be counted", func() bool { return forwardOf(t, r, pf).Refused == 1 })
	if fi := forwardOf(t, r, pf); fi.Connections != 0 || fi.Active != 0 {
		t.Errorf("ForwardInfo = %+v", fi)
	}
	if n := r.Stats().Refused["conn-refused"]; n != 1 {
		t.Errorf("conn-refused = %d", n)
	}
}

// TestForwardUDP: two host-side peers each get their own mapping to a UDP
// service on the hub client and see only their own replies.
func TestForwardUDP(t *testing.T) {
	leakCheck(t)
	r, h := newNetRouter(t, Config{})
	pc, err := h.ListenUDP(netip.AddrPortFrom(clientAddr, 53))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { // the hub client's service: answers "re:" + datagram
		defer close(served)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("re:"), buf[:n]...), from)
		}
	}()
	defer func() { pc.Close(); <-served }()
	pf := PortForward{Proto: ProtoUDP, Listen: netip.MustParseAddrPort("127.0.0.1:0"), To: netip.AddrPortFrom(clientAddr, 53)}
	if err := r.AddForward(pf); err != nil {
		t.Fatal(err)
	}
	bound := forwardOf(t, r, pf).Bound
	var peers []net.Conn
	for i := range 2 {
		c, err := net.Dial("udp", bound.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		peers = append(peers, c)
		for j := range 3 {
			msg := fmt.Sprintf("peer%d-%d", i, j)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			if got := readDatagram(t, c); got != "re:"+msg {
				t.Fatalf("peer %d got %q, want %q", i, got, "re:"+msg)
			}
		}
	}
	fi := forwardOf(t, r, pf)
	if fi.Connections != 2 || fi.Active != 2 || fi.BytesToClient != uint64(6*len("peer0-0")) || fi.BytesFromClient != uint64(6*len("re:peer0-0")) {
		t.Errorf("ForwardInfo = %+v", fi)
	}
	n := 0
	for _, f := range r.Flows() {
		if f.Inbound && f.Proto == ProtoUDP && f.Client == pf.To {
			n++
		}
	}
	if n != 2 {
		t.Errorf("inbound UDP flows = %d, want 2: %+v", n, r.Flows())
	}
	// Removing the rule ends the mappings and frees the port.
	if err := r.RemoveForward(pf); err != nil {
		t.Fatal(err)
	}
	if fs := r.Flows(); len(fs) != 0 {
		t.Errorf("flows after RemoveForward: %+v", fs)
	}
	pc2, err := net.ListenPacket("udp4", bound.String())
	if err != nil {
		t.Fatalf("port still taken after RemoveForward: %v", err)
	}
	pc2.Close()
}

// TestForwardUDPIdle: a peer's mapping ends after UDPIdleTimeout.
func TestForwardUDPIdle(t *testing.T) {
	leakCheck(t)
	r, h := newNetRouter(t, Config{UDPIdleTimeout: 200 * time.Millisecond})
	pc, err := h.ListenUDP(netip.AddrPortFrom(clientAddr, 9))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pf := PortForward{Proto: ProtoUDP, Listen: netip.MustParseAddrPort("127.0.0.1:0"), To: netip.AddrPortFrom(clientAddr, 9)}
	if err := r.AddForward(pf); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("udp", forwardOf(t, r, pf).Bound.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	pc.SetReadDeadline(time.Now().Add(waitLimit))
	if _, _, err := pc.ReadFrom(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the idle mapping to end", func() bool {
		fi := forwardOf(t, r, pf)
		return fi.Connections == 1 && fi.Active == 0
	})
	if n := r.Stats().FlowsClosed; n != 1 {
		t.Errorf("FlowsClosed = %d", n)
	}
}

// TestForwardRemove: removing a TCP rule closes its listener and ends its
// connections; the port can be forwarded again.
func TestForwardRemove(t *testing.T) {
	leakCheck(t)
	r, h := newNetRouter(t, Config{})
	l, err := h.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	pf := PortForward{Proto: ProtoTCP, Listen: netip.MustParseAddrPort("127.0.0.1:0"), To: netip.AddrPortFrom(clientAddr, 8080)}
	if err := r.AddForward(pf); err != nil {
		t.Fatal(err)
	}
	bound := forwardOf(t, r, pf).Bound
	c, err := net.Dial("tcp", bound.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hi"))
	if got := readFull(t, c, 2); string(got) != "hi" {
		t.Fatalf("echo %q", got)
	}
	// By the bound address (the rule was added with port 0).
	byBound := PortForward{Proto: ProtoTCP, Listen: bound, To: pf.To}
	if err := r.RemoveForward(byBound); err != nil {
		t.Fatal(err)
	}
	if len(r.Forwards()) != 0 {
		t.Errorf("Forwards after remove: %+v", r.Forwards())
	}
	c.SetReadDeadline(time.Now().Add(waitLimit))
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("open connection after remove: %v; want it ended", err)
	}
	if _, err := net.Dial("tcp", bound.String()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after remove: %v; want connection refused", err)
	}
	err = r.RemoveForward(byBound)
	if err == nil || !strings.Contains(err.Error(), "no such forward") {
		t.Errorf("second remove: %v", err)
	}
	// The same port again, to another client port: the old rule's port is free.
	again := PortForward{Proto: ProtoTCP, Listen: bound, To: netip.AddrPortFrom(clientAddr, 8081)}
	if err := r.AddForward(again); err != nil {
		t.Fatalf("re-add on the freed port: %v", err)
	}
	err = r.RemoveForward(PortForward{Proto: ProtoTCP, Listen: bound, To: pf.To})
	if err == nil || !strings.Contains(err.Error(), "forwards to "+again.To.String()) {
		t.Errorf("remove with the wrong target: %v; want a hint naming %v", err, again.To)
	}
}

func TestForwardAddErrors(t *testing.T) {
	leakCheck(t)
	alias := netip.MustParseAddr("192.168.30.254")
	r, _ := newNetRouter(t, Config{LoopbackAlias: alias})
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ok := PortForward{Proto: ProtoTCP, Listen: netip.MustParseAddrPort("127.0.0.1:0"), To: netip.AddrPortFrom(clientAddr, 22)}
	if err := r.AddForward(ok); err != nil {
		t.Fatal(err)
	}
	bound := forwardOf(t, r, ok).Bound
	for _, tc := range []struct {
		pf   PortForward
		want string
	}{
		{PortForward{ProtoTCP, netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("10.9.9.9:22")}, "not in the router's subnet 192.168.30.0/24"},
		{PortForward{ProtoTCP, netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("192.168.30.1:22")}, "router's own address"},
		{PortForward{ProtoTCP, netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("192.168.30.255:22")}, "broadcast"},
		{PortForward{ProtoTCP, netip.MustParseAddrPort("127.0.0.1:0"), netip.AddrPortFrom(alias, 22)}, "loopback alias"},
		{PortForward{ProtoICMP, netip.MustParseAddrPort("127.0.0.1:0"), netip.AddrPortFrom(clientAddr, 22)}, "want tcp or udp"},
		{PortForward{ProtoTCP, bound, netip.AddrPortFrom(clientAddr, 23)}, "already forwarded"},
		{PortForward{ProtoTCP, netip.MustParseAddrPort(taken.Addr().String()), netip.AddrPortFrom(clientAddr, 22)}, "already in use"},
		{PortForward{ProtoTCP, netip.MustParseAddrPort("192.0.2.1:8022"), netip.AddrPortFrom(clientAddr, 22)}, "not an address of this host"},
	} {
		err := r.AddForward(tc.pf)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddForward(%v) = %v, want an error containing %q", tc.pf, err, tc.want)
		}
	}
	if n := len(r.Forwards()); n != 1 {
		t.Errorf("%d forwards after failed adds, want 1", n)
	}
	// After Close: refused, and the listener is gone.
	r.Close()
	if err := r.AddForward(ok); !errors.Is(err, net.ErrClosed) {
		t.Errorf("AddForward after Close: %v", err)
	}
	if _, err := net.Dial("tcp", bound.String()); err == nil {
		t.Error("the listener survived Close")
	}
	// A router without a stack cannot forward.
	r2 := newTestRouter(t, Config{}, nil)
	if err := r2.AddForward(ok); err == nil || !strings.Contains(err.Error(), "no netstack.Stack") {
		t.Errorf("AddForward without a stack: %v", err)
	}
}

// TestForwardBindPermission checks the message for a privileged port (see
// TestForwardBindPrivilegedPort for a real bind).
func TestForwardBindPermission(t *testing.T) {
	pf := mustForward(t, "tcp 127.0.0.1:1 -> 192.168.30.10:22")
	err := listenError(pf, &net.OpError{Op: "listen", Net: "tcp4", Err: os.NewSyscallError("bind", syscall.EACCES)}, "1024")
	for _, want := range []string{"port 1:", "permission denied", "net.ipv4.ip_unprivileged_port_start", "from port 1024 up", pf.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	if !errors.Is(err, syscall.EACCES) {
		t.Errorf("%v does not wrap EACCES", err)
	}
	if err := listenError(pf, syscall.EACCES, ""); !strings.Contains(err.Error(), "lowest unprivileged port") {
		t.Errorf("message without the sysctl value: %v", err)
	}

}

// newStackForTest is a bare stack (no client) for New.
func newStackForTest(t *testing.T) *netstack.Stack {
	a, b := netstacktest.Pipe()
	st, err := netstack.New(a, netstack.Config{MAC: routerMAC, Addr: routerPrefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); b.Close() })
	return st
}

// TestLoopbackAlias: a hub client reaches services on the host's 127.0.0.1
// through the alias (TCP, UDP, ping); the default deny of 127.0.0.0/8 still
// refuses loopback itself, the ACL sees the alias address, and without the
// option nothing answers for it.
func TestLoopbackAlias(t *testing.T) {
	leakCheck(t)
	alias := netip.MustParseAddr("192.168.30.254")
	echo := tcpEchoServer(t) // on 127.0.0.1
	blocked := tcpEchoServer(t)
	deny := mustRule(t, "deny tcp to "+alias.String()+" port "+strconv.Itoa(int(blocked.Port())))
	logger, logs := testLogger(t)
	r, h := newNetRouter(t, Config{LoopbackAlias: alias, Rules: []Rule{deny}, Logger: logger})
	r.icmp.mapDst = nil // newNetRouter's test mapping; the alias needs none

	// TCP through the alias.
	c, err := h.DialTCP(ctxT(t), netip.AddrPortFrom(alias, echo.Port()))
	if err != nil {
		t.Fatalf("dial the alias: %v", err)
	}
	defer c.Close()
	c.Write([]byte("loop"))
	if got := readFull(t, c, 4); string(got) != "loop" {
		t.Fatalf("echo through the alias: %q", got)
	}
	if fs := r.Flows(); len(fs) != 1 || fs[0].Dest != netip.AddrPortFrom(alias, echo.Port()) || fs[0].Inbound {
		t.Errorf("flows = %+v; want one to the alias", fs)
	}
	// UDP through the alias.
	uecho := udpEchoServer(t)
	u, err := h.DialUDP(netip.AddrPortFrom(alias, uecho.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.Write([]byte("udp-loop"))
	if got := readDatagram(t, u); got != "udp-loop" {
		t.Fatalf("UDP echo through the alias: %q", got)
	}
	// The ACL sees the alias: the deny rule for one port holds.
	ctx, cancel := context.WithTimeout(ctxT(t), 2*time.Second)
	defer cancel()
	if c2, err := h.DialTCP(ctx, netip.AddrPortFrom(alias, blocked.Port())); err == nil {
		c2.Close()
		t.Fatal("a port denied by the ACL was reached through the alias")
	}
	if n := r.Stats().Refused["acl"]; n != 1 {
		t.Errorf("acl refusals = %d, want 1", n)
	}
	// 127.0.0.1 itself stays denied by default (a client cannot even put
	// it on the wire through gVisor, so drive the handler directly).
	q := newFakeTCPReq(nil)
	go r.handleTCP(netip.AddrPortFrom(clientAddr, 40000), echo, q)
	if got := q.wait(t); got != "admin-prohibited" {
		t.Errorf("flow to %v: %s; want the default deny (admin-prohibited)", echo, got)
	}
	if n := r.Stats().Refused["acl"]; n != 2 {
		t.Errorf("acl refusals = %d, want 2", n)
	}
	// Ping the alias: answered by the host's loopback.
	if r.icmp.mode != icmpUnavailable {
		if err := h.Ping(ctxT(t), alias, []byte("ping-loop")); err != nil {
			t.Errorf("ping the alias: %v", err)
		}
	}
	if !strings.Contains(logs.String(), "host-loopback alias enabled") {
		t.Error("enabling the alias was not logged")
	}

	// Without the option the address is nobody's.
	_, h2 := newNetRouter(t, Config{})
	ctx2, cancel2 := context.WithTimeout(ctxT(t), 1500*time.Millisecond)
	defer cancel2()
	if c3, err := h2.DialTCP(ctx2, netip.AddrPortFrom(alias, echo.Port())); err == nil {
		c3.Close()
		t.Fatal("the alias answered although LoopbackAlias is off")
	}
}

func TestLoopbackAliasConfig(t *testing.T) {
	leakCheck(t)
	for _, tc := range []struct{ alias, want string }{
		{"127.0.0.1", "outside 127.0.0.0/8"},
		{"0.0.0.0", "outside 127.0.0.0/8"},
		{"fd00::1", "IPv4"},
		{"169.254.1.1", "link-local"},
		{"192.168.30.1", "router's own address"},
		{"192.168.30.255", "broadcast"},
	} {
		_, err := New(newStackForTest(t), Config{LoopbackAlias: netip.MustParseAddr(tc.alias)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoopbackAlias %s: %v; want an error containing %q", tc.alias, err, tc.want)
		}
	}
	// Outside the subnet is fine (clients route it through the router).
	r, err := New(newStackForTest(t), Config{LoopbackAlias: netip.MustParseAddr("198.18.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
}

func mustRule(t *testing.T, s string) Rule {
	t.Helper()
	r, err := ParseRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestForwardInfoJSON(t *testing.T) {
	fi := ForwardInfo{Rule: mustForward(t, "tcp :8022 -> 192.168.30.50:22"), Connections: 3}
	b, err := json.Marshal(fi)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); !strings.Contains(s, `"Rule":"tcp 0.0.0.0:8022 -\u003e 192.168.30.50:22"`) || !strings.Contains(s, `"Connections":3`) {
		t.Errorf("JSON %s", s)
	}
}

// TestForwardSessionLimit: forwarded connections count against the hub
// client's session cap; over it the host-side connection is reset.
func TestForwardSessionLimit(t *testing.T) {
	leakCheck(t)
	r, h := newNetRouter(t, Config{MaxSessionsPerClient: 1})
	l, err := h.ListenTCP(7)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	pf := PortForward{Proto: ProtoTCP, Listen: netip.MustParseAddrPort("127.0.0.1:0"), To: netip.AddrPortFrom(clientAddr, 7)}
	if err := r.AddForward(pf); err != nil {
		t.Fatal(err)
	}
	bound := forwardOf(t, r, pf).Bound.String()
	c1, err := net.Dial("tcp", bound)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c1.Write([]byte("1"))
	readFull(t, c1, 1)
	c2, err := net.Dial("tcp", bound)
	if err == nil {
		defer c2.Close()
		c2.SetReadDeadline(time.Now().Add(waitLimit))
		_, err = c2.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) && err != io.EOF {
		t.Fatalf("second connection over the per-client cap: %v; want a reset", err)
	}
	if fi := forwardOf(t, r, pf); fi.Refused != 1 || fi.Connections != 1 || fi.Active != 1 {
		t.Errorf("ForwardInfo = %+v", fi)
	}
	if n := r.Stats().Refused["client-limit"]; n != 1 {
		t.Errorf("client-limit refusals = %d", n)
	}
}

// BenchmarkForwardTCP: host-side 127.0.0.1 client → forward → netstack →
// pipe → the hub client's sink (gVisor on both ends of the pipe).
func BenchmarkForwardTCP(b *testing.B) {
	r, h := newNetRouter(b, Config{})
	l, err := h.ListenTCP(9)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	total := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			total <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		total <- n
	}()
	pf := PortForward{Proto: ProtoTCP, Listen: netip.MustParseAddrPort("127.0.0.1:0"), To: netip.AddrPortFrom(clientAddr, 9)}
	if err := r.AddForward(pf); err != nil {
		b.Fatal(err)
	}
	c, err := net.Dial("tcp", r.Forwards()[0].Bound.String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case n := <-total:
		if want := int64(b.N) * int64(len(chunk)); n != want {
			b.Fatalf("sink got %d bytes, want %d", n, want)
		}
	case <-time.After(time.Minute):
		b.Fatal("sink did not finish")
	}
}

// FuzzParsePortForward: rule text arrives through the status API; parsing
// never panics, and what parses prints back to the same rule.
func FuzzParsePortForward(f *testing.F) {
	for _, s := range []string{"tcp 0.0.0.0:8022 -> 192.168.30.50:22", "udp :53->10.0.0.1:53", "tcp [::]:1 -> 1.2.3.4:65535", "tcp a -> b", "->", "udp [fe80::1%eth0]:1 -> 1.1.1.1:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pf, err := ParsePortForward(s)
		if err != nil {
			return
		}
		again, err := ParsePortForward(pf.String())
		if err != nil || again != pf {
			t.Fatalf("%q parsed to %v, which parses to %v, %v", s, pf, again, err)
		}
		if err := pf.validate(); err != nil {
			t.Fatalf("%q parsed to an invalid rule %v: %v", s, pf, err)
		}
	})
}
