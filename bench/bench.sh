#!/usr/bin/env bash
# bench/bench.sh — `make bench`: acrouter against SoftEther's own NATs on one real server, in one run.
#
# Paths (all from a client namespace to the same LAN target 10.77.0.1, one machine, one run):
#   acrouter  client acrb-clab, local-bridged into hub LAB; acrouter runs as `nobody` (no capabilities)
#             in acrb-rtr, joined to hub LAB over TLS
#   securenat client acrb-csnat, local-bridged into hub SNAT of the same vpnserver (SecureNAT, user mode)
#   cascade   client acrb-ccas, local-bridged into hub CASC; SoftEther VPN Bridge (SecureNAT on its hub
#             BRIDGE) in acrb-rtr, cascaded into CASC — acrouter's architecture, in C (bench/topology.sh)
#   veth      client acrb-cdir, plain veth to the LAN namespace: the limit
# Workloads: DHCP discover→ack (udhcpc; and tcpbench's raw-socket DISCOVER→ACK), router RSS/CPU idle, DNS latency (new names; repeated name =
# cache hit), 64-byte request/response, TCP connect latency, connections/s at 1/32/128 concurrent,
# iperf3 both directions (3 runs each, interleaved across paths), router RSS/CPU with 4096 idle
# sessions, max concurrent sessions (bounded attempt), Go micro-benchmarks. Results: a table with
# ratios acrouter/SecureNAT on stdout and in bench/RESULTS.md; raw data in $LAB_STATE/runs/<time>/.
#
# Needs root on Debian (namespaces; installs softether-vpnserver/-vpnbridge, iperf3, busybox … with
# apt-get). Every step is bounded by `timeout`; the whole run by BENCH_BUDGET_S (steps that would
# start after it are skipped and reported as such). Settings: the BENCH_* variables below,
# LAB_PREFIX/LAB_STATE (acrb, /tmp/acrouter-bench), TOPO_UDP_ACCEL (0: cascade over TLS only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

export LAB_PREFIX="${LAB_PREFIX:-acrb}"
export LAB_STATE="${LAB_STATE:-/tmp/acrouter-bench}"
export LAB_HUB_LOGS="${LAB_HUB_LOGS:-off}"   # SecureNAT's packet/security/NAT logs off, as acrouter's NAT log
export TOPO_UDP_ACCEL="${TOPO_UDP_ACCEL:-0}"
: "${BENCH_PATHS:=acrouter securenat cascade veth}"
: "${BENCH_IPERF_RUNS:=3}"
: "${BENCH_IPERF_TIME:=10}"          # seconds per iperf3 run
: "${BENCH_DHCP_RUNS:=5}"
: "${BENCH_DHCP_RAW_N:=10}"          # tcpbench dhcp: raw-socket DISCOVER→ACK runs with one MAC (+ a warm-up, + a fresh MAC)
: "${BENCH_LATE_RUNS:=2}"            # extra SecureNAT/cascade upload runs at the end (slow/fast mode check)
: "${BENCH_CPS_LEVELS:=1 32 128}"
: "${BENCH_CPS_TIME:=3}"             # seconds per conn/s level
: "${BENCH_CONNECT_N:=300}"
: "${BENCH_RR_N:=5000}"
: "${BENCH_DNS_N:=500}"
: "${BENCH_IDLE_SESSIONS:=4096}"
: "${BENCH_HOLD_MAX:=19500}"         # these machines cap a process at 20000 descriptors (client and echo server too)
: "${BENCH_HOLD_TIME:=40}"           # seconds allowed to open them
: "${BENCH_SAMPLE_S:=4}"             # CPU sampling window (idle, idle sessions)
: "${BENCH_DRAIN_S:=30}"             # bound on waiting for a NAT table to empty between tests
: "${BENCH_GO:=1}"                   # Go micro-benchmarks
: "${BENCH_GO_BENCHTIME:=1s}"
: "${BENCH_GO_PKGS:=./vpnlink/... ./netstack/... ./router/...}"
: "${BENCH_BUDGET_S:=1080}"          # 18 minutes
: "${BENCH_KEEP:=0}"                 # 1: leave the lab (with acrouter) up afterwards
: "${BENCH_STEPS:=go dhcp latency iperf sessions late}" # any subset, in this order ("dns": latency's DNS part only)
: "${BENCH_FROM_HEAD:=0}"            # 1: build and micro-benchmark the committed HEAD (git archive), not the work tree
: "${BENCH_RESULTS:=$ROOT/bench/RESULTS.md}"
: "${BENCH_ECHO_PORT:=9000}"
: "${BENCH_STATUS:=127.0.0.1:8765}"
: "${BENCH_ACROUTER_FLAGS:=--max-sessions 65536 --max-sessions-per-client 65536 --nat-log=false --dns-rate-limit 1048576}"
RUN_AS="${BENCH_USER:-nobody}"

