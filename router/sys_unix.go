//go:build unix

package router

import "syscall"

// pooledReadSupported: host sockets can be read with a raw read(2) once
// the poller says they are readable (see pooledReader).
const pooledReadSupported = true

func rawRead(fd uintptr, b []byte) (int, error) { return syscall.Read(int(fd), b) }

// fdLimit returns the process's soft limit on open files.
func fdLimit() (uint64, bool) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, false
	}
	return uint64(lim.Cur), true
}
