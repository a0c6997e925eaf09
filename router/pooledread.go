package router

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// pooledReader reads a host socket without holding a buffer while it waits:
// it parks on the runtime poller until the socket is readable and only then
// takes a buffer from the pool for the read. An idle flow therefore costs
// no copy buffer on its host side. Its state lives in the struct and the
// callbacks are bound once, so a read allocates nothing.
type pooledReader struct {
	rc     syscall.RawConn
	pool   *sync.Pool // of *[]byte
	stream bool       // TCP: a 0-byte read is EOF (for UDP it is an empty datagram)

	try     func(fd uintptr) bool // p.tryRead
	once    func(fd uintptr) bool // p.tryOnce
	release func()                // p.put
	bp      *[]byte               // the buffer of the chunk returned last, until release
	n       int
	rerr    error
}

// newPooledReader returns nil if c does not expose its file descriptor
// (for example a test's in-memory conn); callers then fall back to Read.
func newPooledReader(c net.Conn, pool *sync.Pool, stream bool) *pooledReader {
	sc, ok := c.(syscall.Conn)
	if !ok || !pooledReadSupported {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	p := &pooledReader{rc: rc, pool: pool, stream: stream}
	p.try, p.once, p.release = p.tryRead, p.tryOnce, p.put
	return p
}

// tryRead is the RawConn.Read callback: one read(2) into a pool buffer,
// which it gives back at once if the socket had nothing.
func (p *pooledReader) tryRead(fd uintptr) bool {
	p.bp = p.pool.Get().(*[]byte)
	p.n, p.rerr = rawRead(fd, *p.bp)
	if p.rerr == syscall.EAGAIN || p.rerr == syscall.EINTR {
		p.put()
		return false // wait for readability, holding nothing
	}
	return true
}

func (p *pooledReader) put() {
	if p.bp != nil {
		p.pool.Put(p.bp)
		p.bp = nil
	}
}

// read returns the next chunk, held in a pool buffer until release is
// called.
func (p *pooledReader) read() (data []byte, release func(), err error) {
	p.put() // in case the last chunk was not released
	if cerr := p.rc.Read(p.try); cerr != nil {
		p.put()
		return nil, noRelease, cerr
	}
	return p.result()
}

// tryOnce is the RawConn.Read callback of readNow: one read(2), no wait.
func (p *pooledReader) tryOnce(fd uintptr) bool {
	p.bp = p.pool.Get().(*[]byte)
	p.n, p.rerr = rawRead(fd, *p.bp)
	return true
}

// readNow is read without waiting: ready is false if the socket has
// nothing to read.
func (p *pooledReader) readNow() (data []byte, release func(), ready bool, err error) {
	p.put()
	if cerr := p.rc.Read(p.once); cerr != nil {
		p.put()
		return nil, noRelease, true, cerr
	}
	if p.rerr == syscall.EAGAIN || p.rerr == syscall.EINTR {
		p.put()
		p.rerr = nil
		return nil, noRelease, false, nil
	}
	data, release, err = p.result()
	return data, release, true, err
}

func (p *pooledReader) result() (data []byte, release func(), err error) {
	if p.rerr != nil {
		err := p.rerr
		p.put()
		p.rerr = nil
		return nil, noRelease, &net.OpError{Op: "read", Net: "host", Err: err}
	}
	if p.n == 0 && p.stream {
		p.put()
		return nil, noRelease, io.EOF
	}
	return (*p.bp)[:p.n], p.release, nil
}

// readWaiter is a conn that can wait for readability without a buffer,
// report it, and call back when it may have become readable (netstack's
// accepted TCP conns and UDP flow conns).
type readWaiter interface {
	net.Conn
	WaitReadable()
	Readable() bool
	OnReadable(fn func()) (stop func())
}

// readyReader reads a readWaiter: it waits for readability holding nothing
// and only then takes a pool buffer for the Read.
type readyReader struct {
	c       readWaiter
	pool    *sync.Pool // of *[]byte
	release func()     // r.put
	bp      *[]byte    // the buffer of the chunk returned last, until release
}

func newReadyReader(c readWaiter, pool *sync.Pool) *readyReader {
	r := &readyReader{c: c, pool: pool}
	r.release = r.put
	return r
}

func (r *readyReader) put() {
	if r.bp != nil {
		r.pool.Put(r.bp)
		r.bp = nil
	}
}

func (r *readyReader) read() ([]byte, func(), error) {
	r.put()
	r.c.WaitReadable()
	r.bp = r.pool.Get().(*[]byte)
	n, err := r.c.Read(*r.bp)
	if n == 0 {
		// (An empty datagram comes back as an empty, non-nil chunk.)
		r.put()
		return emptyChunk, noRelease, err
	}
	return (*r.bp)[:n], r.release, err
}

var emptyChunk = []byte{}

func (r *readyReader) readNow() (data []byte, release func(), ready bool, err error) {
	if !r.c.Readable() {
		r.put()
		return nil, noRelease, false, nil
	}
	data, release, err = r.read() // does not wait
	return data, release, true, err
}

// streamSource is what a TCP copy reads: chunks held in a pool buffer
// until release. readNow does not wait (ready false: nothing to read); only
// some sources support it (see newStreamSource). put gives back a buffer
// still held.
type streamSource interface {
	read() (data []byte, release func(), err error)
	readNow() (data []byte, release func(), ready bool, err error)
	put()
}

// newStreamSource returns the reader for a stream (or, !stream, for
// datagrams): a pooledReader for a host socket, a readyReader for
// netstack's accepted TCP conns and UDP flow conns (both can poll: readNow
// works), and for other conns (which cannot) a streamReader or, for
// datagrams, a bufReader.
func newStreamSource(src net.Conn, pool *sync.Pool, stream bool) (s streamSource, canPoll bool) {
	if pr := newPooledReader(src, pool, stream); pr != nil {
		return pr, true
	}
	if rw, ok := src.(readWaiter); ok {
		return newReadyReader(rw, pool), true
	}
	if !stream {
		return &bufReader{c: src, pool: pool}, false
	}
	return &streamReader{c: src, pool: pool, small: make([]byte, smallReadSize)}, false
}

// bufReader reads datagrams from a conn that can neither poll nor report
// readiness, into one pool buffer held from the first read until put.
type bufReader struct {
	c    net.Conn
	pool *sync.Pool // of *[]byte
	bp   *[]byte
}

func (b *bufReader) read() ([]byte, func(), error) {
	if b.bp == nil {
		b.bp = b.pool.Get().(*[]byte)
	}
	n, err := b.c.Read(*b.bp)
	return (*b.bp)[:n], noRelease, err
}

func (b *bufReader) readNow() ([]byte, func(), bool, error) {
	data, release, err := b.read()
	return data, release, true, err
}

func (b *bufReader) put() {
	if b.bp != nil {
		b.pool.Put(b.bp)
		b.bp = nil
	}
}

// chunkReader yields the next chunk (TCP) or datagram (UDP) read from a
// source. release must be called once the data has been used.
type chunkReader func() (data []byte, release func(), err error)

func noRelease() {}

// newChunkReader reads src through a pooledReader when src is a host
// socket, a readyReader when src can wait for readability (netstack's
// accepted TCP conns and UDP flow conns), a streamReader for other stream conns, and else with
// one pool buffer held for the reader's life. None of the first three holds
// a pool buffer while src is idle. free returns whatever buffer is still
// held.
func newChunkReader(src net.Conn, pool *sync.Pool, stream bool) (read chunkReader, free func()) {
	if pr := newPooledReader(src, pool, stream); pr != nil {
		return pr.read, pr.put
	}
	if rw, ok := src.(readWaiter); ok {
		rr := newReadyReader(rw, pool)
		return rr.read, rr.put
	}
	if stream {
		sr := &streamReader{c: src, pool: pool, small: make([]byte, smallReadSize)}
		return sr.read, sr.free
	}
	bp := pool.Get().(*[]byte)
	return func() ([]byte, func(), error) {
		n, err := src.Read(*bp)
		return (*bp)[:n], noRelease, err
	}, func() { pool.Put(bp) }
}

const (
	// smallReadSize is the buffer a streamReader keeps while its conn is
	// idle.
	smallReadSize = 1 << 10
	// bigReadIdle is how long a streamReader keeps a pool buffer without
	// data before it returns it and goes back to the small buffer.
	bigReadIdle = time.Second
)

// streamReader reads a stream conn that cannot report readiness (netstack's
// conns all can now; other net.Conns, such as tests' pipes) without pinning
// a pool buffer while idle: it blocks on
// a small per-flow buffer, switches to a pool buffer once data flows, and
// gives the pool buffer back when a read sees no data for bigReadIdle (a
// read deadline, refreshed at most twice per bigReadIdle while data flows).
type streamReader struct {
	c        net.Conn
	pool     *sync.Pool // of *[]byte
	small    []byte
	big      *[]byte   // nil in small mode
	deadline time.Time // read deadline set in big mode
}

func (s *streamReader) read() ([]byte, func(), error) {
	if s.big == nil {
		n, err := s.c.Read(s.small)
		if n > 0 && err == nil {
			s.big = s.pool.Get().(*[]byte)
			s.deadline = time.Time{} // set below, on the next read
		}
		return s.small[:n], noRelease, err
	}
	if now := time.Now(); s.deadline.Sub(now) < bigReadIdle/2 {
		s.deadline = now.Add(bigReadIdle)
		if err := s.c.SetReadDeadline(s.deadline); err != nil {
			return nil, noRelease, err
		}
	}
	n, err := s.c.Read(*s.big)
	// gVisor's gonet reports a deadline as its own net.Error with
	// Timeout() true, not os.ErrDeadlineExceeded.
	var ne net.Error
	if n == 0 && (errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()) {
		// Idle: back to the small buffer, without a deadline.
		s.pool.Put(s.big)
		s.big = nil
		if err := s.c.SetReadDeadline(time.Time{}); err != nil {
			return nil, noRelease, err
		}
		return nil, noRelease, nil
	}
	return (*s.big)[:n], noRelease, err
}

// readNow is read: a streamReader cannot poll.
func (s *streamReader) readNow() ([]byte, func(), bool, error) {
	data, release, err := s.read()
	return data, release, true, err
}

func (s *streamReader) put() { s.free() }

func (s *streamReader) free() {
	if s.big != nil {
		s.pool.Put(s.big)
		s.big = nil
	}
}
