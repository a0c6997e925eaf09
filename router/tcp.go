package router

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/acrouter/acrouter/netstack"
)

// tcpBufSize is the copy buffer per TCP direction (32 KiB, as io.Copy).
// Buffers are pooled and idle flows hold none: each direction waits for
// readability without a buffer and takes one only for a read (pooledReader
// on the host socket, readyReader on netstack's conn; see newChunkReader).
const tcpBufSize = 32 << 10

var tcpBufPool = sync.Pool{New: func() any { b := make([]byte, tcpBufSize); return &b }}

// tcpRequest is the part of *netstack.TCPRequest the router uses.
type tcpRequest interface {
	Accept() (netstack.TCPConn, error)
	Reject(how netstack.Reject)
}

// halfCloser is implemented by host connections that support half-close
// (*net.TCPConn).
type halfCloser interface{ CloseWrite() error }

var (
	errDialLimit       = errors.New("too many dials in flight (MaxInFlightDials)")
	errClientDialLimit = errors.New("too many dials in flight for this client (MaxInFlightDialsPerClient)")
)

func (r *Router) onTCP(req *netstack.TCPRequest) { r.handleTCP(req.Src, req.Dst, req) }

// handleTCP decides a SYN from src to dst: ACL, limits, dial the host first,
// then complete the client's handshake and start splicing the two
// connections. It runs in the stack's per-request goroutine and returns once
// the copies are started: that goroutine's stack has grown in the dial and
// the handshake and should not be kept for the life of the flow.
func (r *Router) handleTCP(src, dst netip.AddrPort, req tcpRequest) {
	if !r.enter() {
		r.refused[RefusedClosing].Add(1)
		req.Reject(netstack.RejectRST)
		return
	}
	defer r.wg.Done()
	if ok, _ := r.acl.Load().check(ProtoTCP, src.Addr(), dst); !ok {
		r.refuse(RefusedACL, ProtoTCP, src, dst, nil)
		req.Reject(netstack.RejectAdminProhibited)
		return
	}
	f, _, ok := r.newFlow(ProtoTCP, src, dst)
	if !ok {
		req.Reject(netstack.RejectRST)
		return
	}
	f.setState(StateDialing)
	host, err := r.dialTCP(f)
	if err != nil {
		why, how := classifyDialError(err)
		if errors.Is(err, errDialLimit) {
			why, how = RefusedDialLimit, netstack.RejectRST
		} else if errors.Is(err, errClientDialLimit) {
			why, how = RefusedClientDialLimit, netstack.RejectRST
		} else if f.ctx.Err() != nil {
			why, how = RefusedClosing, netstack.RejectRST
		}
		r.discard(f)
		r.refuse(why, ProtoTCP, src, dst, err)
		req.Reject(how)
		return
	}
	if f.ctx.Err() != nil { // Close began while we dialed
		host.Close()
		r.discard(f)
		r.refuse(RefusedClosing, ProtoTCP, src, dst, nil)
		req.Reject(netstack.RejectRST)
		return
	}
	client, err := req.Accept()
	if err != nil {
		host.Close()
		r.discard(f)
		r.refuse(r.acceptRefusal(), ProtoTCP, src, dst, err)
		return
	}
	r.opened(f)
	r.startSpliceTCP(f, client, host, nil)
}

// discard ends a flow that never opened: no NAT log line.
func (r *Router) discard(f *flow) {
	f.cancel(closeReason("refused"))
	f.setState(StateClosed)
	r.table.finish(f)
}

// dialTCP connects to f.dest within DialTimeout, under the dial caps.
func (r *Router) dialTCP(f *flow) (net.Conn, error) {
	n := r.dialsInFlight.Add(1)
	defer r.dialsInFlight.Add(-1)
	if n > int64(r.cfg.MaxInFlightDials) {
		return nil, errDialLimit
	}
	if !r.table.beginDial(f, r.cfg.MaxInFlightDialsPerClient) {
		return nil, errClientDialLimit
	}
	defer r.table.endDial(f)
	ctx, cancel := r.flowDialContext(f)
	defer cancel()
	return r.dial(ctx, "tcp", f.dest.String())
}

// spliceTCP copies both ways until both directions have finished or the
// flow is ended (error, idle, Close), and returns then. A FIN in one
// direction half-closes the other side (CloseWrite) and keeps the reverse
// direction open.
func (r *Router) spliceTCP(f *flow, client netstack.TCPConn, host net.Conn) {
	ended := make(chan struct{})
	r.startSpliceTCP(f, client, host, func() { close(ended) })
	<-ended
}

// startSpliceTCP is spliceTCP in the background: it starts one copy
// goroutine per direction and returns; ended (if not nil) runs once both
// have finished and the flow is closed. It must be called inside an enter
// section (it adds to r.wg).
func (r *Router) startSpliceTCP(f *flow, client netstack.TCPConn, host net.Conn, ended func()) {
	s := &tcpSplice{r: r, f: f, client: client, host: host, ended: ended}
	r.startSplice(s, r.cfg.TCPIdleTimeout)
}

