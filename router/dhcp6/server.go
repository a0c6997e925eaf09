// Package dhcp6 is acrouter's DHCPv6 server for hub clients (RFC 8415).
//
// Stateless service (always on): Information-Request is answered with the
// DNS servers and search domains, so clients whose Router Advertisement has
// the O flag learn the router's DNS redirector even without RDNSS support.
// Stateful service (Config.Pool set): Solicit, Request, Renew, Rebind,
// Release, Decline and Confirm manage IA_NA addresses. A client's address
// is derived from a hash of its DUID and IAID, so it keeps its address
// across router restarts without a state file (collisions probe onwards).
package dhcp6

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/insomniacslk/dhcp/rfc1035label"
)

// Defaults.
const (
	DefaultLeaseTime          = time.Hour
	DefaultInformationRefresh = time.Hour // RFC 8415 §21.23 default is a day; DNS may change sooner
	DefaultMaxBindings        = 4096
	declineHold               = 10 * time.Minute // a declined address stays unused this long
	maxMessage                = 64 << 10
)

// Config configures a Server.
type Config struct {
	// ServerMAC is the router's MAC: the server identifier is its DUID-LL
	// (RFC 8415 §11.4). Required.
	ServerMAC net.HardwareAddr
	// DNS servers and search Domains for every reply that carries
	// configuration (options 23 and 24, RFC 3646).
	DNS     []netip.Addr
	Domains []string
	// Pool enables stateful address assignment from this prefix (at most
	// 2^16 addresses are used, from its start), e.g. fd12:3456:789a::1:0/112.
	// Exclude lists addresses never handed out (the router's own).
	// Zero Pool: stateless only; Solicit is ignored.
	Pool    netip.Prefix
	Exclude []netip.Addr
	// LeaseTime is the valid lifetime of an address (preferred is 5/8 of
	// it, T1 1/2, T2 4/5). Default DefaultLeaseTime.
	LeaseTime time.Duration
	// InformationRefresh is the refresh time sent with stateless replies.
	InformationRefresh time.Duration
	// MaxBindings caps the binding table; requests for a new binding when
	// it is full get NoAddrsAvail. Default DefaultMaxBindings.
	MaxBindings int
	Logger      *slog.Logger
	// now is the clock (tests).
	now func() time.Time
}

// Lease is one stateful binding.
type Lease struct {
	Addr    netip.Addr
	DUID    string // hex
	IAID    uint32
	Expires time.Time
}

// Stats are cumulative counters.
type Stats struct {
	Received, Malformed, Ignored             uint64
	InformationReplies, Advertises, Replies  uint64
	NoAddrsAvail, NoBinding, NotOnLink       uint64
	Releases, Declines, Bindings, SendErrors uint64
}

type bindingKey struct {
	duid string
	iaid [4]byte
}

type binding struct {
	addr    netip.Addr
	expires time.Time
}

// Server answers DHCPv6 on a PacketConn (netstack.Stack.ListenDHCPv6).
type Server struct {
	cfg    Config
	log    *slog.Logger
	conn   net.PacketConn
	sid    dhcpv6.DUID
	sidRaw []byte
	done   chan struct{}

	mu       sync.Mutex
	bindings map[bindingKey]*binding // guarded by mu
	byAddr   map[netip.Addr]bindingKey
	declined map[netip.Addr]time.Time

	received, malformed, ignored, info, adv, replies atomic.Uint64
	noAddrs, noBinding, notOnLink, releases          atomic.Uint64
	declines, sendErrs                               atomic.Uint64
}

// New starts a server reading conn. Close stops it and closes conn.
func New(conn net.PacketConn, cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	s.conn = conn
	go s.loop()
	return s, nil
}

