package vpnlink

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. A *ServerError matches the sentinel of its code with
// errors.Is, so callers write errors.Is(err, vpnlink.ErrAuthFailed).
var (
	ErrAuthFailed       = errors.New("authentication failed")
	ErrHubNotFound      = errors.New("virtual hub not found")
	ErrBridgeModeDenied = errors.New("bridge/routing mode denied")
	ErrHubBusy          = errors.New("virtual hub is busy")
	ErrTooManySessions  = errors.New("too many sessions for this user")
	ErrIPDenied         = errors.New("source IP address denied")
	ErrAccessDenied     = errors.New("access denied")
	ErrHubStopping      = errors.New("virtual hub is offline")
	ErrAuthType         = errors.New("authentication method not supported")
	ErrSessionGone      = errors.New("session no longer exists on the server")
	ErrProtocol         = errors.New("SoftEther protocol error")
	// ErrNotSoftEther: the peer speaks TLS/HTTP but is not a SoftEther
	// VPN Server (or the port belongs to another service).
	ErrNotSoftEther = errors.New("not a SoftEther VPN server")
	// ErrTLS: the TLS handshake failed (other than a certificate mismatch).
	ErrTLS = errors.New("TLS handshake failed")
	// ErrLinkDead: nothing was received for the session timeout.
	ErrLinkDead = errors.New("link dead: nothing received within the session timeout")
	// ErrConfig: the Config is unusable.
	ErrConfig = errors.New("invalid vpnlink configuration")
)

// SoftEther error codes (ERR_* in src/Cedar/Cedar.h).
const (
	codeDisconnected        = 3
	codeProtocolError       = 4
	codeAuthTypeNotSupp     = 7
	codeHubNotFound         = 8
	codeAuthFailed          = 9
	codeHubStopping         = 10
	codeAccessDenied        = 12
	codeSessionTimeout      = 13
	codeInvalidProtocol     = 14
	codeTooManyConnection   = 15
	codeHubIsBusy           = 16
	codeTooManyUserSession  = 20
	codeNotSupported        = 33
	codeNullPasswordLocal   = 51
	codeTooManyUser         = 63
	codeVersionInvalid      = 87
	codeServerCantAccept    = 105
	codeMonitorModeDenied   = 107
	codeBridgeModeDenied    = 108
	codeIPAddressDenied     = 109
	codeClientIDRequired    = 127
	codeServerIsNotVPN      = 2
	codeClientIsNotVPN      = 5
	codeCouldNotHostHubFarm = 49
)

// ServerError is an error PACK from the server (INT "error" ≠ 0).
type ServerError struct {
	Code uint32
	Hub  string // hub the login was for
	User string // user name (never the password)
}

type codeInfo struct {
	sentinel  error
	text      string // what happened and what to do
	permanent bool   // retrying without a config change will not help
}

