//go:build interop

package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/hubdial"
)

// The proxy tests put the vpnlink client into a namespace of their own
// (<prefix>-pxc) that reaches nothing but the proxies:
//
//	<prefix>-pxc  pxc0 10.77.1.2/30 ==veth== pxl0 10.77.1.1/30  <prefix>-lan
//	                                           tinyproxy :8888 (basic auth)
//	                                           microsocks :1080 (user/password)
//	                                           sshd :2222 (key, forwarding to the server only)
//	                                         lanbr 10.77.0.1 ── 10.77.0.254:5555 vpnserver
//
// The LAN namespace does not forward, and pxc has no route to 10.77.0.0/24,
// so the only way to the server is through a proxy; the server sees the
// session come from 10.77.0.1.
const (
	pxcIP     = "10.77.1.2"
	pxlIP     = "10.77.1.1"
	httpPort  = "8888"
	socksPort = "1080"
	sshPort   = "2222"

	pxHTTPUser, pxHTTPPass   = "labproxy", "tiny-pass-123"
	pxSOCKSUser, pxSOCKSPass = "labsocks", "socks-pass-456"
	pxKeyPass                = "lab key passphrase"
)

type proxyEnv struct {
	ns         string // the client's namespace
	dir        string
	keyFile    string // client key (encrypted)
	passFile   string // its passphrase
	knownHosts string
	hostPub    ssh.PublicKey
}

