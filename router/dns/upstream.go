package dns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// exchanger sends one query to one upstream over network ("udp" or "tcp")
// and returns its answer by deadline; ctx ends it early (server shutdown).
// It is the test seam: tests plug in fakes.
type exchanger interface {
	exchange(ctx context.Context, deadline time.Time, m *mdns.Msg, network, server string) (*mdns.Msg, error)
}

// netExchanger sends UDP queries through a pool of connected sockets
// (udpconn.go: random IDs, checked replies, rotated source ports) and TCP
// queries (after a truncated UDP answer) with a miekg/dns client, a new
// connection per query.
type netExchanger struct {
	udp *udpPool
	tcp mdns.Client
}

func newNetExchanger(timeout time.Duration) *netExchanger {
	return &netExchanger{
		udp: newUDPPool(),
		tcp: mdns.Client{Net: "tcp", Timeout: timeout},
	}
}

func (e *netExchanger) exchange(ctx context.Context, deadline time.Time, m *mdns.Msg, network, server string) (*mdns.Msg, error) {
	if network != "tcp" {
		return e.udp.exchange(deadline, m, server)
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	r, _, err := e.tcp.ExchangeContext(ctx, m, server)
	return r, err
}

// close closes the idle upstream sockets and aborts the UDP exchanges in
// flight (Server.Close).
func (e *netExchanger) close() { e.udp.close() }

// mismatches counts unexpected datagrams on upstream sockets.
func (e *netExchanger) mismatches() uint64 { return e.udp.mismatches.Load() }

var errNoUpstreams = errors.New("dns: no upstream resolvers configured")

// upstreams yields the resolver list: the static one or resolv.conf's.
type upstreams struct {
	static []string
	path   string
	now    func() time.Time

	mu        sync.Mutex
	servers   []string
	modTime   time.Time
	size      int64
	checked   time.Time
	loaded    bool
	down      map[string]time.Time // server → end of its failure penalty
	lastError error
}

func newUpstreams(static []string, path string, now func() time.Time) *upstreams {
	return &upstreams{static: static, path: path, now: now, down: map[string]time.Time{}}
}

// list returns the servers in the order to try: healthy ones in configured
// order, then those in their failure penalty. changed reports a reload.
func (u *upstreams) list() (servers []string, changed bool, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.now()
	base := u.static
	if base == nil {
		if !u.loaded || now.Sub(u.checked) >= resolvCheckEvery || now.Before(u.checked) {
			changed = u.reload(now)
		}
		base = u.servers
		if len(base) == 0 {
			if u.lastError != nil {
				return nil, changed, u.lastError
			}
			return nil, changed, fmt.Errorf("%w: %s lists no nameserver", errNoUpstreams, u.path)
		}
	}
	if len(base) > maxUpstreams {
		base = base[:maxUpstreams]
	}
	out := make([]string, 0, len(base))
	var later []string
	for _, s := range base {
		if t, ok := u.down[s]; ok && now.Before(t) {
			later = append(later, s)
			continue
		}
		out = append(out, s)
	}
	return append(out, later...), changed, nil
}

// reload re-reads the resolv.conf if its mtime or size changed.
func (u *upstreams) reload(now time.Time) bool {
	u.checked = now
	fi, err := os.Stat(u.path)
	if err != nil {
		if u.loaded && u.lastError != nil {
			return false
		}
		u.loaded, u.servers, u.lastError = true, nil, fmt.Errorf("dns: read resolvers: %w", err)
		return true
	}
	if u.loaded && u.lastError == nil && fi.ModTime().Equal(u.modTime) && fi.Size() == u.size {
		return false
	}
	f, err := os.Open(u.path)
	if err != nil {
		u.loaded, u.servers, u.lastError = true, nil, fmt.Errorf("dns: read resolvers: %w", err)
		return true
	}
	defer f.Close()
	servers := parseResolvConf(io.LimitReader(f, 1<<20))
	u.loaded, u.servers, u.lastError = true, servers, nil
	for s := range u.down {
		if !slices.Contains(servers, s) {
			delete(u.down, s)
		}
	}
	u.modTime, u.size = fi.ModTime(), fi.Size()
	return true
}

func (u *upstreams) markDown(server string) {
	u.mu.Lock()
	u.down[server] = u.now().Add(downPenalty)
	u.mu.Unlock()
}

func (u *upstreams) markUp(server string) {
	u.mu.Lock()
	delete(u.down, server)
	u.mu.Unlock()
}

// ReadResolvConf reads a resolv.conf: the nameservers as "host:port" and
// the search list ("domain" or "search", the last one wins, as in glibc).
// cmd/acrouter can pass the search list to DHCP options 15/119, as SecureNAT
// hands out the host's domain.
func ReadResolvConf(path string) (servers, search []string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: %w", err)
	}
	defer f.Close()
	servers, search = parseResolvConfAll(io.LimitReader(f, 1<<20))
	return servers, search, nil
}

// parseResolvConf returns "host:port" for every valid nameserver line
// (IPv4, IPv6, IPv6 with a zone), in file order, without duplicates.
func parseResolvConf(r io.Reader) []string {
	servers, _ := parseResolvConfAll(r)
	return servers
}

func parseResolvConfAll(r io.Reader) (servers, search []string) {
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if i := bytes.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(string(line))
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			a, err := netip.ParseAddr(f[1])
			if err != nil {
				continue
			}
			hp := net.JoinHostPort(a.String(), "53")
			if !seen[hp] {
				seen[hp] = true
				servers = append(servers, hp)
			}
		case "domain", "search":
			search = nil
			for _, d := range f[1:] {
				if d = strings.TrimSuffix(d, "."); d != "" && len(search) < 32 {
					search = append(search, d)
				}
			}
		}
	}
	return servers, search
}
