package dhcp

import (
	"fmt"
	"math"
	"time"
)

// Starvation defence.
//
// A DHCP starvation attack (dhcpstarv, yersinia, DHCPig) sends DISCOVERs,
// and often REQUESTs, from thousands of random MACs, each used once, to tie
// up every pool address. On a virtual hub the server cannot tell which
// session a frame came from, so it cannot cap per port; it can only cap what
// a client it has never seen may take, and take it back if the client does
// not behave like a DHCP client afterwards. Three mechanisms, all O(1) per
// packet and without extra per-client state:
//
//  1. New-client rate cap. A client the server holds no record for (a new
//     MAC or client identifier, not reserved) needs a token from a bucket
//     (NewClientBurst, refilled at NewClientRate) before it is OFFERed an
//     address or bound without an offer. Without a token the request is
//     dropped silently (the client retransmits with back-off, RFC 2131
//     §4.1) and counted in Stats.RateLimited. Known clients, renewals and
//     reserved MACs never need a token.
//  2. Short offer hold (OfferHold, 30 s): an OFFER that is not followed by
//     a REQUEST stops reserving the address after 30 s.
//  3. Probation leases. Binding a client that is not renewing an active
//     lease takes a token from a second bucket (NewClientBurst tokens,
//     refilled at NewClientBurst per LeaseTime) for a full lease; without
//     one the client gets ProbationLease (90 s). Its first renewal from
//     ProbationLease/4 on (clients renew at T1 = half the lease) upgrades it
//     to LeaseTime. A client that never renews loses the address after
//     90 s. A DECLINE from a client that never renewed quarantines the
//     address only until its lease would have ended.
//  4. Broadcast pacing. SoftEther's hub counts, per session, broadcasts
//     with the same source MAC, source IP and destination IP (every DHCP
//     reply to a client without an address shares one such key, and every
//     ARP request of the router another) over 500 ms spans; from 32 per
//     second on it discards them with a probability that doubles each span,
//     all of them once past 128, and decays only while the rate stays low
//     (src/Cedar/Hub.c CheckBroadcastStorm, STORM_CHECK_SPAN 500,
//     STORM_DISCARD_VALUE_START 3, _END 1024; hub option
//     BroadcastStormDetectionThreshold, policy NoBroadcastLimiter). A
//     starvation flood answered at full speed trips it within a second and
//     then no client gets an OFFER or ACK for several seconds. So broadcast
//     replies are capped at MaxBroadcastReplies (10/s, burst 10: at most 15
//     in any 500 ms span), and conflict probes at probeRate (4/s, burst 8):
//     each probe is an ARP resolution of up to 3 broadcasts 1 s apart with
//     the router's own address as sender, the key the router's ordinary ARP
//     requests use, so a probe storm would silence the router's address
//     resolution for everyone (observed in the lab: its ARP requests stopped
//     reaching other ports 2-3 s into an unpaced flood).
//
// Bound. Let P be the pool size and B = NewClientBurst = P/8 (the default;
// the default rate is B/(OfferHold+ProbationLease)). A client that uses
// each MAC once holds, at any moment, at most
//
//	B + rate*(OfferHold+ProbationLease) = 2B addresses through offers and
//	probation leases (each needed a new-client token within that window),
//	plus B + B = 2B full leases (the full-lease tokens of one LeaseTime),
//
// so at most 4B = P/2: half the pool stays free for everyone else, however
// long the flood lasts. After a flood, the bucket has a token again within
// 1/rate (5.2 s for the default /24 pool), so a new client gets a lease on
// its first DISCOVER sent after that. An attacker that re-uses its MACs
// and renews like a real client is indistinguishable from one; it gains
// addresses at most at the new-client rate, and Stats shows it
// (RateLimited, ProbationLeases, PoolFree). For pools under 32 addresses
// the minimums (burst 4, 2 new clients per minute) weaken the bound. With a
// StateFile the bucket levels are saved with the leases, so a restart does
// not grant a second budget of full leases.
//
// Memory: the lease table holds at most one record per pool address plus
// one per reservation (records are reused, never added for an address that
// already has one; client keys map one-to-one onto records), whatever the
// number of MACs seen: about 260 bytes per record with a host name and client
// identifier (BenchmarkLeaseTableMemory), some 50 KB for the default /24 pool.

