package router

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"

	"github.com/acrouter/acrouter/netstack"
)

// echoWriter is the part of *netstack.Stack the ICMP forwarder answers
// through.
type echoWriter interface {
	WriteEchoReply(req netstack.EchoRequest, payload []byte) error
	WriteICMPUnreachable(req netstack.EchoRequest, how netstack.Reject) error
	WriteICMPTimeExceeded(req netstack.EchoRequest) error
}

// icmpMode is how echo requests reach the host network.
type icmpMode uint8

const (
	icmpUnavailable icmpMode = iota // no ICMP socket allowed: requests are dropped, never faked
	icmpPingSocket                  // unprivileged ICMP sockets (Linux ping_group_range), one per flow
	icmpRawSocket                   // one shared raw socket (CAP_NET_RAW); identifiers allocated by us
)

func (m icmpMode) String() string {
	switch m {
	case icmpPingSocket:
		return "ping-socket"
	case icmpRawSocket:
		return "raw-socket"
	}
	return "unavailable"
}

// echoWriteTimeout bounds how long an echo request send may wait for
// socket buffer space.
const echoWriteTimeout = 20 * time.Millisecond

// ICMP message types (RFC 792; RFC 4443 §4 for ICMPv6).
const (
	icmpEchoReply    = 0
	icmpEchoRequest  = 8
	icmp6EchoRequest = 128
	icmp6EchoReply   = 129
)

// icmpKey identifies an echo flow: one client, destination and the client's
// echo identifier.
type icmpKey struct {
	client netip.Addr
	dest   netip.Addr
	id     uint16
}

// icmpFlow is one echo flow. In ping-socket mode it owns a socket (the
// kernel picks the identifier on the wire) and a reader goroutine; in
// raw-socket mode it owns the identifier rawID on the shared socket.
type icmpFlow struct {
	f       *flow
	key     icmpKey
	hostDst netip.Addr       // the address pinged on the host (key.dest unless mapped)
	conn    *icmp.PacketConn // ping-socket mode
	rawID   uint16           // raw-socket mode
	idle    *idleTimer

	mu   sync.Mutex
	tmpl netstack.EchoRequest // guarded by mu: the latest request, Payload cleared; replies are built from it
}

// icmpForwarder forwards echo requests for real and maps the replies back.
type icmpForwarder struct {
	r    *Router
	mode icmpMode
	raw  *icmp.PacketConn // raw-socket mode: shared socket
	raw6 *icmp.PacketConn // raw-socket mode: shared ICMPv6 socket, nil if the host has no IPv6
	// mapDst, if set (tests only, before the first request), maps a
	// client's destination to the address pinged on the host.
	mapDst func(netip.Addr) netip.Addr

	mu     sync.Mutex
	flows  map[icmpKey]*icmpFlow // guarded by mu
	byRaw  map[uint16]*icmpFlow  // guarded by mu; raw-socket mode: identifier on the wire → flow
	nextID uint16                // guarded by mu

	requests, replies, dropped atomic.Uint64
}

// newICMPForwarder finds out how this host lets us send echo requests:
// unprivileged ICMP sockets first, then a raw socket. When neither works it
// says so once and drops echo requests from then on (no fabricated replies;
// PEERS.md §3 pitfall 5).
func newICMPForwarder(r *Router) *icmpForwarder {
	x := &icmpForwarder{r: r, flows: make(map[icmpKey]*icmpFlow), byRaw: make(map[uint16]*icmpFlow)}
	c, perr := icmp.ListenPacket("udp4", "0.0.0.0")
	if perr == nil {
		c.Close()
		x.mode = icmpPingSocket
		return x
	}
	raw, rerr := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if rerr == nil {
		x.mode = icmpRawSocket
		x.raw = raw
		r.wg.Add(1) // before any Close: r.wg cannot be waited on yet
		go x.rawReadLoop(raw, icmpEchoReply)
		// The kernel fills in ICMPv6 checksums on raw ICMPv6 sockets
		// (RFC 3542 §3.1).
		if raw6, err := icmp.ListenPacket("ip6:ipv6-icmp", "::"); err == nil {
			x.raw6 = raw6
			r.wg.Add(1)
			go x.rawReadLoop(raw6, icmp6EchoReply)
		}
		return x
	}
	r.log.Warn("router: ICMP echo forwarding unavailable: this host allows neither unprivileged ICMP sockets nor raw sockets; pings through the router will get no reply. "+
		"To enable it, let the process's group send pings (sysctl net.ipv4.ping_group_range, currently "+pingGroupRange()+") or grant CAP_NET_RAW",
		"ping_socket_err", perr.Error(), "raw_socket_err", rerr.Error())
	return x
}

func pingGroupRange() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ping_group_range")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b)), " ")
}

// close stops the shared raw socket (flows are ended by Router.Close).
func (x *icmpForwarder) close() {
	if x.raw != nil {
		x.raw.Close()
	}
	if x.raw6 != nil {
		x.raw6.Close()
	}
}

