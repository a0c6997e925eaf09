// Package netstack runs acrouter's virtual host: a gVisor userspace TCP/IP
// stack on an Ethernet frame Link. It is the only package that imports
// gVisor; it hands flows to its caller as standard-library types
// (net.Conn, net.PacketConn, netip).
//
// # What it does
//
// A Stack is one host on the hub with Config.MAC and the IPv4 address in
// Config.Addr. It answers ARP for that address only (and for addresses added
// with AddProxyARP), answers ping to it, reassembles and fragments IP, runs
// listeners on it (ListenTCP, ListenUDP, ListenDHCP) and opens connections
// from it to hosts on the hub (DialTCP, DialUDP). Every flow to any other
// address is handed to the caller's handlers:
//
//   - a TCP SYN becomes a TCPRequest (gVisor's tcp.Forwarder); the handler
//     dials first and then calls Accept (handshake completes) or Reject (RST
//     or an ICMP destination unreachable quoting the SYN);
//   - the first UDP datagram of a (src, dst) flow becomes a UDPRequest;
//   - an ICMP echo request becomes an EchoRequest; the stack never answers
//     it itself (PEERS.md §3 pitfall 5) — the caller replies with
//     WriteEchoReply or reports an error with WriteICMPUnreachable /
//     WriteICMPTimeExceeded.
//
// The NIC is promiscuous and spoofing (as in gvisor-tap-vsock) so that it
// accepts packets to any address and replies from them. The link endpoint
// keeps that from leaking onto the hub: it drops unicast frames for other
// MACs, frames from our own MAC, multicast IP, non-IPv4/ARP EtherTypes, and
// ARP requests for addresses other than the router's and the proxy-ARP ones
// (gVisor would answer them all in spoofing mode), and it rewrites the sender
// address of our ARP requests to the router address.
//
// # Lifecycle and ownership
//
// New starts two goroutines: one reads frames from the Link and injects
// them (a Link that implements BatchReader hands over whole bursts; the
// stack verifies checksums and coalesces each burst's TCP segments with
// gVisor's GRO), one writes queued frames to the Link in batches. A sender
// that finds no other sender writing hands its frames to the Link itself,
// and one that finds the queue full flushes a batch itself (backpressure,
// not drops). The
// caller created the Link; Stack.Close stops the stack (no frame is written
// after it returns), then closes the Link if it implements io.Closer and
// waits for the read goroutine. A Link without Close must be closed by its
// owner for Close to return. Close also waits for running flow handlers,
// whose connections it aborts.
//
// # What it does not do
//
// No IPv6 (frames are dropped), no IP forwarding or NAT policy (that is the
// router package: which flows to accept, dialing, limits, timeouts), no DHCP
// or DNS protocol logic (it only provides their sockets). The hub carries
// MTU-sized frames: GRO and GSO only shape what gVisor's TCP works with
// (see PERF.md).
package netstack
