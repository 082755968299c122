package broker

import "github.com/applianced/applianced/internal/conf"

// TokenConfig is the [tokens] section of applianced.toml.
type TokenConfig struct {
	TTL                   conf.Duration `toml:"ttl"`
	MaxTTL                conf.Duration `toml:"max_ttl"`
	RotateSigningKeyEvery conf.Duration `toml:"rotate_signing_key_every"`
}

// Role is one [[role]] of applianced.toml.
type Role struct {
	Name   string        `toml:"name"`
	Scopes []string      `toml:"scopes"`
	TTL    conf.Duration `toml:"ttl"`
	MaxTTL conf.Duration `toml:"max_ttl"`
}

// Agent is one [[agent]] of applianced.toml.
type Agent struct {
	Name          string   `toml:"name"`
	Roles         []string `toml:"roles"`
	UnixUser      string   `toml:"unix_user"`
	UnixUID       *int     `toml:"unix_uid"`
	SystemdUnit   string   `toml:"systemd_unit"`
	PublicKeyFile string   `toml:"public_key_file"`
	ActForGroups  []string `toml:"act_for_groups"`
}

// Policy is one [[policy]] of applianced.toml.
type Policy struct {
	Name        string   `toml:"name"`
	Agents      []string `toml:"agents"`
	Scopes      []string `toml:"scopes"`
	UserGroups  []string `toml:"user_groups"`
	Hours       string   `toml:"hours"`
	SourceCIDRs []string `toml:"source_cidrs"`
	Effect      string   `toml:"effect"`
}
