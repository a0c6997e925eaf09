package main

import (
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"
)

// Idle memory trim (router.memory_trim, on by default).
//
// Go's collector lets the heap grow to twice the live data before it runs
// (GOGC=100) and gives free pages back to the OS only slowly. A router that
// has just opened 4 096 sessions and then sits idle therefore keeps the
// garbage of their setup resident: in the lab 56 MB RSS for a live heap of
// about 19 MB, and 62–69 MB when a bulk transfer ran before (bench/RESULTS.md).
// Nothing allocates while the sessions idle, so no collection comes to clean
// it up.
//
// The trimmer samples the runtime's cumulative allocation count every
// trimTick. Once the process has been quiet (less than trimQuietBytes
// allocated per tick) for trimQuietTicks ticks after allocating at least
// trimMinBytes since the last trim, it runs one collection and returns the
// free memory to the OS (debug.FreeOSMemory). That happens once per quiet
// spell; a busy router never trims (it would only re-fault the pages), and
// a quiet one costs one GC of its live heap (a few ms for 4 096 sessions).
const (
	trimTick       = time.Second
	trimQuietBytes = 1 << 20 // allocated per tick: less is quiet
	trimQuietTicks = 2
	trimMinBytes   = 8 << 20 // allocated since the last trim: less is not worth a GC
)

// trimDecision is the trimmer's rule: given the bytes allocated in the last
// tick, the quiet ticks before it and the bytes allocated since the last
// trim, it says whether to trim now and returns the new quiet count. It is
// pure, for tests.
func trimDecision(tickBytes uint64, quiet int, sinceTrim uint64) (trim bool, quietNext int) {
	if tickBytes >= trimQuietBytes {
		return false, 0
	}
	quiet++
	if quiet >= trimQuietTicks && sinceTrim >= trimMinBytes {
		return true, 0
	}
	return false, quiet
}

// memTrimmer owns one goroutine; close stops it and waits.
type memTrimmer struct {
	log   *slog.Logger
	tick  time.Duration
	read  func() uint64 // cumulative bytes allocated
	free  func()
	trims atomic.Uint64
	stop  chan struct{}
	done  chan struct{}
}

func startMemTrimmer(log *slog.Logger) *memTrimmer {
	return newMemTrimmer(log, trimTick, heapAllocBytes, debug.FreeOSMemory)
}

func newMemTrimmer(log *slog.Logger, tick time.Duration, read func() uint64, free func()) *memTrimmer {
	t := &memTrimmer{log: log, tick: tick, read: read, free: free, stop: make(chan struct{}), done: make(chan struct{})}
	go t.run()
	return t
}

func (t *memTrimmer) run() {
	defer close(t.done)
	tick := time.NewTicker(t.tick)
	defer tick.Stop()
	last := t.read()
	trimmedAt := last
	quiet := 0
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			now := t.read()
			var trim bool
			trim, quiet = trimDecision(now-last, quiet, now-trimmedAt)
			last = now
			if !trim {
				continue
			}
			start := time.Now()
			t.free()
			t.trims.Add(1)
			// The collection allocates a little itself: count from after it.
			last = t.read()
			trimmedAt = last
			t.log.Debug("memory trimmed after a quiet spell", "took", time.Since(start))
		}
	}
}

func (t *memTrimmer) close() {
	close(t.stop)
	<-t.done
}

// heapAllocBytes is the runtime's cumulative count of bytes allocated on the
// heap.
func heapAllocBytes() uint64 {
	s := [1]metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s[:])
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
