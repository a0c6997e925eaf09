//go:build linux

package router

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestFDLimitReal runs the router against a real RLIMIT_NOFILE in a child
// process (the limit is lowered there only): once the process is out of
// descriptors, new flows get an RST, are counted as fd-limit and one clear
// error line is logged; closing flows makes room again.
func TestFDLimitReal(t *testing.T) {
	if os.Getenv("ROUTER_TEST_FDLIMIT") == "" {
		// The destination lives in this process, so that only the router's
		// dials use the child's descriptors.
		dst := tcpEchoServer(t)
		cmd := exec.Command(os.Args[0], "-test.run=^TestFDLimitReal$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "ROUTER_TEST_FDLIMIT="+dst.String())
		out, err := cmd.CombinedOutput()
		if strings.Contains(string(out), "SETUP-SKIP") {
			t.Skipf("child could not set up:\n%s", out)
		}
		if err != nil || !strings.Contains(string(out), "fd limit verified") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	log, logBuf := testLogger(t)
	r := newTestRouter(t, Config{NoDefaultDeny: true, Logger: log}, nil)
	dst, err := netip.ParseAddrPort(os.Getenv("ROUTER_TEST_FDLIMIT"))
	if err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("SETUP-SKIP: %v", err)
	}
	lim := syscall.Rlimit{Cur: uint64(len(fds) + 16), Max: uint64(len(fds) + 16)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Skipf("SETUP-SKIP: setrlimit: %v", err)
	}
	var clients []net.Conn
	refused := false
	for i := range 64 {
		virt, client := net.Pipe() // no descriptors on the virtual side
		clients = append(clients, client)
		req := newFakeTCPReq(pipeTCPConn{virt})
		go r.handleTCP(clientPort(i), dst, req)
		if got := req.wait(t); got == "rst" {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("never ran out of descriptors")
	}
	if n := r.Stats().Refused["fd-limit"]; n != 1 {
		t.Fatalf("fd-limit refusals %d, Refused %v", n, r.Stats().Refused)
	}
	if !strings.Contains(logBuf.String(), "out of file descriptors") {
		t.Fatalf("no clear log line:\n%s", logBuf.String())
	}
	// Free a few flows: new flows work again.
	for _, c := range clients[:4] {
		c.Close()
	}
	waitFor(t, "flows to close", func() bool { return r.Stats().FlowsClosed >= 4 })
	virt, client := net.Pipe()
	defer client.Close()
	req := newFakeTCPReq(pipeTCPConn{virt})
	go r.handleTCP(netip.MustParseAddrPort("192.168.30.50:1"), dst, req)
	if got := req.wait(t); got != "accept" {
		t.Fatalf("after freeing descriptors: %s", got)
	}
	for _, c := range clients {
		c.Close()
	}
	t.Log("fd limit verified")
}
