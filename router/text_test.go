package router

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestJSONAndTextForms(t *testing.T) {
	var cfg struct{ Rules []Rule }
	in := `{"Rules": ["deny tcp to 10.0.0.0/8 port 22", "allow udp from 192.168.30.0/24"]}`
	if err := json.Unmarshal([]byte(in), &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Rules) != 2 || cfg.Rules[0].PortLo != 22 || cfg.Rules[1].Proto != ProtoUDP {
		t.Fatalf("decoded %+v", cfg.Rules)
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"Rules":["deny tcp to 10.0.0.0/8 port 22","allow udp from 192.168.30.0/24"]}`; string(out) != want {
		t.Fatalf("encoded %s, want %s", out, want)
	}
	if err := json.Unmarshal([]byte(`{"Rules": ["deny tcp to nowhere"]}`), &cfg); err == nil || !strings.Contains(err.Error(), "nowhere") {
		t.Fatalf("bad rule error: %v", err)
	}
	if _, err := json.Marshal(Rule{Action: Deny, Proto: ProtoICMP, PortLo: 1, PortHi: 1}); err == nil {
		t.Fatal("encoded an invalid rule")
	}
	f := Flow{ID: 1, Proto: ProtoTCP, State: StateHalfClosed, Client: netip.MustParseAddrPort("10.0.0.1:5"), Created: time.Unix(0, 0).UTC()}
	b, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"Proto":"tcp"`, `"State":"half-closed"`, `"Client":"10.0.0.1:5"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("flow JSON %s lacks %s", b, want)
		}
	}
	var p Proto
	if err := p.UnmarshalText([]byte("ICMP")); err != nil || p != ProtoICMP {
		t.Errorf("Proto.UnmarshalText: %v %v", p, err)
	}
	if err := p.UnmarshalText([]byte("sctp")); err == nil {
		t.Error("accepted sctp")
	}
}
