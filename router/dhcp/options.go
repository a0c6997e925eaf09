package dhcp

import (
	"encoding/binary"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Option codes we set directly in dhcpv4.Options.
const (
	optSubnetMask    = 1
	optRouter        = 3
	optDNS           = 6
	optDomainName    = 15
	optMTU           = 26
	optLeaseTime     = 51
	optMessageType   = 53
	optServerID      = 54
	optMessage       = 56
	optMaxMsgSize    = 57
	optRenewalTime   = 58
	optRebindingTime = 59
	optClientID      = 61
	optRelayAgent    = 82
	optSearchList    = 119
	optClasslessRt   = 121
	optMSClasslessRt = 249 // Microsoft's pre-RFC 3442 code, same encoding
)

// minMaxMsgSize is the DHCP message size every client must accept
// (RFC 2131 §2: 576-byte IP datagram minus IP and UDP headers).
const minMaxMsgSize = 576 - 28

func u32b(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func secs(d time.Duration) uint32 {
	s := d / time.Second
	if s > 0xffffffff {
		return 0xffffffff
	}
	return uint32(s)
}

// reply builds an OFFER or ACK carrying the configuration options. yiaddr 0
// means none (INFORM); a lease time lt > 0 adds options 51, 58 and 59.
func (s *Server) reply(req *dhcpv4.DHCPv4, typ dhcpv4.MessageType, yiaddr uint32, lt time.Duration) *dhcpv4.DHCPv4 {
	d := s.d
	m := s.header(req)
	m.YourIPAddr = u2ip(yiaddr)
	m.ServerIPAddr = u2ip(d.server)
	if typ == dhcpv4.MessageTypeAck {
		m.ClientIPAddr = req.ClientIPAddr // RFC 2131 table 3
	}
	o := m.Options
	o[optMessageType] = []byte{byte(typ)}
	o[optServerID] = u32b(d.server)
	if lt > 0 {
		o[optLeaseTime] = u32b(secs(lt))
		o[optRenewalTime] = u32b(secs(lt / 2))
		o[optRebindingTime] = u32b(secs(lt / 8 * 7))
	}
	o[optSubnetMask] = []byte(d.mask)
	if d.hasGateway {
		o[optRouter] = u32b(d.gateway)
	}
	if len(d.dns) > 0 {
		b := make([]byte, 0, 4*len(d.dns))
		for _, ip := range d.dns {
			b = append(b, ip...)
		}
		o[optDNS] = b
	}
	if d.domain != nil {
		o[optDomainName] = d.domain
	}
	if d.searchList != nil {
		o[optSearchList] = d.searchList
	}
	if d.mtu != 0 {
		o[optMTU] = binary.BigEndian.AppendUint16(nil, uint16(d.mtu))
	}
	if d.routes != nil {
		o[optClasslessRt] = d.routes
		o[optMSClasslessRt] = d.routes
	}
	return m
}

// header starts a BOOTREPLY for req, copying the fields RFC 2131 table 3
// and RFC 6842 (client identifier) require.
func (s *Server) header(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	m := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        req.HWType,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: req.GatewayIPAddr,
		ClientHWAddr:  req.ClientHWAddr,
		Options:       make(dhcpv4.Options, 16),
	}
	if v := req.Options.Get(dhcpv4.OptionClientIdentifier); v != nil {
		m.Options[optClientID] = v
	}
	if v := req.Options.Get(dhcpv4.OptionRelayAgentInformation); v != nil {
		m.Options[optRelayAgent] = v
	}
	return m
}

func (s *Server) nak(req *dhcpv4.DHCPv4, reason string) *dhcpv4.DHCPv4 {
	m := s.header(req)
	if ipU32(req.GatewayIPAddr) != 0 {
		m.SetBroadcast() // RFC 2131 §4.3.2: relay must broadcast the NAK
	}
	m.Options[optMessageType] = []byte{byte(dhcpv4.MessageTypeNak)}
	m.Options[optServerID] = u32b(s.d.server)
	m.Options[optMessage] = []byte(reason)
	return m
}

// encode serialises m, dropping optional options if the result exceeds the
// client's maximum message size (option 57, else 548): first option 249
// (only pre-Vista Windows needs it), then option 119.
func (s *Server) encode(req, m *dhcpv4.DHCPv4) []byte {
	b := m.ToBytes()
	limit := minMaxMsgSize
	if v := req.Options[optMaxMsgSize]; len(v) == 2 {
		limit = max(limit, int(binary.BigEndian.Uint16(v))-28)
	}
	for _, code := range []uint8{optMSClasslessRt, optSearchList} {
		if len(b) <= limit {
			break
		}
		if _, ok := m.Options[code]; ok {
			delete(m.Options, code)
			b = m.ToBytes()
		}
	}
	return b
}
