package vpnlinktest

import (
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/acrouter/acrouter/vpnlink/internal/proto"
)

// endpoint is a switch port: a session or a raw Port.
type endpoint interface {
	deliver(frame []byte) // must not block
}

// session is a hub session; it outlives its connections for the timeout.
type session struct {
	hub                 *Hub
	name, user          string
	key                 [20]byte
	noBridge, noRouting bool
	maxConn             int

	mu         sync.Mutex
	conns      map[*sconn]struct{}
	out, spare []byte // pending batch (4-byte count placeholder + blocks)
	outN       int
	kick       chan struct{}
	expire     *time.Timer
	gone       bool
	resumes    int
	kaIn       int
	framesIn   int
}

func (s *session) addConn(sc *sconn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return false
	}
	s.conns[sc] = struct{}{}
	if s.expire != nil {
		s.expire.Stop()
		s.expire = nil
	}
	return true
}

// removeConn forgets sc; without connections the session is held for the
// timeout, then removed (SessionMain in src/Cedar/Session.c).
func (s *session) removeConn(sc *sconn) {
	s.mu.Lock()
	delete(s.conns, sc)
	if len(s.conns) == 0 && !s.gone && s.expire == nil {
		s.expire = time.AfterFunc(s.hub.cfg.Timeout, func() { s.hub.removeSession(s) })
	}
	s.mu.Unlock()
}

func (s *session) deliver(frame []byte) {
	s.mu.Lock()
	if s.gone || s.outN >= s.hub.cfg.QueueFrames {
		s.mu.Unlock()
		return
	}
	s.out = proto.AppendBlock(s.out, frame)
	s.outN++
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// dataPhase runs the reader in this goroutine and a writer alongside.
func (h *Hub) dataPhase(s *session, sc *sconn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.writeLoop(s, sc)
	}()
	h.readLoop(s, sc)
	sc.close()
	wg.Wait()
	s.removeConn(sc)
}

func (h *Hub) readLoop(s *session, sc *sconn) {
	rr := proto.NewRecordReader(sc.br)
	buf := make([]byte, proto.MaxPacketSize)
	for {
		if !h.waitStall(sc.done) {
			return
		}
		kind, n, err := rr.Next(buf)
		if err != nil {
			h.log.Debug("vpnlinktest: connection ended", "session", s.name, "err", err)
			return
		}
		switch kind {
		case proto.KindKeepAlive:
			s.mu.Lock()
			s.kaIn++
			s.mu.Unlock()
		case proto.KindFrame:
			s.mu.Lock()
			s.framesIn++
			s.mu.Unlock()
			if n >= 14 { // the hub drops runts
				h.sw.forward(s, buf[:n])
			}
		}
	}
}

func (h *Hub) writeLoop(s *session, sc *sconn) {
	pad := make([]byte, proto.MaxKeepAliveSize)
	rand.Read(pad)
	ka := make([]byte, 0, 8+proto.MaxKeepAliveSize)
	span := func() time.Duration {
		lo, hi := h.cfg.Timeout/5, h.cfg.Timeout/2
		return lo + time.Duration(mrand.Int64N(int64(hi-lo)+1))
	}
	timer := time.NewTimer(0) // first keep-alive at once, like the server
	defer timer.Stop()
	for {
		select {
		case <-sc.done:
			return
		case <-s.kick:
		case <-timer.C:
			if !h.waitStall(sc.done) {
				return
			}
			ka = proto.AppendKeepAlive(ka[:0], pad[:mrand.IntN(proto.MaxKeepAliveSize)])
			if _, err := sc.tc.Write(ka); err != nil {
				sc.close()
				return
			}
			timer.Reset(span())
			continue
		}
		if !h.waitStall(sc.done) {
			return
		}
		s.mu.Lock()
		n, batch := s.outN, s.out
		if n == 0 {
			s.mu.Unlock()
			continue
		}
		s.out, s.spare, s.outN = s.spare[:4], nil, 0
		s.mu.Unlock()
		proto.PutBatchCount(batch, n)
		_, err := sc.tc.Write(batch)
		s.mu.Lock()
		s.spare = batch[:4]
		s.mu.Unlock()
		if err != nil {
			sc.close()
			return
		}
		timer.Reset(span())
	}
}

