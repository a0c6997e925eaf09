package dns

import (
	"container/list"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// cacheKey identifies an answer: the question plus the DO and CD bits,
// which change what an upstream returns.
type cacheKey struct {
	name          string // lower case
	qtype, qclass uint16
	do, cd        bool
}

type cacheEntry struct {
	key     cacheKey
	msg     *mdns.Msg // never modified after insertion
	stored  time.Time
	expires time.Time
}

// cache is a TTL-respecting LRU of upstream answers.
type cache struct {
	mu     sync.Mutex
	max    int
	maxTTL time.Duration
	ll     *list.List // front = most recent; values are *cacheEntry
	m      map[cacheKey]*list.Element
}

func newCache(size int, maxTTL time.Duration) *cache {
	if size <= 0 {
		return nil
	}
	return &cache{max: size, maxTTL: maxTTL, ll: list.New(), m: make(map[cacheKey]*list.Element, size)}
}

func keyOf(q *mdns.Msg) cacheKey {
	k := cacheKey{name: strings.ToLower(q.Question[0].Name), qtype: q.Question[0].Qtype,
		qclass: q.Question[0].Qclass, cd: q.CheckingDisabled}
	if opt := q.IsEdns0(); opt != nil {
		k.do = opt.Do()
	}
	return k
}

// get returns a private copy of the cached answer with TTLs reduced by the
// time it spent in the cache.
func (c *cache) get(k cacheKey, now time.Time) *mdns.Msg {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	el, ok := c.m[k]
	if !ok {
		c.mu.Unlock()
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.ll.Remove(el)
		delete(c.m, k)
		c.mu.Unlock()
		return nil
	}
	c.ll.MoveToFront(el)
	c.mu.Unlock()
	m := e.msg.Copy()
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == mdns.TypeOPT {
				continue
			}
			if h.Ttl > age {
				h.Ttl -= age
			} else {
				h.Ttl = 0
			}
		}
	}
	return m
}

// put stores m (which the caller must not modify afterwards) if cacheable.
func (c *cache) put(k cacheKey, m *mdns.Msg, now time.Time) {
	if c == nil {
		return
	}
	ttl, ok := c.ttlFor(m)
	if !ok || ttl <= 0 {
		return
	}
	e := &cacheEntry{key: k, msg: m, stored: now, expires: now.Add(ttl)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[k]; ok {
		el.Value = e
		c.ll.MoveToFront(el)
		return
	}
	c.m[k] = c.ll.PushFront(e)
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*cacheEntry).key)
	}
}

func (c *cache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// ttlFor decides how long m may be cached.
func (c *cache) ttlFor(m *mdns.Msg) (time.Duration, bool) {
	if m.Truncated {
		return 0, false
	}
	switch m.Rcode {
	case mdns.RcodeSuccess, mdns.RcodeNameError:
	case mdns.RcodeServerFailure:
		return servFailTTL, true
	default:
		return 0, false
	}
	minTTL := uint32(1<<32 - 1)
	if m.Rcode == mdns.RcodeSuccess && len(m.Answer) > 0 {
		for _, sec := range [][]mdns.RR{m.Answer, m.Ns} {
			for _, rr := range sec {
				minTTL = min(minTTL, rr.Header().Ttl)
			}
		}
	} else {
		// Negative answer (NXDOMAIN or NODATA): RFC 2308 §5, the SOA's
		// TTL capped by its MINIMUM field; not cached without an SOA.
		found := false
		for _, rr := range m.Ns {
			if soa, ok := rr.(*mdns.SOA); ok {
				minTTL = min(minTTL, soa.Hdr.Ttl, soa.Minttl)
				found = true
			}
		}
		if !found {
			return 0, false
		}
	}
	return min(time.Duration(minTTL)*time.Second, c.maxTTL), true
}
