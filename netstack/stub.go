package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

type tcpRequestState struct{}
type udpRequestState struct{}
type echoState struct{}

// Stack is acrouter's virtual host on a Link: one Ethernet NIC with
// Config.MAC and Config.Addr, answering ARP and ping for its own address, and
// handing every TCP/UDP/ICMP-echo flow to other addresses to the handlers.
type Stack struct{}

// New starts a virtual host on link. It starts one goroutine reading frames
// from link and one writing batches of frames to it.
//
// The caller created link and keeps it usable for the Stack's lifetime. Close
// ends the Stack's use of link: it stops the stack (no frame is written after
// Close returns), then closes link if link implements io.Closer, which makes
// ReadFrame return net.ErrClosed, and waits for the read goroutine. A link
// without a Close method must be closed by its owner; Close then waits until
// ReadFrame fails. Closing link before Stack.Close is fine too.
func New(link Link, cfg Config) (*Stack, error) { return nil, errors.ErrUnsupported }

// Close shuts the stack down: pending requests are rejected, listeners and
// connections from this stack fail with net.ErrClosed, and Close waits for
// every goroutine the Stack started (see New for how the link is closed).
// It is safe to call more than once.
func (s *Stack) Close() error { return errors.ErrUnsupported }

// SetTCPHandler sets the handler for SYNs to non-local addresses; h runs in
// its own goroutine per request and must call Accept or Reject exactly once.
// With no handler, such SYNs are answered with RST. It may be called at any
// time; nil removes the handler.
func (s *Stack) SetTCPHandler(h func(*TCPRequest)) {}

// SetUDPHandler sets the handler for the first datagram of a new (src, dst)
// flow to a non-local unicast address; h runs in its own goroutine and must
// call Accept or Reject exactly once. Broadcast and multicast datagrams never
// reach it. With no handler, datagrams are dropped silently.
func (s *Stack) SetUDPHandler(h func(*UDPRequest)) {}

// SetICMPEchoHandler sets the handler for echo requests to non-local
// addresses. h is called synchronously on the packet path and must not block
// (hand the request to a goroutine or queue). The stack never answers such
// requests itself: without a handler, or when the handler does not reply,
// the client sees no reply. Echo requests to the router's own address are
// answered by the stack and never reach h.
func (s *Stack) SetICMPEchoHandler(h func(EchoRequest)) {}

// WriteEchoReply sends an ICMP echo reply from req.Dst to req.Src with req's
// ID and Seq and the given payload (usually req.Payload), addressed to the
// Ethernet address the request came from. It does not retain payload.
func (s *Stack) WriteEchoReply(req EchoRequest, payload []byte) error { return errors.ErrUnsupported }

// WriteICMPUnreachable sends an ICMP destination unreachable (kind how;
// RejectRST is not valid here) from the router address to req.Src, quoting
// req's packet.
func (s *Stack) WriteICMPUnreachable(req EchoRequest, how Reject) error {
	return errors.ErrUnsupported
}

// WriteICMPTimeExceeded sends an ICMP time exceeded in transit (code 0) from
// the router address to req.Src, quoting req's packet.
func (s *Stack) WriteICMPTimeExceeded(req EchoRequest) error { return errors.ErrUnsupported }

// ListenTCP listens on the router address and port.
func (s *Stack) ListenTCP(port uint16) (net.Listener, error) { return nil, errors.ErrUnsupported }

// ListenUDP opens a UDP socket on the router address and port. ReadFrom
// returns *net.UDPAddr peers; WriteTo takes *net.UDPAddr.
func (s *Stack) ListenUDP(port uint16) (net.PacketConn, error) { return nil, errors.ErrUnsupported }

// ListenDHCP opens the DHCP server socket: UDP port 67 on any address with
// broadcast enabled, so it receives requests from 0.0.0.0:68 to
// 255.255.255.255:67, and WriteTo 255.255.255.255:68 (or a unicast address)
// sends from the router address. Only one may be open at a time.
func (s *Stack) ListenDHCP() (net.PacketConn, error) { return nil, errors.ErrUnsupported }

// ProbeAddr reports whether ip (which must be inside Config.Addr's subnet and
// not the router address) answers ARP on the hub. A recent neighbour-cache
// entry counts as an answer. It returns (false, nil) when ARP resolution
// fails (about 3 s of probes) and ctx.Err() when ctx ends first.
func (s *Stack) ProbeAddr(ctx context.Context, ip netip.Addr) (inUse bool, err error) {
	return false, errors.ErrUnsupported
}

// Stats returns a snapshot of the counters.
func (s *Stack) Stats() Stats { return Stats{} }

// Accept completes the client's handshake and returns the connection (with
// TCP keepalive enabled: 60 s idle, 30 s interval, 9 probes). If the
// handshake cannot be completed (the client gave up), it returns an error and
// the request is finished. Accept after Accept or Reject returns an error.
func (r *TCPRequest) Accept() (TCPConn, error) { return nil, errors.ErrUnsupported }

// Reject refuses the connection: RejectRST sends a reset, the other kinds
// send the matching ICMP destination unreachable quoting the client's SYN.
// Calling it after Accept or Reject does nothing.
func (r *TCPRequest) Reject(how Reject) {}

// Accept creates the flow's connection: Read returns datagrams from Src to
// Dst (the first one included), Write sends a datagram from Dst to Src.
// Calling it a second time returns an error.
func (r *UDPRequest) Accept() (net.Conn, error) { return nil, errors.ErrUnsupported }

// Reject refuses the flow with an ICMP destination unreachable quoting the
// first datagram (RejectRST means RejectPortUnreachable). Calling it after
// Accept or Reject does nothing.
func (r *UDPRequest) Reject(how Reject) {}
