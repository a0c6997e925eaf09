package netstack_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/acrouter/acrouter/netstack"
)

// acceptOne returns the client's end and the router's accepted end of one
// TCP connection.
func acceptOne(t *testing.T, e *env) (client net.Conn, server netstack.TCPConn) {
	t.Helper()
	accepted := make(chan netstack.TCPConn, 1)
	e.st.SetTCPHandler(func(r *netstack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			close(accepted)
			return
		}
		accepted <- c
	})
	client, err := e.host.DialTCP(ctxT(t), foreignTCP)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, ok := <-accepted
	if !ok {
		t.Fatal("no connection accepted")
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// TestTCPConnWriteKeepsNoBuffer checks that an accepted conn does not keep
// the slice last passed to Write reachable (gVisor's endpoint keeps the
// payload reader of its last write; with gonet's Write that pins the
// caller's buffer for the life of the connection).
func TestTCPConnWriteKeepsNoBuffer(t *testing.T) {
	e := newEnv(t)
	client, server := acceptOne(t, e)
	freed := make(chan struct{})
	const size = 64 << 10
	func() {
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = byte(i)
		}
		runtime.AddCleanup(&buf[0], func(ch chan struct{}) { close(ch) }, freed)
		if _, err := server.Write(buf); err != nil {
			t.Fatal(err)
		}
	}()
	got := make([]byte, size)
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != byte(i) {
			t.Fatalf("byte %d = %d", i, got[i])
		}
	}
	// The data is delivered; once acknowledged the stack drops its copy and
	// nothing may refer to the caller's buffer. Bounded: 200 GC cycles.
	for i := 0; ; i++ {
		runtime.GC()
		select {
		case <-freed:
			return
		case <-time.After(10 * time.Millisecond):
		}
		if i == 200 {
			t.Fatal("the buffer passed to Write is still reachable while the connection is open")
		}
	}
}

type readWaiter interface{ WaitReadable() }

func TestTCPConnWaitReadable(t *testing.T) {
	e := newEnv(t)
	client, server := acceptOne(t, e)
	rw, ok := server.(readWaiter)
	if !ok {
		t.Fatalf("%T has no WaitReadable", server)
	}
	wait := func() <-chan struct{} {
		done := make(chan struct{})
		go func() { rw.WaitReadable(); close(done) }()
		return done
	}
	await := func(done <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-done:
		case <-ctxT(t).Done():
			t.Fatalf("WaitReadable did not return after %s", what)
		}
	}

	// data
	done := wait()
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	await(done, "data")
	buf := make([]byte, 16)
	if err := server.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := server.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("Read after WaitReadable = %q, %v", buf[:n], err)
	}
	// the peer's FIN
	done = wait()
	if err := client.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	await(done, "FIN")
	if n, err := server.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("Read after FIN = %d, %v; want EOF", n, err)
	}
	// readable stays readable
	await(wait(), "FIN (again)")
}

func TestTCPConnWaitReadableEndsOnClose(t *testing.T) {
	e := newEnv(t)
	_, server := acceptOne(t, e)
	rw := server.(readWaiter)
	done := make(chan struct{})
	go func() { rw.WaitReadable(); close(done) }()
	server.Close()
	select {
	case <-done:
	case <-ctxT(t).Done():
		t.Fatal("WaitReadable did not return after Close")
	}
}

// TestTCPConnWriteDeadline: a Write the peer does not drain ends at its
// deadline, and moving the deadline to the past ends a blocked Write.
func TestTCPConnWriteDeadline(t *testing.T) {
	e := newEnv(t)
	_, server := acceptOne(t, e) // the client never reads
	big := make([]byte, 32<<20)
	if err := server.SetWriteDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	n, err := server.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n >= len(big) {
		t.Fatalf("Write past the deadline = %d, %v; want a short write and os.ErrDeadlineExceeded", n, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error %v is not a timeout net.Error", err)
	}
	// An expired deadline fails at once; clearing it allows writes again.
	if _, err := server.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write with an expired deadline = %v", err)
	}
	if err := server.SetDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		_, err := server.Write(big) // blocks: the window is full
		res <- err
	}()
	if err := server.SetWriteDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked Write ended with %v, want os.ErrDeadlineExceeded", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("moving the deadline to the past did not end a blocked Write")
	}
}

// TestTCPConnWriteAfterClose: writes to a closed conn fail.
func TestTCPConnWriteAfterClose(t *testing.T) {
	e := newEnv(t)
	_, server := acceptOne(t, e)
	server.Close()
	if _, err := server.Write(bytes.Repeat([]byte("x"), 100)); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

// TestTCPConnConformance runs x/net's net.Conn conformance suite (deadlines,
// concurrent use, close semantics) on an accepted conn against the client
// end, both ways round.
func TestTCPConnConformance(t *testing.T) {
	for _, name := range []string{"accepted-first", "client-first"} {
		t.Run(name, func(t *testing.T) {
			nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
				e := newEnv(t)
				client, server := acceptOne(t, e)
				stop = func() { client.Close(); server.Close() }
				if name == "client-first" {
					return client, server, stop, nil
				}
				return server, client, stop, nil
			})
		})
	}
}

// TestListenAndDialConnsAreTCPConns: connections from ListenTCP's Accept
// and from DialTCP are netstack's own conn (readiness without a buffer, no
// buffer kept by Write), and Close ends a waiting Accept with
// net.ErrClosed.
func TestListenAndDialConnsAreTCPConns(t *testing.T) {
	e := newEnv(t)
	ln, err := e.st.ListenTCP(8080)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := e.host.DialTCP(ctxT(t), netip.AddrPortFrom(routerIP, 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, ok := <-accepted
	if !ok {
		t.Fatal("nothing accepted")
	}
	defer c.Close()
	if _, ok := c.(readWaiter); !ok {
		t.Errorf("ListenTCP's Accept returned %T, want a conn with WaitReadable", c)
	}
	if _, ok := c.(netstack.TCPConn); !ok {
		t.Errorf("ListenTCP's Accept returned %T, not a TCPConn", c)
	}
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	c.(readWaiter).WaitReadable()
	buf := make([]byte, 8)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if a, ok := ln.Addr().(*net.TCPAddr); !ok || a.Port != 8080 || a.IP.String() != routerIP.String() {
		t.Errorf("Addr() = %v", ln.Addr())
	}

	// A waiting Accept ends with net.ErrClosed.
	res := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		res <- err
	}()
	ln.Close()
	select {
	case err := <-res:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("Close did not end a waiting Accept")
	}

	// DialTCP's conn.
	hl, err := e.host.ListenTCP(2223)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	go func() {
		if c, err := hl.Accept(); err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	d, err := e.st.DialTCP(ctxT(t), netip.AddrPortFrom(hostPfx.Addr(), 2223))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.(readWaiter); !ok {
		t.Errorf("DialTCP returned %T, want a conn with WaitReadable", d)
	}
	if got, err := io.ReadAll(d); err != nil || string(got) != "hi" {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
}