SRC=$ROOT                           # what is built and micro-benchmarked (BENCH_FROM_HEAD=1: an export of HEAD)
LAB="bash $ROOT/lab/lab.sh"
TOPO="bash $ROOT/bench/topology.sh"
OUT="$LAB_STATE/runs/$(date -u +%Y%m%dT%H%M%SZ)"
RES="$OUT/results.jsonl"
BIN="$LAB_STATE/bin"
TB="$BIN/tcpbench"
HZ=$(getconf CLK_TCK)
T_START=$SECONDS
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

say() { printf '[bench %3ds] %s\n' $((SECONDS - T_START)) "$*" | tee -a "$OUT/log.txt" >&2; }
die() { say "FAILED: $*"; exit 1; }
rec() { # path test json-object
	printf '{"path":"%s","test":"%s","data":%s}\n' "$1" "$2" "${3:-null}" >>"$RES"
}
budget_left() { (( SECONDS - T_START < BENCH_BUDGET_S )); }
skip() { say "skipped (time budget ${BENCH_BUDGET_S}s used): $*"; rec "$1" skipped "\"$2\""; }
now_ns() { date +%s%N; }
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ------------------------------------------------------------ processes --
starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [ "${s%% *}" != Z ]; }
cpu_ticks() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }; s=${s##*) }; set -- $s; echo $((${12} + ${13})); }
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
pidfile_pid() { local pid st; read -r pid st <"$1" 2>/dev/null && alive "$pid" && [ "$(starttime "$pid")" = "$st" ] && echo "$pid"; }
server_pid() { pidfile_pid "$LAB_STATE/pids/vpnserver.pid"; }
bridge_pid() { pidfile_pid "$LAB_STATE/topology/vpnbridge.pid"; }
router_pid() { # the process doing the NAT on a path
	case "$1" in acrouter) echo "${ACR_PID:-}" ;; securenat) server_pid ;; cascade) bridge_pid ;; *) echo "" ;; esac
}
host_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
busy_pct() { awk -v a="$1" -v b="$2" 'BEGIN{split(a,x," "); split(b,y," "); d=y[2]-x[2]; if (d <= 0) print 0; else printf "%.0f", (y[1]-x[1])/d*100}'; }
pct() { awk -v a="$1" -v b="$2" -v hz="$HZ" -v ns="$3" 'BEGIN{ if (ns <= 0) print 0; else printf "%.1f", (b-a)/hz/(ns/1e9)*100 }'; }

ACR_PID="" ECHO_PID="" BG_PIDS=()
stop_pid() { # pid seconds
	local pid=$1 i
	[ -n "$pid" ] && alive "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < $2 * 20; i++)); do alive "$pid" || return 0; sleep 0.05; done
	kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
	local rc=$?
	set +e
	for p in "${BG_PIDS[@]}"; do stop_pid "$p" 2; done
	if [ "$BENCH_KEEP" = 1 ]; then
		say "BENCH_KEEP=1: lab $LAB_PREFIX left up with acrouter (pid $ACR_PID) and the echo server (pid $ECHO_PID); tear down:"
		say "  LAB_PREFIX=$LAB_PREFIX LAB_STATE=$LAB_STATE bash bench/topology.sh down && LAB_PREFIX=$LAB_PREFIX LAB_STATE=$LAB_STATE bash lab/lab.sh down"
	else
		stop_pid "$ACR_PID" 10
		stop_pid "$ECHO_PID" 3
		$TOPO down >>"$OUT/log.txt" 2>&1 || say "warning: topology.sh down failed"
		$LAB down >>"$OUT/log.txt" 2>&1 || say "warning: lab.sh down failed"
	fi
	exit $rc
}