func newServer(cfg Config) (*Server, error) {
	if len(cfg.ServerMAC) != 6 {
		return nil, errors.New("dhcp6: ServerMAC must be a 6-byte MAC")
	}
	for _, a := range cfg.DNS {
		if !a.Is6() || a.Is4In6() {
			return nil, fmt.Errorf("dhcp6: DNS server %v is not an IPv6 address", a)
		}
	}
	if cfg.Pool.IsValid() {
		if !cfg.Pool.Addr().Is6() || cfg.Pool.Addr().Is4In6() || cfg.Pool.Bits() > 124 {
			return nil, fmt.Errorf("dhcp6: pool %v is not an IPv6 prefix of length ≤ 124", cfg.Pool)
		}
		cfg.Pool = cfg.Pool.Masked()
	}
	if cfg.LeaseTime == 0 {
		cfg.LeaseTime = DefaultLeaseTime
	}
	if cfg.LeaseTime < time.Minute {
		return nil, fmt.Errorf("dhcp6: lease time %v is below one minute", cfg.LeaseTime)
	}
	if cfg.InformationRefresh == 0 {
		cfg.InformationRefresh = DefaultInformationRefresh
	}
	if cfg.InformationRefresh < 10*time.Minute { // IRT_MINIMUM, RFC 8415 §7.6
		cfg.InformationRefresh = 10 * time.Minute
	}
	if cfg.MaxBindings == 0 {
		cfg.MaxBindings = DefaultMaxBindings
	}
	if cfg.MaxBindings < 1 {
		return nil, fmt.Errorf("dhcp6: MaxBindings %d must be positive", cfg.MaxBindings)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	sid := &dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: slices.Clone(cfg.ServerMAC)}
	return &Server{
		cfg: cfg, log: cfg.Logger, sid: sid, sidRaw: sid.ToBytes(), done: make(chan struct{}),
		bindings: make(map[bindingKey]*binding), byAddr: make(map[netip.Addr]bindingKey),
		declined: make(map[netip.Addr]time.Time),
	}, nil
}

// Close stops the server, closes its socket and waits for its goroutine.
func (s *Server) Close() error {
	err := s.conn.Close()
	<-s.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (s *Server) loop() {
	defer close(s.done)
	buf := make([]byte, maxMessage)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		out := s.handle(buf[:n])
		if out == nil {
			continue
		}
		if _, err := s.conn.WriteTo(out, from); err != nil {
			s.sendErrs.Add(1)
			s.log.Debug("dhcp6: reply not sent", "to", from.String(), "err", err)
		}
	}
}

// handle decodes one client message and returns the reply, or nil.
func (s *Server) handle(b []byte) []byte {
	s.received.Add(1)
	d, err := dhcpv6.FromBytes(b)
	if err != nil {
		s.malformed.Add(1)
		return nil
	}
	msg, ok := d.(*dhcpv6.Message)
	if !ok { // relay messages: we serve the link directly
		s.ignored.Add(1)
		return nil
	}
	rep := s.reply(msg)
	if rep == nil {
		return nil
	}
	return rep.ToBytes()
}