var codes = map[uint32]codeInfo{
	codeDisconnected:        {ErrProtocol, "the server dropped the request as malformed (ERR_DISCONNECTED)", false},
	codeProtocolError:       {ErrProtocol, "the server reported a protocol error (ERR_PROTOCOL_ERROR)", false},
	codeAuthTypeNotSupp:     {ErrAuthType, "the server does not support this authentication method for the user; check the user's auth type (password vs. RADIUS/plain) on the hub", true},
	codeHubNotFound:         {ErrHubNotFound, "the virtual hub %[1]q does not exist on the server; check the hub name (vpncmd HubList)", true},
	codeAuthFailed:          {ErrAuthFailed, "wrong user name or password for user %[2]q on hub %[1]q", true},
	codeHubStopping:         {ErrHubStopping, "the virtual hub %[1]q is offline; bring it online (vpncmd HubOnline)", false},
	codeAccessDenied:        {ErrAccessDenied, "access denied for user %[2]q: the user is expired, disabled by policy (Access=no) or may not log in directly on this server", true},
	codeSessionTimeout:      {ErrSessionGone, "the session is gone on the server (timed out, disconnected or server restarted)", false},
	codeInvalidProtocol:     {ErrSessionGone, "the session cannot be resumed over TCP", false},
	codeTooManyConnection:   {ErrProtocol, "the session already has its maximum number of TCP connections", false},
	codeHubIsBusy:           {ErrHubBusy, "the virtual hub %[1]q is busy: its session limit is reached; retry later or raise MaxSession", false},
	codeTooManyUserSession:  {ErrTooManySessions, "user %[2]q already has the maximum number of sessions (policy MultiLogins); an old session may still be held by the server for its timeout", false},
	codeNotSupported:        {ErrAccessDenied, "this server does not accept VPN sessions (ERR_NOT_SUPPORTED)", true},
	codeNullPasswordLocal:   {ErrAuthFailed, "user %[2]q has an empty password, which the server only accepts from localhost; set a password", true},
	codeTooManyUser:         {ErrHubBusy, "the server has too many user objects (licence limit)", true},
	codeVersionInvalid:      {ErrAccessDenied, "the hub requires a newer client build (ClientMinimumRequiredBuild)", true},
	codeServerCantAccept:    {ErrHubStopping, "the virtual hub %[1]q does not accept connections at the moment", false},
	codeMonitorModeDenied:   {ErrAccessDenied, "monitor mode denied", true},
	codeBridgeModeDenied:    {ErrBridgeModeDenied, "bridge/routing mode is denied for user %[2]q on hub %[1]q (policies NoBridge and NoRouting, or hub options deny_bridge/deny_routing); allow it with vpncmd UserPolicySet %[2]s /NAME:NoBridge /VALUE:no", true},
	codeIPAddressDenied:     {ErrIPDenied, "the hub %[1]q refuses connections from this IP address (access control list)", true},
	codeClientIDRequired:    {ErrAccessDenied, "the hub requires a specific client ID (RequiredClientId)", true},
	codeServerIsNotVPN:      {ErrNotSoftEther, "the server is not a SoftEther VPN server", true},
	codeClientIsNotVPN:      {ErrProtocol, "the server did not recognise this client as a VPN client", true},
	codeCouldNotHostHubFarm: {ErrHubBusy, "the server farm could not host the hub %[1]q", false},
}

func (e *ServerError) Error() string {
	if ci, ok := codes[e.Code]; ok {
		text := ci.text
		if strings.Contains(text, "%") {
			text = fmt.Sprintf(text, e.Hub, e.User)
		}
		return fmt.Sprintf("softether server error %d: %s", e.Code, text)
	}
	return fmt.Sprintf("softether server error %d (see ERR_* in SoftEther src/Cedar/Cedar.h)", e.Code)
}

// Is matches the sentinel error of the code.
func (e *ServerError) Is(target error) bool {
	ci, ok := codes[e.Code]
	return ok && ci.sentinel == target
}

// CertMismatchError: the server presented another certificate than the
// pinned or remembered one. Want and Got are hex SHA-256 fingerprints.
type CertMismatchError struct {
	Server string
	Want   string
	Got    string
	Source string // "Config.CertSHA256" or the known-hosts file path
}

func (e *CertMismatchError) Error() string {
	return fmt.Sprintf("server certificate of %s changed: expected SHA-256 %s (from %s), got %s; "+
		"if the server certificate really changed, update the pin or remove the line from %s",
		e.Server, e.Want, e.Source, e.Got, e.Source)
}

// IsPermanent reports whether retrying err without a configuration change
// is pointless (wrong password, unknown hub, bridge mode denied, certificate
// mismatch, not a SoftEther server, bad config, ...). The client still
// retries such errors after a loss, but only every MaxBackoff.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	var se *ServerError
	if errors.As(err, &se) {
		return codes[se.Code].permanent
	}
	var cm *CertMismatchError
	return errors.As(err, &cm) || errors.Is(err, ErrNotSoftEther) ||
		errors.Is(err, ErrBridgeModeDenied) || errors.Is(err, ErrConfig)
}
