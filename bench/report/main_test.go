package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeRun writes a small synthetic bench run: results.jsonl plus iperf3 JSON files.
func writeRun(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	iperf := func(name string, bps float64, retr int) string {
		f := filepath.Join(dir, name)
		body := fmt.Sprintf(`{"end":{"sum_sent":{"retransmits":%d},"sum_received":{"bits_per_second":%g}}}`, retr, bps)
		if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	var lines []string
	add := func(path, test, data string) {
		lines = append(lines, fmt.Sprintf(`{"path":%q,"test":%q,"data":%s}`, path, test, data))
	}
	add("meta", "meta", `{"date":"2026-11-22 05:00 UTC","nproc":2}`)
	for i, g := range []float64{2e9, 3e9, 1e9} {
		add("acrouter", "iperf-up", fmt.Sprintf(`{"run":%d,"file":%q,"router_cpu_pct":50,"server_cpu_pct":60,"bridge_socket_drops":7}`, i+1, iperf(fmt.Sprintf("a%d.json", i), g, 10)))
	}
	for i, g := range []float64{0.03e9, 1e9, 0.02e9} {
		add("securenat", "iperf-up", fmt.Sprintf(`{"run":%d,"file":%q,"router_cpu_pct":90}`, i+1, iperf(fmt.Sprintf("s%d.json", i), g, 0)))
	}
	add("securenat", "iperf-up", fmt.Sprintf(`{"run":4,"tag":"late","file":%q}`, iperf("s4.json", 1.2e9, 0)))
	add("acrouter", "rr", `{"rtt":{"n":10,"p50_us":150,"p99_us":300}}`)
	add("securenat", "rr", `{"rtt":{"n":10,"p50_us":100,"p99_us":2500}}`)
	add("acrouter", "dhcp", `{"runs_ms":[300,90,95]}`)
	add("acrouter", "dhcp-raw", `{"first":{"offer_us":252000,"ack_us":253000},"offer":{"n":3,"p50_us":500},"ack":{"n":3,"p50_us":850,"p99_us":900},"errors":{"total":0}}`)
	add("securenat", "dhcp-raw", `{"first":{"offer_us":300,"ack_us":700},"offer":{"n":3,"p50_us":200},"ack":{"n":3,"p50_us":340,"p99_us":390},"errors":{"total":1}}`)
	add("acrouter", "cps-32", `{"result":{"conn_per_s":5000,"ok":15000,"errors":{"total":0}},"router_cpu_pct":80}`)
	add("securenat", "cps-32", `{"result":{"conn_per_s":600,"ok":1800,"errors":{"kinds":{"timeout":2},"total":2}},"router_cpu_pct":20}`)
	add("cascade", "skipped", `"late iperf up 1"`)
	in := filepath.Join(dir, "results.jsonl")
	if err := os.WriteFile(in, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return in, dir
}

func TestTable(t *testing.T) {
	in, dir := writeRun(t)
	r, err := load(in)
	if err != nil {
		t.Fatal(err)
	}
	r.raw = dir
	var b bytes.Buffer
	r.write(&b)
	out := b.String()
	for _, want := range []string{
		"| iperf3 client→LAN, Gbit/s median (min) [runs] | 2.00 (1.00) [2.00, 3.00, 1.00] | 0.03 (0.02) [0.03 slow, 1.00 fast, 0.02 slow]; at the end of the run: [1.20 fast]",
		"1.82× (vs SecureNAT's fast-mode median)", // 2.0 / median(1.0, 1.2)
		"10 (local-bridge socket drops in vpnserver: 7)",
		"| 64-byte request/response p50 / p99 | 150 µs / 300 µs | 100 µs / 2.5 ms |",
		"| 1.50× | p50 ≤ 173 µs |",
		"95 ms (min 90, first 300)",
		"| 850 µs / 900 µs (OFFER p50 500 µs; n=3) | 340 µs / 390 µs (OFFER p50 200 µs; n=3), 1 failed |",
		"| 253 ms (OFFER 252 ms) | 700 µs (OFFER 300 µs) |",
		"5000; acrouter 80 % + vpnserver 0 %",
		"600 errors: timeout 2; vpnserver 20 %",
		"8.33× | ≥ 5000 |",
		"Skipped for the time budget: cascade: late iperf up 1.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q\n%s", want, out)
		}
	}
}

func TestUpdateKeepsNotes(t *testing.T) {
	f := filepath.Join(t.TempDir(), "RESULTS.md")
	if err := update(f, "first\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(f)
	notes := strings.Replace(string(b), endMarker+"\n", endMarker+"\n\n## Notes kept\n", 1)
	notes = "intro\n" + notes
	if err := os.WriteFile(f, []byte(notes), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := update(f, "second\n"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(f)
	s := string(b)
	if strings.Contains(s, "first") || !strings.Contains(s, beginMarker+"\nsecond\n"+endMarker) ||
		!strings.HasPrefix(s, "intro\n") || !strings.Contains(s, "## Notes kept") || strings.Count(s, beginMarker) != 1 {
		t.Fatalf("update lost or duplicated content:\n%s", s)
	}
}