// reply builds the answer to msg following RFC 8415 §18.3, or nil.
func (s *Server) reply(msg *dhcpv6.Message) *dhcpv6.Message {
	opts := msg.Options
	cid := opts.ClientID()
	sid := opts.GetOne(dhcpv6.OptionServerID)
	ourSID := sid != nil && slices.Equal(sid.ToBytes(), dhcpv6.OptServerID(s.sid).ToBytes())
	switch msg.MessageType {
	case dhcpv6.MessageTypeInformationRequest:
		// §16.12: no IA options; a server ID, if any, must be ours.
		if sid != nil && !ourSID || len(opts.IANA()) > 0 {
			s.ignored.Add(1)
			return nil
		}
		rep := s.newReply(dhcpv6.MessageTypeReply, msg, cid)
		rep.AddOption(dhcpv6.OptInformationRefreshTime(s.cfg.InformationRefresh))
		s.info.Add(1)
		return rep
	case dhcpv6.MessageTypeSolicit:
		// §16.2: client ID required, no server ID.
		if !s.cfg.Pool.IsValid() || cid == nil || sid != nil {
			s.ignored.Add(1)
			return nil
		}
		rapid := opts.GetOne(dhcpv6.OptionRapidCommit) != nil
		typ := dhcpv6.MessageTypeAdvertise
		if rapid {
			typ = dhcpv6.MessageTypeReply
		}
		rep := s.newReply(typ, msg, cid)
		if rapid {
			rep.AddOption(&dhcpv6.OptionGeneric{OptionCode: dhcpv6.OptionRapidCommit})
		}
		s.addIAs(rep, msg, cid, rapid, false)
		if rapid {
			s.replies.Add(1)
		} else {
			s.adv.Add(1)
		}
		return rep
	case dhcpv6.MessageTypeRequest, dhcpv6.MessageTypeRenew:
		// §16.4, §16.6: client ID and our server ID required.
		if !s.cfg.Pool.IsValid() || cid == nil || !ourSID {
			s.ignored.Add(1)
			return nil
		}
		rep := s.newReply(dhcpv6.MessageTypeReply, msg, cid)
		s.addIAs(rep, msg, cid, true, msg.MessageType == dhcpv6.MessageTypeRenew)
		s.replies.Add(1)
		return rep
	case dhcpv6.MessageTypeRebind:
		if !s.cfg.Pool.IsValid() || cid == nil || sid != nil {
			s.ignored.Add(1)
			return nil
		}
		rep := s.newReply(dhcpv6.MessageTypeReply, msg, cid)
		s.addIAs(rep, msg, cid, true, true)
		s.replies.Add(1)
		return rep
	case dhcpv6.MessageTypeConfirm:
		// §18.3.3: Success if every address is on the link, else NotOnLink.
		if !s.cfg.Pool.IsValid() || cid == nil || sid != nil {
			s.ignored.Add(1)
			return nil
		}
		code, text := iana.StatusSuccess, "all addresses on link"
		for _, ia := range opts.IANA() {
			for _, a := range ia.Options.Addresses() {
				if ip, ok := netip.AddrFromSlice(a.IPv6Addr); !ok || !s.cfg.Pool.Contains(ip) {
					code, text = iana.StatusNotOnLink, "address not on this link"
				}
			}
		}
		if code == iana.StatusNotOnLink {
			s.notOnLink.Add(1)
		}
		rep := s.newReply(dhcpv6.MessageTypeReply, msg, cid)
		rep.AddOption(&dhcpv6.OptStatusCode{StatusCode: code, StatusMessage: text})
		s.replies.Add(1)
		return rep
	case dhcpv6.MessageTypeRelease, dhcpv6.MessageTypeDecline:
		if !s.cfg.Pool.IsValid() || cid == nil || !ourSID {
			s.ignored.Add(1)
			return nil
		}
		decline := msg.MessageType == dhcpv6.MessageTypeDecline
		s.mu.Lock()
		for _, ia := range opts.IANA() {
			k := bindingKey{string(cid.ToBytes()), ia.IaId}
			if b := s.bindings[k]; b != nil {
				delete(s.bindings, k)
				delete(s.byAddr, b.addr)
				if decline {
					s.declined[b.addr] = s.cfg.now().Add(declineHold)
				}
			}
		}
		s.mu.Unlock()
		if decline {
			s.declines.Add(1)
		} else {
			s.releases.Add(1)
		}
		rep := s.newReply(dhcpv6.MessageTypeReply, msg, cid)
		rep.AddOption(&dhcpv6.OptStatusCode{StatusCode: iana.StatusSuccess})
		s.replies.Add(1)
		return rep
	}
	s.ignored.Add(1)
	return nil
}

// newReply starts a reply of type typ to msg with the server and client
// identifiers and the configuration options.
func (s *Server) newReply(typ dhcpv6.MessageType, msg *dhcpv6.Message, cid dhcpv6.DUID) *dhcpv6.Message {
	rep := &dhcpv6.Message{MessageType: typ, TransactionID: msg.TransactionID}
	if cid != nil {
		rep.AddOption(dhcpv6.OptClientID(cid))
	}
	rep.AddOption(dhcpv6.OptServerID(s.sid))
	if len(s.cfg.DNS) > 0 {
		ips := make([]net.IP, len(s.cfg.DNS))
		for i, a := range s.cfg.DNS {
			ips[i] = a.AsSlice()
		}
		rep.AddOption(dhcpv6.OptDNS(ips...))
	}
	if len(s.cfg.Domains) > 0 {
		rep.AddOption(dhcpv6.OptDomainSearchList(&rfc1035label.Labels{Labels: s.cfg.Domains}))
	}
	return rep
}

