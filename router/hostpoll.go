package router

import (
	"context"
	"sync"
)

// lazyPoller is a Router's hostPoller, started with the first flow.
type lazyPoller struct {
	once sync.Once
	p    *hostPoller // nil: not supported or failed to start
}

// hostPoller returns r's poller of idle host sockets, starting it (and the
// goroutine that Close stops and waits for) on first use, or nil. The
// caller must be inside an r.enter section.
func (r *Router) hostPoller() *hostPoller {
	r.poll.once.Do(func() {
		if !hostPollSupported {
			return
		}
		p, err := newHostPoller()
		if err != nil {
			r.log.Warn("router: idle flows will wait for their host sockets in goroutines", "err", err)
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			p.loop()
		}()
		context.AfterFunc(r.ctx, p.close) // Close cancels r.ctx before it waits
		r.poll.p = p
	})
	return r.poll.p
}
