// Package lab is acrouter's interop harness against a real SoftEther VPN Server
// (Debian 12 packages softether-vpnserver and softether-vpncmd) running in
// private network namespaces.
//
// lab.sh builds the lab (install, up, down, status, env, exec, vpncmd, dhcp,
// static, restart-server, kill-conns). The Go helpers and the interop tests
// carry the build tag "interop" and need root:
//
//	sudo make interop
//	sudo go test -tags interop -count=1 -v ./lab/
//
// TestMain brings one lab up per test binary under a unique namespace prefix
// and takes it down at the end; a detached guard takes it down as well when
// the test binary dies (panic, timeout, signal).
package lab
