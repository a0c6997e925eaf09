package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
)

// TestDialTCPToClient: the router dials a service on the hub client, data
// flows both ways and half-close works in both directions.
func TestDialTCPToClient(t *testing.T) {
	e := newEnv(t)
	l, err := e.host.ListenTCP(2222)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type accepted struct {
		remote string
		got    []byte
		err    error
	}
	done := make(chan accepted, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- accepted{err: err}
			return
		}
		defer c.Close()
		// Taken now: once both sides have closed, gonet's RemoteAddr
		// returns a nil interface.
		remote := c.RemoteAddr().String()
		got, err := io.ReadAll(c) // until the router's FIN
		if err == nil {
			_, err = c.Write([]byte("reply after your FIN"))
		}
		if err == nil {
			err = c.(netstack.TCPConn).CloseWrite()
		}
		done <- accepted{remote: remote, got: got, err: err}
	}()
	dst := netip.AddrPortFrom(hostPfx.Addr(), 2222)
	c, err := e.st.DialTCP(ctxT(t), dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.RemoteAddr().String(); got != dst.String() {
		t.Errorf("RemoteAddr %s, want %s", got, dst)
	}
	msg := bytes.Repeat([]byte("forward "), 50000) // 400 kB
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	if string(reply) != "reply after your FIN" {
		t.Errorf("reply %q", reply)
	}
	a := <-done
	if a.err != nil {
		t.Fatal(a.err)
	}
	if !bytes.Equal(a.got, msg) {
		t.Errorf("server got %d bytes, want %d", len(a.got), len(msg))
	}
	if ap, err := netip.ParseAddrPort(a.remote); err != nil || ap.Addr() != routerIP {
		t.Errorf("server saw the connection from %s, want the router address %v", a.remote, routerIP)
	}
}

func TestDialTCPRefused(t *testing.T) {
	e := newEnv(t)
	_, err := e.st.DialTCP(ctxT(t), netip.AddrPortFrom(hostPfx.Addr(), 2223))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v, want ECONNREFUSED", err)
	}
}

// TestDialTCPNoSuchHost: an address nobody answers ARP for fails with
// EHOSTUNREACH (after gVisor's ARP retries), or with ctx's error first.
func TestDialTCPNoSuchHost(t *testing.T) {
	e := newEnv(t)
	_, err := e.st.DialTCP(ctxT(t), netip.MustParseAddrPort("192.168.30.99:22"))
	if !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Fatalf("dial to an absent host: %v, want EHOSTUNREACH", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.st.DialTCP(ctx, netip.MustParseAddrPort("192.168.30.98:22")); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial with a canceled context: %v", err)
	}
}

func TestDialBadDestination(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ dst, want string }{
		{"192.168.30.1:22", "router's own address"},
		{"10.0.0.5:22", "not on the hub subnet"},
		{"192.168.30.255:22", "broadcast"},
		{"192.168.30.0:22", "network"},
		{"192.168.30.10:0", "port 0"},
		{"[fd00::1]:22", "not an IPv4 address"},
	} {
		dst := netip.MustParseAddrPort(tc.dst)
		if _, err := e.st.DialTCP(ctxT(t), dst); err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("DialTCP %s: %v, want an error containing %q", tc.dst, err, tc.want)
		}
		if _, err := e.st.DialUDP(dst); err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("DialUDP %s: %v, want an error containing %q", tc.dst, err, tc.want)
		}
	}
}

func contains(s, sub string) bool { return bytes.Contains([]byte(s), []byte(sub)) }

func TestDialUDPToClient(t *testing.T) {
	e := newEnv(t)
	pc, err := e.host.ListenUDP(netip.AddrPortFrom(hostPfx.Addr(), 5353))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := e.st.DialUDP(netip.AddrPortFrom(hostPfx.Addr(), 5353))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "ping" || from.(*net.UDPAddr).AddrPort().Addr() != routerIP {
		t.Fatalf("client got %q from %v", buf[:n], from)
	}
	if _, err := pc.WriteTo([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("router read %q, %v", buf[:n], err)
	}
}

func TestDialAfterClose(t *testing.T) {
	e := newEnv(t)
	e.st.Close()
	if _, err := e.st.DialTCP(ctxT(t), netip.AddrPortFrom(hostPfx.Addr(), 22)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("DialTCP after Close: %v", err)
	}
	if _, err := e.st.DialUDP(netip.AddrPortFrom(hostPfx.Addr(), 22)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("DialUDP after Close: %v", err)
	}
}

// TestProxyARP: with AddProxyARP, a client reaches an extra on-link address
// through the router (the TCP handler sees it as the destination); without
// it, nobody answers ARP for the address.
func TestProxyARP(t *testing.T) {
	e := newEnv(t)
	reqs := echoTCP(t, e.st)
	alias := netip.MustParseAddr("192.168.30.254")
	if err := e.st.AddProxyARP(alias); err != nil {
		t.Fatal(err)
	}
	if err := e.st.AddProxyARP(alias); err != nil { // twice is fine
		t.Fatal(err)
	}
	c, err := e.host.DialTCP(ctxT(t), netip.AddrPortFrom(alias, 8080))
	if err != nil {
		t.Fatalf("dial the proxy-ARP address: %v", err)
	}
	defer c.Close()
	r := <-reqs
	if r.Dst != netip.AddrPortFrom(alias, 8080) {
		t.Errorf("handler saw Dst %v", r.Dst)
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'x' {
		t.Fatalf("echo through the alias: %q %v", b, err)
	}

	// Removed (and never resolved by the client): ARP is not answered.
	other := netip.MustParseAddr("192.168.30.253")
	if err := e.st.AddProxyARP(other); err != nil {
		t.Fatal(err)
	}
	e.st.RemoveProxyARP(other)
	before := e.st.Stats().DropARPOther
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if c2, err := e.host.DialTCP(ctx, netip.AddrPortFrom(other, 8080)); err == nil {
		c2.Close()
		t.Fatal("dial to a removed proxy-ARP address succeeded")
	}
	if e.st.Stats().DropARPOther == before {
		t.Error("ARP request for the removed address was not counted as DropARPOther")
	}

	for _, bad := range []string{"192.168.30.1", "10.1.1.1", "192.168.30.255", "192.168.30.0", "fd00::1"} {
		if err := e.st.AddProxyARP(netip.MustParseAddr(bad)); err == nil {
			t.Errorf("AddProxyARP(%s) succeeded", bad)
		}
	}
}
