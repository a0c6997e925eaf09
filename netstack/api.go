package netstack

import (
	"log/slog"
	"net"
	"net/netip"
	"time"
)

// Config configures a Stack. The zero value of every optional field selects
// the documented default.
type Config struct {
	// MAC is the virtual host's Ethernet address on the hub. Required; it
	// must be a 6-byte unicast address.
	MAC net.HardwareAddr
	// Addr is the router address and its on-link subnet, for example
	// 192.168.30.1/24. Required.
	Addr netip.Prefix
	// Addr6 turns IPv6 on: the router's IPv6 address and the hub's on-link
	// /64 prefix, usually a unique local one (RFC 4193), for example
	// fd12:3456:789a::1/64. The router also takes the EUI-64 link-local
	// address of MAC, sends Router Advertisements (RA) and hands flows to
	// IPv6 destinations to the handlers like IPv4 ones. Zero: IPv4 only
	// (IPv6 frames are dropped and counted).
	Addr6 netip.Prefix
	// RA configures the Router Advertisements (with Addr6 only).
	RA RAConfig
	// MTU is the IP MTU of the link (Ethernet payload size). Default 1500.
	MTU int
	// Logger receives diagnostics; nil discards them. Per-packet events are
	// Debug only.
	Logger *slog.Logger
	// MaxInFlightSYN caps TCP connection requests whose handler has not yet
	// called Accept or Reject (gVisor's forwarder in-flight limit). SYNs over
	// the cap are dropped by gVisor and counted in Stats().TCPForwardDrops,
	// never silently. Default 8192; it must be at least the router's session
	// limit (PEERS.md §3 pitfall 1).
	MaxInFlightSYN int
	// MaxTCPReceiveBuffer bounds each client flow's receive buffer, the
	// window a hub client may have in flight towards the router. Default
	// 1 MiB (see stack.go for the measurements); raise it for long-RTT
	// clients on a hub whose server keeps up (allowed up to 64 MiB; the
	// window then grows with receive-buffer moderation).
	MaxTCPReceiveBuffer int
	// ACKHold is how long a pure TCP ACK that acknowledges new data may be
	// kept back in the hope that the flow's next segment (usually the
	// response) carries it instead: gVisor has no delayed ACK of its own,
	// and every frame saved spares the hub a round of work. Default 500µs;
	// negative: ACKs go at once. See ackhold.go.
	ACKHold time.Duration
	// RACK turns on RACK-TLP loss detection for the router's TCP senders
	// (gVisor's default). Off by default: with it, downloads after a burst
	// loss sometimes stalled for seconds (netstack/PERF.md, lever 10); on
	// paths that reorder frames (clients with several TCP connections to
	// the hub) it detects losses better.
	RACK bool
	// OnForeignDHCPServer, if set, is called when a DHCP server reply
	// (UDP source port 67 to destination port 68) from an Ethernet address
	// other than MAC is seen on the hub; ip is the IPv4 source address of that
	// packet. It is called from the frame-reading goroutine and must not
	// block; it is rate-limited to one call per MAC per minute.
	OnForeignDHCPServer func(mac net.HardwareAddr, ip netip.Addr)
}

// Reject says how a flow request is refused.
type Reject int

const (
	// RejectRST answers a TCP SYN with a reset. For UDP it means
	// RejectPortUnreachable.
	RejectRST Reject = iota
	// RejectHostUnreachable sends ICMP destination unreachable, code 1.
	RejectHostUnreachable
	// RejectNetUnreachable sends ICMP destination unreachable, code 0.
	RejectNetUnreachable
	// RejectPortUnreachable sends ICMP destination unreachable, code 3.
	RejectPortUnreachable
	// RejectAdminProhibited sends ICMP destination unreachable, code 13
	// (communication administratively prohibited, RFC 1812 §5.2.7.1).
	RejectAdminProhibited
)

// String returns the name of the rejection kind.
func (r Reject) String() string {
	switch r {
	case RejectRST:
		return "rst"
	case RejectHostUnreachable:
		return "host-unreachable"
	case RejectNetUnreachable:
		return "net-unreachable"
	case RejectPortUnreachable:
		return "port-unreachable"
	case RejectAdminProhibited:
		return "admin-prohibited"
	}
	return "reject(?)"
}

// TCPConn is an accepted TCP connection with half-close support.
type TCPConn interface {
	net.Conn
	// CloseWrite sends FIN; reads continue to work.
	CloseWrite() error
	// CloseRead shuts down the read side; writes continue to work.
	CloseRead() error
}

// TCPRequest is a client's SYN to a non-local address. Exactly one of Accept
// or Reject must be called; until then the request holds one of the
// MaxInFlightSYN slots and the client waits (retransmitting its SYN).
type TCPRequest struct {
	// Src is the client's address and port; Dst the address it wants to reach.
	Src, Dst netip.AddrPort

	tcpRequestState
}

