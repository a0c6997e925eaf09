// Package proto holds the pure wire codecs of the SoftEther VPN native
// protocol used by vpnlink and vpnlinktest: the PACK serialization, SHA-0
// password hashing, the minimal HTTP/1.1 framing of the handshake and the
// data-phase record format. Nothing here does I/O beyond reading from a
// caller-provided bufio.Reader; every decoder is bounded and fuzzed.
//
// Facts (constants, layouts, algorithms) come from SoftEther VPN's source
// (github.com/SoftEtherVPN/SoftEtherVPN, Apache-2.0); the file each fact comes
// from is named next to it. No SoftEther code is reproduced.
package proto
