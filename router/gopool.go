package router

import (
	"sync"
	"sync/atomic"
	"time"
)

// goPool runs short tasks on goroutines that outlive them.
//
// A copy run (tcpCopy.run) is started per burst of data and ends when its
// source has nothing more to read, so that idle flows keep no goroutine. A
// fresh goroutine starts with a small stack, and gVisor's send path is
// deep: nearly every run grew its stack by copying it once or twice (8.5 %
// of the router's CPU at 32 concurrent new connections a second, in the
// middle of every request/response exchange). A worker that has run a task
// keeps its grown stack for the next one; it waits up to poolIdleFor for
// one and then exits, so an idle router keeps no workers.
type goPool struct {
	tasks chan func()
	stop  chan struct{}
	wg    sync.WaitGroup
	idle  atomic.Int32 // workers waiting for a task
	max   int32        // at most this many wait; the rest exit

	idleFor  time.Duration
	spawned  atomic.Uint64 // workers started (for tests and stats)
	stopOnce sync.Once
}

const (
	poolIdleFor = time.Second
	poolMaxIdle = 256
)

func newGoPool(maxIdle int, idleFor time.Duration) *goPool {
	// Unbuffered: a task goes to a waiting worker at once or to a new one.
	return &goPool{tasks: make(chan func()), stop: make(chan struct{}), max: int32(maxIdle), idleFor: idleFor}
}

// Go runs f on a waiting worker, or on a new one if none waits. The caller
// must not call Go after close has begun (the Router calls close once every
// task's owner is done).
func (p *goPool) Go(f func()) {
	select {
	case p.tasks <- f:
		return
	default:
	}
	p.wg.Add(1)
	p.spawned.Add(1)
	go p.work(f)
}

func (p *goPool) work(f func()) {
	defer p.wg.Done()
	var t *time.Timer
	for {
		f()
		f = nil
		if p.idle.Add(1) > p.max {
			p.idle.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(p.idleFor)
		} else {
			t.Reset(p.idleFor)
		}
		select {
		case f = <-p.tasks:
			p.idle.Add(-1)
		case <-t.C:
			p.idle.Add(-1)
			return
		case <-p.stop:
			p.idle.Add(-1)
			t.Stop()
			return
		}
	}
}

// close lets waiting workers go and waits for every worker.
func (p *goPool) close() {
	p.stopOnce.Do(func() { close(p.stop) })
	p.wg.Wait()
}
