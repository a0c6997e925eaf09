package netstack_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/acrouter/acrouter/netstack"
	"github.com/acrouter/acrouter/netstack/netstacktest"
)

// burstLink is a Link with BatchReader: the test hands the stack whole
// bursts of frames (as vpnlink does with what arrived together); frames the
// stack writes go to a pipe the test reads.
type burstLink struct {
	out       netstack.Link
	in        chan [][]byte
	closed    chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	cur       [][]byte
	lent      []byte
}

var _ netstack.BatchReader = (*burstLink)(nil)

func (l *burstLink) ReadFrames(frames [][]byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.cur) == 0 {
		select {
		case b := <-l.in:
			l.cur = b
		case <-l.closed:
			return 0, net.ErrClosed
		}
	}
	n := copy(frames, l.cur)
	l.cur = l.cur[n:]
	return n, nil
}

func (l *burstLink) ReadFrame(p []byte) (int, error) {
	f := make([][]byte, 1)
	if _, err := l.ReadFrames(f); err != nil {
		return 0, err
	}
	return copy(p, f[0]), nil
}

func (l *burstLink) WriteFrames(frames [][]byte) error { return l.out.WriteFrames(frames) }
func (l *burstLink) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func tcpFrame(src, dst netip.AddrPort, seq, ack uint32, flags header.TCPFlags, payload []byte) []byte {
	t := make([]byte, header.TCPMinimumSize+len(payload))
	h := header.TCP(t)
	h.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 65535})
	copy(t[header.TCPMinimumSize:], payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip4(src.Addr()), ip4(dst.Addr()), uint16(len(t)))
	h.SetChecksum(^checksum.Checksum(t, xsum))
	return ethFrame(routerMAC, hostMAC, header.IPv4ProtocolNumber, ipPacket(src.Addr(), dst.Addr(), header.TCPProtocolNumber, 7, 0, 0, t))
}

// TestBatchReaderCoalescesSegments: a burst of in-order segments of one flow
// reaches the handler intact, and the stack acknowledges it as a whole (GRO:
// the TCP layer sees one segment and sends one ACK). A segment with a bad checksum inside a
// burst is dropped and counted; the data after it is not delivered before
// its retransmission.
func TestBatchReaderCoalescesSegments(t *testing.T) {
	checkLeaks(t)
	a, b := netstacktest.Pipe()
	link := &burstLink{out: a, in: make(chan [][]byte, 16), closed: make(chan struct{})}
	st, err := netstack.New(link, netstack.Config{MAC: routerMAC, Addr: routerPfx})
	if err != nil {
		t.Fatal(err)
	}
	frames := make(chan []byte, 1024)
	done := make(chan struct{})
	go func() { // the stack's output; ARP for the client is answered
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, err := b.ReadFrame(buf)
			if err != nil {
				return
			}
			f := append([]byte(nil), buf[:n]...)
			if a, ok := arpOf(f); ok && a.Op() == header.ARPRequest {
				link.in <- [][]byte{arpFrame(header.ARPReply, hostMAC, hostIP, routerMAC, routerIP, routerMAC)}
				continue
			}
			select {
			case frames <- f:
			default:
			}
		}
	}()
	defer func() {
		st.Close()
		b.Close()
		<-done
	}()
	got := make(chan []byte, 1)
	st.SetTCPHandler(func(r *netstack.TCPRequest) {
		c, err := r.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		data, _ := io.ReadAll(c)
		got <- data
	})
	next := func(what string, match func(header.TCP) bool) header.TCP {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case f := <-frames:
				if ip, ok := ipOf(f); ok && ip.Protocol() == uint8(header.TCPProtocolNumber) {
					if h := header.TCP(ip.Payload()); match(h) {
						return h
					}
				}
			case <-timeout:
				t.Fatalf("no %s from the stack", what)
			}
		}
	}
	src := netip.AddrPortFrom(hostIP, 40000)
	const isn = 1000
	link.in <- [][]byte{synFrame(src, foreignTCP, isn)}
	synAck := next("SYN-ACK", func(h header.TCP) bool { return h.Flags() == header.TCPFlagSyn|header.TCPFlagAck })
	ack := synAck.SequenceNumber() + 1

	const segs, size = 12, 1000
	var want []byte
	seg := func(i int) []byte {
		p := bytes.Repeat([]byte{byte('a' + i)}, size)
		binary.BigEndian.PutUint32(p, uint32(i))
		return p
	}
	burst := [][]byte{tcpFrame(src, foreignTCP, isn+1, ack, header.TCPFlagAck, nil)}
	for i := range segs {
		want = append(want, seg(i)...)
		burst = append(burst, tcpFrame(src, foreignTCP, uint32(isn+1+i*size), ack, header.TCPFlagAck, seg(i)))
	}
	segsBefore := st.Stats().TCPSegmentsIn
	link.in <- burst
	h := next("ACK of the burst", func(h header.TCP) bool {
		return h.Flags()&header.TCPFlagAck != 0 && h.AckNumber() != isn+1
	})
	if h.AckNumber() != uint32(isn+1+segs*size) {
		t.Errorf("first data ACK acknowledges %d bytes, want the whole burst of %d", h.AckNumber()-isn-1, segs*size)
	}
	// The pure ACK stays alone; the data segments become one.
	if n := st.Stats().TCPSegmentsIn - segsBefore; n != 2 {
		t.Errorf("the TCP layer saw %d segments for a burst of 1 ACK and %d data segments, want 2 (coalesced)", n, segs)
	}

	// Second burst: segment 1 of 3 has a bad checksum.
	base := uint32(isn + 1 + segs*size)
	bad := tcpFrame(src, foreignTCP, base+size, ack, header.TCPFlagAck, seg(1))
	bad[len(bad)-1] ^= 0xff
	before := st.Stats().DropMalformed
	link.in <- [][]byte{
		tcpFrame(src, foreignTCP, base, ack, header.TCPFlagAck, seg(0)),
		bad,
		tcpFrame(src, foreignTCP, base+2*size, ack, header.TCPFlagAck, seg(2)),
	}
	next("ACK up to the corrupt segment", func(h header.TCP) bool { return h.AckNumber() == base+size })
	if d := st.Stats().DropMalformed - before; d != 1 {
		t.Errorf("DropMalformed grew by %d, want 1", d)
	}
	// Retransmit it, then FIN.
	link.in <- [][]byte{
		tcpFrame(src, foreignTCP, base+size, ack, header.TCPFlagAck, seg(1)),
		tcpFrame(src, foreignTCP, base+3*size, ack, header.TCPFlagAck|header.TCPFlagFin, nil),
	}
	want = append(want, seg(0)...)
	want = append(want, seg(1)...)
	want = append(want, seg(2)...)
	data := <-got
	if !bytes.Equal(data, want) {
		t.Fatalf("handler received %d bytes, want %d (%s)", len(data), len(want), firstDiff(data, want))
	}
}

func firstDiff(a, b []byte) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at %d", i)
		}
	}
	return "one is a prefix of the other"
}
