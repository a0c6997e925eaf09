package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/acrouter/acrouter/netstack/netstacktest"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

// Hostile frames from the hub: what a misbehaving or malicious host on the
// hub can send to the router's virtual host. None may crash acrouter, change
// its address or MAC, or stop a well-behaved client from working.

var (
	attackerMAC = net.HardwareAddr{0x02, 0x66, 0, 0, 0, 0x66}
	bcastMAC    = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	routerIP    = netip.MustParseAddr("192.168.30.1")
	attackerIP  = netip.MustParseAddr("192.168.30.66")
	clientIP    = netip.MustParseAddr("192.168.30.50")
)

func frameOf(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], typ)
	return append(f, payload...)
}

func ipSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// ip4 builds an IPv4 packet; mutate may break the header after the checksum
// is computed unless it recomputes it.
func ip4(src, dst netip.Addr, proto byte, payload []byte, mutate func(h []byte)) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h[8] = 64
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	if mutate != nil {
		mutate(h)
	}
	binary.BigEndian.PutUint16(h[10:], 0)
	binary.BigEndian.PutUint16(h[10:], ipSum(h))
	return append(h, payload...)
}

func arpPacket(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	p := make([]byte, 28)
	binary.BigEndian.PutUint16(p[0:], 1)
	binary.BigEndian.PutUint16(p[2:], 0x0800)
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:], op)
	copy(p[8:], sha)
	s, t := spa.As4(), tpa.As4()
	copy(p[14:], s[:])
	copy(p[18:], tha)
	copy(p[24:], t[:])
	return p
}

