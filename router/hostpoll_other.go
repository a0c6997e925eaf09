//go:build !linux

package router

import (
	"errors"
	"syscall"
)

// hostPoller is Linux-only (epoll); elsewhere idle flows wait for their
// host socket in a goroutine.
type hostPoller struct{}

const hostPollSupported = false

func newHostPoller() (*hostPoller, error) { return nil, errors.ErrUnsupported }

func (p *hostPoller) loop()                                    {}
func (p *hostPoller) close()                                   {}
func (p *hostPoller) watch(syscall.RawConn, func()) *hostWatch { return nil }

type hostWatch struct{}

func (w *hostWatch) arm() (readable, ok bool) { return false, false }
func (w *hostWatch) stop()                    {}
