package netstack

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

const (
	nicID = tcpip.NICID(1)

	defaultMTU            = 1500
	defaultMaxInFlightSYN = 8192
	minMTU                = 576 // RFC 791: every host must accept 576-byte datagrams

	// TCP buffer sizes. The send buffer starts at gVisor's 1 MiB and grows
	// by auto-tuning to 6 MiB (Tailscale measured 151 -> 249 Mbit/s at
	// 100 ms RTT with RX 8 MiB / TX 6 MiB, PEERS.md §2, tailscale PR #12994).
	//
	// The receive buffer (the window offered to hub clients) is capped at
	// 1 MiB by default (Config.MaxTCPReceiveBuffer): upload frames cross
	// SoftEther's local bridge, whose packet socket drops whatever arrives
	// while vpnserver is busy, so a client allowed 8 MiB in flight bursts
	// into that loss. Measured on the 2-core lab (real vpnserver 5.01,
	// iperf3 -t 5 client→LAN, 2 runs each, netstack/PERF.md): max 8 MiB
	// 1.71/1.84 Gbit/s with 75 000/82 000 retransmits; 2 MiB 1.95/1.93 with
	// 43 000/39 000; 1 MiB 1.91/1.97 with 14 600/14 700; 512 KiB 1.64/1.67
	// with 12 000/13 000; 256 KiB 1.62/2.01 with 10 000/15 000. The cost:
	// 1 MiB per RTT bounds one flow to ~280 Mbit/s at 30 ms RTT.
	tcpRecvBufDefault = 1 << 20
	tcpRecvBufMax     = 1 << 20

	// defaultACKHold is Config.ACKHold's default (see bench/RESULTS.md,
	// "delayed ACKs"). maxACKHold keeps a held ACK far below the peers'
	// retransmission and tail-loss-probe timers (10 ms or more).
	defaultACKHold    = 500 * time.Microsecond
	maxACKHold        = 5 * time.Millisecond
	tcpSendBufDefault = 1 << 20
	tcpSendBufMax     = 6 << 20

	// Keepalive on accepted flows so that vanished clients do not pin the
	// router's copy goroutines for gVisor's default 2 h (PEERS.md §3
	// pitfall 8; the same values as tun2socks).
	keepaliveIdle     = 60 * time.Second
	keepaliveInterval = 30 * time.Second
	keepaliveCount    = 9
)

// Stack is acrouter's virtual host on a Link: one Ethernet NIC with
// Config.MAC and Config.Addr, answering ARP and ping for its own address, and
// handing every TCP/UDP/ICMP-echo flow to other addresses to the handlers.
// All methods are safe for concurrent use.
type Stack struct {
	cfg   Config
	log   *slog.Logger
	link  Link
	ep    *linkEndpoint
	s     *stack.Stack
	addr  tcpip.Address // router address
	pfx   netip.Prefix  // on-link subnet (masked)
	bcast tcpip.Address // subnet broadcast address
	mac   tcpip.LinkAddress
	v6    *v6addrs  // nil: IPv4 only
	ra    *raSender // nil: IPv4 only

	lctr linkCounters
	fctr flowCounters

	tcpHandler  atomic.Pointer[func(*TCPRequest)]
	udpHandler  atomic.Pointer[func(*UDPRequest)]
	echoHandler atomic.Pointer[func(EchoRequest)]

	tcpFwd *tcp.Forwarder
	udpFwd *udp.Forwarder
	syns   synTable
	hs     handshakes // Accepts blocked in gVisor's handshake
	udp    udpPendingTable

	ipID atomic.Uint32 // IP identification for packets we craft

	// handlers tracks handler goroutines (the forwarder starts them; see
	// tracker for why a WaitGroup is not enough).
	handlers tracker

	dhcpMu   sync.Mutex
	dhcpSeen map[[6]byte]time.Time // guarded by dhcpMu: rate limit for OnForeignDHCPServer

	closeOnce sync.Once
	closed    atomic.Bool
}

// flowCounters count flow-level events (atomics, read by Stats).
type flowCounters struct {
	tcpRequests, tcpAccepted, tcpRejected, tcpAcceptFailed atomic.Uint64
	udpRequests, udpAccepted, udpRejected, udpPendingDrops atomic.Uint64
	echoRequests, echoUnhandled, icmpErrorsSent            atomic.Uint64
	icmpErrorsLimited                                      atomic.Uint64
	dhcpQueueDrops                                         atomic.Uint64
}

