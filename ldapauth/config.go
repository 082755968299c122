package ldapauth

import "github.com/applianced/applianced/internal/conf"

// Config is the [ldap] section of applianced.toml.
// (Fields are completed and documented by the ldapauth implementation.)
type Config struct {
	URLs               []string            `toml:"urls"`
	StartTLS           bool                `toml:"start_tls"`
	CAFile             string              `toml:"ca_file"`
	ServerName         string              `toml:"server_name"`
	InsecurePlaintext  bool                `toml:"insecure_plaintext"`
	BindDN             string              `toml:"bind_dn"`
	BindPasswordSecret string              `toml:"bind_password_secret"`
	UserBase           string              `toml:"user_base"`
	LoginAttributes    []string            `toml:"login_attributes"`
	UserFilter         string              `toml:"user_filter"`
	GroupMode          string              `toml:"group_mode"`
	GroupBase          string              `toml:"group_base"`
	AllowedGroups      []string            `toml:"allowed_groups"`
	GroupRoles         map[string][]string `toml:"group_roles"`
	DialTimeout        conf.Duration       `toml:"dial_timeout"`
	RequestTimeout     conf.Duration       `toml:"request_timeout"`
	PageSize           int                 `toml:"page_size"`
	GroupCacheTTL      conf.Duration       `toml:"group_cache_ttl"`
}
