// Package netstacktest provides in-memory fixtures for code built on
// netstack: a frame Pipe and Host, a second gVisor stack acting as a client
// machine on the hub.
package netstacktest

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/acrouter/acrouter/netstack"
)

// PipeLink is one end of a Pipe. It satisfies netstack.Link and io.Closer.
type PipeLink struct{}

// Pipe returns two connected in-memory frame links: frames written to one
// are read from the other. Each direction buffers a bounded number of frames
// and drops (counts) frames when full, like a real hub. Closing either end
// closes both.
func Pipe() (*PipeLink, *PipeLink) { return &PipeLink{}, &PipeLink{} }

// ReadFrame implements netstack.Link.
func (p *PipeLink) ReadFrame(b []byte) (int, error) { return 0, errors.ErrUnsupported }

// WriteFrames implements netstack.Link.
func (p *PipeLink) WriteFrames(frames [][]byte) error { return errors.ErrUnsupported }

// Close closes both ends; it is idempotent.
func (p *PipeLink) Close() error { return nil }

// Host is a client machine on the hub: a gVisor stack with one NIC.
type Host struct{}

// NewHost starts a client stack on link with Ethernet address mac, address
// prefix (e.g. 192.168.30.10/24) and default gateway gw. Close closes link
// if it implements io.Closer.
func NewHost(link netstack.Link, mac net.HardwareAddr, prefix netip.Prefix, gw netip.Addr) (*Host, error) {
	return nil, errors.ErrUnsupported
}

// DialTCP connects to dst through the gateway.
func (h *Host) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return nil, errors.ErrUnsupported
}

// DialUDP returns a connected UDP socket to dst.
func (h *Host) DialUDP(dst netip.AddrPort) (net.Conn, error) { return nil, errors.ErrUnsupported }

// Ping sends one ICMP echo request to dst and waits for the reply or ctx.
func (h *Host) Ping(ctx context.Context, dst netip.Addr) error { return errors.ErrUnsupported }

// Close stops the host stack and waits for its goroutines.
func (h *Host) Close() error { return nil }