func TestProxyToHub(t *testing.T) {
	env := proxySetup(t)
	t.Run("HTTP", func(t *testing.T) {
		proxyLink(t, env, hubdial.Config{Kind: hubdial.HTTP, Proxy: net.JoinHostPort(pxlIP, httpPort),
			Username: pxHTTPUser, Password: pxHTTPPass})
	})
	t.Run("HTTPWrongPassword", func(t *testing.T) {
		err := proxyDialErr(t, env, hubdial.Config{Kind: hubdial.HTTP, Proxy: net.JoinHostPort(pxlIP, httpPort),
			Username: pxHTTPUser, Password: "wrong-" + pxHTTPPass})
		if !errors.Is(err, hubdial.ErrProxyAuthRequired) || !strings.Contains(err.Error(), "proxy authentication required") {
			t.Fatalf("tinyproxy with a wrong password: %v, want proxy authentication required", err)
		}
	})
	t.Run("HTTPNoCredentials", func(t *testing.T) {
		err := proxyDialErr(t, env, hubdial.Config{Kind: hubdial.HTTP, Proxy: net.JoinHostPort(pxlIP, httpPort)})
		if !errors.Is(err, hubdial.ErrProxyAuthRequired) {
			t.Fatalf("tinyproxy without credentials: %v, want proxy authentication required", err)
		}
	})
	t.Run("SOCKS5", func(t *testing.T) {
		proxyLink(t, env, hubdial.Config{Kind: hubdial.SOCKS5, Proxy: net.JoinHostPort(pxlIP, socksPort),
			Username: pxSOCKSUser, Password: pxSOCKSPass})
	})
	t.Run("SOCKS5WrongPassword", func(t *testing.T) {
		err := proxyDialErr(t, env, hubdial.Config{Kind: hubdial.SOCKS5, Proxy: net.JoinHostPort(pxlIP, socksPort),
			Username: pxSOCKSUser, Password: "wrong-" + pxSOCKSPass})
		if !errors.Is(err, hubdial.ErrProxyAuthFailed) {
			t.Fatalf("microsocks with a wrong password: %v, want ErrProxyAuthFailed", err)
		}
	})
	t.Run("SSH", func(t *testing.T) {
		proxyLink(t, env, hubdial.Config{Kind: hubdial.SSH, Proxy: net.JoinHostPort(pxlIP, sshPort), Username: "root",
			KeyFile: env.keyFile, KeyPassphraseFile: env.passFile, KnownHostsFile: env.knownHosts})
		// login, kill, re-login: every hub connection rode on one SSH login
		b, err := os.ReadFile(filepath.Join(lab.State, "logs", "proxy-sshd.log"))
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(b), "Accepted publickey for root"); n != 1 {
			t.Errorf("sshd accepted %d logins, want 1 (the SSH connection is reused for redials)", n)
		}
	})
	t.Run("SSHHostKeyMismatch", func(t *testing.T) {
		_, other := genKey(t, env.dir, "other_host_key", "")
		kh := filepath.Join(env.dir, "known_hosts_wrong")
		line := knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(pxlIP, sshPort))}, other)
		if err := os.WriteFile(kh, []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := proxyDialErr(t, env, hubdial.Config{Kind: hubdial.SSH, Proxy: net.JoinHostPort(pxlIP, sshPort), Username: "root",
			KeyFile: env.keyFile, KeyPassphraseFile: env.passFile, KnownHostsFile: kh})
		if !errors.Is(err, hubdial.ErrHostKeyMismatch) || !strings.Contains(err.Error(), ssh.FingerprintSHA256(env.hostPub)) {
			t.Fatalf("sshd with a wrong known_hosts: %v, want ErrHostKeyMismatch naming %s", err, ssh.FingerprintSHA256(env.hostPub))
		}
	})
	t.Run("SSHUnauthorizedKey", func(t *testing.T) {
		other, _ := genKey(t, env.dir, "unauthorized", "")
		err := proxyDialErr(t, env, hubdial.Config{Kind: hubdial.SSH, Proxy: net.JoinHostPort(pxlIP, sshPort), Username: "root",
			KeyFile: other, KnownHostsFile: env.knownHosts})
		if !errors.Is(err, hubdial.ErrProxyAuthFailed) {
			t.Fatalf("sshd with an unauthorized key: %v, want ErrProxyAuthFailed", err)
		}
	})
	t.Run("SSHForwardingLimited", func(t *testing.T) {
		// authorized_keys allows forwarding to the server only
		cfg := hubdial.Config{Kind: hubdial.SSH, Proxy: net.JoinHostPort(pxlIP, sshPort), Username: "root",
			KeyFile: env.keyFile, KeyPassphraseFile: env.passFile, KnownHostsFile: env.knownHosts, Dial: DialInNS(env.ns)}
		d, err := hubdial.New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		_, err = d.DialContext(testCtx(t, 20*time.Second), "tcp", fmt.Sprintf("%s:%d", lab.LANIP, lab.HTTPPort))
		t.Logf("forward to %s:%d: %v", lab.LANIP, lab.HTTPPort, err)
		if !errors.Is(err, hubdial.ErrProxyRefused) {
			t.Fatalf("forwarding outside permitopen: %v, want ErrProxyRefused", err)
		}
	})
}

// proxyDialErr dials the server through cfg from the client namespace and
// returns the error (the dial must fail).
func proxyDialErr(t *testing.T, env *proxyEnv, cfg hubdial.Config) error {
	t.Helper()
	cfg.Dial = DialInNS(env.ns)
	d, err := hubdial.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := d.DialContext(testCtx(t, 20*time.Second), "tcp", lab.Server)
	if err == nil {
		c.Close()
		t.Fatalf("dial through %s succeeded", cfg)
	}
	t.Logf("%s: %v", cfg, err)
	for _, secret := range []string{cfg.Password, pxKeyPass} {
		if secret != "" && strings.Contains(err.Error(), secret) {
			t.Errorf("error shows a secret: %v", err)
		}
	}
	return err
}

