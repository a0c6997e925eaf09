package router

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/acrouter/acrouter/netstack"
)

// tcpBufSize is the copy buffer per TCP direction (32 KiB, as io.Copy).
// Buffers are pooled and idle flows hold none: the host→client direction
// takes one only while a read is ready (pooledReader), the client→host
// direction keeps one while data flows and falls back to a 1 KiB buffer
// after a second without data (streamReader).
const tcpBufSize = 32 << 10

var tcpBufPool = sync.Pool{New: func() any { b := make([]byte, tcpBufSize); return &b }}

// tcpRequest is the part of *netstack.TCPRequest the router uses.
type tcpRequest interface {
	Accept() (netstack.TCPConn, error)
	Reject(how netstack.Reject)
}

// halfCloser is implemented by host connections that support half-close
// (*net.TCPConn).
type halfCloser interface{ CloseWrite() error }

var (
	errDialLimit       = errors.New("too many dials in flight (MaxInFlightDials)")
	errClientDialLimit = errors.New("too many dials in flight for this client (MaxInFlightDialsPerClient)")
)

func (r *Router) onTCP(req *netstack.TCPRequest) { r.handleTCP(req.Src, req.Dst, req) }

// handleTCP decides a SYN from src to dst: ACL, limits, dial the host first,
// then complete the client's handshake and splice the two connections. It
// runs in the stack's per-request goroutine and keeps it for the client→host
// copy.
func (r *Router) handleTCP(src, dst netip.AddrPort, req tcpRequest) {
	if !r.enter() {
		r.refused[RefusedClosing].Add(1)
		req.Reject(netstack.RejectRST)
		return
	}
	defer r.wg.Done()
	if ok, _ := r.acl.Load().check(ProtoTCP, src.Addr(), dst); !ok {
		r.refuse(RefusedACL, ProtoTCP, src, dst, nil)
		req.Reject(netstack.RejectAdminProhibited)
		return
	}
	f, _, ok := r.newFlow(ProtoTCP, src, dst)
	if !ok {
		req.Reject(netstack.RejectRST)
		return
	}
	f.setState(StateDialing)
	host, err := r.dialTCP(f)
	if err != nil {
		why, how := classifyDialError(err)
		if errors.Is(err, errDialLimit) {
			why, how = RefusedDialLimit, netstack.RejectRST
		} else if errors.Is(err, errClientDialLimit) {
			why, how = RefusedClientDialLimit, netstack.RejectRST
		} else if f.ctx.Err() != nil {
			why, how = RefusedClosing, netstack.RejectRST
		}
		r.discard(f)
		r.refuse(why, ProtoTCP, src, dst, err)
		req.Reject(how)
		return
	}
	if f.ctx.Err() != nil { // Close began while we dialed
		host.Close()
		r.discard(f)
		r.refuse(RefusedClosing, ProtoTCP, src, dst, nil)
		req.Reject(netstack.RejectRST)
		return
	}
	client, err := req.Accept()
	if err != nil {
		host.Close()
		r.discard(f)
		r.refuse(r.acceptRefusal(), ProtoTCP, src, dst, err)
		return
	}
	r.opened(f)
	r.spliceTCP(f, client, host)
}

// discard ends a flow that never opened: no NAT log line.
func (r *Router) discard(f *flow) {
	f.cancel(closeReason("refused"))
	f.setState(StateClosed)
	r.table.finish(f)
}

// dialTCP connects to f.dest within DialTimeout, under the dial caps.
func (r *Router) dialTCP(f *flow) (net.Conn, error) {
	n := r.dialsInFlight.Add(1)
	defer r.dialsInFlight.Add(-1)
	if n > int64(r.cfg.MaxInFlightDials) {
		return nil, errDialLimit
	}
	if !r.table.beginDial(f, r.cfg.MaxInFlightDialsPerClient) {
		return nil, errClientDialLimit
	}
	defer r.table.endDial(f)
	ctx, cancel := context.WithTimeout(f.ctx, r.cfg.DialTimeout)
	defer cancel()
	return r.dial(ctx, "tcp", f.dest.String())
}

// spliceTCP copies both ways until both directions have finished or the
// flow is ended (error, idle, Close). A FIN in one direction half-closes
// the other side (CloseWrite) and keeps the reverse direction open.
func (r *Router) spliceTCP(f *flow, client netstack.TCPConn, host net.Conn) {
	closeBoth := func() {
		client.Close()
		host.Close()
	}
	stop := r.onEnd(f, closeBoth)
	idle := r.startIdleTimer(f, r.cfg.TCPIdleTimeout)
	var pending atomic.Int32
	pending.Store(2)
	done := func() {
		if pending.Add(-1) == 0 {
			idle.stop()
			stop()
			closeBoth()
			r.finish(f, reasonFIN)
		}
	}
	r.wg.Add(1) // inside handleTCP's enter section
	go func() {
		defer r.wg.Done()
		r.copyTCP(f, client, host, false)
		done()
	}()
	r.copyTCP(f, host, client, true)
	done()
}

// copyTCP copies src to dst until EOF (then half-closes dst) or an error
// (then ends the flow). out is the client→host direction.
func (r *Router) copyTCP(f *flow, dst, src net.Conn, out bool) {
	read, free := newChunkReader(src, &tcpBufPool, true)
	defer free()
	bytes, packets := &f.bytesIn, &f.packetsIn
	if out {
		bytes, packets = &f.bytesOut, &f.packetsOut
	}
	for {
		data, release, err := read()
		if len(data) > 0 {
			// Count before writing, so that whoever sees the data also
			// sees it counted.
			f.touch(r.now())
			bytes.Add(uint64(len(data)))
			packets.Add(1)
			_, werr := dst.Write(data)
			release()
			if werr != nil {
				f.abort(connError(werr))
				return
			}
		} else {
			release()
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			if hc, ok := dst.(halfCloser); ok {
				if cerr := hc.CloseWrite(); cerr != nil {
					f.abort(connError(cerr))
					return
				}
			}
			f.state.CompareAndSwap(uint32(StateOpen), uint32(StateHalfClosed))
			return
		}
		f.abort(connError(err))
		return
	}
}

// connError turns a data-path error into a flow close cause: a reset is
// "reset", a closed connection means another path ended the flow already.
func connError(err error) error {
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return closeReason("reset")
	case errors.Is(err, net.ErrClosed):
		return closeReason("closed")
	}
	return err
}
