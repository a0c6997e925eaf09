// Command inproc runs acrouter's whole data path inside one process, so it
// can be profiled (acrouter itself has no pprof endpoint):
//
//	hub client (netstacktest.Host, gVisor) ── raw port ── vpnlinktest hub ══ TLS over loopback TCP ══
//	vpnlink.Client ── netstack ── router ── host loopback socket ── sink / source / echo
//
// Workloads: upload (client → sink), download (source → client), cps (new
// connections with 32 workers), idle (N concurrent sessions held open). It prints throughput, GC and memory
// figures as one JSON object and writes CPU and heap profiles:
//
//	go run ./bench/inproc -mode upload -seconds 5 -cpuprofile /tmp/up.pprof
//	go run ./bench/inproc -mode idle -sessions 4096 -memprofile /tmp/idle.pprof
//	go tool pprof -top -nodecount 25 /tmp/up.pprof
//
// Everything stays on loopback and in memory; every phase is bounded in time.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/netstack/netstacktest"
	"github.com/acrouter/acrouter/router"
	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

var (
	routerPrefix = netip.MustParsePrefix("192.168.30.1/24")
	hostPrefix   = netip.MustParsePrefix("192.168.30.10/24")
	routerMAC    = net.HardwareAddr{0x02, 0xac, 0, 0, 0, 1}
	hostMAC      = net.HardwareAddr{0x02, 0xac, 0, 0, 0, 2}
	// The client cannot address the host's loopback (gVisor drops 127/8 from
	// a NIC), so it uses this documentation address and the router's dialer
	// maps it to 127.0.0.1.
	virtDst = netip.MustParseAddr("198.51.100.7")
)

var (
	gcCycles      int
	settle        time.Duration
	goroutineFile string
)

type result struct {
	Mode         string  `json:"mode"`
	Seconds      float64 `json:"seconds,omitempty"`
	Bytes        int64   `json:"bytes,omitempty"`
	Gbps         float64 `json:"gbps,omitempty"`
	Sessions     int     `json:"sessions,omitempty"`
	ConnPerS     float64 `json:"conn_per_s,omitempty"`
	Failed       int64   `json:"failed,omitempty"`
	HeapInuseMB  float64 `json:"heap_inuse_mb"`
	StackInuseMB float64 `json:"stack_inuse_mb"`
	Goroutines   int     `json:"goroutines"`
	RSSMB        float64 `json:"rss_mb"`
	GCs          uint32  `json:"gc_cycles"`
	AllocMBPerGB float64 `json:"alloc_mb_per_gb_moved,omitempty"`
	Error        string  `json:"error,omitempty"`
}

