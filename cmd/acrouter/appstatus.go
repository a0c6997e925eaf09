package main

import (
	"github.com/acrouter/acrouter/router"
	"runtime"
	"sort"
	"time"
)

// The running app is the status API's source.
var _ statusSource = (*app)(nil)

func (a *app) Status() statusDoc {
	st := a.link.Status()
	d := statusDoc{
		Version:   version,
		StartedAt: startTime,
		UptimeSec: time.Since(startTime).Seconds(),
		Hub: hubDoc{
			Server: st.Server, Hub: st.Hub, User: st.User,
			State:       st.State.String(),
			SessionName: st.SessionName, BridgeMode: st.BridgeMode,
			Reconnects: st.Reconnects, Resumes: st.Resumes,
			ServerProduct: st.ServerProduct, ServerVersion: st.ServerVersion, ServerBuild: st.ServerBuild,
			CertSHA256: st.CertSHA256, ConnectedSince: st.ConnectedSince,
		},
		Router: routerDoc{
			IP: a.set.RouterPrefix.String(), MAC: a.mac.String(),
			DHCP: a.dhcp != nil, DNS: a.dns != nil,
			MaxSessions: a.cfg.Router.MaxSessions,
			GOMAXPROCS:  runtime.GOMAXPROCS(0),
		},
	}
	if a.ipv6.prefix.IsValid() && a.stack != nil {
		d.Router.IPv6 = a.ipv6.prefix.String()
		d.Router.LinkLocal6 = a.stack.LinkLocal6().String()
		d.Router.DefaultRt6 = a.ipv6.defaultRoute
		d.Router.DHCPv6 = a.cfg.IPv6.DHCPv6
	}
	if st.LastError != nil {
		d.Hub.LastError = st.LastError.Error()
	}
	if a.router != nil {
		d.Router.FlowsOpen = a.router.Stats().FlowsOpen
	}
	return d
}