// onEcho handles an echo request to a non-local address. It is called on
// the stack's packet path and does not block: socket sends of a datagram
// socket complete at once or fail.
func (r *Router) onEcho(req netstack.EchoRequest) {
	x := r.icmp
	if x == nil || x.mode == icmpUnavailable {
		if x != nil {
			x.dropped.Add(1)
		}
		return
	}
	if req.Src.Is4() != req.Dst.Is4() || req.Dst.Is6() && x.mode == icmpRawSocket && x.raw6 == nil {
		x.dropped.Add(1)
		return
	}
	if !r.enter() {
		return
	}
	defer r.wg.Done()
	if req.TTL <= 1 {
		// We are a hop: a request arriving with TTL 1 expires here
		// (this is what makes traceroute -I show the router).
		_ = r.echo.WriteICMPTimeExceeded(req)
		return
	}
	key := icmpKey{client: req.Src, dest: req.Dst, id: req.ID}
	x.mu.Lock()
	fl := x.flows[key]
	x.mu.Unlock()
	if fl != nil && fl.f.ctx.Err() != nil {
		fl = nil // ending (idle, evicted): start a new flow
	}
	if fl == nil {
		fl = x.newFlow(req, key)
		if fl == nil {
			return
		}
	}
	fl.mu.Lock()
	fl.tmpl = req
	fl.tmpl.Payload = nil
	fl.mu.Unlock()
	x.send(fl, req)
}

// newFlow admits and opens a new echo flow, or answers the refusal.
func (x *icmpForwarder) newFlow(req netstack.EchoRequest, key icmpKey) *icmpFlow {
	r := x.r
	client, dest := netip.AddrPortFrom(req.Src, req.ID), netip.AddrPortFrom(req.Dst, 0)
	if ok, _ := r.acl.Load().check(ProtoICMP, req.Src, dest); !ok {
		r.refuse(RefusedACL, ProtoICMP, client, dest, nil)
		_ = r.echo.WriteICMPUnreachable(req, netstack.RejectAdminProhibited)
		return nil
	}
	f, _, ok := r.newFlow(ProtoICMP, client, dest)
	if !ok {
		_ = r.echo.WriteICMPUnreachable(req, netstack.RejectAdminProhibited)
		return nil
	}
	fl := &icmpFlow{f: f, key: key, hostDst: r.hostAddr(req.Dst)} // loopback alias → 127.0.0.1
	if x.mapDst != nil {
		fl.hostDst = x.mapDst(req.Dst)
	}
	if err := x.open(fl); err != nil {
		why, how := classifyDialError(err)
		r.discard(f)
		r.refuse(why, ProtoICMP, client, dest, err)
		if how == netstack.RejectRST {
			how = netstack.RejectHostUnreachable
		}
		_ = r.echo.WriteICMPUnreachable(req, how)
		return nil
	}
	x.mu.Lock()
	if old := x.flows[key]; old != nil && old.f.ctx.Err() == nil {
		// Lost a race with a concurrent first request of the same flow.
		x.mu.Unlock()
		x.unregister(fl)
		if fl.conn != nil {
			fl.conn.Close()
		}
		r.discard(f)
		return old
	}
	x.flows[key] = fl
	x.mu.Unlock()
	r.opened(f)
	fl.idle = r.startIdleTimer(f, r.cfg.ICMPIdleTimeout)
	if x.mode == icmpPingSocket {
		stop := r.onEnd(f, func() { fl.conn.Close() })
		r.wg.Add(1) // inside onEcho's enter section
		go func() {
			defer r.wg.Done()
			x.pingReadLoop(fl)
			stop()
			x.end(fl)
		}()
	} else {
		r.onEnd(f, func() { x.end(fl) })
	}
	return fl
}

// open gives fl its socket (ping mode) or identifier (raw mode).
func (x *icmpForwarder) open(fl *icmpFlow) error {
	if x.mode == icmpPingSocket {
		network, addr := "udp4", "0.0.0.0"
		if fl.hostDst.Is6() {
			network, addr = "udp6", "::"
		}
		c, err := icmp.ListenPacket(network, addr)
		if err != nil {
			return fmt.Errorf("ICMP socket: %w", err)
		}
		fl.conn = c
		return nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for range 1 << 16 {
		x.nextID++
		if x.byRaw[x.nextID] == nil {
			fl.rawID = x.nextID
			x.byRaw[fl.rawID] = fl
			return nil
		}
	}
	return errors.New("all 65536 ICMP identifiers in use")
}

func (x *icmpForwarder) unregister(fl *icmpFlow) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.flows[fl.key] == fl {
		delete(x.flows, fl.key)
	}
	if x.mode == icmpRawSocket && x.byRaw[fl.rawID] == fl {
		delete(x.byRaw, fl.rawID)
	}
}

// end finishes an echo flow once its socket is closed (or, in raw mode, its
// identifier released).
func (x *icmpForwarder) end(fl *icmpFlow) {
	x.unregister(fl)
	if fl.idle != nil {
		fl.idle.stop()
	}
	x.r.finish(fl.f, "closed")
}