func main() {
	mode := flag.String("mode", "upload", "upload | download | cps (32 workers: connect, 1-byte echo, close) | idle")
	seconds := flag.Duration("seconds", 5*time.Second, "duration (upload, download, cps)")
	sessions := flag.Int("sessions", 4096, "sessions to hold (idle)")
	flag.IntVar(&gcCycles, "gc", 3, "GC cycles before the memory figures (0: none, to see the stacks as grown; the heap profile then lags)")
	flag.DurationVar(&settle, "settle", 3*time.Second, "idle time after the last session opened, before measuring (idle)")
	cpuProf := flag.String("cpuprofile", "", "write a CPU profile of the workload here")
	memProf := flag.String("memprofile", "", "write a heap profile at the end of the workload here")
	verbose := flag.Bool("v", false, "log at debug level to stderr")
	mutexProf := flag.String("mutexprofile", "", "write a mutex contention profile here")
	blockProf := flag.String("blockprofile", "", "write a blocking profile (waits over 100 µs) here")
	memRate := flag.Int("memprofilerate", 0, "runtime.MemProfileRate (0: the default, 512 KiB; 1: every allocation, exact per-flow figures)")
	goProf := flag.String("goroutines", "", "write the goroutine stacks (grouped, debug=1) at the end of the workload here")
	flag.Parse()
	if *memRate > 0 {
		runtime.MemProfileRate = *memRate
	}
	if *mutexProf != "" {
		runtime.SetMutexProfileFraction(5)
		defer writeProfile("mutex", *mutexProf)
	}
	if *blockProf != "" {
		runtime.SetBlockProfileRate(int((100 * time.Microsecond).Nanoseconds()))
		defer writeProfile("block", *blockProf)
	}
	goroutineFile = *goProf
	res, err := run(*mode, *seconds, *sessions, *cpuProf, *memProf, *verbose)
	if err != nil {
		res.Error = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	if err != nil {
		defer os.Exit(1) // after the deferred profile writers
	}
}

func writeProfile(name, file string) {
	f, err := os.Create(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}

// path is the assembled data path; close tears it down in reverse order.
type path struct {
	hub    *vpnlinktest.Hub
	ln     net.Listener
	client *vpnlink.Client
	st     *netstack.Stack
	rt     *router.Router
	host   *netstacktest.Host
}

func (p *path) close() {
	if p.host != nil {
		p.host.Close()
	}
	if p.rt != nil {
		p.rt.Close()
	}
	if p.st != nil {
		p.st.Close()
	}
	if p.client != nil {
		p.client.Close()
	}
	if p.hub != nil {
		p.hub.Close()
	}
	if p.ln != nil {
		p.ln.Close()
	}
}

func build(ctx context.Context, log *slog.Logger, maxSessions int) (*path, error) {
	p := &path{}
	var err error
	if p.hub, err = vpnlinktest.NewHub(vpnlinktest.Config{HubName: "BENCH", Users: []vpnlinktest.User{{Name: "router", Password: "router-pass"}}}); err != nil {
		return p, err
	}
	if p.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return p, err
	}
	go p.hub.Serve(p.ln) // ends when ln or the hub is closed
	p.client, err = vpnlink.Dial(ctx, vpnlink.Config{
		Server: p.ln.Addr().String(), Hub: "BENCH", User: "router", Password: "router-pass",
		CertSHA256: p.hub.CertSHA256(), Logger: log,
	})
	if err != nil {
		return p, fmt.Errorf("vpnlink: %w", err)
	}
	if p.st, err = netstack.New(p.client, netstack.Config{MAC: routerMAC, Addr: routerPrefix, Logger: log}); err != nil {
		return p, err
	}
	var d net.Dialer
	p.rt, err = router.New(p.st, router.Config{
		NoDefaultDeny: true, MaxSessions: maxSessions, MaxSessionsPerClient: maxSessions, Logger: log,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr() == virtDst {
				addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port()).String()
			}
			return d.DialContext(ctx, network, addr)
		},
	})
	if err != nil {
		return p, err
	}
	if p.host, err = netstacktest.NewHost(p.hub.Attach(), hostMAC, hostPrefix, routerPrefix.Addr()); err != nil {
		return p, err
	}
	return p, nil
}