// UDPRequest is the first datagram of a new (Src, Dst) UDP flow to a
// non-local unicast address. Exactly one of Accept or Reject must be called.
// Datagrams of the same flow that arrive before then are queued (a few) or
// dropped.
type UDPRequest struct {
	// Src is the client's address and port; Dst the address it sent to.
	Src, Dst netip.AddrPort

	udpRequestState
}

// EchoRequest is an ICMP echo request from a client to a non-local address.
// The handler owns the value (and Payload) and may keep it.
type EchoRequest struct {
	// Src is the client; Dst the address it pinged.
	Src, Dst netip.Addr
	// ID and Seq are the echo identifier and sequence number.
	ID, Seq uint16
	// TTL is the request's IP time-to-live as received.
	TTL uint8
	// Payload is the echo data after the 8-byte ICMP header.
	Payload []byte

	echoState
}

// Stats are cumulative counters since New.
type Stats struct {
	// Link level, counted by the stack's own Ethernet endpoint.
	FramesIn, BytesIn   uint64 // frames read from the Link and accepted
	FramesOut, BytesOut uint64 // frames handed to Link.WriteFrames
	DropTooBig          uint64 // inbound frames longer than MTU + Ethernet header
	DropMalformed       uint64 // inbound frames too short, with a bad header or a bad IPv4/TCP/UDP/ICMP checksum
	DropNotForUs        uint64 // unicast frames to another host's MAC
	DropOwnSource       uint64 // inbound frames claiming our MAC as source
	DropOtherProtocol   uint64 // inbound EtherTypes other than IPv4, ARP and (with Addr6) IPv6
	DropARPOther        uint64 // ARP requests for addresses that are not ours
	DropARPConflict     uint64 // ARP from another MAC claiming the router address
	DropNDPOther        uint64 // IPv6 neighbour solicitations for other targets, foreign RAs, redirects, MLD
	DropNDPConflict     uint64 // IPv6 packets or advertisements from another MAC claiming the router's IPv6 addresses
	DropQueueFull       uint64 // outbound frames dropped: write queue full
	ACKsDelayed         uint64 // pure ACKs kept back (Config.ACKHold)
	ACKsCoalesced       uint64 // ... of which a later segment of the flow made unnecessary (not sent)
	ReadErrors          uint64 // Link.ReadFrame errors other than close
	WriteErrors         uint64 // Link.WriteFrames errors (frames lost)

	// Flow requests handed to handlers.
	TCPRequests, TCPAccepted, TCPRejected uint64
	TCPForwardDrops                       uint64 // gVisor ForwardMaxInFlightDrop: SYNs over MaxInFlightSYN
	TCPAcceptFailed                       uint64 // Accept could not complete the handshake
	UDPRequests, UDPAccepted, UDPRejected uint64
	UDPPendingDrops                       uint64 // datagrams dropped while a UDP request was pending
	EchoRequests                          uint64 // echo requests handed to the echo handler
	EchoUnhandled                         uint64 // echo requests to foreign addresses with no handler set
	ICMPErrorsSent                        uint64 // unreachable/time-exceeded messages we crafted
	ICMPErrorsLimited                     uint64 // ... not sent: over the stack's ICMP rate limit
	DHCPQueueDrops                        uint64 // DHCP datagrams dropped: the ListenDHCP conn's queue (64) was full

	// IPv6 router duties (with Config.Addr6).
	RouterSolicits uint64 // valid Router Solicitations received
	RAsSent        uint64 // Router Advertisements sent (periodic and solicited)
	RAsLimited     uint64 // solicitations not answered: over 10/s
	ForeignRAs     uint64 // Router Advertisements from another router on the hub

	// From gVisor's stack statistics. UDPUnknownPort counts datagrams that
	// matched no socket, which includes the first datagram of every
	// forwarded flow (gVisor counts before asking the forwarder).
	TCPActiveOpens, TCPPassiveOpens, TCPEstablished uint64
	TCPFailedAttempts, TCPRetransmits, TCPTimeouts  uint64
	TCPSegmentsIn, TCPSegmentsOut, TCPResetsSent    uint64
	UDPPacketsIn, UDPPacketsOut, UDPUnknownPort     uint64
	UDPReceiveBufferErrors, UDPMalformed            uint64
	ICMPEchoIn, ICMPEchoReplyOut, ICMPDstUnreachIn  uint64 // ICMPv4 and ICMPv6
	IPPacketsIn, IPMalformed, IPInvalidDst          uint64
	IPMalformedFragments                            uint64
	ARPRequestsIn, ARPRepliesOut, ARPMalformed      uint64
}
