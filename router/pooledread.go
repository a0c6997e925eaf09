package router

import (
	"io"
	"net"
	"sync"
	"syscall"
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
// socket, else with one pool buffer held for the reader's life; free
// returns that buffer.
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
	bp := pool.Get().(*[]byte)
	return func() ([]byte, func(), error) {
		n, err := src.Read(*bp)
		return (*bp)[:n], noRelease, err
	}, func() { pool.Put(bp) }
}
