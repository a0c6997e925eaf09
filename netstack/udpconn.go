package netstack

import (
	"errors"
	"net"
	"os"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpConn is the net.Conn handed out by UDPRequest.Accept: a connected
// gVisor UDP endpoint (like gonet's UDPConn) plus WaitReadable, Readable
// and OnReadable (as tcpConn), so that a flow's reader need hold neither a
// datagram buffer nor a goroutine while no datagram is queued.
type udpConn struct {
	epConn
}

func newUDPConn(wq *waiter.Queue, ep tcpip.Endpoint) *udpConn {
	return &udpConn{epConn{ep: ep, wq: wq, network: "udp", readable: waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr}}
}

// Read reads one datagram into b; a datagram longer than b is truncated
// (the rest is lost, as with a UDP socket).
func (c *udpConn) Read(b []byte) (int, error) { return c.read(b) }

// Write sends b as one datagram to the flow's source.
func (c *udpConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wdl.expired() {
		return 0, c.opError("write", os.ErrDeadlineExceeded)
	}
	var (
		entry   waiter.Entry
		ready   <-chan struct{}
		expired <-chan struct{}
	)
	for {
		c.pl.b = b
		n, err := c.ep.Write(&c.pl, tcpip.WriteOptions{})
		c.pl.b = nil
		switch err.(type) {
		case nil:
			return int(n), nil
		case *tcpip.ErrWouldBlock:
			if ready == nil {
				entry, ready = waiter.NewChannelEntry(waiter.WritableEvents)
				c.wq.EventRegister(&entry)
				defer c.wq.EventUnregister(&entry)
				expired = c.wdl.channel()
				continue
			}
			select {
			case <-expired:
				return 0, c.opError("write", os.ErrDeadlineExceeded)
			case <-ready:
			}
		case *tcpip.ErrClosedForSend:
			return 0, c.opError("write", net.ErrClosed)
		default:
			return 0, c.opError("write", errors.New(err.String()))
		}
	}
}
