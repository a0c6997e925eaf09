package vpnlink

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/acrouter/acrouter/vpnlink/internal/proto"
)

const (
	initialBatch = 64 << 10
	maxKeptBatch = 4 << 20
	// keepGrownFor: a send buffer that grew past initialBatch for a burst
	// is kept while bursts keep coming and given back after this long
	// without one, so that an idle router does not hold the megabytes a
	// bulk transfer left behind (4.5 MB in the lab after an iperf3 run).
	keepGrownFor = time.Second
)

// grownBuffers decides whether send buffers that grew are kept.
type grownBuffers struct{ lastBig time.Time }

// keep reports whether a buffer of capacity c that has just carried n bytes
// is worth keeping at time now (else the caller starts a new one of
// initialBatch).
func (g *grownBuffers) keep(now time.Time, n, c int) bool {
	if n > initialBatch {
		g.lastBig = now
	}
	switch {
	case c <= initialBatch:
		return true
	case c > maxKeptBatch:
		return false
	}
	return now.Sub(g.lastBig) < keepGrownFor
}

// shrinkIdle gives back send buffers that grew for a burst once no burst
// came for keepGrownFor (called by the writer when it has nothing to send).
func (c *Client) shrinkIdle(now time.Time) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.qn == 0 && !c.qgrown.keep(now, 0, cap(c.qbuf)) {
		c.qbuf = make([]byte, 4, initialBatch)
	}
	if c.qspare != nil && !c.qgrown.keep(now, 0, cap(c.qspare)) {
		c.qspare = make([]byte, 4, initialBatch)
	}
}

// MaxFrameSize is the largest frame the server accepts (MAX_PACKET_SIZE in
// src/Cedar/Cedar.h); WriteFrames drops larger ones.
const MaxFrameSize = proto.MaxPacketSize

// State of a Client.
type State int

