package dns

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
)

// Upstream UDP: a small pool of connected UDP sockets per upstream, one
// query at a time on each.
//
// Anti-spoofing scheme (against blind spoofing, Kaminsky-style races and
// the SAD DNS port-discovery side channel):
//
//   - Every attempt carries a fresh 16-bit transaction ID from crypto/rand
//     (randID), never a counter.
//   - Every socket is connected to the upstream's address, so the kernel
//     delivers only datagrams from that address and port; its local port is
//     the kernel's random ephemeral port (Linux picks it at random), so a
//     blind attacker must guess port and ID (~2^31 combinations).
//   - A socket is used by one query at a time and rotated: closed after
//     sockMaxUses queries or sockMaxAge, whichever comes first, so its port
//     is not fixed for long (bounds what a port learnt through a side
//     channel is worth).
//   - A reply is accepted only if its ID, QR bit and question (name
//     compared case-insensitively, type, class) match the query (checkReply).
//     The first datagram that does not match poisons the socket: it is
//     closed at once (never reused, so a late answer to an abandoned query
//     cannot be taken for the next one) and the query is sent again on a
//     fresh socket (new port) with a new ID, at most mismatchRetries times.
//     So an attacker who learnt a port gets one ID guess per discovered
//     port instead of a flood of guesses within the query's window.
//   - A socket whose attempt timed out or was cancelled is closed too.
const (
	sockMaxUses       = 32
	sockMaxAge        = 10 * time.Second
	poolIdlePerServer = 8 // idle sockets kept per upstream
	mismatchRetries   = 2 // fresh sockets tried after unexpected datagrams
	// maxUDPReply is the read buffer: we advertise at most 4096 bytes
	// (upstreamQuery), so a longer datagram is a broken upstream and fails
	// to unpack, as it did with miekg's client.
	maxUDPReply = 8192
)

// errMismatch marks an unexpected datagram on an upstream socket.
var errMismatch = errors.New("reply does not match the query (ID or question)")

// upSock is one connected UDP socket to an upstream.
type upSock struct {
	c    *net.UDPConn
	uses int
	born time.Time
}

// udpPool keeps idle connected sockets per upstream address.
type udpPool struct {
	dialer     net.Dialer
	mismatches atomic.Uint64 // unexpected datagrams seen (possible spoofing)

	mu     sync.Mutex
	closed bool
	idle   map[string][]*upSock
	inUse  map[*upSock]struct{} // aborted by close
	swept  time.Time            // last sweep of expired idle sockets
}

func newUDPPool() *udpPool {
	return &udpPool{idle: map[string][]*upSock{}, inUse: map[*upSock]struct{}{}}
}

// udpBuf is the pooled scratch space of one exchange.
type udpBuf struct {
	q []byte // packed query
	r [maxUDPReply]byte
}

var udpBufs = sync.Pool{New: func() any { return &udpBuf{q: make([]byte, 0, 4096)} }}

// get returns an idle socket for server or dials a new one; it is in use
// until release.
func (p *udpPool) get(server string) (*upSock, error) {
	now := time.Now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, net.ErrClosed
	}
	l := p.idle[server]
	for len(l) > 0 {
		s := l[len(l)-1]
		l[len(l)-1] = nil
		l = l[:len(l)-1]
		if now.Sub(s.born) < sockMaxAge {
			p.idle[server] = l
			p.inUse[s] = struct{}{}
			p.mu.Unlock()
			return s, nil
		}
		s.c.Close()
	}
	delete(p.idle, server)
	p.mu.Unlock()
	c, err := p.dialer.Dial("udp", server) // no I/O: a socket and connect(2)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UDPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("dial udp %s: not a UDP socket", server)
	}
	s := &upSock{c: uc, born: now}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		uc.Close()
		return nil, net.ErrClosed
	}
	p.inUse[s] = struct{}{}
	p.mu.Unlock()
	return s, nil
}

// release ends a socket's use: back to the pool if healthy, else closed.
func (p *udpPool) release(server string, s *upSock, healthy bool) {
	p.mu.Lock()
	delete(p.inUse, s)
	p.mu.Unlock()
	if !healthy {
		s.c.Close()
		return
	}
	p.put(server, s)
}

// put returns a healthy socket to the pool or closes it when it is used up,
// too old, the pool is full or closed.
func (p *udpPool) put(server string, s *upSock) {
	s.uses++
	if s.uses >= sockMaxUses || time.Since(s.born) >= sockMaxAge {
		s.c.Close()
		return
	}
	now := time.Now()
	p.mu.Lock()
	if p.closed || len(p.idle[server]) >= poolIdlePerServer {
		p.mu.Unlock()
		s.c.Close()
		return
	}
	p.idle[server] = append(p.idle[server], s)
	if now.Sub(p.swept) >= sockMaxAge {
		p.sweep(now)
	}
	p.mu.Unlock()
}

// sweep closes idle sockets past their age, also those of upstreams no
// longer asked (a resolv.conf change), so the pool stays bounded by the
// upstreams in use. p.mu is held.
func (p *udpPool) sweep(now time.Time) {
	p.swept = now
	for k, l := range p.idle {
		kept := l[:0]
		for _, s := range l {
			if now.Sub(s.born) < sockMaxAge {
				kept = append(kept, s)
			} else {
				s.c.Close()
			}
		}
		clear(l[len(kept):])
		if len(kept) == 0 {
			delete(p.idle, k)
		} else {
			p.idle[k] = kept
		}
	}
}

