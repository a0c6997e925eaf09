// Package dhcp is acrouter's DHCPv4 server for the virtual hub segment.
//
// It serves on any net.PacketConn bound to port 67 (a gVisor gonet conn in
// production, an in-memory or loopback conn in tests) and depends only on
// the standard library and github.com/insomniacslk/dhcp/dhcpv4 for the
// packet codec. It reads the conn itself (one goroutine, one reused buffer)
// instead of using server4, which allocates and starts a goroutine per
// packet.
//
// Compared with SecureNAT's virtual DHCP server (src/Cedar/Virtual.c), it
// adds MAC reservations, leases persisted across restarts (StateFile), pools
// larger than a /24, options 26 and 119, RFC 3442 routes with the default
// route included, client-identifier (option 61) keyed leases, DECLINE
// handling, an optional conflict probe before offering, and a defence
// against DHCP starvation (guard.go): a rate cap on clients it has never
// seen, a short offer hold and probation leases for clients that have not
// renewed yet, so a flood of random MACs cannot take more than half the pool.
//
// Assignment order for a client (its key is option 61 if present, else its
// MAC): its reservation, then its current or last lease record (bound,
// expired or released), then the address it asks for if free, then a fresh
// address (never used ones first, then the one unused longest).
//
// The server is authoritative for its subnet: REQUESTs for addresses that
// are not on the subnet or not available get a NAK, and an INIT-REBOOT or
// RENEW for a free pool address the server has no record of (for example
// after a restart without StateFile) is ACKed.
package dhcp
