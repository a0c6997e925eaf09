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

// onEnd runs fn in a goroutine owned by r as soon as f must end (shutdown
// or abort: idle, evicted, Close, an I/O error). The caller must be inside
// an r.enter section (so r.wg cannot be at zero). The returned stop cancels
// fn if it has not started; the flow's owner calls it once the flow's I/O
// is done.
//
// This is a plain list on the flow rather than context.AfterFunc on
// f.ctx: AfterFunc gives every flow context a children map and a done
// channel, which an idle flow would keep for its whole life.
func (r *Router) onEnd(f *flow, fn func()) (stop func()) {
	r.wg.Add(1)
	h := &endHook{r: r, fn: fn}
	f.hookMu.Lock()
	if f.fired || f.ctx.Err() != nil {
		// Ended already (f.ctx is canceled before the hooks are taken,
		// and finish/discard cancel without running hooks).
		f.hookMu.Unlock()
		go h.run()
		return func() {}
	}
	h.next = f.hooks
	f.hooks = h
	f.hookMu.Unlock()
	return func() {
		f.hookMu.Lock()
		defer f.hookMu.Unlock()
		for p := &f.hooks; *p != nil; p = &(*p).next {
			if *p == h {
				*p = h.next
				r.wg.Done()
				return
			}
		}
	}
}

// flowDialContext returns the context for f's dial: DialTimeout long,
// derived from r.ctx (not from f.ctx, see flow.ctx), and canceled when f
// must end. cancel must be called once the dial has returned.
func (r *Router) flowDialContext(f *flow) (ctx context.Context, cancel func()) {
	ctx, cancelT := context.WithTimeout(r.ctx, r.cfg.DialTimeout)
	stop := r.onEnd(f, cancelT)
	return ctx, func() {
		stop()
		cancelT()
	}
}
