package vpnlink

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// TestGrownBuffersKeep walks the rule that decides whether a send buffer
// that grew for a burst is kept.
func TestGrownBuffersKeep(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var g grownBuffers
	steps := []struct {
		name string
		at   time.Duration
		n, c int
		want bool
	}{
		{"an initial-size buffer is always kept", 0, 100, initialBatch, true},
		{"a grown buffer that just carried a burst is kept", 0, 3 * initialBatch, 4 * initialBatch, true},
		{"small batches soon after the burst keep it", keepGrownFor / 2, 100, 4 * initialBatch, true},
		{"a small batch long after the burst drops it", 2 * keepGrownFor, 100, 4 * initialBatch, false},
		{"a new burst keeps it again", 3 * keepGrownFor, 2 * initialBatch, 4 * initialBatch, true},
		{"an idle check after the burst drops it", 5 * keepGrownFor, 0, 4 * initialBatch, false},
		{"an idle check never drops an initial-size buffer", 9 * keepGrownFor, 0, initialBatch, true},
		{"a buffer over maxKeptBatch is never kept", 3 * keepGrownFor, maxKeptBatch + 1, 2 * maxKeptBatch, false},
	}
	for _, s := range steps {
		if got := g.keep(t0.Add(s.at), s.n, s.c); got != s.want {
			t.Errorf("%s: keep = %v, want %v", s.name, got, s.want)
		}
	}
}

// TestEndBatchGivesBackGrownBuffer: the write-coalescing buffer of the TLS
// connection keeps its size while bursts come and shrinks once they stop.
func TestEndBatchGivesBackGrownBuffer(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { // drain
		buf := make([]byte, 64<<10)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	c := &idleConn{Conn: a}
	send := func(n int) {
		t.Helper()
		c.beginBatch()
		if _, err := c.Write(bytes.Repeat([]byte{1}, n)); err != nil {
			t.Fatal(err)
		}
		if err := c.endBatch(); err != nil {
			t.Fatal(err)
		}
	}
	send(4 * initialBatch)
	grown := cap(c.wbuf)
	if grown < 4*initialBatch {
		t.Fatalf("after a burst the buffer holds %d bytes, want at least %d", grown, 4*initialBatch)
	}
	send(100)
	if cap(c.wbuf) != grown {
		t.Fatalf("a small batch right after a burst changed the buffer: %d → %d bytes", grown, cap(c.wbuf))
	}
	c.grown.lastBig = time.Now().Add(-2 * keepGrownFor) // the burst was long ago
	send(100)
	if cap(c.wbuf) > initialBatch {
		t.Fatalf("long after the burst the buffer still holds %d bytes", cap(c.wbuf))
	}
}

// TestShrinkIdleGivesBackQueueBuffers: the send queue's two batch buffers
// shrink when the writer finds nothing to send long after a burst, and are
// left alone while frames are queued.
func TestShrinkIdleGivesBackQueueBuffers(t *testing.T) {
	c := &Client{qbuf: make([]byte, 4, 8*initialBatch), qspare: make([]byte, 4, 8*initialBatch)}
	now := time.Now()
	c.qgrown.lastBig = now
	c.shrinkIdle(now.Add(keepGrownFor / 2))
	if cap(c.qbuf) != 8*initialBatch || cap(c.qspare) != 8*initialBatch {
		t.Fatalf("shrunk right after a burst: %d, %d", cap(c.qbuf), cap(c.qspare))
	}
	c.qn = 1 // a frame is queued in qbuf: it must stay
	c.shrinkIdle(now.Add(2 * keepGrownFor))
	if cap(c.qbuf) != 8*initialBatch {
		t.Fatalf("the buffer holding a queued frame was replaced")
	}
	if cap(c.qspare) != initialBatch {
		t.Fatalf("the idle spare still holds %d bytes", cap(c.qspare))
	}
	c.qn = 0
	c.shrinkIdle(now.Add(2 * keepGrownFor))
	if cap(c.qbuf) != initialBatch {
		t.Fatalf("the idle queue buffer still holds %d bytes", cap(c.qbuf))
	}
}
