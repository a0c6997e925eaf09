#!/usr/bin/env bash
# bench/topology.sh — extra topology for `make bench`, added to a lab that lab/lab.sh brought up
# with the same LAB_PREFIX / LAB_STATE (default acrb, /tmp/acrouter-bench):
#
#   (c) SoftEther's own "bridge-mode NAT": the VPN Bridge (Debian package softether-vpnbridge)
#       runs in the router namespace with SecureNAT on its hub BRIDGE and a cascade to hub CASC
#       of the lab's vpnserver. Client namespace $P-ccas (eth0, MAC 02:ac:00:00:00:31) is
#       local-bridged into hub CASC, so it gets DHCP from the bridge's SecureNAT through the cascade.
#   (d) the limit: client namespace $P-cdir with a plain veth to the LAN namespace
#       (10.79.0.2/24 <-> 10.79.0.1/24) and a route to the LAN /24 over it; no VPN at all.
#   a DNS server for the benchmark: dnsmasq on 10.77.0.53 in the LAN namespace, the lab's zone
#       (www/lan.lab.test, other names NXDOMAIN) with TTL 300 (the lab's dnsmasq answers with TTL 0,
#       which no cache may keep). The VPN Bridge's resolver uses it; bench.sh gives it to acrouter.
#
# Usage: topology.sh up | down | env | dhcp | bridgecmd ARGS.. | status
#
# Safety (as lab/lab.sh): vpnbridge runs only as `ip netns exec <rtr ns> unshare --mount ...
# vpnbridge start --foreground` from a seeded config (DDNS, NAT-T, VPN Azure, keep-alive, UDP ports,
# OpenVPN/SSTP, JSON-RPC and the IPv6 listener off; one admin listener $TOPO_BRIDGE_PORT in the
# router namespace), its compiled-in directories and /etc/resolv.conf bind-mounted from
# $LAB_STATE/bridge. It is stopped by signalling its pid, never with `vpnbridge stop` (killall).
# Every vpncmd call is /PROGRAMMING, stdin /dev/null, under `timeout`. The new namespaces get no
# route off the machine. Every wait is bounded; `down` removes all of it, also after a failed `up`.
#
# Settings: TOPO_UDP_ACCEL (0: cascade data over TLS only, the apples-to-apples setting for a
# TLS router; 1: SoftEther's default UDP acceleration), TOPO_MAXTCP (cascade TCP connections,
# vpncmd default 8), TOPO_BRIDGE_PORT (5556), TOPO_CASC_HUB (CASC), TOPO_VPNCMD_TIMEOUT (20 s),
# TOPO_START_TIMEOUT (30 s), TOPO_DHCP_TIMEOUT (15 s), LAB_HUB_LOGS (off: hub logs off as in lab.sh).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${LAB_PREFIX:=acrb}"
: "${LAB_STATE:=/tmp/acrouter-bench}"
export LAB_PREFIX LAB_STATE
LAB="$HERE/../lab/lab.sh"
: "${TOPO_UDP_ACCEL:=0}"
: "${TOPO_MAXTCP:=8}"
: "${TOPO_BRIDGE_PORT:=5556}"
: "${TOPO_BRIDGE_HUB:=BRIDGE}"
: "${TOPO_CASC_HUB:=CASC}"
: "${TOPO_CASC_HUB_PASSWORD:=casc-hub-pass}"
: "${TOPO_CASCADE:=casc}"
: "${TOPO_CCAS_MAC:=02:ac:00:00:00:31}"
: "${TOPO_DIRECT_NET:=10.79.0}"
: "${TOPO_DNS_HOST:=53}"                # bench DNS server at <LAN net>.53 (answers with TTL 300, so caches can hit)
: "${TOPO_VPNCMD_TIMEOUT:=20}"
: "${TOPO_START_TIMEOUT:=30}"
: "${TOPO_STOP_TIMEOUT:=15}"
: "${TOPO_DHCP_TIMEOUT:=15}"
: "${TOPO_APT_TIMEOUT:=900}"
: "${LAB_HUB_LOGS:=on}"
: "${TOPO_VPNBRIDGE_BIN:=/usr/libexec/softether/vpnbridge/vpnbridge}"
: "${LAB_VPNCMD_BIN:=/usr/libexec/softether/vpncmd/vpncmd}"

