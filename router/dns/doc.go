// Package dns is acrouter's DNS redirector: a small caching forwarder that
// answers hub clients on the router address (UDP and TCP port 53) from the
// host's resolvers.
//
// It serves any net.PacketConn / net.Listener (gVisor gonet conns in
// production, loopback sockets in tests) and depends only on the standard
// library and github.com/miekg/dns (v1) for the message codec and TCP
// upstream exchanges. UDP upstream exchanges use a small pool of connected
// sockets per upstream with random IDs, strict reply matching and socket
// rotation (udpconn.go states the anti-spoofing scheme); misses run on
// long-lived workers, at most MaxInflight.
//
// SecureNAT relays UDP queries as packets to the host's first IPv4
// resolver and has no TCP, cache or local names (src/Cedar/Virtual.c,
// UdpRecvForInternet dns_proxy; GetDefaultDns). This package instead:
//   - follows /etc/resolv.conf (all IPv4 and IPv6 nameservers, loopback
//     stubs such as 127.0.0.53 included), re-reading it when it changes;
//   - fails over between upstreams in order, per-attempt timeout, and
//     answers SERVFAIL rather than staying silent;
//   - passes every record type and the DNSSEC bits (DO, CD, AD) through,
//     restores the client's transaction id and question spelling, honours
//     the client's EDNS buffer size (truncating with TC when needed) and
//     retries truncated UDP answers over TCP upstream;
//   - caches answers (TTL-respecting LRU keyed by question, DO and CD);
//   - answers static names (A, AAAA, PTR) and the router's own name;
//   - limits queries per client IP, concurrent upstream exchanges and TCP
//     connections.
package dns