# -------------------------------------------------------------- helpers --
# path -> client namespace, target, DNS server
client_ns() { case "$1" in acrouter) echo "$LAB_PREFIX-clab" ;; securenat) echo "$LAB_PREFIX-csnat" ;; cascade) echo "$LAB_PREFIX-ccas" ;; veth) echo "$LAB_PREFIX-cdir" ;; esac; }
dns_server() { # the lease's DNS server (the path's redirector); veth: the bench's dnsmasq itself
	case "$1" in veth) echo "$TOPO_DNS" ;; *) sed -n 's/^LEASE_DNS=//p' "$OUT/lease-$1.env" | awk '{print $1}' ;; esac
}
do_dhcp() { # path -> prints LEASE_*
	case "$1" in
	acrouter) $LAB dhcp clab ;;
	securenat) $LAB dhcp csnat ;;
	cascade) $TOPO dhcp ;;
	*) return 1 ;;
	esac
}
metrics() { # acrouter's Prometheus metrics (inside the router namespace)
	timeout 5 ip netns exec "$LAB_PREFIX-rtr" curl -sS -m 4 "http://$BENCH_STATUS/metrics" 2>/dev/null || true
}
metric_sum() { # name-regex label-filter: sum of matching samples
	metrics | awk -v n="$1" -v f="${2:-}" '{k = $1; sub(/[{].*/, "", k)} k == n && index($1, f) {s += $2} END {printf "%.0f", s + 0}'
}
nat_sessions() { # path -> open NAT sessions (acrouter: flows; SecureNAT: TCP+UDP+ICMP+DNS sessions)
	case "$1" in
	acrouter) metric_sum acrouter_flows_open ;;
	securenat) $LAB vpncmd /ADMINHUB:SNAT /CSV /CMD SecureNatStatusGet 2>/dev/null | awk -F, '/^NAT (TCP|UDP|ICMP|DNS)/{gsub(/[^0-9]/,"",$2); s+=$2} END{print s+0}' ;;
	cascade) $TOPO bridgecmd /ADMINHUB:BRIDGE /CSV /CMD SecureNatStatusGet 2>/dev/null | awk -F, '/^NAT (TCP|UDP|ICMP|DNS)/{gsub(/[^0-9]/,"",$2); s+=$2} END{print s+0}' ;;
	*) echo 0 ;;
	esac
}
drain() { # path: wait (bounded) until the NAT table is (nearly) empty; prints seconds waited
	local p=$1 t0=$SECONDS n=0
	[ "$p" = veth ] && { echo 0; return; }
	while ((SECONDS - t0 < BENCH_DRAIN_S)); do
		n=$(nat_sessions "$p"); [ "${n:-0}" -le 8 ] && break
		sleep 1
	done
	echo "$((SECONDS - t0)) (sessions left ${n:-?})"
}
tcpb() { # path tcpbench-args... (bounded): run tcpbench in the path's client namespace
	local p=$1; shift
	timeout -k 5 120 ip netns exec "$(client_ns "$p")" "$TB" "$@" 2>>"$OUT/tcpbench.log" || true
}
json_or_null() { local j; j=$(cat); [ -n "$j" ] && echo "$j" || echo null; }

