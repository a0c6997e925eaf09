package hubdial

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"
)

// fakeServer is the common part of the test proxies: a loopback listener,
// tracked connections and goroutines, DropAll, and a cleanup that waits.
type fakeServer struct {
	t      testing.TB
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
	accept atomic.Int64 // connections accepted
	tunnel atomic.Int64 // tunnels to the target made
}

func newFakeServer(t testing.TB, handle func(net.Conn)) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{t: t, ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accept.Add(1)
			s.track(c)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer s.untrack(c)
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.DropAll()
		s.wg.Wait()
	})
	return s
}

func (s *fakeServer) Addr() string { return s.ln.Addr().String() }

func (s *fakeServer) track(c net.Conn) {
	s.mu.Lock()
	s.conns[c] = true
	s.mu.Unlock()
}

func (s *fakeServer) untrack(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// DropAll closes every connection the server has (clients and targets).
func (s *fakeServer) DropAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
	return len(s.conns)
}

// splice dials target and copies both ways until either side ends; r is
// what to read from the client (it may hold buffered bytes).
func (s *fakeServer) splice(client net.Conn, r io.Reader, target net.Conn) {
	s.tunnel.Add(1)
	s.track(target)
	defer s.untrack(target)
	done := make(chan struct{})
	go func() {
		io.Copy(target, r)
		target.Close()
		close(done)
	}()
	io.Copy(client, target)
	client.Close()
	<-done
}

// ---------------------------------------------------------------- HTTP --

type httpProxy struct {
	*fakeServer
	user, pass string // "" = no authentication
	status     int    // answer this status instead of connecting (0 = connect)
	raw        string // answer these bytes instead (if set)
	lastAuth   atomic.Value
}

func newHTTPProxy(t testing.TB, user, pass string) *httpProxy {
	p := &httpProxy{user: user, pass: pass}
	p.fakeServer = newFakeServer(t, p.handle)
	return p
}

func (p *httpProxy) handle(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if p.raw != "" {
		io.WriteString(c, p.raw)
		return
	}
	if req.Method != "CONNECT" {
		io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
		return
	}
	if p.user != "" {
		got := req.Header.Get("Proxy-Authorization")
		p.lastAuth.Store(got)
		want := "Basic " + base64.StdEncoding.EncodeToString([]byte(p.user+":"+p.pass))
		if got != want {
			io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"fake\"\r\nContent-Length: 0\r\n\r\n")
			return
		}
	}
	if p.status != 0 {
		fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n", p.status, http.StatusText(p.status))
		return
	}
	target, err := net.Dial("tcp", req.Host)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	io.WriteString(c, "HTTP/1.0 200 Connection established\r\nProxy-Agent: fake\r\n\r\n")
	p.splice(c, br, target)
}

// -------------------------------------------------------------- SOCKS5 --

type socksProxy struct {
	*fakeServer
	user, pass string // "" = no authentication
	reply      byte   // answer this REP instead of connecting (0 = connect)
	lastTarget atomic.Value
}

func newSOCKSProxy(t testing.TB, user, pass string) *socksProxy {
	p := &socksProxy{user: user, pass: pass}
	p.fakeServer = newFakeServer(t, p.handle)
	return p
}

