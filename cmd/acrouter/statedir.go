package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// stateDir holds what acrouter keeps between runs: the router MAC, the known
// hub certificates (vpnlink's store) and the DHCP leases.
type stateDir string

// openStateDir creates the directory (mode 0700) if needed.
func openStateDir(path string) (stateDir, error) {
	if path == "" {
		d, err := defaultStateDir()
		if err != nil {
			return "", err
		}
		path = d
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return "", fmt.Errorf("state directory: %w", err)
	}
	return stateDir(path), nil
}

func (d stateDir) path(name string) string { return filepath.Join(string(d), name) }

func (d stateDir) leasesFile() string { return d.path("leases.json") }

// routerMAC returns the MAC kept in the state directory, generating a random
// locally administered unicast address on first use.
func (d stateDir) routerMAC() (net.HardwareAddr, error) {
	p := d.path("mac")
	b, err := os.ReadFile(p)
	if err == nil {
		mac, perr := net.ParseMAC(strings.TrimSpace(string(b)))
		if perr != nil || len(mac) != 6 {
			return nil, fmt.Errorf("state file %s holds %q, not a MAC address: fix or delete it", p, strings.TrimSpace(string(b)))
		}
		return mac, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("state: %w", err)
	}
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return nil, err
	}
	mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
	if err := writeFileAtomic(p, []byte(mac.String()+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	return mac, nil
}

// writeFileAtomic writes through a temporary file and a rename, so a crash
// leaves either the old or the new content.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
