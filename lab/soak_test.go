//go:build interop && soak

package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// TestSoak (make soak; not in make test) runs mixed traffic through acrouter
// and the real server for SOAK_DURATION (default 10m): HTTP requests on
// fresh connections, UDP and DNS request/response, long-lived TCP echo
// flows that come and go, pings and short iperf3 runs both ways. acrouter's
// RSS, open fds, threads and (if exported) goroutines are sampled; after the
// traffic stops and the flows are closed, none may have grown beyond the
// bounds below compared to the sample taken after the first minute.
func TestSoak(t *testing.T) {
	dur := 10 * time.Minute
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SOAK_DURATION: %v", err)
		}
		dur = d
	}
	const (
		rssGrowthMiB   = 32   // RSS after the run vs. after warm-up
		fdGrowth       = 16   // open fds after the flows closed vs. idle at start
		threadGrowth   = 16   // OS threads
		goroutineSlack = 64   // goroutines after the flows closed vs. idle at start
		maxErrorRate   = 1e-3 // failed operations / operations
	)
	ctx := testCtx(t, dur+5*time.Minute)
	args := []string{"--udp-idle-timeout", "20s", "--dns-idle-timeout", "5s", "--nat-log=false"}
	// Baseline goroutines: an identical acrouter, joined and idle after the
	// client's DHCP, dumps its goroutines (SIGQUIT); the soak's acrouter
	// then starts on the same state directory and dumps its own at the end.
	base := launchAcrouter(t, ctx, "acrouter-soak", "127.0.0.1:8771", "", args...)
	if _, err := lab.DHCP(ctx, "clab"); err != nil {
		t.Fatal(err)
	}
	baseG, err := base.goroutineDump()
	if err != nil {
		t.Fatal(err)
	}
	a := launchAcrouter(t, ctx, "acrouter-soak", "127.0.0.1:8771", "", args...)
	if _, err := lab.DHCP(ctx, "clab"); err != nil {
		t.Fatal(err)
	}
	pid := a.pid()
	type sample struct {
		at                  time.Duration
		rssKiB              int64
		fds, threads, flows int
		goroutines          float64
		ops, fails          int64
	}
	var ops, fails atomic.Int64
	var failMu sync.Mutex
	var failSamples []string
	fail := func(what string, err error) {
		fails.Add(1)
		failMu.Lock()
		if len(failSamples) < 10 {
			failSamples = append(failSamples, fmt.Sprintf("%s: %s: %v", time.Now().Format("15:04:05"), what, err))
		}
		failMu.Unlock()
	}
	take := func(t0 time.Time) sample {
		s := sample{at: time.Since(t0).Round(time.Second), ops: ops.Load(), fails: fails.Load()}
		s.rssKiB, _ = procStatus(pid, "VmRSS")
		th, _ := procStatus(pid, "Threads")
		s.threads = int(th)
		s.fds, _ = countFDs(pid)
		m := a.metrics(t, ctx)
		s.flows = int(m[`acrouter_flows_open{proto="tcp"}`] + m[`acrouter_flows_open{proto="udp"}`] + m[`acrouter_flows_open{proto="icmp"}`])
		return s
	}
	logS := func(s sample) {
		t.Logf("t=%v rss=%.1fMiB fds=%d threads=%d flows=%d ops=%d fails=%d",
			s.at, float64(s.rssKiB)/1024, s.fds, s.threads, s.flows, s.ops, s.fails)
	}
	t0 := time.Now()
	idle := take(t0)
	logS(idle)

	tctx, stop := context.WithTimeout(ctx, dur)
	defer stop()
	dial := DialInNS(lab.NSCLab)
	lan := lab.LANIP.String()
	var wg sync.WaitGroup
	only := os.Getenv("SOAK_ONLY") // e.g. "http,iperf3": run only these workers (diagnosis)
	worker := func(name string, pause time.Duration, op func(ctx context.Context) error) {
		if only != "" && !slices.ContainsFunc(strings.Split(only, ","), func(p string) bool { return strings.HasPrefix(name, p) }) {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tctx.Err() == nil {
				octx, cancel := context.WithTimeout(tctx, 15*time.Second)
				err := op(octx)
				cancel()
				if tctx.Err() != nil {
					return // the run ended during the operation
				}
				ops.Add(1)
				if err != nil {
					fail(name, err)
				}
				select {
				case <-tctx.Done():
				case <-time.After(pause):
				}
			}
		}()
	}
	for i := range 4 { // short HTTP flows
		worker(fmt.Sprintf("http%d", i), 50*time.Millisecond, func(ctx context.Context) error {
			line, err := httpFirstLine(ctx, dial)
			if err == nil && line != lab.HTTPFirstLine {
				err = fmt.Errorf("first line %q", line)
			}
			return err
		})
	}
	worker("udp-echo", 100*time.Millisecond, func(ctx context.Context) error { // a new UDP flow each time
		c, err := dial(ctx, "udp", fmt.Sprintf("%s:%d", lan, lab.EchoPort))
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 2048)
		msg := []byte(fmt.Sprintf("soak-%d", time.Now().UnixNano()))
		for try := 0; try < 3; try++ { // UDP: bounded retries
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(time.Second))
			if n, err := c.Read(buf); err == nil && string(buf[:n]) == string(msg) {
				return nil
			}
		}
		return fmt.Errorf("no UDP echo")
	})
	worker("dns", 100*time.Millisecond, func(ctx context.Context) error {
		c, err := dial(ctx, "udp", "192.168.30.1:53")
		if err != nil {
			return err
		}
		defer c.Close()
		q := new(mdns.Msg)
		q.SetQuestion(fmt.Sprintf("www.%s.", lab.DNSZone), mdns.TypeA)
		b, _ := q.Pack()
		buf := make([]byte, 4096)
		for try := 0; try < 3; try++ {
			c.Write(b)
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			var r mdns.Msg
			if err == nil && r.Unpack(buf[:n]) == nil && len(r.Answer) == 1 {
				if aa, ok := r.Answer[0].(*mdns.A); ok && aa.A.String() == lan {
					return nil
				}
			}
		}
		return fmt.Errorf("no DNS answer")
	})
	worker("tcp-echo-held", 0, func(ctx context.Context) error { // flows held 5-20 s
		c, err := dial(ctx, "tcp", fmt.Sprintf("%s:%d", lan, lab.EchoPort))
		if err != nil {
			return err
		}
		defer c.Close()
		hold := 5*time.Second + time.Duration(time.Now().UnixNano()%int64(10*time.Second))
		end := time.Now().Add(hold)
		buf := make([]byte, 64)
		for time.Now().Before(end) && tctx.Err() == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("hold\n")); err != nil {
				return err
			}
			if _, err := c.Read(buf); err != nil {
				return err
			}
			time.Sleep(500 * time.Millisecond) // the flow's own pace
		}
		return nil
	})
	worker("ping", time.Second, func(ctx context.Context) error {
		out, err := lab.Exec(ctx, lab.NSCLab, "ping", "-c", "1", "-W", "3", lan)
		if err != nil {
			return fmt.Errorf("%v: %s", err, lastLines(out, 1))
		}
		return nil
	})
	flip := false
	worker("iperf3", 10*time.Second, func(ctx context.Context) error {
		args := []string{"timeout", "20", "iperf3", "-J", "-c", lan, "-p", fmt.Sprint(lab.IperfPorts[0]), "-t", "2"}
		if flip = !flip; flip {
			args = append(args, "-R")
		}
		t1 := time.Now()
		out, err := lab.Exec(ctx, lab.NSCLab, args...)
		if os.Getenv("SOAK_VERBOSE") != "" {
			t.Logf("iperf3 %v %s..%s: %v", args[len(args)-1], t1.Format("15:04:05.0"), time.Now().Format("15:04:05.0"), err)
		}
		if err != nil {
			return err
		}
		var r iperfResult
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.End.SumReceived.Bytes <= 0 {
			return fmt.Errorf("iperf3: %v %q", err, r.Error)
		}
		return nil
	})

	var samples []sample
	var warm sample
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-tctx.Done():
			done = true
		case <-tick.C:
			s := take(t0)
			logS(s)
			samples = append(samples, s)
			if warm.at == 0 && s.at >= time.Minute {
				warm = s
			}
			if a.proc.Cmd.ProcessState != nil {
				t.Fatalf("acrouter died: %s", lastLines(a.proc.Log(), 10))
			}
		}
	}
	wg.Wait()
	// Let the flows close (UDP idle timeout 20 s, TCP closed by the clients).
	var end sample
	err = waitFor(ctx, "flows closed", func() bool {
		end = take(t0)
		return end.flows == 0
	})
	if err != nil {
		t.Errorf("%v: %d flows still open", err, end.flows)
	}
	end = take(t0)
	logS(end)
	if warm.at == 0 && len(samples) > 0 {
		warm = samples[0]
	}
	maxRSS := int64(0)
	for _, s := range samples {
		maxRSS = max(maxRSS, s.rssKiB)
	}
	t.Logf("soak %v: %d operations, %d failed; RSS idle %.1f, warm %.1f, peak %.1f, end %.1f MiB; fds idle %d, end %d; threads idle %d, end %d",
		dur, end.ops, end.fails, float64(idle.rssKiB)/1024, float64(warm.rssKiB)/1024, float64(maxRSS)/1024, float64(end.rssKiB)/1024,
		idle.fds, end.fds, idle.threads, end.threads)
	if len(failSamples) > 0 {
		t.Logf("failed operations (first %d): %s", len(failSamples), strings.Join(failSamples, "; "))
	}
	if end.ops == 0 || float64(end.fails) > maxErrorRate*float64(end.ops) {
		t.Errorf("%d of %d operations failed (bound %.1f%%): %s", end.fails, end.ops, 100*maxErrorRate, strings.Join(failSamples, "; "))
	}
	if g := float64(end.rssKiB-warm.rssKiB) / 1024; g > rssGrowthMiB {
		t.Errorf("RSS grew %.1f MiB from the warm sample to the end (bound %d MiB)", g, rssGrowthMiB)
	}
	if end.fds > idle.fds+fdGrowth {
		t.Errorf("fd leak: %d open fds after the flows closed, %d when idle at start (bound +%d)", end.fds, idle.fds, fdGrowth)
	}
	if end.threads > idle.threads+threadGrowth {
		t.Errorf("threads %d → %d (bound +%d)", idle.threads, end.threads, threadGrowth)
	}
	endG, err := a.goroutineDump()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("goroutines (SIGQUIT dumps): idle after start %d, after the soak with its flows closed %d", baseG, endG)
	if endG > baseG+goroutineSlack {
		t.Errorf("goroutines %d → %d after the flows closed (bound +%d): a leak", baseG, endG, goroutineSlack)
	}
}