# ---------------------------------------------------------------- setup --
setup() {
	say "installing what is missing (lab/lab.sh install; topology.sh installs softether-vpnbridge)"
	$LAB install >>"$OUT/log.txt" 2>&1 || die "lab.sh install (see $OUT/log.txt)"
	say "building acrouter, tcpbench and the report tool"
	mkdir -p "$BIN"; chmod 755 "$LAB_STATE" "$BIN"
	(cd "$SRC" && timeout 600 go build -o "$BIN/acrouter" ./cmd/acrouter) || die "go build acrouter ($SRC)"
	CGO_ENABLED=0 timeout 300 go build -o "$TB" ./bench/tcpbench || die "go build tcpbench"
	timeout 300 go build -o "$BIN/report" ./bench/report || die "go build report"
	say "lab up ($LAB_PREFIX, state $LAB_STATE, hub logs $LAB_HUB_LOGS)"
	$LAB up >>"$OUT/log.txt" 2>&1 || die "lab.sh up (see $OUT/log.txt)"
	while IFS="=" read -r k v; do export "$k=$v"; done < <($LAB env)
	$TOPO up >>"$OUT/log.txt" 2>&1 || die "topology.sh up (see $OUT/log.txt)"
	while IFS="=" read -r k v; do export "$k=$v"; done < <($TOPO env)
	CASCADE_LABEL=$($TOPO label)
	say "cascade: $CASCADE_LABEL"
	# echo server in the LAN namespace (one for all paths)
	ip netns exec "$LAB_NS_LAN" "$TB" serve -l ":$BENCH_ECHO_PORT" -max 40m >>"$OUT/echo.log" 2>&1 </dev/null &
	ECHO_PID=$!
	local i
	for ((i = 0; i < 100; i++)); do
		[ -n "$(inns "$LAB_NS_LAN" ss -Hltn "sport = :$BENCH_ECHO_PORT")" ] && break
		alive "$ECHO_PID" || die "echo server exited: $(tail -2 "$OUT/echo.log")"; sleep 0.05
	done
	# acrouter as nobody, no capabilities, in the router namespace
	local run="$LAB_STATE/acrouter"
	rm -rf "$run"; mkdir -p "$run/state"; chmod 755 "$run"; chmod 700 "$run/state"
	printf '%s' "$LAB_ROUTER_PASSWORD" >"$run/password"; chmod 600 "$run/password"
	chown "$RUN_AS" "$run/password" "$run/state"
	# shellcheck disable=SC2086
	ip netns exec "$LAB_NS_RTR" setpriv --reuid="$RUN_AS" --regid="$(id -gn "$RUN_AS" 2>/dev/null || echo nogroup)" \
		--clear-groups --inh-caps=-all "$BIN/acrouter" --server "$LAB_SERVER" --hub "$LAB_HUB" --user "$LAB_ROUTER_USER" \
		--password-file "$run/password" --state-dir "$run/state" --dns-upstream "$TOPO_DNS:53" \
		--status "$BENCH_STATUS" $BENCH_ACROUTER_FLAGS >"$OUT/acrouter.log" 2>&1 </dev/null &
	ACR_PID=$!
	for ((i = 0; i < 300; i++)); do
		grep -qs "virtual host up" "$OUT/acrouter.log" && break
		alive "$ACR_PID" || die "acrouter exited: $(tail -3 "$OUT/acrouter.log")"; sleep 0.05
	done
	grep -q 'virtual host up' "$OUT/acrouter.log" || die "acrouter not up within 15 s"
	say "acrouter pid $ACR_PID ($(ps -o user= -p "$ACR_PID")), vpnserver pid $(server_pid), vpnbridge pid $(bridge_pid), echo server pid $ECHO_PID"
}