// proxyLink logs in on the real server through the proxy in cfg, exchanges
// frames with a directly connected second session, checks that the server
// sees the proxy's address, kills the server side of the proxied TCP
// connection and checks that the client comes back through the proxy.
func proxyLink(t *testing.T, env *proxyEnv, cfg hubdial.Config) {
	cfg.Dial = DialInNS(env.ns)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	d, err := hubdial.New(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() }) // after the clients (cleanups run last-in first-out)
	lc := linkConfig(t, lab.RouterUser, lab.RouterPassword)
	lc.Dial = d.DialContext
	a := dialLink(t, lc)
	b := dialLink(t, linkConfig(t, lab.ClientUser, lab.ClientPassword))
	ta, tb := tapFrames(t, a), tapFrames(t, b)
	exchange(t, "through "+string(cfg.Kind), a, b, ta, tb)

	name := a.Status().SessionName
	ctx := testCtx(t, 60*time.Second)
	ss, err := lab.WaitSessions(ctx, lab.Hub, func(ss []Session) bool { return hasSession(ss, name) })
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if s.Name == name {
			t.Logf("server session %s: source %q", name, s.SourceHost)
			if !strings.Contains(s.SourceHost, lab.LANIP.String()) || strings.Contains(s.SourceHost, lab.RtrIP.String()) {
				t.Errorf("session source %q, want the proxy's address %s", s.SourceHost, lab.LANIP)
			}
		}
	}
	before := a.Status()
	n, err := lab.KillConns(ctx, lab.LANIP.String())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	st, err := waitStatus(ctx, a, func(s vpnlink.Status) bool {
		return s.State == vpnlink.StateConnected && s.Reconnects > before.Reconnects
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed %d server-side connection(s) from the proxy; back after %v (resumes %d→%d, last error %v)",
		n, time.Since(t0).Round(time.Millisecond), before.Resumes, st.Resumes, st.LastError)
	exchange(t, "after the kill, through "+string(cfg.Kind), a, b, ta, tb)
}

func proxySetup(t *testing.T) *proxyEnv {
	ctx := testCtx(t, 20*time.Minute) // apt-get may run
	script, err := filepath.Abs("proxy.sh")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "bash", script, "install").CombinedOutput(); err != nil {
		t.Fatalf("proxy.sh install: %v\n%s", err, out)
	}
	env := &proxyEnv{ns: lab.Prefix + "-pxc", dir: filepath.Join(lab.State, "proxy")}
	os.RemoveAll(env.dir)
	if err := os.MkdirAll(env.dir, 0o755); err != nil {
		t.Fatal(err)
	}

	// the client namespace and its link to the LAN namespace
	run := func(argv ...string) {
		t.Helper()
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "del", env.ns).Run() // a leftover of a killed run
	exec.Command("ip", "-n", lab.NSLAN, "link", "del", "pxl0").Run()
	run("ip", "netns", "add", env.ns)
	t.Cleanup(func() {
		exec.Command("ip", "-n", lab.NSLAN, "link", "del", "pxl0").Run()
		if out, err := exec.Command("ip", "netns", "del", env.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", env.ns, err, out)
		}
	})
	run("ip", "-n", env.ns, "link", "set", "lo", "up")
	run("ip", "link", "add", "pxc0", "netns", env.ns, "type", "veth", "peer", "name", "pxl0", "netns", lab.NSLAN)
	run("ip", "-n", env.ns, "addr", "add", pxcIP+"/30", "dev", "pxc0")
	run("ip", "-n", env.ns, "link", "set", "pxc0", "up")
	run("ip", "-n", lab.NSLAN, "addr", "add", pxlIP+"/30", "dev", "pxl0")
	run("ip", "-n", lab.NSLAN, "link", "set", "pxl0", "up")
	if out, _ := exec.Command("ip", "netns", "exec", lab.NSLAN, "sysctl", "-n", "net.ipv4.ip_forward").Output(); strings.TrimSpace(string(out)) != "0" {
		t.Fatalf("the LAN namespace forwards (ip_forward=%q): the client namespace could bypass the proxies", out)
	}
	// the server is out of reach without a proxy
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if c, err := DialInNS(env.ns)(dctx, "tcp", lab.Server); err == nil {
		c.Close()
		cancel()
		t.Fatalf("%s reaches the server %s directly", env.ns, lab.Server)
	} else {
		t.Logf("direct dial from %s to %s fails as it should: %v", env.ns, lab.Server, err)
	}
	cancel()

	// tinyproxy: CONNECT to the server port only, basic auth, clients from pxc only
	tpConf := filepath.Join(env.dir, "tinyproxy.conf")
	writeFile(t, tpConf, fmt.Sprintf(`User nobody
Group nogroup
Port %s
Listen %s
Timeout 600
MaxClients 20
Allow %s
ConnectPort %s
BasicAuth %s %s
LogLevel Info
`, httpPort, pxlIP, pxcIP, portOf(lab.Server), pxHTTPUser, pxHTTPPass))
	startProxyDaemon(t, env, "tinyproxy", httpPort, "tinyproxy", "-d", "-c", tpConf)

	// microsocks as nobody
	startProxyDaemon(t, env, "microsocks", socksPort, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"microsocks", "-i", pxlIP, "-p", socksPort, "-u", pxSOCKSUser, "-P", pxSOCKSPass)

	// sshd: own host key, one authorized key (encrypted; forwarding to the server only, no shell)
	hostKey, hostPub := genKey(t, env.dir, "ssh_host_ed25519_key", "")
	env.hostPub = hostPub
	env.keyFile, _ = genKey(t, env.dir, "id_client", pxKeyPass)
	env.passFile = filepath.Join(env.dir, "id_client.pass")
	writeFile(t, env.passFile, pxKeyPass+"\n")
	clientPub, err := os.ReadFile(env.keyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	authKeys := filepath.Join(env.dir, "authorized_keys")
	writeFile(t, authKeys, fmt.Sprintf("restrict,port-forwarding,permitopen=%q %s", lab.Server, clientPub))
	env.knownHosts = filepath.Join(env.dir, "known_hosts")
	writeFile(t, env.knownHosts, knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(pxlIP, sshPort))}, hostPub)+"\n")
	sshdConf := filepath.Join(env.dir, "sshd_config")
	writeFile(t, sshdConf, fmt.Sprintf(`Port %s
ListenAddress %s
HostKey %s
PidFile %s
AuthorizedKeysFile %s
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding local
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
GatewayPorts no
ClientAliveInterval 15
LogLevel VERBOSE
`, sshPort, pxlIP, hostKey, filepath.Join(env.dir, "sshd.pid"), authKeys))
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil { // sshd's privilege separation directory
		t.Fatal(err)
	}
	startProxyDaemon(t, env, "sshd", sshPort, "/usr/sbin/sshd", "-D", "-e", "-f", sshdConf)
	return env
}

