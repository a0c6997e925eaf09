package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// runServe echoes every byte it reads on every accepted connection until
// SIGTERM/SIGINT or -max has passed. It returns (and so exits) with a summary.
func runServe(args []string) (any, error) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("l", ":9000", "listen address")
	life := fs.Duration("max", 40*time.Minute, "lifetime bound; the server exits after it")
	_ = fs.Parse(args)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *life)
	defer cancel()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "tcpbench: echo server on %s (lifetime %v)\n", ln.Addr(), *life)
	s := &echoServer{conns: map[net.Conn]struct{}{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.acceptLoop(ln)
	}()
	<-ctx.Done()
	ln.Close()
	<-done
	s.closeAll()
	s.wg.Wait()
	return map[string]any{"mode": "serve", "accepted": s.accepted.Load(), "peak": s.peak.Load(),
		"accept_errors": s.acceptErrs.Load()}, nil
}

type echoServer struct {
	wg                         sync.WaitGroup
	mu                         sync.Mutex
	conns                      map[net.Conn]struct{}
	accepted, peak, acceptErrs atomic.Int64
}

var echoBufs = sync.Pool{New: func() any { b := make([]byte, 2048); return &b }}

func (s *echoServer) acceptLoop(ln net.Listener) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: back off (bounded) instead of spinning.
			s.acceptErrs.Add(1)
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.accepted.Add(1)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		if n := int64(len(s.conns)); n > s.peak.Load() {
			s.peak.Store(n)
		}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.echo(c)
	}
}

func (s *echoServer) echo(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	bp := echoBufs.Get().(*[]byte)
	defer echoBufs.Put(bp)
	_, _ = io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, *bp)
}

func (s *echoServer) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}
