package netstack_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
)

// udpReadWaiter is what the router uses of an accepted UDP conn.
type udpReadWaiter interface {
	net.Conn
	WaitReadable()
	Readable() bool
	OnReadable(fn func()) (stop func())
}

// acceptUDP sends first from the client and returns the client's socket
// and the router's accepted conn of that flow (the first datagram is still
// queued on it).
func acceptUDP(t *testing.T, e *env, first string) (client net.Conn, server udpReadWaiter) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	e.st.SetUDPHandler(func(r *netstack.UDPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			close(accepted)
			return
		}
		accepted <- c
	})
	client, err := e.host.DialUDP(netip.AddrPortFrom(foreign, 5000))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if _, err := client.Write([]byte(first)); err != nil {
		t.Fatal(err)
	}
	var c net.Conn
	select {
	case c = <-accepted:
	case <-ctxT(t).Done():
		t.Fatal("no UDP flow accepted")
	}
	if c == nil {
		t.Fatal("no UDP flow accepted")
	}
	t.Cleanup(func() { c.Close() })
	rw, ok := c.(udpReadWaiter)
	if !ok {
		t.Fatalf("%T cannot report readability", c)
	}
	return client, rw
}

func TestUDPConnReadiness(t *testing.T) {
	e := newEnv(t)
	client, server := acceptUDP(t, e, "first")
	if !server.Readable() {
		t.Fatal("the first datagram is queued but Readable is false")
	}
	server.WaitReadable() // returns at once
	buf := make([]byte, 100)
	n, err := server.Read(buf)
	if err != nil || string(buf[:n]) != "first" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if server.Readable() {
		t.Fatal("Readable with nothing queued")
	}

	// WaitReadable returns once a datagram arrives.
	done := make(chan struct{})
	go func() { server.WaitReadable(); close(done) }()
	if _, err := client.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-ctxT(t).Done():
		t.Fatal("WaitReadable did not return after a datagram")
	}
	if n, err := server.Read(buf); err != nil || string(buf[:n]) != "second" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}

	// OnReadable calls back for a datagram; after stop it does not.
	called := make(chan struct{}, 16)
	stop := server.OnReadable(func() {
		select {
		case called <- struct{}{}:
		default:
		}
	})
	if _, err := client.Write([]byte("third")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-called:
	case <-ctxT(t).Done():
		t.Fatal("OnReadable's callback was not called for a datagram")
	}
	stop()
	if n, err := server.Read(buf); err != nil || string(buf[:n]) != "third" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	for len(called) > 0 {
		<-called
	}
	if _, err := client.Write([]byte("fourth")); err != nil {
		t.Fatal(err)
	}
	server.WaitReadable() // the datagram has arrived
	if len(called) != 0 {
		t.Fatal("OnReadable's callback was called after stop")
	}

	// Write sends one datagram back to the client.
	if _, err := server.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if err := client.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Read(buf); err != nil || string(buf[:n]) != "reply" {
		t.Fatalf("client Read = %q, %v", buf[:n], err)
	}
}

func TestUDPConnCloseEndsWaits(t *testing.T) {
	e := newEnv(t)
	_, server := acceptUDP(t, e, "x")
	buf := make([]byte, 10)
	if _, err := server.Read(buf); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { server.WaitReadable(); close(waited) }()
	read := make(chan error, 1)
	go func() {
		_, err := server.Read(buf)
		read <- err
	}()
	server.Close()
	select {
	case <-waited:
	case <-ctxT(t).Done():
		t.Fatal("WaitReadable did not return after Close")
	}
	select {
	case err := <-read:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("Read after Close = %v, want io.EOF", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("Read did not return after Close")
	}
	if !server.Readable() {
		t.Fatal("a closed conn is not readable (a reader would wait forever)")
	}
	if _, err := server.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

func TestUDPConnReadDeadline(t *testing.T) {
	e := newEnv(t)
	_, server := acceptUDP(t, e, "x")
	buf := make([]byte, 10)
	if _, err := server.Read(buf); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := server.Read(buf) // nothing comes
		res <- err
	}()
	if err := server.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("blocked Read ended with %v, want a timeout", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("moving the deadline to the past did not end a blocked Read")
	}
}