// startProxyDaemon runs argv in the LAN namespace in the foreground until
// the test ends (SIGTERM, bounded wait, SIGKILL) and waits until it accepts
// TCP on pxlIP:port from the client namespace.
func startProxyDaemon(t *testing.T, env *proxyEnv, name, port string, argv ...string) {
	t.Helper()
	logPath := filepath.Join(lab.State, "logs", "proxy-"+name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", lab.NSLAN}, argv...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		lf.Close()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Logf("%s (pid %d) still running 5 s after SIGTERM; SIGKILL", name, cmd.Process.Pid)
			cmd.Process.Kill()
			<-done
		}
	})
	ctx := testCtx(t, 10*time.Second)
	addr := net.JoinHostPort(pxlIP, port)
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := DialInNS(env.ns)(dctx, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			t.Logf("%s listening on %s (pid %d, log %s)", name, addr, cmd.Process.Pid, logPath)
			return
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("%s exited before listening on %s: %s", name, addr, lastLines(string(b), 5))
		case <-ctx.Done():
			t.Fatalf("%s not listening on %s within 10 s: %v", name, addr, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// genKey makes an ed25519 key pair with ssh-keygen; it returns the private
// key's path and the public key.
func genKey(t *testing.T, dir, name, passphrase string) (string, ssh.PublicKey) {
	t.Helper()
	p := filepath.Join(dir, name)
	os.Remove(p)
	os.Remove(p + ".pub")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "acrouter-lab", "-f", p).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	b, err := os.ReadFile(p + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return p, pub
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func portOf(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}