// New starts a virtual host on link. It starts one goroutine reading frames
// from link and one writing batches of frames to it.
//
// The caller created link and keeps it usable for the Stack's lifetime. Close
// ends the Stack's use of link: it stops the stack (no frame is written after
// Close returns), then closes link if link implements io.Closer, which makes
// ReadFrame return net.ErrClosed, and waits for the read goroutine. A link
// without a Close method must be closed by its owner; Close then waits until
// ReadFrame fails. Closing link before Stack.Close is fine too.
func New(link Link, cfg Config) (*Stack, error) {
	if link == nil {
		return nil, errors.New("netstack: nil link")
	}
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	st := &Stack{
		cfg:      cfg,
		log:      cfg.Logger,
		link:     link,
		addr:     tcpip.AddrFrom4(cfg.Addr.Addr().As4()),
		pfx:      cfg.Addr.Masked(),
		mac:      tcpip.LinkAddress(cfg.MAC),
		dhcpSeen: make(map[[6]byte]time.Time),
	}
	st.bcast = tcpip.AddrFrom4(broadcastOf(st.pfx).As4())
	st.handlers.init()
	st.syns.init(2 * cfg.MaxInFlightSYN)
	st.udp.init()

	st.ep = newLinkEndpoint(link, st.mac, st.addr, uint32(cfg.MTU), cfg.ACKHold, st.log, &st.lctr)
	if cfg.OnForeignDHCPServer != nil {
		st.ep.onDHCP = st.foreignDHCP
	}

	opts := stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
	}
	if cfg.Addr6.IsValid() {
		st.v6 = newV6addrs(cfg.Addr6, st.mac)
		st.ep.v6 = st.v6
		// The zero Options: no duplicate address detection (the router's
		// addresses are usable at once; conflicts are answered by
		// defend), no Router Solicitations and no processing of other
		// routers' advertisements (this stack is the router), no
		// automatic link-local address (added explicitly), no MLD.
		opts.NetworkProtocols = append(opts.NetworkProtocols, ipv6.NewProtocolWithOptions(ipv6.Options{}))
		opts.TransportProtocols = append(opts.TransportProtocols, icmp.NewProtocol6)
	}
	st.s = stack.New(opts)
	if err := st.configure(); err != nil {
		st.s.Destroy()
		return nil, err
	}
	if st.v6 != nil {
		if err := st.configure6(); err != nil {
			st.s.Destroy()
			return nil, err
		}
	}
	st.ep.start()
	if st.v6 != nil {
		st.startRA()
	}
	return st, nil
}

