package netstacktest

import (
	"fmt"
	"net"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// ListenTCP listens on the host's address and port (0: ephemeral), for
// tests in which the router connects to a service on a hub client (inbound
// port forwarding). Accepted connections support CloseWrite.
func (h *Host) ListenTCP(port uint16) (net.Listener, error) {
	l, err := gonet.ListenTCP(h.s, tcpip.FullAddress{NIC: hostNIC, Addr: h.addr, Port: port}, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("netstacktest: listen tcp :%d: %w", port, err)
	}
	return l, nil
}
