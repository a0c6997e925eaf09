// Package router is acrouter's policy layer: the NAT flow table, limits,
// timeouts and the forwarding of TCP, UDP and ICMP flows from the hub onto
// host sockets.
package router
