package vpnlinktest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/acrouter/acrouter/vpnlink/internal/proto"
)

// Server-side limits (ServerDownloadSignature in src/Cedar/Protocol.c,
// MAX_WATERMARK_SIZE in src/Cedar/WaterMark.h).
const (
	waterMarkSize    = 1411
	maxWaterMarkSize = waterMarkSize + 2000
	maxSigRequests   = 19
	connectingTime   = 15 * time.Second
)

// sconn is a connection in the data phase.
type sconn struct {
	raw  net.Conn
	tc   *tls.Conn
	br   *bufio.Reader
	done chan struct{}
	once sync.Once
}

func (sc *sconn) close() {
	sc.once.Do(func() {
		close(sc.done)
		sc.raw.Close()
	})
}

// deadlineConn sets a read deadline before every read once timeout > 0
// (the server drops a socket that is silent for the session timeout).
type deadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	if c.timeout > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	}
	return c.Conn.Read(p)
}

func (h *Hub) serveConn(raw net.Conn) {
	defer h.wg.Done()
	defer func() {
		h.mu.Lock()
		delete(h.conns, raw)
		h.mu.Unlock()
		raw.Close()
	}()
	dc := &deadlineConn{Conn: raw}
	raw.SetDeadline(time.Now().Add(connectingTime))
	tc := tls.Server(dc, h.tlsCfg)
	ctx, cancel := context.WithTimeout(h.ctx, connectingTime)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		h.log.Debug("vpnlinktest: TLS handshake failed", "err", err)
		return
	}
	br := bufio.NewReaderSize(tc, 64<<10)
	random := make([]byte, 20)
	rand.Read(random)
	if !h.signature(tc, br, random) {
		return
	}
	req, err := proto.ReadRequest(br, proto.MaxPackBody)
	if err != nil {
		return
	}
	if req.Method != "POST" || !strings.EqualFold(req.Target, proto.TargetVPN) || req.Proto != "HTTP/1.1" ||
		!strings.EqualFold(req.Header.Get("Content-Type"), proto.ContentTypePack) || len(req.Body) == 0 {
		h.sendError(tc, 3)
		return
	}
	p, err := proto.ParsePack(req.Body)
	if err != nil {
		h.sendError(tc, 3)
		return
	}
	method, _ := p.Str("method")
	var s *session
	var reply *proto.Pack
	switch method {
	case "login":
		s, reply = h.login(p, random)
	case "additional_connect":
		s, reply = h.additional(p)
	default:
		reply = errPack(4)
	}
	sc := &sconn{raw: raw, tc: tc, br: br, done: make(chan struct{})}
	if s != nil {
		// Attach before replying so that frames for the session queue up.
		if !s.addConn(sc) {
			s, reply = nil, errPack(13)
		}
	}
	if s != nil {
		h.mu.Lock()
		if _, ok := h.conns[raw]; ok {
			h.conns[raw] = sc
		}
		h.mu.Unlock()
	}
	if err := h.send(tc, reply); err != nil || s == nil {
		if s != nil {
			s.removeConn(sc)
		}
		return
	}
	h.mu.Lock()
	breakRes := h.breakRes && method == "additional_connect"
	h.mu.Unlock()
	if breakRes {
		s.removeConn(sc)
		return
	}
	raw.SetDeadline(time.Time{})
	dc.timeout = h.cfg.Timeout
	h.dataPhase(s, sc)
}

// signature runs the POST /vpnsvc/connect.cgi loop and sends the hello.
func (h *Hub) signature(tc *tls.Conn, br *bufio.Reader, random []byte) bool {
	for i := 0; i < maxSigRequests; i++ {
		req, err := proto.ReadRequest(br, maxWaterMarkSize)
		if err != nil {
			if strings.Contains(err.Error(), "body of") {
				tc.Write(proto.AppendResponse(nil, 403, "Forbidden", "text/html", []byte("Forbidden")))
			}
			return false
		}
		switch {
		case req.Method != "POST":
			tc.Write(proto.AppendResponse(nil, 501, "Not Implemented", "text/html", []byte("Not Implemented")))
			return false
		case len(req.Body) != len(proto.SignatureBody) && len(req.Body) < waterMarkSize:
			tc.Write(proto.AppendResponse(nil, 403, "Forbidden", "text/html", []byte("Forbidden")))
			return false
		case !strings.EqualFold(req.Target, proto.TargetConnect):
			tc.Write(proto.AppendResponse(nil, 404, "Not Found", "text/html", []byte("Not Found")))
			continue
		case string(req.Body) != proto.SignatureBody:
			// The WaterMark blob is not vendored here; only VPNCONNECT.
			tc.Write(proto.AppendResponse(nil, 403, "Forbidden", "text/html", []byte("Forbidden")))
			continue
		}
		hello := &proto.Pack{}
		hello.AddStr("hello", h.cfg.Product)
		hello.AddInt("version", h.cfg.Version)
		hello.AddInt("build", h.cfg.Build)
		hello.AddData("random", random)
		return h.send(tc, hello) == nil
	}
	return false
}

func errPack(code uint32) *proto.Pack {
	p := &proto.Pack{}
	p.AddInt("error", code)
	p.AddBool("no_save_password", false)
	return p
}

func (h *Hub) sendError(tc *tls.Conn, code uint32) { h.send(tc, errPack(code)) }

func (h *Hub) send(tc *tls.Conn, p *proto.Pack) error {
	pad := make([]byte, mrand.IntN(1000))
	p.AddData("pencore", pad)
	body, err := p.Marshal()
	if err != nil {
		return err
	}
	_, err = tc.Write(proto.AppendResponse(nil, 200, "OK", proto.ContentTypePack, body))
	return err
}

