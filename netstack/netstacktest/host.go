package netstacktest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/acrouter/acrouter/netstack"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const hostNIC = tcpip.NICID(1)

// Host is a client machine on the hub: a gVisor stack with one Ethernet NIC.
// It deliberately uses gVisor's stock channel and ethernet link endpoints,
// not netstack's, so tests do not check netstack's framing against itself.
type Host struct {
	s      *stack.Stack
	ch     *channel.Endpoint
	link   netstack.Link
	addr   tcpip.Address
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	pingID atomic.Uint32
	ndp    *ndpEvents // nil unless IPv6 is on (NewDualStackHost)
}

// NewHost starts a client stack on link with Ethernet address mac, address
// prefix (e.g. 192.168.30.10/24; the subnet is on-link) and default gateway
// gw. The MTU is 1500. Close closes link if it implements io.Closer.
func NewHost(link netstack.Link, mac net.HardwareAddr, prefix netip.Prefix, gw netip.Addr) (*Host, error) {
	return newHost(link, mac, prefix, gw, nil)
}

func newHost(link netstack.Link, mac net.HardwareAddr, prefix netip.Prefix, gw netip.Addr, ndp *ndpEvents) (*Host, error) {
	if len(mac) != 6 || !prefix.Addr().Is4() || !gw.Is4() {
		return nil, errors.New("netstacktest: host needs a 6-byte MAC and IPv4 addresses")
	}
	opts := stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	}
	if ndp != nil {
		opts.NetworkProtocols = append(opts.NetworkProtocols, ipv6Host(ndp))
		opts.TransportProtocols = append(opts.TransportProtocols, icmp.NewProtocol6)
	}
	s := stack.New(opts)
	if ndp != nil {
		ndp.s = s
	}
	ch := channel.New(1024, 1500+header.EthernetMinimumSize, tcpip.LinkAddress(mac))
	if err := s.CreateNIC(hostNIC, ethernet.New(ch)); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("netstacktest: create NIC: %v", err)
	}
	addr := tcpip.AddrFrom4(prefix.Addr().As4())
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr, PrefixLen: prefix.Bits()}}
	if err := s.AddProtocolAddress(hostNIC, pa, stack.AddressProperties{}); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("netstacktest: add address: %v", err)
	}
	subnet := pa.AddressWithPrefix.Subnet()
	s.SetRouteTable([]tcpip.Route{
		{Destination: subnet, NIC: hostNIC},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gw.As4()), NIC: hostNIC},
	})
	ctx, cancel := context.WithCancel(context.Background())
	h := &Host{s: s, ch: ch, link: link, addr: addr, cancel: cancel, ndp: ndp}
	h.wg.Add(2)
	go h.writeLoop(ctx)
	go h.readLoop()
	return h, nil
}

func (h *Host) writeLoop(ctx context.Context) {
	defer h.wg.Done()
	for {
		pkt := h.ch.ReadContext(ctx)
		if pkt == nil {
			return
		}
		v := pkt.ToView()
		pkt.DecRef()
		err := h.link.WriteFrames([][]byte{v.AsSlice()})
		v.Release()
		if err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (h *Host) readLoop() {
	defer h.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := h.link.ReadFrame(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(buf[:n])})
		h.ch.InjectInbound(0, pkt) // the ethernet wrapper parses the header
		pkt.DecRef()
	}
}

// Addr returns the host's address.
func (h *Host) Addr() netip.Addr { return netip.AddrFrom4(h.addr.As4()) }

// Stack returns the host's gVisor stack for tests that need more.
func (h *Host) Stack() *stack.Stack { return h.s }

// Close stops the host stack, closes its link if that implements io.Closer,
// and waits for its goroutines.
func (h *Host) Close() error {
	h.once.Do(func() {
		h.s.Close()
		h.cancel()
		if c, ok := h.link.(io.Closer); ok {
			_ = c.Close()
		}
		h.wg.Wait()
		h.s.Wait()
		h.ch.Close()
	})
	return nil
}

func full(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: hostNIC, Addr: tcpip.AddrFromSlice(ap.Addr().Unmap().AsSlice()), Port: ap.Port()}
}

// proto is the network protocol for reaching a.
func proto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Unmap().Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// DialTCP connects to dst (through the gateway unless dst is on-link). A
// refused or unreachable connection returns an error wrapping the matching
// syscall.Errno (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ...).
func (h *Host) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var wq waiter.Queue
	ep, terr := h.s.NewEndpoint(tcp.ProtocolNumber, proto(dst.Addr()), &wq)
	if terr != nil {
		return nil, fmt.Errorf("netstacktest: dial %v: %v", dst, terr)
	}
	we, notify := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	terr = ep.Connect(full(dst))
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, fmt.Errorf("netstacktest: dial %v: %w", dst, ctx.Err())
		case <-notify:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(dst), Err: errnoOf(terr)}
	}
	return gonet.NewTCPConn(&wq, ep), nil
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
	case *tcpip.ErrConnectionAborted:
		return syscall.ECONNABORTED
	}
	return errors.New(e.String())
}

