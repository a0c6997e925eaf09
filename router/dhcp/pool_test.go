package dhcp

import (
	"net/netip"
	"testing"
	"time"
)

// TestPoolChoose table-tests the pure assignment core.
func TestPoolChoose(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := Config{
		ServerIP:  netip.MustParseAddr("10.1.0.12"), // inside the pool: skipped
		Subnet:    netip.MustParsePrefix("10.1.0.0/24"),
		PoolStart: netip.MustParseAddr("10.1.0.10"),
		PoolEnd:   netip.MustParseAddr("10.1.0.15"),
		Gateway:   netip.MustParseAddr("10.1.0.13"), // also skipped
		Reservations: map[string]netip.Addr{
			"02:00:00:00:00:aa": netip.MustParseAddr("10.1.0.14"),
			"02:00:00:00:00:bb": netip.MustParseAddr("10.1.0.99"),
		},
	}
	const (
		macA = "02:00:00:00:00:01"
		macB = "02:00:00:00:00:02"
		macC = "02:00:00:00:00:03"
		macR = "02:00:00:00:00:aa"
	)
	type step struct {
		name      string
		setup     func(p *pool, now time.Time)
		key, mac  string
		requested string
		at        time.Duration
		want      string // "" = exhausted
		wantFresh bool
	}
	bind := func(key, ip string, at time.Duration) func(*pool, time.Time) {
		return func(p *pool, _ time.Time) {
			p.bind(key, nil, nil, a4(netip.MustParseAddr(ip)), "", t0.Add(at))
		}
	}
	steps := []step{
		{name: "first fresh skips nothing", key: "a", mac: macA, want: "10.1.0.10", wantFresh: true},
		{name: "same client same address", setup: bind("a", "10.1.0.10", 0), key: "a", mac: macA, want: "10.1.0.10"},
		{name: "next fresh", key: "b", mac: macB, want: "10.1.0.11", wantFresh: true},
		{name: "requested free address honoured", key: "c", mac: macC, requested: "10.1.0.15", want: "10.1.0.15", wantFresh: true},
		{name: "reservation in pool", key: "r", mac: macR, want: "10.1.0.14"},
		{name: "reservation outside pool", key: "x", mac: "02:00:00:00:00:bb", want: "10.1.0.99"},
		{name: "requested server address ignored", setup: bind("b", "10.1.0.11", 0), key: "d", mac: "02:00:00:00:00:04",
			requested: "10.1.0.12", want: "10.1.0.15", wantFresh: true},
		{name: "pool exhausted", setup: bind("d", "10.1.0.15", 0), key: "e", mac: "02:00:00:00:00:05", want: ""},
		{name: "expired lease reused, oldest first", setup: func(p *pool, now time.Time) {}, key: "e", mac: "02:00:00:00:00:05",
			at: 3 * time.Hour, want: "10.1.0.10", wantFresh: true},
	}
	d, err := cfg.derive()
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(d)
	for _, s := range steps {
		now := t0.Add(s.at)
		if s.setup != nil {
			s.setup(p, now)
		}
		var req uint32
		if s.requested != "" {
			req = a4(netip.MustParseAddr(s.requested))
		}
		ip, fresh, ok := p.choose(s.key, s.mac, req, now)
		got := ""
		if ok {
			got = u2a(ip).String()
		}
		if got != s.want || (ok && fresh != s.wantFresh) {
			t.Fatalf("%s: got %q fresh=%v, want %q fresh=%v", s.name, got, fresh, s.want, s.wantFresh)
		}
	}
}

func TestPoolReleaseAndQuarantine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cfg := baseConfig()
	d, err := cfg.derive()
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(d)
	ip := a4(netip.MustParseAddr("192.168.30.10"))
	p.bind("a", mac(1), nil, ip, "h", t0)
	if p.release("b", ip, t0) {
		t.Fatal("another client released a's lease")
	}
	if !p.release("a", ip, t0) || p.release("a", ip, t0) {
		t.Fatal("release not reported exactly once")
	}
	if !p.usable(ip, "b", "02:00:00:00:00:02", t0) {
		t.Fatal("released address not usable by others")
	}
	p.quarantine(ip, t0)
	if p.usable(ip, "a", mac(1).String(), t0.Add(time.Minute)) || p.byKey["a"] != nil {
		t.Fatal("quarantined address still usable or owned")
	}
	if !p.usable(ip, "a", mac(1).String(), t0.Add(d.quarantine)) {
		t.Fatal("quarantine did not end")
	}
	if ls := p.leases(t0); len(ls) != 1 || ls[0].State != StateQuarantined || len(ls[0].MAC) != 0 {
		t.Fatalf("leases %+v", ls)
	}
}
