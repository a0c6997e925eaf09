package router

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestGoPoolReusesWorkers: tasks that come one after another run on one
// worker (its stack stays grown); concurrent tasks get workers of their
// own; a worker idle for idleFor exits, and the next task starts a new one.
func TestGoPoolReusesWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newGoPool(4, time.Second)
		defer p.close()
		var ran atomic.Int32
		for range 10 {
			p.Go(func() { ran.Add(1) })
			synctest.Wait() // the worker ran the task and waits for the next
		}
		if ran.Load() != 10 || p.spawned.Load() != 1 {
			t.Fatalf("10 tasks in a row: ran %d on %d workers, want 10 on 1", ran.Load(), p.spawned.Load())
		}

		release := make(chan struct{})
		for range 3 {
			p.Go(func() { <-release })
		}
		synctest.Wait()
		if got := p.spawned.Load(); got != 3 {
			t.Fatalf("3 concurrent tasks after one idle worker: %d workers started in all, want 3", got)
		}
		close(release)
		synctest.Wait()
		if got := p.idle.Load(); got != 3 {
			t.Fatalf("%d workers wait after the concurrent tasks, want 3", got)
		}

		time.Sleep(time.Second + time.Millisecond)
		synctest.Wait()
		if got := p.idle.Load(); got != 0 {
			t.Fatalf("%d workers still wait after idling for idleFor, want 0", got)
		}
		p.Go(func() { ran.Add(1) })
		synctest.Wait()
		if got := p.spawned.Load(); got != 4 {
			t.Fatalf("a task after the workers left started %d workers in all, want 4", got)
		}
	})
}

// TestGoPoolBoundsIdleWorkers: at most max workers wait; the others exit
// when their task ends, and close lets the waiting ones go.
func TestGoPoolBoundsIdleWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newGoPool(2, time.Hour)
		release := make(chan struct{})
		for range 5 {
			p.Go(func() { <-release })
		}
		synctest.Wait()
		close(release)
		synctest.Wait()
		if got := p.idle.Load(); got != 2 {
			t.Fatalf("%d workers wait, want the bound 2", got)
		}
		p.close() // returns only once the waiting workers are gone
		if got := p.idle.Load(); got != 0 {
			t.Fatalf("%d workers wait after close", got)
		}
	})
}
