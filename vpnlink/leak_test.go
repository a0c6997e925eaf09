package vpnlink_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

// ourGoroutines lists goroutines running code of this module.
func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "acrouter/vpnlink") && !strings.Contains(g, "vpnlink_test.") {
			out = append(out, g)
		}
	}
	return out
}

func TestNoGoroutineLeak(t *testing.T) {
	h, err := vpnlinktest.NewHub(vpnlinktest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.Serve(ln) }()
	cfg := vpnlink.Config{Server: ln.Addr().String(), Hub: "DEFAULT", User: "alice", Password: "secret",
		CertSHA256: h.CertSHA256(), Logger: testLogger(t)}
	c, err := vpnlink.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	port := h.Attach()
	f := frame(0xff, 1, 1)
	c.WriteFrames([][]byte{f})
	buf := make([]byte, 1600)
	if n, err := port.ReadFrame(buf); err != nil || !bytes.Equal(buf[:n], f) {
		t.Fatalf("port got %q, %v", buf[:n], err)
	}
	h.DropConnections() // exercise the reconnect path too
	// A frame written while the loss is not yet noticed is lost in flight:
	// wait for the resume first.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := c.WaitFor(ctx, func(st vpnlink.Status) bool { return st.Resumes == 1 && st.State == vpnlink.StateConnected }); err != nil {
		t.Fatalf("no resume: %+v", st)
	}
	c.WriteFrames([][]byte{f})
	if n, err := port.ReadFrame(buf); err != nil || !bytes.Equal(buf[:n], f) {
		t.Fatalf("after reconnect port got %q, %v", buf[:n], err)
	}
	c.Close()
	h.Close()
	<-served
	// Close waits for every goroutine; allow the last ones to return.
	var left []string
	for range 1000 {
		if left = ourGoroutines(); len(left) == 0 {
			return
		}
		runtime.Gosched()
	}
	t.Fatalf("%d goroutines left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
}

func TestSNI(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		cfg := clientCfg(t, h, "alice", "secret")
		dial(t, cfg).Close()
		cfg.Server = "192.0.2.10:443" // an IP: Go sends no SNI
		dial(t, cfg).Close()
		cfg.ServerName = "vpn.example"
		dial(t, cfg).Close()
		got := h.ServerNames()
		if len(got) != 3 || got[0] != "hub.test" || got[1] != "" || got[2] != "vpn.example" {
			t.Fatalf("SNI = %q", got)
		}
	})
}

// The hub speaks real TLS 1.3 (pinning is meaningful).
func TestHubTLSVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		conn, _ := h.Dial(context.Background(), "tcp", "x:1")
		tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		if v := tc.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Fatalf("TLS version %x", v)
		}
		tc.Close()
	})
}
