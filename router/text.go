package router

import "fmt"

// Text forms, so that Flows, Stats and Rules encode readably (JSON status
// API) and Rules decode straight from config files (TOML strings).

// MarshalText returns "tcp", "udp", "icmp" or "any".
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText accepts what MarshalText returns.
func (p *Proto) UnmarshalText(b []byte) error {
	v, ok := parseProto(string(b))
	if !ok {
		return fmt.Errorf("router: unknown protocol %q (want tcp, udp, icmp or any)", b)
	}
	*p = v
	return nil
}

// MarshalText returns the state name ("dialing", "open", ...).
func (s FlowState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// MarshalText returns the reason name ("acl", "session-limit", ...).
func (r Refusal) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// MarshalText returns "allow" or "deny".
func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// MarshalText returns the rule in ParseRule's text form.
func (r Rule) MarshalText() ([]byte, error) {
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("router: rule %+v: %w", r, err)
	}
	return []byte(r.String()), nil
}

// UnmarshalText parses the rule with ParseRule.
func (r *Rule) UnmarshalText(b []byte) error {
	v, err := ParseRule(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}
