// Package netstacktest provides in-memory fixtures for code built on
// netstack: a frame Pipe and Host, a second gVisor stack acting as a client
// machine on the hub. Nothing here touches a real network.
package netstacktest

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// pipeDepth bounds each direction of a Pipe, in frames.
const pipeDepth = 1024

// maxFrame is the largest frame a Pipe carries (a jumbo frame would need
// more; the hub's frames are at most 1514 bytes).
const maxFrame = 16 << 10

// PipeLink is one end of a Pipe. It satisfies netstack.Link and io.Closer.
type PipeLink struct {
	rx      chan []byte // frames to read
	tx      chan []byte // the peer's rx
	state   *pipeState
	dropped atomic.Uint64 // frames this end wrote that the peer's queue had no room for
}

type pipeState struct {
	done chan struct{}
	once sync.Once
	pool sync.Pool // *[]byte of cap maxFrame
}

// Pipe returns two connected in-memory frame links: frames written to one
// are read from the other, in order. Each direction buffers up to 1024
// frames and drops (and counts) frames when full, as a congested hub does;
// WriteFrames never blocks. Closing either end closes both.
func Pipe() (*PipeLink, *PipeLink) {
	st := &pipeState{done: make(chan struct{})}
	st.pool.New = func() any { b := make([]byte, 0, maxFrame); return &b }
	ab := make(chan []byte, pipeDepth)
	ba := make(chan []byte, pipeDepth)
	return &PipeLink{rx: ba, tx: ab, state: st}, &PipeLink{rx: ab, tx: ba, state: st}
}

// ReadFrame implements netstack.Link: it blocks until a frame arrives or the
// pipe is closed (then it returns an error wrapping net.ErrClosed).
func (p *PipeLink) ReadFrame(b []byte) (int, error) {
	select {
	case f := <-p.rx:
		return p.deliver(b, f)
	case <-p.state.done:
		return 0, fmt.Errorf("netstacktest: read: %w", net.ErrClosed)
	}
}

func (p *PipeLink) deliver(b, f []byte) (int, error) {
	defer p.state.pool.Put(&f)
	if len(f) > len(b) {
		return 0, fmt.Errorf("netstacktest: frame of %d bytes does not fit a %d-byte buffer", len(f), len(b))
	}
	return copy(b, f), nil
}

// WriteFrames implements netstack.Link. It copies the frames; frames larger
// than 16 KiB are an error, frames beyond the queue's room are dropped.
func (p *PipeLink) WriteFrames(frames [][]byte) error {
	select {
	case <-p.state.done:
		return fmt.Errorf("netstacktest: write: %w", net.ErrClosed)
	default:
	}
	for _, f := range frames {
		if len(f) > maxFrame {
			return fmt.Errorf("netstacktest: frame of %d bytes exceeds %d", len(f), maxFrame)
		}
		bp := p.state.pool.Get().(*[]byte)
		c := append((*bp)[:0], f...)
		select {
		case p.tx <- c:
		default:
			p.dropped.Add(1)
			p.state.pool.Put(&c)
		}
	}
	return nil
}

// Dropped returns how many frames written to this end were dropped because
// the peer's queue was full.
func (p *PipeLink) Dropped() uint64 { return p.dropped.Load() }

// Close closes both ends; it is idempotent.
func (p *PipeLink) Close() error {
	p.state.once.Do(func() { close(p.state.done) })
	return nil
}