// startSplice starts s's two copies (s.datagram: UDP) with the idle
// timeout; the caller has set s's conns, flow and router. It must be
// called inside an enter section (it adds to r.wg).
func (r *Router) startSplice(s *tcpSplice, idleTimeout time.Duration) {
	s.pending.Store(2)
	s.in.init(s, s.client, s.host, false)
	s.out.init(s, s.host, s.client, true)
	s.stop = r.onEnd(s.f, s.closeBoth)
	s.idle = r.startIdleTimer(s.f, idleTimeout)
	r.wg.Add(2)
	s.in.start()
	s.out.start()
}

// tcpSplice is a flow's two copies, in one allocation: a TCP flow's, or
// (datagram) a UDP flow's.
type tcpSplice struct {
	r        *Router
	f        *flow
	client   net.Conn // a netstack.TCPConn for TCP
	host     net.Conn
	datagram bool   // UDP: no EOF, no half-close, errors about one datagram are not fatal
	ended    func() // may be nil
	stop     func() // ends the onEnd registration
	idle     *idleTimer
	pending  atomic.Int32 // copies still running
	in, out  tcpCopy      // host→client, client→host
}

func (s *tcpSplice) closeBoth() {
	s.client.Close()
	s.host.Close()
	// A closed socket leaves the host poller's set without an event: wake
	// the copies if they are armed (a no-op otherwise).
	s.in.wake()
	s.out.wake()
}

// copyDone is called by each copy when it finishes.
func (s *tcpSplice) copyDone() {
	if s.pending.Add(-1) == 0 {
		s.idle.stop()
		s.stop()
		s.closeBoth()
		reason := reasonFIN
		if s.datagram {
			reason = "closed"
		}
		s.r.finish(s.f, reason)
		if s.ended != nil {
			s.ended()
		}
	}
}

// tcpCopy is one direction of a flow: it copies src to dst until EOF
// (then half-closes dst) or an error (then ends the flow). For a UDP flow
// (s.datagram) a chunk is one datagram, and errors caused by ICMP messages
// from the destination side (connection refused, message too long) drop one
// datagram (transientUDPError); any other error ends the flow.
//
// Idle flows should cost little memory, and most of an idle flow is its
// goroutines' stacks, which keep the size of the deepest call made on them
// (gVisor's send path, the dial, the handshake) until a garbage collection
// happens to shrink them, and even then not below 4 KiB or so. So a copy
// goroutine that has moved data does not wait for the next data itself:
// when its source has nothing more to read, it hands the wait over and
// exits. A source that can call back when readable needs no goroutine at
// all while idle: the copy is "armed" and the callback starts a goroutine
// when data, a FIN or an error arrives. netstack's conn calls back itself
// (OnReadable); a host socket is watched by the Router's host poller
// (hostpoll_linux.go: one epoll goroutine for all idle sockets). Where
// neither works (other systems, conns without a descriptor) a host socket
// is waited for in a goroutine. Either way a run is started once per burst
// of data, not per chunk, on a worker of the Router's pool (gopool.go),
// whose stack has already grown for gVisor's deep send path.
type tcpCopy struct {
	s      *tcpSplice
	dst    net.Conn
	src    streamSource
	poll   bool       // src.readNow works; otherwise one goroutine does it all
	notify readWaiter // src is netstack's conn and calls back; or nil
	hw     *hostWatch // src is a host socket watched by the host poller; or nil
	srcc   net.Conn   // src (for its read deadline, with hw)
	out    bool       // client→host

	armed      atomic.Bool // idle, no goroutine: the callback starts one
	stopNotify func()
}

func (c *tcpCopy) init(s *tcpSplice, dst, src net.Conn, out bool) {
	c.s, c.dst, c.out, c.srcc = s, dst, out, src
	pool := &tcpBufPool
	if s.datagram {
		pool = &udpBufPool
	}
	c.src, c.poll = newStreamSource(src, pool, !s.datagram)
	if rw, ok := src.(readWaiter); ok && c.poll {
		c.notify = rw
	} else if pr, ok := c.src.(*pooledReader); ok {
		if p := s.r.hostPoller(); p != nil {
			c.hw = p.watch(pr.rc, c.wake)
		}
	}
}

// start runs the copy: armed if netstack's conn can call back, else in a
// goroutine (which arms the host poller once src has been idle for
// hostIdleWait). The caller has added one count to r.wg for it.
func (c *tcpCopy) start() {
	if c.notify == nil {
		c.s.r.pool.Go(c.runWait)
		return
	}
	c.stopNotify = c.notify.OnReadable(c.wake)
	c.idle()
}

