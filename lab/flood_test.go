//go:build interop

package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	osexec "os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// ---------------------------------------------------------------- raw frames --

// rawPort is an AF_PACKET socket on an interface of a lab namespace: the
// suite's packet generator (no hping3 needed) for floods and hostile frames.
type rawPort struct {
	fd  int
	mac net.HardwareAddr
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openRaw opens a packet socket on ifname in namespace ns.
func openRaw(ns, ifname string) (*rawPort, error) {
	var r *rawPort
	err := InNS(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", ifname, err)
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
		r = &rawPort{fd: fd, mac: ifi.HardwareAddr}
		return nil
	})
	return r, err
}

func (r *rawPort) Close() error { return unix.Close(r.fd) }

func (r *rawPort) send(frame []byte) error {
	for i := 0; ; i++ {
		_, err := unix.Write(r.fd, frame)
		if err != unix.ENOBUFS || i == 100 {
			return err
		}
		time.Sleep(time.Millisecond) // the veth queue is full: pace
	}
}

// recv reads the next frame received (not sent) on the port, until deadline.
func (r *rawPort) recv(buf []byte, deadline time.Time) (int, error) {
	for {
		d := time.Until(deadline)
		if d <= 0 {
			return 0, os.ErrDeadlineExceeded
		}
		tv := unix.NsecToTimeval(d.Nanoseconds())
		if err := unix.SetsockoptTimeval(r.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return 0, err
		}
		n, from, err := unix.Recvfrom(r.fd, buf, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		return n, nil
	}
}

func csum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func ether(dst, src net.HardwareAddr, typ uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	copy(f, dst)
	copy(f[6:], src)
	binary.BigEndian.PutUint16(f[12:], typ)
	return append(f, payload...)
}

func ipv4Packet(src, dst netip.Addr, proto byte, id uint16, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(h[4:], id)
	h[8] = 64
	h[9] = proto
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], csum(h, 0))
	return append(h, payload...)
}

func pseudo(src, dst netip.Addr, proto byte, n int) uint32 {
	s, d := src.As4(), dst.As4()
	var sum uint32
	for i := 0; i < 4; i += 2 {
		sum += uint32(s[i])<<8 | uint32(s[i+1])
		sum += uint32(d[i])<<8 | uint32(d[i+1])
	}
	return sum + uint32(proto) + uint32(n)
}

func tcpSYN(src, dst netip.AddrPort, seq uint32) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], src.Port())
	binary.BigEndian.PutUint16(t[2:], dst.Port())
	binary.BigEndian.PutUint32(t[4:], seq)
	t[12] = 5 << 4
	t[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(t[14:], 64240)
	binary.BigEndian.PutUint16(t[16:], csum(t, pseudo(src.Addr(), dst.Addr(), 6, len(t))))
	return ipv4Packet(src.Addr(), dst.Addr(), 6, uint16(seq), t)
}

func udpPacket(src, dst netip.AddrPort, id uint16, payload []byte) []byte {
	u := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	u = append(u, payload...)
	c := csum(u, pseudo(src.Addr(), dst.Addr(), 17, len(u)))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return ipv4Packet(src.Addr(), dst.Addr(), 17, id, u)
}

func icmpEcho(src, dst netip.Addr, id, seq uint16) []byte {
	m := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), byte(seq >> 8), byte(seq), 'a', 'c', 'r', 't'}
	binary.BigEndian.PutUint16(m[2:], csum(m, 0))
	return ipv4Packet(src, dst, 1, seq, m)
}

// pace sends frames at about pps frames per second (bounded by ctx).
func pace(ctx context.Context, r *rawPort, n, pps int, frame func(i int) []byte) (int, error) {
	const burst = 50
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := r.send(frame(i)); err != nil {
			return i, err
		}
		if i%burst == burst-1 {
			if ctx.Err() != nil {
				return i + 1, ctx.Err()
			}
			if ahead := time.Duration(float64(i+1)/float64(pps)*float64(time.Second)) - time.Since(start); ahead > 0 {
				time.Sleep(ahead) // rate pacing of the generator
			}
		}
	}
	return n, nil
}

// --------------------------------------------------------- second client ns --

