package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func dialer(timeout time.Duration) *net.Dialer { return &net.Dialer{Timeout: timeout} }

// stopAfter returns a context cancelled after d. Unlike context.WithTimeout it
// carries no deadline, so a dial in progress keeps its own timeout and, when
// it is cut short, ctx.Err() is already set: a bound reached is never counted
// as a failed connection.
func stopAfter(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	t := time.AfterFunc(d, cancel)
	return ctx, func() { t.Stop(); cancel() }
}

// exchange writes req and reads len(resp) bytes back, all within timeout.
func exchange(c net.Conn, req, resp []byte, timeout time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err := io.ReadFull(c, resp)
	return err
}

// ConnectResult is the outcome of sequential connects.
type ConnectResult struct {
	Mode    string    `json:"mode"`
	Addr    string    `json:"addr"`
	OK      int       `json:"ok"`
	Errors  errCounts `json:"errors"`
	Elapsed float64   `json:"elapsed_s"`
	Connect Latency   `json:"connect"`
}

// runConnect times the TCP handshake (SYN → established as the client sees
// it) of sequential connections; each is closed at once.
func runConnect(args []string) (any, error) {
	fs := flag.NewFlagSet("connect", flag.ExitOnError)
	addr := fs.String("a", "", "echo server host:port")
	n := fs.Int("n", 300, "connections")
	bound := fs.Duration("max", 15*time.Second, "overall time bound")
	timeout := fs.Duration("timeout", 3*time.Second, "per-connect timeout")
	_ = fs.Parse(args)
	ctx, cancel := stopAfter(*bound)
	defer cancel()
	d := dialer(*timeout)
	res := ConnectResult{Mode: "connect", Addr: *addr}
	lat := make([]time.Duration, 0, *n)
	start := time.Now()
	for i := 0; i < *n && ctx.Err() == nil; i++ {
		t0 := time.Now()
		c, err := d.DialContext(ctx, "tcp", *addr)
		if err != nil {
			if ctx.Err() == nil {
				res.Errors.add(err)
			}
			continue
		}
		lat = append(lat, time.Since(t0))
		c.Close()
	}
	res.Elapsed = time.Since(start).Seconds()
	res.OK, res.Connect = len(lat), summarize(lat)
	return res, nil
}

// CPSResult is the outcome of the connection-rate test.
type CPSResult struct {
	Mode      string    `json:"mode"`
	Addr      string    `json:"addr"`
	Workers   int       `json:"workers"`
	OK        int64     `json:"ok"`
	Errors    errCounts `json:"errors"`
	Elapsed   float64   `json:"elapsed_s"`
	ConnPerS  float64   `json:"conn_per_s"`
	Handshake Latency   `json:"handshake"` // connect only
	Total     Latency   `json:"total"`     // connect + 1-byte echo + close
}

// runCPS runs C workers that each loop: connect, 1-byte echo, close.
func runCPS(args []string) (any, error) {
	fs := flag.NewFlagSet("cps", flag.ExitOnError)
	addr := fs.String("a", "", "echo server host:port")
	workers := fs.Int("c", 32, "concurrent workers")
	dur := fs.Duration("d", 3*time.Second, "duration")
	timeout := fs.Duration("timeout", 3*time.Second, "per-connection timeout")
	perWorker := fs.Int("cap", 200000, "bound on connections per worker")
	_ = fs.Parse(args)
	ctx, cancel := stopAfter(*dur)
	defer cancel()
	d := dialer(*timeout)
	type part struct {
		hs, tot []time.Duration
		errs    errCounts
	}
	parts := make([]part, *workers)
	var ok atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range parts {
		wg.Add(1)
		go func(p *part) {
			defer wg.Done()
			req, resp := []byte{'c'}, make([]byte, 1)
			for i := 0; i < *perWorker && ctx.Err() == nil; i++ {
				t0 := time.Now()
				c, err := d.DialContext(ctx, "tcp", *addr)
				if err != nil {
					if ctx.Err() == nil {
						p.errs.add(err)
						// a failing path: do not spin (bounded pause, ends with ctx)
						select {
						case <-ctx.Done():
						case <-time.After(5 * time.Millisecond):
						}
					}
					continue
				}
				t1 := time.Now()
				err = exchange(c, req, resp, *timeout)
				c.Close()
				if err != nil {
					p.errs.add(err)
					continue
				}
				p.hs = append(p.hs, t1.Sub(t0))
				p.tot = append(p.tot, time.Since(t0))
				ok.Add(1)
			}
		}(&parts[w])
	}
	wg.Wait()
	el := time.Since(start)
	res := CPSResult{Mode: "cps", Addr: *addr, Workers: *workers, OK: ok.Load(), Elapsed: el.Seconds()}
	var hs, tot []time.Duration
	for _, p := range parts {
		hs, tot = append(hs, p.hs...), append(tot, p.tot...)
		res.Errors.merge(p.errs)
	}
	res.ConnPerS = float64(res.OK) / el.Seconds()
	res.Handshake, res.Total = summarize(hs), summarize(tot)
	return res, nil
}

