// Package vpnlink is a client of the SoftEther VPN native protocol: it logs
// in to a virtual hub of a SoftEther VPN Server (4.x/5.x) as a
// bridge/routing-mode session and carries Ethernet frames both ways. It
// knows TLS and the SoftEther protocol and nothing of IP.
//
// # Connection
//
// Dial runs TCP → TLS 1.2/1.3 → POST /vpnsvc/connect.cgi with the 10-byte
// "VPNCONNECT" signature → hello (20-byte challenge) → login PACK
// (authtype 1 with the SHA-0 secure_password, or authtype 2 plain password
// for RADIUS/NT users; require_bridge_routing_mode=1, use_encrypt=1,
// use_compress=0, max_connection=1, half_connection=0) → welcome. It checks
// that the welcome really grants bridge or routing mode (not both of
// policy:NoBridge and policy:NoRouting) and then switches the same TLS
// stream to the binary data phase. The first login is synchronous: its
// failure is returned as a typed error (see below) and nothing is retried.
//
// # Data phase
//
// WriteFrames appends frames to one bounded send queue (QueueFrames, tail
// drop, counted); a writer goroutine sends everything queued as one batch
// record in one TLS write, and a keep-alive after a random 1/5–1/2 of the
// negotiated timeout without sending. A reader goroutine parses records into
// pooled batches and hands them to ReadFrame/ReadFrames through a bounded
// queue (RecvQueue); when it is full the reader waits (backpressure through
// TCP to the server) rather than dropping. A connection on which nothing
// arrives for the session timeout is declared dead (ErrLinkDead). Records
// outside SoftEther's limits (block size over 3200, keep-alive over 512
// bytes, truncated stream) end the connection with an error wrapping
// ErrMalformed; blocks of 1601–3200 bytes are skipped like the server does.
// Nothing on the data path allocates per frame.
//
// # Resilience
//
// After a loss the client first resumes the same hub session
// (additional_connect with the session key) — the server keeps the session,
// its name and MAC table for the session timeout (default 20 s) — and logs
// in again when the server says the session is gone (error 13/14) or the
// hold time has passed. A server that accepts the resume and then drops the
// connection before any data is remembered, and later losses go straight to
// a new login. This is what SoftEther 5.01 build 9674 (Debian 12, OpenSSL 3)
// does: when one socket of a session dies, the stale OpenSSL error left in
// that session thread's error queue makes SecureRecv (src/Mayaqua/Network.c)
// treat every later would-block on the session's other or new sockets as
// fatal; fixed upstream in 2024 (commits b2ec1bd5, 98852b77; 5.02.5185+).
// Verified in the lab: resume is accepted, the socket is closed at once, the
// client is back on a new session within about 0.4 s. (The
// explanation is inferred from the source and the upstream fix; the
// behaviour itself was observed.)
//
// Links that end within 10 s count as failed attempts, so a flapping server
// is not hammered. Retries back off exponentially with jitter from
// MinBackoff (500 ms) to MaxBackoff (10 s); errors that need a
// configuration change (IsPermanent: wrong password, unknown hub, bridge
// denied, certificate mismatch, not a SoftEther server) wait MaxBackoff
// every time. Frames written during the outage wait in the send queue and go
// out in the first batch after the reconnect. Status, Changed and WaitFor
// make the state observable; slog lines report each transition. Passwords
// and session keys are never logged.
//
// # Trust
//
// Config.CertSHA256 pins the server certificate (SHA-256 of its DER).
// Without a pin the certificate is trusted on first use and remembered per
// host:port in StateDir/known_servers (written atomically); a later
// mismatch fails with *CertMismatchError naming both fingerprints.
// Resumes must present the same certificate as the first connection.
// InsecureSkipVerify turns checking off (tests only). No SNI is sent when
// the server is given as an IP address.
//
// # Errors
//
// Server error PACKs become *ServerError{Code}; errors.Is matches them
// against ErrAuthFailed (9), ErrHubNotFound (8), ErrBridgeModeDenied (108,
// or a welcome granting only client mode), ErrHubBusy (16), ErrTooManySessions
// (20), ErrIPDenied (109), ErrAccessDenied (12, 33, 87, …), ErrSessionGone
// (13, 14). Transport problems: ErrTLS, ErrNotSoftEther (a web server or
// other service answered), *CertMismatchError, ErrLinkDead, ErrMalformed.
// Messages say what to check or change.
//
// Protocol facts come from SoftEther VPN's source (Apache-2.0), cited where
// used; see also /work/shared/docs/softether-protocol.md. The pure codecs
// live in vpnlink/internal/proto; vpnlink/vpnlinktest provides an in-memory
// hub for tests.
package vpnlink