const (
	StateConnecting State = iota
	StateConnected
	StateReconnecting
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateReconnecting:
		return "reconnecting"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Status is a snapshot of a Client.
type Status struct {
	State             State
	Server, Hub, User string

	SessionName    string // e.g. SID-ALICE-3; changes on a full re-login
	ConnectionName string
	// BridgeMode: the session may bridge or route (not both of
	// policy:NoBridge and policy:NoRouting set). NoBridge alone limits
	// the session to 3 source MACs, NoRouting alone to 4 source IPv4s.
	BridgeMode, NoBridge, NoRouting bool
	Timeout                         time.Duration // negotiated session timeout
	ServerMessage                   string        // welcome Msg, if any

	ServerProduct              string
	ServerVersion, ServerBuild int
	CertSHA256                 string

	ConnectedSince time.Time // start of the current connection
	Logins         uint64    // successful logins (new sessions)
	Reconnects     uint64    // successful re-establishments after a loss
	Resumes        uint64    // ... of which resumed the same session

	FramesIn, FramesOut, BytesIn, BytesOut uint64
	BatchesOut                             uint64 // TLS writes carrying frames
	KeepAlivesIn, KeepAlivesOut            uint64
	// DropRxQueue is always 0: when the receive queue is full the reader
	// waits (RecvStalls) instead of dropping, so TCP flow control slows the
	// server rather than the inner flows losing packets inside this process.
	DropRxQueue  uint64
	RecvStalls   uint64 // times the reader waited for a full receive queue
	DropTxQueue  uint64 // written while the send queue was full (and stayed full for txFullWait, or the link was down)
	SendStalls   uint64 // times WriteFrames waited for room in the send queue
	DropOversize uint64 // frames over MaxFrameSize (either way)
	LostInFlight uint64 // frames of a batch whose write failed
	Queued       int    // frames waiting to be sent

	LastError   error // last connection error (nil if none)
	LastErrorAt time.Time
}

// Received frames travel from the reader goroutine to ReadFrame(s) in
// batches: one channel operation and at most one goroutine wake-up per
// batch instead of per frame, and the consumer gets every frame that arrived
// together at once (netstack coalesces them into fewer, larger TCP segments
// and ACKs). A batch is passed on when it is full or when the next record is
// not yet buffered, so a lone frame never waits for more.
const (
	rxBatchFrames = 64
	rxBatchBytes  = 64 << 10 // ≥ 40 frames of MaxFrameSize
)

// rxBatch holds received frames back to back: frame i is buf[off[i]:off[i+1]].
type rxBatch struct {
	n   int
	off [rxBatchFrames + 1]int32
	buf [rxBatchBytes]byte
}

// tail is where the next frame is read to (room for a MaxFrameSize frame).
func (b *rxBatch) tail() []byte {
	o := int(b.off[b.n])
	return b.buf[o : o+proto.MaxPacketSize]
}

func (b *rxBatch) add(n int)          { b.off[b.n+1] = b.off[b.n] + int32(n); b.n++ }
func (b *rxBatch) frame(i int) []byte { return b.buf[b.off[i]:b.off[i+1]] }
func (b *rxBatch) full() bool {
	return b.n == rxBatchFrames || rxBatchBytes-int(b.off[b.n]) < proto.MaxPacketSize
}
func (b *rxBatch) reset() *rxBatch { b.n = 0; return b }

type stats struct {
	framesIn, framesOut, bytesIn, bytesOut, batchesOut atomic.Uint64
	keepAlivesIn, keepAlivesOut                        atomic.Uint64
	dropTx, dropOversize, dropOversizeIn               atomic.Uint64
	sendStalls                                         atomic.Uint64
	recvStalls                                         atomic.Uint64
	lostInFlight                                       atomic.Uint64
}

// Client is a SoftEther bridge-mode session that survives connection loss.
// It satisfies netstack.Link.
type Client struct {
	cfg      Config
	log      *slog.Logger
	trust    *trust
	uniqueID [20]byte

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed chan struct{}
	once   sync.Once

	// Receive queue: batches from the reader, and the batch ReadFrame(s)
	// is consuming (guarded by rmu).
	in     chan *rxBatch
	rxPool sync.Pool
	rmu    sync.Mutex
	cur    *rxBatch
	curIdx int
	lent   []*rxBatch // earlier batches whose frames ReadFrames lent

	// Send queue: one growing batch (4-byte count placeholder + blocks)
	// and a spare that the writer swaps in.
	qmu            sync.Mutex
	qbuf, qspare   []byte
	qn             int
	qgrown         grownBuffers
	kick           chan struct{}
	room           chan struct{} // cap 1: the writer took a batch (see WriteFrames)
	up             atomic.Bool   // a link is in its data phase (the writer drains the queue)
	stats          stats
	mu             sync.Mutex // guards st and session fields below
	st             Status
	changed        chan struct{} // closed and replaced on every state change
	sessionKey     []byte
	reconnectDelay func(attempt int, err error) time.Duration
}

// Dial logs in (synchronously: a wrong password, unknown hub, denied
// bridge mode or untrusted certificate is returned as a typed error) and
// then keeps the session up until Close: on loss it resumes the same
// session with its session key while the server still holds it, else logs
// in again, with exponential backoff.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	pin, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg:    cfg,
		log:    cfg.Logger.With("server", cfg.Server, "hub", cfg.Hub, "user", cfg.User),
		trust:  &trust{server: cfg.Server, pin: pin, insecure: cfg.InsecureSkipVerify, file: cfg.knownHostsPath()},
		closed: make(chan struct{}),
		in:     make(chan *rxBatch, max(2, cfg.RecvQueue/rxBatchFrames)),
		qbuf:   make([]byte, 4, initialBatch),
		qspare: make([]byte, 4, initialBatch),
		kick:   make(chan struct{}, 1),
		room:   make(chan struct{}, 1),
	}
	c.rxPool.New = func() any { return new(rxBatch) }
	c.reconnectDelay = c.backoff
	rand.Read(c.uniqueID[:])
	c.st = Status{State: StateConnecting, Server: cfg.Server, Hub: cfg.Hub, User: cfg.User}
	c.changed = make(chan struct{})

	w, wel, err := c.login(ctx)
	if err != nil {
		c.log.Warn("vpnlink: login failed", "err", err)
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	l := c.established(w, wel, false)
	c.wg.Add(1)
	go c.run(l)
	return c, nil
}

// Check logs in once, reports the session and logs out.
func Check(ctx context.Context, cfg Config) (Status, error) {
	c, err := Dial(ctx, cfg)
	if err != nil {
		return Status{State: StateClosed, Server: cfg.Server, Hub: cfg.Hub, User: cfg.User, LastError: err, LastErrorAt: time.Now()}, err
	}
	st := c.Status()
	c.Close()
	return st, nil
}

func (c *Client) getBatch() *rxBatch  { return c.rxPool.Get().(*rxBatch).reset() }
func (c *Client) putBatch(b *rxBatch) { c.rxPool.Put(b) }

