//go:build linux

package router

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// hostPoller tells idle flows when their host socket becomes readable,
// without a goroutine per flow: one goroutine waits in epoll_wait on a
// private epoll instance for every idle host socket. (Go's own poller only
// wakes a goroutine parked on a socket, and a parked goroutine costs an
// idle flow 2 KiB or more of stack.) Each socket is registered one-shot and
// level-triggered: arm re-enables it once its reader has found it empty, so
// data that arrived in between fires at once. The sockets stay in Go's
// poller too; both can watch the same socket.
//
// A closed socket leaves the epoll set without an event (the kernel drops
// it with the last reference), so whoever closes a watched socket must wake
// its reader itself (tcpSplice.closeBoth does).
type hostPoller struct {
	epfd  int
	wakeR int // pipe; a byte on it ends loop
	wakeW int
	stop  sync.Once

	// life guards closed and the descriptors: epoll_ctl calls hold it for
	// reading, so the epoll descriptor cannot be closed (and its number
	// reused) under them.
	life   sync.RWMutex
	closed bool

	mu   sync.Mutex
	next int32            // guarded by mu: last token handed out
	fns  map[int32]func() // guarded by mu: token → callback
}

// hostPollSupported: the router can watch host sockets without goroutines.
const hostPollSupported = true

func newHostPoller() (*hostPoller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("router: epoll_create1: %w", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("router: pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: 0} // token 0: stop
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(p[0])
		syscall.Close(p[1])
		return nil, fmt.Errorf("router: epoll_ctl: %w", err)
	}
	return &hostPoller{epfd: epfd, wakeR: p[0], wakeW: p[1], fns: make(map[int32]func())}, nil
}

// loop delivers readiness until close; it closes the poller's descriptors
// before it returns.
func (p *hostPoller) loop() {
	defer func() {
		p.life.Lock()
		p.closed = true
		syscall.Close(p.epfd)
		syscall.Close(p.wakeR)
		syscall.Close(p.wakeW)
		p.life.Unlock()
		p.failAll()
	}()
	var evs [128]syscall.EpollEvent
	for {
		n, err := syscall.EpollWait(p.epfd, evs[:], -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			// Cannot happen with valid arguments; the watched copies
			// would never wake, so wake them (failAll, deferred).
			return
		}
		for i := range n {
			tok := evs[i].Fd
			if tok == 0 {
				return
			}
			p.mu.Lock()
			fn := p.fns[tok]
			p.mu.Unlock()
			if fn != nil {
				fn()
			}
		}
	}
}

// failAll calls every registered callback once after the poller closed
// (arm fails from now on), so that armed readers go back to waiting in a
// goroutine of their own.
func (p *hostPoller) failAll() {
	p.mu.Lock()
	fns := make([]func(), 0, len(p.fns))
	for _, fn := range p.fns {
		fns = append(fns, fn)
	}
	p.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// close makes loop return.
func (p *hostPoller) close() {
	p.stop.Do(func() {
		p.life.RLock()
		defer p.life.RUnlock()
		if !p.closed { // else loop has ended and closed the pipe
			syscall.Write(p.wakeW, []byte{0})
		}
	})
}

// hostWatch is one host socket's registration. Its reader owns it while
// not armed; once epoll_ctl has armed it, the callback may hand it to
// another goroutine at once, so arm touches nothing of it after that.
type hostWatch struct {
	p     *hostPoller
	rc    syscall.RawConn
	tok   int32
	added bool // in the epoll set (ADD succeeded): re-arm with MOD
	done  bool // stop has run
}

// watch registers fn for rc's socket; fn is called (from the poller's
// goroutine; it must not block) once after each arm when the socket is
// readable, and possibly spuriously.
func (p *hostPoller) watch(rc syscall.RawConn, fn func()) *hostWatch {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		p.next++
		if p.next <= 0 {
			p.next = 1
		}
		if _, used := p.fns[p.next]; !used {
			break
		}
	}
	w := &hostWatch{p: p, rc: rc, tok: p.next}
	p.fns[w.tok] = fn
	return w
}

// arm asks for one callback once the socket is readable. ok is false if
// the socket cannot be watched (the poller is closed or epoll_ctl failed):
// the caller must wait for it some other way. A closed socket is reported
// readable (a read returns the error).
func (w *hostWatch) arm() (readable, ok bool) {
	p := w.p
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return false, false
	}
	op := syscall.EPOLL_CTL_MOD
	if !w.added {
		op = syscall.EPOLL_CTL_ADD
		w.added = true // before: once armed, w is not ours
	}
	tok := w.tok
	var err error
	if cerr := w.rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: tok}
		err = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
	}); cerr != nil {
		return true, true
	}
	if err != nil {
		// Not armed: w is still ours.
		if op == syscall.EPOLL_CTL_ADD {
			w.added = false
		}
		return false, false
	}
	return false, true
}

// stop ends the registration; the callback is not called after stop
// returns, except by a poller goroutine that looked it up before.
func (w *hostWatch) stop() {
	if w.done {
		return
	}
	w.done = true
	w.p.mu.Lock()
	delete(w.p.fns, w.tok)
	w.p.mu.Unlock()
	if w.added {
		// Take it out of the set now rather than when it is closed (a
		// half-closed flow keeps its socket open).
		w.p.life.RLock()
		defer w.p.life.RUnlock()
		if !w.p.closed {
			w.rc.Control(func(fd uintptr) {
				syscall.EpollCtl(w.p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
			})
		}
	}
}
