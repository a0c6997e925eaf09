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
// no copy buffer on its host side. (The virtual side is a netstack net.Conn,
// whose Read must be given a buffer up front.)
type pooledReader struct {
	rc     syscall.RawConn
	pool   *sync.Pool // of *[]byte
	stream bool       // TCP: a 0-byte read is EOF (for UDP it is an empty datagram)
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
	return &pooledReader{rc: rc, pool: pool, stream: stream}
}

// read returns a pooled buffer holding n bytes read from the socket; the
// caller must put bp back into the pool. On error bp is nil.
func (p *pooledReader) read() (bp *[]byte, n int, err error) {
	var rerr error
	cerr := p.rc.Read(func(fd uintptr) bool {
		bp = p.pool.Get().(*[]byte)
		n, rerr = rawRead(fd, *bp)
		if rerr == syscall.EAGAIN || rerr == syscall.EINTR {
			p.pool.Put(bp)
			bp = nil
			return false // wait for readability, holding nothing
		}
		return true
	})
	if cerr != nil {
		if bp != nil {
			p.pool.Put(bp)
		}
		return nil, 0, cerr
	}
	if rerr != nil {
		p.pool.Put(bp)
		return nil, 0, &net.OpError{Op: "read", Net: "host", Err: rerr}
	}
	if n == 0 && p.stream {
		p.pool.Put(bp)
		return nil, 0, io.EOF
	}
	return bp, n, nil
}

// chunkReader yields the next chunk (TCP) or datagram (UDP) read from a
// source. release must be called once the data has been used.
type chunkReader func() (data []byte, release func(), err error)

func noRelease() {}

// newChunkReader reads src through a pooledReader when src is a host
// socket, a streamReader for other stream conns (netstack's TCP conns), and
// else with one pool buffer held for the reader's life. free returns
// whatever buffer is still held.
func newChunkReader(src net.Conn, pool *sync.Pool, stream bool) (read chunkReader, free func()) {
	if pr := newPooledReader(src, pool, stream); pr != nil {
		return func() ([]byte, func(), error) {
			bp, n, err := pr.read()
			if err != nil {
				return nil, noRelease, err
			}
			return (*bp)[:n], func() { pr.pool.Put(bp) }, nil
		}, noRelease
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

// streamReader reads a stream conn that cannot report readiness (a
// netstack TCP conn) without pinning a pool buffer while idle: it blocks on
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

func (s *streamReader) free() {
	if s.big != nil {
		s.pool.Put(s.big)
		s.big = nil
	}
}
