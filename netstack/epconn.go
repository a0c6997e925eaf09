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

// epConn is what tcpConn and udpConn share: the endpoint, deadlines,
// addresses and the readiness API (WaitReadable, Readable, OnReadable) that
// lets an idle reader hold neither a buffer nor a goroutine.
type epConn struct {
	ep       tcpip.Endpoint
	wq       *waiter.Queue
	network  string           // "tcp" or "udp": address types and errors
	readable waiter.EventMask // what Readable checks

	rmu sync.Mutex // serializes Read
	rdl deadline

	wmu sync.Mutex  // serializes Write: pl is shared
	pl  sliceReader // guarded by wmu
	wdl deadline

	onReadable func()       // OnReadable's callback; set before entry is registered
	entry      waiter.Entry // OnReadable's registration (c is its listener)
}

// read reads into b, waiting for data until the read deadline; io.EOF
// once the peer closed its side (TCP FIN) or the endpoint was shut down.
func (c *epConn) read(b []byte) (int, error) {
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
		return 0, io.EOF
	default:
		return 0, c.opError("read", errors.New(err.String()))
	}
	return res.Count, nil
}

// Close closes the endpoint (TCP: a FIN, or RST if unread data is left); a
// waiting Read or WaitReadable returns.
func (c *epConn) Close() error {
	c.ep.Close()
	return nil
}

func (c *epConn) addr(a tcpip.FullAddress, err tcpip.Error) net.Addr {
	if err != nil {
		return nil
	}
	if c.network == "udp" {
		return &net.UDPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
	}
	return &net.TCPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}

func (c *epConn) LocalAddr() net.Addr  { return c.addr(c.ep.GetLocalAddress()) }
func (c *epConn) RemoteAddr() net.Addr { return c.addr(c.ep.GetRemoteAddress()) }

func (c *epConn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

func (c *epConn) SetReadDeadline(t time.Time) error {
	c.rdl.set(t)
	return nil
}

func (c *epConn) SetWriteDeadline(t time.Time) error {
	c.wdl.set(t)
	return nil
}

func (c *epConn) opError(op string, err error) *net.OpError {
	return &net.OpError{Op: op, Net: c.network, Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// WaitReadable blocks until a Read would not block: data (a datagram) is
// queued, the peer has closed its side, or the connection is closed or
// failed. It holds no buffer while it waits. It does not observe the read
// deadline; Close ends the wait.
func (c *epConn) WaitReadable() {
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
func (c *epConn) Readable() bool { return c.ep.Readiness(c.readable) != 0 }

// OnReadable registers fn to be called whenever the connection may have
// become readable: data, the peer's FIN, close, an error. Calls can be
// spurious and come often (once per arriving segment or datagram); fn runs
// on gVisor's packet path, must not block and must not call stop. stop
// unregisters fn; once it returns, fn is not called again. A conn has one
// such registration at a time.
func (c *epConn) OnReadable(fn func()) (stop func()) {
	c.onReadable = fn
	c.entry.Init(c, waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr)
	c.wq.EventRegister(&c.entry)
	return c.stopReadable
}

func (c *epConn) stopReadable() { c.wq.EventUnregister(&c.entry) }

// NotifyEvent is the waiter.EventListener of OnReadable's registration.
func (c *epConn) NotifyEvent(waiter.EventMask) { c.onReadable() }
