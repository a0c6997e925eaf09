package vpnlink

import (
	"crypto/rand"
	mrand "math/rand/v2"

	"github.com/acrouter/acrouter/vpnlink/internal/proto"
)

// Version numbers we announce (client_ver/client_build); informational.
const (
	clientVer   = 501
	clientBuild = 9674
)

// addPadding adds the "pencore" element of 0…999 random bytes that both
// SoftEther peers add to every PACK over HTTP (CreateDummyValue in
// src/Mayaqua/Network.c). Receivers ignore it.
func addPadding(p *proto.Pack) {
	pad := make([]byte, mrand.IntN(1000))
	rand.Read(pad)
	p.AddData("pencore", pad)
}

// loginPack builds the method=login PACK (fields per ClientUploadAuth /
// ServerAccept in src/Cedar/Protocol.c). random is the hello challenge.
func loginPack(cfg *Config, random, uniqueID []byte) *proto.Pack {
	p := &proto.Pack{}
	p.AddStr("method", "login")
	p.AddStr("hubname", cfg.Hub)
	p.AddStr("username", cfg.User)
	switch cfg.Auth {
	case AuthPlainPassword:
		p.AddInt("authtype", 2) // CLIENT_AUTHTYPE_PLAIN_PASSWORD
		p.AddStr("plain_password", cfg.Password)
	default:
		p.AddInt("authtype", 1) // CLIENT_AUTHTYPE_PASSWORD
		sp := proto.SecurePassword(proto.HashPassword(cfg.Password, cfg.User), random)
		p.AddData("secure_password", sp[:])
	}
	addClientVersion(p, cfg)
	p.AddInt("protocol", 0) // TCP
	p.AddInt("max_connection", 1)
	p.AddBool("use_encrypt", true) // 0 would leave TLS after the welcome
	p.AddBool("use_compress", false)
	p.AddBool("half_connection", false)
	p.AddBool("qos", false)
	p.AddBool("require_bridge_routing_mode", true)
	p.AddBool("require_monitor_mode", false)
	p.AddData("unique_id", uniqueID)
	p.AddStr("ClientProductName", cfg.ClientName)
	addPadding(p)
	return p
}

// resumePack builds the method=additional_connect PACK
// (ClientUploadAuth2/PackAdditionalConnect in src/Cedar/Protocol.c).
func resumePack(cfg *Config, sessionKey []byte) *proto.Pack {
	p := &proto.Pack{}
	p.AddStr("method", "additional_connect")
	p.AddData("session_key", sessionKey)
	addClientVersion(p, cfg)
	addPadding(p)
	return p
}

func addClientVersion(p *proto.Pack, cfg *Config) {
	p.AddStr("client_str", cfg.ClientName)
	p.AddInt("client_ver", clientVer)
	p.AddInt("client_build", clientBuild)
	p.AddStr("hello", cfg.ClientName)
	p.AddInt("version", clientVer)
	p.AddInt("build", clientBuild)
}
