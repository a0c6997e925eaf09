package main

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// The dhcp mode times a DHCP server without a DHCP client program: it
// sends DISCOVER and REQUEST itself on an AF_PACKET socket (root) and
// reports DISCOVER→OFFER and DISCOVER→ACK. Runs with one fixed MAC after a
// warm-up lease are the steady state (the server knows the client, as on a
// renew after a reboot); one run with a fresh random MAC is the first
// lease (acrouter probes a new address with ARP first).

// Frame layout facts: Ethernet II (14 bytes), IPv4 (RFC 791, IHL words),
// UDP (RFC 768, 8 bytes), DHCP on ports 67/68 (RFC 2131).
const (
	ethHdrLen    = 14
	ethTypeIPv4  = 0x0800
	ipProtoUDP   = 17
	udpHdrLen    = 8
	dhcpSrvPort  = 67
	dhcpCliPort  = 68
	maxFrameRead = 2048
)

// DHCPRun is one DISCOVER→ACK exchange.
type DHCPRun struct {
	MAC     string  `json:"mac"`
	OfferUS float64 `json:"offer_us,omitempty"`
	AckUS   float64 `json:"ack_us,omitempty"`
	Addr    string  `json:"addr,omitempty"`
	Error   string  `json:"error,omitempty"`
}

// DHCPResult is the outcome of the dhcp mode.
type DHCPResult struct {
	Mode    string    `json:"mode"`
	Iface   string    `json:"iface"`
	MAC     string    `json:"mac"`
	First   *DHCPRun  `json:"first,omitempty"`  // fresh random MAC: a first lease
	Warmup  *DHCPRun  `json:"warmup,omitempty"` // the fixed MAC's first exchange (not in the sample)
	Runs    []DHCPRun `json:"runs"`
	Offer   Latency   `json:"offer"` // fixed MAC, DISCOVER→OFFER
	Ack     Latency   `json:"ack"`   // fixed MAC, DISCOVER→ACK
	Errors  errCounts `json:"errors"`
	Elapsed float64   `json:"elapsed_s"`
}

func runDHCP(args []string) (any, error) {
	fs := flag.NewFlagSet("dhcp", flag.ExitOnError)
	ifname := fs.String("i", "eth0", "interface (the client namespace's)")
	n := fs.Int("n", 10, "exchanges with the fixed MAC (after one warm-up)")
	macS := fs.String("mac", "02:ac:be:00:00:01", "fixed test MAC")
	fresh := fs.Bool("fresh", true, "first one exchange with a fresh random MAC (first lease)")
	gap := fs.Duration("gap", 150*time.Millisecond, "pause between exchanges (acrouter paces broadcast replies at 10/s)")
	timeout := fs.Duration("timeout", 2*time.Second, "per-reply timeout")
	bound := fs.Duration("max", 20*time.Second, "overall time bound")
	_ = fs.Parse(args)
	mac, err := net.ParseMAC(*macS)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("-mac %q: not an Ethernet MAC", *macS)
	}
	ifi, err := net.InterfaceByName(*ifname)
	if err != nil {
		return nil, err
	}
	c, err := openPacket(ifi.Index)
	if err != nil {
		return nil, err
	}
	defer c.close()
	res := DHCPResult{Mode: "dhcp", Iface: *ifname, MAC: mac.String(), Runs: []DHCPRun{}}
	start := time.Now()
	deadline := start.Add(*bound)
	one := func(m net.HardwareAddr) DHCPRun {
		r := exchangeDHCP(c, m, *timeout, deadline)
		if r.Error != "" {
			res.Errors.add(errors.New(r.Error))
		}
		return r
	}
	pause := func() bool {
		if time.Now().Add(*gap).After(deadline) {
			return false
		}
		time.Sleep(*gap) // pacing between exchanges, not waiting for an event
		return true
	}
	if *fresh {
		m := make(net.HardwareAddr, 6)
		rand.Read(m)
		m[0] = m[0]&^1 | 2 // unicast, locally administered
		r := one(m)
		res.First = &r
		pause()
	}
	w := one(mac)
	res.Warmup = &w
	var offers, acks []time.Duration
	for i := 0; i < *n && pause(); i++ {
		r := one(mac)
		res.Runs = append(res.Runs, r)
		if r.Error == "" {
			offers = append(offers, time.Duration(r.OfferUS*1e3))
			acks = append(acks, time.Duration(r.AckUS*1e3))
		}
	}
	res.Offer, res.Ack = summarize(offers), summarize(acks)
	res.Elapsed = time.Since(start).Seconds()
	return res, nil
}

