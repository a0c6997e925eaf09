package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestHelpDocumentsEveryFlag(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"--server host:port", "--hub", "--user", "--password-file", "--state-dir",
		"--server-cert-sha256", "--insecure-skip-verify", "--ip", "[router.ip]", "(default 192.168.30.1/24)",
		"--max-sessions", "--rule", "--dhcp-route", "--dns-upstream", "--status", "--log-format", "--config", "ACROUTER_PASSWORD"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestCommandLineErrors(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--no-such-flag"}, 2, "flag provided but not defined"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"--server", "h:1", "--hub", "H"}, 2, "hub.user (--user)"},
		{[]string{"--server", "h:1", "--hub", "H", "--user", "u", "--password", "x"}, 2, "not defined"},
	}
	for _, tc := range cases {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "acrouter ") {
		t.Errorf("version: %d %q", code, out.String())
	}
}