func (c *Config) withDefaults() error {
	if len(c.MAC) != 6 {
		return fmt.Errorf("netstack: MAC %q is not a 6-byte Ethernet address", c.MAC)
	}
	if c.MAC[0]&1 != 0 {
		return fmt.Errorf("netstack: MAC %s is a group address", c.MAC)
	}
	if !c.Addr.IsValid() || !c.Addr.Addr().Is4() {
		return fmt.Errorf("netstack: Addr %v is not an IPv4 prefix", c.Addr)
	}
	if err := checkAddr6(c.Addr6); err != nil {
		return err
	}
	if b := c.Addr.Bits(); b < 1 || b > 30 {
		return fmt.Errorf("netstack: Addr %v: prefix length must be 1..30", c.Addr)
	}
	if a := c.Addr.Addr(); a == c.Addr.Masked().Addr() || a == broadcastOf(c.Addr.Masked()) || !a.IsGlobalUnicast() && !a.IsPrivate() {
		return fmt.Errorf("netstack: Addr %v is not a usable host address", c.Addr)
	}
	if c.MTU == 0 {
		c.MTU = defaultMTU
	}
	if c.MTU < minMTU || c.MTU > 65535-ethHeaderLen {
		return fmt.Errorf("netstack: MTU %d out of range %d..%d", c.MTU, minMTU, 65535-ethHeaderLen)
	}
	if c.MaxInFlightSYN == 0 {
		c.MaxInFlightSYN = defaultMaxInFlightSYN
	}
	if c.MaxInFlightSYN < 1 {
		return fmt.Errorf("netstack: MaxInFlightSYN %d must be positive", c.MaxInFlightSYN)
	}
	if c.MaxTCPReceiveBuffer == 0 {
		c.MaxTCPReceiveBuffer = tcpRecvBufMax
	}
	if c.MaxTCPReceiveBuffer < tcp.MinBufferSize || c.MaxTCPReceiveBuffer > 64<<20 {
		return fmt.Errorf("netstack: MaxTCPReceiveBuffer %d out of range %d..%d", c.MaxTCPReceiveBuffer, tcp.MinBufferSize, 64<<20)
	}
	switch {
	case c.ACKHold == 0:
		c.ACKHold = defaultACKHold
	case c.ACKHold > maxACKHold:
		return fmt.Errorf("netstack: ACKHold %v above %v", c.ACKHold, maxACKHold)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func broadcastOf(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	hostBits := 32 - p.Bits()
	for i := 3; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		a[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	return netip.AddrFrom4(a)
}

// configure sets protocol options, creates the NIC and installs the
// forwarders. Every option says why it is set.
func (st *Stack) configure() error {
	s := st.s
	tcpOpts := []tcpip.SettableTransportProtocolOption{
		// SACK: recover from several losses per window (on by default in
		// this pin; set explicitly so a pin bump cannot silently change it).
		ptr(tcpip.TCPSACKEnabled(true)),
		// Loss detection: classic (duplicate ACKs with SACK) unless
		// Config.RACK. With RACK-TLP (this pin's default) 3 of 33 lab
		// downloads stalled for the whole run after a burst loss behind the
		// router: the sender then sent two segments per 200 ms timer while
		// the client's ACKs arrived and did not clock out more (tcpdump in
		// netstack/PERF.md, lever 10). Without it: 0 of 24, and more
		// throughput both ways. Hub flows arrive in order (both legs are TCP
		// streams); RACK matters on reordering paths (Tailscale's RACK-off
		// cost a 5x slowdown there, PEERS.md §3 pitfall 4): Config.RACK.
		ptr(st.cfg.recovery()),
		// Buffer sizes: see the constants. Window scaling needs no switch:
		// gVisor derives the SYN-ACK window scale from the maximum receive
		// buffer when moderation is on (endpoint.go rcvWndScaleForHandshake),
		// so 8 MiB gives scale 7 and windows up to 8 MiB.
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: min(tcpRecvBufDefault, st.cfg.MaxTCPReceiveBuffer), Max: st.cfg.MaxTCPReceiveBuffer},
		&tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: tcpSendBufDefault, Max: tcpSendBufMax},
		// Receive-buffer moderation: grow each flow's window only as its
		// measured BDP needs, so thousands of idle flows stay small. gonet
		// calls ModerateRecvBuf on Read (PEERS.md §3 pitfall 9).
		ptr(tcpip.TCPModerateReceiveBufferOption(true)),
		// Nagle off (gVisor's default): we relay whatever the host socket
		// gave us immediately; coalescing is the sender's job.
		ptr(tcpip.TCPDelayEnabled(false)),
		// TIME_WAIT 500 ms instead of gVisor's 60 s. Forwarded endpoints have
		// no listener, and gVisor hands a new SYN that hits a TIME_WAIT
		// endpoint only to a listener (transport/tcp/connect.go
		// handleTimeWaitSegments): when the server closed first, a client
		// reusing that port hung for up to 60 s (router
		// TestNetServerClosesFirst, after 200-400 flows). On one L2 segment
		// old duplicates die within milliseconds; the host socket keeps its
		// own TIME_WAIT toward the real peer. Below the usual 1 s initial
		// SYN retransmission timeout, so a SYN that still meets a TIME_WAIT
		// endpoint is retried after it has gone: a delay, never a hang.
		ptr(tcpip.TCPTimeWaitTimeoutOption(500 * time.Millisecond)),
	}
	for _, o := range tcpOpts {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return fmt.Errorf("netstack: set TCP option %T: %v", o, err)
		}
	}
	if err := s.CreateNICWithOptions(nicID, st.ep, stack.NICOptions{Name: "hub"}); err != nil {
		return fmt.Errorf("netstack: create NIC: %v", err)
	}
	// Promiscuous + spoofing: accept packets to any IP address and send
	// from any, so SYNs to foreign hosts reach the forwarders and replies
	// carry the foreign address (as gvisor-tap-vsock does). The link
	// endpoint keeps this from leaking onto the hub (ARP filtering,
	// destination-MAC filtering).
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous mode: %v", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %v", err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: st.addr, PrefixLen: st.cfg.Addr.Bits()},
	}
	if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("netstack: add address %v: %v", st.cfg.Addr, err)
	}
	// Everything is on-link: the subnet, and a default route via the NIC
	// without a gateway, because replies from "foreign" addresses go
	// straight to the client that sent the request.
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}})

	st.tcpFwd = tcp.NewForwarder(s, 0 /* rcvWnd: gVisor default, PEERS.md pitfall 2 */, st.cfg.MaxInFlightSYN, st.forwardTCP)
	st.udpFwd = udp.NewForwarder(s, st.forwardUDP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, st.tcpDefault)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, st.udpDefault)
	s.SetTransportProtocolHandler(icmp.ProtocolNumber4, st.icmpDefault)
	return nil
}

