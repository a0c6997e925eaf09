package netstacktest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// NewDualStackHost is NewHost plus IPv6 configured the way a client on the
// hub configures it: gVisor's own host implementation of Neighbor Discovery
// (a link-local address, Router Solicitations, default router, on-link
// prefix and a SLAAC address from the router's advertisements). NDP returns
// what the host learned.
func NewDualStackHost(link netstack.Link, mac net.HardwareAddr, prefix netip.Prefix, gw netip.Addr) (*Host, error) {
	return newHost(link, mac, prefix, gw, &ndpEvents{changed: make(chan struct{})})
}

func ipv6Host(d *ndpEvents) stack.NetworkProtocolFactory {
	return ipv6.NewProtocolWithOptions(ipv6.Options{
		NDPConfigs: ipv6.NDPConfigurations{
			MaxRtrSolicitations:     3,
			RtrSolicitationInterval: time.Second,
			HandleRAs:               ipv6.HandlingRAsEnabledWhenForwardingDisabled,
			DiscoverDefaultRouters:  true,
			DiscoverOnLinkPrefixes:  true,
			AutoGenGlobalAddresses:  true,
		},
		AutoGenLinkLocal: true,
		NDPDisp:          d,
	})
}

// NDPState is what a dual-stack host learned from Router Advertisements.
type NDPState struct {
	Addrs          []netip.Prefix // SLAAC addresses
	DefaultRouters []netip.Addr   // from the router lifetime (a ::/0 route)
	OnLinkPrefixes []netip.Prefix
	RDNSS          []netip.Addr
	DNSSL          []string
	DHCPv6         string // "none", "managed", "other-config"
}

// ndpEvents implements ipv6.NDPDispatcher.
type ndpEvents struct {
	s       *stack.Stack // set before the first frame arrives
	mu      sync.Mutex
	st      NDPState
	changed chan struct{} // closed and replaced on every change
}

func (d *ndpEvents) update(f func(*NDPState)) {
	d.mu.Lock()
	f(&d.st)
	close(d.changed)
	d.changed = make(chan struct{})
	d.mu.Unlock()
}

func toAddr(a tcpip.Address) netip.Addr { ip, _ := netip.AddrFromSlice(a.AsSlice()); return ip }
func toPrefix(s tcpip.Subnet) netip.Prefix {
	return netip.PrefixFrom(toAddr(s.ID()), s.Prefix())
}

func (d *ndpEvents) OnDuplicateAddressDetectionResult(tcpip.NICID, tcpip.Address, stack.DADResult) {}
func (d *ndpEvents) OnOffLinkRouteUpdated(_ tcpip.NICID, s tcpip.Subnet, r tcpip.Address, _ header.NDPRoutePreference) {
	// The integrator, not gVisor, owns the route table.
	d.s.AddRoute(tcpip.Route{Destination: s, Gateway: r, NIC: hostNIC})
	if s.Prefix() == 0 {
		d.update(func(st *NDPState) { st.DefaultRouters = append(st.DefaultRouters, toAddr(r)) })
	}
}
func (d *ndpEvents) OnOffLinkRouteInvalidated(tcpip.NICID, tcpip.Subnet, tcpip.Address) {}
func (d *ndpEvents) OnOnLinkPrefixDiscovered(_ tcpip.NICID, s tcpip.Subnet) {
	d.s.AddRoute(tcpip.Route{Destination: s, NIC: hostNIC})
	d.update(func(st *NDPState) { st.OnLinkPrefixes = append(st.OnLinkPrefixes, toPrefix(s)) })
}
func (d *ndpEvents) OnOnLinkPrefixInvalidated(tcpip.NICID, tcpip.Subnet) {}
func (d *ndpEvents) OnAutoGenAddress(_ tcpip.NICID, a tcpip.AddressWithPrefix) stack.AddressDispatcher {
	if header.IsV6LinkLocalUnicastAddress(a.Address) {
		return nil
	}
	d.update(func(st *NDPState) { st.Addrs = append(st.Addrs, netip.PrefixFrom(toAddr(a.Address), a.PrefixLen)) })
	return nil
}
func (d *ndpEvents) OnAutoGenAddressDeprecated(tcpip.NICID, tcpip.AddressWithPrefix)  {}
func (d *ndpEvents) OnAutoGenAddressInvalidated(tcpip.NICID, tcpip.AddressWithPrefix) {}
func (d *ndpEvents) OnRecursiveDNSServerOption(_ tcpip.NICID, as []tcpip.Address, _ time.Duration) {
	d.update(func(st *NDPState) {
		st.RDNSS = nil // a new slice: WaitNDP's callers may hold the old one
		for _, a := range as {
			st.RDNSS = append(st.RDNSS, toAddr(a))
		}
	})
}
func (d *ndpEvents) OnDNSSearchListOption(_ tcpip.NICID, l []string, _ time.Duration) {
	d.update(func(st *NDPState) { st.DNSSL = append([]string(nil), l...) })
}
func (d *ndpEvents) OnDHCPv6Configuration(_ tcpip.NICID, c ipv6.DHCPv6ConfigurationFromNDPRA) {
	s := "none"
	switch c {
	case ipv6.DHCPv6ManagedAddress:
		s = "managed"
	case ipv6.DHCPv6OtherConfigurations:
		s = "other-config"
	}
	d.update(func(st *NDPState) { st.DHCPv6 = s })
}

