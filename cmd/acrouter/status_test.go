package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

type fakeSource struct{}

func (fakeSource) Status() statusDoc {
	return statusDoc{Version: "test", Hub: hubDoc{Server: "h:5555", Hub: "LAB", State: "connected", SessionName: "SID-ROUTER-1", BridgeMode: true},
		Router: routerDoc{IP: "192.168.30.1/24", MAC: "02:00:00:00:00:01", MaxSessions: 4096, FlowsOpen: 1}}
}
func (fakeSource) Sessions() []flowDoc {
	return []flowDoc{{Proto: "tcp", Client: "192.168.30.10:40000", Dest: "10.0.0.1:80", State: "established", BytesUp: 10, BytesDown: 20}}
}
func (fakeSource) Leases() []leaseDoc {
	return []leaseDoc{{MAC: "02:5e:00:00:00:21", IP: "192.168.30.10", Hostname: "clab", Expires: time.Unix(2e9, 0)}}
}
func (fakeSource) Metrics() []metricSample {
	return []metricSample{
		{Name: "acrouter_flows_refused_total", Help: "refused", Labels: map[string]string{"reason": "acl"}, Value: 3},
		{Name: "acrouter_flows_open", Help: "open", Gauge: true, Value: 1},
	}
}

func startTestStatus(t *testing.T, token string) string {
	t.Helper()
	return startTestStatusPprof(t, token, false)
}