meta() {
	local srv; srv=$($LAB vpncmd /CSV /CMD ServerInfoGet 2>/dev/null | awk -F, '/^Version,/{v=$2} /^Product Name,/{p=$2} END{print p" "v}' | tr -d '"')
	local mem; mem=$(awk '/^MemTotal:/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
	local cpu; cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
	local commit; commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
	[ "$SRC" != "$ROOT" ] || git diff --quiet HEAD -- cmd vpnlink netstack router go.mod go.sum 2>/dev/null || commit="$commit + uncommitted changes"
	rec meta meta "$(printf '{"date":"%s","nproc":%s,"cpu":"%s","mem":"%s","kernel":"%s","go":"%s","server":"%s","os":"%s","commit":"%s","cascade":"%s","udp_accel":"%s","hub_logs":"%s","acrouter_flags":"%s","loadavg":"%s","iperf3":"%s"}' \
		"$(date -u '+%Y-%m-%d %H:%M UTC')" "$(nproc)" "$cpu" "$mem" "$(uname -r)" "$(go env GOVERSION)" "$srv" \
		"$(. /etc/os-release && echo "$PRETTY_NAME")" "$commit" "$CASCADE_LABEL" "$TOPO_UDP_ACCEL" "$LAB_HUB_LOGS" \
		"$BENCH_ACROUTER_FLAGS" "$LOAD0 (after the Go micro-benchmarks and the build: $(cut -d' ' -f1-3 /proc/loadavg))" "$(iperf3 --version | head -1)")"
}

# ------------------------------------------------------------ workloads --
bench_dhcp() { # path
	local p=$1 i ms=()
	[ "$p" = veth ] && return 0
	for ((i = 1; i <= BENCH_DHCP_RUNS; i++)); do
		do_dhcp "$p" >"$OUT/lease-$p.env" 2>>"$OUT/log.txt" || { say "$p: DHCP run $i failed"; continue; }
		ms+=("$(sed -n 's/^LEASE_ELAPSED_MS=//p' "$OUT/lease-$p.env")")
	done
	rec "$p" dhcp "{\"runs_ms\":[$(IFS=,; echo "${ms[*]:-}")]}"
	say "$p: DHCP discover→ack (udhcpc incl. start) ${ms[*]:-none} ms"
	[ ${#ms[@]} -gt 0 ] || die "$p: no DHCP lease"
	# the same exchange without a client program: tcpbench sends DISCOVER/REQUEST on a raw socket from
	# test MACs (one fresh MAC = a first lease; then one fixed MAC N times = the steady state), spaced so
	# acrouter's broadcast-reply pacing (10/s) is not what is measured
	local j; j=$(tcpb "$p" dhcp -i eth0 -n "$BENCH_DHCP_RAW_N" -gap 150ms -max 20s | json_or_null)
	rec "$p" dhcp-raw "$j"
	say "$p: DHCP DISCOVER→ACK (raw socket): $(printf '%s' "$j" | grep -o '"ack":{[^}]*}' | head -c 200)"
}
bench_idle() { # path: router RSS and CPU at idle
	local p=$1 pid; pid=$(router_pid "$p")
	[ -n "$pid" ] || return 0
	local spid t0 t1 s0 s1 w0 w1; spid=$(server_pid)
	t0=$(cpu_ticks "$pid"); s0=$(cpu_ticks "$spid"); w0=$(now_ns)
	sleep "$BENCH_SAMPLE_S"
	t1=$(cpu_ticks "$pid"); s1=$(cpu_ticks "$spid"); w1=$(now_ns)
	local j; j=$(printf '{"rss_kb":%s,"cpu_pct":%s,"server_cpu_pct":%s,"seconds":%s}' "$(rss_kb "$pid")" \
		"$(pct "$t0" "$t1" $((w1 - w0)))" "$(pct "$s0" "$s1" $((w1 - w0)))" "$BENCH_SAMPLE_S")
	rec "$p" idle "$j"; say "$p: idle $j"
}
bench_dns() { # path
	local p=$1 srv j; srv=$(dns_server "$p")
	[ -n "$srv" ] || { say "$p: no DNS server"; return 0; }
	j=$(tcpb "$p" dns -s "$srv:53" -n "$BENCH_DNS_N" -mode miss -zone "$LAB_DNS_ZONE" -max 20s | json_or_null)
	rec "$p" dns-miss "$j"
	j=$(tcpb "$p" dns -s "$srv:53" -n "$BENCH_DNS_N" -mode hit -name "www.$LAB_DNS_ZONE" -max 20s | json_or_null)
	rec "$p" dns-hit "$j"
	say "$p: DNS @$srv done"
}
bench_rr() {
	local p=$1 j
	j=$(tcpb "$p" rr -a "$LAB_LAN_IP:$BENCH_ECHO_PORT" -n "$BENCH_RR_N" -s 64 -max 20s | json_or_null)
	rec "$p" rr "$j"
}
bench_connect() {
	local p=$1 j
	j=$(tcpb "$p" connect -a "$LAB_LAN_IP:$BENCH_ECHO_PORT" -n "$BENCH_CONNECT_N" -max 15s | json_or_null)
	rec "$p" connect "$j"
	say "$p: rr + connect done (drain $(drain "$p"))"
}
bench_cps() {
	local p=$1 c j pid spid t0 t1 s0 s1 h0 h1 w0 w1; pid=$(router_pid "$p"); spid=$(server_pid)
	for c in $BENCH_CPS_LEVELS; do
		budget_left || { skip "$p" "cps $c"; continue; }
		local d; d=$(drain "$p")
		t0=$(cpu_ticks "${pid:-0}"); s0=$(cpu_ticks "${spid:-0}"); h0=$(host_busy); w0=$(now_ns)
		j=$(tcpb "$p" cps -a "$LAB_LAN_IP:$BENCH_ECHO_PORT" -c "$c" -d "${BENCH_CPS_TIME}s" | json_or_null)
		t1=$(cpu_ticks "${pid:-0}"); s1=$(cpu_ticks "${spid:-0}"); h1=$(host_busy); w1=$(now_ns)
		rec "$p" "cps-$c" "{\"result\":$j,\"router_cpu_pct\":$(pct "$t0" "$t1" $((w1 - w0))),\"server_cpu_pct\":$(pct "$s0" "$s1" $((w1 - w0))),\"host_busy_pct\":$(busy_pct "$h0" "$h1"),\"drained\":\"$d\"}"
	done
	say "$p: conn/s done"
}

bridge_dev() { case "$1" in acrouter) echo vb-lab ;; securenat) echo vb-snat ;; cascade) echo vb-cas ;; esac; }
bridge_drops() { # path: frames the kernel dropped on vpnserver's local-bridge packet socket (ss -0 -e -m: d<N>)
	local dev; dev=$(bridge_dev "$1")
	[ -n "$dev" ] || { echo 0; return; }
	timeout 5 ip netns exec "$LAB_NS_HUB" ss -0 -e -m 2>/dev/null |
		awk -v d="*:$dev" '$0 ~ /^p_raw/ {hit = index($0, d) > 0; next} hit && match($0, /,d[0-9]+\)/) {print substr($0, RSTART + 2, RLENGTH - 3); hit = 0; found = 1} END {if (!found) print 0}'
}

