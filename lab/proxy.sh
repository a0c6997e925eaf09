#!/usr/bin/env bash
# lab/proxy.sh — packages for the proxy interop tests (lab/proxy_test.go):
# tinyproxy (HTTP CONNECT with basic auth), microsocks (SOCKS5 with RFC 1929
# username/password; dante's username method needs system accounts, microsocks
# takes -u/-P) and openssh-server (sshd with direct-tcpip forwarding).
#
# The test starts these daemons itself, only inside lab namespaces, in the
# foreground, with config files under the lab's state directory. This script
# never starts anything: during the install a policy-rc.d that answers 101
# forbids the packages' system services (invoke-rc.d, deb-systemd-invoke), and
# any sshd/tinyproxy/microsocks the packages still left running in the ROOT
# network namespace is reported (not killed: it is not ours).
#
# Usage: proxy.sh install|check
#   install  idempotent: apt-get update + install only when a tool is missing
#   check    exit 0 when every tool is present, else print what is missing
set -euo pipefail

: "${LAB_APT_TIMEOUT:=900}"
PKG_CHECKS=("tinyproxy:/usr/bin/tinyproxy" "microsocks:/usr/bin/microsocks" "openssh-server:/usr/sbin/sshd"
	"openssh-client:/usr/bin/ssh-keygen")
POLICY_RC=/usr/sbin/policy-rc.d
POLICY_BAK=""

log() { printf '[proxy.sh] %s\n' "$*" >&2; }
die() { printf '[proxy.sh] ERROR: %s\n' "$*" >&2; exit 1; }

missing_pkgs() {
	local kv out=()
	for kv in "${PKG_CHECKS[@]}"; do
		[ -x "${kv#*:}" ] || out+=("${kv%%:*}")
	done
	echo "${out[*]:-}"
}
restore_policy() {
	if [ -n "$POLICY_BAK" ]; then mv -f "$POLICY_BAK" "$POLICY_RC"; else rm -f "$POLICY_RC"; fi
}
root_ns_daemons() { # pids of sshd/tinyproxy/microsocks in the root network namespace
	local p ns root; root=$(readlink /proc/1/ns/net 2>/dev/null || readlink /proc/2/ns/net 2>/dev/null || true)
	[ -n "$root" ] || return 0
	for p in $(pgrep -x 'sshd|tinyproxy|microsocks' 2>/dev/null || true); do
		ns=$(readlink "/proc/$p/ns/net" 2>/dev/null || true)
		[ "$ns" = "$root" ] && echo "$p"
	done
	return 0
}
cmd_install() {
	[ "$(id -u)" = 0 ] || die "needs root (apt-get)"
	local pk; pk=$(missing_pkgs)
	if [ -n "$pk" ]; then
		command -v apt-get >/dev/null || die "missing packages: $pk, and no apt-get"
		log "installing: $pk"
		if [ -e "$POLICY_RC" ]; then POLICY_BAK="$POLICY_RC.acrouter-proxy.$$"; cp -p "$POLICY_RC" "$POLICY_BAK"; fi
		trap restore_policy EXIT
		printf '#!/bin/sh\n# temporary: acrouter lab/proxy.sh install\nexit 101\n' >"$POLICY_RC"
		chmod 755 "$POLICY_RC"
		local rc=0
		export DEBIAN_FRONTEND=noninteractive
		timeout -k 10 "$LAB_APT_TIMEOUT" apt-get update -q >/tmp/acrouter-proxy-apt.log 2>&1 &&
			timeout -k 10 "$LAB_APT_TIMEOUT" apt-get install -y -q --no-install-recommends \
				-o Dpkg::Options::=--force-confold $pk >>/tmp/acrouter-proxy-apt.log 2>&1 || rc=$?
		restore_policy; trap - EXIT
		[ $rc = 0 ] || die "apt-get failed (rc=$rc): $(tail -5 /tmp/acrouter-proxy-apt.log)"
		pk=$(missing_pkgs)
		[ -z "$pk" ] || die "still missing after apt-get install: $pk"
	fi
	local left; left=$(root_ns_daemons)
	[ -z "$left" ] || log "warning: proxy daemons run in the root network namespace (not started by this script): $left"
	log "install: all proxy tools present"
}
case "${1:-}" in
install) cmd_install ;;
check)
	pk=$(missing_pkgs)
	[ -z "$pk" ] || { echo "missing: $pk"; exit 1; }
	;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
