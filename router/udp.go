package router

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/acrouter/acrouter/netstack"
)

// udpBufSize holds the largest UDP payload (65507 over IPv4) with room to
// spare, so no datagram is ever truncated. Pooled; see tcpBufSize for who
// holds one while idle.
const udpBufSize = 64 << 10

var udpBufPool = sync.Pool{New: func() any { b := make([]byte, udpBufSize); return &b }}

// udpRequest is the part of *netstack.UDPRequest the router uses.
type udpRequest interface {
	Accept() (net.Conn, error)
	Reject(how netstack.Reject)
}

func (r *Router) onUDP(req *netstack.UDPRequest) { r.handleUDP(req.Src, req.Dst, req) }

// handleUDP decides the first datagram of a (src, dst) flow: ACL, limits,
// a connected host socket for the flow, then forwarding both ways until the
// flow is idle for UDPIdleTimeout (DNSIdleTimeout for port 53). It runs in
// the stack's per-request goroutine and returns once the copies are
// started (tcpCopy, with datagram semantics): an idle flow holds no
// datagram buffer, and its client→host direction no goroutine.
func (r *Router) handleUDP(src, dst netip.AddrPort, req udpRequest) {
	if !r.enter() {
		r.refused[RefusedClosing].Add(1)
		req.Reject(netstack.RejectPortUnreachable)
		return
	}
	defer r.wg.Done()
	if ok, _ := r.acl.Load().check(ProtoUDP, src.Addr(), dst); !ok {
		r.refuse(RefusedACL, ProtoUDP, src, dst, nil)
		req.Reject(netstack.RejectAdminProhibited)
		return
	}
	f, _, ok := r.newFlow(ProtoUDP, src, dst)
	if !ok {
		req.Reject(netstack.RejectAdminProhibited)
		return
	}
	ctx, cancel := r.flowDialContext(f)
	host, err := r.dial(ctx, "udp", dst.String())
	cancel()
	if err != nil {
		why, how := classifyDialError(err)
		if f.ctx.Err() != nil {
			why = RefusedClosing
		}
		r.discard(f)
		r.refuse(why, ProtoUDP, src, dst, err)
		req.Reject(how)
		return
	}
	client, err := req.Accept()
	if err != nil {
		host.Close()
		r.discard(f)
		r.refuse(r.acceptRefusal(), ProtoUDP, src, dst, err)
		return
	}
	r.opened(f)
	timeout := r.cfg.UDPIdleTimeout
	if dst.Port() == 53 {
		timeout = r.cfg.DNSIdleTimeout
	}
	r.startSplice(&tcpSplice{r: r, f: f, client: client, host: host, datagram: true}, timeout)
}

// transientUDPError reports errors that concern one datagram only. A
// connected UDP socket reports an ICMP port unreachable for an earlier
// datagram as ECONNREFUSED on the next call; the flow goes on.
func transientUDPError(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EMSGSIZE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH)
}