// established records a new live connection and starts its goroutines.
// wel is nil for a resumed session.
func (c *Client) established(w *wire, wel *welcome, reconnect bool) *link {
	c.mu.Lock()
	st := &c.st
	if wel != nil {
		c.sessionKey = wel.sessionKey
		st.SessionName, st.ConnectionName = wel.sessionName, wel.connectionName
		st.Timeout = wel.timeout
		st.NoBridge, st.NoRouting = wel.noBridge, wel.noRouting
		st.BridgeMode = !(wel.noBridge && wel.noRouting)
		st.ServerMessage = wel.msg
		st.Logins++
	} else {
		st.Resumes++
	}
	if reconnect {
		st.Reconnects++
	}
	st.State = StateConnected
	st.ServerProduct, st.ServerVersion, st.ServerBuild = w.product, int(w.version), int(w.build)
	st.CertSHA256 = w.certFP
	st.ConnectedSince = time.Now()
	timeout := st.Timeout
	session := st.SessionName
	c.notifyLocked()
	c.mu.Unlock()

	how := "logged in"
	if wel == nil {
		how = "resumed session"
	}
	c.log.Info("vpnlink: "+how, "session", session, "timeout", timeout,
		"product", w.product, "build", w.build, "cert_sha256", w.certFP)
	return c.startLink(w, timeout, wel == nil)
}

// A link that ends sooner than this after it started counts as a failed
// attempt: the next reconnect waits the backoff instead of starting at once,
// so a server that accepts and then drops connections is not hammered.
const minHealthyLink = 10 * time.Second

// run owns the live link and re-establishes it after a loss.
func (c *Client) run(l *link) {
	defer c.wg.Done()
	flaps := 0
	for {
		select {
		case <-l.done:
		case <-c.ctx.Done():
			l.fail(net.ErrClosed)
			l.wg.Wait()
			return
		}
		l.wg.Wait()
		lostAt := time.Now()
		c.setErr(StateReconnecting, l.err)
		c.log.Warn("vpnlink: connection lost", "session", c.Status().SessionName, "after", lostAt.Sub(l.started).Round(time.Millisecond), "err", l.err)
		if l.resumed && !l.gotData.Load() {
			// SoftEther before 5.02.5185 built with OpenSSL 3 accepts
			// additional_connect for a session whose socket died and then
			// closes the new socket at once (stale OpenSSL error queue in the
			// session thread; fixed upstream by commits b2ec1bd5, 98852b77).
			// That session is unusable: log in again. The verdict is for
			// this session only: the same server does resume a session
			// whose connection was cut and re-opened at once (lab faults
			// test), and a failed resume costs one round trip.
			c.log.Warn("vpnlink: the server accepted the session resume but closed the connection at once " +
				"(SoftEther before 5.02.5185 with OpenSSL 3 does that after a longer outage); logging in to a new session")
			c.mu.Lock()
			c.sessionKey = nil
			c.mu.Unlock()
		}
		wait := time.Duration(0)
		if lostAt.Sub(l.started) < minHealthyLink {
			wait = c.reconnectDelay(flaps, l.err)
			flaps++
		} else {
			flaps = 0
		}
		if l = c.reconnect(lostAt, l.timeout, wait); l == nil {
			return
		}
	}
}

func (c *Client) setErr(s State, err error) {
	c.mu.Lock()
	c.st.State = s
	c.st.LastError = err
	c.st.LastErrorAt = time.Now()
	c.notifyLocked()
	c.mu.Unlock()
}

