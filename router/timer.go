package router

import (
	"context"
	"sync"
	"time"
)

// idleTimer ends a flow after timeout without activity. The data path only
// stores the activity clock (flow.touch); the timer re-arms itself for the
// remaining time when it fires early, so activity costs no timer operation.
type idleTimer struct {
	mu      sync.Mutex
	t       *time.Timer // guarded by mu (assigned after AfterFunc returns)
	stopped bool        // guarded by mu
}

func (r *Router) startIdleTimer(f *flow, timeout time.Duration) *idleTimer {
	it := &idleTimer{}
	it.mu.Lock()
	defer it.mu.Unlock()
	it.t = time.AfterFunc(timeout, func() {
		it.mu.Lock()
		defer it.mu.Unlock()
		if it.stopped {
			return
		}
		idle := time.Duration(r.now() - f.last.Load())
		if idle >= timeout {
			it.stopped = true
			f.shutdown(reasonIdle)
			return
		}
		it.t.Reset(timeout - idle)
	})
	return it
}

func (it *idleTimer) stop() {
	it.mu.Lock()
	defer it.mu.Unlock()
	it.stopped = true
	it.t.Stop()
}

// onEnd runs fn in a goroutine owned by r as soon as f's context is
// canceled (the flow must end). The caller must be inside an r.enter
// section (so r.wg cannot be at zero). The returned stop cancels fn if it
// has not started; the flow's owner calls it once the flow's I/O is done.
func (r *Router) onEnd(f *flow, fn func()) (stop func()) {
	r.wg.Add(1)
	stopAF := context.AfterFunc(f.ctx, func() {
		defer r.wg.Done()
		fn()
	})
	return func() {
		if stopAF() {
			r.wg.Done()
		}
	}
}
