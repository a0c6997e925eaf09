package main

import (
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"syscall"
	"time"
)

// Adaptive GOMAXPROCS (router.adaptive_procs, on by default).
//
// A lightly loaded router is fastest on one P: every hand-off between its
// goroutines (hub reader → stack → TCP processor → copy → hub writer) then
// stays on one thread, while with two Ps the runtime wakes a second thread
// for each and the work migrates between cores. On the lab machine (2
// cores) one P cut the router's own part of a ping through the hub from 17
// to 6 µs, the 64-byte request/response p50 by 15–20 µs and moved one
// connection at a time 15–20 % faster; but with 32 or 128 concurrent
// connections, or a download, two Ps do 5–35 % more (bench/RESULTS.md).
//
// CPU use does not show when one P is the bottleneck (at 32 concurrent
// connections one P kept the process at 55 % of a core, its goroutines
// queueing for it), so the tuner watches the runtime's scheduling latency
// (/sched/latencies: how long runnable goroutines wait for a P), sampled
// every procsTick. On one P it goes wide as soon as the 90th percentile
// passes procsWideP90. On all Ps it goes back to one after procsNarrowTicks
// samples in a row with the percentile under procsNarrowP90 and the
// process under procsNarrowCPU of a core, and not sooner than procsMinStay
// after the last change. Measured p90s: request/response 4–12 µs, one
// connection at a time 1–20 µs, upload 57–82 µs, download 0.2–1.3 ms, 32
// concurrent connections about 1 ms.
const (
	procsTick        = 250 * time.Millisecond
	procsWideP90     = 200 * time.Microsecond
	procsNarrowP90   = 50 * time.Microsecond
	procsNarrowCPU   = 0.75 // of one core
	procsNarrowTicks = 4
	procsMinStay     = 2 * time.Second
)

// procsTuner owns one goroutine; close stops it and waits.
type procsTuner struct {
	log      *slog.Logger
	max      int
	cur      atomic.Int32
	switches atomic.Uint64
	stop     chan struct{}
	done     chan struct{}
}

// startProcsTuner starts the tuner unless it cannot help: one CPU, or
// GOMAXPROCS set by the user (then nil).
func startProcsTuner(log *slog.Logger) *procsTuner {
	max := runtime.GOMAXPROCS(0)
	if max < 2 || os.Getenv("GOMAXPROCS") != "" {
		return nil
	}
	t := &procsTuner{log: log, max: max, stop: make(chan struct{}), done: make(chan struct{})}
	t.cur.Store(int32(max))
	go t.run()
	return t
}

// procsDecision is the tuner's rule: given the current number of Ps, the
// scheduling latency p90 and the process's CPU use (in cores) over the last
// sample, how many samples in a row were light before it and the time since
// the last change, it returns the number of Ps to run and the new light
// count. It is pure, for tests.
func procsDecision(cur, max int, p90 time.Duration, usage float64, light int, sinceSwitch time.Duration) (next, lightNext int) {
	if cur == 1 {
		if p90 > procsWideP90 {
			return max, 0
		}
		return 1, 0
	}
	if p90 >= procsNarrowP90 || usage >= procsNarrowCPU {
		return cur, 0
	}
	light++
	if light >= procsNarrowTicks && sinceSwitch >= procsMinStay {
		return 1, 0
	}
	return cur, light
}

func (t *procsTuner) run() {
	defer close(t.done)
	tick := time.NewTicker(procsTick)
	defer tick.Stop()
	lastCPU, lastWall := cpuTime(), time.Now()
	switched := lastWall.Add(-procsMinStay)
	light := 0
	var lat schedLatency
	lat.p90() // the baseline
	for {
		select {
		case <-t.stop:
			return
		case now := <-tick.C:
			cpu := cpuTime()
			usage := float64(cpu-lastCPU) / float64(now.Sub(lastWall))
			lastCPU, lastWall = cpu, now
			p90 := lat.p90()
			cur := int(t.cur.Load())
			var next int
			next, light = procsDecision(cur, t.max, p90, usage, light, now.Sub(switched))
			if next != cur {
				runtime.GOMAXPROCS(next)
				t.cur.Store(int32(next))
				t.switches.Add(1)
				switched = now
				t.log.Debug("GOMAXPROCS adapted", "from", cur, "to", next, "sched_latency_p90", p90, "cpu_cores", usage)
			}
		}
	}
}

// close stops the tuner and restores GOMAXPROCS.
func (t *procsTuner) close() {
	close(t.stop)
	<-t.done
	runtime.GOMAXPROCS(t.max)
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// schedLatency reads the runtime's scheduling latency histogram; p90 is the
// 90th percentile of the latencies recorded since the previous call (0 if
// none: an idle process).
type schedLatency struct {
	sample [1]metrics.Sample
	prev   []uint64
}

func (s *schedLatency) p90() time.Duration {
	s.sample[0].Name = "/sched/latencies:seconds"
	metrics.Read(s.sample[:])
	if s.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := s.sample[0].Value.Float64Histogram()
	var n uint64
	for i, c := range h.Counts {
		if i < len(s.prev) {
			c -= s.prev[i]
		}
		n += c
	}
	var p90 time.Duration
	if n > 0 {
		var acc uint64
		for i, c := range h.Counts {
			if i < len(s.prev) {
				c -= s.prev[i]
			}
			acc += c
			if acc*10 >= n*9 {
				// The bucket's upper bound (the last one is +Inf: use its lower).
				up := h.Buckets[i+1]
				if math.IsInf(up, 1) {
					up = h.Buckets[i]
				}
				p90 = time.Duration(up * 1e9)
				break
			}
		}
	}
	s.prev = append(s.prev[:0], h.Counts...)
	return p90
}
