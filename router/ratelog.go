package router

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// rateLogger writes at most one line per key per interval. Lines dropped in
// between are counted and the count is attached ("suppressed") to the next
// line that is written for the same key. It keeps one small entry per key;
// the callers use a fixed set of keys (refusal reasons), so memory is
// bounded.
type rateLogger struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	entries map[string]*rateEntry // guarded by mu
}

type rateEntry struct {
	last       time.Time
	suppressed uint64
}

func newRateLogger(log *slog.Logger, interval time.Duration) *rateLogger {
	return &rateLogger{log: log, interval: interval, now: time.Now, entries: make(map[string]*rateEntry)}
}

// Log writes msg at level with attrs unless a line for key was written less
// than interval ago. It reports whether the line was written.
func (l *rateLogger) Log(level slog.Level, key, msg string, attrs ...slog.Attr) bool {
	if !l.log.Enabled(context.Background(), level) {
		return false
	}
	now := l.now()
	l.mu.Lock()
	e := l.entries[key]
	if e == nil {
		e = &rateEntry{}
		l.entries[key] = e
	} else if now.Sub(e.last) < l.interval {
		e.suppressed++
		l.mu.Unlock()
		return false
	}
	e.last = now
	n := e.suppressed
	e.suppressed = 0
	l.mu.Unlock()
	if n > 0 {
		attrs = append(attrs, slog.Uint64("suppressed", n))
	}
	l.log.LogAttrs(context.Background(), level, msg, attrs...)
	return true
}
