package main

import (
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Latency summarises a sample of durations in microseconds. Percentiles use
// the nearest-rank method on the sorted sample.
type Latency struct {
	N    int     `json:"n"`
	Min  float64 `json:"min_us"`
	Mean float64 `json:"mean_us"`
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	Max  float64 `json:"max_us"`
}

func summarize(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	var sum time.Duration
	for _, x := range s {
		sum += x
	}
	us := func(x time.Duration) float64 { return float64(x) / float64(time.Microsecond) }
	return Latency{
		N: len(s), Min: us(s[0]), Max: us(s[len(s)-1]),
		Mean: us(sum) / float64(len(s)),
		P50:  us(rank(s, 50)), P90: us(rank(s, 90)), P99: us(rank(s, 99)),
	}
}

// rank returns the nearest-rank p-th percentile of the sorted sample s.
func rank(s []time.Duration, p int) time.Duration {
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))]
}

// errKind folds an error into a short, stable class for counting.
func errKind(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "fd-limit"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no-local-port"
	case errors.Is(err, syscall.EPIPE):
		return "broken-pipe"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// errCounts counts error kinds, keeping the first full message.
type errCounts struct {
	Kinds map[string]int `json:"kinds,omitempty"`
	First string         `json:"first,omitempty"`
	Total int            `json:"total"`
}

func (e *errCounts) add(err error) {
	if e.Kinds == nil {
		e.Kinds = map[string]int{}
	}
	e.Kinds[errKind(err)]++
	if e.First == "" {
		e.First = err.Error()
	}
	e.Total++
}

func (e *errCounts) merge(o errCounts) {
	for k, v := range o.Kinds {
		if e.Kinds == nil {
			e.Kinds = map[string]int{}
		}
		e.Kinds[k] += v
	}
	if e.First == "" {
		e.First = o.First
	}
	e.Total += o.Total
}
