package dhcp

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// stateVersion is the StateFile format version.
const stateVersion = 1

// maxStateFileSize bounds what load reads (one line of JSON per lease is
// about 150 bytes; MaxPoolSize leases fit).
const maxStateFileSize = 256 << 20

// saveInterval is the minimum time between two StateFile writes.
const saveInterval = time.Second

type stateFile struct {
	Version int          `json:"version"`
	Leases  []stateLease `json:"leases"`
	// Guard is the starvation defence's bucket levels (guard.go), so that a
	// restart does not hand a flood a second budget of full leases.
	Guard *stateGuard `json:"guard,omitempty"`
}

type stateGuard struct {
	At         time.Time `json:"at"`
	NewClients *float64  `json:"new_clients,omitempty"` // tokens; absent = unlimited
	FullLeases *float64  `json:"full_leases,omitempty"`
}

func saveBucket(b *bucket, now time.Time) *float64 {
	if b == nil {
		return nil
	}
	b.refill(now)
	v := b.tokens
	return &v
}

// restoreBucket sets b to the saved level, refilled from at on next use.
func restoreBucket(b *bucket, v *float64, at, now time.Time) {
	if b == nil || v == nil || math.IsNaN(*v) {
		return
	}
	b.tokens = min(b.burst, max(0, *v))
	b.last = at
	if at.After(now) || at.IsZero() {
		b.last = now // the clock went back: refill from now
	}
}

type stateLease struct {
	MAC      string    `json:"mac"`
	ClientID string    `json:"client_id,omitempty"` // hex
	IP       string    `json:"ip"`
	Hostname string    `json:"hostname,omitempty"`
	Expiry   time.Time `json:"expiry"`
	// Probation marks a probation lease (guard.go); absent in files of
	// earlier versions, which held full leases only.
	Probation bool `json:"probation,omitempty"`
}

func (s *Server) markDirty() {
	if s.cfg.StateFile == "" {
		return
	}
	s.dirty.Store(true)
	select {
	case s.saveCh <- struct{}{}:
	default:
	}
}

// saver writes the state file after changes, at most once per saveInterval.
func (s *Server) saver() {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.saveCh:
		}
		if err := s.save(); err != nil {
			s.rl.warn(s.log, "save", "dhcp: cannot save leases", "file", s.cfg.StateFile, "err", err)
		}
		t := time.NewTimer(saveInterval)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// save writes bound, unexpired leases atomically if anything changed.
func (s *Server) save() error {
	if s.cfg.StateFile == "" || !s.dirty.Swap(false) {
		return nil
	}
	s.mu.Lock()
	now := s.d.now()
	st := stateFile{Version: stateVersion, Leases: []stateLease{}, Guard: &stateGuard{At: now.UTC(),
		NewClients: saveBucket(s.pool.newClients, now), FullLeases: saveBucket(s.pool.fullLeases, now)}}
	for _, l := range s.pool.byKey {
		if l.state != StateBound || !l.active(now) {
			continue
		}
		st.Leases = append(st.Leases, stateLease{
			MAC: l.mac.String(), ClientID: hex.EncodeToString(l.clientID),
			IP: u2a(l.ip).String(), Hostname: l.hostname, Expiry: l.expiry.UTC(), Probation: l.probation,
		})
	}
	s.mu.Unlock()
	if err := writeFileAtomic(s.cfg.StateFile, st); err != nil {
		s.dirty.Store(true)
		s.c.saveErr.Add(1)
		return err
	}
	return nil
}

func writeFileAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("dhcp: encode leases: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("dhcp: save leases: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("dhcp: save leases: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("dhcp: save leases to %s: %w", path, err)
	}
	return nil
}

// load reads the state file into the pool, dropping expired leases and
// leases that no longer fit the configuration. It returns how many loaded.
func (s *Server) load() (int, error) {
	f, err := os.Open(s.cfg.StateFile)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var st stateFile
	if err := json.NewDecoder(io.LimitReader(f, maxStateFileSize)).Decode(&st); err != nil {
		return 0, fmt.Errorf("dhcp: decode %s: %w", s.cfg.StateFile, err)
	}
	if st.Version != stateVersion {
		return 0, fmt.Errorf("dhcp: %s has version %d, want %d", s.cfg.StateFile, st.Version, stateVersion)
	}
	now := s.d.now()
	n := 0
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := st.Guard; g != nil {
		restoreBucket(s.pool.newClients, g.NewClients, g.At, now)
		restoreBucket(s.pool.fullLeases, g.FullLeases, g.At, now)
	}
	for _, sl := range st.Leases {
		if !now.Before(sl.Expiry) {
			continue
		}
		hw, err1 := net.ParseMAC(sl.MAC)
		ip, err2 := netip.ParseAddr(sl.IP)
		cid, err3 := hex.DecodeString(sl.ClientID)
		if err1 != nil || err2 != nil || err3 != nil || !ip.Is4() {
			s.log.Warn("dhcp: skipping bad lease in state file", "mac", sl.MAC, "ip", sl.IP)
			continue
		}
		if len(cid) == 0 {
			cid = nil
		}
		key := "hw:" + hw.String()
		if cid != nil {
			key = "id:" + hex.EncodeToString(cid)
		}
		u := a4(ip)
		if !s.pool.usable(u, key, hw.String(), now) {
			s.log.Info("dhcp: dropping stored lease that no longer fits the configuration", "mac", hw, "ip", ip)
			continue
		}
		if r, has := s.d.reservedByMAC[hw.String()]; has && r != u {
			continue // the client now has a reservation elsewhere
		}
		l := s.pool.assign(key, hw, cid, u, sanitizeHostname(sl.Hostname), StateBound, sl.Expiry)
		l.expiry = sl.Expiry
		if sl.Probation && s.d.probation > 0 {
			l.probation, l.boundAt = true, sl.Expiry.Add(-s.d.probation)
		}
		n++
	}
	return n, nil
}
