// Package vpnlink is a client of the SoftEther VPN protocol: it logs in to a
// virtual hub of a SoftEther VPN Server as a bridge/routing-mode session and
// carries Ethernet frames both ways. It knows TLS and the SoftEther protocol
// and nothing of IP.
package vpnlink