// addIAs answers each IA_NA of msg: the client's address with lifetimes,
// or a status. commit binds the address; renew requires an existing binding
// (NoBinding otherwise, RFC 8415 §18.3.4).
func (s *Server) addIAs(rep, msg *dhcpv6.Message, cid dhcpv6.DUID, commit, renew bool) {
	lease := s.cfg.LeaseTime
	for _, ia := range msg.Options.IANA() {
		k := bindingKey{string(cid.ToBytes()), ia.IaId}
		out := &dhcpv6.OptIANA{IaId: ia.IaId, T1: lease / 2, T2: lease * 4 / 5}
		addr, status := s.assign(k, commit, renew)
		switch status {
		case iana.StatusSuccess:
			out.Options.Add(&dhcpv6.OptIAAddress{IPv6Addr: addr.AsSlice(), PreferredLifetime: lease * 5 / 8, ValidLifetime: lease})
		case iana.StatusNoBinding:
			s.noBinding.Add(1)
			out.T1, out.T2 = 0, 0
			out.Options.Add(&dhcpv6.OptStatusCode{StatusCode: status, StatusMessage: "no binding for this IA"})
		default:
			s.noAddrs.Add(1)
			out.T1, out.T2 = 0, 0
			out.Options.Add(&dhcpv6.OptStatusCode{StatusCode: iana.StatusNoAddrsAvail, StatusMessage: "no addresses available"})
		}
		rep.AddOption(out)
	}
}

// assign finds (and, with commit, binds) the address of k.
func (s *Server) assign(k bindingKey, commit, renew bool) (netip.Addr, iana.StatusCode) {
	now := s.cfg.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.bindings[k]; b != nil {
		if commit {
			b.expires = now.Add(s.cfg.LeaseTime)
		}
		return b.addr, iana.StatusSuccess
	}
	if renew {
		return netip.Addr{}, iana.StatusNoBinding
	}
	s.expireLocked(now)
	if len(s.bindings) >= s.cfg.MaxBindings {
		return netip.Addr{}, iana.StatusNoAddrsAvail
	}
	addr, ok := s.pickLocked(k, now)
	if !ok {
		return netip.Addr{}, iana.StatusNoAddrsAvail
	}
	if commit {
		s.bindings[k] = &binding{addr: addr, expires: now.Add(s.cfg.LeaseTime)}
		s.byAddr[addr] = k
	}
	return addr, iana.StatusSuccess
}

// pickLocked returns the first free address at or after the hash of k.
func (s *Server) pickLocked(k bindingKey, now time.Time) (netip.Addr, bool) {
	bits := min(128-s.cfg.Pool.Bits(), 16)
	size := uint64(1) << bits
	h := sha256.Sum256(append([]byte(k.duid), k.iaid[:]...))
	start := binary.BigEndian.Uint64(h[:8]) % size
	base := s.cfg.Pool.Addr().As16()
	for i := uint64(0); i < size; i++ {
		off := (start + i) % size
		a := base
		binary.BigEndian.PutUint16(a[14:], binary.BigEndian.Uint16(a[14:])|uint16(off))
		addr := netip.AddrFrom16(a)
		if off == 0 || slices.Contains(s.cfg.Exclude, addr) {
			continue // the subnet-router anycast address, or excluded
		}
		if _, used := s.byAddr[addr]; used {
			continue
		}
		if t, ok := s.declined[addr]; ok && now.Before(t) {
			continue
		}
		return addr, true
	}
	return netip.Addr{}, false
}

func (s *Server) expireLocked(now time.Time) {
	for k, b := range s.bindings {
		if now.After(b.expires) {
			delete(s.bindings, k)
			delete(s.byAddr, b.addr)
		}
	}
	for a, t := range s.declined {
		if now.After(t) {
			delete(s.declined, a)
		}
	}
}

// Leases returns the current bindings, sorted by address.
func (s *Server) Leases() []Lease {
	now := s.cfg.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Lease, 0, len(s.bindings))
	for k, b := range s.bindings {
		if now.After(b.expires) {
			continue
		}
		out = append(out, Lease{Addr: b.addr, DUID: fmt.Sprintf("%x", k.duid), IAID: binary.BigEndian.Uint32(k.iaid[:]), Expires: b.expires})
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.Addr.Compare(b.Addr) })
	return out
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.bindings)
	s.mu.Unlock()
	return Stats{
		Received: s.received.Load(), Malformed: s.malformed.Load(), Ignored: s.ignored.Load(),
		InformationReplies: s.info.Load(), Advertises: s.adv.Load(), Replies: s.replies.Load(),
		NoAddrsAvail: s.noAddrs.Load(), NoBinding: s.noBinding.Load(), NotOnLink: s.notOnLink.Load(),
		Releases: s.releases.Load(), Declines: s.declines.Load(), Bindings: uint64(n), SendErrors: s.sendErrs.Load(),
	}
}