func startTestStatusPprof(t *testing.T, token string, withPprof bool) string {
	t.Helper()
	s, err := startStatusServer("127.0.0.1:0", newStatusHandler(fakeSource{}, token, withPprof), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s.Addr()
}

func httpGet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestStatusAPI(t *testing.T) {
	addr := startTestStatus(t, "")
	code, body := httpGet(t, "http://"+addr+"/status", "")
	if code != 200 {
		t.Fatalf("/status: %d %s", code, body)
	}
	var st statusDoc
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Hub.SessionName != "SID-ROUTER-1" || !st.Hub.BridgeMode {
		t.Fatalf("/status: %v %+v", err, st)
	}
	code, body = httpGet(t, "http://"+addr+"/leases", "")
	if code != 200 || !strings.Contains(body, `"ip": "192.168.30.10"`) {
		t.Fatalf("/leases: %d %s", code, body)
	}
	code, body = httpGet(t, "http://"+addr+"/sessions", "")
	if code != 200 || !strings.Contains(body, `"dest": "10.0.0.1:80"`) {
		t.Fatalf("/sessions: %d %s", code, body)
	}
	code, body = httpGet(t, "http://"+addr+"/metrics", "")
	if code != 200 || !strings.Contains(body, `acrouter_flows_refused_total{reason="acl"} 3`) || !strings.Contains(body, "# TYPE acrouter_flows_open gauge") ||
		!strings.Contains(body, "go_goroutines ") || !strings.Contains(body, "process_open_fds ") {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	code, body = httpGet(t, "http://"+addr+"/", "")
	if code != 200 || !strings.Contains(body, "<title>acrouter status</title>") || strings.Contains(body, "http://") && strings.Contains(body, "src=\"http") {
		t.Fatalf("/: %d", code)
	}
	if code, _ := httpGet(t, "http://"+addr+"/nope", ""); code != 404 {
		t.Errorf("/nope: %d, want 404", code)
	}
}

func TestStatusAPIToken(t *testing.T) {
	addr := startTestStatus(t, "tok3n")
	for _, p := range []string{"/status", "/sessions", "/leases", "/metrics", "/"} {
		if code, _ := httpGet(t, "http://"+addr+p, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without token: %d, want 401", p, code)
		}
		if code, _ := httpGet(t, "http://"+addr+p, "wrong"); code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d, want 401", p, code)
		}
		if code, _ := httpGet(t, "http://"+addr+p, "tok3n"); code != 200 {
			t.Errorf("%s with the token: %d, want 200", p, code)
		}
	}
	if code, _ := httpGet(t, "http://"+addr+"/status?token=tok3n", ""); code != 200 {
		t.Errorf("token in query: %d", code)
	}
}

func TestStatusCommandPrintsTables(t *testing.T) {
	addr := startTestStatus(t, "tok")
	var out bytes.Buffer
	if err := runStatusCommand(context.Background(), &out, addr, "tok"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SID-ROUTER-1", "bridge/routing mode: true", "192.168.30.10", "02:5e:00:00:00:21", "10.0.0.1:80", "established"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if err := runStatusCommand(context.Background(), &out, addr, "bad"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("bad token: %v", err)
	}
}

// fakeForwards is a statusSource that also manages forwards.
type fakeForwards struct {
	fakeSource
	rules []string
}

func (f *fakeForwards) Forwards() []forwardDoc {
	var out []forwardDoc
	for _, r := range f.rules {
		out = append(out, forwardDoc{Rule: r})
	}
	return out
}

func (f *fakeForwards) AddForward(rule string) error {
	if !strings.Contains(rule, "->") {
		return errors.New("bad rule: want PROTO LISTEN -> TARGET")
	}
	f.rules = append(f.rules, rule)
	return nil
}

func (f *fakeForwards) RemoveForward(rule string) error {
	for i, r := range f.rules {
		if r == rule {
			f.rules = append(f.rules[:i], f.rules[i+1:]...)
			return nil
		}
	}
	return errors.New("no such forward")
}

func doJSON(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestForwardsAPI(t *testing.T) {
	const rule = "tcp 0.0.0.0:8022 -> 192.168.30.50:22"
	// Without a token configured, changes are refused even on loopback.
	s, err := startStatusServer("127.0.0.1:0", newStatusHandler(&fakeForwards{}, "", false), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if code, body := doJSON(t, "POST", "http://"+s.Addr()+"/forwards", "", `{"rule":"`+rule+`"}`); code != http.StatusForbidden || !strings.Contains(body, "token") {
		t.Fatalf("POST without a configured token: %d %s", code, body)
	}

	fw := &fakeForwards{}
	s2, err := startStatusServer("127.0.0.1:0", newStatusHandler(fw, "tok", false), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	base := "http://" + s2.Addr() + "/forwards"
	if code, _ := doJSON(t, "POST", base, "", `{"rule":"`+rule+`"}`); code != http.StatusUnauthorized {
		t.Fatalf("POST without the token: %d", code)
	}
	if code, body := doJSON(t, "POST", base, "tok", `{"rule":"`+rule+`"}`); code != 200 || !strings.Contains(body, rule) {
		t.Fatalf("POST: %d %s", code, body)
	}
	if code, body := doJSON(t, "POST", base, "tok", `{"rule":"nonsense"}`); code != http.StatusUnprocessableEntity || !strings.Contains(body, "bad rule") {
		t.Fatalf("POST bad rule: %d %s", code, body)
	}
	if code, body := doJSON(t, "POST", base, "tok", `not json`); code != http.StatusBadRequest {
		t.Fatalf("POST garbage: %d %s", code, body)
	}
	if code, body := doJSON(t, "GET", base, "tok", ""); code != 200 || !strings.Contains(body, rule) {
		t.Fatalf("GET: %d %s", code, body)
	}
	if code, body := doJSON(t, "DELETE", base, "tok", `{"rule":"`+rule+`"}`); code != 200 || strings.Contains(body, rule) {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if len(fw.rules) != 0 {
		t.Fatalf("rules left: %q", fw.rules)
	}
}

// TestStatusPprof: the profiler is served only when status.pprof is on, and
// then behind the API's token like everything else.
func TestStatusPprof(t *testing.T) {
	off := startTestStatusPprof(t, "", false)
	if code, _ := httpGet(t, "http://"+off+"/debug/pprof/goroutine?debug=1", ""); code != http.StatusNotFound {
		t.Errorf("pprof off: /debug/pprof/goroutine answered %d, want 404", code)
	}
	on := startTestStatusPprof(t, "tok", true)
	if code, _ := httpGet(t, "http://"+on+"/debug/pprof/goroutine?debug=1", ""); code != http.StatusUnauthorized {
		t.Errorf("pprof on, no token: answered %d, want 401", code)
	}
	code, body := httpGet(t, "http://"+on+"/debug/pprof/goroutine?debug=1", "tok")
	if code != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
		t.Errorf("pprof on, with token: answered %d %.80q, want 200 and a goroutine profile", code, body)
	}
}
