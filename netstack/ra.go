package netstack

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Router Advertisement timing and lifetimes (RFC 4861 §6.2.1 defaults and
// §10 constants; RFC 8106 §5.1 for the DNS options).
const (
	raMaxInterval      = 600 * time.Second // MaxRtrAdvInterval
	raMinInterval      = 200 * time.Second // MinRtrAdvInterval: 0.33 × Max
	raInitialCount     = 3                 // MAX_INITIAL_RTR_ADVERTISEMENTS
	raInitialInterval  = 4 * time.Second   // ≤ MAX_INITIAL_RTR_ADVERT_INTERVAL (16 s)
	raRouterLifetime   = 1800              // seconds: 3 × MaxRtrAdvInterval
	raPrefixValid      = 86400             // seconds
	raPrefixPreferred  = 14400             // seconds
	raDNSLifetime      = 1200              // seconds: Max ≤ lifetime ≤ 2 × Max (RFC 8106 §5.1)
	raCurHopLimit      = 64
	raSolicitedPerSec  = 10 // solicited RAs per second (token bucket)
	raSolicitedBurst   = 20
	raSolicitQueue     = 64
	ndpOptSourceLLA    = 1
	ndpOptPrefixInfo   = 3
	ndpOptMTU          = 5
	ndpOptRDNSS        = 25
	ndpOptDNSSL        = 31
	raFlagManaged      = 0x80
	raFlagOtherConfig  = 0x40
	prefixFlagOnLink   = 0x80
	prefixFlagAutonomy = 0x40
)

// RAConfig configures the Router Advertisements the stack sends when
// Config.Addr6 is set: periodically to all nodes (three at start, then every
// 200–600 s) and to each client that sends a Router Solicitation.
type RAConfig struct {
	// DefaultRouter advertises the router as the clients' IPv6 default
	// router (router lifetime 1800 s). False advertises a lifetime of 0:
	// clients take the prefix and the DNS servers but send no off-link
	// IPv6 traffic to the router.
	DefaultRouter bool
	// Managed sets the M flag (addresses from stateful DHCPv6) and clears
	// the prefix's autonomous flag, so clients take their address from
	// DHCPv6 only (RFC 4861 §4.2, §4.6.2).
	Managed bool
	// OtherConfig sets the O flag: other configuration (DNS) is available
	// from stateless DHCPv6.
	OtherConfig bool
	// RDNSS lists recursive DNS servers (RFC 8106 option 25); at most 8.
	RDNSS []netip.Addr
	// DNSSL lists DNS search domains (RFC 8106 option 31).
	DNSSL []string
}

// raSender owns the advertisement goroutine.
type raSender struct {
	st      *Stack
	solicit chan raTarget
	stop    chan struct{}
	done    chan struct{}

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// raTarget is where a solicited advertisement goes.
type raTarget struct {
	mac tcpip.LinkAddress
	ip  tcpip.Address // the solicitor's address; unspecified: all nodes
}

func (st *Stack) startRA() {
	r := &raSender{st: st, solicit: make(chan raTarget, raSolicitQueue), stop: make(chan struct{}), done: make(chan struct{}), tokens: raSolicitedBurst, last: time.Now()}
	st.ra = r
	st.ep.onRS = r.onSolicit
	go r.loop()
}

// close stops the goroutine and waits for it.
func (r *raSender) close() {
	close(r.stop)
	<-r.done
}

// onSolicit is called on the frame-reading path for every valid Router
// Solicitation; it never blocks. Solicitations over the rate or the queue
// are dropped (the client retries, RFC 4861 §6.3.7).
func (r *raSender) onSolicit(mac tcpip.LinkAddress, src tcpip.Address) {
	r.mu.Lock()
	now := time.Now()
	r.tokens = min(raSolicitedBurst, r.tokens+now.Sub(r.last).Seconds()*raSolicitedPerSec)
	r.last = now
	ok := r.tokens >= 1
	if ok {
		r.tokens--
	}
	r.mu.Unlock()
	if !ok {
		r.st.lctr.raLimited.Add(1)
		return
	}
	select {
	case r.solicit <- raTarget{mac: mac, ip: src}:
	default:
		r.st.lctr.raLimited.Add(1)
	}
}

func (r *raSender) loop() {
	defer close(r.done)
	t := time.NewTimer(0)
	defer t.Stop()
	sent := 0
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.send(raTarget{})
			sent++
			next := raInitialInterval
			if sent >= raInitialCount {
				next = raMinInterval + rand.N(raMaxInterval-raMinInterval)
			}
			t.Reset(next)
		case to := <-r.solicit:
			// RFC 7772 §5.1: answer a solicitation with a unicast RA
			// when the solicitor has an address, sparing every other
			// (possibly sleeping) host a multicast.
			r.send(to)
		}
	}
}