func (a *app) Sessions() []flowDoc {
	if a.router == nil {
		return nil
	}
	now := time.Now()
	flows := a.router.Flows()
	out := make([]flowDoc, 0, len(flows))
	for _, f := range flows {
		out = append(out, flowDoc{
			Proto: f.Proto.String(), Client: f.Client.String(), Dest: f.Dest.String(), State: f.State.String(),
			BytesUp: f.BytesOut, BytesDown: f.BytesIn,
			AgeSec: f.Age.Seconds(), IdleSec: now.Sub(f.LastActivity).Seconds(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AgeSec > out[j].AgeSec })
	return out
}

func (a *app) Leases() []leaseDoc {
	var out []leaseDoc
	if a.dhcp != nil {
		for _, l := range a.dhcp.Leases() {
			if len(l.MAC) == 0 {
				continue // quarantined address, not a client
			}
			out = append(out, leaseDoc{MAC: l.MAC.String(), IP: l.IP.String(), Hostname: l.Hostname, Expires: l.Expiry, State: string(l.State)})
		}
	}
	if a.dhcp6 != nil {
		for _, l := range a.dhcp6.Leases() {
			out = append(out, leaseDoc{IP: l.Addr.String(), DUID: l.DUID, Expires: l.Expires, State: "bound"})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP < out[j].IP })
	return out
}

func (a *app) Metrics() []metricSample {
	var m []metricSample
	counter := func(name, help string, v uint64, labels ...string) {
		m = append(m, metricSample{Name: name, Help: help, Value: float64(v), Labels: pairs(labels)})
	}
	gauge := func(name, help string, v float64, labels ...string) {
		m = append(m, metricSample{Name: name, Help: help, Gauge: true, Value: v, Labels: pairs(labels)})
	}

	st := a.link.Status()
	up := 0.0
	if st.State.String() == "connected" {
		up = 1
	}
	gauge("acrouter_hub_connected", "1 while the hub session is connected.", up)
	counter("acrouter_hub_logins_total", "Successful hub logins (new sessions).", st.Logins)
	counter("acrouter_hub_reconnects_total", "Hub link re-establishments after a loss.", st.Reconnects)
	counter("acrouter_hub_resumes_total", "Re-establishments that resumed the same hub session.", st.Resumes)
	counter("acrouter_hub_frames_total", "Ethernet frames over the hub link.", st.FramesIn, "dir", "in")
	counter("acrouter_hub_frames_total", "Ethernet frames over the hub link.", st.FramesOut, "dir", "out")
	counter("acrouter_hub_send_batches_total", "TLS writes carrying frames to the hub (frames out ÷ this = frames per write).", st.BatchesOut)
	counter("acrouter_hub_bytes_total", "Ethernet bytes over the hub link.", st.BytesIn, "dir", "in")
	counter("acrouter_hub_bytes_total", "Ethernet bytes over the hub link.", st.BytesOut, "dir", "out")
	counter("acrouter_hub_recv_stalls_total", "Times the hub link's reader waited for the virtual host to take frames (backpressure, no loss).", st.RecvStalls)
	counter("acrouter_hub_send_stalls_total", "Times the virtual host waited for room in the hub link's full send queue (backpressure, no loss).", st.SendStalls)
	counter("acrouter_hub_frames_dropped_total", "Frames dropped by the hub link.", st.DropRxQueue, "reason", "rx-queue")
	counter("acrouter_hub_frames_dropped_total", "Frames dropped by the hub link.", st.DropTxQueue, "reason", "tx-queue")
	counter("acrouter_hub_frames_dropped_total", "Frames dropped by the hub link.", st.DropOversize, "reason", "oversize")
	counter("acrouter_hub_frames_dropped_total", "Frames dropped by the hub link.", st.LostInFlight, "reason", "lost-in-flight")

	if a.stack != nil {
		ns := a.stack.Stats()
		counter("acrouter_netstack_dropped_total", "Frames the virtual host dropped.", ns.DropMalformed, "reason", "malformed")
		counter("acrouter_netstack_dropped_total", "Frames the virtual host dropped.", ns.DropTooBig, "reason", "too-big")
		counter("acrouter_netstack_dropped_total", "Frames the virtual host dropped.", ns.DropOwnSource, "reason", "own-source")
		counter("acrouter_netstack_dropped_total", "Frames the virtual host dropped.", ns.DropARPConflict, "reason", "arp-conflict")
		counter("acrouter_netstack_dropped_total", "Frames the virtual host dropped.", ns.DropQueueFull, "reason", "queue-full")
		counter("acrouter_netstack_dropped_total", "Frames the virtual host dropped.", ns.DropNDPConflict, "reason", "ndp-conflict")
		counter("acrouter_netstack_dropped_total", "Frames the virtual host dropped.", ns.DropNDPOther, "reason", "ndp-other")
		counter("acrouter_netstack_dropped_total", "Frames the virtual host dropped.", ns.DropOtherProtocol, "reason", "other-protocol")
		counter("acrouter_ipv6_router_solicits_total", "Router Solicitations received.", ns.RouterSolicits)
		counter("acrouter_ipv6_router_adverts_total", "Router Advertisements sent.", ns.RAsSent, "kind", "sent")
		counter("acrouter_ipv6_router_adverts_total", "Router Advertisements sent.", ns.RAsLimited, "kind", "rate-limited")
		counter("acrouter_ipv6_foreign_router_adverts_total", "Router Advertisements from another router on the hub.", ns.ForeignRAs)
		counter("acrouter_netstack_tcp_forward_drops_total", "SYNs dropped by gVisor's forwarder in-flight cap.", ns.TCPForwardDrops)
		counter("acrouter_netstack_tcp_retransmits_total", "TCP retransmits of the virtual host.", ns.TCPRetransmits)
		counter("acrouter_netstack_acks_delayed_total", "Pure TCP ACKs the virtual host kept back for the flow's next segment.", ns.ACKsDelayed)
		counter("acrouter_netstack_acks_coalesced_total", "Delayed ACKs that a later segment of the flow made unnecessary (frames not sent).", ns.ACKsCoalesced)
	}
	if a.router != nil {
		rs := a.router.Stats()
		gauge("acrouter_gomaxprocs", "Ps the Go runtime uses now (adapted to load with router.adaptive_procs).", float64(runtime.GOMAXPROCS(0)))
		if a.procs != nil {
			counter("acrouter_gomaxprocs_changes_total", "Times the adaptive GOMAXPROCS tuner changed the number of Ps.", a.procs.switches.Load())
		}
		if a.trim != nil {
			counter("acrouter_memory_trims_total", "Times the router returned free memory to the OS after a quiet spell (router.memory_trim).", a.trim.trims.Load())
		}
		gauge("acrouter_flows_open", "Open NAT flows.", float64(rs.FlowsOpenTCP), "proto", "tcp")
		gauge("acrouter_flows_open", "Open NAT flows.", float64(rs.FlowsOpenUDP), "proto", "udp")
		gauge("acrouter_flows_open", "Open NAT flows.", float64(rs.FlowsOpenICMP), "proto", "icmp")
		counter("acrouter_flows_created_total", "NAT flows created.", rs.FlowsCreatedTCP, "proto", "tcp")
		counter("acrouter_flows_created_total", "NAT flows created.", rs.FlowsCreatedUDP, "proto", "udp")
		counter("acrouter_flows_created_total", "NAT flows created.", rs.FlowsCreatedICMP, "proto", "icmp")
		counter("acrouter_flows_evicted_total", "Idle flows evicted at a session cap.", rs.Evicted)
		for reason, n := range rs.Refused {
			counter("acrouter_flows_refused_total", "New flows refused, by reason.", n, "reason", reason)
		}
		counter("acrouter_flow_bytes_total", "NAT payload bytes.", rs.BytesOut, "dir", "up")
		counter("acrouter_flow_bytes_total", "NAT payload bytes.", rs.BytesIn, "dir", "down")
		counter("acrouter_icmp_echo_total", "ICMP echo forwarding.", rs.EchoRequests, "kind", "request")
		counter("acrouter_icmp_echo_total", "ICMP echo forwarding.", rs.EchoReplies, "kind", "reply")
		counter("acrouter_icmp_echo_total", "ICMP echo forwarding.", rs.EchoDropped, "kind", "dropped")
	}
	if a.dhcp != nil {
		ds := a.dhcp.Stats()
		for _, kv := range []struct {
			k string
			v uint64
		}{{"discover", ds.Discover}, {"request", ds.Request}, {"decline", ds.Decline}, {"release", ds.Release}, {"inform", ds.Inform}, {"malformed", ds.Malformed}} {
			counter("acrouter_dhcp_received_total", "DHCP messages received, by type.", kv.v, "type", kv.k)
		}
		counter("acrouter_dhcp_sent_total", "DHCP replies sent, by type.", ds.Offer, "type", "offer")
		counter("acrouter_dhcp_sent_total", "DHCP replies sent, by type.", ds.Ack, "type", "ack")
		counter("acrouter_dhcp_sent_total", "DHCP replies sent, by type.", ds.Nak, "type", "nak")
		counter("acrouter_dhcp_pool_exhausted_total", "DISCOVERs that found no free address.", ds.PoolExhausted)
		counter("acrouter_dhcp_rate_limited_total", "Requests of new clients dropped by the new-client rate cap (starvation defence).", ds.RateLimited)
		counter("acrouter_dhcp_broadcast_limited_total", "Broadcast replies (and DISCOVERs needing one) dropped to stay under the hub's broadcast storm filter.", ds.BroadcastLimited)
		if a.stack != nil {
			counter("acrouter_dhcp_queue_drops_total", "DHCP datagrams dropped before the server read them (socket queue full).", a.stack.Stats().DHCPQueueDrops)
		}
		counter("acrouter_dhcp_probe_busy_total", "DISCOVERs dropped because the conflict-probe budget was spent.", ds.ProbeBusy)
		counter("acrouter_dhcp_probation_total", "Probation leases granted and confirmed by a renewal.", ds.ProbationGranted, "kind", "granted")
		counter("acrouter_dhcp_probation_total", "Probation leases granted and confirmed by a renewal.", ds.ProbationConfirmed, "kind", "confirmed")
		gauge("acrouter_dhcp_pool_free", "Pool addresses assignable to a new client now.", float64(ds.PoolFree))
		gauge("acrouter_dhcp_pool_size", "Addresses in the dynamic pool.", float64(ds.PoolSize))
		gauge("acrouter_dhcp_leases", "Bound DHCP leases.", float64(ds.BoundLeases))
	}
	if a.dhcp6 != nil {
		s6 := a.dhcp6.Stats()
		counter("acrouter_dhcpv6_received_total", "DHCPv6 messages received.", s6.Received, "result", "all")
		counter("acrouter_dhcpv6_received_total", "DHCPv6 messages received.", s6.Malformed, "result", "malformed")
		counter("acrouter_dhcpv6_received_total", "DHCPv6 messages received.", s6.Ignored, "result", "ignored")
		counter("acrouter_dhcpv6_sent_total", "DHCPv6 replies sent, by kind.", s6.InformationReplies, "type", "information-reply")
		counter("acrouter_dhcpv6_sent_total", "DHCPv6 replies sent, by kind.", s6.Advertises, "type", "advertise")
		counter("acrouter_dhcpv6_sent_total", "DHCPv6 replies sent, by kind.", s6.Replies, "type", "reply")
		counter("acrouter_dhcpv6_no_addrs_total", "IAs answered NoAddrsAvail.", s6.NoAddrsAvail)
		gauge("acrouter_dhcpv6_bindings", "Stateful DHCPv6 bindings.", float64(s6.Bindings))
	}
	if a.dns != nil {
		ns := a.dns.Stats()
		counter("acrouter_dns_queries_total", "DNS queries received.", ns.UDPQueries, "transport", "udp")
		counter("acrouter_dns_queries_total", "DNS queries received.", ns.TCPQueries, "transport", "tcp")
		counter("acrouter_dns_cache_total", "DNS cache look-ups.", ns.CacheHits, "result", "hit")
		counter("acrouter_dns_cache_total", "DNS cache look-ups.", ns.CacheMisses, "result", "miss")
		counter("acrouter_dns_servfail_total", "SERVFAILs sent because every upstream failed.", ns.ServFail)
		counter("acrouter_dns_rate_limited_total", "Queries refused by the per-client rate limit.", ns.RateLimited)
		counter("acrouter_dns_upstream_errors_total", "Failed upstream attempts.", ns.UpstreamErrors)
		counter("acrouter_dns_upstream_mismatches_total", "Upstream replies rejected for a wrong ID or question (possible spoofing); the query was retried on a fresh socket.", ns.UpstreamMismatches)
	}
	return m
}

func pairs(kv []string) map[string]string {
	if len(kv) == 0 {
		return nil
	}
	m := make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// The running app manages port forwards through the status API.
var _ forwardManager = (*app)(nil)

func (a *app) Forwards() []forwardDoc {
	if a.router == nil {
		return nil
	}
	var out []forwardDoc
	for _, f := range a.router.Forwards() {
		out = append(out, forwardDoc{Rule: f.Rule.String(), Bound: f.Bound.String(), Connections: f.Connections, Active: f.Active,
			Refused: f.Refused, BytesIn: f.BytesToClient, BytesOut: f.BytesFromClient})
	}
	return out
}

func (a *app) AddForward(rule string) error {
	pf, err := router.ParsePortForward(rule)
	if err != nil {
		return err
	}
	if err := a.router.AddForward(pf); err != nil {
		return err
	}
	a.log.Info("port forward added through the status API", "rule", pf.String())
	return nil
}

func (a *app) RemoveForward(rule string) error {
	pf, err := router.ParsePortForward(rule)
	if err != nil {
		return err
	}
	if err := a.router.RemoveForward(pf); err != nil {
		return err
	}
	a.log.Info("port forward removed through the status API", "rule", pf.String())
	return nil
}