func ptr[T any](v T) *T { return &v }

// Close shuts the stack down: pending requests are rejected, listeners and
// connections from this stack fail, and Close waits for every goroutine the
// Stack started, including running handlers (which must return once their
// connections fail). See New for how the link is closed. It is safe to call
// more than once.
func (st *Stack) Close() error {
	var err error
	st.closeOnce.Do(func() {
		st.closed.Store(true)
		if st.ra != nil {
			st.ra.close()
		}
		st.ep.stopped.Store(true)
		st.hs.abortAll()
		// Abort every endpoint (handlers blocked on I/O fail), stop the
		// protocols, remove the NIC (which closes the link endpoint's
		// write queue).
		st.s.Close()
		st.handlers.closeAndWait()
		st.s.Wait()
		st.ep.Close() // idempotent; Wait already did it via the NIC
		<-st.ep.writerDone
		// A sender writing directly (writeDirect) finishes before the
		// link is closed; later ones see the queue closed.
		st.ep.wmu.Lock()
		st.ep.wmu.Unlock() //nolint:staticcheck // a barrier, not an empty section
		if c, ok := st.link.(io.Closer); ok {
			if cerr := c.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
				err = fmt.Errorf("netstack: close link: %w", cerr)
			}
		}
		<-st.ep.readerDone
	})
	return err
}

// isRouterAddr reports whether a is one of the router's own addresses.
func (st *Stack) isRouterAddr(a tcpip.Address) bool {
	return a == st.addr || st.v6 != nil && st.v6.isOwn(a)
}

// isForeignUnicast reports whether a is a destination the handlers may see:
// a unicast IPv4 address that is neither ours nor a broadcast address, or
// an off-link IPv6 unicast address (isForeignUnicast6).
func (st *Stack) isForeignUnicast(a tcpip.Address) bool {
	if a.Len() == 16 {
		return st.isForeignUnicast6(a)
	}
	if a.Len() != 4 || a == st.addr || a == st.bcast || a == header.IPv4Broadcast || a == header.IPv4Any {
		return false
	}
	b := a.As4()
	return b[0] < 224 // class D multicast and class E reserved excluded
}

// validClientSrc reports whether a is an acceptable flow source: a unicast
// address other than ours.
func (st *Stack) validClientSrc(a tcpip.Address) bool {
	if a.Len() == 16 {
		return st.validClientSrc6(a)
	}
	return st.isForeignUnicast(a) && a.As4()[0] != 127
}

// foreignDHCP rate-limits Config.OnForeignDHCPServer to one call per MAC
// per minute, with a bounded table.
func (st *Stack) foreignDHCP(mac net.HardwareAddr, ip [4]byte) {
	var k [6]byte
	copy(k[:], mac)
	now := time.Now()
	st.dhcpMu.Lock()
	if t, ok := st.dhcpSeen[k]; ok && now.Sub(t) < time.Minute {
		st.dhcpMu.Unlock()
		return
	}
	if len(st.dhcpSeen) >= 256 {
		clear(st.dhcpSeen)
	}
	st.dhcpSeen[k] = now
	st.dhcpMu.Unlock()
	st.log.Warn("netstack: another DHCP server answers on the hub", "mac", mac.String(), "ip", netip.AddrFrom4(ip).String())
	st.cfg.OnForeignDHCPServer(mac, netip.AddrFrom4(ip))
}

// tracker counts running handler goroutines. gVisor's forwarder starts
// them with `go`, so an Add can race with Wait; tracker refuses new entries
// once closed instead.
type tracker struct {
	mu     sync.Mutex
	n      int
	closed bool
	done   chan struct{}
}

func (t *tracker) init() { t.done = make(chan struct{}) }

func (t *tracker) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.n++
	return true
}

func (t *tracker) exit() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.closed && t.n == 0 {
		close(t.done)
	}
}

func (t *tracker) closeAndWait() {
	t.mu.Lock()
	t.closed = true
	if t.n == 0 {
		close(t.done)
	}
	t.mu.Unlock()
	<-t.done
}

