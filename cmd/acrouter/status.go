package main

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The documents of the status API. They are plain data so that the API and
// `acrouter status` do not depend on the components' types.

type statusDoc struct {
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
	UptimeSec float64   `json:"uptime_seconds"`
	Hub       hubDoc    `json:"hub"`
	Router    routerDoc `json:"router"`
}

type hubDoc struct {
	Server         string    `json:"server"`
	Hub            string    `json:"hub"`
	User           string    `json:"user"`
	State          string    `json:"state"`
	SessionName    string    `json:"session_name"`
	BridgeMode     bool      `json:"bridge_mode"`
	Reconnects     uint64    `json:"reconnects"`
	Resumes        uint64    `json:"resumes"`
	ServerProduct  string    `json:"server_product,omitempty"`
	ServerVersion  int       `json:"server_version,omitempty"`
	ServerBuild    int       `json:"server_build,omitempty"`
	CertSHA256     string    `json:"cert_sha256,omitempty"`
	ConnectedSince time.Time `json:"connected_since,omitzero"`
	LastError      string    `json:"last_error,omitempty"`
}

type routerDoc struct {
	IP          string `json:"ip"`
	MAC         string `json:"mac"`
	DHCP        bool   `json:"dhcp"`
	DNS         bool   `json:"dns"`
	IPv6        string `json:"ipv6,omitempty"`            // router IPv6 address and prefix; empty: IPv6 off
	LinkLocal6  string `json:"ipv6_link_local,omitempty"` // the router's link-local address
	DefaultRt6  bool   `json:"ipv6_default_router"`       // advertised as IPv6 default router
	DHCPv6      string `json:"dhcpv6,omitempty"`          // off, stateless, stateful
	FlowsOpen   int    `json:"flows_open"`
	MaxSessions int    `json:"max_sessions"`
	GOMAXPROCS  int    `json:"gomaxprocs"` // Ps the runtime uses now (adapted to load with router.adaptive_procs)
}

type flowDoc struct {
	Proto     string  `json:"proto"`
	Client    string  `json:"client"`
	Dest      string  `json:"dest"`
	State     string  `json:"state"`
	BytesUp   uint64  `json:"bytes_up"`   // client → destination
	BytesDown uint64  `json:"bytes_down"` // destination → client
	AgeSec    float64 `json:"age_seconds"`
	IdleSec   float64 `json:"idle_seconds"`
}

type leaseDoc struct {
	MAC      string    `json:"mac"`
	IP       string    `json:"ip"`
	Hostname string    `json:"hostname,omitempty"`
	Expires  time.Time `json:"expires"`
	State    string    `json:"state,omitempty"`
	DUID     string    `json:"duid,omitempty"` // DHCPv6 leases: the client's DUID (hex), no MAC
}

// metricSample is one Prometheus sample.
type metricSample struct {
	Name   string
	Help   string
	Gauge  bool // else a counter
	Labels map[string]string
	Value  float64
}

type forwardDoc struct {
	Rule        string `json:"rule"`
	Bound       string `json:"bound,omitempty"` // the address listened on
	Connections uint64 `json:"connections"`
	Active      int    `json:"active"`
	Refused     uint64 `json:"refused"`
	BytesIn     uint64 `json:"bytes_to_client"`
	BytesOut    uint64 `json:"bytes_from_client"`
}

// forwardManager manages inbound port forwards at run time.
type forwardManager interface {
	Forwards() []forwardDoc
	AddForward(rule string) error
	RemoveForward(rule string) error
}

// statusSource is what the status API reads; the running app implements it.
type statusSource interface {
	Status() statusDoc
	Sessions() []flowDoc
	Leases() []leaseDoc
	Metrics() []metricSample
}

//go:embed status.html
var statusPage []byte

