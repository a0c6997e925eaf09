package main

import (
	"bytes"
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// serverFrame wraps a server message like a DHCP server would: UDP 67→68.
func serverFrame(t testing.TB, m *dhcpv4.DHCPv4) []byte {
	t.Helper()
	f := dhcpFrame(net.HardwareAddr{2, 0, 0, 0, 0, 0x99}, m.ToBytes())
	udp := f[ethHdrLen+20:]
	udp[0], udp[1], udp[2], udp[3] = 0, dhcpSrvPort, 0, dhcpCliPort
	return f
}

func testOffer(t testing.TB) (*dhcpv4.DHCPv4, *dhcpv4.DHCPv4) {
	t.Helper()
	mac := net.HardwareAddr{2, 0xac, 0xbe, 0, 0, 1}
	disc, err := dhcpv4.NewDiscovery(mac)
	if err != nil {
		t.Fatal(err)
	}
	offer, err := dhcpv4.NewReplyFromRequest(disc,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithYourIP(net.IPv4(192, 168, 30, 10)),
		dhcpv4.WithServerIP(net.IPv4(192, 168, 30, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 168, 30, 1))))
	if err != nil {
		t.Fatal(err)
	}
	return disc, offer
}

func TestDHCPFrameRoundTrip(t *testing.T) {
	disc, offer := testOffer(t)
	f := dhcpFrame(disc.ClientHWAddr, disc.ToBytes())
	if !bytes.Equal(f[:6], []byte{255, 255, 255, 255, 255, 255}) || !bytes.Equal(f[6:12], disc.ClientHWAddr) {
		t.Fatalf("Ethernet header %x", f[:14])
	}
	if ipChecksum(f[ethHdrLen:ethHdrLen+20]) != 0 {
		t.Fatal("IPv4 header checksum does not verify")
	}
	if _, err := parseDHCPFrame(f); err == nil {
		t.Fatal("a client request (to port 67) parsed as a server reply")
	}
	m, err := parseDHCPFrame(serverFrame(t, offer))
	if err != nil {
		t.Fatal(err)
	}
	if m.TransactionID != disc.TransactionID || m.MessageType() != dhcpv4.MessageTypeOffer || !m.YourIPAddr.Equal(net.IPv4(192, 168, 30, 10)) {
		t.Fatalf("parsed %v", m.Summary())
	}
	req, err := dhcpv4.NewRequestFromOffer(m)
	if err != nil || req.TransactionID != disc.TransactionID || !req.RequestedIPAddress().Equal(m.YourIPAddr) {
		t.Fatalf("request %v %v", req, err)
	}
	for name, mut := range map[string]func(b []byte) []byte{
		"short":     func(b []byte) []byte { return b[:40] },
		"ethertype": func(b []byte) []byte { b[12] = 0x86; return b },
		"ipv6":      func(b []byte) []byte { b[14] = 0x65; return b },
		"tcp":       func(b []byte) []byte { b[14+9] = 6; return b },
		"fragment":  func(b []byte) []byte { b[14+6] = 0x20; return b },
		"ip length": func(b []byte) []byte { b[14+2] = 0xff; return b },
		"udp len":   func(b []byte) []byte { b[14+20+4] = 0xff; return b },
		"port":      func(b []byte) []byte { b[14+20+3] = 69; return b },
	} {
		if _, err := parseDHCPFrame(mut(serverFrame(t, offer))); err == nil {
			t.Errorf("%s: bad frame accepted", name)
		}
	}
}

// FuzzParseDHCPFrame: arbitrary frames never panic, and what parses is a
// BOOTREPLY.
func FuzzParseDHCPFrame(f *testing.F) {
	_, offer := testOffer(f)
	f.Add(serverFrame(f, offer))
	f.Add(make([]byte, 60))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDHCPFrame(b)
		if err == nil && m.OpCode != dhcpv4.OpcodeBootReply {
			t.Fatalf("accepted a %v", m.OpCode)
		}
	})
}