// extraClient is a client namespace of the suite on hub LAB: eth0 is a veth
// whose peer in the hub namespace is a local bridge of the real server.
type extraClient struct {
	ns, dev string
	mac     net.HardwareAddr
}

// newExtraClient creates namespace <prefix>-<tag> bridged into hub LAB by
// vpncmd BridgeCreate; the cleanup deletes the bridge and the namespace.
func newExtraClient(t *testing.T, ctx context.Context, tag string, mac string) *extraClient {
	t.Helper()
	c := &extraClient{ns: lab.Prefix + "-" + tag, dev: "vb-" + tag}
	c.mac, _ = net.ParseMAC(mac)
	run := func(argv ...string) {
		t.Helper()
		if out, err := sh(ctx, argv...); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
	}
	run("ip", "netns", "add", c.ns)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		lab.VPNCmd(ctx, "/CMD", "BridgeDelete", lab.Hub, "/DEVICE:"+c.dev)
		for _, p := range strings.Fields(func() string { o, _ := sh(ctx, "ip", "netns", "pids", c.ns); return o }()) {
			sh(ctx, "kill", "-KILL", p)
		}
		sh(ctx, "ip", "netns", "del", c.ns)
	})
	run("ip", "-n", c.ns, "link", "set", "lo", "up")
	run("ip", "link", "add", "eth0", "netns", c.ns, "address", mac, "type", "veth", "peer", "name", c.dev, "netns", lab.NSHub)
	run("ip", "-n", c.ns, "link", "set", "eth0", "up")
	run("ip", "-n", lab.NSHub, "link", "set", c.dev, "up")
	sh(ctx, "ip", "netns", "exec", c.ns, "ethtool", "-K", "eth0", "rx", "off", "tx", "off", "tso", "off", "gso", "off", "gro", "off")
	sh(ctx, "ip", "netns", "exec", lab.NSHub, "ethtool", "-K", c.dev, "rx", "off", "tx", "off", "tso", "off", "gso", "off", "gro", "off")
	run("ip", "netns", "exec", c.ns, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
	if _, err := lab.VPNCmd(ctx, "/CMD", "BridgeCreate", lab.Hub, "/DEVICE:"+c.dev, "/TAP:no"); err != nil {
		t.Fatal(err)
	}
	err := waitFor(ctx, "local bridge "+c.dev+" operating", func() bool {
		out, err := lab.VPNCmd(ctx, "/CSV", "/CMD", "BridgeList")
		if err != nil {
			return false
		}
		for line := range strings.Lines(out) {
			if strings.Contains(line, ","+c.dev+",") {
				return strings.Contains(line, "Operating")
			}
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sh(ctx context.Context, argv ...string) (string, error) {
	c := osexec.CommandContext(ctx, argv[0], argv[1:]...)
	c.WaitDelay = 2 * time.Second
	out, err := c.CombinedOutput()
	return string(out), err
}

// ----------------------------------------------------------------- watchers --

// rssWatch samples a process's VmRSS every 100 ms and keeps the maximum.
type rssWatch struct {
	pid  int
	max  atomic.Int64 // kB
	stop chan struct{}
	done chan struct{}
}

func watchRSS(pid int) *rssWatch {
	w := &rssWatch{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			if v, err := procStatus(pid, "VmRSS"); err == nil && v > w.max.Load() {
				w.max.Store(v)
			}
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

// peak returns the highest RSS (MiB) seen since the last reset, and resets.
func (w *rssWatch) peak() float64 {
	if v, err := procStatus(w.pid, "VmRSS"); err == nil && v > w.max.Load() {
		w.max.Store(v)
	}
	return float64(w.max.Swap(0)) / 1024
}

func (w *rssWatch) Close() { close(w.stop); <-w.done }

// victim is a well-behaved client (clab) that fetches the LAN web page every
// 200 ms; every request must succeed.
type victim struct {
	mu       sync.Mutex
	ok, fail int
	errs     []string
	slowest  time.Duration
	slow     []string // requests over slowRequest: when, dial and total time
	stop     chan struct{}
	done     chan struct{}
}

func startVictim(ctx context.Context) *victim {
	v := &victim{stop: make(chan struct{}), done: make(chan struct{})}
	inNS := DialInNS(lab.NSCLab)
	go func() {
		defer close(v.done)
		for {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			t0 := time.Now()
			var dialTime time.Duration
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				t := time.Now()
				c, err := inNS(ctx, network, addr)
				dialTime = time.Since(t)
				return c, err
			}
			line, err := httpFirstLine(rctx, dial)
			d := time.Since(t0)
			cancel()
			v.mu.Lock()
			if d > slowRequest && len(v.slow) < 5 {
				v.slow = append(v.slow, fmt.Sprintf("%s: dial %v, total %v (%v)", t0.Format("15:04:05.000"),
					dialTime.Round(time.Millisecond), d.Round(time.Millisecond), err))
			}
			if err == nil && line == lab.HTTPFirstLine {
				v.ok++
			} else {
				v.fail++
				if len(v.errs) < 5 {
					v.errs = append(v.errs, fmt.Sprintf("%s: %q %v", t0.Format("15:04:05.000"), line, err))
				}
			}
			v.slowest = max(v.slowest, d)
			v.mu.Unlock()
			select {
			case <-v.stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return v
}

// slowRequest is the time over which a request of the second client is
// logged with its details (a LAN page fetch takes a few milliseconds).
const slowRequest = time.Second

// take returns and resets the counts.
func (v *victim) take() (ok, fail int, slowest time.Duration, errs, slow []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	ok, fail, slowest, errs, slow = v.ok, v.fail, v.slowest, v.errs, v.slow
	v.ok, v.fail, v.slowest, v.errs, v.slow = 0, 0, 0, nil, nil
	return
}

func (v *victim) Close() { close(v.stop); <-v.done }

// ------------------------------------------------------------------- floods --

const rssBoundMiB = 256 // acrouter's RSS must stay below this under every flood

// TestFloodsInterop floods acrouter from one hub client (its own namespace,
// raw frames) while a second client (clab) keeps fetching a LAN page: SYNs
// to 20 000 destinations, UDP to 10 000 ports, DHCP starvation with 3 000
// random MACs, 20 000 DNS queries. Caps hold, RSS stays below rssBoundMiB,
// the second client never fails, the refusals are counted in /metrics.
func TestFloodsInterop(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	a := launchAcrouter(t, ctx, "acrouter-flood", "127.0.0.1:8767", "")
	lease, err := lab.DHCP(ctx, "clab")
	if err != nil {
		t.Fatalf("DHCP: %v", err)
	}
	fl := newExtraClient(t, ctx, "fl", "02:ac:00:00:00:41")
	// The flooder is a real host at 192.168.30.250 (outside the DHCP pool)
	// whose kernel answers ARP; its floods are raw frames.
	flIP := netip.MustParseAddr("192.168.30.250")
	if out, err := lab.Exec(ctx, fl.ns, "ip", "addr", "add", flIP.String()+"/24", "dev", "eth0"); err != nil {
		t.Fatal(out)
	}
	raw, err := openRaw(fl.ns, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	st := a.st(t, ctx)
	rmac, err := net.ParseMAC(st.Router.MAC)
	if err != nil {
		t.Fatal(err)
	}
	gw := netip.MustParseAddr("192.168.30.1")
	if out, err := lab.Exec(ctx, fl.ns, "ping", "-c", "1", "-W", "3", gw.String()); err != nil {
		t.Fatalf("flooder cannot reach the router: %v\n%s", err, out)
	}

	rss := watchRSS(a.pid())
	defer rss.Close()
	base := rss.peak()
	fd0, _ := countFDs(a.pid())
	t.Logf("acrouter before the floods: RSS %.1f MiB, %d fds", base, fd0)
	v := startVictim(ctx)
	defer v.Close()

	phase := func(name string, flood func() (int, error), settle func() bool) {
		t.Helper()
		m0 := a.metrics(t, ctx)
		t0 := time.Now()
		n, err := flood()
		if err != nil {
			t.Fatalf("%s: sent %d: %v", name, n, err)
		}
		sent := time.Since(t0)
		if settle != nil {
			if err := waitFor(ctx, name+" settled", settle); err != nil {
				t.Error(err)
			}
		}
		m1 := a.metrics(t, ctx)
		peak := rss.peak()
		fds, _ := countFDs(a.pid())
		ok, fail, slow, errs, slowReqs := v.take()
		var diffs []string
		for k, x := range m1 {
			if d := x - m0[k]; d != 0 && !strings.HasPrefix(k, "go_") && !strings.HasPrefix(k, "process_") && !strings.HasPrefix(k, "acrouter_hub_frames_total") && !strings.HasPrefix(k, "acrouter_hub_bytes_total") {
				diffs = append(diffs, fmt.Sprintf("%s +%.0f", k, d))
			}
		}
		t.Logf("%s: %d frames in %v (%.0f/s); acrouter peak RSS %.1f MiB, %d fds after; second client: %d ok, %d failed, slowest %v; counters: %s",
			name, n, sent.Round(time.Millisecond), float64(n)/sent.Seconds(), peak, fds, ok, fail, slow.Round(time.Millisecond), strings.Join(sortStrings(diffs), ", "))
		if len(slowReqs) > 0 {
			t.Logf("%s: second client's requests over %v: %s; acrouter's last log lines:\n%s", name, slowRequest,
				strings.Join(slowReqs, "; "), lastLines(a.proc.Log(), 20))
		}
		if peak >= rssBoundMiB {
			t.Errorf("%s: acrouter RSS peaked at %.1f MiB (bound %d MiB)", name, peak, rssBoundMiB)
		}
		if fds > 1024+128 { // one client's flows are capped at 1024 (router.max_sessions_per_client)
			t.Errorf("%s: acrouter holds %d fds: the per-client flow cap did not bound them", name, fds)
		}
		if fail > 0 || ok == 0 {
			t.Errorf("%s: the second client's HTTP requests failed (%d ok, %d failed): %v", name, ok, fail, errs)
		}
		if a.proc.Cmd.ProcessState != nil {
			t.Fatalf("acrouter died: %s", lastLines(a.proc.Log(), 10))
		}
		lastMetrics = m1
		lastDelta = func(k string) float64 { return m1[k] - m0[k] }
	}
	ctr := func(k string) float64 { return lastDelta(k) }

	t.Run("SYNFlood20000", func(t *testing.T) {
		lan := lab.LANIP
		// 10 000 ports of the LAN host (closed: refused at once) and 10 000
		// destinations on absent hosts 10.77.0.3-252 (dials hang until ARP fails).
		phase("SYN flood", func() (int, error) {
			return pace(ctx, raw, 20000, 5000, func(i int) []byte {
				var dst netip.AddrPort
				if i%2 == 0 {
					dst = netip.AddrPortFrom(lan, uint16(1+i/2))
				} else {
					j := i / 2
					dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 77, 0, byte(3 + j%250)}), uint16(1000+j/250))
				}
				return ether(rmac, fl.mac, 0x0800, tcpSYN(netip.AddrPortFrom(flIP, uint16(20000+i%40000)), dst, uint32(i)*7919))
			})
		}, func() bool { // dials done: nothing in flight any more
			m := a.metrics(t, ctx)
			return m[`acrouter_flows_open{proto="tcp"}`] < 10
		})
		seen := ctr(`acrouter_flows_created_total{proto="tcp"}`)
		refused := 0.0
		for k := range lastMetrics {
			if strings.HasPrefix(k, "acrouter_flows_refused_total") {
				refused += ctr(k)
			}
		}
		drops := ctr("acrouter_netstack_tcp_forward_drops_total")
		t.Logf("SYN flood: %.0f flows created, %.0f refused, %.0f dropped by the in-flight cap", seen, refused, drops)
		if refused < 5000 {
			t.Errorf("only %.0f of 20000 SYNs were refused (closed ports, absent hosts, caps)", refused)
		}
	})

	t.Run("UDPFlood10000Ports", func(t *testing.T) {
		phase("UDP flood", func() (int, error) {
			payload := []byte("acrouter-udp-flood")
			return pace(ctx, raw, 10000, 5000, func(i int) []byte {
				return ether(rmac, fl.mac, 0x0800, udpPacket(netip.AddrPortFrom(flIP, 40000), netip.AddrPortFrom(lab.LANIP, uint16(20000+i)), uint16(i), payload))
			})
		}, nil)
		created := ctr(`acrouter_flows_created_total{proto="udp"}`)
		limited := ctr(`acrouter_flows_refused_total{reason="client-limit"}`) + ctr("acrouter_flows_evicted_total")
		open := lastMetrics[`acrouter_flows_open{proto="udp"}`]
		t.Logf("UDP flood: %.0f flows created, %.0f refused/evicted at the per-client cap, %.0f open", created, limited, open)
		if open > 1024+64 {
			t.Errorf("%.0f UDP flows open: the per-client cap (1024) did not hold", open)
		}
		if limited == 0 {
			t.Errorf("10000 UDP flows from one client hit no cap")
		}
	})

	t.Run("DHCPStarvation3000MACs", func(t *testing.T) {
		var offers, acks atomic.Int64
		phase("DHCP starvation", func() (int, error) {
			return dhcpStarve(ctx, raw, 3000, &offers, &acks)
		}, nil)
		floodEnd := time.Now()
		leases := lastMetrics["acrouter_dhcp_leases"]
		exhausted := ctr("acrouter_dhcp_pool_exhausted_total")
		discovers := ctr(`acrouter_dhcp_received_total{type="discover"}`)
		offered := ctr(`acrouter_dhcp_sent_total{type="offer"}`)
		t.Logf("DHCP starvation: %d offers, %d acks to the attacker; %.0f DISCOVERs received, %.0f OFFERs sent, %.0f leases bound, %.0f DISCOVERs found the pool exhausted",
			offers.Load(), acks.Load(), discovers, offered, leases, exhausted)
		// router/dhcp's starvation defence (guard.go) keeps at least half of
		// the 191-address pool free from a flood of once-used MACs: new
		// clients are rate-capped (burst 23, ~11.5/min) and get 90 s
		// probation leases beyond a budget of full leases.
		if leases > 191/2+1 {
			t.Errorf("%.0f leases bound: the flood took more than half the 191-address pool", leases)
		}
		if exhausted != 0 {
			t.Errorf("%.0f DISCOVERs found the pool exhausted: the starvation defence did not hold", exhausted)
		}
		// Not every broadcast DISCOVER of a burst of 100 reaches the server
		// (about 2450 of 3000 did in the runs so far); of those that do,
		// the cap must refuse all but ~burst + rate × 12 s.
		if discovers < 1000 || discovers-offered < 0.9*discovers {
			t.Errorf("of %.0f DISCOVERs, %.0f were refused: want the new-client cap to refuse at least 90%%", discovers, discovers-offered)
		}
		if _, ok := lastMetrics["acrouter_dhcp_rate_limited_total"]; ok { // once cmd/acrouter exports it
			t.Logf("acrouter_dhcp_rate_limited_total +%.0f", ctr("acrouter_dhcp_rate_limited_total"))
		}
		// A new client (a MAC not in the flood) gets a lease after the
		// flood: the new-client bucket refills one token per ~5.2 s.
		fresh := make(net.HardwareAddr, 6) // never seen, also across -count runs (the state dir is kept)
		rand.Read(fresh)
		fresh[0] = fresh[0]&0xfe | 0x02
		ip, secs, err := dhcpDORA(ctx, raw, fresh, 30*time.Second)
		if err != nil {
			t.Fatalf("a new client could not get a lease after the flood: %v", err)
		}
		t.Logf("new client %s got %s (lease %d s) %v after the flood", fresh, ip, secs, time.Since(floodEnd).Round(time.Millisecond))
		// The client that already had a lease renews it (RENEWING: unicast
		// REQUEST with ciaddr, sent raw so that clab's configuration stays).
		got, err := dhcpRenew(ctx, lab.NSCLab, rmac, netip.MustParseAddr(lease["LEASE_IP"]))
		if err != nil || got != lease["LEASE_IP"] {
			t.Fatalf("the existing client could not renew %s during starvation: %q %v", lease["LEASE_IP"], got, err)
		}
		t.Logf("existing client renewed %s during starvation", got)
	})

	t.Run("DNSFlood20000", func(t *testing.T) {
		var digOK, digFail atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // the second client resolves names during the flood
			defer wg.Done()
			for {
				out, err := lab.Exec(ctx, lab.NSCLab, "dig", "+short", "+time=2", "+tries=2", "@"+gw.String(), "www."+lab.DNSZone, "A")
				if err == nil && strings.TrimSpace(out) == lab.LANIP.String() {
					digOK.Add(1)
				} else {
					digFail.Add(1)
				}
				select {
				case <-stop:
					return
				case <-time.After(250 * time.Millisecond):
				}
			}
		}()
		phase("DNS flood", func() (int, error) {
			q := new(mdns.Msg)
			return pace(ctx, raw, 20000, 5000, func(i int) []byte {
				q.SetQuestion(fmt.Sprintf("flood-%d.%s.", i, lab.DNSZone), mdns.TypeA)
				b, _ := q.Pack()
				return ether(rmac, fl.mac, 0x0800, udpPacket(netip.AddrPortFrom(flIP, uint16(30000+i%1000)), netip.AddrPortFrom(gw, 53), uint16(i), b))
			})
		}, nil)
		close(stop)
		wg.Wait()
		limited := ctr("acrouter_dns_rate_limited_total")
		t.Logf("DNS flood: %.0f queries received, %.0f rate-limited; second client's lookups: %d ok, %d failed",
			ctr(`acrouter_dns_queries_total{transport="udp"}`), limited, digOK.Load(), digFail.Load())
		if limited < 10000 {
			t.Errorf("only %.0f of 20000 flood queries were rate-limited", limited)
		}
		if digFail.Load() > 0 || digOK.Load() == 0 {
			t.Errorf("the second client's DNS lookups failed during the flood: %d ok, %d failed", digOK.Load(), digFail.Load())
		}
	})

	fd1, _ := countFDs(a.pid())
	t.Logf("acrouter after the floods: %d fds (before %d)", fd1, fd0)
}

var (
	lastMetrics map[string]float64
	lastDelta   = func(string) float64 { return math.NaN() }
)

func sortStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

// dhcpStarve plays n clients with random MACs: DISCOVER, and REQUEST for
// every OFFER seen, in batches of 100 (bounded in count and time).
func dhcpStarve(ctx context.Context, raw *rawPort, n int, offers, acks *atomic.Int64) (int, error) {
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	zero, all := netip.AddrPortFrom(netip.IPv4Unspecified(), 68), netip.AddrPortFrom(netip.MustParseAddr("255.255.255.255"), 67)
	frame := func(m *dhcpv4.DHCPv4) []byte {
		return ether(bcast, m.ClientHWAddr, 0x0800, udpPacket(zero, all, uint16(m.TransactionID[3]), m.ToBytes()))
	}
	sent := 0
	buf := make([]byte, 2048)
	for b := 0; b < n; b += 100 {
		if ctx.Err() != nil {
			return sent, ctx.Err()
		}
		for i := b; i < min(b+100, n); i++ {
			mac := make(net.HardwareAddr, 6)
			rand.Read(mac)
			mac[0] = mac[0]&0xfe | 0x02 // unicast, locally administered
			d, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithBroadcast(true))
			if err != nil {
				return sent, err
			}
			if err := raw.send(frame(d)); err != nil {
				return sent, err
			}
			sent++
		}
		// Answer every OFFER of this batch with a REQUEST; count ACKs.
		deadline := time.Now().Add(400 * time.Millisecond)
		for {
			k, err := raw.recv(buf, deadline)
			if err != nil {
				break
			}
			m := parseDHCPReply(buf[:k])
			if m == nil {
				continue
			}
			switch m.MessageType() {
			case dhcpv4.MessageTypeOffer:
				offers.Add(1)
				r, err := dhcpv4.NewRequestFromOffer(m)
				if err == nil {
					r.SetBroadcast()
					if raw.send(frame(r)) == nil {
						sent++
					}
				}
			case dhcpv4.MessageTypeAck:
				acks.Add(1)
			}
		}
	}
	return sent, nil
}

// dhcpDORA plays one new client with MAC hw on raw: DISCOVER (every second,
// a test client's pace, not RFC 2131's back-off) until an OFFER, then
// REQUEST until an ACK, bounded by limit. It returns the address and the
// lease time in seconds.
func dhcpDORA(ctx context.Context, raw *rawPort, hw net.HardwareAddr, limit time.Duration) (string, uint32, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	zero, all := netip.AddrPortFrom(netip.IPv4Unspecified(), 68), netip.AddrPortFrom(netip.MustParseAddr("255.255.255.255"), 67)
	frame := func(m *dhcpv4.DHCPv4) []byte {
		return ether(bcast, hw, 0x0800, udpPacket(zero, all, uint16(m.TransactionID[3]), m.ToBytes()))
	}
	d, err := dhcpv4.NewDiscovery(hw, dhcpv4.WithBroadcast(true))
	if err != nil {
		return "", 0, err
	}
	msg := d
	buf := make([]byte, 2048)
	for ctx.Err() == nil {
		if err := raw.send(frame(msg)); err != nil {
			return "", 0, err
		}
		deadline := time.Now().Add(time.Second)
		for {
			k, err := raw.recv(buf, deadline)
			if err != nil {
				break
			}
			m := parseDHCPReply(buf[:k])
			if m == nil || m.TransactionID != d.TransactionID || m.ClientHWAddr.String() != hw.String() {
				continue
			}
			switch {
			case m.MessageType() == dhcpv4.MessageTypeOffer && msg == d:
				r, err := dhcpv4.NewRequestFromOffer(m)
				if err != nil {
					return "", 0, err
				}
				r.SetBroadcast()
				msg = r
				deadline = time.Now() // send the REQUEST now
			case m.MessageType() == dhcpv4.MessageTypeAck && msg != d:
				return m.YourIPAddr.String(), uint32(m.IPAddressLeaseTime(0) / time.Second), nil
			case m.MessageType() == dhcpv4.MessageTypeNak:
				return "", 0, fmt.Errorf("NAK: %s", m.Message())
			}
		}
	}
	if msg == d {
		return "", 0, fmt.Errorf("no OFFER within %v", limit)
	}
	return "", 0, fmt.Errorf("OFFER but no ACK within %v", limit)
}

// parseDHCPReply decodes an Ethernet/IPv4/UDP frame to port 68 as DHCP.
func parseDHCPReply(f []byte) *dhcpv4.DHCPv4 {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[14+9] != 17 {
		return nil
	}
	ihl := int(f[14]&0x0f) * 4
	u := f[14+ihl:]
	if len(u) < 8 || binary.BigEndian.Uint16(u[2:]) != 68 {
		return nil
	}
	m, err := dhcpv4.FromBytes(u[8:])
	if err != nil {
		return nil
	}
	return m
}

// dhcpRenew renews ip for the client of namespace ns (RENEWING state: a
// unicast REQUEST with ciaddr to the server) over a raw socket and returns
// the address the ACK confirms.
func dhcpRenew(ctx context.Context, ns string, rmac net.HardwareAddr, ip netip.Addr) (string, error) {
	raw, err := openRaw(ns, "eth0")
	if err != nil {
		return "", err
	}
	defer raw.Close()
	srv := netip.MustParseAddrPort("192.168.30.1:67")
	req, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithHwAddr(raw.mac), dhcpv4.WithClientIP(ip.AsSlice()),
		// the client identifier busybox udhcpc sent when it got the lease
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, raw.mac...))))
	if err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	for try := 0; try < 5 && ctx.Err() == nil; try++ {
		if err := raw.send(ether(rmac, raw.mac, 0x0800, udpPacket(netip.AddrPortFrom(ip, 68), srv, uint16(try), req.ToBytes()))); err != nil {
			return "", err
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			n, err := raw.recv(buf, deadline)
			if err != nil {
				break
			}
			if m := parseDHCPReply(buf[:n]); m != nil && m.TransactionID == req.TransactionID {
				if m.MessageType() != dhcpv4.MessageTypeAck {
					return "", fmt.Errorf("renew answered with %s", m.MessageType())
				}
				return m.YourIPAddr.String(), nil
			}
		}
	}
	return "", fmt.Errorf("no answer to 5 renew REQUESTs")
}
