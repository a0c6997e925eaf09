//go:build interop

package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"github.com/acrouter/acrouter/vpnlink"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// acrProc is an acrouter of the fault/abuse suite: like startAcrouter, but it
// may be SIGKILLed and started again on the same state directory, and its
// status API may listen on any address of the router namespace.
type acrProc struct {
	name   string
	dir    string // UnprivilegedDir(name): password, state/
	status string // host:port of the status API in NSRtr
	token  string // bearer token, "" for none
	proc   *Proc
	killed bool
	hung   bool
}

// launchAcrouter starts acrouter as nobody in the router namespace with state
// in UnprivilegedDir(name) (kept across launches with the same name). status
// is the --status address; a non-empty token is written to a token file.
func launchAcrouter(t *testing.T, ctx context.Context, name, status, token string, extra ...string) *acrProc {
	t.Helper()
	bin, err := lab.Build(ctx, "github.com/acrouter/acrouter/cmd/acrouter", "acrouter")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := lab.UnprivilegedDir(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, gid, err := unprivIDs()
	if err != nil {
		t.Fatal(err)
	}
	secret := func(file, v string) string {
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{bin,
		"--server", lab.Server, "--hub", lab.Hub, "--user", lab.RouterUser, "--password-file", secret("password", lab.RouterPassword),
		"--state-dir", filepath.Join(dir, "state"), "--dns-resolv-conf", lab.Env["LAB_RESOLV_CONF"],
		"--status", status}
	if token != "" {
		args = append(args, "--status-token-file", secret("token", token))
	}
	args = append(args, extra...)
	p, err := lab.StartUnprivileged(context.WithoutCancel(ctx), lab.NSRtr, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	a := &acrProc{name: name, dir: dir, status: status, token: token, proc: p}
	t.Cleanup(func() {
		if a.killed {
			return
		}
		if err := a.stop(10 * time.Second); err != nil {
			t.Errorf("%s exit: %v\n%s", name, err, a.hangReport())
		}
	})
	wctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if _, err := p.WaitLog(wctx, "virtual host up"); err != nil {
		t.Fatal(err)
	}
	return a
}

// stop sends SIGTERM and waits up to timeout; a process that hangs in its
// shutdown gets SIGQUIT (the Go runtime writes every goroutine's stack to the
// log) and then SIGKILL.
func (a *acrProc) stop(timeout time.Duration) error {
	p := a.proc
	select {
	case <-p.Done():
		return p.waitErr
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
		return p.waitErr
	case <-time.After(timeout):
	}
	a.hung = true
	_ = p.Cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.Done()
	}
	return fmt.Errorf("no exit within %v of SIGTERM (goroutine dump in %s): %w", timeout, p.LogPath, p.waitErr)
}

// hangReport is the end of the log, or for a hung shutdown the goroutines
// that were blocked in acrouter's packages.
func (a *acrProc) hangReport() string {
	log := a.proc.Log()
	if !a.hung {
		return lastLines(log, 10)
	}
	i := strings.Index(log, "SIGQUIT")
	if i < 0 {
		return lastLines(log, 20)
	}
	var keep []string
	for _, g := range strings.Split(log[i:], "\n\n") {
		if strings.Contains(g, "acrouter/") && !strings.Contains(g, "runtime.gopark\n") || strings.Contains(g, "acrouter/router") || strings.Contains(g, "acrouter/netstack") || strings.Contains(g, "acrouter/vpnlink") || strings.Contains(g, "main.") {
			keep = append(keep, g)
		}
	}
	if len(keep) > 12 {
		keep = keep[:12]
	}
	return strings.Join(keep, "\n\n")
}

// goroutineDump ends acrouter with SIGQUIT (the Go runtime writes every
// goroutine's stack to the log) and returns how many goroutines it had.
func (a *acrProc) goroutineDump() (int, error) {
	a.killed = true
	if err := a.proc.Cmd.Process.Signal(syscall.SIGQUIT); err != nil {
		return 0, err
	}
	select {
	case <-a.proc.Done():
	case <-time.After(10 * time.Second):
		a.proc.Cmd.Process.Kill()
		<-a.proc.Done()
		return 0, fmt.Errorf("%s did not exit on SIGQUIT", a.name)
	}
	log := a.proc.Log()
	i := strings.Index(log, "SIGQUIT")
	if i < 0 {
		return 0, fmt.Errorf("%s: no SIGQUIT dump in the log: %s", a.name, lastLines(log, 5))
	}
	n := 0
	for line := range strings.Lines(log[i:]) {
		if strings.HasPrefix(line, "goroutine ") && strings.Contains(line, " [") {
			n++
		}
	}
	return n, nil
}

func (a *acrProc) pid() int { return a.proc.Cmd.Process.Pid }

// kill SIGKILLs acrouter and waits for it to be gone.
func (a *acrProc) kill(t *testing.T) {
	t.Helper()
	a.killed = true
	if err := a.proc.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("acrouter did not die on SIGKILL")
	}
}

// get fetches a status API path from inside the router namespace.
func (a *acrProc) get(ctx context.Context, path, token string) (int, []byte, error) {
	tr := &http.Transport{DialContext: DialInNS(lab.NSRtr), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+a.status+path, nil)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, b, err
}

func (a *acrProc) json(t *testing.T, ctx context.Context, path string, v any) {
	t.Helper()
	code, b, err := a.get(ctx, path, a.token)
	if err != nil || code != 200 {
		t.Fatalf("GET %s: %d %v %s", path, code, err, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, b)
	}
}

// acrStatus is the part of /status the suite reads.
type acrStatus struct {
	Hub struct {
		State       string `json:"state"`
		SessionName string `json:"session_name"`
		Reconnects  uint64 `json:"reconnects"`
		Resumes     uint64 `json:"resumes"`
		CertSHA256  string `json:"cert_sha256"`
		LastError   string `json:"last_error"`
		Version     int    `json:"server_version"`
		Build       int    `json:"server_build"`
	} `json:"hub"`
	Router struct {
		MAC       string `json:"mac"`
		FlowsOpen int    `json:"flows_open"`
	} `json:"router"`
}

type acrFlow struct {
	Proto   string `json:"proto"`
	Client  string `json:"client"`
	Dest    string `json:"dest"`
	BytesUp uint64 `json:"bytes_up"`
}

func (a *acrProc) st(t *testing.T, ctx context.Context) acrStatus {
	t.Helper()
	var s acrStatus
	a.json(t, ctx, "/status", &s)
	return s
}

// metrics returns /metrics as "name{labels}" → value.
func (a *acrProc) metrics(t *testing.T, ctx context.Context) map[string]float64 {
	t.Helper()
	code, b, err := a.get(ctx, "/metrics", a.token)
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// procStatus reads a field (VmRSS, Threads, …) of /proc/<pid>/status as a
// number (kB for the Vm fields).
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

func countFDs(pid int) (int, error) {
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(es), err
}

// waitFor polls cond every 100 ms until it holds or ctx ends.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// iperfResult is the part of iperf3 -J output the suite reads.
type iperfResult struct {
	End struct {
		SumSent struct {
			Bytes       float64 `json:"bytes"`
			Retransmits int     `json:"retransmits"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// blackhole adds (on) or removes the routes that cut the router namespace
// and the hub namespace off from each other: each side silently drops what
// it sends to the other (the LAN stays up).
func blackhole(ctx context.Context, on bool) error {
	op := "add"
	if !on {
		op = "del"
	}
	if out, err := lab.Exec(ctx, lab.NSHub, "ip", "route", op, "blackhole", lab.RtrIP.String()+"/32"); err != nil && on {
		return fmt.Errorf("%v: %s", err, out)
	}
	if out, err := lab.Exec(ctx, lab.NSRtr, "ip", "route", op, "blackhole", lab.Env["LAB_SERVER_IP"]+"/32"); err != nil && on {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// outageDuringIperf drops the hub TCP connection in the middle of an iperf3
// transfer (client → LAN): the server's end is destroyed and, for outage >
// 0, the link stays cut (blackhole routes both ways) for that long, so the
// client learns of the loss only when its retransmissions meet the server's
// RST. The hub session must come back (resumed if mustResume), the transfer
// complete and every NAT flow of it survive.
func outageDuringIperf(t *testing.T, ctx context.Context, a *acrProc, outage time.Duration, mustResume bool) {
	before := a.st(t, ctx)
	if before.Hub.State != "connected" {
		t.Fatalf("hub state %q", before.Hub.State)
	}
	port := fmt.Sprint(lab.IperfPorts[1])
	cmd := lab.Command(ctx, lab.NSCLab, "timeout", "90", "iperf3", "-J", "-c", lab.LANIP.String(), "-p", port, "-t", "10")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Wait until the data connection moves bulk through the NAT.
	dest := fmt.Sprintf("%s:%s", lab.LANIP, port)
	var flowsBefore []acrFlow
	err := waitFor(ctx, "iperf3 data flowing", func() bool {
		var fl []acrFlow
		a.json(t, ctx, "/sessions", &fl)
		flowsBefore = flowsBefore[:0]
		bulk := false
		for _, f := range fl {
			if f.Dest == dest {
				flowsBefore = append(flowsBefore, f)
				bulk = bulk || f.BytesUp > 4<<20
			}
		}
		return bulk
	})
	if err != nil {
		t.Fatal(err)
	}
	// The outage: both sides drop what they send to each other, and the
	// server's end of the hub TCP connection is destroyed (as when a
	// middlebox in between loses its state).
	t0 := time.Now()
	if outage > 0 {
		if err := blackhole(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	unblocked := false
	t.Cleanup(func() {
		if !unblocked {
			blackhole(context.Background(), false)
		}
	})
	n, err := lab.KillConns(ctx, lab.RtrIP.String())
	if err != nil {
		t.Fatal(err)
	}
	if outage > 0 {
		time.Sleep(outage) // the fault itself: the link stays cut for this long
		if err := blackhole(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	unblocked = true
	tUp := time.Now()
	t.Logf("outage: %d hub connection(s) killed, link cut for %v", n, tUp.Sub(t0).Round(time.Millisecond))
	var after acrStatus
	err = waitFor(ctx, "the hub link back", func() bool {
		after = a.st(t, ctx)
		return after.Hub.State == "connected" && (after.Hub.Resumes > before.Hub.Resumes || after.Hub.Reconnects > before.Hub.Reconnects)
	})
	if err != nil {
		t.Fatalf("%v: %+v\n%s", err, after, lastLines(a.proc.Log(), 10))
	}
	t.Logf("hub link back %v after the cut ended (%v after it began): session %s → %s, resumes %d → %d, reconnects %d → %d",
		time.Since(tUp).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), before.Hub.SessionName, after.Hub.SessionName,
		before.Hub.Resumes, after.Hub.Resumes, before.Hub.Reconnects, after.Hub.Reconnects)
	// After an immediate drop Debian's vpnserver 5.01 build 9674 resumes
	// the session. After a cut of a second or more it accepts the resume
	// (additional_connect) and closes the connection at once; acrouter then
	// logs in to a new session. Any other outcome fails.
	resumed := after.Hub.SessionName == before.Hub.SessionName && after.Hub.Resumes == before.Hub.Resumes+1
	if !resumed && mustResume {
		t.Errorf("the hub session was not resumed: session %s → %s, resumes %d → %d, reconnects %d → %d (last error %q)",
			before.Hub.SessionName, after.Hub.SessionName, before.Hub.Resumes, after.Hub.Resumes, before.Hub.Reconnects, after.Hub.Reconnects, after.Hub.LastError)
	} else if !resumed {
		const brokenResume = "the server accepted the session resume but closed the connection at once"
		if !strings.Contains(a.proc.Log(), brokenResume) || after.Hub.Resumes != before.Hub.Resumes+1 || after.Hub.Reconnects != before.Hub.Reconnects+2 {
			t.Errorf("the hub session was neither resumed nor replaced after a failed resume: session %s → %s, resumes %d → %d, reconnects %d → %d (last error %q)",
				before.Hub.SessionName, after.Hub.SessionName, before.Hub.Resumes, after.Hub.Resumes, before.Hub.Reconnects, after.Hub.Reconnects, after.Hub.LastError)
		}
		t.Logf("FINDING: after the %v cut the server accepted the resume of %s and closed it at once; acrouter logged in to %s instead",
			outage, before.Hub.SessionName, after.Hub.SessionName)
	}
	ss, err := lab.SessionsOf(ctx, lab.Hub, lab.RouterUser)
	if err != nil {
		t.Fatal(err)
	}
	if !hasSession(ss, after.Hub.SessionName) || (resumed && len(ss) != 1) {
		t.Errorf("server's sessions of %s: %+v, want %s", lab.RouterUser, ss, after.Hub.SessionName)
	}
	// No NAT flow was lost: every flow of the transfer is still there.
	var fl []acrFlow
	a.json(t, ctx, "/sessions", &fl)
	for _, f := range flowsBefore {
		found := false
		for _, g := range fl {
			found = found || (g.Proto == f.Proto && g.Client == f.Client && g.Dest == f.Dest)
		}
		if !found {
			t.Errorf("NAT flow %s %s → %s lost in the outage", f.Proto, f.Client, f.Dest)
		}
	}
	select {
	case err = <-done:
	case <-ctx.Done():
		t.Fatal("iperf3 did not finish")
	}
	var res iperfResult
	if jerr := json.Unmarshal([]byte(out.String()), &res); jerr != nil || err != nil || res.Error != "" {
		t.Fatalf("iperf3 across the outage: %v %v %q\n%s", err, jerr, res.Error, lastLines(out.String(), 5))
	}
	// iperf3 ends by time: what was still in flight when it stopped
	// is sent but not counted as received. The connection surviving
	// (no iperf3 error) is what shows that nothing was lost.
	if res.End.SumReceived.Bytes <= 0 || res.End.SumReceived.Bytes > res.End.SumSent.Bytes {
		t.Fatalf("iperf3: sent %.0f, received %.0f bytes", res.End.SumSent.Bytes, res.End.SumReceived.Bytes)
	}
	t.Logf("iperf3 across the outage completed: %.1f MB, %.0f Mbit/s average, %d retransmits; %d NAT flows kept",
		res.End.SumReceived.Bytes/1e6, res.End.SumReceived.BitsPerSecond/1e6, res.End.SumSent.Retransmits, len(flowsBefore))
}

// TestFaultsInterop: hub link outage during an iperf3 transfer, vpnserver
// restart, SIGKILL and restart of acrouter — with leases, the certificate pin
// and NAT flows checked across each.
func TestFaultsInterop(t *testing.T) {
	ctx := testCtx(t, 4*time.Minute)
	a := launchAcrouter(t, ctx, "acrouter-faults", "127.0.0.1:8766", "")
	lease, err := lab.DHCP(ctx, "clab")
	if err != nil {
		t.Fatalf("DHCP: %v\n%s", err, lastLines(a.proc.Log(), 10))
	}
	ip := lease["LEASE_IP"]
	t.Logf("client lease %s", ip)

	// An immediate drop (the client sees the RST at once) first: the
	// session must be resumed where the server can resume at all; Debian's
	// 5.01 build with OpenSSL 3 sometimes closes even an immediate resume
	// (seen in 1 of 3 full runs), so there either outcome of
	// outageDuringIperf is accepted. Then a 5 s cut.
	st := a.st(t, ctx)
	canResume, why := serverCanResume(t, vpnlink.Status{ServerVersion: st.Hub.Version, ServerBuild: st.Hub.Build})
	t.Logf("server can resume sessions: %v (%s)", canResume, why)
	t.Run("HubDropDuringIperf", func(t *testing.T) { outageDuringIperf(t, ctx, a, 0, canResume) })
	t.Run("HubOutage5sDuringIperf", func(t *testing.T) { outageDuringIperf(t, ctx, a, 5*time.Second, false) })

	t.Run("ServerRestart", func(t *testing.T) {
		before := a.st(t, ctx)
		t0 := time.Now()
		if err := lab.RestartServer(ctx); err != nil {
			t.Fatal(err)
		}
		tUp := time.Now()
		var after acrStatus
		err := waitFor(ctx, "acrouter logged in again", func() bool {
			after = a.st(t, ctx)
			return after.Hub.State == "connected" && after.Hub.SessionName != before.Hub.SessionName
		})
		if err != nil {
			t.Fatalf("%v: %+v\n%s", err, after, lastLines(a.proc.Log(), 10))
		}
		t.Logf("vpnserver restart took %v; acrouter logged in again %v later (session %s → %s)",
			tUp.Sub(t0).Round(time.Millisecond), time.Since(tUp).Round(time.Millisecond), before.Hub.SessionName, after.Hub.SessionName)
		l2, err := lab.DHCP(ctx, "clab")
		if err != nil {
			t.Fatalf("DHCP after the server restart: %v", err)
		}
		if l2["LEASE_IP"] != ip {
			t.Fatalf("lease after the server restart %s, want the same %s", l2["LEASE_IP"], ip)
		}
		page, err := httpFirstLine(ctx, DialInNS(lab.NSCLab))
		if err != nil || page != lab.HTTPFirstLine {
			t.Fatalf("HTTP after the server restart: %q %v", page, err)
		}
	})

	t.Run("SIGKILLAndRestart", func(t *testing.T) {
		state := filepath.Join(a.dir, "state")
		pin, err := os.ReadFile(filepath.Join(state, "known_servers"))
		if err != nil || len(pin) == 0 {
			t.Fatalf("no certificate pin in the state directory: %v", err)
		}
		mac := a.st(t, ctx).Router.MAC
		pid := a.pid()
		a.kill(t)
		t0 := time.Now()
		b := launchAcrouter(t, ctx, "acrouter-faults", "127.0.0.1:8766", "")
		t.Logf("acrouter pid %d SIGKILLed; the new one (pid %d) is up in %v", pid, b.pid(), time.Since(t0).Round(time.Millisecond))
		st := b.st(t, ctx)
		pin2, err := os.ReadFile(filepath.Join(state, "known_servers"))
		if err != nil || string(pin2) != string(pin) {
			t.Errorf("certificate pin changed across the restart:\n%s\n→\n%s (%v)", pin, pin2, err)
		}
		if st.Hub.CertSHA256 == "" || !strings.Contains(strings.ToLower(strings.ReplaceAll(string(pin), ":", "")), strings.ToLower(strings.ReplaceAll(st.Hub.CertSHA256, ":", ""))) {
			t.Errorf("server certificate %s is not the pinned one: %s", st.Hub.CertSHA256, pin)
		}
		if st.Router.MAC != mac {
			t.Errorf("router MAC %s → %s", mac, st.Router.MAC)
		}
		var leases []struct{ MAC, IP string }
		b.json(t, ctx, "/leases", &leases)
		kept := false
		for _, l := range leases {
			kept = kept || (l.IP == ip && strings.EqualFold(l.MAC, lab.Env["LAB_CLAB_MAC"]))
		}
		if !kept {
			t.Errorf("the client's lease %s did not survive SIGKILL: %+v", ip, leases)
		}
		l2, err := lab.DHCP(ctx, "clab")
		if err != nil {
			t.Fatalf("DHCP after SIGKILL: %v", err)
		}
		if l2["LEASE_IP"] != ip {
			t.Fatalf("lease after SIGKILL %s, want the same %s", l2["LEASE_IP"], ip)
		}
		page, err := httpFirstLine(ctx, DialInNS(lab.NSCLab))
		if err != nil || page != lab.HTTPFirstLine {
			t.Fatalf("HTTP after the restart: %q %v", page, err)
		}
	})
}
