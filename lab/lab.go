//go:build interop

package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure Up.
type Options struct {
	Prefix string   // namespace prefix (LAB_PREFIX); default "acrt<pid>"
	State  string   // state directory (LAB_STATE); default /tmp/acrouter-lab-<prefix>
	Script string   // path of lab.sh; default lab.sh in the package directory
	Env    []string // extra KEY=VALUE settings for lab.sh, e.g. "LAB_HUB_LOGS=off"
	// Logf receives progress lines (nil: discard).
	Logf func(format string, args ...any)
}

// Lab is a running lab. Its fields come from `lab.sh env`.
type Lab struct {
	Script string            // absolute path of lab.sh
	Prefix string            // namespace prefix
	State  string            // state directory (logs in State/logs)
	Env    map[string]string // everything `lab.sh env` printed

	NSHub, NSLAN, NSRtr, NSCLab, NSCSNAT string // namespace names

	Server                         string // "10.77.0.254:5555", reachable from NSRtr
	Hub, SNATHub                   string // "LAB" (for acrouter), "SNAT" (SecureNAT on)
	RouterUser, RouterPassword     string // bridge/routing mode allowed
	ClientUser, ClientPassword     string
	NoBridgeUser, NoBridgePassword string // policy NoBridge=yes NoRouting=yes

	LANIP         netip.Addr // 10.77.0.1: httpd, iperf3, echo, dnsmasq
	RtrIP         netip.Addr // 10.77.0.2: the router namespace's LAN address
	HTTPPort      int        // busybox httpd on LANIP
	HTTPFirstLine string     // first line of http://LANIP:HTTPPort/
	EchoPort      int        // UDP and TCP echo on LANIP
	IperfPorts    []int      // iperf3 -s on LANIP
	DNSZone       string     // "lab.test" served by dnsmasq on LANIP:53 (www.<zone> -> LANIP)

	base []string // environment for lab.sh
	logf func(format string, args ...any)
}

// Up brings a lab up (idempotent) and reads its environment.
func Up(ctx context.Context, o Options) (*Lab, error) {
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("acrt%d", os.Getpid())
	}
	if o.State == "" {
		o.State = "/tmp/acrouter-lab-" + o.Prefix
	}
	if o.Script == "" {
		o.Script = "lab.sh"
	}
	script, err := filepath.Abs(o.Script)
	if err != nil {
		return nil, err
	}
	l := &Lab{Script: script, Prefix: o.Prefix, State: o.State, logf: o.Logf}
	if l.logf == nil {
		l.logf = func(string, ...any) {}
	}
	l.base = append(os.Environ(), "LAB_PREFIX="+o.Prefix, "LAB_STATE="+o.State)
	l.base = append(l.base, o.Env...)
	t0 := time.Now()
	if out, err := l.Run(ctx, "up"); err != nil {
		return l, fmt.Errorf("lab.sh up: %w\n%s", err, out)
	}
	l.logf("lab %s up in %v (state %s)", l.Prefix, time.Since(t0).Round(time.Millisecond), l.State)
	out, err := l.Run(ctx, "env")
	if err != nil {
		return l, fmt.Errorf("lab.sh env: %w", err)
	}
	if err := l.parseEnv(out); err != nil {
		return l, err
	}
	return l, nil
}

func (l *Lab) parseEnv(out string) error {
	l.Env = map[string]string{}
	for line := range strings.Lines(out) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok {
			l.Env[k] = v
		}
	}
	var errs []error
	get := func(k string) string {
		v, ok := l.Env[k]
		if !ok {
			errs = append(errs, fmt.Errorf("lab.sh env: no %s", k))
		}
		return v
	}
	atoi := func(k string) int {
		n, err := strconv.Atoi(get(k))
		if err != nil {
			errs = append(errs, fmt.Errorf("lab.sh env: %s: %w", k, err))
		}
		return n
	}
	addr := func(k string) netip.Addr {
		a, err := netip.ParseAddr(get(k))
		if err != nil {
			errs = append(errs, fmt.Errorf("lab.sh env: %s: %w", k, err))
		}
		return a
	}
	l.NSHub, l.NSLAN, l.NSRtr = get("LAB_NS_HUB"), get("LAB_NS_LAN"), get("LAB_NS_RTR")
	l.NSCLab, l.NSCSNAT = get("LAB_NS_CLAB"), get("LAB_NS_CSNAT")
	l.Server, l.Hub, l.SNATHub = get("LAB_SERVER"), get("LAB_HUB"), get("LAB_SNAT_HUB")
	l.RouterUser, l.RouterPassword = get("LAB_ROUTER_USER"), get("LAB_ROUTER_PASSWORD")
	l.ClientUser, l.ClientPassword = get("LAB_CLIENT_USER"), get("LAB_CLIENT_PASSWORD")
	l.NoBridgeUser, l.NoBridgePassword = get("LAB_NOBRIDGE_USER"), get("LAB_NOBRIDGE_PASSWORD")
	l.LANIP, l.RtrIP = addr("LAB_LAN_IP"), addr("LAB_RTR_IP")
	l.HTTPPort, l.EchoPort = atoi("LAB_HTTP_PORT"), atoi("LAB_ECHO_PORT")
	l.HTTPFirstLine, l.DNSZone = get("LAB_HTTP_FIRST_LINE"), get("LAB_DNS_ZONE")
	l.IperfPorts = nil
	for f := range strings.FieldsSeq(get("LAB_IPERF_PORTS")) {
		n, err := strconv.Atoi(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("lab.sh env: LAB_IPERF_PORTS: %w", err))
		}
		l.IperfPorts = append(l.IperfPorts, n)
	}
	return errors.Join(errs...)
}

