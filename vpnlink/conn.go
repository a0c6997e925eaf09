package vpnlink

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/acrouter/acrouter/vpnlink/internal/proto"
)

// ErrMalformed: the server sent data-phase bytes outside the record format
// or its limits (the connection is dropped and re-established).
var ErrMalformed = proto.ErrBadRecord

// link is one live data-phase connection with its reader and writer
// goroutines. It is owned by the Client's manager goroutine.
type link struct {
	c       *Client
	w       *wire
	timeout time.Duration
	resumed bool      // established by additional_connect
	started time.Time // when the data phase began
	gotData atomic.Bool

	done     chan struct{}
	once     sync.Once
	err      error
	wg       sync.WaitGroup
	lastRecv atomic.Int64 // unix ns of the last received record
}

func (c *Client) startLink(w *wire, timeout time.Duration, resumed bool) *link {
	l := &link{c: c, w: w, timeout: timeout, resumed: resumed, started: time.Now(), done: make(chan struct{})}
	l.lastRecv.Store(time.Now().UnixNano())
	w.raw.timeout.Store(int64(timeout))
	c.up.Store(true)
	l.wg.Add(2)
	go l.readLoop()
	go l.writeLoop()
	return l
}

// fail ends the link with err (first error wins).
func (l *link) fail(err error) {
	l.once.Do(func() {
		l.c.up.Store(false)
		l.err = err
		close(l.done)
		l.w.close()
	})
}

func (l *link) readErr(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w (%v)", ErrLinkDead, l.timeout)
	case err == io.EOF:
		return fmt.Errorf("server %s closed the connection", l.c.cfg.Server)
	case errors.Is(err, proto.ErrBadRecord):
		return fmt.Errorf("server %s sent malformed data, dropping the connection: %w", l.c.cfg.Server, err)
	}
	return fmt.Errorf("connection to %s lost: %w", l.c.cfg.Server, err)
}

// readLoop parses records into pooled batches and hands them to
// ReadFrame(s) through the bounded receive queue. A batch goes on when it is
// full or when the next record is not buffered yet (see rxBatch). When the
// queue is full the reader waits for the consumer (backpressure: the
// server's TCP send window closes) instead of dropping frames; the wait ends
// with the link. Not reading meanwhile cannot trip the dead-link timeout,
// which applies to each socket read (idleConn) and restarts with it.
func (l *link) readLoop() {
	defer l.wg.Done()
	c := l.c
	rr := proto.NewRecordReader(l.w.br)
	b := c.getBatch()
	defer func() {
		if b != nil {
			c.putBatch(b)
		}
	}()
	for {
		if b.n > 0 && (b.full() || !rr.Ready()) {
			if !l.deliver(b) {
				b = nil // deliver recycled it
				return
			}
			b = c.getBatch()
		}
		kind, n, err := rr.Next(b.tail())
		if err != nil {
			l.fail(l.readErr(err))
			return
		}
		if !l.gotData.Load() {
			l.gotData.Store(true)
		}
		switch kind {
		case proto.KindFrame:
			l.lastRecv.Store(time.Now().UnixNano())
			b.add(n)
			c.stats.framesIn.Add(1)
			c.stats.bytesIn.Add(uint64(n))
		case proto.KindKeepAlive:
			l.lastRecv.Store(time.Now().UnixNano())
			c.stats.keepAlivesIn.Add(1)
		case proto.KindOversize:
			l.lastRecv.Store(time.Now().UnixNano())
			c.stats.dropOversizeIn.Add(1)
		}
	}
}

// deliver queues b for ReadFrame(s), waiting while the queue is full. It
// reports false (and recycles b) if the link ended meanwhile.
func (l *link) deliver(b *rxBatch) bool {
	c := l.c
	select {
	case c.in <- b:
		return true
	default:
	}
	c.stats.recvStalls.Add(1)
	select {
	case c.in <- b:
		return true
	case <-l.done:
		c.putBatch(b)
		return false
	}
}

// nextKeepAlive returns a random span in [timeout/5, timeout/2)
// (GenNextKeepAliveSpan in src/Cedar/Connection.c).
func (l *link) nextKeepAlive() time.Duration {
	lo, hi := l.timeout/5, l.timeout/2
	return lo + time.Duration(mrand.Int64N(int64(hi-lo)+1))
}

// writeLoop sends everything queued as one batch per TLS write and a
// keep-alive when nothing was sent for a random 1/5–1/2 of the timeout.
func (l *link) writeLoop() {
	defer l.wg.Done()
	ka := make([]byte, 8, 8+proto.MaxKeepAliveSize)
	pad := make([]byte, proto.MaxKeepAliveSize)
	rand.Read(pad)
	// The first keep-alive goes out at once, like the server's.
	timer := time.NewTimer(0)
	defer timer.Stop()
	if !l.flush() {
		return
	}
	for {
		select {
		case <-l.done:
			return
		case <-l.c.kick:
			if !l.flush() {
				return
			}
			timer.Reset(l.nextKeepAlive())
		case <-timer.C:
			ka = proto.AppendKeepAlive(ka[:0], pad[:mrand.IntN(proto.MaxKeepAliveSize)])
			if !l.write(ka) {
				return
			}
			l.c.stats.keepAlivesOut.Add(1)
			l.c.shrinkIdle(time.Now())
			timer.Reset(l.nextKeepAlive())
		}
	}
}

func (l *link) write(b []byte) bool {
	l.w.raw.SetWriteDeadline(time.Now().Add(l.timeout))
	// One write call for the whole batch rather than one per TLS record.
	l.w.raw.beginBatch()
	_, err := l.w.tc.Write(b)
	if ferr := l.w.raw.endBatch(); err == nil {
		err = ferr
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: sending blocked for %v", ErrLinkDead, l.timeout)
		} else {
			err = fmt.Errorf("send to %s failed: %w", l.c.cfg.Server, err)
		}
		l.fail(err)
		return false
	}
	return true
}

// flush writes the queued batch, if any.
func (l *link) flush() bool {
	c := l.c
	c.qmu.Lock()
	n := c.qn
	if n == 0 {
		c.qmu.Unlock()
		return true
	}
	batch := c.qbuf
	c.qbuf, c.qspare = c.qspare[:4], nil
	c.qn = 0
	c.qmu.Unlock()
	select { // a WriteFrames waiting for room may go on
	case c.room <- struct{}{}:
	default:
	}

	proto.PutBatchCount(batch, n)
	ok := l.write(batch)
	if ok {
		c.stats.framesOut.Add(uint64(n))
		c.stats.bytesOut.Add(uint64(len(batch) - 4 - 4*n))
		c.stats.batchesOut.Add(1)
	} else {
		c.stats.lostInFlight.Add(uint64(n))
	}
	c.qmu.Lock()
	if !c.qgrown.keep(time.Now(), len(batch), cap(batch)) {
		batch = make([]byte, 4, initialBatch)
	}
	c.qspare = batch[:4]
	c.qmu.Unlock()
	return ok
}
