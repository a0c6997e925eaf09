// Package netstack runs acrouter's virtual host: a gVisor userspace TCP/IP
// stack on an Ethernet frame Link. It is the only package that imports
// gVisor; it hands flows to its caller as standard-library types
// (net.Conn, net.PacketConn, netip).
package netstack
