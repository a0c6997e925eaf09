package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/router"
	"github.com/acrouter/acrouter/router/dhcp"
	"github.com/acrouter/acrouter/router/dhcp6"
	"github.com/acrouter/acrouter/router/dns"
	"github.com/acrouter/acrouter/vpnlink"
)

// The hub session is the frame link of the virtual host.
var _ netstack.Link = (*vpnlink.Client)(nil)

// app is a running acrouter: hub link, virtual host, router, DHCP and DNS.
type app struct {
	cfg   config
	set   settings
	log   *slog.Logger
	mac   net.HardwareAddr
	state stateDir

	link   *vpnlink.Client
	stack  *netstack.Stack
	router *router.Router
	dhcp   *dhcp.Server  // nil when disabled
	dns    *dns.Server   // nil when disabled
	dhcp6  *dhcp6.Server // nil when IPv6 or DHCPv6 is off
	ipv6   ipv6Plan      // zero prefix: IPv6 off
	procs  *procsTuner   // nil: GOMAXPROCS left alone
	trim   *memTrimmer   // nil: router.memory_trim off
	// dhcpSrv is dhcp for the DHCP server's own goroutine (OnChange), which
	// may run before start has assigned a.dhcp.
	dhcpSrv atomic.Pointer[dhcp.Server]

	argv []string // the command line, re-read on SIGHUP

	// routerDial, if set, replaces the router's host dialer (tests).
	routerDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// linkConfig derives the hub session's configuration.
func linkConfig(cfg config, state stateDir, password string, log *slog.Logger) vpnlink.Config {
	auth := vpnlink.AuthPassword
	if cfg.Hub.Auth == "plain" {
		auth = vpnlink.AuthPlainPassword
	}
	return vpnlink.Config{
		Server:             cfg.Hub.Server,
		Hub:                cfg.Hub.Hub,
		User:               cfg.Hub.User,
		Password:           password,
		Auth:               auth,
		CertSHA256:         cfg.Hub.ServerCertSHA256,
		InsecureSkipVerify: cfg.Hub.InsecureSkipVerify,
		StateDir:           string(state),
		Logger:             log.With("component", "vpnlink"),
		QueueFrames:        cfg.Hub.QueueFrames,
		MaxBackoff:         cfg.Hub.MaxBackoff.Duration,
	}
}

// runCheck validates the configuration, logs in to the hub once and prints a
// verdict.
func runCheck(ctx context.Context, cfg config, set settings, w io.Writer, log *slog.Logger) int {
	fmt.Fprintln(w, "configuration: ok")
	state, err := openStateDir(cfg.StateDir)
	if err != nil {
		fmt.Fprintln(w, "state directory:", err)
		return 1
	}
	fmt.Fprintln(w, "state directory:", state)
	pw, err := cfg.hubPassword()
	if err != nil {
		fmt.Fprintln(w, "password:", err)
		return 1
	}
	dialer, err := cfg.hubDialer(log)
	if err != nil {
		fmt.Fprintln(w, "proxy:", err)
		return 1
	}
	defer dialer.Close()
	lc := linkConfig(cfg, state, pw, log)
	lc.Dial = dialer.DialContext
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := vpnlink.Check(ctx, lc)
	if err != nil {
		fmt.Fprintf(w, "hub login to %s hub %s as %s: FAILED: %v\n", cfg.Hub.Server, cfg.Hub.Hub, cfg.Hub.User, err)
		return 1
	}
	fmt.Fprintf(w, "hub login to %s hub %s as %s: ok\n", cfg.Hub.Server, cfg.Hub.Hub, cfg.Hub.User)
	fmt.Fprintf(w, "  server: %s (version %d, build %d)\n", st.ServerProduct, st.ServerVersion, st.ServerBuild)
	fmt.Fprintf(w, "  certificate SHA-256: %s\n", st.CertSHA256)
	fmt.Fprintf(w, "  session: %s, bridge/routing mode granted: %v\n", st.SessionName, st.BridgeMode)
	fmt.Fprintln(w, "verdict: acrouter can run with this configuration")
	return 0
}

// runRouter runs acrouter until ctx ends.
func runRouter(ctx context.Context, argv []string, cfg config, set settings, level *slog.LevelVar, log *slog.Logger) error {
	state, err := openStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	mac := set.RouterMAC
	if mac == nil {
		if mac, err = state.routerMAC(); err != nil {
			return err
		}
	}
	password, err := cfg.hubPassword()
	if err != nil {
		return err
	}
	token := ""
	if cfg.Status.TokenFile != "" {
		if token, err = readSecretFile("status.token_file (--status-token-file)", cfg.Status.TokenFile); err != nil {
			return err
		}
	}
	log.Info("acrouter starting", "version", version, "server", cfg.Hub.Server, "hub", cfg.Hub.Hub,
		"user", cfg.Hub.User, "router_ip", set.RouterPrefix.String(), "router_mac", mac.String(), "state_dir", string(state))

	if limit, warn := checkFDLimit(cfg.Router.MaxSessions); warn != "" {
		log.Warn(warn)
	} else {
		log.Debug("open-file limit", "limit", limit, "max_sessions", cfg.Router.MaxSessions)
	}
	dialer, err := cfg.hubDialer(log)
	if err != nil {
		return err
	}
	defer dialer.Close() // after the hub session (deferred below) is closed
	lc := linkConfig(cfg, state, password, log)
	lc.Dial = dialer.DialContext
	if cfg.Hub.Proxy != "" {
		log.Info("reaching the server through a proxy", "proxy", cfg.Hub.Proxy)
	}
	a, err := startApp(ctx, cfg, set, lc, state, mac, log, nil)
	if err != nil {
		return err
	}
	a.argv = argv
	defer func() {
		if err := a.close(); err != nil {
			log.Warn("shutdown", "err", err)
		}
		log.Info("acrouter stopped")
	}()

	var status *statusServer
	if cfg.Status.Listen != "" {
		status, err = startStatusServer(cfg.Status.Listen, newStatusHandler(a, token, cfg.Status.Pprof), log)
		if err != nil {
			return err
		}
		defer status.Close()
	}

	hup, stop := reloadSignals()
	defer stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", "reason", context.Cause(ctx))
			return nil
		case <-hup:
			a.reload(level)
		}
	}
}

