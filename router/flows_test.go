package router

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func testFlow(p Proto, client, dest string, last int64) *flow {
	f := &flow{
		proto:     p,
		client:    netip.MustParseAddrPort(client),
		dest:      netip.MustParseAddrPort(dest),
		evictable: p != ProtoTCP,
	}
	f.last.Store(last)
	return f
}

func TestFlowTableGlobalCap(t *testing.T) {
	tab := newFlowTable(3, 0)
	now := int64(10 * time.Second)
	for i := range 3 {
		f := testFlow(ProtoTCP, "10.0.0.1:1000", "1.1.1.1:80", now)
		if _, why, ok := tab.add(f, now); !ok {
			t.Fatalf("add %d refused: %v", i, why)
		}
		if f.id != uint64(i+1) {
			t.Errorf("flow %d got ID %d", i, f.id)
		}
	}
	_, why, ok := tab.add(testFlow(ProtoTCP, "10.0.0.2:1000", "1.1.1.1:80", now), now)
	if ok || why != RefusedSessionLimit {
		t.Fatalf("4th TCP flow: ok=%v why=%v, want session-limit refusal", ok, why)
	}
	if st := tab.stats(); st.total != 3 || st.open[ProtoTCP] != 3 {
		t.Errorf("stats %+v", st)
	}
}

func TestFlowTablePerClientCap(t *testing.T) {
	tab := newFlowTable(100, 2)
	now := int64(10 * time.Second)
	add := func(client string) (Refusal, bool) {
		_, why, ok := tab.add(testFlow(ProtoTCP, client, "1.1.1.1:80", now), now)
		return why, ok
	}
	for range 2 {
		if why, ok := add("10.0.0.1:1"); !ok {
			t.Fatalf("refused: %v", why)
		}
	}
	if why, ok := add("10.0.0.1:2"); ok || why != RefusedClientLimit {
		t.Fatalf("3rd flow of client: ok=%v why=%v", ok, why)
	}
	if why, ok := add("10.0.0.2:1"); !ok {
		t.Fatalf("other client refused: %v", why)
	}
	if n := tab.clientCount(netip.MustParseAddr("10.0.0.1")); n != 2 {
		t.Errorf("client count %d", n)
	}
}

func TestFlowTableEviction(t *testing.T) {
	sec := int64(time.Second)
	tab := newFlowTable(3, 0)
	tcp := testFlow(ProtoTCP, "10.0.0.1:1", "1.1.1.1:80", 0)        // oldest, but never evictable
	udpOld := testFlow(ProtoUDP, "10.0.0.1:2", "1.1.1.1:53", 1*sec) // least recently active UDP
	udpNew := testFlow(ProtoUDP, "10.0.0.1:3", "1.1.1.1:53", 5*sec)
	for _, f := range []*flow{tcp, udpOld, udpNew} {
		if _, why, ok := tab.add(f, 5*sec); !ok {
			t.Fatalf("add: %v", why)
		}
	}
	now := 5*sec + sec/2 // udpNew idle only 0.5 s: not evictable; udpOld idle 4.5 s
	ev, why, ok := tab.add(testFlow(ProtoTCP, "10.0.0.2:1", "1.1.1.1:80", now), now)
	if !ok || len(ev) != 1 || ev[0] != udpOld {
		t.Fatalf("add at cap: ok=%v why=%v evicted=%v, want udpOld evicted", ok, why, ev)
	}
	if tab.remove(udpOld) {
		t.Error("evicted flow still in the table")
	}
	// Now at cap with TCP, TCP, udpNew (idle 0.5 s): nothing evictable.
	if _, why, ok := tab.add(testFlow(ProtoUDP, "10.0.0.3:1", "1.1.1.1:53", now), now); ok || why != RefusedSessionLimit {
		t.Fatalf("add with only a fresh UDP flow: ok=%v why=%v", ok, why)
	}
	// Once it has been idle long enough it goes.
	now = 7 * sec
	if ev, why, ok := tab.add(testFlow(ProtoUDP, "10.0.0.3:1", "1.1.1.1:53", now), now); !ok || len(ev) != 1 || ev[0] != udpNew {
		t.Fatalf("add after idle: ok=%v why=%v evicted=%v", ok, why, ev)
	}
}

func TestFlowTablePerClientEvictsOwnFlow(t *testing.T) {
	sec := int64(time.Second)
	tab := newFlowTable(10, 2)
	other := testFlow(ProtoUDP, "10.0.0.2:1", "1.1.1.1:53", 0) // oldest overall, other client
	mine := testFlow(ProtoUDP, "10.0.0.1:1", "1.1.1.1:53", 1*sec)
	mine2 := testFlow(ProtoTCP, "10.0.0.1:2", "1.1.1.1:80", 1*sec)
	for _, f := range []*flow{other, mine, mine2} {
		if _, why, ok := tab.add(f, 2*sec); !ok {
			t.Fatal(why)
		}
	}
	ev, why, ok := tab.add(testFlow(ProtoTCP, "10.0.0.1:3", "1.1.1.1:80", 9*sec), 9*sec)
	if !ok || len(ev) != 1 || ev[0] != mine {
		t.Fatalf("ok=%v why=%v evicted=%v, want the client's own UDP flow", ok, why, ev)
	}
}

