package vpnlinktest_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"testing/synctest"
	"time"

	"github.com/acrouter/acrouter/vpnlink"
	"github.com/acrouter/acrouter/vpnlink/internal/proto"
	"github.com/acrouter/acrouter/vpnlink/vpnlinktest"
)

func newHub(t *testing.T, cfg vpnlinktest.Config) *vpnlinktest.Hub {
	t.Helper()
	h, err := vpnlinktest.NewHub(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func eth(dst, src byte, payload string) []byte {
	f := []byte{0x02, 0, 0, 0, 0, dst, 0x02, 0, 0, 0, 0, src, 0x88, 0xb5}
	if dst == 0xff {
		copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	}
	return append(f, payload...)
}

func TestPortsSwitch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		p1, p2, p3 := h.Attach(), h.Attach(), h.Attach()
		buf := make([]byte, 1600)
		read := func(p *vpnlinktest.Port) []byte {
			t.Helper()
			n, err := p.ReadFrame(buf)
			if err != nil {
				t.Fatal(err)
			}
			return buf[:n]
		}
		bc := eth(0xff, 1, "hello all")
		p1.WriteFrames([][]byte{bc, {1, 2, 3}}) // the runt is dropped
		if !bytes.Equal(read(p2), bc) || !bytes.Equal(read(p3), bc) {
			t.Fatal("broadcast not flooded")
		}
		uc := eth(1, 2, "to p1")
		p2.WriteFrames([][]byte{uc})
		if !bytes.Equal(read(p1), uc) {
			t.Fatal("unicast not delivered")
		}
		synctest.Wait()
		select {
		case <-readAsync(p3):
			t.Fatal("learned unicast leaked to p3")
		default:
		}
		p3.Close()
		if _, err := p3.ReadFrame(buf); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("ReadFrame after Close: %v", err)
		}
		if err := p3.WriteFrames([][]byte{bc}); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("WriteFrames after Close: %v", err)
		}
	})
}

// readAsync reports a frame arriving on p within the current bubble step.
func readAsync(p *vpnlinktest.Port) <-chan struct{} {
	ch := make(chan struct{})
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 1600)
		if _, err := p.ReadFrame(buf); err == nil {
			close(ch)
		}
		close(done)
	}()
	synctest.Wait()
	p.Close()
	<-done
	return ch
}

// rawClient speaks the handshake by hand.
type rawClient struct {
	tc *tls.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, h *vpnlinktest.Hub) *rawClient {
	conn, err := h.Dial(context.Background(), "tcp", "hub.test:443")
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
	t.Cleanup(func() { conn.Close() })
	return &rawClient{tc: tc, br: bufio.NewReaderSize(tc, 8192)}
}

func (r *rawClient) post(t *testing.T, target, ctype string, body []byte) (*proto.Response, error) {
	t.Helper()
	if _, err := r.tc.Write(proto.AppendRequest(nil, target, "hub.test", ctype, body, time.Now())); err != nil {
		t.Fatal(err)
	}
	return proto.ReadResponse(r.br, 1<<20)
}

func TestSignatureRules(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{})
		r := dialRaw(t, h)
		// Wrong path: 404, connection stays.
		resp, err := r.post(t, "/other", proto.ContentTypeSig, []byte(proto.SignatureBody))
		if err != nil || resp.Status != 404 {
			t.Fatalf("wrong path: %+v %v", resp, err)
		}
		resp, err = r.post(t, proto.TargetConnect, proto.ContentTypeSig, []byte(proto.SignatureBody))
		if err != nil || resp.Status != 200 {
			t.Fatalf("signature: %+v %v", resp, err)
		}
		hello, err := proto.ParsePack(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		random, _ := hello.Data("random")
		build, _ := hello.Int("build")
		if product, _ := hello.Str("hello"); len(random) != 20 || build != 9674 || product == "" {
			t.Fatalf("hello %+v", hello)
		}
		// Auth PACK with a wrong Content-Type: error 3.
		resp, err = r.post(t, proto.TargetVPN, "text/plain", []byte{0, 0, 0, 0})
		if err != nil {
			t.Fatal(err)
		}
		p, err := proto.ParsePack(resp.Body)
		if code, _ := p.Int("error"); err != nil || code != 3 {
			t.Fatalf("error pack %+v %v", p, err)
		}

		// A body of a bad size: 403 and close.
		r = dialRaw(t, h)
		resp, err = r.post(t, proto.TargetConnect, proto.ContentTypeSig, []byte("short"))
		if err != nil || resp.Status != 403 {
			t.Fatalf("short body: %+v %v", resp, err)
		}
		if _, err := r.br.ReadByte(); err != io.EOF {
			t.Fatalf("connection not closed: %v", err)
		}
	})
}

func TestSessionHoldAndListing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHub(t, vpnlinktest.Config{Timeout: 10 * time.Second, Users: []vpnlinktest.User{{Name: "Alice", Password: "secret"}}})
		c, err := vpnlink.Dial(context.Background(), vpnlink.Config{Server: "hub.test:443", Hub: "default",
			User: "alice", Password: "secret", Dial: h.Dial, InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		ss := h.Sessions()
		if len(ss) != 1 || ss[0].Name != "SID-ALICE-1" || ss[0].User != "alice" || !ss[0].BridgeMode || ss[0].Connections != 1 {
			t.Fatalf("sessions %+v", ss)
		}
		c.Close()
		synctest.Wait()
		if ss := h.Sessions(); len(ss) != 1 || ss[0].Connections != 0 {
			t.Fatalf("session not held after the connection closed: %+v", ss)
		}
		time.Sleep(9 * time.Second)
		if len(h.Sessions()) != 1 {
			t.Fatal("session dropped before the timeout")
		}
		time.Sleep(2 * time.Second)
		if ss := h.Sessions(); len(ss) != 0 {
			t.Fatalf("session not expired: %+v", ss)
		}
		att := h.LoginAttempts()
		if len(att) != 1 || att[0].Method != "login" || att[0].User != "alice" || att[0].Code != 0 {
			t.Fatalf("attempts %+v", att)
		}
	})
}

func TestServeLoopback(t *testing.T) {
	h := newHub(t, vpnlinktest.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Serve(ln) }()
	st, err := vpnlink.Check(context.Background(), vpnlink.Config{Server: ln.Addr().String(), Hub: "DEFAULT",
		User: "alice", Password: "secret", CertSHA256: h.CertSHA256()})
	if err != nil || st.SessionName != "SID-ALICE-1" {
		t.Fatalf("Check over loopback: %+v %v", st, err)
	}
	h.Close()
	if err := <-done; err == nil {
		t.Fatal("Serve returned nil after Close")
	}
}
