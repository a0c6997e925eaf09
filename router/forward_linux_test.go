//go:build linux

package router

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// asNobodyEnv marks the copy of the test binary run as uid 65534.
const asNobodyEnv = "ACROUTER_ROUTER_TEST_AS_NOBODY"

// TestForwardBindPrivilegedPort: a forward on port 1 fails at New with an
// error naming the port and the sysctl. As root, the test re-runs itself as
// uid/gid 65534 (nobody), since root may bind any port.
func TestForwardBindPrivilegedPort(t *testing.T) {
	start, err := strconv.Atoi(unprivilegedPortStart())
	if err != nil || start <= 1 {
		t.Skipf("every port is unprivileged here (net.ipv4.ip_unprivileged_port_start %q)", unprivilegedPortStart())
	}
	if os.Geteuid() == 0 {
		if os.Getenv(asNobodyEnv) != "" {
			t.Fatal("still root in the re-run")
		}
		rerunAsNobody(t, "TestForwardBindPrivilegedPort")
		return
	}
	leakCheck(t)
	pf := mustForward(t, "tcp 127.0.0.1:1 -> 192.168.30.10:22")
	_, err = New(newStackForTest(t), Config{Forwards: []PortForward{pf}})
	if err == nil || !errors.Is(err, syscall.EACCES) {
		t.Fatalf("New with a forward on port 1 as uid %d: %v; want EACCES", os.Geteuid(), err)
	}
	for _, want := range []string{"port 1:", "permission denied", "net.ipv4.ip_unprivileged_port_start", "from port " + strconv.Itoa(start) + " up"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// rerunAsNobody runs test name in a copy of this test binary as uid/gid
// 65534 and fails unless it passes.
func rerunAsNobody(t *testing.T, name string) {
	self, err := os.Executable()
	if err != nil {
		t.Skipf("no test binary to re-run: %v", err)
	}
	dir, err := os.MkdirTemp("", "acrouter-router-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "router.test")
	if err := copyFile(self, bin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), asNobodyEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) {
		t.Skipf("cannot switch to uid 65534 here: %v", err)
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: "+name) {
		t.Fatalf("%s as uid 65534: %v\n%s", name, err, out)
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
