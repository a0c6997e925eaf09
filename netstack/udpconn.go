package netstack

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpConn is the net.Conn handed out by UDPRequest.Accept: a connected
// gVisor UDP endpoint (like gonet's UDPConn) plus WaitReadable, Readable
// and OnReadable (as tcpConn), so that a flow's reader need hold neither a
// datagram buffer nor a goroutine while no datagram is queued.
type udpConn struct {
	ep tcpip.Endpoint
	wq *waiter.Queue

	rmu sync.Mutex // serializes Read
	rdl deadline

	wmu sync.Mutex  // serializes Write: pl is shared
	pl  sliceReader // guarded by wmu
	wdl deadline

	onReadable func()       // OnReadable's callback; set before entry is registered
	entry      waiter.Entry // OnReadable's registration (c is its listener)
}

func newUDPConn(wq *waiter.Queue, ep tcpip.Endpoint) *udpConn {
	return &udpConn{ep: ep, wq: wq}
}

// Read reads one datagram into b; a datagram longer than b is truncated
// (the rest is lost, as with a UDP socket).
func (c *udpConn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rdl.expired() {
		return 0, c.opError("read", os.ErrDeadlineExceeded)
	}
	w := tcpip.SliceWriter(b)
	res, err := c.ep.Read(&w, tcpip.ReadOptions{})
	if _, ok := err.(*tcpip.ErrWouldBlock); ok {
		entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents)
		c.wq.EventRegister(&entry)
		defer c.wq.EventUnregister(&entry)
		expired := c.rdl.channel()
		for {
			res, err = c.ep.Read(&w, tcpip.ReadOptions{})
			if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
				break
			}
			select {
			case <-expired:
				return 0, c.opError("read", os.ErrDeadlineExceeded)
			case <-ready:
			}
		}
	}
	switch err.(type) {
	case nil:
	case *tcpip.ErrClosedForReceive:
		return 0, io.EOF // as gonet
	default:
		return 0, c.opError("read", errors.New(err.String()))
	}
	return res.Count, nil
}

// Write sends b as one datagram to the flow's source.
func (c *udpConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wdl.expired() {
		return 0, c.opError("write", os.ErrDeadlineExceeded)
	}
	var (
		entry   waiter.Entry
		ready   <-chan struct{}
		expired <-chan struct{}
	)
	for {
		c.pl.b = b
		n, err := c.ep.Write(&c.pl, tcpip.WriteOptions{})
		c.pl.b = nil
		switch err.(type) {
		case nil:
			return int(n), nil
		case *tcpip.ErrWouldBlock:
			if ready == nil {
				entry, ready = waiter.NewChannelEntry(waiter.WritableEvents)
				c.wq.EventRegister(&entry)
				defer c.wq.EventUnregister(&entry)
				expired = c.wdl.channel()
				continue
			}
			select {
			case <-expired:
				return 0, c.opError("write", os.ErrDeadlineExceeded)
			case <-ready:
			}
		case *tcpip.ErrClosedForSend:
			return 0, c.opError("write", net.ErrClosed)
		default:
			return 0, c.opError("write", errors.New(err.String()))
		}
	}
}

// Close closes the endpoint; a waiting Read or WaitReadable returns.
func (c *udpConn) Close() error {
	c.ep.Close()
	return nil
}

func (c *udpConn) LocalAddr() net.Addr {
	a, err := c.ep.GetLocalAddress()
	if err != nil {
		return nil
	}
	return &net.UDPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

func (c *udpConn) RemoteAddr() net.Addr {
	a, err := c.ep.GetRemoteAddress()
	if err != nil {
		return nil
	}
	return &net.UDPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

func (c *udpConn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

func (c *udpConn) SetReadDeadline(t time.Time) error {
	c.rdl.set(t)
	return nil
}

func (c *udpConn) SetWriteDeadline(t time.Time) error {
	c.wdl.set(t)
	return nil
}

func (c *udpConn) opError(op string, err error) *net.OpError {
	return &net.OpError{Op: op, Net: "udp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// WaitReadable blocks until a Read would not block: a datagram is queued,
// or the endpoint is closed or failed. It holds no buffer while it waits.
// It does not observe the read deadline; Close ends the wait.
func (c *udpConn) WaitReadable() {
	if c.Readable() {
		return
	}
	entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	c.wq.EventRegister(&entry)
	defer c.wq.EventUnregister(&entry)
	if c.Readable() {
		return
	}
	<-ready
}

// Readable reports whether a Read would not block (as WaitReadable would
// return at once).
func (c *udpConn) Readable() bool {
	return c.ep.Readiness(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr) != 0
}

// OnReadable registers fn to be called whenever the conn may have become
// readable (a datagram arrived, close, an error). Calls can be spurious;
// fn runs on gVisor's packet path, must not block and must not call stop.
// stop unregisters fn; once it returns, fn is not called again. A conn
// has one such registration at a time.
func (c *udpConn) OnReadable(fn func()) (stop func()) {
	c.onReadable = fn
	c.entry.Init(c, waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr)
	c.wq.EventRegister(&c.entry)
	return c.stopReadable
}

func (c *udpConn) stopReadable() { c.wq.EventUnregister(&c.entry) }

// NotifyEvent is the waiter.EventListener of OnReadable's registration.
func (c *udpConn) NotifyEvent(waiter.EventMask) { c.onReadable() }
