package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// probeRetry is the gap between the two ARP probes of one ProbeAddr.
const probeRetry = 100 * time.Millisecond

// probeTable holds the addresses ProbeAddr waits on; the read path signals
// any ARP packet whose sender is one of them.
type probeTable struct {
	n  atomic.Int32 // pending probes: the read path checks this first
	mu sync.Mutex
	m  map[tcpip.Address][]chan struct{} // guarded by mu
}

func (t *probeTable) add(a tcpip.Address) chan struct{} {
	ch := make(chan struct{}, 1)
	t.mu.Lock()
	if t.m == nil {
		t.m = make(map[tcpip.Address][]chan struct{})
	}
	t.m[a] = append(t.m[a], ch)
	t.n.Add(1)
	t.mu.Unlock()
	return ch
}

func (t *probeTable) remove(a tcpip.Address, ch chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.m[a]
	for i, c := range l {
		if c == ch {
			l = append(l[:i], l[i+1:]...)
			t.n.Add(-1)
			break
		}
	}
	if len(l) == 0 {
		delete(t.m, a)
	} else {
		t.m[a] = l
	}
}

// seen is called on the read path for the sender address of every valid
// ARP packet.
func (t *probeTable) seen(a tcpip.Address) {
	if t.n.Load() == 0 {
		return
	}
	t.mu.Lock()
	for _, ch := range t.m[a] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	t.mu.Unlock()
}

// probeARP sends RFC 5227 §2.1.1 ARP probes for a (sender address 0.0.0.0,
// so no host updates its cache from them, and they do not share
// SoftEther's broadcast-storm key — source MAC, source and destination
// address, src/Cedar/Hub.c — with the router's own ARP requests) and
// reports whether a answers, until ctx ends. It never touches gVisor's
// neighbour cache, so nothing keeps probing after ctx ends.
func (st *Stack) probeARP(ctx context.Context, a tcpip.Address) (bool, error) {
	ch := st.ep.probes.add(a)
	defer st.ep.probes.remove(a, ch)
	f := make([]byte, ethHeaderLen+header.ARPSize)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: st.mac, DstAddr: header.EthernetBroadcastAddress, Type: header.ARPProtocolNumber})
	p := header.ARP(f[ethHeaderLen:])
	p.SetIPv4OverEthernet()
	p.SetOp(header.ARPRequest)
	copy(p.HardwareAddressSender(), st.mac)
	copy(p.ProtocolAddressTarget(), a.AsSlice()) // sender IP stays 0.0.0.0
	t := time.NewTimer(0)
	defer t.Stop()
	for sent := 0; ; {
		select {
		case <-ch:
			return true, nil
		case <-ctx.Done():
			return false, ctx.Err()
		case <-t.C:
			if sent < 2 {
				if err := st.ep.enqueueFrames([][]byte{f}); err != nil {
					return false, fmt.Errorf("netstack: probe %v: %w", netipAddr(a), err)
				}
				sent++
				t.Reset(probeRetry)
			}
		}
	}
}

// probeAddr4 is ProbeAddr's implementation: a neighbour-cache entry in the
// reachable state (confirmed within the last ~30 s) answers at once;
// otherwise ARP probes run until an answer or ctx's end.
func (st *Stack) probeAddr4(ctx context.Context, ip netip.Addr) (inUse bool, err error) {
	if !ip.Is4() || !st.pfx.Contains(ip) || ip == st.cfg.Addr.Addr() || ip == st.pfx.Addr() || ip == broadcastOf(st.pfx) {
		return false, fmt.Errorf("netstack: probe %v: not a host address in %v other than the router", ip, st.pfx)
	}
	if st.closed.Load() {
		return false, fmt.Errorf("netstack: probe %v: %w", ip, net.ErrClosed)
	}
	a := tcpip.AddrFrom4(ip.As4())
	if ns, terr := st.s.Neighbors(nicID, ipv4.ProtocolNumber); terr == nil {
		for _, n := range ns {
			if n.Addr == a && (n.State == stack.Reachable || n.State == stack.Static) {
				return true, nil
			}
		}
	}
	inUse, err = st.probeARP(ctx, a)
	if err != nil && ctx.Err() != nil {
		return false, fmt.Errorf("netstack: probe %v: %w", ip, ctx.Err())
	}
	return inUse, err
}