// WaitNDP waits until ready reports true for the host's NDP state (checked
// on every change) or ctx ends, and returns the last state seen.
func (h *Host) WaitNDP(ctx context.Context, ready func(NDPState) bool) (NDPState, error) {
	if h.ndp == nil {
		return NDPState{}, fmt.Errorf("netstacktest: host has no IPv6 (use NewDualStackHost)")
	}
	for {
		h.ndp.mu.Lock()
		st, ch := h.ndp.st, h.ndp.changed
		st.Addrs = slices.Clone(st.Addrs)
		st.DefaultRouters = slices.Clone(st.DefaultRouters)
		st.OnLinkPrefixes = slices.Clone(st.OnLinkPrefixes)
		st.RDNSS = slices.Clone(st.RDNSS)
		st.DNSSL = slices.Clone(st.DNSSL)
		h.ndp.mu.Unlock()
		if ready(st) {
			return st, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st, fmt.Errorf("netstacktest: NDP state %+v: %w", st, ctx.Err())
		}
	}
}

// Ping6 sends one ICMPv6 echo request to dst and waits for the matching
// reply or ctx.
func (h *Host) Ping6(ctx context.Context, dst netip.Addr, payload []byte) error {
	var wq waiter.Queue
	ep, terr := h.s.NewEndpoint(icmp.ProtocolNumber6, ipv6.ProtocolNumber, &wq)
	if terr != nil {
		return fmt.Errorf("netstacktest: ping6: %v", terr)
	}
	defer ep.Close()
	we, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	if terr := ep.Connect(tcpip.FullAddress{NIC: hostNIC, Addr: tcpip.AddrFrom16(dst.As16())}); terr != nil {
		return fmt.Errorf("netstacktest: ping6 %v: %v", dst, terr)
	}
	seq := uint16(h.pingID.Add(1))
	msg := make([]byte, header.ICMPv6EchoMinimumSize+len(payload))
	m := header.ICMPv6(msg)
	m.SetType(header.ICMPv6EchoRequest)
	m.SetSequence(seq)
	copy(msg[header.ICMPv6EchoMinimumSize:], payload)
	if _, terr := ep.Write(&bytesReader{b: msg}, tcpip.WriteOptions{}); terr != nil {
		return fmt.Errorf("netstacktest: ping6 %v: %v", dst, terr)
	}
	for i := 0; i < 64; i++ {
		var out bytesWriter
		_, terr := ep.Read(&out, tcpip.ReadOptions{})
		switch terr.(type) {
		case nil:
			rep := header.ICMPv6(out.b)
			if len(rep) >= header.ICMPv6EchoMinimumSize && rep.Type() == header.ICMPv6EchoReply && rep.Sequence() == seq {
				if string(rep.Payload()) != string(payload) {
					return fmt.Errorf("netstacktest: ping6 %v: reply payload differs", dst)
				}
				return nil
			}
			continue
		case *tcpip.ErrWouldBlock:
		default:
			return &net.OpError{Op: "ping", Net: "ip6:icmp", Addr: &net.IPAddr{IP: dst.AsSlice()}, Err: errnoOf(terr)}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("netstacktest: ping6 %v: %w", dst, ctx.Err())
		case <-notify:
		}
	}
	return fmt.Errorf("netstacktest: ping6 %v: no matching reply among 64 packets", dst)
}
