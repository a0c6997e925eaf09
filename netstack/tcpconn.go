package netstack

import (
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// tcpConn is the TCPConn handed out by TCPRequest.Accept: a net.Conn over
// a gVisor TCP endpoint (like gonet's TCPConn) that keeps no buffer of its
// caller's and costs little while idle, plus WaitReadable, Readable and
// OnReadable, so that an idle reader need hold neither a buffer nor a
// goroutine.
//
// gVisor's tcp.Endpoint keeps the io.LimitedReader it copies a write's
// payload through (Endpoint.limRdr, reused to save an allocation) and never
// clears its R field; gonet's Write passes a bytes.Reader over the caller's
// slice, so every endpoint pins the last buffer written to it for as long as
// it lives (with the router's pooled copy buffers, 32 KiB per idle flow).
// Write here hands gVisor a per-connection payloader whose slice it empties
// once ep.Write returns. Deadline channels are made only when a deadline is
// set or a call has to wait.
type tcpConn struct {
	epConn
}

func newTCPConn(wq *waiter.Queue, ep tcpip.Endpoint) *tcpConn {
	return &tcpConn{epConn{ep: ep, wq: wq, network: "tcp", readable: waiter.ReadableEvents}}
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

// Read reads data; it returns io.EOF after the peer's FIN.
func (c *tcpConn) Read(b []byte) (int, error) {
	n, err := c.read(b)
	if n > 0 {
		c.ep.ModerateRecvBuf(n)
	}
	return n, err
}

// Write writes all of b unless the connection fails or the write deadline
// passes; it waits for send-buffer space.
func (c *tcpConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wdl.expired() {
		return 0, c.opError("write", os.ErrDeadlineExceeded)
	}
	var (
		n       int
		entry   waiter.Entry
		ready   <-chan struct{}
		expired <-chan struct{}
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
				expired = c.wdl.channel()
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

// CloseRead shuts down the read side; writes continue to work.
func (c *tcpConn) CloseRead() error {
	if err := c.ep.Shutdown(tcpip.ShutdownRead); err != nil {
		return c.opError("close", errors.New(err.String()))
	}
	return nil
}

// CloseWrite sends FIN; reads continue to work.
func (c *tcpConn) CloseWrite() error {
	if err := c.ep.Shutdown(tcpip.ShutdownWrite); err != nil {
		return c.opError("close", errors.New(err.String()))
	}
	return nil
}

// deadline is a deadline as a channel that is closed while the deadline
// has passed; a call waiting on it sees later changes (as net.Conn
// requires: a deadline set in the past unblocks a waiting Read or Write).
// The channel is made only when someone waits or a deadline is set.
type deadline struct {
	mu     sync.Mutex
	ch     chan struct{} // made on first use
	closed bool          // ch is closed
	gen    uint64        // counts set calls; a stale timer does nothing
	timer  *time.Timer
}

// expired reports whether the deadline has passed.
func (d *deadline) expired() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// channel returns the channel closed when the deadline passes.
func (d *deadline) channel() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

func (d *deadline) set(t time.Time) {
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

func (d *deadline) expireLocked() {
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	if !d.closed {
		close(d.ch)
		d.closed = true
	}
}