// Down stops everything the lab started and deletes its namespaces (state kept).
func (l *Lab) Down(ctx context.Context) error {
	t0 := time.Now()
	out, err := l.Run(ctx, "down")
	if err != nil {
		return fmt.Errorf("lab.sh down: %w\n%s", err, out)
	}
	l.logf("lab %s down in %v", l.Prefix, time.Since(t0).Round(time.Millisecond))
	return nil
}

// Purge is Down plus removing the state directory.
func (l *Lab) Purge(ctx context.Context) error {
	out, err := l.Run(ctx, "purge")
	if err != nil {
		return fmt.Errorf("lab.sh purge: %w\n%s", err, out)
	}
	return nil
}

// Guard starts a detached watcher that runs `lab.sh down` once process pid has
// exited, so the lab is cleaned up even when the test binary panics or is killed.
func (l *Lab) Guard(pid int) error {
	if err := os.MkdirAll(filepath.Join(l.State, "logs"), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(l.State, "logs", "guard.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("setsid", "sh", "-c", `tail --pid="$1" -f /dev/null; exec bash "$2" down`, "guard",
		strconv.Itoa(pid), l.Script)
	cmd.Env = l.base
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lab guard: %w", err)
	}
	return cmd.Process.Release()
}

// Run runs a lab.sh subcommand with the lab's settings; it returns stdout+stderr.
func (l *Lab) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{l.Script}, args...)...)
	cmd.Env = l.base
	cmd.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Command returns a command that runs argv in namespace ns (via `ip netns exec`,
// so /etc/netns/<ns>/resolv.conf applies). It is bound to ctx.
func (l *Lab) Command(ctx context.Context, ns string, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Exec runs argv in namespace ns and returns its combined output.
func (l *Lab) Exec(ctx context.Context, ns string, argv ...string) (string, error) {
	out, err := l.Command(ctx, ns, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s: %w: %s", ns, strings.Join(argv, " "), err, lastLines(string(out), 3))
	}
	return string(out), nil
}

// VPNCmd runs vpncmd as server administrator inside the hub namespace, e.g.
// VPNCmd(ctx, "/ADMINHUB:LAB", "/CSV", "/CMD", "SessionList"). lab.sh adds
// /PROGRAMMING and a timeout; ctx bounds it as well.
func (l *Lab) VPNCmd(ctx context.Context, args ...string) (string, error) {
	out, err := l.Run(ctx, append([]string{"vpncmd"}, args...)...)
	if err != nil {
		return out, fmt.Errorf("vpncmd %s: %w: %s", strings.Join(args, " "), err, lastLines(out, 3))
	}
	return out, nil
}

// Session is one row of vpncmd SessionList.
type Session struct {
	Name       string // "SID-ROUTER-3"
	VLAN       string
	Location   string // "Local Session" or a cluster member
	User       string
	SourceHost string // client address
	TCPConns   string // "1", or "None" for local sessions
	Bytes      string
	Packets    string
}

// SessionList lists the sessions of a hub.
func (l *Lab) SessionList(ctx context.Context, hub string) ([]Session, error) {
	out, err := l.VPNCmd(ctx, "/ADMINHUB:"+hub, "/CSV", "/CMD", "SessionList")
	if err != nil {
		return nil, err
	}
	rows, err := parseCSV(out, "Session Name")
	if err != nil {
		return nil, fmt.Errorf("SessionList: %w", err)
	}
	var ss []Session
	for _, r := range rows {
		if len(r) < 8 {
			return nil, fmt.Errorf("SessionList: short row %q", r)
		}
		ss = append(ss, Session{r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]})
	}
	return ss, nil
}

// SessionGet returns the Item→Value table of vpncmd SessionGet.
func (l *Lab) SessionGet(ctx context.Context, hub, name string) (map[string]string, error) {
	out, err := l.VPNCmd(ctx, "/ADMINHUB:"+hub, "/CSV", "/CMD", "SessionGet", name)
	if err != nil {
		return nil, err
	}
	return parseItems(out)
}

// ServerInfo returns the Item→Value table of vpncmd ServerInfoGet.
func (l *Lab) ServerInfo(ctx context.Context) (map[string]string, error) {
	out, err := l.VPNCmd(ctx, "/CSV", "/CMD", "ServerInfoGet")
	if err != nil {
		return nil, err
	}
	return parseItems(out)
}

// SessionsOf returns the sessions of hub logged in as user.
func (l *Lab) SessionsOf(ctx context.Context, hub, user string) ([]Session, error) {
	all, err := l.SessionList(ctx, hub)
	if err != nil {
		return nil, err
	}
	var ss []Session
	for _, s := range all {
		if s.User == user {
			ss = append(ss, s)
		}
	}
	return ss, nil
}

// WaitSessions polls SessionList (bounded by ctx) until cond holds.
func (l *Lab) WaitSessions(ctx context.Context, hub string, cond func([]Session) bool) ([]Session, error) {
	for {
		ss, err := l.SessionList(ctx, hub)
		if err == nil && cond(ss) {
			return ss, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("condition not met; last SessionList: %+v", ss)
			}
			return ss, fmt.Errorf("waiting for sessions in hub %s: %w (%w)", hub, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// parseCSV returns the data rows after the header row that starts with header.
func parseCSV(out, header string) ([][]string, error) {
	i := strings.Index(out, header+",")
	if i < 0 {
		return nil, fmt.Errorf("no %q header in: %s", header, lastLines(out, 3))
	}
	r := csv.NewReader(strings.NewReader(out[i:]))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		return nil, err
	}
	return recs[1:], nil
}

func parseItems(out string) (map[string]string, error) {
	rows, err := parseCSV(out, "Item")
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(rows))
	for _, r := range rows {
		if len(r) >= 2 {
			if _, dup := m[r[0]]; !dup {
				m[r[0]] = r[1]
			}
		}
	}
	return m, nil
}

// DHCP runs busybox udhcpc on eth0 of the client namespace "clab" or "csnat",
// configures the lease (address + default route into the VPN) and returns it
// (LEASE_IP, LEASE_PREFIX, LEASE_ROUTER, LEASE_DNS, LEASE_DOMAIN, LEASE_TIME,
// LEASE_SERVER, LEASE_MTU, LEASE_ELAPSED_MS).
func (l *Lab) DHCP(ctx context.Context, client string) (map[string]string, error) {
	out, err := l.Run(ctx, "dhcp", client)
	if err != nil {
		return nil, fmt.Errorf("lab.sh dhcp %s: %w: %s", client, err, lastLines(out, 3))
	}
	m := map[string]string{}
	for line := range strings.Lines(out) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && strings.HasPrefix(k, "LEASE_") {
			m[k] = v
		}
	}
	if m["LEASE_IP"] == "" {
		return nil, fmt.Errorf("lab.sh dhcp %s: no LEASE_IP in %q", client, out)
	}
	return m, nil
}

// RestartServer stops vpnserver (SIGTERM, bounded) and starts it again.
func (l *Lab) RestartServer(ctx context.Context) error {
	out, err := l.Run(ctx, "restart-server")
	if err != nil {
		return fmt.Errorf("lab.sh restart-server: %w: %s", err, lastLines(out, 3))
	}
	l.logf("%s", strings.TrimSpace(lastLines(out, 1)))
	return nil
}

// KillConns destroys (ss -K) the server side of the established TCP
// connections on the server port from peer ("IP" or "IP:PORT"; "" = every
// non-localhost peer), as a TCP drop seen by the server. It returns how many
// were killed; zero matching connections is an error.
func (l *Lab) KillConns(ctx context.Context, peer string) (int, error) {
	return l.killConns(ctx, peer, "server")
}

// KillClientConns destroys (ss -K) the client side, in the router namespace, of
// the connections to the server port from local address local ("IP" or
// "IP:PORT"; "" = all): the client sees ECONNABORTED, the server a RST.
func (l *Lab) KillClientConns(ctx context.Context, local string) (int, error) {
	return l.killConns(ctx, local, "client")
}

func (l *Lab) killConns(ctx context.Context, peer, side string) (int, error) {
	if peer == "" {
		peer = "all"
	}
	out, err := l.Run(ctx, "kill-conns", peer, side)
	if err != nil {
		return 0, fmt.Errorf("lab.sh kill-conns %s %s: %w: %s", peer, side, err, lastLines(out, 3))
	}
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "KILLED="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("lab.sh kill-conns: no KILLED= in %q", out)
}

// InNS runs fn on a goroutine locked to an OS thread that has joined network
// namespace ns (/run/netns/<ns>). Sockets created by fn live in ns for good.
// The thread returns to its original namespace before it is unlocked; if that
// fails it stays locked and the runtime discards it.
func InNS(ns string, fn func() error) error {
	target, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns after %s: %w", ns, err))
			return // still locked: this thread dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialInNS returns a dial function (usable as vpnlink.Config.Dial) whose sockets
// are created in network namespace ns.
func DialInNS(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := InNS(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// ListenInNS listens (TCP/unix) in namespace ns.
func ListenInNS(ns, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := InNS(ns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacketInNS opens a packet socket (UDP) in namespace ns.
func ListenPacketInNS(ns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := InNS(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Unprivileged is the account UnprivilegedDir and StartUnprivileged use.
const Unprivileged = "nobody"

// UnprivilegedDir creates State/users/<name> (mode 0700) owned by the
// unprivileged account, for state that a process started with StartUnprivileged
// must write.
func (l *Lab) UnprivilegedDir(name string) (string, error) {
	uid, gid, err := unprivIDs()
	if err != nil {
		return "", err
	}
	base := filepath.Join(l.State, "users")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	if err := os.Chmod(base, 0o755); err != nil {
		return "", err
	}
	d := filepath.Join(base, name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", err
	}
	return d, os.Chown(d, uid, gid)
}

func unprivIDs() (uid, gid int, err error) {
	u, err := user.Lookup(Unprivileged)
	if err != nil {
		return 0, 0, err
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return 0, 0, err
	}
	gid, err = strconv.Atoi(u.Gid)
	return uid, gid, err
}

// Build compiles a Go package (e.g. "github.com/acrouter/acrouter/cmd/acrouter")
// into State/bin/<name> (mode 0755, in a world-readable directory) so that an
// unprivileged process can run it.
func (l *Lab) Build(ctx context.Context, pkg, name string) (string, error) {
	dir := filepath.Join(l.State, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, os.Chmod(out, 0o755)
}

// InstallBinary copies the executable src to State/bin/<name> (mode 0755) so
// that an unprivileged process can run it.
func (l *Lab) InstallBinary(src, name string) (string, error) {
	dir := filepath.Join(l.State, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	dst := filepath.Join(dir, name)
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		return "", err
	}
	return dst, os.Rename(tmp, dst)
}

// Proc is a process started in a namespace by StartUnprivileged.
type Proc struct {
	Cmd     *exec.Cmd
	LogPath string // stdout+stderr

	done    chan struct{}
	waitErr error
	logFile *os.File
}

// StartUnprivileged starts argv in namespace ns as the unprivileged account with
// no capabilities (ip netns exec + setpriv: --reuid/--regid nobody/nogroup,
// --clear-groups, --inh-caps=-all, --bounding-set=-all, --no-new-privs).
// stdout and stderr go to State/logs/<name>.log. The process runs until Stop,
// until ctx ends, or until it exits.
func (l *Lab) StartUnprivileged(ctx context.Context, ns, name string, argv ...string) (*Proc, error) {
	uid, gid, err := unprivIDs()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(l.State, "logs", name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	args := append([]string{"netns", "exec", ns, "setpriv",
		"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid), "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"}, argv...)
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = "/"
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	p := &Proc{Cmd: cmd, LogPath: logPath, done: make(chan struct{}), logFile: lf}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM, waits up to timeout, then SIGKILLs. It returns the exit error.
func (p *Proc) Stop(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.waitErr
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
	return p.waitErr
}

// Log returns the process's output so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// WaitLog waits (bounded by ctx) until a line of the process's output contains substr.
func (p *Proc) WaitLog(ctx context.Context, substr string) (string, error) {
	for {
		f, err := os.Open(p.LogPath)
		if err == nil {
			sc := bufio.NewScanner(io.LimitReader(f, 64<<20))
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				if strings.Contains(sc.Text(), substr) {
					f.Close()
					return sc.Text(), nil
				}
			}
			f.Close()
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("process exited (%v) before logging %q: %s", p.waitErr, substr, lastLines(p.Log(), 5))
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q in %s: %w", substr, p.LogPath, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