// RRResult is the outcome of the request/response test.
type RRResult struct {
	Mode    string    `json:"mode"`
	Addr    string    `json:"addr"`
	Size    int       `json:"size"`
	OK      int       `json:"ok"`
	Errors  errCounts `json:"errors"`
	Elapsed float64   `json:"elapsed_s"`
	TPS     float64   `json:"tps"`
	RTT     Latency   `json:"rtt"`
}

// runRR sends size-byte requests on one connection (TCP_NODELAY) and waits
// for each echo before the next: the round trip through the router.
func runRR(args []string) (any, error) {
	fs := flag.NewFlagSet("rr", flag.ExitOnError)
	addr := fs.String("a", "", "echo server host:port")
	n := fs.Int("n", 5000, "transactions")
	warm := fs.Int("warmup", 50, "transactions before measuring")
	size := fs.Int("s", 64, "request and response size (bytes)")
	bound := fs.Duration("max", 15*time.Second, "overall time bound")
	timeout := fs.Duration("timeout", 3*time.Second, "per-transaction timeout")
	_ = fs.Parse(args)
	c, err := net.DialTimeout("tcp", *addr, *timeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetNoDelay(true)
	req, resp := make([]byte, *size), make([]byte, *size)
	for i := range req {
		req[i] = byte('a' + i%26)
	}
	res := RRResult{Mode: "rr", Addr: *addr, Size: *size}
	deadline := time.Now().Add(*bound)
	lat := make([]time.Duration, 0, *n)
	start := time.Now()
	for i := 0; i < *warm+*n && time.Now().Before(deadline); i++ {
		t0 := time.Now()
		if err := exchange(c, req, resp, *timeout); err != nil {
			res.Errors.add(err)
			break // the connection is unusable now
		}
		if i == *warm {
			start = t0
		}
		if i >= *warm {
			lat = append(lat, time.Since(t0))
		}
	}
	el := time.Since(start)
	res.OK, res.Elapsed, res.RTT = len(lat), el.Seconds(), summarize(lat)
	if el > 0 {
		res.TPS = float64(len(lat)) / el.Seconds()
	}
	return res, nil
}

// HoldResult is the outcome of the concurrent-session test.
type HoldResult struct {
	Mode           string    `json:"mode"`
	Addr           string    `json:"addr"`
	Target         int       `json:"target"`
	Attempted      int       `json:"attempted"`
	Established    int       `json:"established"`
	OpenSeconds    float64   `json:"open_s"`
	OpenErrors     errCounts `json:"open_errors"`
	FirstFailAt    int       `json:"first_fail_at"` // sessions established when the first open failed (-1: none)
	StoppedBy      string    `json:"stopped_by"`    // target, max-failures, time
	AliveAfterOpen int       `json:"alive_after_open"`
	HoldSeconds    float64   `json:"hold_s"`
	AliveAfterHold int       `json:"alive_after_hold"`
	VerifyErrors   errCounts `json:"verify_errors"`
	Elapsed        float64   `json:"elapsed_s"`
}

// runHold opens up to N concurrent sessions (each proven by a 1-byte echo),
// verifies all of them, writes the -ready file (so a sampler can measure the
// router with N idle sessions), holds them idle, verifies again and closes.
func runHold(args []string) (any, error) {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	addr := fs.String("a", "", "echo server host:port")
	n := fs.Int("n", 4096, "target concurrent sessions")
	rate := fs.Int("rate", 2000, "opening pace, sessions/s")
	par := fs.Int("p", 128, "opens in flight")
	maxFail := fs.Int("maxfail", 100, "stop opening after this many failures")
	timeout := fs.Duration("timeout", 3*time.Second, "connect/echo timeout")
	holdFor := fs.Duration("hold", 5*time.Second, "idle time between the verifications")
	ready := fs.String("ready", "", "file written (with the session count) once all are open and verified")
	bound := fs.Duration("max", 60*time.Second, "time bound for opening")
	_ = fs.Parse(args)

	start := time.Now()
	ctx, cancel := stopAfter(*bound)
	defer cancel()
	d := dialer(*timeout)
	res := HoldResult{Mode: "hold", Addr: *addr, Target: *n, FirstFailAt: -1}
	var mu sync.Mutex
	conns := make([]net.Conn, 0, *n)
	var fails atomic.Int64
	sem := make(chan struct{}, *par)
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(max(*rate, 1)))
	defer tick.Stop()
	res.StoppedBy = "target"
open:
	for i := 0; i < *n; i++ {
		select {
		case <-ctx.Done():
			res.StoppedBy = "time"
			break open
		case <-tick.C:
		}
		select {
		case <-ctx.Done():
			res.StoppedBy = "time"
			break open
		case sem <- struct{}{}:
		}
		if int(fails.Load()) >= *maxFail { // checked with a slot held: counts every finished open
			<-sem
			res.StoppedBy = "max-failures"
			break
		}
		res.Attempted++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := d.DialContext(ctx, "tcp", *addr)
			if err == nil {
				if err = exchange(c, []byte{'h'}, make([]byte, 1), *timeout); err != nil {
					c.Close()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if ctx.Err() != nil {
					return // cut short by the time bound: not a failure of the path
				}
				fails.Add(1)
				res.OpenErrors.add(err)
				if res.FirstFailAt < 0 {
					res.FirstFailAt = len(conns)
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	res.OpenSeconds = time.Since(start).Seconds()
	res.Established = len(conns)
	fmt.Fprintf(os.Stderr, "tcpbench hold: %d of %d established in %.1fs (%s), open errors %v\n",
		res.Established, res.Attempted, res.OpenSeconds, res.StoppedBy, res.OpenErrors.Kinds)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	res.AliveAfterOpen = verify(conns, *timeout, nil)
	if *ready != "" {
		if err := os.WriteFile(*ready, fmt.Appendf(nil, "%d\n", res.AliveAfterOpen), 0o644); err != nil {
			return nil, err
		}
	}
	t0 := time.Now()
	time.Sleep(*holdFor) // the idle period is the measurement itself
	res.HoldSeconds = time.Since(t0).Seconds()
	res.AliveAfterHold = verify(conns, *timeout, &res.VerifyErrors)
	res.Elapsed = time.Since(start).Seconds()
	return res, nil
}

// verify echoes one byte on every connection (256 at a time) and returns how
// many answered.
func verify(conns []net.Conn, timeout time.Duration, errs *errCounts) int {
	var alive atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := exchange(c, []byte{'v'}, make([]byte, 1), timeout); err != nil {
				if errs != nil {
					mu.Lock()
					errs.add(err)
					mu.Unlock()
				}
				return
			}
			alive.Add(1)
		}()
	}
	wg.Wait()
	return int(alive.Load())
}