# iperf3 one run: path dir(up|down) run#
iperf_once() { # path dir run [tag]
	local p=$1 dir=$2 n=$3 tag=${4:-} ns; ns=$(client_ns "$p")
	local pid spid; pid=$(router_pid "$p"); spid=$(server_pid)
	local f="$OUT/iperf-$p-$dir-$n.json" rev=(); [ "$dir" = down ] && rev=(-R)
	local m0="" m1=""; [ "$p" = acrouter ] && metrics >"$OUT/metrics-$p-$dir-$n.before"
	local t0 s0 w0 t1 s1 w1 h0 h1 maxrss=0 r
	local b0 b1; b0=$(bridge_drops "$p")
	t0=$(cpu_ticks "${pid:-0}"); s0=$(cpu_ticks "${spid:-0}"); h0=$(host_busy); w0=$(now_ns)
	timeout -k 5 $((BENCH_IPERF_TIME + 25)) ip netns exec "$ns" iperf3 -c "$LAB_LAN_IP" -p "${LAB_IPERF_PORTS%% *}" \
		-t "$BENCH_IPERF_TIME" -J "${rev[@]}" >"$f" 2>&1 &
	local ip=$! i
	for ((i = 0; i < (BENCH_IPERF_TIME + 30) * 2; i++)); do # RSS sampler while iperf3 runs (bounded)
		alive "$ip" || break
		[ -n "$pid" ] && { r=$(rss_kb "$pid"); ((r > maxrss)) && maxrss=$r; }
		sleep 0.5
	done
	wait "$ip" || true
	t1=$(cpu_ticks "${pid:-0}"); s1=$(cpu_ticks "${spid:-0}"); h1=$(host_busy); w1=$(now_ns)
	b1=$(bridge_drops "$p")
	[ "$p" = acrouter ] && metrics >"$OUT/metrics-$p-$dir-$n.after"
	rec "$p" "iperf-$dir" "$(printf '{"run":%d,"tag":"%s","file":"%s","router_cpu_pct":%s,"server_cpu_pct":%s,"host_busy_pct":%s,"router_rss_max_kb":%d,"bridge_socket_drops":%d}' \
		"$n" "$tag" "$f" "$(pct "$t0" "$t1" $((w1 - w0)))" "$(pct "$s0" "$s1" $((w1 - w0)))" "$(busy_pct "$h0" "$h1")" "$maxrss" $((b1 - b0)))"
}
bench_iperf() { # interleaved across paths so background load hits every path alike
	local n p dir
	for dir in up down; do
		for ((n = 1; n <= BENCH_IPERF_RUNS; n++)); do
			for p in $BENCH_PATHS; do
				budget_left || { skip "$p" "iperf $dir $n"; continue; }
				iperf_once "$p" "$dir" "$n"
				sleep 1
			done
			say "iperf3 $dir run $n done"
		done
	done
}
bench_hold() { # path: RSS/CPU with N idle sessions, then the bounded max-sessions attempt
	local p=$1 pid spid; pid=$(router_pid "$p"); spid=$(server_pid)
	local ready="$OUT/ready-$p" j d
	d=$(drain "$p")
	rm -f "$ready"
	tcpb "$p" hold -a "$LAB_LAN_IP:$BENCH_ECHO_PORT" -n "$BENCH_IDLE_SESSIONS" -rate 1500 -p 128 \
		-hold "$((BENCH_SAMPLE_S + 3))s" -ready "$ready" -max 30s >"$OUT/hold-$p.json" &
	local hp=$! i
	BG_PIDS+=("$hp")
	for ((i = 0; i < 45 * 10; i++)); do [ -s "$ready" ] && break; alive "$hp" || break; sleep 0.1; done
	local samp=null
	if [ -s "$ready" ] && [ -n "$pid" ]; then
		local t0 t1 s0 s1 w0 w1
		t0=$(cpu_ticks "$pid"); s0=$(cpu_ticks "$spid"); w0=$(now_ns)
		sleep "$BENCH_SAMPLE_S"
		t1=$(cpu_ticks "$pid"); s1=$(cpu_ticks "$spid"); w1=$(now_ns)
		samp=$(printf '{"rss_kb":%s,"cpu_pct":%s,"server_cpu_pct":%s,"server_rss_kb":%s,"sessions":%s}' "$(rss_kb "$pid")" \
			"$(pct "$t0" "$t1" $((w1 - w0)))" "$(pct "$s0" "$s1" $((w1 - w0)))" "$(rss_kb "$spid")" "$(nat_sessions "$p")")
	fi
	wait "$hp" || true
	rec "$p" idle-sessions "{\"result\":$(json_or_null <"$OUT/hold-$p.json"),\"sample\":$samp,\"drained\":\"$d\"}"
	say "$p: $BENCH_IDLE_SESSIONS idle sessions: $samp"
	budget_left || { skip "$p" "max sessions"; return 0; }
	d=$(drain "$p")
	rm -f "$ready"
	tcpb "$p" hold -a "$LAB_LAN_IP:$BENCH_ECHO_PORT" -n "$BENCH_HOLD_MAX" -rate 5000 -p 256 -maxfail 100 \
		-hold 1s -ready "$ready" -max "${BENCH_HOLD_TIME}s" >"$OUT/holdmax-$p.json" &
	hp=$!
	BG_PIDS+=("$hp")
	for ((i = 0; i < (BENCH_HOLD_TIME + 40) * 10; i++)); do [ -s "$ready" ] && break; alive "$hp" || break; sleep 0.1; done
	samp=null
	[ -s "$ready" ] && [ -n "$pid" ] && samp=$(printf '{"rss_kb":%s,"server_rss_kb":%s,"sessions":%s}' "$(rss_kb "$pid")" "$(rss_kb "$spid")" "$(nat_sessions "$p")")
	wait "$hp" || true
	j=$(json_or_null <"$OUT/holdmax-$p.json")
	rec "$p" max-sessions "{\"result\":$j,\"sample\":$samp,\"drained\":\"$d\"}"
	say "$p: max sessions: $(printf '%s' "$j" | head -c 300)"
}

