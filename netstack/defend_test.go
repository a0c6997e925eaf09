package netstack_test

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// isAnnouncement matches the router's ARP announcement: a broadcast ARP
// request from its MAC with sender and target address both the router's.
func isAnnouncement(f []byte) bool {
	a, ok := arpOf(f)
	if !ok || a.Op() != header.ARPRequest {
		return false
	}
	eth := header.Ethernet(f)
	return eth.DestinationAddress() == header.EthernetBroadcastAddress &&
		string(eth.SourceAddress()) == string(routerMAC) && bytes.Equal(a.HardwareAddressSender(), routerMAC) &&
		tcpip.AddrFrom4Slice(a.ProtocolAddressSender()) == ip4(routerIP) &&
		tcpip.AddrFrom4Slice(a.ProtocolAddressTarget()) == ip4(routerIP)
}

// A frame claiming the router's MAC, or an ARP claiming its address, makes
// the router announce itself, once per second however many claims arrive.
func TestClaimsAreAnsweredWithAnnouncements(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	spoofMAC := net.HardwareAddr(routerMAC)
	for range 20 {
		r.send(udpFrame(net.HardwareAddr(header.EthernetBroadcastAddress), spoofMAC,
			netip.AddrPortFrom(hostIP.Next(), 1000), netip.AddrPortFrom(routerIP, 7), []byte("x")))
	}
	r.expect("an announcement after frames with the router's MAC as source", isAnnouncement)
	// The burst above must not have produced more than one.
	deadline := time.After(300 * time.Millisecond)
	for n := 0; ; {
		select {
		case f := <-r.frames:
			if isAnnouncement(f) {
				n++
				t.Fatalf("%d more announcements for one burst of claims", n)
			}
			continue
		case <-deadline:
		}
		break
	}
	if got := r.st.Stats().DropOwnSource; got != 20 {
		t.Fatalf("DropOwnSource = %d, want 20", got)
	}
}

func TestARPConflictIsAnswered(t *testing.T) {
	r := newRaw(t, netstack.Config{})
	r.send(arpFrame(header.ARPReply, hostMAC, routerIP, net.HardwareAddr(header.EthernetBroadcastAddress), routerIP,
		net.HardwareAddr(header.EthernetBroadcastAddress)))
	r.expect("an announcement after an ARP claiming the router address", isAnnouncement)
	if got := r.st.Stats().DropARPConflict; got != 1 {
		t.Fatalf("DropARPConflict = %d, want 1", got)
	}
}
