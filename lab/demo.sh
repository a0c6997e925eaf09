#!/usr/bin/env bash
# lab/demo.sh — `make demo`: acrouter's main job, end to end, on an embedded default.
#
# 1. installs what it needs (Debian, root) and starts a real SoftEther VPN Server in a private
#    network namespace with hub LAB (lab/lab.sh);
# 2. runs acrouter as the unprivileged user `nobody` in the "router" namespace, joined to that hub;
# 3. a client namespace, local-bridged into the hub, gets a DHCP lease from acrouter, resolves a LAN
#    name through acrouter's DNS redirector and fetches a LAN web page through it;
# 4. prints what happened step by step, then cleans everything up.
set -euo pipefail
cd "$(dirname "$0")/.."

export LAB_PREFIX="${DEMO_PREFIX:-acrdemo}"
export LAB_STATE="${DEMO_STATE:-/tmp/acrouter-demo}"
LAB="bash lab/lab.sh"
BIN="${ACROUTER_BIN:-bin/acrouter}"
RUN_AS="${DEMO_USER:-nobody}"

step=0
say() { step=$((step + 1)); printf '\n\033[1m[%d] %s\033[0m\n' "$step" "$*"; }
info() { printf '    %s\n' "$*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
fail() {
	printf '\n\033[1;31mdemo FAILED: %s\033[0m\n' "$*" >&2
	if [ -f "$RT/acrouter.log" ]; then echo "--- acrouter log (last 20 lines)" >&2; tail -20 "$RT/acrouter.log" >&2; fi
	exit 1
}

[ "$(id -u)" = 0 ] || { echo "make demo needs root (it creates network namespaces and runs a SoftEther server in one); acrouter itself runs as $RUN_AS" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no $BIN: run 'make build' first (make demo does)" >&2; exit 1; }

RT=""
cleanup() {
	set +e
	if [ -n "${ACR_PID:-}" ] && kill -0 "$ACR_PID" 2>/dev/null; then
		kill -TERM "$ACR_PID"
		for _ in $(seq 1 100); do kill -0 "$ACR_PID" 2>/dev/null || break; sleep 0.05; done
		kill -KILL "$ACR_PID" 2>/dev/null
	fi
	[ -n "${V6_PID:-}" ] && kill "$V6_PID" 2>/dev/null
	rm -rf "/etc/netns/$LAB_PREFIX-clab"
	$LAB down >/dev/null 2>&1
	[ -n "$RT" ] && rm -rf "$RT"
}
trap cleanup EXIT

say "Installing what the demo needs (softether-vpnserver, vpncmd, iproute2, busybox, curl …)"
$LAB install 2>&1 | sed 's/^/    /'

say "Starting a real SoftEther VPN Server in a private network namespace"
t0=$(now_ms)
$LAB up 2>&1 | tail -3 | sed 's/^/    /'
while IFS="=" read -r k v; do export "$k=$v"; done < <($LAB env)
info "server $LAB_SERVER (namespace $LAB_NS_HUB), hub $LAB_HUB, user $LAB_ROUTER_USER; LAN $LAB_LAN_IP in $LAB_NS_LAN"
info "ready in $(($(now_ms) - t0)) ms"

say "Running acrouter as user '$RUN_AS' (no root, no TUN/TAP) in namespace $LAB_NS_RTR"
RT=$(mktemp -d /tmp/acrouter-demo-run.XXXXXX)
chmod 755 "$RT"
install -m 755 "$BIN" "$RT/acrouter"
printf '%s' "$LAB_ROUTER_PASSWORD" >"$RT/password"
chmod 600 "$RT/password"
mkdir -m 700 "$RT/state"
chown "$RUN_AS" "$RT/password" "$RT/state"
# An IPv6 LAN next to the IPv4 one: fd77::1 (LAN) and fd77::2 (the router host),
# with a tiny HTTP responder on [fd77::1]:8080 (bounded: it exits after 120 s).
ip -n "$LAB_PREFIX-lan" addr replace fd77::1/64 dev lanbr nodad
ip -n "$LAB_NS_RTR" addr replace fd77::2/64 dev lan0 nodad
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello over IPv6, from the LAN\n' >"$RT/v6.http"
chmod 644 "$RT/v6.http"
ip netns exec "$LAB_PREFIX-lan" timeout 120 socat TCP6-LISTEN:8080,bind='[fd77::1]',fork,reuseaddr SYSTEM:"cat $RT/v6.http" >/dev/null 2>&1 &
V6_PID=$!
$LAB exec clab sysctl -qw net.ipv6.conf.eth0.accept_ra=1 net.ipv6.conf.eth0.disable_ipv6=0 >/dev/null
t0=$(now_ms)
ip netns exec "$LAB_NS_RTR" setpriv --reuid="$RUN_AS" --regid="$(id -gn "$RUN_AS" 2>/dev/null || echo nogroup)" --clear-groups --inh-caps=-all \
	"$RT/acrouter" --server "$LAB_SERVER" --hub "$LAB_HUB" --user "$LAB_ROUTER_USER" --password-file "$RT/password" \
	--state-dir "$RT/state" --dns-resolv-conf "$LAB_RESOLV_CONF" --status 127.0.0.1:8765 \
	--ipv6-default-route on >"$RT/acrouter.log" 2>&1 &
ACR_PID=$!
for _ in $(seq 1 300); do
	grep -qs 'virtual host up' "$RT/acrouter.log" && break
	kill -0 "$ACR_PID" 2>/dev/null || fail "acrouter exited"
	sleep 0.05
done
grep -q 'virtual host up' "$RT/acrouter.log" || fail "acrouter did not come up within 15 s"
info "acrouter pid $ACR_PID runs as $(ps -o user= -p "$ACR_PID"), joined the hub in $(($(now_ms) - t0)) ms:"
grep -E 'joined the hub|IPv6 on the hub|virtual host up' "$RT/acrouter.log" | sed 's/^time=[^ ]* //; s/^/      /'

say "Client namespace $LAB_NS_CLAB (bridged into hub $LAB_HUB) asks for a DHCP lease"
lease=$($LAB dhcp clab) || fail "no DHCP lease"
eval "$lease"
info "lease $LEASE_IP/$LEASE_PREFIX, gateway $LEASE_ROUTER, DNS $LEASE_DNS, lease time ${LEASE_TIME}s (udhcpc took ${LEASE_ELAPSED_MS} ms)"
[ "$LEASE_SERVER" = "$LEASE_ROUTER" ] || fail "the lease did not come from acrouter ($LEASE_SERVER)"
mkdir -p "/etc/netns/$LAB_PREFIX-clab"
echo "nameserver $LEASE_DNS" >"/etc/netns/$LAB_PREFIX-clab/resolv.conf"

say "Resolving the LAN name www.$LAB_DNS_ZONE through acrouter's DNS redirector ($LEASE_DNS)"
t0=$(now_ms)
addr=$($LAB exec clab getent hosts "www.$LAB_DNS_ZONE" | awk '{print $1; exit}') || true
[ -n "$addr" ] || fail "www.$LAB_DNS_ZONE did not resolve"
info "www.$LAB_DNS_ZONE -> $addr ($(($(now_ms) - t0)) ms)"

say "Fetching http://www.$LAB_DNS_ZONE:$LAB_HTTP_PORT/ from the client, through acrouter"
t0=$(now_ms)
page=$($LAB exec clab curl -sS -m 10 "http://www.$LAB_DNS_ZONE:$LAB_HTTP_PORT/") || fail "HTTP fetch failed"
info "first line of the page: \"$(printf '%s\n' "$page" | head -1)\" ($(($(now_ms) - t0)) ms)"

say "The client's kernel configures IPv6 from acrouter's router advertisement (SLAAC) and fetches from the IPv6 LAN"
$LAB exec clab rdisc6 -1 -w 2000 eth0 >/dev/null 2>&1 || true # an RS now instead of waiting for the next periodic RA
t0=$(now_ms)
addr6=""
for _ in $(seq 1 100); do
	addr6=$($LAB exec clab ip -6 -o addr show dev eth0 scope global -tentative | awk '{print $4; exit}')
	[ -n "$addr6" ] && break
	sleep 0.1
done
[ -n "$addr6" ] || fail "no IPv6 address from acrouter's router advertisement within 10 s"
info "SLAAC address $addr6, default route: $($LAB exec clab ip -6 route show default | head -1) ($(($(now_ms) - t0)) ms)"
t0=$(now_ms)
page6=$($LAB exec clab curl -6 -sS -m 10 "http://[fd77::1]:8080/") || fail "HTTP over IPv6 failed"
info "http://[fd77::1]:8080/ says \"$(printf '%s\n' "$page6" | tail -1)\" ($(($(now_ms) - t0)) ms)"

say "acrouter's view (acrouter status)"
ip netns exec "$LAB_NS_RTR" "$RT/acrouter" status --status 127.0.0.1:8765 | sed 's/^/    /'

say "Stopping acrouter (SIGTERM) and cleaning up"
t0=$(now_ms)
kill -TERM "$ACR_PID"
for _ in $(seq 1 200); do kill -0 "$ACR_PID" 2>/dev/null || break; sleep 0.05; done
kill -0 "$ACR_PID" 2>/dev/null && fail "acrouter did not stop within 10 s"
info "stopped in $(($(now_ms) - t0)) ms: $(tail -1 "$RT/acrouter.log" | sed 's/^time=[^ ]* //')"
ACR_PID=""
kill "$V6_PID" 2>/dev/null || true
printf '\n\033[1;32mdemo OK\033[0m: a client on the hub got its addresses (DHCP, SLAAC) from acrouter and reached the LAN through it over IPv4 and IPv6.\n'