bench_go() {
	say "Go micro-benchmarks ($BENCH_GO_PKGS, -benchtime $BENCH_GO_BENCHTIME)"
	# shellcheck disable=SC2086
	(cd "$SRC" && timeout -k 10 600 go test -run '^$' -bench . -benchmem -benchtime "$BENCH_GO_BENCHTIME" -timeout 9m $BENCH_GO_PKGS) \
		>"$OUT/gobench.txt" 2>&1 || say "warning: go test -bench failed (see $OUT/gobench.txt); recording what ran"
	rec go gobench "\"$OUT/gobench.txt\""
}

main() {
	[ "$(id -u)" = 0 ] || { echo "make bench needs root (network namespaces, a SoftEther server in one); acrouter itself runs as $RUN_AS" >&2; exit 1; }
	mkdir -p "$OUT"
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	say "results in $OUT (budget ${BENCH_BUDGET_S}s, load average $(cut -d' ' -f1-3 /proc/loadavg))"
	if [ "$BENCH_FROM_HEAD" = 1 ]; then
		SRC="$LAB_STATE/src"
		rm -rf "$SRC"; mkdir -p "$SRC"
		git archive HEAD | tar -x -C "$SRC" || die "git archive HEAD"
		say "building and micro-benchmarking HEAD $(git rev-parse --short HEAD) (exported to $SRC)"
	fi
	step() { [[ " $BENCH_STEPS " == *" $1 "* ]]; }
	step go && [ "$BENCH_GO" = 1 ] && bench_go
	setup
	meta
	local p
	if step dhcp; then for p in $BENCH_PATHS; do budget_left && bench_dhcp "$p"; done; fi
	if step latency || step dns; then # "dns" alone: only the DNS queries of the latency step
		for p in $BENCH_PATHS; do
			[ "$p" = veth ] || [ -s "$OUT/lease-$p.env" ] || do_dhcp "$p" >"$OUT/lease-$p.env"
			budget_left || { skip "$p" "latency"; continue; }
			if step latency; then
				bench_idle "$p"; bench_dns "$p"; bench_rr "$p"; bench_connect "$p"; bench_cps "$p"
			else
				bench_dns "$p"
			fi
		done
	fi
	if step iperf || step sessions || step late; then
		for p in $BENCH_PATHS; do [ "$p" = veth ] || [ -s "$OUT/lease-$p.env" ] || do_dhcp "$p" >"$OUT/lease-$p.env"; done
	fi
	step iperf && bench_iperf
	if step sessions; then for p in $BENCH_PATHS; do budget_left && bench_hold "$p" || skip "$p" "sessions"; done; fi
	# SecureNAT's upload flips between a slow and a fast mode minutes after the server started:
	# a second look at the end of the run, labelled "late"
	local n
	step late || BENCH_LATE_RUNS=0
	for ((n = 1; n <= BENCH_LATE_RUNS; n++)); do
		for p in securenat cascade; do
			[[ " $BENCH_PATHS " == *" $p "* ]] || continue
			budget_left || { skip "$p" "late iperf up $n"; continue; }
			iperf_once "$p" up $((BENCH_IPERF_RUNS + n)) late; sleep 1
		done
	done
	rec meta cascade "\"$($TOPO label 2>/dev/null | tr -d '"')\""
	rec meta end "$(printf '{"seconds":%d,"loadavg":"%s"}' $((SECONDS - T_START)) "$(cut -d' ' -f1-3 /proc/loadavg)")"
	"$BIN/report" -in "$RES" -out "$BENCH_RESULTS" -raw "$OUT" | tee "$OUT/table.md"
	say "done in $((SECONDS - T_START)) s; table written to $BENCH_RESULTS"
}
main "$@"
