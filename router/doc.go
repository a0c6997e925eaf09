// Package router is acrouter's policy layer: the NAT flow table, limits,
// timeouts and the forwarding of TCP, UDP and ICMP flows from the hub onto
// host sockets. It uses netstack's standard-library API only (no gVisor
// types).
//
// # Flows
//
// New installs handlers on a netstack.Stack. For every new flow from a hub
// client to a non-local address the router checks the ACL, then the session
// limits, then opens the host side:
//
//   - TCP: the host connection is dialed FIRST (bounded by DialTimeout and
//     MaxInFlightDials); only when it is up is the client's handshake
//     completed, so a refused destination yields an RST and an unreachable
//     one an ICMP host/net unreachable, exactly as the client would see
//     without the router. Two copy goroutines per flow splice the
//     connections with half-close: a FIN from one side becomes CloseWrite on
//     the other while the reverse direction keeps flowing. Host sockets use
//     TCP keepalive.
//   - UDP: each (client address:port, destination address:port) gets its own
//     connected host socket; replies go back through the flow's virtual
//     conn. Datagrams up to 65507 bytes pass untruncated.
//   - ICMP echo: forwarded for real, through unprivileged ICMP sockets
//     (Linux net.ipv4.ping_group_range) or, when those are not allowed but
//     the process has CAP_NET_RAW, one raw socket. Replies are mapped back to
//     the client's identifier and sequence number. If the host allows
//     neither, New logs that once and echo requests get no answer: replies
//     are never fabricated. A request arriving with TTL 1 is answered with
//     time exceeded (the router is a hop).
//
// Flows end on idle timeouts (TCPIdleTimeout, UDPIdleTimeout,
// DNSIdleTimeout for port 53, ICMPIdleTimeout), on FIN in both directions,
// on errors, on eviction and on Close. The data path stores the last
// activity time in an atomic; the idle timer checks it when it fires and
// re-arms itself, so traffic never touches a timer.
//
// # Limits
//
// MaxSessions (global) and MaxSessionsPerClient count every live flow,
// including TCP flows still dialing. When a cap is reached, the least
// recently active UDP or ICMP flow (of that client, for the per-client cap)
// that has been idle for at least one second is evicted to make room;
// established TCP flows are never evicted. If there is nothing to evict,
// the new flow is refused: TCP with an RST, UDP and ICMP with an ICMP
// "administratively prohibited". MaxInFlightDials caps concurrent TCP dials
// so that black-holed destinations cannot hold the stack's in-flight SYN
// slots: over the cap, SYNs get an RST at once. Every flow needs one host
// file descriptor; when the process runs out (EMFILE/ENFILE) the flow is
// refused (RST) and a rate-limited error says so. Every refusal is counted
// by reason (Stats.Refused) and logged at most once per second per reason,
// with the number of suppressed lines.
//
// # Access control
//
// Rules are evaluated first match wins, after DefaultDenyRules (host
// loopback 127.0.0.0/8 and ::1, 0.0.0.0/8 and ::, link-local 169.254.0.0/16
// and fe80::/10 which include cloud metadata services, multicast, and
// 255.255.255.255) unless Config.NoDefaultDeny. A flow that matches no rule
// is allowed. Denied flows are answered with ICMP "administratively
// prohibited" (code 13), which clients report as "no route to host". The
// text form, parsed by ParseRule and printed by Rule.String, is
//
//	allow|deny [tcp|udp|icmp|any] [from PREFIX] [to PREFIX] [port N|N-M]
//
// for example "deny tcp to 10.0.0.0/8 port 22" or
// "allow udp from 192.168.30.0/24 to 8.8.8.8 port 53".
//
// # Observability
//
// Flows lists the live flows (protocol, client, destination, state, bytes
// and packets each way, creation time, age, last activity); Stats returns
// counters. With Config.NATLog every flow writes an Info line when it opens
// and one when it closes (protocol, client → destination, bytes each way,
// duration, close reason: fin, idle, evicted, shutdown, reset, error ...),
// in the spirit of SoftEther's NAT log (src/Cedar/Virtual.c CreateNatTcp:
// NLog "LH_NAT_TCP_CREATED" with the session id, client and destination).
//
// # Inbound port forwarding
//
// AddForward (or Config.Forwards) listens on the router's host, as the
// process's user, and carries each TCP connection, or each remote peer's UDP
// datagrams (one mapping per peer, closed after UDPIdleTimeout), to a port of
// a hub client, from the router address. The text form, parsed by
// ParsePortForward, is "tcp 0.0.0.0:8022 -> 192.168.30.50:22". Forwards can
// be added and removed at run time (RemoveForward ends the forward's
// connections) and are listed with their counters by Forwards. Forwarded
// connections are flows (Flow.Inbound, inbound=true in the NAT log) under the
// session caps, with the hub client as the client; the ACL does not apply to
// them.
//
// # Host-loopback alias
//
// Config.LoopbackAlias (off by default) is one address that leads to the
// host's own 127.0.0.1: TCP, UDP and ping to it reach services that listen
// only on the host's loopback. It is a security decision: every such service
// becomes reachable by every hub client unless the ACL restricts the alias.
// The ACL sees the alias address, and the default deny of 127.0.0.0/8 stays
// in force for every other address. Inside the router's subnet the stack
// answers ARP for the alias.
//
// # What it does not do
//
// No IPv6 ICMP (netstack is IPv4 only), no per-flow bandwidth limits.
package router