// switchboard is a learning Ethernet switch.
type switchboard struct {
	mu   sync.RWMutex
	macs map[[6]byte]endpoint
	eps  []endpoint
}

func newSwitchboard() *switchboard { return &switchboard{macs: map[[6]byte]endpoint{}} }

func (sw *switchboard) add(ep endpoint) {
	sw.mu.Lock()
	sw.eps = append(sw.eps, ep)
	sw.mu.Unlock()
}

func (sw *switchboard) remove(ep endpoint) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	sw.eps = slices.DeleteFunc(sw.eps, func(e endpoint) bool { return e == ep })
	for mac, e := range sw.macs {
		if e == ep {
			delete(sw.macs, mac)
		}
	}
}

func (sw *switchboard) closeAll() {
	sw.mu.Lock()
	eps := sw.eps
	sw.eps = nil
	clear(sw.macs)
	sw.mu.Unlock()
	for _, ep := range eps {
		if p, ok := ep.(*Port); ok {
			p.Close()
		}
	}
}

// forward learns the source MAC and delivers to the destination, or floods
// unknown/broadcast/multicast destinations (Hub.c StorePacket, simplified).
func (sw *switchboard) forward(from endpoint, frame []byte) {
	if len(frame) < 14 {
		return
	}
	var dst, src [6]byte
	copy(dst[:], frame[0:6])
	copy(src[:], frame[6:12])
	sw.mu.RLock()
	learned := sw.macs[src] == from
	sw.mu.RUnlock()
	if !learned && src[0]&1 == 0 {
		sw.mu.Lock()
		if slices.Contains(sw.eps, from) {
			sw.macs[src] = from
		}
		sw.mu.Unlock()
	}
	sw.mu.RLock()
	defer sw.mu.RUnlock()
	if dst[0]&1 == 0 {
		if to, ok := sw.macs[dst]; ok {
			if to != from {
				to.deliver(frame)
			}
			return
		}
	}
	for _, ep := range sw.eps {
		if ep != from {
			ep.deliver(frame)
		}
	}
}

// Port is a raw frame port on the hub (a host without TLS). It has the
// method set of netstack.Link.
type Port struct {
	hub    *Hub
	in     chan []byte
	closed chan struct{}
	once   sync.Once
	mu     sync.Mutex
	drops  int
}

func (p *Port) deliver(frame []byte) {
	select {
	case p.in <- append([]byte(nil), frame...):
	default:
		p.mu.Lock()
		p.drops++
		p.mu.Unlock()
	}
}

// ReadFrame returns the next frame delivered to the port.
func (p *Port) ReadFrame(b []byte) (int, error) {
	select {
	case f := <-p.in:
		if len(f) > len(b) {
			return 0, fmt.Errorf("vpnlinktest: %d-byte frame does not fit a %d-byte buffer (dropped)", len(f), len(b))
		}
		return copy(b, f), nil
	case <-p.closed:
		return 0, fmt.Errorf("vpnlinktest: port %w", net.ErrClosed)
	}
}

// WriteFrames sends frames into the hub.
func (p *Port) WriteFrames(frames [][]byte) error {
	select {
	case <-p.closed:
		return fmt.Errorf("vpnlinktest: port %w", net.ErrClosed)
	default:
	}
	for _, f := range frames {
		if len(f) <= proto.MaxPacketSize {
			p.hub.sw.forward(p, f)
		}
	}
	return nil
}

// Drops returns the frames dropped because the port's queue was full.
func (p *Port) Drops() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.drops
}

// Close detaches the port.
func (p *Port) Close() error {
	p.once.Do(func() {
		close(p.closed)
		p.hub.sw.remove(p)
	})
	return nil
}

func sortSessions(s []SessionInfo) {
	slices.SortFunc(s, func(a, b SessionInfo) int { return strings.Compare(a.Name, b.Name) })
}
