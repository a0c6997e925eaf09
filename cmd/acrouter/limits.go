package main

import (
	"fmt"
	"syscall"
)

// fdReserve is what acrouter keeps for itself besides flows: hub link,
// listeners, status API, logs, DNS upstream sockets.
const fdReserve = 256

// checkFDLimit compares the session cap with the open-file limit. Each NAT
// flow holds one host socket. The Go runtime has already raised the soft
// limit to the hard limit at start; nothing more can be done unprivileged.
func checkFDLimit(maxSessions int) (limit uint64, warning string) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, ""
	}
	if uint64(maxSessions)+fdReserve > rl.Cur {
		return rl.Cur, fmt.Sprintf("--max-sessions %d exceeds what this process may open: the open-file limit is %d (hard limit %d), so at most about %d sessions fit; "+
			"flows beyond that are refused (reason fd-limit). Raise the limit (ulimit -n, systemd LimitNOFILE=) or lower --max-sessions",
			maxSessions, rl.Cur, rl.Max, int64(rl.Cur)-fdReserve)
	}
	return rl.Cur, ""
}