// newStatusHandler serves the status API. A non-empty token is required as
// "Authorization: Bearer TOKEN" (or ?token=TOKEN, for the page's own links).
// Changes (POST, DELETE) always need a token: without one configured they
// are refused. withPprof adds Go's profiler under /debug/pprof/
// (status.pprof), behind the same token.
func newStatusHandler(src statusSource, token string, withPprof bool) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(sampleCollector{src.Metrics},
		collectors.NewGoCollector(),                                       // go_goroutines, memory: for soak checks and operators
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})) // RSS, open fds, CPU
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		_ = enc.Encode(v)
	}
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, src.Status()) })
	mux.HandleFunc("GET /sessions", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, nonNil(src.Sessions())) })
	mux.HandleFunc("GET /leases", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, nonNil(src.Leases())) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if fm, ok := src.(forwardManager); ok {
		mux.HandleFunc("GET /forwards", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, nonNil(fm.Forwards())) })
		change := func(apply func(string) error) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if token == "" {
					http.Error(w, "forbidden: changing port forwards through the status API needs a token (start acrouter with --status-token-file)", http.StatusForbidden)
					return
				}
				var req struct {
					Rule string `json:"rule"`
				}
				if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil || req.Rule == "" {
					http.Error(w, `bad request: send JSON {"rule": "tcp 0.0.0.0:8022 -> 192.168.30.50:22"}`, http.StatusBadRequest)
					return
				}
				if err := apply(req.Rule); err != nil {
					http.Error(w, err.Error(), http.StatusUnprocessableEntity)
					return
				}
				writeJSON(w, nonNil(fm.Forwards()))
			}
		}
		mux.HandleFunc("POST /forwards", change(fm.AddForward))
		mux.HandleFunc("DELETE /forwards", change(fm.RemoveForward))
	}
	if withPprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'")
		_, _ = w.Write(statusPage)
	})
	if token == "" {
		return mux
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if q := r.URL.Query().Get("token"); q != "" && len(got) == 0 {
			got = []byte("Bearer " + q)
		}
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="acrouter"`)
			http.Error(w, "unauthorized: this status API needs its bearer token", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// sampleCollector turns metricSamples into Prometheus metrics at scrape time.
// It is an unchecked collector (Describe sends nothing), since the set of
// label values is only known when scraping.
type sampleCollector struct{ samples func() []metricSample }

func (sampleCollector) Describe(chan<- *prometheus.Desc) {}

func (c sampleCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.samples() {
		keys := make([]string, 0, len(s.Labels))
		for k := range s.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		vals := make([]string, len(keys))
		for i, k := range keys {
			vals[i] = s.Labels[k]
		}
		t := prometheus.CounterValue
		if s.Gauge {
			t = prometheus.GaugeValue
		}
		m, err := prometheus.NewConstMetric(prometheus.NewDesc(s.Name, s.Help, keys, nil), t, s.Value, vals...)
		if err == nil {
			ch <- m
		}
	}
}

// statusServer runs the status API until Close.
type statusServer struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
	err  error
}

func startStatusServer(addr string, h http.Handler, log *slog.Logger) (*statusServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, errors.New("status API: " + err.Error())
	}
	s := &statusServer{
		srv:  &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)},
		ln:   ln,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.err = err
		}
	}()
	log.Info("status API listening", "addr", ln.Addr().String())
	return s, nil
}

func (s *statusServer) Addr() string { return s.ln.Addr().String() }

func (s *statusServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	return errors.Join(err, s.err)
}

// rateLimitedLogger lets one line per key through per interval and counts
// the suppressed ones, which are reported with the next line.
type rateLimitedLogger struct {
	log      *slog.Logger
	interval time.Duration
	mu       sync.Mutex
	last     map[string]time.Time
	dropped  map[string]int
}

func newRateLimitedLogger(log *slog.Logger, interval time.Duration) *rateLimitedLogger {
	return &rateLimitedLogger{log: log, interval: interval, last: map[string]time.Time{}, dropped: map[string]int{}}
}

func (r *rateLimitedLogger) Warn(key, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if t, ok := r.last[key]; ok && now.Sub(t) < r.interval {
		r.dropped[key]++
		r.mu.Unlock()
		return
	}
	n := r.dropped[key]
	r.dropped[key] = 0
	r.last[key] = now
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	r.log.Warn(msg, args...)
}

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}