// hostileFrames is a catalogue of malformed and spoofed frames aimed at the
// router (rmac).
// The frames claiming the router's MAC come last: they make the hub switch
// send the router's frames to the attacker until the router sends again.
func hostileFrames(rmac net.HardwareAddr) []hostileKind {
	at, rt := attackerIP, routerIP
	tcpHdr := func(flags byte, off byte) []byte {
		t := make([]byte, 20)
		binary.BigEndian.PutUint16(t[0:], 40000)
		binary.BigEndian.PutUint16(t[2:], 53)
		t[12] = off << 4
		t[13] = flags
		binary.BigEndian.PutUint16(t[14:], 65535)
		return t
	}
	udpHdr := func(length uint16, dport uint16) []byte {
		u := make([]byte, 8, 64)
		binary.BigEndian.PutUint16(u[0:], 40000)
		binary.BigEndian.PutUint16(u[2:], dport)
		binary.BigEndian.PutUint16(u[4:], length)
		return append(u, "payload-payload-payload"...)
	}
	far := netip.MustParseAddr("10.99.0.1")
	ip := func(dst netip.Addr, proto byte, payload []byte, mutate func([]byte)) []byte {
		return frameOf(rmac, attackerMAC, 0x0800, ip4(at, dst, proto, payload, mutate))
	}
	fragment := func(off uint16, mf bool, n int) []byte {
		return ip(far, 17, make([]byte, n), func(h []byte) {
			v := off / 8
			if mf {
				v |= 0x2000
			}
			binary.BigEndian.PutUint16(h[6:], v)
			binary.BigEndian.PutUint16(h[4:], 0x4242)
		})
	}
	m := []hostileKind{
		{"truncated ethernet", [][]byte{{}, {0xff}, rmac, append(append([]byte{}, rmac...), attackerMAC...)}},
		{"truncated ipv4 header", [][]byte{
			frameOf(rmac, attackerMAC, 0x0800, nil),
			frameOf(rmac, attackerMAC, 0x0800, []byte{0x45, 0, 0}),
			frameOf(rmac, attackerMAC, 0x0800, ip4(at, rt, 6, nil, nil)[:19]),
		}},
		{"bogus ipv4 lengths", [][]byte{
			ip(far, 6, tcpHdr(0x02, 5), func(h []byte) { binary.BigEndian.PutUint16(h[2:], 65535) }), // total length > frame
			ip(far, 6, tcpHdr(0x02, 5), func(h []byte) { binary.BigEndian.PutUint16(h[2:], 10) }),    // total length < header
			ip(far, 6, tcpHdr(0x02, 5), func(h []byte) { h[0] = 0x4f }),                              // IHL 60 > packet
			ip(far, 6, tcpHdr(0x02, 5), func(h []byte) { h[0] = 0x43 }),                              // IHL 12 < 20
			ip(far, 6, tcpHdr(0x02, 5), func(h []byte) { h[0] = 0x65 }),                              // version 6 in an IPv4 frame
			frameOf(rmac, attackerMAC, 0x0800, append(ip4(at, far, 6, tcpHdr(0x02, 5), nil)[:10], 0xde, 0xad, 0xbe, 0xef)),
		}},
		{"bad checksums", [][]byte{
			func() []byte {
				f := ip(far, 6, tcpHdr(0x02, 5), nil)
				f[14+10] ^= 0xff
				return f
			}(),
			ip(far, 6, tcpHdr(0x02, 5), nil), // TCP checksum 0: wrong
		}},
		{"bogus tcp", [][]byte{
			ip(far, 6, tcpHdr(0x02, 15), nil),    // data offset 60 > segment
			ip(far, 6, tcpHdr(0x02, 2), nil),     // data offset 8 < 20
			ip(far, 6, tcpHdr(0x3f, 5), nil),     // every flag
			ip(far, 6, tcpHdr(0x02, 5)[:9], nil), // truncated header
			ip(rt, 6, tcpHdr(0x12, 5), nil),      // SYN-ACK out of nowhere to the router
			ip(rt, 6, tcpHdr(0x04, 5), nil),      // RST to the router
		}},
		{"bogus udp", [][]byte{
			ip(far, 17, udpHdr(65535, 9999), nil), // length > datagram
			ip(far, 17, udpHdr(3, 9999), nil),     // length < header
			ip(rt, 17, udpHdr(0, 53), nil),        // zero length to the DNS server
			ip(rt, 17, udpHdr(65535, 67), nil),    // to the DHCP server
			ip(far, 17, udpHdr(8, 9999)[:5], nil), // truncated header
		}},
		{"bogus icmp", [][]byte{
			ip(far, 1, []byte{8}, nil),                // echo request, 1 byte
			ip(far, 1, []byte{8, 0, 0, 0}, nil),       // no id/seq
			ip(rt, 1, []byte{3, 3, 0, 0, 0, 0}, nil),  // unreachable quoting nothing
			ip(rt, 1, make([]byte, 1400), nil),        // zeros (echo reply) to the router
			ip(far, 1, []byte{0xff, 0xff, 0, 0}, nil), // unknown type
		}},
		{"hostile fragments", [][]byte{
			fragment(0, true, 8), fragment(0, true, 16), fragment(8, true, 8), // overlapping
			fragment(65528, false, 100), // beyond 64 KiB when reassembled
			fragment(65528, true, 1000), // beyond 64 KiB, more to come
			fragment(1480, false, 0),    // empty last fragment
			fragment(8, false, 1400),    // a tail whose head never comes
			fragment(0xfff8&0x1fff*8, true, 8),
		}},
		{"bogus arp", [][]byte{
			frameOf(bcastMAC, attackerMAC, 0x0806, []byte{0, 1, 8, 0}), // truncated
			frameOf(bcastMAC, attackerMAC, 0x0806, func() []byte {
				p := arpPacket(1, attackerMAC, at, make(net.HardwareAddr, 6), rt)
				p[4], p[5] = 255, 255 // hlen/plen that do not fit
				return p
			}()),
			frameOf(bcastMAC, attackerMAC, 0x0806, arpPacket(99, attackerMAC, at, make(net.HardwareAddr, 6), rt)), // unknown op
		}},
		// Claims of the router's address (unicast to the router, so that
		// only the router can be affected).
		{"arp poisoning of the router address", [][]byte{
			frameOf(rmac, attackerMAC, 0x0806, arpPacket(2, attackerMAC, rt, rmac, rt)),                      // reply: 192.168.30.1 is-at attacker
			frameOf(rmac, attackerMAC, 0x0806, arpPacket(1, attackerMAC, rt, make(net.HardwareAddr, 6), at)), // request from 192.168.30.1
			frameOf(rmac, attackerMAC, 0x0806, arpPacket(1, attackerMAC, rt, make(net.HardwareAddr, 6), rt)), // gratuitous
			frameOf(rmac, attackerMAC, 0x0806, arpPacket(2, attackerMAC, rt, rmac, clientIP)),                // reply to a client
		}},
		{"source and destination spoofing", [][]byte{
			frameOf(rmac, bcastMAC, 0x0800, ip4(at, far, 6, tcpHdr(0x02, 5), nil)),    // broadcast source MAC
			ip(netip.MustParseAddr("127.0.0.1"), 6, tcpHdr(0x02, 5), nil),             // to loopback
			ip(netip.MustParseAddr("255.255.255.255"), 17, udpHdr(31, 9), nil),        // limited broadcast
			ip(netip.MustParseAddr("224.0.0.1"), 17, udpHdr(31, 9), nil),              // multicast unicast-framed
			frameOf(rmac, attackerMAC, 0x0800, ip4(rt, far, 6, tcpHdr(0x02, 5), nil)), // source = router IP
			frameOf(rmac, attackerMAC, 0x0800, ip4(far, rt, 17, udpHdr(31, 53), nil)), // source = a LAN address
			frameOf(rmac, attackerMAC, 0x0800, ip4(netip.IPv4Unspecified(), rt, 6, tcpHdr(0x02, 5), nil)),
		}},
		{"other ethertypes", [][]byte{
			frameOf(rmac, attackerMAC, 0x86dd, make([]byte, 60)),                                                     // IPv6 zeros
			frameOf(rmac, attackerMAC, 0x8100, append([]byte{0, 1, 8, 0}, ip4(at, far, 6, tcpHdr(0x02, 5), nil)...)), // VLAN tag
			frameOf(rmac, attackerMAC, 0x0000, make([]byte, 46)),
			frameOf(rmac, attackerMAC, 0x05dc, make([]byte, 46)), // 802.3 length field
		}},
		{"oversized", [][]byte{
			ip(far, 17, make([]byte, 1600), nil),
		}},
		{"router's mac as source", [][]byte{
			frameOf(rmac, rmac, 0x0800, ip4(at, far, 6, tcpHdr(0x02, 5), nil)),
			frameOf(bcastMAC, rmac, 0x0806, arpPacket(1, rmac, at, make(net.HardwareAddr, 6), rt)),
			frameOf(rmac, rmac, 0x0800, ip4(rt, rt, 17, udpHdr(31, 53), nil)), // from the router to itself
		}},
	}
	return m
}

