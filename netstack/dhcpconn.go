package netstack

import (
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// dhcpQueue bounds datagrams read from the two sockets but not yet taken by
// ReadFrom; more are dropped (DHCP clients retransmit).
const dhcpQueue = 64

// dhcpConn is the DHCP server socket. A socket bound to 0.0.0.0:67 would, on
// a NIC that accepts every destination, also swallow unicast datagrams from
// clients to port 67 of foreign hosts, which belong to the UDP handler. So
// it is two sockets: one bound to the router address (unicast renewals;
// every reply is sent from it) and one bound to 255.255.255.255
// (broadcasts from clients without an address), merged into one
// net.PacketConn. Each socket has a reader goroutine owned by the conn;
// Close waits for them.
type dhcpConn struct {
	uni, bc *gonet.UDPConn
	ch      chan dhcpDatagram
	drops   *atomic.Uint64 // datagrams dropped: queue full
	done    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	mu   sync.Mutex
	rdl  time.Time     // guarded by mu: read deadline
	wake chan struct{} // guarded by mu: closed when rdl changes
}

type dhcpDatagram struct {
	b    []byte
	from net.Addr
}

var _ net.PacketConn = (*dhcpConn)(nil)

func (st *Stack) listenDHCP() (*dhcpConn, error) {
	uni, err := st.udpSocket(st.addr)
	if err != nil {
		return nil, err
	}
	bc, err := st.udpSocket(header.IPv4Broadcast)
	if err != nil {
		uni.Close()
		return nil, err
	}
	c := &dhcpConn{uni: uni, bc: bc, ch: make(chan dhcpDatagram, dhcpQueue), drops: &st.fctr.dhcpQueueDrops,
		done: make(chan struct{}), wake: make(chan struct{})}
	c.wg.Add(2)
	go c.readLoop(uni)
	go c.readLoop(bc)
	return c, nil
}

// udpSocket opens a UDP socket on addr:67 with broadcast enabled.
func (st *Stack) udpSocket(addr tcpip.Address) (*gonet.UDPConn, error) {
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, fmt.Errorf("netstack: listen dhcp: %v", terr)
	}
	ep.SocketOptions().SetBroadcast(true)
	if terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Addr: addr, Port: dhcpServerPort}); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("netstack: listen dhcp %v:%d: %v", addr, dhcpServerPort, terr)
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

func (c *dhcpConn) readLoop(s *gonet.UDPConn) {
	defer c.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := s.ReadFrom(buf)
		if err != nil {
			return // closed (by Close or by Stack.Close)
		}
		select {
		case c.ch <- dhcpDatagram{b: append([]byte(nil), buf[:n]...), from: from}:
		case <-c.done:
			return
		default: // queue full: drop (counted; clients retransmit)
			c.drops.Add(1)
		}
	}
}

// ReadFrom implements net.PacketConn.
func (c *dhcpConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		dl, wake := c.rdl, c.wake
		c.mu.Unlock()
		var timer *time.Timer
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, c.opError("read", os.ErrDeadlineExceeded)
			}
			timer = time.NewTimer(d)
			timeout = timer.C
		}
		var (
			n    int
			from net.Addr
			err  error
			ok   = true
		)
		select {
		case d := <-c.ch:
			n, from = copy(p, d.b), d.from
		case <-c.done:
			err = c.opError("read", net.ErrClosed)
		case <-timeout:
			err = c.opError("read", os.ErrDeadlineExceeded)
		case <-wake: // deadline changed: wait again
			ok = false
		}
		if timer != nil {
			timer.Stop()
		}
		if ok {
			return n, from, err
		}
	}
}

func (c *dhcpConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "udp", Addr: c.LocalAddr(), Err: err}
}

// WriteTo implements net.PacketConn; replies leave from the router address.
func (c *dhcpConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, c.opError("write", net.ErrClosed)
	default:
	}
	return c.uni.WriteTo(p, addr)
}

// Close implements net.PacketConn. It waits for the reader goroutines.
func (c *dhcpConn) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.uni.Close()
		c.bc.Close()
	})
	c.wg.Wait()
	return nil
}

// LocalAddr implements net.PacketConn: the router address, port 67.
func (c *dhcpConn) LocalAddr() net.Addr { return c.uni.LocalAddr() }

// SetDeadline implements net.PacketConn.
func (c *dhcpConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.PacketConn.
func (c *dhcpConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	close(c.wake)
	c.wake = make(chan struct{})
	c.mu.Unlock()
	return nil
}

// SetWriteDeadline implements net.PacketConn.
func (c *dhcpConn) SetWriteDeadline(t time.Time) error { return c.uni.SetWriteDeadline(t) }