// close closes every idle socket and wakes the exchanges in flight (their
// sockets are closed when released).
func (p *udpPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for k, l := range p.idle {
		for _, s := range l {
			s.c.Close()
		}
		delete(p.idle, k)
	}
	for s := range p.inUse {
		s.c.SetReadDeadline(time.Unix(1, 0))
	}
}

// exchange sends m (its ID is replaced by a fresh random one per socket
// tried) and returns the matching reply. A truncated reply is returned with
// its header and question only (the caller retries over TCP).
func (p *udpPool) exchange(deadline time.Time, m *mdns.Msg, server string) (*mdns.Msg, error) {
	b := udpBufs.Get().(*udpBuf)
	defer udpBufs.Put(b)
	var err error
	for try := 0; try <= mismatchRetries; try++ {
		m.Id = randID()
		q, perr := m.PackBuffer(b.q[:cap(b.q)])
		if perr != nil {
			return nil, fmt.Errorf("pack query: %w", perr)
		}
		if cap(q) <= 65535 && cap(q) > cap(b.q) {
			b.q = q[:0] // keep a grown buffer
		}
		var r *mdns.Msg
		r, err = p.exchangeOnce(deadline, q, b.r[:], m, server)
		if !errors.Is(err, errMismatch) {
			return r, err
		}
		p.mismatches.Add(1)
	}
	return nil, err
}

// exchangeOnce runs one query on one socket.
func (p *udpPool) exchangeOnce(deadline time.Time, q, rb []byte, m *mdns.Msg, server string) (*mdns.Msg, error) {
	s, err := p.get(server)
	if err != nil {
		return nil, err
	}
	healthy := false
	defer func() { p.release(server, s, healthy) }()
	if err := s.c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	if p.isClosed() { // close may have run before SetDeadline replaced its wake-up
		return nil, net.ErrClosed
	}
	if _, err := s.c.Write(q); err != nil {
		return nil, err
	}
	n, err := s.c.Read(rb)
	if err != nil {
		if p.isClosed() {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	rep := rb[:n]
	if _, err := checkReply(rep, q); err != nil {
		return nil, fmt.Errorf("%w: %v", errMismatch, err)
	}
	if rep[2]&0x02 != 0 { // TC: may end mid-record; the header is enough to retry over TCP
		r := new(mdns.Msg)
		r.Id, r.Response, r.Truncated, r.Rcode = m.Id, true, true, int(rep[3]&0x0f)
		r.Question = []mdns.Question{m.Question[0]}
		healthy = true
		return r, nil
	}
	r := new(mdns.Msg)
	if err := r.Unpack(rep); err != nil {
		// Matching ID and question but undecodable: a broken upstream, not
		// spoofing; the socket itself is fine.
		healthy = true
		return nil, fmt.Errorf("unpack reply: %w", err)
	}
	healthy = true
	return r, nil
}

func (p *udpPool) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// randID returns a transaction ID from crypto/rand.
func randID() uint16 {
	var b [2]byte
	rand.Read(b[:]) // never fails (Go ≥ 1.24 crashes the program instead)
	return binary.BigEndian.Uint16(b[:])
}

// checkReply checks that rep answers the query q (a message we packed: one
// question, uncompressed name): same ID, QR set, same opcode, exactly one
// question whose name equals q's ignoring ASCII case and whose type and
// class equal q's. It returns the offset after rep's question. It never
// reads outside rep or q.
func checkReply(rep, q []byte) (int, error) {
	const hdr = 12
	if len(rep) < hdr {
		return 0, fmt.Errorf("short reply (%d bytes)", len(rep))
	}
	if len(q) < hdr {
		return 0, errors.New("short query")
	}
	if rep[0] != q[0] || rep[1] != q[1] {
		return 0, errors.New("transaction ID differs")
	}
	if rep[2]&0x80 == 0 {
		return 0, errors.New("not a response")
	}
	if (rep[2]>>3)&0x0f != (q[2]>>3)&0x0f {
		return 0, errors.New("opcode differs")
	}
	if binary.BigEndian.Uint16(rep[4:]) != 1 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return 0, errors.New("question count is not 1")
	}
	i, j := hdr, hdr // offsets in rep and q
	for labels := 0; ; labels++ {
		if i >= len(rep) || j >= len(q) || labels > 127 {
			return 0, errors.New("question name truncated")
		}
		l := int(rep[i])
		if l != int(q[j]) {
			return 0, errors.New("question name differs")
		}
		if l&0xc0 != 0 {
			return 0, errors.New("compressed or extended label in the question")
		}
		i, j = i+1, j+1
		if l == 0 {
			break
		}
		if i+l > len(rep) || j+l > len(q) {
			return 0, errors.New("question name truncated")
		}
		for k := range l {
			if lowerASCII(rep[i+k]) != lowerASCII(q[j+k]) {
				return 0, errors.New("question name differs")
			}
		}
		i, j = i+l, j+l
	}
	if i+4 > len(rep) || j+4 > len(q) {
		return 0, errors.New("question type and class truncated")
	}
	if [4]byte(rep[i:i+4]) != [4]byte(q[j:j+4]) {
		return 0, errors.New("question type or class differs")
	}
	return i + 4, nil
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
