// Command tcpbench is acrouter's load generator for `make bench`. It runs in a
// client namespace of the lab (and, in serve mode, in the LAN namespace) and
// measures what a router between the two costs a TCP or DNS client:
//
//	tcpbench serve   -l :9000                      echo server (bounded lifetime)
//	tcpbench connect -a H:P -n 300 -max 12s        sequential TCP connects: handshake latency
//	tcpbench cps     -a H:P -c 32 -d 3s            new connections/s with C concurrent workers
//	tcpbench rr      -a H:P -n 5000 -s 64          request/response latency on one connection
//	tcpbench hold    -a H:P -n 4096 -ready FILE    open N concurrent sessions, verify, hold, verify
//	tcpbench dns     -s H:53 -n 500 -mode miss|hit DNS query latency over UDP
//	tcpbench dhcp    -i eth0 -n 10                 DHCP DISCOVER→OFFER→REQUEST→ACK on a raw socket (root)
//
// Every client mode is bounded in time (-max or -d) and prints exactly one
// JSON object on stdout; progress notes go to stderr. Nothing here retries
// without a bound or sleeps to wait for an event it could await.
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	modes := map[string]func([]string) (any, error){
		"serve":   runServe,
		"connect": runConnect,
		"cps":     runCPS,
		"rr":      runRR,
		"hold":    runHold,
		"dns":     runDNS,
		"dhcp":    runDHCP,
	}
	f, ok := modes[os.Args[1]]
	if !ok {
		usage()
	}
	res, err := f(os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "tcpbench %s: %v\n", os.Args[1], err)
		_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"mode": os.Args[1], "error": err.Error()})
		os.Exit(1)
	}
	if res != nil {
		if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: tcpbench serve|connect|cps|rr|hold|dns|dhcp [flags]  (tcpbench MODE -h for flags)")
	os.Exit(2)
}