P="$LAB_PREFIX"
NS_HUB="$P-hub" NS_LAN="$P-lan" NS_RTR="$P-rtr" NS_CCAS="$P-ccas" NS_CDIR="$P-cdir"
T="$LAB_STATE/topology" BR="$LAB_STATE/bridge"
PIDF="$T/vpnbridge.pid"

log() { printf '[topology %s] %s\n' "$P" "$*" >&2; }
die() { printf '[topology %s] ERROR: %s\n' "$P" "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "needs root"; }
ns_exists() { [ -e "/run/netns/$1" ]; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
labenv() { bash "$LAB" env; }
starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [ "${s%% *}" != Z ]; }
bridge_pid() { # prints vpnbridge's pid when the recorded process still runs
	local pid st
	[ -f "$PIDF" ] && read -r pid st <"$PIDF" && alive "$pid" && [ "$(starttime "$pid")" = "$st" ] && echo "$pid"
}

# ------------------------------------------------------------------ vpncmd --
svc() { bash "$LAB" vpncmd "$@"; } # the lab's vpnserver as admin (lab.sh adds /PROGRAMMING + timeout)
svc_ok() { local out; out=$(svc "$@" 2>&1) || die "vpncmd(server) $* failed: $(printf '%s\n' "$out" | tail -3)"; }
BVC_PW="${LAB_ADMIN_PASSWORD:-lab-admin}"
bvc() { # vpncmd to the bridge (inside the router namespace), bounded
	timeout -k 2 "$TOPO_VPNCMD_TIMEOUT" ip netns exec "$NS_RTR" "$LAB_VPNCMD_BIN" "127.0.0.1:$TOPO_BRIDGE_PORT" /SERVER \
		"/PASSWORD:$BVC_PW" /PROGRAMMING "$@" </dev/null
}
bvc_ok() { local out; out=$(bvc "$@" 2>&1) || die "vpncmd(bridge) $* failed: $(printf '%s\n' "$out" | tail -3)"; printf '%s\n' "$out"; }

# ----------------------------------------------------------------- install --
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_BAK=""
restore_policy() { if [ -n "$POLICY_BAK" ]; then mv -f "$POLICY_BAK" "$POLICY_RC"; else rm -f "$POLICY_RC"; fi; }
root_ns_bridges() { # vpnbridge processes in the ROOT network namespace (the package's own service)
	local p root; root=$(readlink /proc/1/ns/net 2>/dev/null || readlink /proc/2/ns/net 2>/dev/null || true)
	[ -n "$root" ] || die "cannot tell the root network namespace"
	for p in $(pgrep -x vpnbridge 2>/dev/null || true); do
		[ "$(readlink "/proc/$p/ns/net" 2>/dev/null || true)" = "$root" ] && echo "$p"
	done
	return 0
}
install_bridge() {
	if [ ! -x "$TOPO_VPNBRIDGE_BIN" ]; then
		command -v apt-get >/dev/null || die "softether-vpnbridge missing and no apt-get"
		log "installing softether-vpnbridge"
		# the package starts and enables a system vpnbridge (default config); forbid that meanwhile
		if [ -e "$POLICY_RC" ]; then POLICY_BAK="$POLICY_RC.acrouter-bench.$$"; cp -p "$POLICY_RC" "$POLICY_BAK"; fi
		trap restore_policy EXIT
		printf '#!/bin/sh\n# temporary: acrouter bench/topology.sh install\nexit 101\n' >"$POLICY_RC"
		chmod 755 "$POLICY_RC"
		local rc=0
		DEBIAN_FRONTEND=noninteractive timeout -k 10 "$TOPO_APT_TIMEOUT" apt-get install -y -q --no-install-recommends \
			-o Dpkg::Options::=--force-confold softether-vpnbridge >/tmp/acrouter-bench-apt.log 2>&1 || rc=$?
		if [ $rc != 0 ]; then # stale package lists: one update, then one more try
			DEBIAN_FRONTEND=noninteractive timeout -k 10 "$TOPO_APT_TIMEOUT" apt-get update -q >>/tmp/acrouter-bench-apt.log 2>&1 &&
				DEBIAN_FRONTEND=noninteractive timeout -k 10 "$TOPO_APT_TIMEOUT" apt-get install -y -q --no-install-recommends \
					-o Dpkg::Options::=--force-confold softether-vpnbridge >>/tmp/acrouter-bench-apt.log 2>&1 && rc=0
		fi
		restore_policy; trap - EXIT
		[ $rc = 0 ] && [ -x "$TOPO_VPNBRIDGE_BIN" ] || die "apt-get install softether-vpnbridge failed: $(tail -3 /tmp/acrouter-bench-apt.log)"
	fi
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable softether-vpnbridge.service >/dev/null 2>&1 || true
		[ -d /run/systemd/system ] && systemctl stop softether-vpnbridge.service >/dev/null 2>&1 || true
	fi
	command -v update-rc.d >/dev/null 2>&1 && update-rc.d softether-vpnbridge disable >/dev/null 2>&1 || true
	local p i
	for p in $(root_ns_bridges); do
		log "stopping vpnbridge pid $p in the ROOT network namespace (the package's system service)"
		kill -TERM "$p" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do alive "$p" || break; sleep 0.1; done
		alive "$p" && kill -KILL "$p" 2>/dev/null || true
	done
	[ -z "$(root_ns_bridges)" ] || die "a vpnbridge still runs in the root network namespace"
}

# ------------------------------------------------------------------- network --
offload_off() { ip netns exec "$1" ethtool -K "$2" rx off tx off tso off gso off gro off >/dev/null 2>&1 ||
	ip netns exec "$1" ethtool -K "$2" tx off tso off gso off >/dev/null 2>&1 || log "warning: offloads still on for $1/$2"; }
client_sysctls() { # many short connections: wide port range, TIME_WAIT reuse for new connects
	ip netns exec "$1" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.tcp_tw_reuse=1 \
		net.ipv4.ping_group_range="0 2147483647"
}
net_up() {
	ns_exists "$NS_HUB" && ns_exists "$NS_LAN" && ns_exists "$NS_RTR" || die "lab $P is not up (run LAB_PREFIX=$P lab/lab.sh up)"
	# the NAT and client sides of every path may hold thousands of TIME_WAITs during the conn/s test
	local ns
	for ns in "$P-clab" "$P-csnat"; do client_sysctls "$ns"; done
	for ns in "$NS_RTR" "$NS_HUB"; do ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1; done
	# (c) client of the cascade
	ns_exists "$NS_CCAS" || ip netns add "$NS_CCAS"
	ip -n "$NS_CCAS" link set lo up
	ip -n "$NS_CCAS" link show eth0 >/dev/null 2>&1 ||
		ip link add eth0 netns "$NS_CCAS" address "$TOPO_CCAS_MAC" type veth peer name vb-cas netns "$NS_HUB"
	ip -n "$NS_CCAS" link set eth0 up; offload_off "$NS_CCAS" eth0
	ip -n "$NS_CCAS" addr flush dev eth0; ip -n "$NS_CCAS" route flush table main # no lease until `dhcp`
	ip -n "$NS_HUB" link set vb-cas up; offload_off "$NS_HUB" vb-cas
	client_sysctls "$NS_CCAS"
	# (d) plain veth client: 10.79.0.2 <-> 10.79.0.1 (LAN namespace), route to the LAN /24 over it
	local lan_net; lan_net=$(labenv | sed -n 's/^LAB_LAN_IP=//p'); lan_net=${lan_net%.*}
	ns_exists "$NS_CDIR" || ip netns add "$NS_CDIR"
	ip -n "$NS_CDIR" link set lo up
	ip -n "$NS_CDIR" link show eth0 >/dev/null 2>&1 ||
		ip link add eth0 netns "$NS_CDIR" type veth peer name d-dir netns "$NS_LAN"
	ip -n "$NS_CDIR" addr replace "$TOPO_DIRECT_NET.2/24" dev eth0
	ip -n "$NS_LAN" addr replace "$TOPO_DIRECT_NET.1/24" dev d-dir
	ip -n "$NS_CDIR" link set eth0 up; ip -n "$NS_LAN" link set d-dir up
	ip -n "$NS_CDIR" route replace "$lan_net.0/24" via "$TOPO_DIRECT_NET.1" dev eth0
	client_sysctls "$NS_CDIR"
	for ns in "$NS_CCAS" "$NS_CDIR"; do
		[ -z "$(ip -n "$ns" route show default)" ] || die "namespace $ns has a default route; refusing"
	done
}

# ---------------------------------------------------------------------- DNS --
DNS_PIDF="$T/dnsmasq.pid"
dns_ip() { local l; l=$(labenv | sed -n 's/^LAB_LAN_IP=//p'); echo "${l%.*}.$TOPO_DNS_HOST"; }
dns_up() {
	local ip zone pid st; ip=$(dns_ip); zone=$(labenv | sed -n 's/^LAB_DNS_ZONE=//p')
	local lan; lan=$(labenv | sed -n 's/^LAB_LAN_IP=//p')
	ip -n "$NS_LAN" addr replace "$ip/24" dev lanbr
	if [ -f "$DNS_PIDF" ] && read -r pid st <"$DNS_PIDF" && alive "$pid" && [ "$(starttime "$pid")" = "$st" ]; then return 0; fi
	ip netns exec "$NS_LAN" dnsmasq --keep-in-foreground --log-facility=- --conf-file=/dev/null --no-resolv --no-hosts \
		--no-poll --bind-interfaces --listen-address="$ip" --port=53 --user=root --pid-file="$T/dnsmasq.pidfile" \
		--cache-size=0 --local-ttl=300 --local="/$zone/" --host-record="www.$zone,$lan" --host-record="lan.$zone,$lan" \
		>>"$T/dnsmasq.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid $(starttime "$pid")" >"$DNS_PIDF"
	local i
	for ((i = 0; i < 100; i++)); do
		[ -n "$(ip netns exec "$NS_LAN" ss -Hlun "src $ip:53")" ] && return 0
		alive "$pid" || die "bench dnsmasq exited: $(tail -2 "$T/dnsmasq.log")"
		sleep 0.05
	done
	die "bench dnsmasq not listening on $ip:53"
}
dns_down() {
	local pid st i
	if [ -f "$DNS_PIDF" ] && read -r pid st <"$DNS_PIDF" && alive "$pid" && [ "$(starttime "$pid")" = "$st" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 40; i++)); do alive "$pid" || break; sleep 0.05; done
		alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$DNS_PIDF"
}

