package main

import (
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

// TestTrimDecision walks the trimmer's rule through a busy spell, a quiet
// one and a quiet one that follows nothing worth trimming.
func TestTrimDecision(t *testing.T) {
	const mb = 1 << 20
	steps := []struct {
		name      string
		tick      uint64
		quiet     int
		since     uint64
		want      bool
		wantQuiet int
	}{
		{"busy: no trim, quiet count reset", 50 * mb, 1, 200 * mb, false, 0},
		{"first quiet tick after a busy spell waits", 100 << 10, 0, 200 * mb, false, 1},
		{"second quiet tick trims", 100 << 10, 1, 200 * mb, true, 0},
		{"quiet but little allocated since the last trim: no trim", 0, 5, 2 * mb, false, 6},
		{"exactly the quiet threshold counts as busy", trimQuietBytes, 3, 200 * mb, false, 0},
	}
	for _, s := range steps {
		got, q := trimDecision(s.tick, s.quiet, s.since)
		if got != s.want || q != s.wantQuiet {
			t.Errorf("%s: trimDecision = %v, %d; want %v, %d", s.name, got, q, s.want, s.wantQuiet)
		}
	}
}

// TestMemTrimmerTrimsOncePerQuietSpell drives the trimmer's loop with a
// scripted allocation counter: a busy spell, a quiet one (one trim), more
// quiet (no second trim), another busy spell and quiet (a second trim).
func TestMemTrimmerTrimsOncePerQuietSpell(t *testing.T) {
	const mb = 1 << 20
	script := []uint64{0, // baseline
		40 * mb, 80 * mb, // busy
		80 * mb, 80 * mb, // quiet: trim after the second tick
		80 * mb,          // the read right after the trim
		80 * mb, 80 * mb, // still quiet: nothing new to trim
		120 * mb, 160 * mb, // busy again
		160 * mb, 160 * mb, // quiet: second trim
	}
	var pos atomic.Int64
	reads := make(chan struct{}, 1)
	read := func() uint64 {
		i := pos.Add(1) - 1
		if i >= int64(len(script)) {
			select {
			case reads <- struct{}{}:
			default:
			}
			return script[len(script)-1]
		}
		return script[i]
	}
	var freedAt []int64
	free := func() { freedAt = append(freedAt, pos.Load()) }
	// The loop reads once at start, once per tick and once more after a
	// trim (the 80 MB after the first trim is that read).
	tr := newMemTrimmer(slog.New(slog.DiscardHandler), time.Millisecond, read, free)
	select {
	case <-reads:
	case <-time.After(10 * time.Second):
		t.Fatal("the trimmer did not read through its script")
	}
	tr.close()
	if n := tr.trims.Load(); n != 2 {
		t.Fatalf("trims = %d (after reads %v), want 2: one per quiet spell", n, freedAt)
	}
}