// login authenticates like ServerAccept (the subset a client can see).
func (h *Hub) login(p *proto.Pack, random []byte) (*session, *proto.Pack) {
	user, _ := p.Str("username")
	code, s, reply := h.loginCode(p, user, random)
	h.record(Attempt{Time: time.Now(), Method: "login", User: user, Code: code})
	if code != 0 {
		h.log.Info("vpnlinktest: login refused", "user", user, "code", code)
		return nil, errPack(code)
	}
	return s, reply
}

func (h *Hub) loginCode(p *proto.Pack, user string, random []byte) (uint32, *session, *proto.Pack) {
	hub, ok1 := p.Str("hubname")
	if !ok1 || user == "" {
		return 4, nil, nil
	}
	h.mu.Lock()
	reject := h.reject
	h.mu.Unlock()
	if reject != 0 {
		return reject, nil, nil
	}
	if !strings.EqualFold(hub, h.cfg.HubName) {
		return 8, nil, nil
	}
	u, ok := h.findUser(user)
	authtype, _ := p.Int("authtype")
	switch authtype {
	case 1:
		sp, _ := p.Data("secure_password")
		want := proto.SecurePassword(proto.HashPassword(u.Password, u.Name), random)
		if !ok || u.PlainOnly || len(sp) != 20 || !bytes.Equal(sp, want[:]) {
			return 9, nil, nil
		}
	case 2:
		pw, _ := p.Str("plain_password")
		if !ok || pw != u.Password {
			return 9, nil, nil
		}
	default:
		return 7, nil, nil
	}
	if !p.Bool("use_encrypt") {
		return 4, nil, nil // a cleartext data phase is not simulated
	}
	noBridge, noRouting := u.NoBridge, u.NoRouting
	if p.Bool("require_bridge_routing_mode") {
		if noBridge && noRouting && !u.ClientModeOnly {
			return 108, nil, nil
		}
	} else {
		noBridge, noRouting = true, true
	}
	maxConn, _ := p.Int("max_connection")
	maxConn = min(max(maxConn, 1), 32)

	h.mu.Lock()
	h.nextSID++
	h.nextCID++
	s := &session{
		hub: h, user: strings.ToLower(u.Name),
		name:     fmt.Sprintf("SID-%s-%d", strings.ToUpper(u.Name), h.nextSID),
		noBridge: noBridge, noRouting: noRouting, maxConn: int(maxConn),
		conns: map[*sconn]struct{}{},
		out:   make([]byte, 4, 64<<10), spare: make([]byte, 4, 64<<10),
		kick: make(chan struct{}, 1),
	}
	rand.Read(s.key[:])
	h.sessions[string(s.key[:])] = s
	cid := h.nextCID
	h.mu.Unlock()
	h.sw.add(s)

	w := &proto.Pack{}
	w.AddStr("session_name", s.name)
	w.AddStr("connection_name", fmt.Sprintf("CID-%d", cid))
	w.AddData("session_key", s.key[:])
	var k32 [4]byte
	rand.Read(k32[:])
	w.AddInt("session_key_32", binary.BigEndian.Uint32(k32[:]))
	w.AddInt("max_connection", maxConn)
	w.AddBool("use_encrypt", true)
	w.AddBool("use_compress", false)
	w.AddBool("half_connection", false)
	w.AddInt("timeout", uint32(h.cfg.Timeout/time.Millisecond))
	w.AddBool("qos", false)
	w.AddBool("is_azure_session", false)
	w.AddInt("vlan_id", 0)
	w.AddBool("policy:Access", true)
	w.AddBool("policy:NoBridge", noBridge)
	w.AddBool("policy:NoRouting", noRouting)
	w.AddInt("policy:MaxConnection", 32)
	w.AddInt("policy:TimeOut", uint32(h.cfg.Timeout/time.Second))
	w.AddBool("policy:Ver3", true)
	w.AddData("Msg", nil)
	return 0, s, w
}

// additional handles additional_connect (resume).
func (h *Hub) additional(p *proto.Pack) (*session, *proto.Pack) {
	key, _ := p.Data("session_key")
	code, s := h.additionalCode(key)
	user := ""
	if s != nil {
		user = s.user
	}
	h.record(Attempt{Time: time.Now(), Method: "additional_connect", User: user, Code: code})
	if code != 0 {
		return nil, errPack(code)
	}
	r := &proto.Pack{}
	r.AddInt("error", 0)
	r.AddInt("direction", 0)
	return s, r
}

func (h *Hub) additionalCode(key []byte) (uint32, *session) {
	if len(key) != 20 {
		return 4, nil
	}
	h.mu.Lock()
	reject := h.reject
	s := h.sessions[string(key)]
	h.mu.Unlock()
	if reject != 0 {
		return reject, nil
	}
	if s == nil {
		return 13, nil
	}
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	if n > s.maxConn { // strictly greater, like the server
		return 15, s
	}
	s.mu.Lock()
	s.resumes++
	s.mu.Unlock()
	return 0, s
}

func (h *Hub) removeSession(s *session) {
	h.mu.Lock()
	if h.sessions[string(s.key[:])] == s {
		delete(h.sessions, string(s.key[:]))
	}
	h.mu.Unlock()
	h.sw.remove(s)
	s.mu.Lock()
	s.gone = true
	if s.expire != nil {
		s.expire.Stop()
	}
	conns := make([]*sconn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		sc.close()
	}
}