// send writes one advertisement: to all nodes when to.ip is unspecified (or
// zero), else to the solicitor.
func (r *raSender) send(to raTarget) {
	st := r.st
	dst, dstMAC := header.IPv6AllNodesMulticastAddress, header.EthernetAddressFromMulticastIPv6Address(header.IPv6AllNodesMulticastAddress)
	if to.ip.Len() == 16 && !to.ip.Unspecified() {
		dst, dstMAC = to.ip, to.mac
	}
	msg := buildRA(st.mac, st.cfg.Addr6, int(st.ep.MTU()), st.cfg.RA)
	setICMPv6Checksum(msg, st.v6.ll, dst)
	if err := st.writeIPv6(dstMAC, st.v6.ll, dst, header.ICMPv6ProtocolNumber, 255, msg); err != nil {
		st.log.Debug("netstack: router advertisement not sent", "err", err)
		return
	}
	st.lctr.raSent.Add(1)
}

// buildRA encodes a Router Advertisement message (RFC 4861 §4.2) with the
// source link-layer address, MTU, prefix information and, when configured,
// RDNSS and DNSSL options (RFC 8106 §5). The checksum is left zero.
func buildRA(mac tcpip.LinkAddress, pfx netip.Prefix, mtu int, c RAConfig) []byte {
	m := make([]byte, 16, 128)
	m[0] = icmp6RouterAdvert
	m[4] = raCurHopLimit
	if c.Managed {
		m[5] |= raFlagManaged
	}
	if c.OtherConfig || c.Managed {
		m[5] |= raFlagOtherConfig
	}
	if c.DefaultRouter {
		binary.BigEndian.PutUint16(m[6:], raRouterLifetime)
	}
	// Reachable time and retrans timer 0: unspecified by this router.

	m = append(m, ndpOptSourceLLA, 1)
	m = append(m, mac...)

	m = append(m, ndpOptMTU, 1, 0, 0)
	m = binary.BigEndian.AppendUint32(m, uint32(mtu))

	flags := byte(prefixFlagOnLink)
	if !c.Managed {
		flags |= prefixFlagAutonomy
	}
	m = append(m, ndpOptPrefixInfo, 4, byte(pfx.Bits()), flags)
	m = binary.BigEndian.AppendUint32(m, raPrefixValid)
	m = binary.BigEndian.AppendUint32(m, raPrefixPreferred)
	m = append(m, 0, 0, 0, 0)
	p16 := pfx.Masked().Addr().As16()
	m = append(m, p16[:]...)

	if n := min(len(c.RDNSS), 8); n > 0 {
		m = append(m, ndpOptRDNSS, byte(1+2*n), 0, 0)
		m = binary.BigEndian.AppendUint32(m, raDNSLifetime)
		for _, a := range c.RDNSS[:n] {
			b := a.As16()
			m = append(m, b[:]...)
		}
	}
	if d := encodeDomains(c.DNSSL); len(d) > 0 {
		// Option header (8 bytes) plus the names, padded to 8 bytes.
		n := (8 + len(d) + 7) / 8
		if n <= 255 {
			m = append(m, ndpOptDNSSL, byte(n), 0, 0)
			m = binary.BigEndian.AppendUint32(m, raDNSLifetime)
			m = append(m, d...)
			m = append(m, make([]byte, n*8-8-len(d))...)
		}
	}
	return m
}

// encodeDomains encodes domain names in DNS wire format (RFC 1035 §3.1),
// skipping names that do not fit it.
func encodeDomains(names []string) []byte {
	var out []byte
	for _, n := range names {
		n = strings.TrimSuffix(n, ".")
		if n == "" || len(n) > 253 {
			continue
		}
		var enc []byte
		ok := true
		for _, l := range strings.Split(n, ".") {
			if len(l) == 0 || len(l) > 63 {
				ok = false
				break
			}
			enc = append(enc, byte(len(l)))
			enc = append(enc, l...)
		}
		if ok {
			out = append(out, enc...)
			out = append(out, 0)
		}
	}
	return out
}
