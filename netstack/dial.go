package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// This file lets the router open connections itself (inbound port
// forwarding: a host-side connection is carried to a hub client) and answer
// ARP for extra addresses (the router's host-loopback alias).

// Prefix returns Config.Addr: the router address and its on-link subnet.
func (st *Stack) Prefix() netip.Prefix { return st.cfg.Addr }

// checkDialDst reports why dst cannot be dialed from the router address:
// it must be a host address of the hub subnet other than the router's own.
func (st *Stack) checkDialDst(network string, dst netip.AddrPort) error {
	a := dst.Addr().Unmap()
	switch {
	case !a.Is4():
		return fmt.Errorf("netstack: dial %s %v: not an IPv4 address", network, dst)
	case dst.Port() == 0:
		return fmt.Errorf("netstack: dial %s %v: port 0", network, dst)
	case !st.pfx.Contains(a):
		return fmt.Errorf("netstack: dial %s %v: not on the hub subnet %v", network, dst, st.pfx)
	case a == st.cfg.Addr.Addr():
		return fmt.Errorf("netstack: dial %s %v: that is the router's own address", network, dst)
	case a == st.pfx.Addr() || a == broadcastOf(st.pfx):
		return fmt.Errorf("netstack: dial %s %v: the subnet's network or broadcast address", network, dst)
	case st.closed.Load():
		return fmt.Errorf("netstack: dial %s %v: %w", network, dst, net.ErrClosed)
	}
	return nil
}

// DialTCP connects from the router address (an ephemeral port) to dst, a
// host on the hub subnet (not the router itself), and returns the
// connection with the same keepalive settings as accepted flows. A refused
// or unreachable connection returns an error wrapping the matching
// syscall.Errno (ECONNREFUSED, EHOSTUNREACH when the address does not answer
// ARP, ETIMEDOUT, ...), so callers can classify it like a host socket's;
// ctx bounds the whole attempt. Connections fail once the Stack is closed.
func (st *Stack) DialTCP(ctx context.Context, dst netip.AddrPort) (TCPConn, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if err := st.checkDialDst("tcp", dst); err != nil {
		return nil, err
	}
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, fmt.Errorf("netstack: dial tcp %v: %v", dst, terr)
	}
	we, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	// Bind to the router address: with spoofing on, an unbound endpoint
	// could otherwise pick any source.
	if terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Addr: st.addr}); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("netstack: dial tcp %v: bind %v: %v", dst, st.cfg.Addr.Addr(), terr)
	}
	terr = ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()})
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, fmt.Errorf("netstack: dial tcp %v: %w", dst, ctx.Err())
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dst), Err: errnoOf(terr)}
	}
	setKeepalive(ep)
	return newTCPConn(&wq, ep), nil
}

// DialUDP returns a UDP socket on the router address (an ephemeral port)
// connected to dst, a host on the hub subnet: Write sends a datagram to dst,
// Read returns datagrams from dst only.
func (st *Stack) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if err := st.checkDialDst("udp", dst); err != nil {
		return nil, err
	}
	c, err := gonet.DialUDP(st.s,
		&tcpip.FullAddress{NIC: nicID, Addr: st.addr},
		&tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()},
		ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: dial udp %v: %w", dst, err)
	}
	return c, nil
}

// errnoOf maps a gVisor error to the errno a kernel socket would report.
func errnoOf(e tcpip.Error) error {
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable, *tcpip.ErrNoNet:
		return syscall.ENETUNREACH
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrConnectionAborted, *tcpip.ErrAborted:
		return syscall.ECONNABORTED
	case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive:
		return net.ErrClosed
	}
	return errors.New(e.String())
}

// AddProxyARP makes the stack answer ARP requests for ip, an address of
// the hub subnet other than the router's, with the router's MAC, so that
// hub clients send frames for ip to the router (which hands the flows to
// ip to the handlers, as for any foreign address). The router uses it for
// its host-loopback alias. Adding an address twice is fine.
func (st *Stack) AddProxyARP(ip netip.Addr) error {
	ip = ip.Unmap()
	if !ip.Is4() || !st.pfx.Contains(ip) || ip == st.cfg.Addr.Addr() || ip == st.pfx.Addr() || ip == broadcastOf(st.pfx) {
		return fmt.Errorf("netstack: proxy ARP for %v: not a host address in %v other than the router", ip, st.pfx)
	}
	a := tcpip.AddrFrom4(ip.As4())
	e := st.ep
	e.proxyMu.Lock()
	defer e.proxyMu.Unlock()
	old := e.proxyARP.Load()
	var cur []tcpip.Address
	if old != nil {
		cur = *old
	}
	if slices.Contains(cur, a) {
		return nil
	}
	next := append(slices.Clone(cur), a)
	e.proxyARP.Store(&next)
	return nil
}

// RemoveProxyARP stops answering ARP for ip (see AddProxyARP).
func (st *Stack) RemoveProxyARP(ip netip.Addr) {
	a := tcpip.AddrFrom4(ip.Unmap().As4())
	e := st.ep
	e.proxyMu.Lock()
	defer e.proxyMu.Unlock()
	old := e.proxyARP.Load()
	if old == nil {
		return
	}
	next := slices.DeleteFunc(slices.Clone(*old), func(x tcpip.Address) bool { return x == a })
	e.proxyARP.Store(&next)
}

// isProxyARP reports whether a is one of the AddProxyARP addresses. It
// runs for ARP frames only (filterARP, fixOutboundARP).
func (e *linkEndpoint) isProxyARP(a tcpip.Address) bool {
	p := e.proxyARP.Load()
	return p != nil && slices.Contains(*p, a)
}
