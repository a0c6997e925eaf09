package netstack

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// tcpConn is the TCPConn handed out by TCPRequest.Accept: gonet's conn with
// a Write that does not leave the caller's buffer referenced, and
// WaitReadable, so that an idle reader need not hold a buffer.
//
// gVisor's tcp.Endpoint keeps the io.LimitedReader it copies a write's
// payload through (Endpoint.limRdr, reused to save an allocation) and never
// clears its R field; gonet's Write passes a bytes.Reader over the caller's
// slice, so every endpoint pins the last buffer written to it for as long as
// it lives. With pooled copy buffers that is one 32 KiB buffer per idle
// connection. Write here hands gVisor a per-connection payloader whose slice
// it empties once ep.Write returns.
type tcpConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue

	wmu sync.Mutex    // serializes Write: pl is shared
	pl  sliceReader   // guarded by wmu
	wdl writeDeadline // Write's deadline (gonet's own is not used for writes)
}

func newTCPConn(wq *waiter.Queue, ep tcpip.Endpoint) *tcpConn {
	return &tcpConn{TCPConn: gonet.NewTCPConn(wq, ep), ep: ep, wq: wq}
}

// sliceReader is a tcpip.Payloader over b.
type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func (r *sliceReader) Len() int { return len(r.b) }

// Write writes all of b unless the connection fails or the write deadline
// passes; like gonet's Write it waits for send-buffer space.
func (c *tcpConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	expired := c.wdl.channel()
	select {
	case <-expired:
		return 0, c.opError("write", os.ErrDeadlineExceeded)
	default:
	}
	var (
		n     int
		entry waiter.Entry
		ready <-chan struct{}
	)
	for n < len(b) {
		c.pl.b = b[n:]
		m, err := c.ep.Write(&c.pl, tcpip.WriteOptions{})
		c.pl.b = nil // the endpoint keeps &c.pl; it must not keep b
		n += int(m)
		switch err.(type) {
		case nil:
		case *tcpip.ErrWouldBlock:
			if ready == nil {
				// Register, then try once more before waiting: space
				// may have appeared in between.
				entry, ready = waiter.NewChannelEntry(waiter.WritableEvents)
				c.wq.EventRegister(&entry)
				defer c.wq.EventUnregister(&entry)
				continue
			}
			select {
			case <-expired:
				return n, c.opError("write", os.ErrDeadlineExceeded)
			case <-ready:
			}
		default:
			return n, c.opError("write", errors.New(err.String()))
		}
	}
	return n, nil
}

// WaitReadable blocks until a Read would not block: data is queued, the
// peer has closed its side, or the connection is closed or failed. It holds
// no buffer while it waits. It does not observe the read deadline; Close
// ends the wait.
func (c *tcpConn) WaitReadable() {
	if c.ep.Readiness(waiter.ReadableEvents) != 0 {
		return
	}
	entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr)
	c.wq.EventRegister(&entry)
	defer c.wq.EventUnregister(&entry)
	if c.ep.Readiness(waiter.ReadableEvents) != 0 {
		return
	}
	<-ready
}

func (c *tcpConn) SetWriteDeadline(t time.Time) error {
	c.wdl.set(t)
	return nil
}

func (c *tcpConn) SetDeadline(t time.Time) error {
	c.wdl.set(t)
	return c.TCPConn.SetReadDeadline(t)
}

func (c *tcpConn) opError(op string, err error) *net.OpError {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// writeDeadline is a deadline as a channel that is closed while the
// deadline has passed; a writer waiting on it sees later changes (as
// net.Conn requires: SetWriteDeadline in the past unblocks a Write).
type writeDeadline struct {
	mu     sync.Mutex
	ch     chan struct{} // made on first use
	closed bool          // ch is closed
	gen    uint64        // counts set calls; a stale timer does nothing
	timer  *time.Timer
}

// channel returns the channel closed when the deadline passes.
func (d *writeDeadline) channel() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

func (d *writeDeadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.closed {
		d.ch, d.closed = nil, false
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		d.expireLocked()
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.gen == gen {
			d.expireLocked()
		}
	})
}

func (d *writeDeadline) expireLocked() {
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	if !d.closed {
		close(d.ch)
		d.closed = true
	}
}

// Readable reports whether a Read would not block (as WaitReadable would
// return at once).
func (c *tcpConn) Readable() bool { return c.ep.Readiness(waiter.ReadableEvents) != 0 }

// OnReadable registers fn to be called whenever the connection may have
// become readable: data, the peer's FIN, close, an error. Calls can be
// spurious and come often (once per arriving segment); fn runs on gVisor's
// packet path, must not block and must not call stop. stop unregisters fn;
// once it returns, fn is not called again.
func (c *tcpConn) OnReadable(fn func()) (stop func()) {
	e := waiter.NewFunctionEntry(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr, func(waiter.EventMask) { fn() })
	c.wq.EventRegister(&e)
	return func() { c.wq.EventUnregister(&e) }
}
