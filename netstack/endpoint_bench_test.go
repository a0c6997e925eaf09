package netstack

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// countLink counts written frames and blocks reads until closed.
type countLink struct {
	*captureLink
	frames atomic.Uint64
}

func (l *countLink) WriteFrames(f [][]byte) error {
	l.frames.Add(uint64(len(f)))
	return nil
}

// BenchmarkFrames measures the link endpoint with the gVisor stack behind
// it: inbound frames through deliver (filtered early, or a UDP datagram up
// to a socket) and outbound datagrams through WritePackets and the writer.
func BenchmarkFrames(b *testing.B) {
	newStack := func(b *testing.B) (*Stack, *countLink) {
		l := &countLink{captureLink: newCaptureLink()}
		st, err := New(l, Config{MAC: fzRouterMAC, Addr: netip.MustParsePrefix("192.168.30.1/24")})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		return st, l
	}
	b.Run("inbound-filtered", func(b *testing.B) {
		st, _ := newStack(b)
		f := fzL4(fzForeign, 17, udpSeg(1, 2, 512), 6)
		f[5] = 0x99 // another host's MAC
		b.SetBytes(int64(len(f)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			st.ep.deliver(f)
		}
	})
	b.Run("inbound-udp", func(b *testing.B) {
		st, _ := newStack(b)
		pc, err := st.ListenUDP(9)
		if err != nil {
			b.Fatal(err)
		}
		var got atomic.Uint64
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
				got.Add(1)
			}
		}()
		f := fzL4(fzRouter, 17, udpSeg(1000, 9, 512), 6)
		b.SetBytes(int64(len(f)))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			st.ep.deliver(f)
		}
		b.StopTimer()
		pc.Close()
	})
	b.Run("outbound-udp", func(b *testing.B) {
		st, l := newStack(b)
		host := tcpip.AddrFrom4(fzHost.As4())
		if err := st.s.AddStaticNeighbor(nicID, ipv4.ProtocolNumber, host, tcpip.LinkAddress(fzHostMAC)); err != nil {
			b.Fatal(err)
		}
		pc, err := st.ListenUDP(9)
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(fzHost, 1000))
		msg := make([]byte, 512)
		b.SetBytes(int64(len(msg) + 42))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := pc.WriteTo(msg, dst); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(l.frames.Load())/float64(b.N), "frames/op")
	})
}

func udpSeg(sport, dport uint16, n int) []byte {
	u := make([]byte, 8+n)
	u[0], u[1], u[2], u[3] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	u[4], u[5] = byte(len(u)>>8), byte(len(u))
	return u
}