# ------------------------------------------------------------------- bridge --
seed_bridge_config() { # the lab server's switches (lab.sh seed_config), as vpn_bridge.config
	bash "$LAB" seed-config bridge "$TOPO_BRIDGE_PORT" "$TOPO_BRIDGE_HUB"
}
bridge_start() {
	mkdir -p "$BR/lib" "$BR/log" "$BR/run" "$T"
	echo "nameserver $(dns_ip)" >"$BR/resolv.conf"
	[ -f "$BR/lib/vpn_bridge.config" ] || seed_bridge_config >"$BR/lib/vpn_bridge.config"
	if ! bridge_pid >/dev/null; then
		rm -f "$BR"/run/.pid_* "$BR"/run/.ctl_* "$BR"/run/.VPN-*
		# ip netns exec -> unshare (private mount ns) -> sh (bind mounts) -> exec vpnbridge: $! is vpnbridge
		ip netns exec "$NS_RTR" unshare --mount --propagation private -- /bin/sh -ec '
			S=$1; shift
			for d in /var/lib/softether:lib /var/log/softether:log /run/softether:run; do
				mkdir -p "${d%%:*}"; mount --bind "$S/${d#*:}" "${d%%:*}"
			done
			rc=$(readlink -f /etc/resolv.conf || true)
			if [ -n "$rc" ] && [ -f "$rc" ]; then mount --bind "$S/resolv.conf" "$rc"; fi
			exec "$@"' sh "$BR" "$TOPO_VPNBRIDGE_BIN" start --foreground >>"$T/vpnbridge.console.log" 2>&1 </dev/null &
		local pid=$!
		echo "$pid $(starttime "$pid")" >"$PIDF"
	fi
	local t0=$SECONDS pid
	until [ -n "$(ip netns exec "$NS_RTR" ss -Hltn "sport = :$TOPO_BRIDGE_PORT")" ]; do
		pid=$(bridge_pid) || die "vpnbridge exited during startup: $(tail -5 "$T/vpnbridge.console.log")"
		((SECONDS - t0 < TOPO_START_TIMEOUT)) || die "vpnbridge not listening on :$TOPO_BRIDGE_PORT after ${TOPO_START_TIMEOUT}s"
		sleep 0.05
	done
	pid=$(bridge_pid)
	[ "$(readlink "/proc/$pid/exe")" = "$(readlink -f "$TOPO_VPNBRIDGE_BIN")" ] || die "pid $pid is not vpnbridge"
}
bridge_stop() {
	local pid i
	if pid=$(bridge_pid); then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < TOPO_STOP_TIMEOUT * 20; i++)); do alive "$pid" || break; sleep 0.05; done
		if alive "$pid"; then log "vpnbridge (pid $pid) still running after ${TOPO_STOP_TIMEOUT}s, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
		for ((i = 0; i < 40; i++)); do alive "$pid" || break; sleep 0.05; done
	fi
	rm -f "$PIDF"
}
bridge_admin_login() {
	local t0=$SECONDS
	while :; do
		BVC_PW="${LAB_ADMIN_PASSWORD:-lab-admin}"; bvc /CMD ServerInfoGet >/dev/null 2>&1 && return 0
		BVC_PW=""; TOPO_VPNCMD_TIMEOUT=5 bvc /CMD ServerInfoGet >/dev/null 2>&1 && {
			BVC_PW="" bvc_ok /CMD ServerPasswordSet "${LAB_ADMIN_PASSWORD:-lab-admin}" >/dev/null
			BVC_PW="${LAB_ADMIN_PASSWORD:-lab-admin}"; return 0; }
		((SECONDS - t0 < TOPO_START_TIMEOUT)) || die "cannot log in to vpnbridge as admin"
		sleep 0.2
	done
}
cascade_status() { bvc /ADMINHUB:"$TOPO_BRIDGE_HUB" /CSV /CMD CascadeStatusGet "$TOPO_CASCADE" 2>/dev/null; }

