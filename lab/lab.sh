#!/usr/bin/env bash
# lab/lab.sh — acrouter's interop lab: a REAL SoftEther VPN Server (Debian 12
# packages softether-vpnserver + softether-vpncmd) in private network namespaces.
#
# Safety rules this script keeps:
#  * vpnserver only ever runs inside the lab's hub network namespace AND a private
#    mount namespace in which its compiled-in directories (/var/lib/softether,
#    /var/log/softether, /run/softether) and /etc/resolv.conf are bind mounts of
#    directories under $LAB_STATE. It starts from a seeded config with DDNS, NAT-T,
#    VPN Azure, keep-alive, UDP ports, OpenVPN/SSTP and the IPv6 listener off and a
#    single listener ($LAB_PORT). It is started with `start --foreground` and stopped
#    by signalling its pid; `vpnserver stop` (which may `killall`) is never used.
#  * Every vpncmd call has /PROGRAMMING, stdin from /dev/null and a `timeout`
#    (vpncmd spins forever on a wrong password with stdin at EOF).
#  * No namespace has a route that leaves the machine: the hub, LAN and router
#    namespaces have no default route at all; the client namespaces only get one
#    into the VPN (which ends in these namespaces).
#  * Every wait is bounded. `down` removes everything `up` created (processes,
#    namespaces and so the veths inside them, /etc/netns entries), also after a
#    failed `up`.
#
# Topology (names prefixed with $LAB_PREFIX, default "acr"):
#
#   acr-clab   eth0 (MAC $LAB_CLAB_MAC) ==veth== vb-lab  ┐ local bridge into hub LAB
#   acr-csnat  eth0 (MAC $LAB_CSNAT_MAC) ==veth== vb-snat ┤ local bridge into hub SNAT (SecureNAT on)
#                                                        │
#   acr-hub    vpnserver :5555, lan0 10.77.0.254/24 ─────┼──┐
#   acr-rtr    lan0 10.77.0.2/24 (acrouter runs here) ───────┤
#   acr-lan    lanbr 10.77.0.1/24: httpd :8080, iperf3 :5201/:5202, UDP+TCP echo :7,
#              dnsmasq :53 (zone lab.test, no upstream) ─────┘
#
# Usage: lab.sh install|seed-config [server|bridge PORT HUB]|up|down|purge|status|env|exec NS CMD..|vpncmd ARGS..|
#               dhcp clab|csnat|static clab|csnat [IP/PFX GW]|restart-server|kill-conns [PEER_IP[:PORT]|all] [server|client]
set -euo pipefail

# ------------------------------------------------------------------ settings --
: "${LAB_PREFIX:=acr}"
: "${LAB_STATE:=/tmp/acrouter-lab-$LAB_PREFIX}"
: "${LAB_PORT:=5555}"
: "${LAB_ADMIN_PASSWORD:=lab-admin}"
: "${LAB_HUB:=LAB}"
: "${LAB_HUB_PASSWORD:=lab-hub-pass}"
: "${LAB_SNAT_HUB:=SNAT}"
: "${LAB_SNAT_HUB_PASSWORD:=snat-hub-pass}"
: "${LAB_ROUTER_USER:=router}"
: "${LAB_ROUTER_PASSWORD:=router-pass}"
: "${LAB_CLIENT_USER:=client}"
: "${LAB_CLIENT_PASSWORD:=client-pass}"
: "${LAB_NOBRIDGE_USER:=nobridge}"
: "${LAB_NOBRIDGE_PASSWORD:=nobridge-pass}"
: "${LAB_NET:=10.77.0}"                  # the LAN /24 (first three octets)
: "${LAB_CLAB_MAC:=02:ac:00:00:00:21}"
: "${LAB_CSNAT_MAC:=02:ac:00:00:00:11}"
: "${LAB_CLAB_STATIC:=192.168.30.50/24}" # `lab.sh static clab` default address
: "${LAB_CLAB_GW:=192.168.30.1}"         # ... and gateway (the router's hub address)
: "${LAB_HTTP_PORT:=8080}"
: "${LAB_IPERF_PORTS:=5201 5202}"
: "${LAB_ECHO_PORT:=7}"                  # UDP and TCP echo in the LAN namespace
: "${LAB_DNS_ZONE:=lab.test}"
: "${LAB_HUB_LOGS:=on}"                  # on: SoftEther defaults; off: security/packet logs + SecureNAT log off
: "${LAB_OFFLOAD_OFF:=1}"
: "${LAB_BRIDGE_TAP:=0}"                 # 0: local bridge on the veth itself (BridgeCreate /TAP:no);
                                         # 1: /TAP:yes (tap_lab, tap_snat) joined with the veth by a Linux bridge
: "${LAB_START_TIMEOUT:=30}"             # seconds for vpnserver to listen / accept admin
: "${LAB_STOP_TIMEOUT:=15}"              # seconds for vpnserver to exit on SIGTERM before SIGKILL
: "${LAB_VPNCMD_TIMEOUT:=20}"            # seconds per vpncmd call
: "${LAB_DHCP_TIMEOUT:=15}"              # seconds for `lab.sh dhcp`
: "${LAB_INSTALL:=auto}"                 # auto: `up` installs missing packages; 0: never
: "${LAB_APT_TIMEOUT:=900}"              # seconds per apt-get call
: "${LAB_VPNSERVER_BIN:=/usr/libexec/softether/vpnserver/vpnserver}"
: "${LAB_VPNCMD_BIN:=/usr/libexec/softether/vpncmd/vpncmd}"

