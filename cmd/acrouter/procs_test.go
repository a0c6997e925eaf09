package main

import (
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestProcsDecision walks the tuner's rule through the load patterns it was
// built from (measured scheduling-latency p90s in procs.go).
func TestProcsDecision(t *testing.T) {
	const us = time.Microsecond
	long := time.Minute
	steps := []struct {
		name        string
		cur         int
		p90         time.Duration
		cpu         float64
		light       int
		since       time.Duration
		want, wantL int
	}{
		{"request/response on one P stays narrow", 1, 6 * us, 0.45, 0, long, 1, 0},
		{"upload on one P stays narrow", 1, 80 * us, 0.6, 0, long, 1, 0},
		{"32 connections queue for one P: go wide", 1, 1000 * us, 0.55, 0, 0, 2, 0},
		{"download queues for one P: go wide", 1, 500 * us, 0.6, 0, 0, 2, 0},
		{"busy on two Ps stays wide", 2, 1000 * us, 0.9, 3, long, 2, 0},
		{"light but busy CPU stays wide", 2, 10 * us, 0.8, 3, long, 2, 0},
		{"first light sample counts", 2, 10 * us, 0.5, 0, long, 2, 1},
		{"fourth light sample goes narrow", 2, 10 * us, 0.5, 3, long, 1, 0},
		{"not within procsMinStay of a change", 2, 10 * us, 0.5, 3, time.Second, 2, 4},
		{"idle (no scheduling) goes narrow", 2, 0, 0, 5, long, 1, 0},
		{"upload on two Ps stays wide", 2, 60 * us, 0.6, 3, long, 2, 0},
	}
	for _, s := range steps {
		got, gotL := procsDecision(s.cur, 2, s.p90, s.cpu, s.light, s.since)
		if got != s.want || gotL != s.wantL {
			t.Errorf("%s: procsDecision = %d, %d; want %d, %d", s.name, got, gotL, s.want, s.wantL)
		}
	}
}

// TestSchedLatency: the sampler reports 0 for an idle interval and a
// positive p90 once goroutines queue for the Ps.
func TestSchedLatency(t *testing.T) {
	var s schedLatency
	s.p90()
	if p := s.p90(); p > 50*time.Millisecond {
		t.Errorf("quiet interval: p90 %v", p)
	}
	// More runnable goroutines than Ps, each spinning a while: some wait.
	var wg sync.WaitGroup
	for range 8 * runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for end := time.Now().Add(20 * time.Millisecond); time.Now().Before(end); {
				runtime.Gosched()
			}
		}()
	}
	wg.Wait()
	if p := s.p90(); p <= 0 {
		t.Errorf("after contention: p90 %v, want > 0", p)
	}
}

// TestProcsTunerStartStop: the tuner leaves GOMAXPROCS alone when the user
// set it, and restores the original value when it stops.
func TestProcsTunerStartStop(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	t.Setenv("GOMAXPROCS", "1")
	if tu := startProcsTuner(slog.New(slog.DiscardHandler)); tu != nil {
		tu.close()
		t.Fatal("tuner started although GOMAXPROCS is set")
	}
	t.Setenv("GOMAXPROCS", "")
	tu := startProcsTuner(slog.New(slog.DiscardHandler))
	if orig < 2 {
		if tu != nil {
			t.Fatal("tuner started on one CPU")
		}
		return
	}
	if tu == nil {
		t.Fatal("tuner not started")
	}
	runtime.GOMAXPROCS(1) // as if it had gone narrow
	tu.close()
	if got := runtime.GOMAXPROCS(0); got != orig {
		t.Errorf("GOMAXPROCS %d after close, want %d", got, orig)
	}
}