server_side_up() { # hub CASC on the lab's vpnserver, the cascade's user, local bridge to $NS_CCAS
	local env; env=$(labenv)
	local ruser rpass
	ruser=$(sed -n 's/^LAB_ROUTER_USER=//p' <<<"$env"); rpass=$(sed -n 's/^LAB_ROUTER_PASSWORD=//p' <<<"$env")
	svc /CSV /CMD HubList 2>/dev/null | sed 1d | cut -d, -f1 | tr -d '"' | grep -qx "$TOPO_CASC_HUB" ||
		svc_ok /CMD HubCreate "$TOPO_CASC_HUB" "/PASSWORD:$TOPO_CASC_HUB_PASSWORD"
	local f="$T/casc.vpncmd"
	{
		echo "Hub $TOPO_CASC_HUB"
		echo "UserCreate $ruser /GROUP:none /REALNAME:none /NOTE:acrouter-bench"
		echo "UserPasswordSet $ruser /PASSWORD:$rpass"
		echo "UserPolicySet $ruser /NAME:NoBridge /VALUE:no"
		echo "UserPolicySet $ruser /NAME:NoRouting /VALUE:no"
		echo "UserPolicySet $ruser /NAME:MaxConnection /VALUE:32"
		echo "ExtOptionSet DisableUdpAcceleration /VALUE:$((TOPO_UDP_ACCEL == 1 ? 0 : 1))"
		if [ "$LAB_HUB_LOGS" = off ]; then echo "LogDisable security"; echo "LogDisable packet"; fi
	} >"$f"
	svc "/IN:$f" >"$T/casc-configure.log" 2>&1 || true
	local bad; bad=$(grep -o 'Error code: [0-9]*' "$T/casc-configure.log" | grep -v ': 66$' || true) # 66: exists
	[ -z "$bad" ] || die "configuring hub $TOPO_CASC_HUB failed ($bad); see $T/casc-configure.log"
	svc /CSV /CMD BridgeList 2>/dev/null | grep -q "^[0-9]*,$TOPO_CASC_HUB,vb-cas," ||
		svc_ok /CMD BridgeCreate "$TOPO_CASC_HUB" /DEVICE:vb-cas /TAP:no
	local t0=$SECONDS
	until svc /CSV /CMD BridgeList 2>/dev/null | grep -q "^[0-9]*,$TOPO_CASC_HUB,vb-cas,Operating"; do
		((SECONDS - t0 < 10)) || die "local bridge $TOPO_CASC_HUB <-> vb-cas not operating"
		sleep 0.1
	done
	echo "$ruser $rpass"
}
cascade_up() { # ruser rpass
	local server; server=$(labenv | sed -n 's/^LAB_SERVER=//p')
	bridge_start
	bridge_admin_login
	local t0=$SECONDS
	until bvc /CSV /CMD HubList 2>/dev/null | sed 1d | cut -d, -f1 | tr -d '"' | grep -qx "$TOPO_BRIDGE_HUB"; do
		((SECONDS - t0 < 10)) || die "vpnbridge has no hub $TOPO_BRIDGE_HUB"
		sleep 0.2
	done
	local f="$T/bridge.vpncmd"
	{
		echo "Hub $TOPO_BRIDGE_HUB"
		echo "ExtOptionSet DisableKernelModeSecureNAT /VALUE:1"
		echo "ExtOptionSet DisableIpRawModeSecureNAT /VALUE:1"
		echo "SecureNatEnable"
		echo "NatSet /MTU:1500 /TCPTIMEOUT:1800 /UDPTIMEOUT:60 /LOG:$([ "$LAB_HUB_LOGS" = off ] && echo no || echo yes)"
		if [ "$LAB_HUB_LOGS" = off ]; then echo "LogDisable security"; echo "LogDisable packet"; fi
	} >"$f"
	bvc "/IN:$f" >"$T/bridge-configure.log" 2>&1 || true
	local bad; bad=$(grep -o 'Error code: [0-9]*' "$T/bridge-configure.log" || true)
	[ -z "$bad" ] || die "configuring the bridge hub failed ($bad); see $T/bridge-configure.log"
	if ! bvc /ADMINHUB:"$TOPO_BRIDGE_HUB" /CSV /CMD CascadeList 2>/dev/null | grep -q "^$TOPO_CASCADE,"; then
		bvc_ok /ADMINHUB:"$TOPO_BRIDGE_HUB" /CMD CascadeCreate "$TOPO_CASCADE" "/SERVER:$server" \
			"/HUB:$TOPO_CASC_HUB" "/USERNAME:$1" >/dev/null
		bvc_ok /ADMINHUB:"$TOPO_BRIDGE_HUB" /CMD CascadePasswordSet "$TOPO_CASCADE" "/PASSWORD:$2" /TYPE:standard >/dev/null
	fi
	bvc_ok /ADMINHUB:"$TOPO_BRIDGE_HUB" /CMD CascadeDetailSet "$TOPO_CASCADE" "/MAXTCP:$TOPO_MAXTCP" /INTERVAL:1 /TTL:0 \
		/HALF:no /NOQOS:no >/dev/null
	# a fresh start of the cascade, so it negotiates the wanted transport
	bvc /ADMINHUB:"$TOPO_BRIDGE_HUB" /CMD CascadeOffline "$TOPO_CASCADE" >/dev/null 2>&1 || true
	bvc_ok /ADMINHUB:"$TOPO_BRIDGE_HUB" /CMD CascadeOnline "$TOPO_CASCADE" >/dev/null
	t0=$SECONDS
	until cascade_status | grep -q 'Session Status,Connection Completed'; do
		((SECONDS - t0 < TOPO_START_TIMEOUT)) || die "cascade not established after ${TOPO_START_TIMEOUT}s: $(cascade_status | tail -3)"
		sleep 0.2
	done
	if [ "$TOPO_UDP_ACCEL" = 1 ]; then # UDP acceleration turns active some seconds after the login (bounded)
		for ((t0 = 0; t0 < 30; t0++)); do cascade_status | grep -qx "UDP Acceleration is Active,Yes" && break; sleep 0.5; done
	fi
}
cascade_label() { # one line describing the cascade transport, for the results
	local st; st=$(cascade_status || true)
	printf 'TCP connections %s (max %s), UDP acceleration active %s, encryption %s\n' \
		"$(sed -n 's/^Number of TCP Connections,//p' <<<"$st")" \
		"$(sed -n 's/^Maximum Number of TCP Connections,//p' <<<"$st")" \
		"$(sed -n 's/^UDP Acceleration is Active,//p' <<<"$st")" \
		"$(sed -n 's/^Encryption,//p' <<<"$st" | tr -d '"')"
}