// notifyLocked wakes Changed waiters; c.mu must be held.
func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// Changed returns a channel that is closed at the next change of State,
// session or LastError. Typical use:
//
//	for st := c.Status(); !done(st); st = c.Status() {
//		select { case <-ch: case <-ctx.Done(): ... }
//	}
//
// (take the channel before reading Status to not miss a change).
func (c *Client) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// WaitFor blocks until cond(Status) is true or ctx ends.
func (c *Client) WaitFor(ctx context.Context, cond func(Status) bool) (Status, error) {
	for {
		ch := c.Changed()
		st := c.Status()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
}

// reconnect tries until it has a new link or the client is closed (nil).
// It resumes the session (additional_connect) while the server may still
// hold it — the hub keeps the session and its MAC table for the session
// timeout after the last received byte (SessionMain, src/Cedar/Session.c)
// — and logs in again otherwise.
func (c *Client) reconnect(lostAt time.Time, timeout, wait time.Duration) *link {
	if wait > 0 {
		c.log.Info("vpnlink: connection was short-lived, waiting before reconnecting", "wait", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return nil
		}
	}
	attempt := 0
	for {
		if c.ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		key := c.sessionKey
		c.mu.Unlock()
		var err error
		if key != nil && (attempt == 0 || time.Since(lostAt) < timeout) {
			var w *wire
			if w, err = c.resume(c.ctx, key); err == nil {
				return c.established(w, nil, true)
			}
			if errors.Is(err, ErrSessionGone) {
				c.log.Info("vpnlink: session expired on the server, logging in again", "err", err)
				c.mu.Lock()
				c.sessionKey = nil
				c.mu.Unlock()
				continue // log in at once
			}
		} else {
			if key != nil {
				c.log.Info("vpnlink: session hold time passed, logging in again")
				c.mu.Lock()
				c.sessionKey = nil
				c.mu.Unlock()
			}
			var w *wire
			var wel *welcome
			if w, wel, err = c.login(c.ctx); err == nil {
				return c.established(w, wel, true)
			}
		}
		if c.ctx.Err() != nil {
			return nil
		}
		delay := c.reconnectDelay(attempt, err)
		attempt++
		c.setErr(StateReconnecting, err)
		lvl := slog.LevelWarn
		if IsPermanent(err) {
			lvl = slog.LevelError
		}
		c.log.Log(c.ctx, lvl, "vpnlink: reconnect failed", "attempt", attempt, "retry_in", delay.Round(time.Millisecond), "permanent", IsPermanent(err), "err", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// backoff returns the wait before retry number attempt+1: MinBackoff·2^attempt
// capped at MaxBackoff, jittered uniformly into [d/2, d]; errors that need a
// configuration change wait MaxBackoff (jittered into [0.9, 1]·MaxBackoff)
// so a wrong password is never retried in a tight loop.
func (c *Client) backoff(attempt int, err error) time.Duration {
	return backoffDelay(c.cfg.MinBackoff, c.cfg.MaxBackoff, attempt, IsPermanent(err), mrand.Float64())
}

func backoffDelay(lo, hi time.Duration, attempt int, permanent bool, r float64) time.Duration {
	if permanent {
		return hi - time.Duration(float64(hi)*0.1*r)
	}
	d := hi
	if attempt < 62 {
		if m := lo << attempt; m > 0 && m < hi && m>>attempt == lo {
			d = m
		}
	}
	return d/2 + time.Duration(float64(d/2)*r)
}

// ReadFrame blocks until a frame arrives and copies it into p. A frame
// longer than p is dropped with an error for that call. After Close it
// returns an error wrapping net.ErrClosed. Frames keep flowing across
// reconnects.
func (c *Client) ReadFrame(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.releaseLentLocked()
	f, err := c.nextFrameLocked()
	if err != nil {
		return 0, err
	}
	if len(f) > len(p) {
		return 0, fmt.Errorf("vpnlink: %d-byte frame does not fit a %d-byte buffer (dropped)", len(f), len(p))
	}
	return copy(p, f), nil
}

// ReadFrames blocks until a frame arrives, then lends up to len(frames)
// frames, all that are queued: frames[:n] point into the Client's receive
// buffers and stay valid until the next ReadFrames or ReadFrame call. It
// saves a copy and a call per frame over ReadFrame (netstack.BatchReader),
// and when the consumer lags it gets the backlog at once (netstack
// coalesces more segments per ACK). After Close it returns an error
// wrapping net.ErrClosed.
func (c *Client) ReadFrames(frames [][]byte) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.releaseLentLocked()
	f, err := c.nextFrameLocked()
	if err != nil {
		return 0, err
	}
	frames[0] = f
	n := 1
	for n < len(frames) {
		if c.curIdx < c.cur.n {
			frames[n] = c.cur.frame(c.curIdx)
			c.curIdx++
			n++
			continue
		}
		var next *rxBatch
		select {
		case next = <-c.in:
		default:
		}
		if next == nil {
			break
		}
		c.lent = append(c.lent, c.cur)
		c.cur, c.curIdx = next, 0
	}
	return n, nil
}

// releaseLentLocked recycles the batches the previous ReadFrames lent
// (other than c.cur). c.rmu is held.
func (c *Client) releaseLentLocked() {
	for i, b := range c.lent {
		c.putBatch(b)
		c.lent[i] = nil
	}
	c.lent = c.lent[:0]
}

// nextFrameLocked returns the next received frame, valid until the next
// call; it blocks until there is one or the Client is closed. c.rmu is held.
func (c *Client) nextFrameLocked() ([]byte, error) {
	select {
	case <-c.closed:
		return nil, fmt.Errorf("vpnlink: %w", net.ErrClosed)
	default:
	}
	for c.cur == nil || c.curIdx >= c.cur.n {
		if c.cur != nil {
			c.putBatch(c.cur)
			c.cur = nil
		}
		select {
		case b := <-c.in:
			c.cur, c.curIdx = b, 0
		case <-c.closed:
			return nil, fmt.Errorf("vpnlink: %w", net.ErrClosed)
		}
	}
	f := c.cur.frame(c.curIdx)
	c.curIdx++
	return f, nil
}

// txFullWait bounds how long WriteFrames waits for room in a full send
// queue while the link is up, before it drops (see WriteFrames).
const txFullWait = 20 * time.Millisecond

// WriteFrames queues the frames for the next batch and returns; the slices
// may be reused. While the link is up and the queue (QueueFrames) is full,
// it waits for the writer to take the queue, up to txFullWait per call:
// a sender that outruns the writer (a burst from the TCP stack, or a writer
// waiting for a core) is slowed down instead of losing frames, which TCP
// would pay for with retransmissions and, after a large loss, seconds of
// recovery. While the link is down frames wait (up to QueueFrames, then
// tail drop) and are sent after the reconnect. Frames over MaxFrameSize
// and empty frames are dropped.
func (c *Client) WriteFrames(frames [][]byte) error {
	select {
	case <-c.closed:
		return fmt.Errorf("vpnlink: %w", net.ErrClosed)
	default:
	}
	var deadline *time.Timer
	expired := false
	defer func() {
		if deadline != nil {
			deadline.Stop()
		}
	}()
	c.qmu.Lock()
	for i := 0; i < len(frames); {
		f := frames[i]
		switch {
		case len(f) == 0:
		case len(f) > proto.MaxPacketSize:
			c.stats.dropOversize.Add(1)
		case c.qn >= c.cfg.QueueFrames:
			if c.up.Load() && !expired {
				c.qmu.Unlock()
				if deadline == nil {
					deadline = time.NewTimer(txFullWait)
				}
				expired = c.waitRoom(deadline)
				c.qmu.Lock()
				continue // the same frame again
			}
			c.stats.dropTx.Add(1)
		default:
			c.qbuf = proto.AppendBlock(c.qbuf, f)
			c.qn++
		}
		i++
	}
	c.qmu.Unlock()
	c.kickWriter()
	return nil
}

func (c *Client) kickWriter() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// waitRoom wakes the writer and waits until it has taken the queue. It
// reports true if the deadline fired or the client closed first.
func (c *Client) waitRoom(deadline *time.Timer) (expired bool) {
	c.stats.sendStalls.Add(1)
	c.kickWriter()
	select {
	case <-c.room:
		return false
	case <-deadline.C:
		return true
	case <-c.closed:
		return true
	}
}

// Status returns a snapshot.
func (c *Client) Status() Status {
	c.mu.Lock()
	st := c.st
	c.mu.Unlock()
	c.qmu.Lock()
	st.Queued = c.qn
	c.qmu.Unlock()
	s := &c.stats
	st.FramesIn, st.FramesOut = s.framesIn.Load(), s.framesOut.Load()
	st.BytesIn, st.BytesOut = s.bytesIn.Load(), s.bytesOut.Load()
	st.BatchesOut = s.batchesOut.Load()
	st.KeepAlivesIn, st.KeepAlivesOut = s.keepAlivesIn.Load(), s.keepAlivesOut.Load()
	st.DropTxQueue, st.RecvStalls = s.dropTx.Load(), s.recvStalls.Load()
	st.SendStalls = s.sendStalls.Load()
	st.DropOversize = s.dropOversize.Load() + s.dropOversizeIn.Load()
	st.LostInFlight = s.lostInFlight.Load()
	return st
}

// Close ends the session: it closes the connection (SoftEther has no
// logout message; the server drops the session after its timeout) and
// waits for every goroutine. It is safe to call more than once.
func (c *Client) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.cancel()
		c.wg.Wait()
		c.mu.Lock()
		c.st.State = StateClosed
		c.sessionKey = nil
		c.notifyLocked()
		c.mu.Unlock()
		c.log.Info("vpnlink: closed")
	})
	return nil
}
