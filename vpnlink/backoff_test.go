package vpnlink

import (
	"errors"
	"testing"
	"time"
)

func TestBackoffDelay(t *testing.T) {
	lo, hi := 500*time.Millisecond, 10*time.Second
	for attempt, want := range []time.Duration{500, 1000, 2000, 4000, 8000, 10000, 10000} {
		want *= time.Millisecond
		if got := backoffDelay(lo, hi, attempt, false, 0); got != want/2 {
			t.Errorf("attempt %d r=0: %v, want %v", attempt, got, want/2)
		}
		if got := backoffDelay(lo, hi, attempt, false, 1); got != want {
			t.Errorf("attempt %d r=1: %v, want %v", attempt, got, want)
		}
	}
	// No overflow for huge attempt numbers.
	if got := backoffDelay(lo, hi, 200, false, 1); got != hi {
		t.Errorf("attempt 200: %v", got)
	}
	if got := backoffDelay(lo, hi, 0, true, 0); got != hi {
		t.Errorf("permanent r=0: %v", got)
	}
	if got := backoffDelay(lo, hi, 0, true, 1); got != hi*9/10 {
		t.Errorf("permanent r=1: %v", got)
	}
}

func TestServerErrorMessages(t *testing.T) {
	for code := range codes {
		e := &ServerError{Code: code, Hub: "HUB", User: "bob"}
		msg := e.Error()
		if len(msg) < 30 || containsAny(msg, "%!", "EXTRA", "MISSING") {
			t.Errorf("code %d: bad message %q", code, msg)
		}
		if !errors.Is(e, codes[code].sentinel) {
			t.Errorf("code %d does not match its sentinel", code)
		}
	}
	if msg := (&ServerError{Code: 999}).Error(); msg == "" {
		t.Error("unknown code has no message")
	}
	if errors.Is(&ServerError{Code: 999}, ErrAuthFailed) {
		t.Error("unknown code matched ErrAuthFailed")
	}
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		for i := 0; i+len(sub) <= len(s); i++ {
			if s[i:i+len(sub)] == sub {
				return true
			}
		}
	}
	return false
}
