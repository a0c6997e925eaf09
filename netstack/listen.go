package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// dhcpServerPort is the BOOTP/DHCP server port (RFC 2131 §4.1).
const dhcpServerPort = 67

// ListenTCP listens on the router address and port. Accepted connections
// implement TCPConn (netstack's own conn type, as TCPRequest.Accept's).
func (st *Stack) ListenTCP(port uint16) (net.Listener, error) {
	if st.closed.Load() {
		return nil, fmt.Errorf("netstack: listen tcp :%d: %w", port, net.ErrClosed)
	}
	l, err := st.listenTCP(tcpip.FullAddress{NIC: nicID, Addr: st.addr, Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen tcp %v:%d: %w", st.cfg.Addr.Addr(), port, err)
	}
	return l, nil
}

// ListenUDP opens a UDP socket on the router address and port. ReadFrom
// returns *net.UDPAddr peers; WriteTo takes *net.UDPAddr.
func (st *Stack) ListenUDP(port uint16) (net.PacketConn, error) {
	if st.closed.Load() {
		return nil, fmt.Errorf("netstack: listen udp :%d: %w", port, net.ErrClosed)
	}
	c, err := gonet.DialUDP(st.s, &tcpip.FullAddress{NIC: nicID, Addr: st.addr, Port: port}, nil, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen udp %v:%d: %w", st.cfg.Addr.Addr(), port, err)
	}
	return c, nil
}

// ListenDHCP opens the DHCP server socket on port 67: it receives
// broadcasts (from 0.0.0.0:68 to 255.255.255.255:67) and unicast datagrams
// to the router address, and WriteTo 255.255.255.255:68 (or a unicast
// address) sends from the router address. Unicast datagrams to port 67 of
// other addresses still go to the UDP handler. ReadFrom honours read
// deadlines; Close waits for the socket's reader goroutines. Only one may be
// open at a time.
func (st *Stack) ListenDHCP() (net.PacketConn, error) {
	if st.closed.Load() {
		return nil, fmt.Errorf("netstack: listen dhcp: %w", net.ErrClosed)
	}
	return st.listenDHCP()
}

// ProbeAddr reports whether ip (which must be inside Config.Addr's subnet and
// not the router address) answers ARP on the hub: a neighbour-cache entry in
// the reachable state (confirmed within the last ~30 s) counts as an answer;
// otherwise it sends RFC 5227 ARP probes (sender address 0.0.0.0; two, 100
// ms apart) and waits for any ARP packet from ip until ctx ends, then
// returns an error wrapping ctx.Err(). See probe.go.
func (st *Stack) ProbeAddr(ctx context.Context, ip netip.Addr) (inUse bool, err error) {
	return st.probeAddr4(ctx, ip)
}

// ListenTCP6 opens a TCP listener on the router's IPv6 address (Config.Addr6)
// and port.
func (st *Stack) ListenTCP6(port uint16) (net.Listener, error) {
	if st.v6 == nil {
		return nil, fmt.Errorf("netstack: listen tcp6 :%d: IPv6 is off (no Addr6)", port)
	}
	if st.closed.Load() {
		return nil, fmt.Errorf("netstack: listen tcp6 :%d: %w", port, net.ErrClosed)
	}
	l, err := st.listenTCP(tcpip.FullAddress{NIC: nicID, Addr: st.v6.addr, Port: port}, ipv6.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen tcp [%v]:%d: %w", st.cfg.Addr6.Addr(), port, err)
	}
	return l, nil
}

// ListenUDP6 opens a UDP socket on the router's IPv6 address and port.
func (st *Stack) ListenUDP6(port uint16) (net.PacketConn, error) {
	if st.v6 == nil {
		return nil, fmt.Errorf("netstack: listen udp6 :%d: IPv6 is off (no Addr6)", port)
	}
	if st.closed.Load() {
		return nil, fmt.Errorf("netstack: listen udp6 :%d: %w", port, net.ErrClosed)
	}
	c, err := gonet.DialUDP(st.s, &tcpip.FullAddress{NIC: nicID, Addr: st.v6.addr, Port: port}, nil, ipv6.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen udp [%v]:%d: %w", st.cfg.Addr6.Addr(), port, err)
	}
	return c, nil
}

// DHCPv6ServerPort is the port DHCPv6 servers listen on (RFC 8415 §7.2).
const DHCPv6ServerPort = 547

// ListenDHCPv6 opens the DHCPv6 server socket: UDP port 547 on every router
// IPv6 address, receiving datagrams to All_DHCP_Relay_Agents_and_Servers
// (ff02::1:2) from clients' link-local addresses. WriteTo a client's
// link-local address sends from the router's link-local address.
func (st *Stack) ListenDHCPv6() (net.PacketConn, error) {
	if st.v6 == nil {
		return nil, fmt.Errorf("netstack: listen dhcpv6: IPv6 is off (no Addr6)")
	}
	if st.closed.Load() {
		return nil, fmt.Errorf("netstack: listen dhcpv6: %w", net.ErrClosed)
	}
	c, err := gonet.DialUDP(st.s, &tcpip.FullAddress{NIC: nicID, Port: DHCPv6ServerPort}, nil, ipv6.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen dhcpv6 [::]:%d: %w", DHCPv6ServerPort, err)
	}
	return c, nil
}

// listenBacklog is the accept queue of ListenTCP's listeners (gonet's).
const listenBacklog = 4096

// tcpListener is the net.Listener of ListenTCP and ListenTCP6: like gonet's
// TCPListener, but its connections are tcpConns (no buffer of the
// caller's kept by a write, readiness without a buffer).
type tcpListener struct {
	ep     tcpip.Endpoint
	wq     *waiter.Queue
	once   sync.Once
	closed chan struct{}
}

func (st *Stack) listenTCP(addr tcpip.FullAddress, network tcpip.NetworkProtocolNumber) (*tcpListener, error) {
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(tcp.ProtocolNumber, network, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	if terr := ep.Bind(addr); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("bind: %s", terr)
	}
	if terr := ep.Listen(listenBacklog); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("listen: %s", terr)
	}
	return &tcpListener{ep: ep, wq: &wq, closed: make(chan struct{})}, nil
}

// Accept waits for the next connection; after Close it returns an error
// wrapping net.ErrClosed.
func (l *tcpListener) Accept() (net.Conn, error) {
	n, wq, terr := l.ep.Accept(nil)
	if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
		entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents)
		l.wq.EventRegister(&entry)
		defer l.wq.EventUnregister(&entry)
		for {
			n, wq, terr = l.ep.Accept(nil)
			if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
				break
			}
			select {
			case <-l.closed:
				return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
			case <-ready:
			}
		}
	}
	if terr != nil {
		select {
		case <-l.closed:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
		default:
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: errors.New(terr.String())}
	}
	return newTCPConn(wq, n), nil
}

// Close stops listening; a waiting Accept returns.
func (l *tcpListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	l.ep.Close()
	return nil
}

func (l *tcpListener) Addr() net.Addr {
	a, err := l.ep.GetLocalAddress()
	if err != nil {
		return nil
	}
	return &net.TCPAddr{IP: net.IP(a.Addr.AsSlice()), Port: int(a.Port)}
}