// exchangeDHCP runs DISCOVER → OFFER → REQUEST → ACK for mac.
func exchangeDHCP(c *packetConn, mac net.HardwareAddr, timeout time.Duration, deadline time.Time) DHCPRun {
	r := DHCPRun{MAC: mac.String()}
	fail := func(err error) DHCPRun { r.Error = err.Error(); return r }
	disc, err := dhcpv4.NewDiscovery(mac)
	if err != nil {
		return fail(err)
	}
	t0 := time.Now()
	if err := c.send(dhcpFrame(mac, disc.ToBytes())); err != nil {
		return fail(fmt.Errorf("send DISCOVER: %w", err))
	}
	offer, err := c.await(disc.TransactionID, mac, dhcpv4.MessageTypeOffer, minTime(t0.Add(timeout), deadline))
	if err != nil {
		return fail(fmt.Errorf("OFFER: %w", err))
	}
	r.OfferUS = float64(time.Since(t0)) / float64(time.Microsecond)
	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		return fail(err)
	}
	if err := c.send(dhcpFrame(mac, req.ToBytes())); err != nil {
		return fail(fmt.Errorf("send REQUEST: %w", err))
	}
	ack, err := c.await(req.TransactionID, mac, dhcpv4.MessageTypeAck, minTime(time.Now().Add(timeout), deadline))
	if err != nil {
		return fail(fmt.Errorf("ACK: %w", err))
	}
	r.AckUS = float64(time.Since(t0)) / float64(time.Microsecond)
	r.Addr = ack.YourIPAddr.String()
	return r
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// dhcpFrame wraps a client message in UDP 68→67, IPv4 0.0.0.0→255.255.255.255
// and a broadcast Ethernet frame from mac.
func dhcpFrame(mac net.HardwareAddr, payload []byte) []byte {
	const ipLen = 20
	f := make([]byte, ethHdrLen+ipLen+udpHdrLen+len(payload))
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], ethTypeIPv4)
	ip := f[ethHdrLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen+udpHdrLen+len(payload)))
	ip[8] = 64 // TTL
	ip[9] = ipProtoUDP
	copy(ip[16:20], []byte{255, 255, 255, 255}) // source 0.0.0.0
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:ipLen]))
	udp := ip[ipLen:]
	binary.BigEndian.PutUint16(udp[0:], dhcpCliPort)
	binary.BigEndian.PutUint16(udp[2:], dhcpSrvPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(udpHdrLen+len(payload)))
	// UDP checksum 0: none (allowed over IPv4)
	copy(udp[udpHdrLen:], payload)
	return f
}

func ipChecksum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

var errNotDHCPReply = errors.New("not a DHCP server reply")

// parseDHCPFrame decodes an Ethernet frame carrying a DHCP server message
// (IPv4, UDP to port 68). It never reads outside f.
func parseDHCPFrame(f []byte) (*dhcpv4.DHCPv4, error) {
	if len(f) < ethHdrLen+20+udpHdrLen || binary.BigEndian.Uint16(f[12:]) != ethTypeIPv4 {
		return nil, errNotDHCPReply
	}
	ip := f[ethHdrLen:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl+udpHdrLen || ip[9] != ipProtoUDP {
		return nil, errNotDHCPReply
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 { // a fragment
		return nil, errNotDHCPReply
	}
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total < ihl+udpHdrLen || total > len(ip) {
		return nil, errNotDHCPReply
	}
	udp := ip[ihl:total]
	if binary.BigEndian.Uint16(udp[2:]) != dhcpCliPort || binary.BigEndian.Uint16(udp[0:]) != dhcpSrvPort {
		return nil, errNotDHCPReply
	}
	ul := int(binary.BigEndian.Uint16(udp[4:]))
	if ul < udpHdrLen || ul > len(udp) {
		return nil, errNotDHCPReply
	}
	m, err := dhcpv4.FromBytes(udp[udpHdrLen:ul])
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotDHCPReply, err)
	}
	if m.OpCode != dhcpv4.OpcodeBootReply {
		return nil, errNotDHCPReply
	}
	return m, nil
}

// packetConn is an AF_PACKET socket bound to one interface, IPv4 frames only.
type packetConn struct {
	fd      int
	ifindex int
	buf     []byte
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openPacket(ifindex int) (*packetConn, error) {
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, int(htons(syscall.ETH_P_IP)))
	if err != nil {
		return nil, os.NewSyscallError("socket(AF_PACKET) (needs root)", err)
	}
	c := &packetConn{fd: fd, ifindex: ifindex, buf: make([]byte, maxFrameRead)}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_IP), Ifindex: ifindex}); err != nil {
		c.close()
		return nil, os.NewSyscallError("bind(AF_PACKET)", err)
	}
	// Promiscuous: replies go to the test MAC, not the interface's.
	mreq := struct {
		ifindex int32
		typ     uint16
		alen    uint16
		addr    [8]byte
	}{ifindex: int32(ifindex), typ: syscall.PACKET_MR_PROMISC}
	if _, _, e := syscall.Syscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), syscall.SOL_PACKET, syscall.PACKET_ADD_MEMBERSHIP,
		uintptr(unsafe.Pointer(&mreq)), unsafe.Sizeof(mreq), 0); e != 0 {
		c.close()
		return nil, os.NewSyscallError("setsockopt(PACKET_ADD_MEMBERSHIP)", e)
	}
	return c, nil
}

func (c *packetConn) close() { syscall.Close(c.fd) }

func (c *packetConn) send(frame []byte) error {
	sa := &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_IP), Ifindex: c.ifindex, Halen: 6}
	copy(sa.Addr[:], frame[:6])
	return syscall.Sendto(c.fd, frame, 0, sa)
}

// await reads frames until a reply of type typ for xid and mac arrives or
// the deadline passes (bounded: every read has a timeout).
func (c *packetConn) await(xid dhcpv4.TransactionID, mac net.HardwareAddr, typ dhcpv4.MessageType, deadline time.Time) (*dhcpv4.DHCPv4, error) {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, os.ErrDeadlineExceeded
		}
		tv := syscall.NsecToTimeval(left.Nanoseconds())
		if tv.Sec == 0 && tv.Usec == 0 {
			tv.Usec = 1
		}
		if err := syscall.SetsockoptTimeval(c.fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
			return nil, os.NewSyscallError("setsockopt(SO_RCVTIMEO)", err)
		}
		n, _, err := syscall.Recvfrom(c.fd, c.buf, 0)
		if err != nil {
			if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
				continue
			}
			return nil, os.NewSyscallError("recvfrom", err)
		}
		m, err := parseDHCPFrame(c.buf[:n])
		if err != nil || m.TransactionID != xid || !bytesEqual(m.ClientHWAddr, mac) {
			continue
		}
		switch m.MessageType() {
		case typ:
			return m, nil
		case dhcpv4.MessageTypeNak:
			return nil, errors.New("NAK: " + m.Message())
		}
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }
