package netstack

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

func newTestStack(t *testing.T) *Stack {
	t.Helper()
	st, err := New(newCaptureLink(), Config{MAC: fzRouterMAC, Addr: netip.MustParsePrefix("192.168.30.1/24")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestKeepaliveOptions checks what Accept sets on every forwarded endpoint.
func TestKeepaliveOptions(t *testing.T) {
	st := newTestStack(t)
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	defer ep.Close()
	setKeepalive(ep)
	var idle tcpip.KeepaliveIdleOption
	var intvl tcpip.KeepaliveIntervalOption
	if err := ep.GetSockOpt(&idle); err != nil || time.Duration(idle) != 60*time.Second {
		t.Errorf("idle %v, %v", time.Duration(idle), err)
	}
	if err := ep.GetSockOpt(&intvl); err != nil || time.Duration(intvl) != 30*time.Second {
		t.Errorf("interval %v, %v", time.Duration(intvl), err)
	}
	if n, err := ep.GetSockOptInt(tcpip.KeepaliveCountOption); err != nil || n != 9 {
		t.Errorf("count %d, %v", n, err)
	}
	if !ep.SocketOptions().GetKeepAlive() {
		t.Error("keepalive off")
	}
}

// TestTCPOptions checks the stack tuning that configure documents.
func TestTCPOptions(t *testing.T) {
	st := newTestStack(t)
	var sack tcpip.TCPSACKEnabled
	var rec tcpip.TCPRecovery
	var rcv tcpip.TCPReceiveBufferSizeRangeOption
	var snd tcpip.TCPSendBufferSizeRangeOption
	var mod tcpip.TCPModerateReceiveBufferOption
	for _, o := range []tcpip.GettableTransportProtocolOption{&sack, &rec, &rcv, &snd, &mod} {
		if err := st.s.TransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			t.Fatalf("%T: %v", o, err)
		}
	}
	if !bool(sack) || rec != 0 || !bool(mod) {
		t.Errorf("sack %v recovery %v moderate %v", sack, rec, mod)
	}
	if rcv.Default != 1<<20 || rcv.Max != 1<<20 || snd.Default != 1<<20 || snd.Max != 6<<20 {
		t.Errorf("buffers rcv %+v snd %+v", rcv, snd)
	}
	// Config.MaxTCPReceiveBuffer raises the receive maximum; the default
	// stays.
	big, err := New(newCaptureLink(), Config{MAC: fzRouterMAC, Addr: netip.MustParsePrefix("192.168.30.1/24"), MaxTCPReceiveBuffer: 8 << 20, RACK: true})
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	if err := big.s.TransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil || rcv.Default != 1<<20 || rcv.Max != 8<<20 {
		t.Errorf("MaxTCPReceiveBuffer 8 MiB: rcv %+v, %v", rcv, err)
	}
	if err := big.s.TransportProtocolOption(tcp.ProtocolNumber, &rec); err != nil || rec != tcpip.TCPRACKLossDetection {
		t.Errorf("Config.RACK: recovery %v, %v", rec, err)
	}
	if _, err := New(newCaptureLink(), Config{MAC: fzRouterMAC, Addr: netip.MustParsePrefix("192.168.30.1/24"), MaxTCPReceiveBuffer: 100}); err == nil {
		t.Error("MaxTCPReceiveBuffer 100 accepted")
	}
}

func TestFixOutboundARP(t *testing.T) {
	st := newTestStack(t)
	mk := func(op header.ARPOp, sender netip.Addr) []byte {
		f := make([]byte, ethHeaderLen+header.ARPSize)
		a := header.ARP(f[ethHeaderLen:])
		a.SetIPv4OverEthernet()
		a.SetOp(op)
		copy(a.ProtocolAddressSender(), sender.AsSlice())
		return f
	}
	req := mk(header.ARPRequest, fzForeign)
	if !st.ep.fixOutboundARP(req) || netip.AddrFrom4([4]byte(header.ARP(req[ethHeaderLen:]).ProtocolAddressSender())) != fzRouter {
		t.Error("request sender not rewritten to the router address")
	}
	if st.ep.fixOutboundARP(mk(header.ARPReply, fzForeign)) {
		t.Error("spoofed ARP reply allowed")
	}
	if !st.ep.fixOutboundARP(mk(header.ARPReply, fzRouter)) {
		t.Error("ARP reply for the router address dropped")
	}
}

// orderLink records frames; WriteFrames is slow so the queue fills.
type orderLink struct {
	*captureLink
	mu  sync.Mutex
	got []uint32
}

func (l *orderLink) WriteFrames(frames [][]byte) error {
	time.Sleep(50 * time.Microsecond) // a slow link (this is the condition under test, not a wait)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range frames {
		l.got = append(l.got, binary.BigEndian.Uint32(f))
	}
	return nil
}

// TestWriteBackpressure: a sender that outruns the Link is slowed down, not
// dropped, and frames keep their order across the writer goroutine and
// senders that flush for themselves.
func TestWriteBackpressure(t *testing.T) {
	l := &orderLink{captureLink: newCaptureLink()}
	var ctr linkCounters
	e := newLinkEndpoint(l, tcpip.LinkAddress(fzRouterMAC), tcpip.AddrFrom4(fzRouter.As4()), 1500, 0, slog.New(slog.DiscardHandler), &ctr)
	e.start()
	const n = 5 * writeQueueFrames
	f := make([]byte, 60)
	for i := uint32(0); i < n; i++ {
		binary.BigEndian.PutUint32(f, i)
		if err := e.enqueueFrames([][]byte{f}); err != nil {
			t.Fatal(err)
		}
	}
	e.Close()
	<-e.writerDone
	l.Close()
	<-e.readerDone
	if len(l.got) != n || ctr.dropQueueFull.Load() != 0 {
		t.Fatalf("link got %d of %d frames, %d dropped", len(l.got), n, ctr.dropQueueFull.Load())
	}
	for i, v := range l.got {
		if v != uint32(i) {
			t.Fatalf("frame %d carries %d: reordered", i, v)
		}
	}
	if err := e.enqueueFrames([][]byte{f}); err == nil {
		t.Error("enqueue after Close succeeded")
	}
}
