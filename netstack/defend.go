package netstack

import (
	"net"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// defendInterval bounds the announcements defend sends: at most one per
// interval, so a flood of spoofed frames cannot make us flood the hub.
const defendInterval = time.Second

// defender announces the router's MAC and address when someone else claims
// them. A frame from the router's MAC makes the hub's switch move that MAC
// to the sender's session (src/Cedar/Hub.c learns every accepted source
// MAC), so the router's traffic would go to the impostor until the router
// next transmits; an ARP claiming the router address poisons the clients'
// caches. The answer is an ARP announcement (RFC 5227 §2.3: request with
// sender and target address both ours, broadcast), which re-teaches the
// hub and the clients.
type defender struct {
	last atomic.Int64 // UnixNano of the last announcement
	sent atomic.Uint64
}

// defend sends an announcement unless one went out within defendInterval.
// It is called on the read path and never blocks for long.
func (e *linkEndpoint) defend(why string, claimant net.HardwareAddr) {
	now := time.Now().UnixNano()
	last := e.def.last.Load()
	if now-last < int64(defendInterval) || !e.def.last.CompareAndSwap(last, now) {
		return
	}
	f := make([]byte, ethHeaderLen+header.ARPSize)
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: e.mac, DstAddr: header.EthernetBroadcastAddress, Type: header.ARPProtocolNumber,
	})
	a := header.ARP(f[ethHeaderLen:])
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), e.mac)
	ip := e.addr.As4()
	copy(a.ProtocolAddressSender(), ip[:])
	copy(a.ProtocolAddressTarget(), ip[:])
	frames := [][]byte{f}
	if e.v6 != nil {
		frames = append(frames, e.neighborAdvert(e.v6.ll), e.neighborAdvert(e.v6.addr))
	}
	if err := e.enqueueFrames(frames); err == nil {
		e.def.sent.Add(1)
		e.log.Info("netstack: another host claims the router's identity; announced ours", "why", why, "claimant", claimant.String())
	}
}