// Stats returns a snapshot of the counters.
func (st *Stack) Stats() Stats {
	l, f := &st.lctr, &st.fctr
	g := st.s.Stats()
	return Stats{
		FramesIn: l.framesIn.Load(), BytesIn: l.bytesIn.Load(),
		FramesOut: l.framesOut.Load(), BytesOut: l.bytesOut.Load(),
		DropTooBig: l.dropTooBig.Load(), DropMalformed: l.dropMalformed.Load(),
		DropNotForUs: l.dropNotForUs.Load(), DropOwnSource: l.dropOwnSource.Load(),
		DropOtherProtocol: l.dropProto.Load(), DropARPOther: l.dropARPOther.Load(),
		DropARPConflict: l.dropARPConflict.Load(), DropQueueFull: l.dropQueueFull.Load(),
		ACKsDelayed: l.acksDelayed.Load(), ACKsCoalesced: l.acksSuperseded.Load(),
		ReadErrors: l.readErrors.Load(), WriteErrors: l.writeErrors.Load(),

		TCPRequests: f.tcpRequests.Load(), TCPAccepted: f.tcpAccepted.Load(),
		TCPRejected: f.tcpRejected.Load(), TCPAcceptFailed: f.tcpAcceptFailed.Load(),
		TCPForwardDrops: g.TCP.ForwardMaxInFlightDrop.Value(),
		UDPRequests:     f.udpRequests.Load(), UDPAccepted: f.udpAccepted.Load(),
		UDPRejected: f.udpRejected.Load(), UDPPendingDrops: f.udpPendingDrops.Load(),
		EchoRequests: f.echoRequests.Load(), EchoUnhandled: f.echoUnhandled.Load(),
		ICMPErrorsSent: f.icmpErrorsSent.Load(), ICMPErrorsLimited: f.icmpErrorsLimited.Load(),
		DHCPQueueDrops: f.dhcpQueueDrops.Load(),

		TCPActiveOpens:    g.TCP.ActiveConnectionOpenings.Value(),
		TCPPassiveOpens:   g.TCP.PassiveConnectionOpenings.Value(),
		TCPEstablished:    g.TCP.CurrentEstablished.Value(),
		TCPFailedAttempts: g.TCP.FailedConnectionAttempts.Value(),
		TCPRetransmits:    g.TCP.Retransmits.Value(),
		TCPTimeouts:       g.TCP.Timeouts.Value(),
		TCPSegmentsIn:     g.TCP.ValidSegmentsReceived.Value(),
		TCPSegmentsOut:    g.TCP.SegmentsSent.Value(),
		TCPResetsSent:     g.TCP.ResetsSent.Value(),

		UDPPacketsIn:           g.UDP.PacketsReceived.Value(),
		UDPPacketsOut:          g.UDP.PacketsSent.Value(),
		UDPUnknownPort:         g.UDP.UnknownPortErrors.Value(),
		UDPReceiveBufferErrors: g.UDP.ReceiveBufferErrors.Value(),
		UDPMalformed:           g.UDP.MalformedPacketsReceived.Value(),

		ICMPEchoIn:       g.ICMP.V4.PacketsReceived.EchoRequest.Value() + g.ICMP.V6.PacketsReceived.EchoRequest.Value(),
		ICMPEchoReplyOut: g.ICMP.V4.PacketsSent.EchoReply.Value() + g.ICMP.V6.PacketsSent.EchoReply.Value(),
		ICMPDstUnreachIn: g.ICMP.V4.PacketsReceived.DstUnreachable.Value() + g.ICMP.V6.PacketsReceived.DstUnreachable.Value(),

		IPPacketsIn:          g.IP.PacketsReceived.Value(),
		IPMalformed:          g.IP.MalformedPacketsReceived.Value(),
		IPInvalidDst:         g.IP.InvalidDestinationAddressesReceived.Value(),
		IPMalformedFragments: g.IP.MalformedFragmentsReceived.Value(),

		DropNDPOther: l.dropNDPOther.Load(), DropNDPConflict: l.dropNDPConflict.Load(),
		RouterSolicits: l.routerSolicits.Load(), RAsSent: l.raSent.Load(),
		RAsLimited: l.raLimited.Load(), ForeignRAs: l.foreignRAs.Load(),

		ARPRequestsIn: g.ARP.RequestsReceived.Value(),
		ARPRepliesOut: g.ARP.OutgoingRepliesSent.Value(),
		ARPMalformed:  g.ARP.MalformedPacketsReceived.Value(),
	}
}

// recovery is the TCP loss detection Config.RACK selects.
func (c Config) recovery() tcpip.TCPRecovery {
	if c.RACK {
		return tcpip.TCPRACKLossDetection
	}
	return 0
}