func run(mode string, dur time.Duration, sessions int, cpuProf, memProf string, verbose bool) (result, error) {
	res := result{Mode: mode}
	log := slog.New(slog.DiscardHandler)
	if verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+2*time.Minute)
	defer cancel()
	p, err := build(ctx, log, max(sessions+64, 4096))
	defer p.close()
	if err != nil {
		return res, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	defer ln.Close()
	dst := netip.AddrPortFrom(virtDst, uint16(ln.Addr().(*net.TCPAddr).Port))

	var stopProf func()
	startProf := func() error {
		if cpuProf == "" {
			return nil
		}
		f, err := os.Create(cpuProf)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		stopProf = func() { pprof.StopCPUProfile(); f.Close() }
		return nil
	}
	var ms0 runtime.MemStats
	switch mode {
	case "upload", "download":
		srv := make(chan error, 1)
		var moved atomic.Int64
		go func() { // one connection: sink (upload) or source (download)
			c, err := ln.Accept()
			if err != nil {
				srv <- err
				return
			}
			defer c.Close()
			if mode == "upload" {
				_, err = io.Copy(io.Discard, c)
			} else {
				buf := make([]byte, 64<<10)
				for err == nil {
					_, err = c.Write(buf)
				}
			}
			srv <- err
		}()
		c, err := p.host.DialTCP(ctx, dst)
		if err != nil {
			return res, fmt.Errorf("dial through the router: %w", err)
		}
		runtime.ReadMemStats(&ms0)
		if err := startProf(); err != nil {
			return res, err
		}
		t0 := time.Now()
		_ = c.SetDeadline(t0.Add(dur))
		buf := make([]byte, 64<<10)
		for {
			var n int
			if mode == "upload" {
				n, err = c.Write(buf)
			} else {
				n, err = c.Read(buf)
			}
			moved.Add(int64(n))
			if err != nil {
				break
			}
		}
		el := time.Since(t0)
		if stopProf != nil {
			stopProf()
		}
		c.Close()
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
			return res, fmt.Errorf("transfer: %w", err)
		}
		res.Seconds, res.Bytes = el.Seconds(), moved.Load()
		res.Gbps = float64(res.Bytes) * 8 / el.Seconds() / 1e9
	case "cps":
		// echo server; workers loop: connect through the router, 1-byte echo, close
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					_, _ = io.Copy(c, c)
				}()
			}
		}()
		runtime.ReadMemStats(&ms0)
		if err := startProf(); err != nil {
			return res, err
		}
		var ok, failed atomic.Int64
		var wg sync.WaitGroup
		t0 := time.Now()
		end := t0.Add(dur)
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				one := make([]byte, 1)
				for time.Now().Before(end) {
					dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
					c, err := p.host.DialTCP(dctx, dst)
					dcancel()
					if err == nil {
						_ = c.SetDeadline(time.Now().Add(3 * time.Second))
						if _, err = c.Write(one); err == nil {
							_, err = io.ReadFull(c, one)
						}
						c.Close()
					}
					if err != nil {
						failed.Add(1)
						continue
					}
					ok.Add(1)
				}
			}()
		}
		wg.Wait()
		el := time.Since(t0)
		if stopProf != nil {
			stopProf()
		}
		res.Seconds, res.Sessions = el.Seconds(), int(ok.Load())
		res.ConnPerS = float64(ok.Load()) / el.Seconds()
		res.Failed = failed.Load()
	case "idle":
		var wg sync.WaitGroup
		var mu sync.Mutex
		var held []net.Conn
		wg.Add(1)
		go func() { // echo server holding every session
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, c)
				mu.Unlock()
				go func() { _, _ = io.Copy(c, c) }()
			}
		}()
		runtime.ReadMemStats(&ms0)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
			ln.Close()
			mu.Lock()
			for _, c := range held {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		}()
		one := make([]byte, 1)
		for i := 0; i < sessions && ctx.Err() == nil; i++ {
			c, err := p.host.DialTCP(ctx, dst)
			if err != nil {
				return res, fmt.Errorf("session %d: %w", i, err)
			}
			conns = append(conns, c)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(one); err == nil {
				_, err = io.ReadFull(c, one)
			}
			if err != nil {
				return res, fmt.Errorf("session %d echo: %w", i, err)
			}
		}
		res.Sessions = len(conns)
		// let idle-time policies (e.g. returning read buffers after a second
		// without data) act before the memory is measured
		time.Sleep(settle)
	default:
		return res, fmt.Errorf("unknown mode %q", mode)
	}
	// a second cycle also empties sync.Pool victim caches (what stays is
	// held), and the heap profile lags a cycle behind
	for range gcCycles {
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapInuseMB = float64(ms.HeapInuse) / (1 << 20)
	res.StackInuseMB = float64(ms.StackInuse) / (1 << 20)
	res.Goroutines = runtime.NumGoroutine()
	res.GCs = ms.NumGC - ms0.NumGC
	if res.Bytes > 0 {
		res.AllocMBPerGB = float64(ms.TotalAlloc-ms0.TotalAlloc) / (1 << 20) / (float64(res.Bytes) / (1 << 30))
	}
	res.RSSMB = rssMB()
	if goroutineFile != "" {
		f, err := os.Create(goroutineFile)
		if err != nil {
			return res, err
		}
		err = pprof.Lookup("goroutine").WriteTo(f, 1)
		f.Close()
		if err != nil {
			return res, err
		}
	}
	if memProf != "" {
		f, err := os.Create(memProf)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			return res, err
		}
	}
	return res, nil
}

func rssMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb / 1024
		}
	}
	return 0
}
