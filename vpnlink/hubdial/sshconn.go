package hubdial

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// deadline is a settable deadline whose wait channel is closed once it has
// passed. One timer is reused across set calls (vpnlink sets a read deadline
// before every read), so setting allocates only after an expiry.
type deadline struct {
	mu     sync.Mutex
	t      time.Time
	timer  *time.Timer
	cancel chan struct{}
	onFire func() // called (without mu) right after the channel is closed
}

func newDeadline(onFire func()) *deadline {
	return &deadline{cancel: make(chan struct{}), onFire: onFire}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	d.t = t
	if d.timer != nil {
		d.timer.Stop()
	}
	if isClosed(d.cancel) {
		d.cancel = make(chan struct{})
	}
	if t.IsZero() {
		d.mu.Unlock()
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.cancel)
		d.mu.Unlock()
		if d.onFire != nil {
			d.onFire()
		}
		return
	}
	if d.timer == nil {
		d.timer = time.AfterFunc(dur, d.fire)
	} else {
		d.timer.Reset(dur)
	}
	d.mu.Unlock()
}

// fire runs on the timer; a stale fire (the deadline moved later or was
// cleared since) does nothing.
func (d *deadline) fire() {
	d.mu.Lock()
	if d.t.IsZero() || time.Now().Before(d.t) || isClosed(d.cancel) {
		d.mu.Unlock()
		return
	}
	close(d.cancel)
	d.mu.Unlock()
	if d.onFire != nil {
		d.onFire()
	}
}

func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func (d *deadline) stop() {
	d.mu.Lock()
	if d.timer != nil {
		d.timer.Stop()
	}
	d.mu.Unlock()
}

// chanConn is a direct-tcpip SSH channel as a net.Conn with working
// deadlines (x/crypto's own returns errors from SetDeadline; vpnlink needs
// them). A reader goroutine hands chunks of one buffer to Read, so a read
// deadline can pass without losing data. A write deadline that passes while
// a Write is blocked (no SSH window) closes the channel: bytes already
// handed to SSH cannot be taken back, so the stream cannot be used after it
// anyway.
type chanConn struct {
	ch           ssh.Channel
	laddr, raddr net.Addr

	data    chan []byte   // chunks from readLoop; closed after rerr is set
	ack     chan struct{} // cap 1: the chunk was consumed
	rerr    error
	rmu     sync.Mutex
	pending []byte
	rdl     *deadline

	wmu     sync.Mutex
	writing atomic.Bool
	killed  atomic.Bool
	wdl     *deadline

	closeOnce sync.Once
	closed    chan struct{}
}

const chanReadBuf = 32 << 10 // SSH's usual maximum packet payload

func newChanConn(ch ssh.Channel, laddr, raddr net.Addr) *chanConn {
	c := &chanConn{
		ch: ch, laddr: laddr, raddr: raddr,
		data:   make(chan []byte),
		ack:    make(chan struct{}, 1),
		closed: make(chan struct{}),
		rdl:    newDeadline(nil),
	}
	c.wdl = newDeadline(c.writeExpired)
	return c
}

// readLoop runs on its own goroutine until the channel ends or c is closed.
func (c *chanConn) readLoop() {
	buf := make([]byte, chanReadBuf)
	for {
		n, err := c.ch.Read(buf)
		if n > 0 {
			select {
			case c.data <- buf[:n]:
			case <-c.closed:
				return
			}
			select {
			case <-c.ack:
			case <-c.closed:
				return
			}
		}
		if err != nil {
			c.rerr = err
			close(c.data)
			return
		}
	}
}

func (c *chanConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.pending) > 0 {
		return c.take(p), nil
	}
	if isClosed(c.closed) {
		return 0, net.ErrClosed
	}
	wait := c.rdl.wait()
	if isClosed(wait) {
		return 0, os.ErrDeadlineExceeded
	}
	select {
	case chunk, ok := <-c.data:
		if !ok {
			return 0, c.rerr
		}
		c.pending = chunk
		return c.take(p), nil
	case <-wait:
		return 0, os.ErrDeadlineExceeded
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *chanConn) take(p []byte) int {
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	if len(c.pending) == 0 {
		c.pending = nil
		c.ack <- struct{}{}
	}
	return n
}

func (c *chanConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if isClosed(c.closed) {
		return 0, net.ErrClosed
	}
	c.writing.Store(true)
	// after the store: a deadline firing from now on sees writing and kills
	if isClosed(c.wdl.wait()) || c.killed.Load() {
		c.writing.Store(false)
		return 0, os.ErrDeadlineExceeded
	}
	n, err := c.ch.Write(p)
	c.writing.Store(false)
	if c.killed.Load() {
		return n, os.ErrDeadlineExceeded
	}
	return n, err
}

func (c *chanConn) writeExpired() {
	if c.writing.Load() {
		c.killed.Store(true)
		c.ch.Close()
	}
}

func (c *chanConn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		close(c.closed)
		c.rdl.stop()
		c.wdl.stop()
		err = c.ch.Close()
		if errors.Is(err, io.EOF) { // already closed by the server
			err = nil
		}
	})
	return err
}

// CloseWrite sends EOF to the hub (half close).
func (c *chanConn) CloseWrite() error { return c.ch.CloseWrite() }

func (c *chanConn) LocalAddr() net.Addr  { return c.laddr }
func (c *chanConn) RemoteAddr() net.Addr { return c.raddr }

func (c *chanConn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

func (c *chanConn) SetReadDeadline(t time.Time) error  { c.rdl.set(t); return nil }
func (c *chanConn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// hubAddr is the hub's address as the SSH server was asked to reach it.
type hubAddr string

func (a hubAddr) Network() string { return "tcp" }
func (a hubAddr) String() string  { return string(a) }