func TestFlowTable65536(t *testing.T) {
	const n = 65536
	tab := newFlowTable(n, n)
	for i := range n {
		c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 1000)
		f := &flow{proto: ProtoTCP, client: c, dest: netip.MustParseAddrPort("1.1.1.1:80")}
		if _, why, ok := tab.add(f, 0); !ok {
			t.Fatalf("flow %d refused: %v", i, why)
		}
	}
	if _, why, ok := tab.add(&flow{proto: ProtoTCP, client: netip.MustParseAddrPort("10.1.0.0:1")}, 0); ok || why != RefusedSessionLimit {
		t.Fatalf("flow 65537: ok=%v why=%v", ok, why)
	}
	fs := tab.close()
	if len(fs) != n {
		t.Fatalf("close returned %d flows", len(fs))
	}
	if _, why, ok := tab.add(&flow{proto: ProtoTCP}, 0); ok || why != RefusedClosing {
		t.Errorf("add after close: ok=%v why=%v", ok, why)
	}
	for _, f := range fs {
		tab.finish(f)
	}
	if st := tab.stats(); st.total != 0 || st.ended != n || len(tab.perClient) != 0 {
		t.Errorf("after finishing all: %+v, perClient %d", st, len(tab.perClient))
	}
}

func TestFlowTableFinishAccounts(t *testing.T) {
	tab := newFlowTable(10, 10)
	f := testFlow(ProtoUDP, "10.0.0.1:1", "1.1.1.1:53", 0)
	tab.add(f, 0)
	f.bytesOut.Add(100)
	f.bytesIn.Add(7)
	f.packetsOut.Add(2)
	if st := tab.stats(); st.bytesOut != 100 || st.bytesIn != 7 || st.packetsOut != 2 {
		t.Errorf("live stats %+v", st)
	}
	tab.finish(f)
	tab.finish(&flow{proto: ProtoTCP}) // a flow no longer in the table still counts
	if st := tab.stats(); st.total != 0 || st.ended != 2 || st.bytesOut != 100 || st.bytesIn != 7 {
		t.Errorf("after finish %+v", st)
	}
}

func TestRateLogger(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l := newRateLogger(log, time.Second)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	wrote := 0
	for range 5 {
		if l.Log(slog.LevelInfo, "acl", "refused") {
			wrote++
		}
	}
	if l.Log(slog.LevelInfo, "dial-limit", "refused") {
		wrote++
	}
	if wrote != 2 {
		t.Fatalf("wrote %d lines in one instant, want 2 (one per key)", wrote)
	}
	now = now.Add(999 * time.Millisecond)
	if l.Log(slog.LevelInfo, "acl", "refused") {
		t.Fatal("wrote before the interval passed")
	}
	now = now.Add(time.Millisecond)
	if !l.Log(slog.LevelInfo, "acl", "refused again") {
		t.Fatal("did not write after the interval")
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("lines: %q", lines)
	}
	if !strings.Contains(lines[2], "suppressed=5") || strings.Contains(lines[0], "suppressed") {
		t.Errorf("suppressed counts wrong: %q", lines)
	}
	// Disabled level: nothing, no counting.
	if l.Log(slog.LevelDebug, "x", "y") {
		t.Error("wrote a Debug line with an Info handler")
	}
}

func TestEvictSetQueueAndWatermark(t *testing.T) {
	sec := int64(time.Second)
	e := evictSet{flows: make(map[*flow]struct{})}
	const n = 1000
	fs := make([]*flow, n)
	for i := range fs {
		// flow i was last active at i ms.
		fs[i] = testFlow(ProtoUDP, "10.0.0.1:1", "1.1.1.1:53", int64(i)*int64(time.Millisecond))
		e.flows[fs[i]] = struct{}{}
	}
	now := 10 * sec // all idle ≥ 9 s
	// Victims come out least recently active first, across queue refills.
	for i := range n {
		v := e.victim(now)
		if v != fs[i] {
			t.Fatalf("victim %d: got flow last=%d, want flow %d", i, v.last.Load(), i)
		}
		delete(e.flows, v)
	}
	if v := e.victim(now); v != nil {
		t.Fatal("victim from an empty set")
	}
	// A queued candidate that became active is skipped.
	e = evictSet{flows: make(map[*flow]struct{})}
	a := testFlow(ProtoUDP, "10.0.0.1:1", "1.1.1.1:53", 0)
	b := testFlow(ProtoUDP, "10.0.0.1:2", "1.1.1.1:53", 1)
	c := testFlow(ProtoUDP, "10.0.0.1:3", "1.1.1.1:53", 2)
	for _, f := range []*flow{a, b, c} {
		e.flows[f] = struct{}{}
	}
	if v := e.victim(now); v != a {
		t.Fatal("want a")
	}
	delete(e.flows, a)
	b.touch(now) // b is queued but active now
	if v := e.victim(now); v != c {
		t.Fatalf("want c (b is active), got %v", v)
	}
	delete(e.flows, c)
	// Only b is left, active at now: nothing eligible until now+1s, and no
	// scan happens before then (the watermark).
	if v := e.victim(now + sec/2); v != nil {
		t.Fatal("young flow evicted")
	}
	if e.idleUntil != now+sec {
		t.Fatalf("idleUntil = %d, want %d", e.idleUntil, now+sec)
	}
	if v := e.victim(now + sec); v != b {
		t.Fatal("b not evicted once idle")
	}
}

func BenchmarkFlowTableAddAtCap(b *testing.B) {
	const n = 65536
	tab := newFlowTable(n, n)
	sec := int64(time.Second)
	for i := range n {
		c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 1000)
		tab.add(&flow{proto: ProtoUDP, evictable: true, client: c}, 0)
	}
	now := 10 * sec
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// Each new flow evicts the least recently active idle one.
		c := netip.AddrPortFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 1000)
		f := &flow{proto: ProtoUDP, evictable: true, client: c}
		f.last.Store(now)
		if _, why, ok := tab.add(f, now); !ok {
			// All remaining flows are fresh: move time on.
			now += 2 * sec
			if _, why, ok = tab.add(f, now); !ok {
				b.Fatal(why)
			}
		}
	}
}