P="$LAB_PREFIX"
NS_HUB="$P-hub" NS_LAN="$P-lan" NS_RTR="$P-rtr" NS_CLAB="$P-clab" NS_CSNAT="$P-csnat"
ALL_NS=("$NS_CLAB" "$NS_CSNAT" "$NS_RTR" "$NS_LAN" "$NS_HUB")
LAN_IP="$LAB_NET.1" RTR_IP="$LAB_NET.2" HUB_IP="$LAB_NET.254"
SRV="$LAB_STATE/server" PIDS="$LAB_STATE/pids" LOGS="$LAB_STATE/logs" WWW="$LAB_STATE/www"
MARKER="$LAB_STATE/.acrouter-lab"
NETNS_ETC="/etc/netns/$NS_RTR"
HTTP_FIRST_LINE="acrouter-lab ok"

log() { printf '[lab %s] %s\n' "$P" "$*" >&2; }
die() { printf '[lab %s] ERROR: %s\n' "$P" "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces, mounts, veths)"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
ns_exists() { [ -e "/run/netns/$1" ]; }
in_ns() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }
ns_of() { # short name -> namespace
	case "$1" in hub) echo "$NS_HUB" ;; lan) echo "$NS_LAN" ;; rtr) echo "$NS_RTR" ;; clab) echo "$NS_CLAB" ;;
	csnat) echo "$NS_CSNAT" ;; *) die "unknown namespace '$1' (hub|lan|rtr|clab|csnat)" ;; esac
}