// dialHub logs in, retrying transient failures (server unreachable) with a
// backoff until ctx ends; permanent ones (wrong password, unknown hub, bridge
// mode denied, certificate mismatch) end the start with their message.
func dialHub(ctx context.Context, lc vpnlink.Config, log *slog.Logger) (*vpnlink.Client, error) {
	wait := time.Second
	for {
		link, err := vpnlink.Dial(ctx, lc)
		if err == nil {
			st := link.Status()
			log.Info("joined the hub", "session", st.SessionName, "bridge_mode", st.BridgeMode,
				"server", st.ServerProduct, "build", st.ServerBuild)
			return link, nil
		}
		if vpnlink.IsPermanent(err) || ctx.Err() != nil {
			return nil, err
		}
		log.Warn("cannot join the hub yet; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, lc.MaxBackoff)
	}
}

// startApp joins the hub and brings up the virtual host and its services.
// hostDial, if not nil, replaces the router's host dialer (tests).
func startApp(ctx context.Context, cfg config, set settings, lc vpnlink.Config, state stateDir, mac net.HardwareAddr, log *slog.Logger,
	hostDial func(ctx context.Context, network, addr string) (net.Conn, error)) (*app, error) {
	a := &app{cfg: cfg, set: set, log: log, mac: mac, state: state, routerDial: hostDial}
	link, err := dialHub(ctx, lc, log)
	if err != nil {
		return nil, err
	}
	a.link = link
	if err := a.start(); err != nil {
		return nil, errors.Join(err, a.close())
	}
	return a, nil
}

// start brings up the virtual host and its services on the joined link.
func (a *app) start() error {
	var err error
	cfg, set := a.cfg, a.set
	if cfg.Router.AdaptiveProcs {
		a.procs = startProcsTuner(a.log.With("component", "procs"))
	}
	if cfg.Router.MemoryTrim {
		a.trim = startMemTrimmer(a.log.With("component", "memtrim"))
	}
	warnDHCP := newRateLimitedLogger(a.log, time.Minute)
	var ra netstack.RAConfig
	if cfg.IPv6.Enabled {
		a.ipv6 = a.planIPv6()
		ra = a.raConfig(a.ipv6)
	}
	a.stack, err = netstack.New(a.link, netstack.Config{
		MAC:            a.mac,
		Addr:           set.RouterPrefix,
		Addr6:          a.ipv6.prefix,
		RA:             ra,
		MTU:            cfg.Router.MTU,
		Logger:         a.log.With("component", "netstack"),
		MaxInFlightSYN: max(8192, cfg.Router.MaxSessions),
		RACK:           cfg.Router.TCPRack,
		OnForeignDHCPServer: func(mac net.HardwareAddr, ip netip.Addr) {
			if cfg.DHCP.Enabled {
				warnDHCP.Warn(mac.String(), "another DHCP server answers on this hub: two DHCP servers on one segment hand out conflicting addresses; disable one (--dhcp=false)",
					"mac", mac.String(), "ip", ip.String())
			}
		},
	})
	if err != nil {
		return fmt.Errorf("virtual host: %w", err)
	}
	rules := make([]router.Rule, 0, len(cfg.Router.Rules))
	for _, s := range cfg.Router.Rules {
		r, err := router.ParseRule(s)
		if err != nil {
			return fmt.Errorf("config key router.rules: %w", err)
		}
		rules = append(rules, r)
	}
	a.router, err = router.New(a.stack, router.Config{
		MaxSessions:          cfg.Router.MaxSessions,
		MaxSessionsPerClient: cfg.Router.MaxSessionsPerClient,
		MaxInFlightDials:     cfg.Router.MaxInFlightDials,
		DialTimeout:          cfg.Router.DialTimeout.Duration,
		TCPIdleTimeout:       cfg.Router.TCPIdleTimeout.Duration,
		UDPIdleTimeout:       cfg.Router.UDPIdleTimeout.Duration,
		DNSIdleTimeout:       cfg.Router.DNSIdleTimeout.Duration,
		Rules:                rules,
		NoDefaultDeny:        cfg.Router.NoDefaultDeny,
		NATLog:               cfg.Log.NAT,
		LoopbackAlias:        set.LoopbackAlias,
		Logger:               a.log.With("component", "router"),
		Dial:                 a.routerDial,
	})
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	if set.LoopbackAlias.IsValid() {
		a.log.Warn("host-loopback alias on: every hub client reaches this host's 127.0.0.1 services through it", "alias", set.LoopbackAlias.String())
	}
	for _, pf := range set.Forwards {
		if err := a.router.AddForward(pf); err != nil {
			return fmt.Errorf("config key router.forwards: %w", err)
		}
		a.log.Info("port forward", "rule", pf.String())
	}
	if cfg.DNS.Enabled {
		udp, err := a.stack.ListenUDP(53)
		if err != nil {
			return fmt.Errorf("dns: %w", err)
		}
		tcp, err := a.stack.ListenTCP(53)
		if err != nil {
			udp.Close()
			return fmt.Errorf("dns: %w", err)
		}
		cache := cfg.DNS.CacheSize
		if cache == 0 {
			cache = -1 // our 0 means no cache; dns.Config's 0 means its default
		}
		a.dns, err = dns.New(dns.Config{
			Upstreams:   cfg.DNS.Upstreams,
			ResolvConf:  cfg.DNS.ResolvConf,
			Static:      set.Hosts,
			RouterName:  cfg.DNS.RouterName,
			RouterAddr:  set.RouterPrefix.Addr(),
			RouterAddr6: a.ipv6.prefix.Addr(),
			Timeout:     cfg.DNS.Timeout.Duration,
			CacheSize:   cache,
			RateLimit:   float64(cfg.DNS.RateLimit),
			Logger:      a.log.With("component", "dns"),
		}, udp, tcp)
		if err != nil {
			udp.Close()
			tcp.Close()
			return fmt.Errorf("dns: %w", err)
		}
	}
	if cfg.DHCP.Enabled {
		conn, err := a.stack.ListenDHCP()
		if err != nil {
			return fmt.Errorf("dhcp: %w", err)
		}
		routes := make([]dhcp.Route, len(set.Routes))
		for i, r := range set.Routes {
			routes[i] = dhcp.Route{Dst: r.Dst, Gateway: r.Gateway}
		}
		a.dhcp, err = dhcp.New(conn, dhcp.Config{
			ServerIP:     set.RouterPrefix.Addr(),
			Subnet:       set.RouterPrefix.Masked(),
			PoolStart:    set.PoolStart,
			PoolEnd:      set.PoolEnd,
			NoGateway:    cfg.DHCP.NoGateway,
			DNS:          set.DHCPDNS, // after the router address, which is always first
			Domain:       cfg.DHCP.Domain,
			SearchList:   cfg.DHCP.Search,
			MTU:          cfg.DHCP.MTU,
			LeaseTime:    cfg.DHCP.LeaseTime.Duration,
			Routes:       routes,
			Reservations: set.Reservations,
			StateFile:    a.state.leasesFile(),
			Probe:        a.stack.ProbeAddr,
			// An ARP answer on a hub takes milliseconds; the 1 s default
			// made every fresh lease take over a second.
			ProbeTimeout: 250 * time.Millisecond,
			// ... and the next free address is probed in advance, so a
			// new client's OFFER does not wait for it at all.
			PreProbe: true,
			OnChange: a.publishLeaseNames,
			// Starvation defence: our 0 means off where the library's 0
			// means its default.
			NewClientRate:       cfg.DHCP.NewClientRate,
			NewClientBurst:      cfg.DHCP.NewClientBurst,
			ProbationLease:      offIfZero(cfg.DHCP.ProbationLease.Duration),
			MaxBroadcastReplies: offIfZeroF(cfg.DHCP.MaxBroadcastReplies),
			OfferHold:           cfg.DHCP.OfferHold.Duration,
			Logger:              a.log.With("component", "dhcp"),
		})
		if err != nil {
			conn.Close()
			return fmt.Errorf("dhcp: %w", err)
		}
		a.dhcpSrv.Store(a.dhcp)
		a.publishLeaseNames() // leases loaded from the state file
	}
	if a.ipv6.prefix.IsValid() {
		if err := a.startIPv6Services(a.ipv6); err != nil {
			return err
		}
		a.log.Info("IPv6 on the hub", "ip", a.ipv6.prefix.String(), "link_local", a.stack.LinkLocal6().String(),
			"default_route", a.ipv6.defaultRoute, "dhcpv6", cfg.IPv6.DHCPv6)
	}
	a.log.Info("virtual host up", "ip", set.RouterPrefix.String(), "mac", a.mac.String(),
		"dhcp", cfg.DHCP.Enabled, "dns", cfg.DNS.Enabled, "ipv6", a.ipv6.prefix.IsValid(), "max_sessions", cfg.Router.MaxSessions)
	return nil
}

func offIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func offIfZeroF(f float64) float64 {
	if f == 0 {
		return -1
	}
	return f
}

// publishLeaseNames makes the host names of DHCP clients resolvable through
// the DNS redirector (as name and name.domain). It runs on the DHCP server's
// goroutine after a lease changes.
func (a *app) publishLeaseNames() {
	srv := a.dhcpSrv.Load()
	if a.dns == nil || srv == nil {
		return
	}
	hosts := map[string][]netip.Addr{}
	for _, l := range srv.Leases() {
		if l.Hostname == "" || l.State != dhcp.StateBound {
			continue
		}
		hosts[l.Hostname] = append(hosts[l.Hostname], l.IP)
		if d := a.cfg.DHCP.Domain; d != "" {
			hosts[l.Hostname+"."+d] = append(hosts[l.Hostname+"."+d], l.IP)
		}
	}
	if err := a.dns.SetHosts(hosts); err != nil {
		a.log.Debug("publishing DHCP host names in DNS", "err", err)
	}
}

// reload re-reads the configuration on SIGHUP and applies what is safe to
// change while running: the log level and the access rules (new flows are
// checked against the new rules). Everything else needs a restart; a reload
// that changes it says so.
func (a *app) reload(level *slog.LevelVar) {
	fs := flag.NewFlagSet("acrouter", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg, err := parseArgs(fs, a.argv)
	var set settings
	if err == nil {
		set, err = cfg.validate(true)
	}
	var rules []router.Rule
	for _, s := range cfg.Router.Rules {
		if err != nil {
			break
		}
		var r router.Rule
		if r, err = router.ParseRule(s); err != nil {
			err = fmt.Errorf("config key router.rules: %w", err)
		}
		rules = append(rules, r)
	}
	if err != nil {
		a.log.Warn("configuration reload rejected; keeping the running configuration", "err", err)
		return
	}
	level.Set(slog.Level(set.LogLevel))
	a.router.SetRules(rules, cfg.Router.NoDefaultDeny)
	a.reloadForwards(set.Forwards)
	a.log.Info("configuration reloaded", "log_level", cfg.Log.Level, "rules", len(rules), "no_default_deny", cfg.Router.NoDefaultDeny,
		"forwards", len(set.Forwards))
	old := a.cfg
	old.Log.Level, old.Router.Rules, old.Router.NoDefaultDeny, old.Router.Forwards = cfg.Log.Level, cfg.Router.Rules, cfg.Router.NoDefaultDeny, cfg.Router.Forwards
	if !reflect.DeepEqual(old, cfg) {
		a.log.Warn("the reloaded configuration changes settings that only take effect after a restart; only log.level, router.rules and router.forwards were applied")
	}
	a.cfg.Log.Level, a.cfg.Router.Rules, a.cfg.Router.NoDefaultDeny, a.cfg.Router.Forwards = cfg.Log.Level, cfg.Router.Rules, cfg.Router.NoDefaultDeny, cfg.Router.Forwards
}

// reloadForwards makes the configured forwards the wanted ones: forwards of
// the old configuration that are gone are removed, new ones added. Forwards
// added through the status API are left alone unless the file names them.
func (a *app) reloadForwards(want []router.PortForward) {
	wanted := map[string]router.PortForward{}
	for _, pf := range want {
		wanted[pf.String()] = pf
	}
	for _, old := range a.set.Forwards {
		if _, keep := wanted[old.String()]; !keep {
			if err := a.router.RemoveForward(old); err != nil {
				a.log.Warn("reload: removing a port forward", "rule", old.String(), "err", err)
			} else {
				a.log.Info("reload: port forward removed", "rule", old.String())
			}
		}
	}
	have := map[string]bool{}
	for _, f := range a.router.Forwards() {
		have[f.Rule.String()] = true
	}
	for key, pf := range wanted {
		if have[key] {
			continue
		}
		if err := a.router.AddForward(pf); err != nil {
			a.log.Warn("reload: adding a port forward", "rule", key, "err", err)
		} else {
			a.log.Info("reload: port forward added", "rule", key)
		}
	}
	a.set.Forwards = want
}

// close stops everything in dependency order: services, router, virtual
// host, then the hub session (logout).
func (a *app) close() error {
	var errs []error
	if a.procs != nil {
		a.procs.close()
	}
	if a.trim != nil {
		a.trim.close()
	}
	if a.dns != nil {
		errs = append(errs, a.dns.Close())
	}
	if a.dhcp != nil {
		errs = append(errs, a.dhcp.Close())
	}
	if a.dhcp6 != nil {
		errs = append(errs, a.dhcp6.Close())
	}
	if a.router != nil {
		errs = append(errs, a.router.Close())
	}
	if a.stack != nil {
		errs = append(errs, a.stack.Close())
	}
	if a.link != nil {
		if err := a.link.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