// send forwards one echo request.
func (x *icmpForwarder) send(fl *icmpFlow, req netstack.EchoRequest) {
	bp := udpBufPool.Get().(*[]byte)
	defer udpBufPool.Put(bp)
	if len(req.Payload) > len(*bp)-8 {
		x.dropped.Add(1)
		return
	}
	id := req.ID
	if x.mode == icmpRawSocket {
		id = fl.rawID
	} // ping sockets: the kernel puts the socket's identifier on the wire
	typ := uint8(icmpEchoRequest)
	if fl.hostDst.Is6() {
		typ = icmp6EchoRequest // the kernel fills in the ICMPv6 checksum
	}
	msg := marshalEcho((*bp)[:0], typ, id, req.Seq, req.Payload)
	// onEcho runs on the stack's packet path: never wait for socket buffer
	// space for long (a full buffer drops the request, as a router would).
	conn := fl.conn
	if x.mode == icmpRawSocket {
		conn = x.raw
		if fl.hostDst.Is6() {
			conn = x.raw6
		}
	}
	conn.SetWriteDeadline(time.Now().Add(echoWriteTimeout))
	// Counted before sending (a reply may be relayed before WriteTo
	// returns) and taken back if the send fails.
	n := uint64(len(req.Payload))
	fl.f.touch(x.r.now())
	fl.f.bytesOut.Add(n)
	fl.f.packetsOut.Add(1)
	x.requests.Add(1)
	var err error
	if x.mode == icmpPingSocket {
		_, err = fl.conn.WriteTo(msg, &net.UDPAddr{IP: fl.hostDst.AsSlice()})
	} else {
		_, err = conn.WriteTo(msg, &net.IPAddr{IP: fl.hostDst.AsSlice()})
	}
	if err != nil {
		fl.f.bytesOut.Add(-n)
		fl.f.packetsOut.Add(^uint64(0))
		x.requests.Add(^uint64(0))
		x.dropped.Add(1)
		x.r.rlog.Log(slog.LevelDebug, "icmp-send", "router: ICMP echo send failed",
			slog.String("dest", req.Dst.String()), slog.String("err", err.Error()))
	}
}

// pingReadLoop relays the replies arriving on fl's ping socket until it is
// closed.
func (x *icmpForwarder) pingReadLoop(fl *icmpFlow) {
	bp := udpBufPool.Get().(*[]byte)
	defer udpBufPool.Put(bp)
	for {
		n, _, err := fl.conn.ReadFrom(*bp)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || fl.f.ctx.Err() != nil {
				return
			}
			continue // an ICMP error for one request; the socket lives on
		}
		x.reply(fl, (*bp)[:n])
	}
}

// rawReadLoop reads every ICMP message the host receives on raw and relays
// the echo replies (type replyType) whose identifier belongs to one of our
// flows.
func (x *icmpForwarder) rawReadLoop(raw *icmp.PacketConn, replyType uint8) {
	defer x.r.wg.Done()
	bp := udpBufPool.Get().(*[]byte)
	defer udpBufPool.Put(bp)
	for {
		n, peer, err := raw.ReadFrom(*bp)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || x.r.ctx.Err() != nil {
				return
			}
			continue
		}
		msg := (*bp)[:n]
		if len(msg) < 8 || msg[0] != replyType {
			continue
		}
		id := uint16(msg[4])<<8 | uint16(msg[5])
		x.mu.Lock()
		fl := x.byRaw[id]
		x.mu.Unlock()
		if fl == nil {
			continue
		}
		if ip, ok := peer.(*net.IPAddr); !ok || addrFromIP(ip.IP) != fl.hostDst {
			continue
		}
		x.reply(fl, msg)
	}
}

func addrFromIP(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// reply sends an echo reply message received for fl to the client.
func (x *icmpForwarder) reply(fl *icmpFlow, msg []byte) {
	want := uint8(icmpEchoReply)
	if fl.hostDst.Is6() {
		want = icmp6EchoReply
	}
	if len(msg) < 8 || msg[0] != want || msg[1] != 0 {
		return
	}
	fl.mu.Lock()
	t := fl.tmpl
	fl.mu.Unlock()
	t.Seq = uint16(msg[6])<<8 | uint16(msg[7])
	payload := msg[8:]
	fl.f.touch(x.r.now())
	fl.f.bytesIn.Add(uint64(len(payload)))
	fl.f.packetsIn.Add(1)
	x.replies.Add(1)
	if err := x.r.echo.WriteEchoReply(t, payload); err != nil {
		x.dropped.Add(1)
	}
}

// marshalEcho appends an ICMP echo message (RFC 792) to b.
func marshalEcho(b []byte, typ uint8, id, seq uint16, payload []byte) []byte {
	b = append(b, typ, 0, 0, 0, byte(id>>8), byte(id), byte(seq>>8), byte(seq))
	b = append(b, payload...)
	cs := checksum(b)
	b[2], b[3] = byte(cs>>8), byte(cs)
	return b
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var s uint32
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