# ----------------------------------------------------------------- processes --
# A pid file holds "PID STARTTIME" so a recycled pid is never signalled.
starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
alive() { # pid -> true when running and not a zombie
	local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [ "${s%% *}" != Z ]
}
pid_of() { # name -> prints pid when the recorded process still runs
	local f="$PIDS/$1.pid" pid st
	[ -f "$f" ] || return 1
	read -r pid st <"$f" || return 1
	alive "$pid" && [ "$(starttime "$pid")" = "$st" ] || return 1
	echo "$pid"
}
record() { echo "$2 $(starttime "$2")" >"$PIDS/$1.pid"; }
stop() { # name [timeout_s]
	local name="$1" t="${2:-5}" pid i
	if pid=$(pid_of "$name"); then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < t * 20; i++)); do alive "$pid" || break; sleep 0.05; done
		if alive "$pid"; then log "$name (pid $pid) still running after ${t}s, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
		for ((i = 0; i < 40; i++)); do alive "$pid" || break; sleep 0.05; done
	fi
	rm -f "$PIDS/$name.pid"
}
daemon() { # name ns cmd...: start a long-running service in ns (no-op when it runs)
	local name="$1" ns="$2"; shift 2
	pid_of "$name" >/dev/null && return 0
	ip netns exec "$ns" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
	record "$name" "$!"
	STARTED+=("$name")
}
STARTED=()
check_started() { # the daemons started by this run are still alive a moment later
	[ ${#STARTED[@]} -gt 0 ] || return 0
	sleep 0.15
	local n
	for n in "${STARTED[@]}"; do pid_of "$n" >/dev/null || die "$n exited at once: $(tail -3 "$LOGS/$n.log")"; done
	STARTED=()
}

# ------------------------------------------------------------------ packages --
PKG_CHECKS=(
	"softether-vpnserver:$LAB_VPNSERVER_BIN" "softether-vpncmd:$LAB_VPNCMD_BIN"
	"iproute2:ip" "iproute2:ss" "iperf3:iperf3" "curl:curl" "busybox:busybox" "dnsmasq-base:dnsmasq"
	"ethtool:ethtool" "procps:sysctl" "procps:pgrep" "util-linux:unshare" "util-linux:setpriv" "mount:mount"
	"iputils-ping:ping" "socat:socat" "bind9-dnsutils:dig" "coreutils:timeout"
	"ndisc6:rdisc6" "isc-dhcp-client:dhclient"
)
missing_pkgs() {
	local kv pkg bin out=()
	for kv in "${PKG_CHECKS[@]}"; do
		pkg=${kv%%:*} bin=${kv#*:}
		if [[ $bin == /* ]]; then [ -x "$bin" ] && continue; else command -v "$bin" >/dev/null 2>&1 && continue; fi
		[[ " ${out[*]:-} " == *" $pkg "* ]] || out+=("$pkg")
	done
	echo "${out[*]:-}"
}
# vpnserver processes in the ROOT network namespace (e.g. the package's own service)
root_ns_servers() {
	# the initial namespace: pid 1's may be unreadable (sandboxes); kernel threads (kthreadd = 2) live there too
	local p ns root; root=$(readlink /proc/1/ns/net 2>/dev/null || readlink /proc/2/ns/net 2>/dev/null || true)
	[ -n "$root" ] || die "cannot tell the root network namespace (/proc/1/ns/net, /proc/2/ns/net unreadable)"
	for p in $(pgrep -x vpnserver 2>/dev/null || true); do
		ns=$(readlink "/proc/$p/ns/net" 2>/dev/null || true) # empty: exiting process
		[ "$ns" = "$root" ] && echo "$p"
	done
	return 0
}
quiet_system_service() {
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable softether-vpnserver.service >/dev/null 2>&1 || true
		[ -d /run/systemd/system ] && systemctl stop softether-vpnserver.service >/dev/null 2>&1 || true
	fi
	command -v update-rc.d >/dev/null 2>&1 && update-rc.d softether-vpnserver disable >/dev/null 2>&1 || true
	local p i
	for p in $(root_ns_servers); do
		log "stopping vpnserver pid $p in the ROOT network namespace (the package's system service)"
		kill -TERM "$p" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do alive "$p" || break; sleep 0.1; done
		alive "$p" && kill -KILL "$p" 2>/dev/null || true
	done
	[ -z "$(root_ns_servers)" ] || die "a vpnserver still runs in the root network namespace"
}
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_BAK=""
restore_policy() {
	if [ -n "$POLICY_BAK" ]; then mv -f "$POLICY_BAK" "$POLICY_RC"; else rm -f "$POLICY_RC"; fi
}
cmd_install() {
	need_root
	local pk t0; pk=$(missing_pkgs); t0=$(now_ms)
	if [ -n "$pk" ]; then
		[ "$LAB_INSTALL" = 0 ] && die "missing packages: $pk (LAB_INSTALL=0)"
		command -v apt-get >/dev/null || die "missing packages: $pk, and no apt-get"
		log "installing: $pk"
		# The server package starts and enables a system vpnserver in the root namespace
		# (default config: DDNS, NAT-T, keep-alive on). A policy-rc.d that answers 101
		# forbids that for the duration of the install (invoke-rc.d, deb-systemd-invoke).
		if [ -e "$POLICY_RC" ]; then POLICY_BAK="$POLICY_RC.acrouter-lab.$$"; cp -p "$POLICY_RC" "$POLICY_BAK"; fi
		trap restore_policy EXIT
		printf '#!/bin/sh\n# temporary: acrouter lab/lab.sh install\nexit 101\n' >"$POLICY_RC"
		chmod 755 "$POLICY_RC"
		local rc=0
		export DEBIAN_FRONTEND=noninteractive
		timeout -k 10 "$LAB_APT_TIMEOUT" apt-get update -q >"/tmp/acrouter-lab-apt.log" 2>&1 &&
			timeout -k 10 "$LAB_APT_TIMEOUT" apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold $pk \
				>>"/tmp/acrouter-lab-apt.log" 2>&1 || rc=$?
		restore_policy; trap - EXIT
		[ $rc = 0 ] || die "apt-get failed (rc=$rc): $(tail -5 /tmp/acrouter-lab-apt.log)"
		pk=$(missing_pkgs)
		[ -z "$pk" ] || die "still missing after apt-get install: $pk"
	fi
	quiet_system_service
	log "install: all tools present ($(($(now_ms) - t0)) ms)"
}
ensure_tools() {
	local pk; pk=$(missing_pkgs)
	[ -z "$pk" ] || cmd_install
	[ -z "$(root_ns_servers)" ] || quiet_system_service
}

# ------------------------------------------------------------------- network --
ns_add() { ns_exists "$1" || ip netns add "$1"; ip -n "$1" link set lo up; }
veth() { # ns1 if1 ns2 if2 [mac1]: a veth pair created directly inside the two namespaces
	local a="$1" ia="$2" b="$3" ib="$4" mac="${5:-}"
	if ip -n "$a" link show "$ia" >/dev/null 2>&1; then
		ip -n "$b" link show "$ib" >/dev/null 2>&1 || die "$a/$ia exists without its peer $b/$ib; run 'lab.sh down'"
		return 0
	fi
	ip link add "$ia" netns "$a" ${mac:+address "$mac"} type veth peer name "$ib" netns "$b"
}
offload_off() { # ns if: SoftEther only fixes its own side of a bridged veth; TSO/GSO/csum must be off on ours
	[ "$LAB_OFFLOAD_OFF" = 1 ] || return 0
	in_ns "$1" ethtool -K "$2" rx off tx off tso off gso off gro off >/dev/null 2>&1 ||
		in_ns "$1" ethtool -K "$2" tx off tso off gso off >/dev/null 2>&1 || log "warning: offloads still on for $1/$2"
}
net_up() {
	local ns
	for ns in "${ALL_NS[@]}"; do ns_add "$ns"; done
	ip -n "$NS_LAN" link show lanbr >/dev/null 2>&1 || ip -n "$NS_LAN" link add lanbr type bridge
	ip -n "$NS_LAN" addr replace "$LAN_IP/24" dev lanbr
	ip -n "$NS_LAN" link set lanbr up
	veth "$NS_HUB" lan0 "$NS_LAN" p-hub
	veth "$NS_RTR" lan0 "$NS_LAN" p-rtr
	ip -n "$NS_LAN" link set p-hub master lanbr up
	ip -n "$NS_LAN" link set p-rtr master lanbr up
	ip -n "$NS_HUB" addr replace "$HUB_IP/24" dev lan0; ip -n "$NS_HUB" link set lan0 up
	ip -n "$NS_RTR" addr replace "$RTR_IP/24" dev lan0; ip -n "$NS_RTR" link set lan0 up
	# client namespaces: eth0's peer is the hub's local bridge device
	veth "$NS_CLAB" eth0 "$NS_HUB" vb-lab "$LAB_CLAB_MAC"
	veth "$NS_CSNAT" eth0 "$NS_HUB" vb-snat "$LAB_CSNAT_MAC"
	for ns in "$NS_CLAB" "$NS_CSNAT"; do
		ip -n "$ns" link set eth0 up; offload_off "$ns" eth0
	done
	ip -n "$NS_HUB" link set vb-lab up; offload_off "$NS_HUB" vb-lab
	ip -n "$NS_HUB" link set vb-snat up; offload_off "$NS_HUB" vb-snat
	local b
	if [ "$LAB_BRIDGE_TAP" = 1 ]; then # Linux bridges that join SoftEther's tap devices to the veths
		for b in lab snat; do
			ip -n "$NS_HUB" link show "br-$b" >/dev/null 2>&1 || ip -n "$NS_HUB" link add "br-$b" type bridge
			ip -n "$NS_HUB" link set "vb-$b" master "br-$b"
			ip -n "$NS_HUB" link set "br-$b" up
		done
	else
		for b in lab snat; do ip -n "$NS_HUB" link del "br-$b" >/dev/null 2>&1 || true; done
	fi
	# the router namespace: wide ephemeral range; ICMP echo sockets for every gid
	# (so an unprivileged acrouter can ping without CAP_NET_RAW)
	in_ns "$NS_RTR" sysctl -qw net.ipv4.ip_local_port_range="10000 65000" net.ipv4.ping_group_range="0 2147483647"
	for ns in "$NS_CLAB" "$NS_CSNAT"; do in_ns "$ns" sysctl -qw net.ipv4.ping_group_range="0 2147483647"; done
	mkdir -p "$NETNS_ETC"
	echo "nameserver $LAN_IP" >"$NETNS_ETC/resolv.conf"
	for ns in "$NS_HUB" "$NS_LAN" "$NS_RTR"; do
		[ -z "$(ip -n "$ns" route show default)" ] || die "namespace $ns has a default route; refusing"
	done
}

# -------------------------------------------------------------- LAN services --
lan_up() {
	mkdir -p "$WWW"
	[ -f "$WWW/index.html" ] || printf '%s\n<p>served by busybox httpd in %s</p>\n' "$HTTP_FIRST_LINE" "$NS_LAN" >"$WWW/index.html"
	[ -f "$WWW/1m.bin" ] || head -c 1048576 /dev/zero >"$WWW/1m.bin"
	daemon httpd "$NS_LAN" busybox httpd -f -p "$LAN_IP:$LAB_HTTP_PORT" -h "$WWW"
	local p
	for p in $LAB_IPERF_PORTS; do daemon "iperf3-$p" "$NS_LAN" iperf3 -s -B "$LAN_IP" -p "$p"; done
	daemon udp-echo "$NS_LAN" socat -T 2 "UDP4-RECVFROM:$LAB_ECHO_PORT,bind=$LAN_IP,fork" PIPE
	daemon tcp-echo "$NS_LAN" socat "TCP4-LISTEN:$LAB_ECHO_PORT,bind=$LAN_IP,fork,reuseaddr" PIPE
	local txt=() i
	for i in $(seq 1 12); do txt+=("--txt-record=big.$LAB_DNS_ZONE,acrouter-lab-big-record-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"); done
	daemon dnsmasq "$NS_LAN" dnsmasq --keep-in-foreground --log-facility=- --conf-file=/dev/null --no-resolv \
		--no-hosts --no-poll --bind-interfaces --listen-address="$LAN_IP" --port=53 --user=root \
		--pid-file="$LAB_STATE/dnsmasq.pid" --cache-size=0 --local="/$LAB_DNS_ZONE/" \
		--host-record="www.$LAB_DNS_ZONE,$LAN_IP" --host-record="lan.$LAB_DNS_ZONE,$LAN_IP" \
		--host-record="router.$LAB_DNS_ZONE,$RTR_IP" --host-record="hub.$LAB_DNS_ZONE,$HUB_IP" "${txt[@]}"
	check_started
}
wait_listen() { # ns proto addr:port seconds
	local t0=$SECONDS f=-Hltn; [ "$2" = udp ] && f=-Hlun
	until [ -n "$(in_ns "$1" ss $f "src $3")" ]; do
		((SECONDS - t0 < $4)) || die "nothing listens on $2 $3 in $1 after $4 s"
		sleep 0.05
	done
}

# ----------------------------------------------------------------- vpnserver --
# seed_config [server|bridge [PORT HUB]]: vpn_server.config with everything that phones
# home or listens beyond PORT off; `bridge` prints the same for bench/topology.sh's VPN
# Bridge (vpn_bridge.config has the same format; it lacks the server-only keys).
seed_config() {
	local kind=${1:-server} port=${2:-$LAB_PORT} hub=${3:-$LAB_HUB}
	if [ "$kind" = bridge ]; then
		seed_config server "$port" "$hub" | sed -e '/^\tdeclare LocalBridgeList$/,/^\t}$/d' \
			-e '/DisableSessionReconnect/d' -e '/ServerType/d' -e 's/vpn_server.config/vpn_bridge.config/'
		return
	fi
	cat <<EOF
# vpn_server.config seeded by acrouter lab/lab.sh (key names: SiLoadServerCfg, src/Cedar/Server.c)
declare root
{
	uint ConfigRevision 0
	bool IPsecMessageDisplayed true
	string Region US
	bool VgsMessageDisplayed false

	declare DDnsClient
	{
		bool Disabled true
	}
	declare IPsec
	{
		bool EtherIP_IPsec false
		string IPsec_Secret lab
		string L2TP_DefaultHub $hub
		bool L2TP_IPsec false
		bool L2TP_Raw false
	}
	declare ListenerList
	{
		declare Listener0
		{
			bool DisableDos true
			bool Enabled true
			uint Port $port
		}
	}
	declare LocalBridgeList
	{
		bool DoNotDisableOffloading false
	}
	declare ServerConfiguration
	{
		bool DisableNatTraversal true
		bool EnableVpnAzure false
		bool UseKeepConnect false
		string KeepConnectHost 127.0.0.1
		bool DisableJsonRpcWebApi true
		bool EnableVpnOverIcmp false
		bool EnableVpnOverDns false
		bool DisableIPv6Listener true
		bool DisableDosProtection true
		bool DisableGetHostNameWhenAcceptTcp true
		bool DisableSessionReconnect false
		bool NoDebugDump true
		string PortsUDP \$
		uint ServerType 0
		uint MaxConnectionsPerIP 65535
		uint MaxUnestablishedConnections 10000

		declare Proto
		{
			declare OpenVPN
			{
				bool Enabled false
			}
			declare SSTP
			{
				bool Enabled false
			}
		}
	}
	declare VirtualHUB
	{
	}
}
EOF
}
server_start() {
	mkdir -p "$SRV/lib" "$SRV/log" "$SRV/run"
	echo "nameserver $LAN_IP" >"$SRV/resolv.conf"
	[ -f "$SRV/lib/vpn_server.config" ] || seed_config >"$SRV/lib/vpn_server.config"
	if ! pid_of vpnserver >/dev/null; then
		rm -f "$SRV"/run/.pid_* "$SRV"/run/.ctl_* "$SRV"/run/.VPN-*
		# ip netns exec -> unshare (private mount ns) -> sh (bind mounts) -> exec vpnserver,
		# so $! is vpnserver itself.
		ip netns exec "$NS_HUB" unshare --mount --propagation private -- /bin/sh -ec '
			S=$1; shift
			for d in /var/lib/softether:lib /var/log/softether:log /run/softether:run; do
				mkdir -p "${d%%:*}"; mount --bind "$S/${d#*:}" "${d%%:*}"
			done
			rc=$(readlink -f /etc/resolv.conf || true)
			if [ -n "$rc" ] && [ -f "$rc" ]; then mount --bind "$S/resolv.conf" "$rc"; fi
			exec "$@"' sh "$SRV" "$LAB_VPNSERVER_BIN" start --foreground \
			>>"$LOGS/vpnserver.log" 2>&1 </dev/null &
		local pid=$!
		record vpnserver "$pid"
	fi
	local t0=$SECONDS pid
	until [ -n "$(in_ns "$NS_HUB" ss -Hltn "sport = :$LAB_PORT")" ]; do
		pid=$(pid_of vpnserver) || die "vpnserver exited during startup: $(tail -5 "$LOGS/vpnserver.log")"
		((SECONDS - t0 < LAB_START_TIMEOUT)) || die "vpnserver not listening on :$LAB_PORT after ${LAB_START_TIMEOUT}s"
		sleep 0.05
	done
	pid=$(pid_of vpnserver)
	[ "$(readlink "/proc/$pid/exe")" = "$(readlink -f "$LAB_VPNSERVER_BIN")" ] || die "pid $pid is not vpnserver"
	[ "$(readlink "/proc/$pid/ns/net")" = "$(readlink "/run/netns/$NS_HUB" 2>/dev/null || stat -L -c 'net:[%i]' "/run/netns/$NS_HUB")" ] ||
		die "vpnserver pid $pid is not in $NS_HUB"
}

VC_PW="$LAB_ADMIN_PASSWORD"
vc() { # vpncmd as server admin, inside the hub namespace, bounded
	timeout -k 2 "$LAB_VPNCMD_TIMEOUT" ip netns exec "$NS_HUB" "$LAB_VPNCMD_BIN" "127.0.0.1:$LAB_PORT" /SERVER \
		"/PASSWORD:$VC_PW" /PROGRAMMING "$@" </dev/null
}
vc_ok() {
	local out rc=0
	out=$(vc "$@" 2>&1) || rc=$?
	[ $rc = 0 ] || die "vpncmd $* failed (rc=$rc): $(printf '%s\n' "$out" | tail -4)"
	printf '%s\n' "$out"
}
admin_login() {
	local t0=$SECONDS
	while :; do
		VC_PW="$LAB_ADMIN_PASSWORD"; vc /CMD ServerInfoGet >/dev/null 2>&1 && return 0
		VC_PW=""; LAB_VPNCMD_TIMEOUT=5 vc /CMD ServerInfoGet >/dev/null 2>&1 && {
			vc_ok /CMD ServerPasswordSet "$LAB_ADMIN_PASSWORD" >/dev/null
			VC_PW="$LAB_ADMIN_PASSWORD"; log "set the server admin password"; return 0; }
		((SECONDS - t0 < LAB_START_TIMEOUT)) || die "cannot log in to vpnserver as admin"
		sleep 0.2
	done
}
csv_first_col() { sed 1d | cut -d, -f1 | tr -d '"'; }
server_configure() {
	admin_login
	local hubs bridges h
	hubs=$(vc_ok /CSV /CMD HubList | csv_first_col)
	for h in "$LAB_HUB:$LAB_HUB_PASSWORD" "$LAB_SNAT_HUB:$LAB_SNAT_HUB_PASSWORD"; do
		grep -qx "${h%%:*}" <<<"$hubs" || { vc_ok /CMD HubCreate "${h%%:*}" "/PASSWORD:${h#*:}" >/dev/null; log "created hub ${h%%:*}"; }
	done
	grep -qx DEFAULT <<<"$hubs" && vc_ok /CMD HubDelete DEFAULT >/dev/null
	# Everything below is idempotent; one vpncmd per hub via a command file (Hub <name> selects it).
	local f="$LAB_STATE/configure.vpncmd"
	{
		echo "Hub $LAB_HUB"
		echo "ExtOptionSet DisableKernelModeSecureNAT /VALUE:1"
		echo "ExtOptionSet DisableIpRawModeSecureNAT /VALUE:1"
		local u
		for u in "$LAB_ROUTER_USER:$LAB_ROUTER_PASSWORD" "$LAB_CLIENT_USER:$LAB_CLIENT_PASSWORD" "$LAB_NOBRIDGE_USER:$LAB_NOBRIDGE_PASSWORD"; do
			echo "UserCreate ${u%%:*} /GROUP:none /REALNAME:none /NOTE:acrouter-lab"
			echo "UserPasswordSet ${u%%:*} /PASSWORD:${u#*:}"
		done
		echo "UserPolicySet $LAB_ROUTER_USER /NAME:NoBridge /VALUE:no"
		echo "UserPolicySet $LAB_ROUTER_USER /NAME:NoRouting /VALUE:no"
		echo "UserPolicySet $LAB_ROUTER_USER /NAME:MaxConnection /VALUE:32"
		echo "UserPolicySet $LAB_NOBRIDGE_USER /NAME:NoBridge /VALUE:yes"
		echo "UserPolicySet $LAB_NOBRIDGE_USER /NAME:NoRouting /VALUE:yes"
		echo "Hub $LAB_SNAT_HUB"
		echo "ExtOptionSet DisableKernelModeSecureNAT /VALUE:1"
		echo "ExtOptionSet DisableIpRawModeSecureNAT /VALUE:1"
		echo "UserCreate $LAB_CLIENT_USER /GROUP:none /REALNAME:none /NOTE:acrouter-lab"
		echo "UserPasswordSet $LAB_CLIENT_USER /PASSWORD:$LAB_CLIENT_PASSWORD"
		echo "SecureNatEnable"
		for h in "$LAB_HUB" "$LAB_SNAT_HUB"; do
			echo "Hub $h"
			if [ "$LAB_HUB_LOGS" = off ]; then
				echo "LogDisable security"; echo "LogDisable packet"
			else
				echo "LogEnable security"; echo "LogEnable packet"
			fi
		done
		echo "Hub $LAB_SNAT_HUB"
		echo "NatSet /MTU:1500 /TCPTIMEOUT:1800 /UDPTIMEOUT:60 /LOG:$([ "$LAB_HUB_LOGS" = off ] && echo no || echo yes)"
	} >"$f"
	# UserCreate fails for existing users; the file keeps going, so judge the result by UserList below
	vc "/IN:$f" >"$LOGS/configure.log" 2>&1 || true
	local bad; bad=$(grep -o 'Error code: [0-9]*' "$LOGS/configure.log" | grep -v ': 66$' || true) # 66: already exists
	[ -z "$bad" ] || die "vpncmd configure failed ($bad); see $LOGS/configure.log"
	local users
	users=$(vc_ok /ADMINHUB:"$LAB_HUB" /CSV /CMD UserList | csv_first_col)
	for u in "$LAB_ROUTER_USER" "$LAB_CLIENT_USER" "$LAB_NOBRIDGE_USER"; do
		grep -qx "$u" <<<"$users" || die "user $u missing in hub $LAB_HUB after configure (see $LOGS/configure.log)"
	done
	# local bridges: exactly one per hub, of the wanted kind (a config from the other mode is replaced)
	local want_lab=vb-lab want_snat=vb-snat tap=no row hub dev
	[ "$LAB_BRIDGE_TAP" = 1 ] && want_lab=lab want_snat=snat tap=yes
	bridges=$(vc_ok /CSV /CMD BridgeList | sed 1d)
	while IFS=, read -r _ hub dev _; do
		[ -n "$hub" ] || continue
		case "$hub:$dev" in "$LAB_HUB:$want_lab" | "$LAB_SNAT_HUB:$want_snat") continue ;; esac
		if [ "$hub" = "$LAB_HUB" ] || [ "$hub" = "$LAB_SNAT_HUB" ]; then
			vc_ok /CMD BridgeDelete "$hub" "/DEVICE:$dev" >/dev/null; log "deleted local bridge $hub <-> $dev"
		fi
	done <<<"$bridges"
	for row in "$LAB_HUB:$want_lab" "$LAB_SNAT_HUB:$want_snat"; do
		grep -q "^[0-9]*,${row%%:*},${row#*:}," <<<"$bridges" || {
			vc_ok /CMD BridgeCreate "${row%%:*}" "/DEVICE:${row#*:}" "/TAP:$tap" >/dev/null; log "local bridge ${row%%:*} <-> ${row#*:} (tap: $tap)"; }
	done
	vc /CMD Flush >/dev/null 2>&1 || true
	wait_bridges
	attach_taps
}
attach_taps() { # TAP mode: put vpnserver's tap_lab/tap_snat (re-created at every start) into the Linux bridges
	[ "$LAB_BRIDGE_TAP" = 1 ] || return 0
	local b t0=$SECONDS
	for b in lab snat; do
		until ip -n "$NS_HUB" link show "tap_$b" >/dev/null 2>&1; do
			((SECONDS - t0 < 10)) || die "vpnserver did not create tap_$b in $NS_HUB"
			sleep 0.05
		done
		ip -n "$NS_HUB" link set "tap_$b" master "br-$b" up
		offload_off "$NS_HUB" "tap_$b"
	done
}
wait_bridges() {
	local t0=$SECONDS st
	while :; do
		st=$(vc /CSV /CMD BridgeList 2>/dev/null | sed 1d || true)
		[ -n "$st" ] && [ -z "$(grep -v ',Operating$' <<<"$st" || true)" ] && return 0
		((SECONDS - t0 < 10)) || die "local bridges not operating: $st"
		sleep 0.1
	done
}
server_stop() { stop vpnserver "$LAB_STOP_TIMEOUT"; }

# ------------------------------------------------------------------ commands --
cmd_env() {
	cat <<EOF
LAB_PREFIX=$P
LAB_STATE=$LAB_STATE
LAB_NS_HUB=$NS_HUB
LAB_NS_LAN=$NS_LAN
LAB_NS_RTR=$NS_RTR
LAB_NS_CLAB=$NS_CLAB
LAB_NS_CSNAT=$NS_CSNAT
LAB_SERVER=$HUB_IP:$LAB_PORT
LAB_SERVER_IP=$HUB_IP
LAB_PORT=$LAB_PORT
LAB_ADMIN_PASSWORD=$LAB_ADMIN_PASSWORD
LAB_HUB=$LAB_HUB
LAB_SNAT_HUB=$LAB_SNAT_HUB
LAB_ROUTER_USER=$LAB_ROUTER_USER
LAB_ROUTER_PASSWORD=$LAB_ROUTER_PASSWORD
LAB_CLIENT_USER=$LAB_CLIENT_USER
LAB_CLIENT_PASSWORD=$LAB_CLIENT_PASSWORD
LAB_NOBRIDGE_USER=$LAB_NOBRIDGE_USER
LAB_NOBRIDGE_PASSWORD=$LAB_NOBRIDGE_PASSWORD
LAB_LAN_IP=$LAN_IP
LAB_RTR_IP=$RTR_IP
LAB_HTTP_PORT=$LAB_HTTP_PORT
LAB_HTTP_FIRST_LINE=$HTTP_FIRST_LINE
LAB_IPERF_PORTS=$LAB_IPERF_PORTS
LAB_ECHO_PORT=$LAB_ECHO_PORT
LAB_DNS_ZONE=$LAB_DNS_ZONE
LAB_DNS_SERVER=$LAN_IP
LAB_RESOLV_CONF=$NETNS_ETC/resolv.conf
LAB_CLAB_MAC=$LAB_CLAB_MAC
LAB_CSNAT_MAC=$LAB_CSNAT_MAC
LAB_CLAB_STATIC=$LAB_CLAB_STATIC
LAB_CLAB_GW=$LAB_CLAB_GW
LAB_VPNSERVER_LOG=$LOGS/vpnserver.log
LAB_VPNSERVER_BIN=$LAB_VPNSERVER_BIN
EOF
}
cmd_up() {
	need_root
	local t0; t0=$(now_ms)
	ensure_tools
	mkdir -p "$LAB_STATE" "$PIDS" "$LOGS"
	chmod 755 "$LAB_STATE"
	touch "$MARKER"
	net_up
	lan_up
	server_start
	server_configure
	wait_listen "$NS_LAN" tcp "$LAN_IP:$LAB_HTTP_PORT" 5
	wait_listen "$NS_LAN" udp "$LAN_IP:53" 5
	cmd_env >"$LAB_STATE/env"
	log "up in $(($(now_ms) - t0)) ms (state $LAB_STATE)"
}
cmd_down() {
	need_root
	local t0 ns p i n; t0=$(now_ms)
	if [ -d "$PIDS" ]; then
		server_stop
		for p in "$PIDS"/*.pid; do [ -e "$p" ] && stop "$(basename "$p" .pid)" 2; done
	fi
	# whatever still runs in our namespaces was started there by the lab or its users
	for ns in "${ALL_NS[@]}"; do
		ns_exists "$ns" || continue
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null || true; done
	done
	for ns in "${ALL_NS[@]}"; do
		ns_exists "$ns" || continue
		for ((i = 0; i < 40; i++)); do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break; sleep 0.05; done
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		ip netns del "$ns" || log "warning: could not delete netns $ns"
	done
	for ns in "${ALL_NS[@]}"; do rm -rf "/etc/netns/$ns"; done
	rmdir /etc/netns 2>/dev/null || true
	n=0; for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && n=$((n + 1)); done
	[ $n = 0 ] || die "down: $n namespaces left"
	log "down in $(($(now_ms) - t0)) ms"
}
cmd_purge() {
	cmd_down
	[ -d "$LAB_STATE" ] || return 0
	[ -f "$MARKER" ] || die "$LAB_STATE has no lab marker; not removing it"
	rm -rf "$LAB_STATE"
}
cmd_status() {
	need_root
	local ns rc=0 f n pid h
	for ns in "${ALL_NS[@]}"; do
		if ns_exists "$ns"; then echo "ns $ns: $(ip -n "$ns" -4 -br addr | grep -v '^lo ' | awk '{printf "%s=%s ", $1, $3}')"
		else echo "ns $ns: MISSING"; rc=1; fi
	done
	for f in "$PIDS"/*.pid; do
		[ -e "$f" ] || continue
		n=$(basename "$f" .pid)
		if pid=$(pid_of "$n"); then echo "proc $n: pid $pid"; else echo "proc $n: DEAD"; rc=1; fi
	done
	if pid_of vpnserver >/dev/null; then
		vc /CSV /CMD HubList 2>/dev/null || rc=1
		vc /CSV /CMD BridgeList 2>/dev/null || rc=1
		for h in "$LAB_HUB" "$LAB_SNAT_HUB"; do
			echo "sessions in $h:"; vc /ADMINHUB:"$h" /CSV /CMD SessionList 2>/dev/null | sed 1d || true
		done
	fi
	return $rc
}
cmd_exec() {
	need_root
	[ $# -ge 2 ] || die "usage: lab.sh exec hub|lan|rtr|clab|csnat CMD..."
	local ns; ns=$(ns_of "$1"); shift
	exec ip netns exec "$ns" "$@"
}
udhcpc_script() {
	cat <<'EOF'
#!/bin/sh
# udhcpc event script (acrouter lab.sh): configure eth0 and print the lease
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; exit 0 ;; # IPv4 only: keep IPv6 (link-local, SLAAC)
bound|renew)
	pfx=$(awk -v m="$mask" 'BEGIN{if (m ~ /\./) {n=split(m,a,"."); c=0; for(i=1;i<=n;i++){x=a[i]+0; while(x>0){c+=x%2; x=int(x/2)}} print c} else print m}')
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/$pfx" dev "$interface"
	[ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
	printf 'LEASE_IP=%s\nLEASE_PREFIX=%s\nLEASE_ROUTER=%s\nLEASE_DNS=%s\nLEASE_DOMAIN=%s\nLEASE_TIME=%s\nLEASE_SERVER=%s\nLEASE_MTU=%s\n' \
		"$ip" "$pfx" "${router%% *}" "$(echo $dns)" "$domain" "$lease" "$serverid" "$mtu" >"$LEASE_FILE"
	;;
esac
exit 0
EOF
}
cmd_dhcp() {
	need_root
	local which="${1:-}" ns
	case "$which" in clab | csnat) ns=$(ns_of "$which") ;; *) die "usage: lab.sh dhcp clab|csnat" ;; esac
	ns_exists "$ns" || die "$ns missing; run 'lab.sh up'"
	mkdir -p "$LAB_STATE/bin" "$LOGS"
	udhcpc_script >"$LAB_STATE/bin/udhcpc.sh"; chmod 755 "$LAB_STATE/bin/udhcpc.sh"
	local lease="$LAB_STATE/lease-$which.env" t0 rc=0
	rm -f "$lease"
	ip -n "$ns" -4 addr flush dev eth0 # IPv4 only: the IPv6 link-local and SLAAC addresses stay
	ip -n "$ns" route flush table main
	t0=$(now_ms)
	LEASE_FILE="$lease" timeout -k 2 "$((LAB_DHCP_TIMEOUT + 2))" ip netns exec "$ns" busybox udhcpc -f -q -n \
		-i eth0 -t "$LAB_DHCP_TIMEOUT" -T 1 -A 1 -s "$LAB_STATE/bin/udhcpc.sh" >"$LOGS/udhcpc-$which.log" 2>&1 || rc=$?
	[ $rc = 0 ] && [ -s "$lease" ] || die "no DHCP lease on $ns/eth0 within ${LAB_DHCP_TIMEOUT}s: $(tail -3 "$LOGS/udhcpc-$which.log")"
	echo "LEASE_ELAPSED_MS=$(($(now_ms) - t0))" >>"$lease"
	# like a DHCP client's resolvconf hook: `ip netns exec $ns` then resolves through the lease's DNS
	local dns domain
	dns=$(sed -n 's/^LEASE_DNS=//p' "$lease"); domain=$(sed -n 's/^LEASE_DOMAIN=//p' "$lease")
	if [ -n "$dns" ]; then
		mkdir -p "/etc/netns/$ns"
		{ [ -n "$domain" ] && echo "search $domain"; for d in $dns; do echo "nameserver $d"; done; } >"/etc/netns/$ns/resolv.conf"
	fi
	cat "$lease"
}
cmd_static() { # clab|csnat [IP/PFX [GW]]
	need_root
	local which="${1:-}" ns
	case "$which" in clab | csnat) ns=$(ns_of "$which") ;; *) die "usage: lab.sh static clab|csnat [IP/PFX [GW]]" ;; esac
	local addr="${2:-$LAB_CLAB_STATIC}" gw="${3:-$LAB_CLAB_GW}"
	ip -n "$ns" addr flush dev eth0
	ip -n "$ns" route flush table main
	ip -n "$ns" addr add "$addr" dev eth0
	ip -n "$ns" route add default via "$gw" dev eth0
	echo "STATIC_IP=${addr%/*}"; echo "STATIC_PREFIX=${addr#*/}"; echo "STATIC_GW=$gw"
}
cmd_restart_server() {
	need_root
	local t0 t1; t0=$(now_ms)
	pid_of vpnserver >/dev/null || die "vpnserver not running"
	server_stop
	t1=$(now_ms)
	server_start
	admin_login
	wait_bridges
	attach_taps
	log "restart-server: stop $((t1 - t0)) ms, start+ready $(($(now_ms) - t1)) ms"
}
cmd_kill_conns() { # [PEER_IP[:PORT]|all] [server|client]: destroy (ss -K) TCP connections to :$LAB_PORT
	need_root
	local peer="${1:-all}" side="${2:-server}" ns filter
	[ "$peer" = all ] && peer=""
	case "$side" in
	server) # the server's side of connections from PEER (default: every non-localhost peer)
		ns=$NS_HUB
		if [ -n "$peer" ]; then filter="( sport = :$LAB_PORT and dst $peer )"; else filter="( sport = :$LAB_PORT and not dst 127.0.0.1 )"; fi ;;
	client) # the client's side, in the router namespace (PEER = the client's local IP[:PORT])
		ns=$NS_RTR
		if [ -n "$peer" ]; then filter="( dport = :$LAB_PORT and src $peer )"; else filter="( dport = :$LAB_PORT )"; fi ;;
	*) die "usage: lab.sh kill-conns [PEER_IP[:PORT]|all] [server|client]" ;;
	esac
	local before after
	before=$(in_ns "$ns" ss -Htn state established "$filter" | wc -l)
	in_ns "$ns" ss -Htn -K state established "$filter" >/dev/null
	after=$(in_ns "$ns" ss -Htn state established "$filter" | wc -l)
	echo "KILLED=$((before - after))"
	[ "$before" -gt 0 ] || die "no established connections to :$LAB_PORT matched ($side side)"
}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

main() {
	local c="${1:-help}"; [ $# -gt 0 ] && shift
	case "$c" in
	install) cmd_install ;;
	seed-config) seed_config "$@" ;;
	up) cmd_up ;;
	down) cmd_down ;;
	purge) cmd_purge ;;
	status) cmd_status ;;
	env) cmd_env ;;
	exec) cmd_exec "$@" ;;
	vpncmd) need_root; vc "$@" ;;
	dhcp) cmd_dhcp "$@" ;;
	static) cmd_static "$@" ;;
	restart-server) cmd_restart_server ;;
	kill-conns) cmd_kill_conns "$@" ;;
	help | -h | --help) usage ;;
	*) usage >&2; die "unknown command: $c" ;;
	esac
}
main "$@"
