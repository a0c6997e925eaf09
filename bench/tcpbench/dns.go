package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// DNS wire format facts (RFC 1035 §4.1): 12-byte header (ID, flags, QD, AN,
// NS, AR counts), then the question: labels, QTYPE, QCLASS.
const (
	dnsHeaderLen = 12
	dnsTypeA     = 1
	dnsClassIN   = 1
	dnsFlagQR    = 0x8000
	dnsFlagRD    = 0x0100
)

// buildQuery appends a recursive query for name/type A with the given id.
func buildQuery(b []byte, id uint16, name string) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, id)
	b = binary.BigEndian.AppendUint16(b, dnsFlagRD)
	b = binary.BigEndian.AppendUint16(b, 1) // QDCOUNT
	b = append(b, 0, 0, 0, 0, 0, 0)         // AN, NS, AR
	for l := range strings.SplitSeq(strings.TrimSuffix(name, "."), ".") {
		if len(l) == 0 || len(l) > 63 {
			return nil, fmt.Errorf("dns: bad label %q in %q", l, name)
		}
		b = append(b, byte(len(l)))
		b = append(b, l...)
	}
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, dnsTypeA)
	b = binary.BigEndian.AppendUint16(b, dnsClassIN)
	if len(b) > 512 {
		return nil, fmt.Errorf("dns: query for %q too long", name)
	}
	return b, nil
}

// dnsReply is what the benchmark needs from a response.
type dnsReply struct {
	ID      uint16
	RCode   int
	Answers int
}

var errNotReply = errors.New("dns: not a reply to the query")

// parseReply checks that p answers query q (same ID, QR set, same question,
// compared case-insensitively) and returns its rcode and answer count. It
// never reads beyond p.
func parseReply(p, q []byte) (dnsReply, error) {
	if len(p) < dnsHeaderLen || len(q) < dnsHeaderLen {
		return dnsReply{}, fmt.Errorf("dns: short message (%d bytes)", len(p))
	}
	r := dnsReply{
		ID:      binary.BigEndian.Uint16(p),
		RCode:   int(binary.BigEndian.Uint16(p[2:]) & 0xf),
		Answers: int(binary.BigEndian.Uint16(p[6:])),
	}
	flags := binary.BigEndian.Uint16(p[2:])
	if r.ID != binary.BigEndian.Uint16(q) || flags&dnsFlagQR == 0 {
		return r, errNotReply
	}
	if binary.BigEndian.Uint16(p[4:]) != 1 {
		return r, fmt.Errorf("dns: reply has %d questions: %w", binary.BigEndian.Uint16(p[4:]), errNotReply)
	}
	question := q[dnsHeaderLen:]
	if len(p) < dnsHeaderLen+len(question) || !strings.EqualFold(string(p[dnsHeaderLen:dnsHeaderLen+len(question)]), string(question)) {
		return r, fmt.Errorf("dns: question differs: %w", errNotReply)
	}
	return r, nil
}

// DNSResult is the outcome of the DNS latency test.
type DNSResult struct {
	Mode     string         `json:"mode"`
	Server   string         `json:"server"`
	Kind     string         `json:"kind"` // miss: a new name per query; hit: one name repeated
	Names    string         `json:"names"`
	Sent     int            `json:"sent"`
	Answered int            `json:"answered"`
	RCodes   map[string]int `json:"rcodes"`
	Errors   errCounts      `json:"errors"`
	Elapsed  float64        `json:"elapsed_s"`
	RTT      Latency        `json:"rtt"`
}

var rcodeNames = map[int]string{0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

// runDNS sends sequential A queries over one UDP socket and times each answer.
func runDNS(args []string) (any, error) {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	server := fs.String("s", "", "DNS server host:port")
	n := fs.Int("n", 500, "queries")
	kind := fs.String("mode", "miss", "miss: a new name per query (<random>-<i>.ZONE); hit: -name repeated after one warm-up query")
	zone := fs.String("zone", "lab.test", "zone for miss names")
	name := fs.String("name", "www.lab.test", "name for hit mode")
	timeout := fs.Duration("timeout", time.Second, "per-query timeout")
	bound := fs.Duration("max", 15*time.Second, "overall time bound")
	_ = fs.Parse(args)
	if *kind != "miss" && *kind != "hit" {
		return nil, fmt.Errorf("-mode must be miss or hit")
	}
	c, err := net.Dial("udp", *server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	res := DNSResult{Mode: "dns", Server: *server, Kind: *kind, RCodes: map[string]int{}}
	run := rand.Uint32()
	qname := func(i int) string {
		if *kind == "hit" {
			return *name
		}
		return fmt.Sprintf("b%08x-%d.%s", run, i, *zone)
	}
	res.Names = qname(0)
	deadline := time.Now().Add(*bound)
	buf := make([]byte, 4096)
	q := make([]byte, 0, 512)
	lat := make([]time.Duration, 0, *n)
	first := 0
	if *kind == "hit" {
		first = -1 // one warm-up query fills the cache
	}
	start := time.Now()
	for i := first; i < *n && time.Now().Before(deadline); i++ {
		id := uint16(rand.Uint32())
		if q, err = buildQuery(q[:0], id, qname(i)); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if i >= 0 {
			res.Sent++
		}
		if _, err := c.Write(q); err != nil {
			res.Errors.add(err)
			continue
		}
		_ = c.SetReadDeadline(t0.Add(*timeout))
		for { // skip late replies to earlier queries; bounded by the read deadline
			m, err := c.Read(buf)
			if err != nil {
				if i >= 0 {
					res.Errors.add(err)
				}
				break
			}
			r, err := parseReply(buf[:m], q)
			if errors.Is(err, errNotReply) {
				continue
			}
			if err != nil {
				res.Errors.add(err)
				break
			}
			if i >= 0 {
				lat = append(lat, time.Since(t0))
				rc, ok := rcodeNames[r.RCode]
				if !ok {
					rc = fmt.Sprint(r.RCode)
				}
				res.RCodes[rc]++
			}
			break
		}
	}
	res.Elapsed = time.Since(start).Seconds()
	res.Answered, res.RTT = len(lat), summarize(lat)
	return res, nil
}