const (
	minNewClientBurst = 4
	minNewClientRate  = 1.0 / 30 // per second
	// probeRate and probeBurst pace conflict probes (see 4. above): at
	// most about 10 probe ARPs in any 500 ms span.
	probeRate  = 4
	probeBurst = 8
)

// deriveGuard fills in the starvation-defence settings of d from c.
func (d *derived) deriveGuard(c *Config) error {
	switch {
	case c.ProbationLease < 0:
		d.probation = 0
	case c.ProbationLease == 0:
		d.probation = DefaultProbationLease
	default:
		d.probation = c.ProbationLease
		if d.probation < 8*time.Second {
			return fmt.Errorf("dhcp: ProbationLease %v is below 8s", d.probation)
		}
	}
	if d.probation >= d.leaseTime {
		d.probation = 0 // probation would not be shorter than a lease
	}
	switch {
	case c.MaxBroadcastReplies < 0:
		d.bcastRate = -1
	case c.MaxBroadcastReplies == 0:
		d.bcastRate, d.bcastBurst = DefaultMaxBroadcastReplies, DefaultMaxBroadcastReplies
	case math.IsNaN(c.MaxBroadcastReplies) || math.IsInf(c.MaxBroadcastReplies, 0) || c.MaxBroadcastReplies < 2:
		return fmt.Errorf("dhcp: MaxBroadcastReplies %v: want at least 2 (an OFFER and its ACK) or < 0 for no cap", c.MaxBroadcastReplies)
	default:
		d.bcastRate, d.bcastBurst = c.MaxBroadcastReplies, c.MaxBroadcastReplies
	}
	switch {
	case c.NewClientBurst < 0:
		return fmt.Errorf("dhcp: NewClientBurst %d is negative", c.NewClientBurst)
	case c.NewClientBurst == 0:
		d.newBurst = float64(max(minNewClientBurst, d.poolSize/8))
	default:
		d.newBurst = float64(c.NewClientBurst)
	}
	switch {
	case c.NewClientRate < 0:
		d.newRate = -1
	case c.NewClientRate == 0:
		window := d.offerHold + d.probation
		if d.probation == 0 {
			window = d.offerHold + DefaultProbationLease
		}
		d.newRate = max(minNewClientRate, d.newBurst/window.Seconds())
	case math.IsNaN(c.NewClientRate) || math.IsInf(c.NewClientRate, 0):
		return fmt.Errorf("dhcp: NewClientRate %v is not a number", c.NewClientRate)
	default:
		d.newRate = c.NewClientRate
	}
	return nil
}

// bucket is a token bucket on an injected clock. A nil *bucket is unlimited.
type bucket struct {
	rate, burst, tokens float64 // rate per second
	last                time.Time
}

func newBucket(rate, burst float64) *bucket {
	if rate < 0 {
		return nil
	}
	return &bucket{rate: rate, burst: burst, tokens: burst}
}

func (b *bucket) refill(now time.Time) {
	if b.last.IsZero() {
		b.last = now
		return
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(b.burst, b.tokens+dt.Seconds()*b.rate)
		b.last = now
	}
}

// has reports whether a token is available at now, without taking it.
func (b *bucket) has(now time.Time) bool {
	if b == nil {
		return true
	}
	b.refill(now)
	return b.tokens >= 1
}

// take takes one token if one is available at now.
func (b *bucket) take(now time.Time) bool {
	if !b.has(now) {
		return false
	}
	if b != nil {
		b.tokens--
	}
	return true
}

// refund returns a token taken for a request that was not served.
func (b *bucket) refund() {
	if b != nil {
		b.tokens = min(b.burst, b.tokens+1)
	}
}