type hostileKind struct {
	name   string
	frames [][]byte
}

// abuseRig is the whole router on an in-memory hub with a well-behaved
// client (host) and an attacker port.
type abuseRig struct {
	app      *app
	host     *netstacktest.Host
	attacker *vpnlinktest.Port
	echo     net.Listener
	echoAddr netip.AddrPort
}

func newAbuseRig(tb testing.TB) *abuseRig {
	tb.Helper()
	a, hub := startTestRouter(tb, 1<<14, "--nat-log=false")
	host, err := netstacktest.NewHost(hub.Attach(), net.HardwareAddr{2, 0xac, 0, 0, 0, 0x50},
		netip.PrefixFrom(clientIP, 24), routerIP)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { host.Close() })
	attacker := hub.Attach()
	tb.Cleanup(func() { attacker.Close() })
	go func() { // drain what the hub floods to the attacker
		buf := make([]byte, 2048)
		for {
			if _, err := attacker.ReadFrame(buf); err != nil {
				return
			}
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
	port := netip.MustParseAddrPort(ln.Addr().String()).Port()
	return &abuseRig{app: a, host: host, attacker: attacker, echo: ln, echoAddr: netip.AddrPortFrom(netip.MustParseAddr("10.99.0.1"), port)}
}

// settle waits (bounded) until the router's virtual host has taken in
// everything the hub delivers: its frame counters stop moving.
func (r *abuseRig) settle() {
	seen := func() uint64 {
		s := r.app.stack.Stats()
		return r.app.link.Status().FramesIn + s.FramesIn + s.DropMalformed + s.DropOwnSource
	}
	last, still := seen(), 0
	for i := 0; i < 2000 && still < 20; i++ {
		time.Sleep(2 * time.Millisecond) // polling counters: there is no event to wait for
		if n := seen(); n != last {
			last, still = n, 0
		} else {
			still++
		}
	}
}

// clientWorks checks the well-behaved client end to end: a TCP echo
// through the NAT and a ping of the router.
func (r *abuseRig) clientWorks(tb testing.TB, what string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := r.host.DialTCP(ctx, r.echoAddr)
	if err != nil {
		tb.Fatalf("%s: client TCP: %v", what, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "still here\n"); err != nil {
		tb.Fatalf("%s: client write: %v", what, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "still here\n" {
		tb.Fatalf("%s: client echo: %q %v", what, line, err)
	}
	if err := r.host.Ping(ctx, routerIP, []byte("ping")); err != nil {
		tb.Fatalf("%s: client ping of the router: %v", what, err)
	}
}

func TestHostileFramesFromHub(t *testing.T) {
	r := newAbuseRig(t)
	r.clientWorks(t, "before")
	rmac := r.app.mac
	before := r.app.stack.Stats()
	kinds := hostileFrames(rmac)
	own := kinds[len(kinds)-1]
	for _, k := range kinds[:len(kinds)-1] {
		// Each kind many times over, so that a leak or a slow path shows.
		for range 50 {
			if err := r.attacker.WriteFrames(k.frames); err != nil {
				t.Fatalf("%s: %v", k.name, err)
			}
		}
		r.settle()
	}
	// Random garbage to the router's MAC: IPv4 and ARP ethertypes.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 5000 {
		p := make([]byte, rng.IntN(120))
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		typ := uint16(0x0800)
		if i%4 == 0 {
			typ = 0x0806
		}
		if i%2 == 0 && len(p) >= 20 { // mostly-valid IPv4 headers reach deeper
			p[0] = 0x45
			binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
			p[6], p[7] = 0, 0
			copy(p[12:], attackerIP.AsSlice())
			binary.BigEndian.PutUint16(p[10:], 0)
			binary.BigEndian.PutUint16(p[10:], ipSum(p[:20]))
		}
		r.attacker.WriteFrames([][]byte{frameOf(rmac, attackerMAC, typ, p)})
		if i%500 == 499 {
			r.settle()
		}
	}
	for range 50 {
		r.attacker.WriteFrames(own.frames)
	}
	r.settle()
	// Frames with the router's MAC as source teach the hub switch that the
	// router sits on the attacker's port (a real SoftEther hub learns MACs
	// the same way): until the router sends its next frame, frames for it
	// go to the attacker. Any frame from the router reclaims its MAC; here
	// its answer to an ARP request.
	r.attacker.WriteFrames([][]byte{frameOf(bcastMAC, attackerMAC, 0x0806, arpPacket(1, attackerMAC, attackerIP, make(net.HardwareAddr, 6), routerIP))})
	r.clientWorks(t, "after the hostile frames")

	st := r.app.stack.Stats()
	t.Logf("virtual host drops: malformed +%d, own-source +%d, arp-conflict +%d, too-big +%d, other-protocol +%d, not-for-us +%d",
		st.DropMalformed-before.DropMalformed, st.DropOwnSource-before.DropOwnSource, st.DropARPConflict-before.DropARPConflict,
		st.DropTooBig-before.DropTooBig, st.DropOtherProtocol-before.DropOtherProtocol, st.DropNotForUs-before.DropNotForUs)
	// Of each round of own-MAC frames only the broadcast one reaches the
	// router (the hub sends the unicast ones back to the attacker's port).
	if st.DropOwnSource-before.DropOwnSource < 50 {
		t.Errorf("frames with the router's MAC as source: %d dropped, want ≥ 50", st.DropOwnSource-before.DropOwnSource)
	}
	if st.DropARPConflict-before.DropARPConflict < 4*50 {
		t.Errorf("ARP claims of the router address: %d dropped as conflicts, want ≥ 200", st.DropARPConflict-before.DropARPConflict)
	}
	if st.DropMalformed == before.DropMalformed {
		t.Errorf("no malformed frame was counted")
	}
	// The router's identity is unchanged: it still answers ARP for its
	// address with its own MAC (the client's ARP is re-resolved here).
	if s := r.app.Status(); s.Router.IP != "192.168.30.1/24" || s.Router.MAC != rmac.String() {
		t.Errorf("router identity changed: %+v", s.Router)
	}
	if n := r.app.router.Stats().FlowsOpen; n > 2 {
		t.Errorf("%d flows open after hostile frames: spoofed packets created state", n)
	}
}

// TestARPPoisoningDoesNotRedirectRouterTraffic: after the attacker claims the
// router's own address, the router's replies still reach the real client.
func TestARPPoisoningDoesNotRedirectRouterTraffic(t *testing.T) {
	r := newAbuseRig(t)
	rmac := r.app.mac
	r.clientWorks(t, "before")
	for range 20 {
		r.attacker.WriteFrames([][]byte{
			frameOf(rmac, attackerMAC, 0x0806, arpPacket(2, attackerMAC, routerIP, rmac, routerIP)),
			frameOf(rmac, attackerMAC, 0x0806, arpPacket(1, attackerMAC, routerIP, make(net.HardwareAddr, 6), clientIP)),
		})
	}
	r.clientWorks(t, "after ARP claims of the router address")
}

// FuzzHubFrames feeds arbitrary frame sequences from a hub host into the
// running router (netstack, router, DHCP, DNS). The input is a sequence of
// [flags][len][frame] records; flag bit 0 addresses the router's MAC, bit 1
// broadcasts, else the bytes are sent as they are.
func FuzzHubFrames(f *testing.F) {
	r := newAbuseRig(f)
	rmac := r.app.mac
	rec := func(flags byte, frame []byte) []byte {
		return append([]byte{flags, byte(len(frame) >> 8), byte(len(frame))}, frame...)
	}
	for _, k := range hostileFrames(rmac) {
		var in []byte
		for _, fr := range k.frames {
			in = append(in, rec(0, fr)...)
		}
		f.Add(in)
	}
	f.Add(rec(1, frameOf(nil, attackerMAC, 0x0806, arpPacket(1, attackerMAC, attackerIP, make(net.HardwareAddr, 6), routerIP))))
	f.Fuzz(func(t *testing.T, in []byte) {
		var frames [][]byte
		for len(in) >= 3 && len(frames) < 64 {
			flags, n := in[0], int(in[1])<<8|int(in[2])
			in = in[3:]
			n = min(n, len(in))
			fr := append([]byte(nil), in[:n]...)
			in = in[n:]
			if flags&3 != 0 && len(fr) >= 14 {
				if flags&1 != 0 {
					copy(fr, rmac)
				} else {
					copy(fr, bcastMAC)
				}
				copy(fr[6:], attackerMAC)
			}
			frames = append(frames, fr)
		}
		if err := r.attacker.WriteFrames(frames); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzConfigFile: any TOML file is either a clear error or a configuration
// that validates or is refused with an error — never a panic.
func FuzzConfigFile(f *testing.F) {
	if b, err := os.ReadFile("acrouter.example.toml"); err == nil {
		f.Add(string(b))
	}
	f.Add("[hub]\nserver = \"vpn:443\"\nhub = \"X\"\nuser = \"u\"\n[router]\nip = \"10.0.0.1/8\"\nrules = [\"deny tcp to 1.2.3.4 port 1-2\"]\n")
	f.Add("[dhcp]\npool_start = \"192.168.30.200\"\npool_end = \"192.168.30.10\"\nreservations = [\"zz=1.2.3.4\"]\nroutes = [\"0.0.0.0/0 via 1.1.1.1\"]\n")
	f.Add("[router]\nip = \"192.168.30.1/32\"\nmtu = -1\nmax_sessions = 0\n[status]\nlisten = \"0.0.0.0:1\"\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, doc string) {
		p := filepath.Join(dir, "c.toml")
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := defaultConfig()
		if err := loadConfigFile(p, &cfg); err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if _, err := cfg.validate(false); err != nil && err.Error() == "" {
			t.Fatal("empty error")
		}
	})
}