# ----------------------------------------------------------------- commands --
cmd_env() {
	cat <<EOF
TOPO_NS_CCAS=$NS_CCAS
TOPO_NS_CDIR=$NS_CDIR
TOPO_DIRECT_IP=$TOPO_DIRECT_NET.2
TOPO_DIRECT_GW=$TOPO_DIRECT_NET.1
TOPO_DNS=$(dns_ip)
TOPO_BRIDGE_HUB=$TOPO_BRIDGE_HUB
TOPO_CASC_HUB=$TOPO_CASC_HUB
TOPO_UDP_ACCEL=$TOPO_UDP_ACCEL
TOPO_MAXTCP=$TOPO_MAXTCP
TOPO_VPNBRIDGE_PIDFILE=$PIDF
EOF
}
cmd_up() {
	need_root
	local t0; t0=$(now_ms)
	mkdir -p "$T"
	install_bridge
	net_up
	dns_up
	local creds; creds=$(server_side_up)
	# shellcheck disable=SC2086
	cascade_up $creds
	log "up in $(($(now_ms) - t0)) ms: vpnbridge pid $(bridge_pid), cascade $(cascade_label)"
}
cmd_down() {
	need_root
	local p i ns
	bridge_stop
	dns_down
	ns_exists "$NS_LAN" && ip -n "$NS_LAN" addr del "$(dns_ip)/24" dev lanbr >/dev/null 2>&1 || true
	for ns in "$NS_CCAS" "$NS_CDIR"; do
		ns_exists "$ns" || continue
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null || true; done
		for ((i = 0; i < 40; i++)); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.05; done
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		ip netns del "$ns" || log "warning: could not delete netns $ns"
	done
	ns_exists "$NS_LAN" && ip -n "$NS_LAN" link del d-dir >/dev/null 2>&1 || true
	# the server side (hub CASC, its local bridge) goes with the lab's vpnserver; remove it when the
	# server still runs so a later `up` of the same lab starts clean
	if ns_exists "$NS_HUB" && svc /CMD ServerInfoGet >/dev/null 2>&1; then
		svc /CMD BridgeDelete "$TOPO_CASC_HUB" /DEVICE:vb-cas >/dev/null 2>&1 || true
		svc /CMD HubDelete "$TOPO_CASC_HUB" >/dev/null 2>&1 || true
	fi
	ns_exists "$NS_HUB" && ip -n "$NS_HUB" link del vb-cas >/dev/null 2>&1 || true
	for ns in "$NS_CCAS" "$NS_CDIR"; do ns_exists "$ns" && die "down: namespace $ns left"; done
	log "down"
}
cmd_dhcp() { # udhcpc on $NS_CCAS/eth0; prints LEASE_* (and LEASE_ELAPSED_MS, incl. udhcpc's start)
	need_root
	ns_exists "$NS_CCAS" || die "$NS_CCAS missing; run 'topology.sh up'"
	mkdir -p "$T"
	cat >"$T/udhcpc.sh" <<'EOF'
#!/bin/sh
# udhcpc event script (acrouter bench/topology.sh)
case "$1" in
deconfig) ip addr flush dev "$interface"; exit 0 ;;
bound|renew)
	pfx=$(awk -v m="$mask" 'BEGIN{if (m ~ /\./) {n=split(m,a,"."); c=0; for(i=1;i<=n;i++){x=a[i]+0; while(x>0){c+=x%2; x=int(x/2)}} print c} else print m}')
	ip addr flush dev "$interface"
	ip addr add "$ip/$pfx" dev "$interface"
	[ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
	printf 'LEASE_IP=%s\nLEASE_PREFIX=%s\nLEASE_ROUTER=%s\nLEASE_DNS=%s\nLEASE_SERVER=%s\n' \
		"$ip" "$pfx" "${router%% *}" "$(echo $dns)" "$serverid" >"$LEASE_FILE"
	;;
esac
exit 0
EOF
	chmod 755 "$T/udhcpc.sh"
	local lease="$T/lease-ccas.env" t0 rc=0
	rm -f "$lease"
	ip -n "$NS_CCAS" addr flush dev eth0
	ip -n "$NS_CCAS" route flush table main
	t0=$(now_ms)
	LEASE_FILE="$lease" timeout -k 2 "$((TOPO_DHCP_TIMEOUT + 2))" ip netns exec "$NS_CCAS" busybox udhcpc -f -q -n \
		-i eth0 -t "$TOPO_DHCP_TIMEOUT" -T 1 -A 1 -s "$T/udhcpc.sh" >"$T/udhcpc-ccas.log" 2>&1 || rc=$?
	[ $rc = 0 ] && [ -s "$lease" ] || die "no DHCP lease on $NS_CCAS/eth0 within ${TOPO_DHCP_TIMEOUT}s: $(tail -3 "$T/udhcpc-ccas.log")"
	echo "LEASE_ELAPSED_MS=$(($(now_ms) - t0))" >>"$lease"
	cat "$lease"
}
cmd_status() {
	need_root
	local pid
	if pid=$(bridge_pid); then echo "vpnbridge: pid $pid"; echo "cascade: $(cascade_label)"; else echo "vpnbridge: not running"; fi
	for ns in "$NS_CCAS" "$NS_CDIR"; do
		if ns_exists "$ns"; then echo "ns $ns: $(ip -n "$ns" -4 -br addr | grep -v '^lo ' | awk '{printf "%s=%s ", $1, $3}')"
		else echo "ns $ns: MISSING"; fi
	done
}

case "${1:-help}" in
up) cmd_up ;;
down) cmd_down ;;
env) cmd_env ;;
dhcp) cmd_dhcp ;;
status) cmd_status ;;
label) cascade_label ;;
bridgecmd) need_root; shift; bvc "$@" ;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; [ "${1:-help}" = help ] || exit 2 ;;
esac
