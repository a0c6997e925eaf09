//go:build !unix

package router

import "errors"

const pooledReadSupported = false

func rawRead(fd uintptr, b []byte) (int, error) { return 0, errors.ErrUnsupported }

func fdLimit() (uint64, bool) { return 0, false }
