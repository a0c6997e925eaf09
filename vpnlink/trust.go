package vpnlink

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// KnownHostsFile is the name of the trust-on-first-use store in StateDir.
// Format: one "host:port sha256hex" per line, # comments.
const KnownHostsFile = "known_servers"

// trustMu serializes read-modify-write of known-hosts files within this
// process (several clients may share a StateDir).
var trustMu sync.Mutex

// Fingerprint returns the lower-case hex SHA-256 of a DER certificate.
func Fingerprint(der []byte) string {
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}

// normalizeFingerprint accepts hex with optional colons/spaces, any case.
func normalizeFingerprint(s string) (string, error) {
	s = strings.ToLower(strings.NewReplacer(":", "", " ", "", "-", "").Replace(strings.TrimSpace(s)))
	if b, err := hex.DecodeString(s); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("%w: CertSHA256 must be 64 hex digits (colons allowed)", ErrConfig)
	}
	return s, nil
}

// trust decides whether a server certificate is accepted.
type trust struct {
	server   string // key in the known-hosts file
	pin      string // normalized, or ""
	insecure bool
	file     string // known-hosts path, or "" for no persistence
	// firstSeen remembers the certificate of the first connection when
	// there is neither a pin nor a file, so additional connections and
	// resumes must present the same certificate (like the reference
	// client, ClientAdditionalConnectToServer in src/Cedar/Protocol.c).
	mu        sync.Mutex
	firstSeen string
}

// verify checks the leaf certificate; it returns the fingerprint.
func (t *trust) verify(rawCerts [][]byte) (string, error) {
	if len(rawCerts) == 0 {
		return "", fmt.Errorf("%w: server sent no certificate", ErrTLS)
	}
	got := Fingerprint(rawCerts[0])
	if _, err := x509.ParseCertificate(rawCerts[0]); err != nil {
		return got, fmt.Errorf("%w: server certificate unparsable: %v", ErrTLS, err)
	}
	if t.insecure {
		return got, nil
	}
	if t.pin != "" {
		if got != t.pin {
			return got, &CertMismatchError{Server: t.server, Want: t.pin, Got: got, Source: "Config.CertSHA256"}
		}
		return got, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.firstSeen != "" {
		if got != t.firstSeen {
			src := "the first connection of this process"
			if t.file != "" {
				src = t.file
			}
			return got, &CertMismatchError{Server: t.server, Want: t.firstSeen, Got: got, Source: src}
		}
		return got, nil
	}
	if t.file != "" {
		want, err := lookupKnown(t.file, t.server)
		if err != nil {
			return got, err
		}
		if want != "" && want != got {
			return got, &CertMismatchError{Server: t.server, Want: want, Got: got, Source: t.file}
		}
		if want == "" {
			if err := rememberKnown(t.file, t.server, got); err != nil {
				return got, err
			}
		}
	}
	t.firstSeen = got
	return got, nil
}

func lookupKnown(file, server string) (string, error) {
	trustMu.Lock()
	defer trustMu.Unlock()
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read known servers: %w", err)
	}
	return findKnown(b, server), nil
}

func findKnown(b []byte, server string) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") && strings.EqualFold(f[0], server) {
			return strings.ToLower(f[1])
		}
	}
	return ""
}

// rememberKnown appends server → fp, rewriting the file atomically
// (temp file + fsync + rename).
func rememberKnown(file, server, fp string) error {
	trustMu.Lock()
	defer trustMu.Unlock()
	old, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read known servers: %w", err)
	}
	if findKnown(old, server) != "" { // raced with another client
		return nil
	}
	if len(old) == 0 {
		old = []byte("# acrouter: SoftEther server certificates (SHA-256 of DER), trusted on first use\n")
	} else if old[len(old)-1] != '\n' {
		old = append(old, '\n')
	}
	data := fmt.Appendf(old, "%s %s\n", server, fp)
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".known_servers-*")
	if err != nil {
		return fmt.Errorf("write known servers: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write known servers: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write known servers: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write known servers: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("write known servers: %w", err)
	}
	return nil
}