// DialUDP returns a connected UDP socket to dst from an ephemeral port.
func (h *Host) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	c, err := gonet.DialUDP(h.s, nil, ptr(full(dst)), proto(dst.Addr()))
	if err != nil {
		return nil, fmt.Errorf("netstacktest: dial udp %v: %w", dst, err)
	}
	return c, nil
}

// ListenUDP opens a UDP socket on the host's address (port 0: ephemeral),
// with broadcast enabled (IPv4; an IPv6 local address, e.g. [::]:546,
// opens an IPv6 socket), for tests that exchange datagrams with the router
// address or broadcast.
func (h *Host) ListenUDP(local netip.AddrPort) (net.PacketConn, error) {
	var wq waiter.Queue
	pn := ipv4.ProtocolNumber
	if local.Addr().Is6() && !local.Addr().Is4In6() {
		pn = ipv6.ProtocolNumber
	}
	ep, terr := h.s.NewEndpoint(udp.ProtocolNumber, pn, &wq)
	if terr != nil {
		return nil, fmt.Errorf("netstacktest: listen udp: %v", terr)
	}
	ep.SocketOptions().SetBroadcast(pn == ipv4.ProtocolNumber)
	if pn == ipv6.ProtocolNumber { // multicast (e.g. to ff02::1:2) leaves through the one NIC
		if terr := ep.SetSockOpt(&tcpip.MulticastInterfaceOption{NIC: hostNIC}); terr != nil {
			ep.Close()
			return nil, fmt.Errorf("netstacktest: listen udp: %v", terr)
		}
	}
	fa := tcpip.FullAddress{NIC: hostNIC, Port: local.Port()}
	if local.Addr().IsValid() && !local.Addr().IsUnspecified() {
		fa.Addr = tcpip.AddrFromSlice(local.Addr().Unmap().AsSlice())
	}
	if terr := ep.Bind(fa); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("netstacktest: listen udp %v: %v", local, terr)
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

func ptr[T any](v T) *T { return &v }

// Ping sends one ICMP echo request to dst with payload and waits for the
// matching reply (nil) or ctx. gVisor's ICMP sockets ignore ICMP errors, so
// an unreachable answer is not reported; test those at the frame level.
func (h *Host) Ping(ctx context.Context, dst netip.Addr, payload []byte) error {
	var wq waiter.Queue
	ep, terr := h.s.NewEndpoint(icmp.ProtocolNumber4, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return fmt.Errorf("netstacktest: ping: %v", terr)
	}
	defer ep.Close()
	we, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	if terr := ep.Connect(tcpip.FullAddress{NIC: hostNIC, Addr: tcpip.AddrFrom4(dst.As4())}); terr != nil {
		return fmt.Errorf("netstacktest: ping %v: %v", dst, terr)
	}
	seq := uint16(h.pingID.Add(1))
	msg := make([]byte, header.ICMPv4MinimumSize+len(payload))
	icmpHdr := header.ICMPv4(msg)
	icmpHdr.SetType(header.ICMPv4Echo)
	icmpHdr.SetSequence(seq)
	copy(msg[header.ICMPv4MinimumSize:], payload)
	if _, terr := ep.Write(&bytesReader{b: msg}, tcpip.WriteOptions{}); terr != nil {
		return fmt.Errorf("netstacktest: ping %v: %v", dst, terr)
	}
	for i := 0; i < 64; i++ { // bounded: ignore at most 64 unrelated replies
		var out bytesWriter
		_, terr := ep.Read(&out, tcpip.ReadOptions{})
		switch terr.(type) {
		case nil:
			rep := header.ICMPv4(out.b)
			if len(rep) >= header.ICMPv4MinimumSize && rep.Type() == header.ICMPv4EchoReply && rep.Sequence() == seq {
				if string(rep.Payload()) != string(payload) {
					return fmt.Errorf("netstacktest: ping %v: reply payload differs", dst)
				}
				return nil
			}
			continue
		case *tcpip.ErrWouldBlock:
		default:
			return &net.OpError{Op: "ping", Net: "ip4:icmp", Addr: &net.IPAddr{IP: dst.AsSlice()}, Err: errnoOf(terr)}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("netstacktest: ping %v: %w", dst, ctx.Err())
		case <-notify:
		}
	}
	return fmt.Errorf("netstacktest: ping %v: no matching reply among 64 packets", dst)
}

type bytesReader struct{ b []byte }

func (r *bytesReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func (r *bytesReader) Len() int { return len(r.b) }

type bytesWriter struct{ b []byte }

func (w *bytesWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