func (p *socksProxy) handle(c net.Conn) {
	var h [2]byte
	if _, err := io.ReadFull(c, h[:]); err != nil || h[0] != 5 {
		return
	}
	methods := make([]byte, h[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return
	}
	want := byte(0)
	if p.user != "" {
		want = 2
	}
	if !strings.Contains(string(methods), string([]byte{want})) {
		c.Write([]byte{5, 0xff})
		return
	}
	c.Write([]byte{5, want})
	if want == 2 {
		var v [2]byte
		if _, err := io.ReadFull(c, v[:]); err != nil || v[0] != 1 {
			return
		}
		u := make([]byte, v[1])
		io.ReadFull(c, u)
		var pl [1]byte
		io.ReadFull(c, pl[:])
		pw := make([]byte, pl[0])
		if _, err := io.ReadFull(c, pw); err != nil {
			return
		}
		if string(u) != p.user || string(pw) != p.pass {
			c.Write([]byte{1, 1})
			return
		}
		c.Write([]byte{1, 0})
	}
	var r [4]byte
	if _, err := io.ReadFull(c, r[:]); err != nil || r[0] != 5 || r[1] != 1 {
		return
	}
	var host string
	switch r[3] {
	case 1:
		var a [4]byte
		io.ReadFull(c, a[:])
		host = net.IP(a[:]).String()
	case 4:
		var a [16]byte
		io.ReadFull(c, a[:])
		host = net.IP(a[:]).String()
	case 3:
		var n [1]byte
		io.ReadFull(c, n[:])
		b := make([]byte, n[0])
		io.ReadFull(c, b)
		host = string(b)
	default:
		c.Write([]byte{5, 8, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	var pb [2]byte
	if _, err := io.ReadFull(c, pb[:]); err != nil {
		return
	}
	addr := net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(pb[:]))))
	p.lastTarget.Store(addr)
	if p.reply != 0 {
		c.Write([]byte{5, p.reply, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	target, err := net.Dial("tcp", addr)
	if err != nil {
		c.Write([]byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
		return
	}
	// bound address as a domain name, to exercise that branch of the client
	c.Write(append([]byte{5, 0, 0, 3, 9}, "fake.test\x12\x34"...))
	p.splice(c, c, target)
}

// ----------------------------------------------------------------- SSH --

type sshServer struct {
	*fakeServer
	hostKey       ssh.Signer
	user          string
	pass          string
	authorized    ssh.PublicKey
	noForward     atomic.Bool // reject direct-tcpip with Prohibited
	deafKeepAlive atomic.Bool // leave keep-alive requests unanswered
	sink          atomic.Bool // accept direct-tcpip but never read from it
	handshakes    atomic.Int64
	lastTarget    atomic.Value
	sshConnsMu    sync.Mutex
	sshConns      []*ssh.ServerConn
	keepalives    atomic.Int64
	sinkStarted   chan struct{}
}

func newSSHServer(t testing.TB, user, pass string, authorized ssh.PublicKey) *sshServer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hk, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	s := &sshServer{hostKey: hk, user: user, pass: pass, authorized: authorized, sinkStarted: make(chan struct{}, 16)}
	s.fakeServer = newFakeServer(t, s.handle)
	return s
}

func (s *sshServer) config() *ssh.ServerConfig {
	cfg := &ssh.ServerConfig{
		PasswordCallback: func(m ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if s.pass != "" && m.User() == s.user && string(pw) == s.pass {
				return nil, nil
			}
			return nil, fmt.Errorf("wrong password")
		},
		PublicKeyCallback: func(m ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if s.authorized != nil && m.User() == s.user && string(k.Marshal()) == string(s.authorized.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown key")
		},
	}
	cfg.AddHostKey(s.hostKey)
	return cfg
}

func (s *sshServer) handle(c net.Conn) {
	sc, chans, reqs, err := ssh.NewServerConn(c, s.config())
	if err != nil {
		return
	}
	s.handshakes.Add(1)
	s.sshConnsMu.Lock()
	s.sshConns = append(s.sshConns, sc)
	s.sshConnsMu.Unlock()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for r := range reqs {
			if r.Type == "keepalive@openssh.com" {
				s.keepalives.Add(1)
				if s.deafKeepAlive.Load() {
					continue // never answered: a black-holed server
				}
			}
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}()
	for nc := range chans {
		if nc.ChannelType() != "direct-tcpip" {
			nc.Reject(ssh.UnknownChannelType, "only direct-tcpip")
			continue
		}
		var p struct {
			Host     string
			Port     uint32
			OrigHost string
			OrigPort uint32
		}
		if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
			nc.Reject(ssh.ConnectionFailed, "bad payload")
			continue
		}
		if s.noForward.Load() {
			nc.Reject(ssh.Prohibited, "administratively prohibited: port forwarding is disabled")
			continue
		}
		addr := net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port)))
		s.lastTarget.Store(addr)
		if s.sink.Load() {
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ssh.DiscardRequests(creqs)
			}()
			s.sinkStarted <- struct{}{}
			_ = ch // never read: the client's window runs out; closed with the connection
			continue
		}
		target, err := net.Dial("tcp", addr)
		if err != nil {
			nc.Reject(ssh.ConnectionFailed, err.Error())
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			target.Close()
			continue
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			ssh.DiscardRequests(creqs)
		}()
		go func() {
			defer wg.Done()
			s.splice(chanAsConn{ch, c}, ch, target)
		}()
	}
	sc.Close()
	wg.Wait()
}

// KillSSH closes every SSH connection (the TCP under it).
func (s *sshServer) KillSSH() int {
	s.sshConnsMu.Lock()
	defer s.sshConnsMu.Unlock()
	n := 0
	for _, sc := range s.sshConns {
		if sc.Close() == nil {
			n++
		}
	}
	s.sshConns = nil
	return n
}

// chanAsConn lets splice write to and close an SSH channel.
type chanAsConn struct {
	ssh.Channel
	net.Conn
}

func (c chanAsConn) Read(p []byte) (int, error)  { return c.Channel.Read(p) }
func (c chanAsConn) Write(p []byte) (int, error) { return c.Channel.Write(p) }
func (c chanAsConn) Close() error                { return c.Channel.Close() }

// ----------------------------------------------------------- helpers --

// echoServer is a TCP echo server on loopback (a stand-in target).
func echoServer(t testing.TB) *fakeServer {
	var s *fakeServer
	s = newFakeServer(t, func(c net.Conn) { io.Copy(c, c) })
	return s
}

func newTestKey(t testing.TB) ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newRawKey(t testing.TB) (ssh.Signer, ed25519.PrivateKey) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, priv
}

func pemEncode(b *pem.Block) []byte { return pem.EncodeToMemory(b) }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20e9)
	t.Cleanup(cancel)
	return ctx
}