// hostIdleWait is how long a copy waits for its host socket in a goroutine
// (on Go's poller, which wakes it fastest) before it hands the socket to the
// host poller and lets the goroutine go. Waits are usually short while a
// flow is busy (an epoll round trip would slow those down); a longer wait
// keeps more goroutines, and their stack memory, when many flows open at
// once (a runtime only frees stack spans at a garbage collection, and an
// idle process rarely has one).
const hostIdleWait = 100 * time.Millisecond

// busyChunks is how many reads with data a run woken by the host poller
// must make before its flow counts as busy again and waits on Go's poller
// (hostIdleWait) rather than going straight back to the host poller.
const busyChunks = 4

// wake is the readability callback (on gVisor's packet path).
func (c *tcpCopy) wake() {
	if c.armed.CompareAndSwap(true, false) {
		c.s.r.pool.Go(c.runPoll)
	}
}

// idle arms the copy (it keeps the caller's count of r.wg, which passes to
// the goroutine wake starts); if data arrived meanwhile it starts one itself.
// Whoever takes the armed flag (wake's or idle's compare-and-swap) owns the
// copy's state from then on.
func (c *tcpCopy) idle() {
	c.armed.Store(true)
	if c.hw == nil {
		if c.notify.Readable() {
			c.wake()
		}
		return
	}
	readable, ok := c.hw.arm()
	if !ok {
		// The host poller cannot watch it: wait in a goroutine.
		if c.armed.CompareAndSwap(true, false) {
			c.hw.stop()
			c.hw = nil
			c.s.r.pool.Go(c.runWait)
		}
		return
	}
	if readable {
		c.wake()
	}
}

// runPoll and runWait are run for the pool (no closure per task).
func (c *tcpCopy) runPoll() { c.run(true) }
func (c *tcpCopy) runWait() { c.run(false) }

// run copies; it owns one count of r.wg (passed on when it hands over).
// poll: begin with a read that does not wait (the goroutine was started
// for data that may already be gone).
func (c *tcpCopy) run(poll bool) {
	f, r := c.s.f, c.s.r
	woke := poll // started by a readability callback
	chunks := 0  // reads with data in this run
	bytes, packets := &f.bytesIn, &f.packetsIn
	if c.out {
		bytes, packets = &f.bytesOut, &f.packetsOut
	}
	for {
		var (
			data    []byte
			release func()
			err     error
		)
		if poll && c.poll {
			var ready bool
			data, release, ready, err = c.src.readNow()
			if !ready {
				if c.notify != nil || c.hw != nil && woke && chunks < busyChunks {
					// (A host socket the poller woke for a little data
					// goes straight back to it: a flow idle for a while
					// that moves a message now and then keeps no
					// goroutine waiting for hostIdleWait.)
					c.idle()
					return
				}
				// Wait here (a pool worker: its stack stays grown for
				// the next run).
				poll, woke, chunks = false, false, 0
				continue
			}
		} else {
			if c.hw != nil {
				if derr := c.srcc.SetReadDeadline(time.Now().Add(hostIdleWait)); derr != nil {
					f.abort(connError(derr))
					c.end()
					return
				}
			}
			data, release, err = c.src.read()
		}
		if err != nil && c.hw != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			// Idle (or busy past the deadline: arming finds the data).
			release()
			if derr := c.srcc.SetReadDeadline(time.Time{}); derr != nil {
				f.abort(connError(derr))
				c.end()
				return
			}
			c.idle()
			return
		}
		if err != nil && c.s.datagram && transientUDPError(err) {
			release() // nothing was read
			continue
		}
		if len(data) > 0 || c.s.datagram && err == nil {
			// (An empty datagram is a datagram.)
			poll = true
			chunks++
			// Count before writing, so that whoever sees the data also
			// sees it counted.
			f.touch(r.now())
			bytes.Add(uint64(len(data)))
			packets.Add(1)
			_, werr := c.dst.Write(data)
			release()
			if werr != nil && !(c.s.datagram && transientUDPError(werr)) {
				f.abort(connError(werr))
				c.end()
				return
			}
		} else {
			release()
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) && !c.s.datagram {
			if hc, ok := c.dst.(halfCloser); ok {
				if cerr := hc.CloseWrite(); cerr != nil {
					f.abort(connError(cerr))
					c.end()
					return
				}
			}
			f.state.CompareAndSwap(uint32(StateOpen), uint32(StateHalfClosed))
			c.end()
			return
		}
		f.abort(connError(err))
		c.end()
		return
	}
}

// end finishes the direction and gives back its count of r.wg.
func (c *tcpCopy) end() {
	if c.stopNotify != nil {
		c.stopNotify()
	}
	if c.hw != nil {
		c.hw.stop()
	}
	c.src.put()
	c.s.copyDone()
	c.s.r.wg.Done()
}

// connError turns a data-path error into a flow close cause: a reset is
// "reset", a closed connection means another path ended the flow already.
func connError(err error) error {
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return closeReason("reset")
	case errors.Is(err, net.ErrClosed):
		return closeReason("closed")
	}
	return err
}
