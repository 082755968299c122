package ldapauth

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/internal/conf"
)

// Group modes.
const (
	// GroupModeAD reads the user's tokenGroups (every group, nested, as SIDs)
	// and resolves SIDs to names through a cache. If the directory does not
	// return tokenGroups it falls back to the in-chain search.
	GroupModeAD = "ad"
	// GroupModeADInChain searches groups with the matching rule
	// LDAP_MATCHING_RULE_IN_CHAIN (1.2.840.113556.1.4.1941) on member, and
	// adds the user's primary group (primaryGroupID, which no member link
	// names; looked up anywhere in the domain, counted itself only under
	// group_base) and the groups under group_base nested above it, so that
	// it finds what tokenGroups finds. Slower on the DC; for directories
	// without tokenGroups.
	GroupModeADInChain = "ad_in_chain"
	// GroupModeMemberOf follows memberOf attributes (OpenLDAP's memberof
	// overlay), from the user to its groups and on to their groups.
	GroupModeMemberOf = "memberof"
	// GroupModePosix finds posixGroup entries whose memberUid is the user's
	// uid. Posix groups do not nest.
	GroupModePosix = "posix"
)

// Config is the [ldap] section of applianced.toml: which directory to log
// users into, how to find them, and how their groups become roles.
//
//	[ldap]
//	urls = ["ldaps://dc1.corp.example:636", "ldaps://dc2.corp.example:636"]
//	ca_file = "/etc/applianced/ad-ca.pem"
//	bind_dn = "CN=svc-applianced,OU=Service Accounts,DC=corp,DC=example"
//	bind_password_secret = "ldap-bind"
//	user_base = "DC=corp,DC=example"
//	group_mode = "ad"
//	allowed_groups = ["ai-users"]
//	group_cache_ttl = "5m"
//
//	[ldap.group_roles]
//	"ai-users" = ["chat-user"]
//
// Config is never modified by New; unset fields take the defaults documented
// on each field.
type Config struct {
	// URLs are the domain controllers, tried in order. ldaps:// (port 636 by
	// default) or ldap:// with StartTLS (port 389 by default).
	URLs []string `toml:"urls"`
	// StartTLS upgrades ldap:// URLs with the StartTLS extended operation.
	StartTLS bool `toml:"start_tls"`
	// CAFile is a PEM bundle of the CAs that issue the DCs' certificates.
	// Empty means the system roots.
	CAFile string `toml:"ca_file"`
	// ServerName, when set, is the name every DC certificate is verified
	// against instead of the URL's host (for URLs written as IP addresses).
	ServerName string `toml:"server_name"`
	// InsecurePlaintext allows ldap:// without StartTLS to a loopback
	// address only (127.0.0.0/8, ::1, localhost): passwords are sent in
	// clear. Default false.
	InsecurePlaintext bool `toml:"insecure_plaintext"`
	// BindDN is the service account that searches users and groups. Empty
	// means anonymous searches (some OpenLDAP sites; never AD).
	BindDN string `toml:"bind_dn"`
	// BindPasswordSecret names the vault secret holding BindDN's password.
	// The password itself never appears in the file.
	BindPasswordSecret string `toml:"bind_password_secret"`
	// UserBase is where users are searched (subtree).
	UserBase string `toml:"user_base"`
	// LoginAttributes are the attributes a login name is matched against
	// (any of them). Default ["sAMAccountName", "userPrincipalName"] in the
	// AD modes, ["uid"] otherwise. "CORP\alice" is looked up as "alice".
	LoginAttributes []string `toml:"login_attributes"`
	// UserFilter is an extra clause every user must match, for example
	// "(!(userAccountControl:1.2.840.113556.1.4.803:=2))". Default
	// "(&(objectCategory=person)(objectClass=user))" in the AD modes (no
	// computer accounts), "(objectClass=person)" otherwise.
	UserFilter string `toml:"user_filter"`
	// NetBIOSDomain, when set, is the only domain accepted in "DOMAIN\user"
	// names (case-insensitive). Empty accepts any prefix.
	NetBIOSDomain string `toml:"netbios_domain"`
	// GroupMode is how groups are resolved: "ad" (default), "ad_in_chain",
	// "memberof" or "posix". See the GroupMode constants.
	GroupMode string `toml:"group_mode"`
	// GroupBase is where groups are searched. Default UserBase.
	GroupBase string `toml:"group_base"`
	// AllowedGroups, when not empty, admits only members (direct or nested)
	// of at least one of these groups, given by name or DN.
	AllowedGroups []string `toml:"allowed_groups"`
	// GroupRoles maps a group (name or DN, case-insensitive) to the roles
	// its members get.
	GroupRoles map[string][]string `toml:"group_roles"`
	// DialTimeout bounds connecting, TLS and the service bind. Default (and
	// when 0) 5s.
	DialTimeout conf.Duration `toml:"dial_timeout"`
	// RequestTimeout bounds each LDAP request. Default (and when 0) 10s.
	RequestTimeout conf.Duration `toml:"request_timeout"`
	// PageSize is the paged-results size of group searches. Default 500.
	PageSize int `toml:"page_size"`
	// GroupCacheTTL is how long a user's groups, and a group SID's name
	// (group_mode "ad", at most an hour), are reused without asking the
	// directory. Default 5m; "0s" is not allowed (use "1s").
	GroupCacheTTL conf.Duration `toml:"group_cache_ttl"`
	// MaxConnections is how many idle connections are kept per DC, for
	// searches and for password binds each. Default 16.
	MaxConnections int `toml:"max_connections"`
	// MaxFailuresPerUser is how many failed logins of one user name within
	// FailureWindow are tried against the directory before further attempts
	// are refused without asking it (protecting AD's lockout counter).
	// Default 5; keep it below the domain's lockout threshold.
	MaxFailuresPerUser int `toml:"max_failures_per_user"`
	// MaxFailuresPerSource is the same limit per client address. Default 20.
	MaxFailuresPerSource int `toml:"max_failures_per_source"`
	// SharedSources are client addresses (CIDRs) that log many users in,
	// the chatbot's backend above all: failures from there count per user
	// only, or twenty typos by twenty users would refuse everyone behind
	// it for the whole failure window.
	SharedSources []string `toml:"shared_sources"`
	// FailureWindow is how long failures are remembered. Default 15m.
	FailureWindow conf.Duration `toml:"failure_window"`
}

// Defaults.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	DefaultPageSize       = 500
	DefaultGroupCacheTTL  = 5 * time.Minute
	DefaultMaxConnections = 16
	DefaultMaxFailures    = 5
	DefaultMaxSourceFails = 20
	DefaultFailureWindow  = 15 * time.Minute
)

var attrNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]{0,63}$`)

// withDefaults returns a copy of c with defaults filled in; c is not changed.
func (c Config) withDefaults() Config {
	if c.GroupMode == "" {
		c.GroupMode = GroupModeAD
	}
	ad := c.GroupMode == GroupModeAD || c.GroupMode == GroupModeADInChain
	if len(c.LoginAttributes) == 0 {
		if ad {
			c.LoginAttributes = []string{"sAMAccountName", "userPrincipalName"}
		} else {
			c.LoginAttributes = []string{"uid"}
		}
	} else {
		c.LoginAttributes = append([]string(nil), c.LoginAttributes...)
	}
	if c.UserFilter == "" {
		if ad {
			// People only: in AD a computer (and a managed service
			// account) is a user too, whose password any local admin of a
			// domain-joined host can read.
			c.UserFilter = "(&(objectCategory=person)(objectClass=user))"
		} else {
			c.UserFilter = "(objectClass=person)"
		}
	}
	if c.GroupBase == "" {
		c.GroupBase = c.UserBase
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = conf.Duration(DefaultDialTimeout)
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = conf.Duration(DefaultRequestTimeout)
	}
	if c.PageSize == 0 {
		c.PageSize = DefaultPageSize
	}
	if c.GroupCacheTTL == 0 {
		c.GroupCacheTTL = conf.Duration(DefaultGroupCacheTTL)
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = DefaultMaxConnections
	}
	if c.MaxFailuresPerUser == 0 {
		c.MaxFailuresPerUser = DefaultMaxFailures
	}
	if c.MaxFailuresPerSource == 0 {
		c.MaxFailuresPerSource = DefaultMaxSourceFails
	}
	if c.FailureWindow == 0 {
		c.FailureWindow = conf.Duration(DefaultFailureWindow)
	}
	return c
}

// Validate reports every problem in the section, with keys relative to it.
// It reads ca_file to check it holds at least one certificate.
func (c Config) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	add := func(key, f string, a ...any) { errs = append(errs, conf.Errf(key, f, a...)) }
	d := c.withDefaults()

	if len(c.URLs) == 0 {
		add("urls", "at least one ldaps:// or ldap:// URL is required")
	}
	for i, raw := range c.URLs {
		key := fmt.Sprintf("urls[%d]", i)
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" || u.Hostname() == "" {
			add(key, "%q is not a URL like ldaps://dc1.corp.example:636", raw)
			continue
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			add(key, "%q: only scheme, host and port are allowed", raw)
		}
		switch u.Scheme {
		case "ldaps":
			if c.StartTLS {
				add(key, "%q: start_tls applies to ldap:// URLs; ldaps:// is already TLS", raw)
			}
		case "ldap":
			switch {
			case c.StartTLS:
			case !c.InsecurePlaintext:
				add(key, "%q: plain LDAP would send passwords in clear; use ldaps://, set start_tls = true, or (loopback only) insecure_plaintext = true", raw)
			case !isLoopback(u.Hostname()):
				add(key, "%q: insecure_plaintext is allowed only to a loopback address; use ldaps:// or start_tls = true", raw)
			}
		default:
			add(key, "%q: scheme must be ldaps or ldap", raw)
		}
	}
	if c.CAFile != "" {
		if _, err := conf.CertPool(c.CAFile); err != nil {
			add("ca_file", "%v", err)
		}
	}
	if (c.BindDN == "") != (c.BindPasswordSecret == "") {
		add("bind_password_secret", "bind_dn and bind_password_secret go together")
	}
	if c.BindDN != "" {
		if _, err := ldap.ParseDN(c.BindDN); err != nil {
			add("bind_dn", "not a DN: %v", err)
		}
	}
	if c.UserBase == "" {
		add("user_base", "required, e.g. \"DC=corp,DC=example\"")
	} else if _, err := ldap.ParseDN(c.UserBase); err != nil {
		add("user_base", "not a DN: %v", err)
	}
	if c.GroupBase != "" {
		if _, err := ldap.ParseDN(c.GroupBase); err != nil {
			add("group_base", "not a DN: %v", err)
		}
	}
	for i, a := range d.LoginAttributes {
		if !attrNameRE.MatchString(a) {
			add(fmt.Sprintf("login_attributes[%d]", i), "%q is not an attribute name", a)
		}
	}
	if c.UserFilter != "" {
		if !strings.HasPrefix(c.UserFilter, "(") {
			add("user_filter", "must be a parenthesised filter like \"(objectClass=user)\"")
		} else if _, err := ldap.CompileFilter(c.UserFilter); err != nil {
			add("user_filter", "not an LDAP filter: %v", err)
		}
	}
	switch d.GroupMode {
	case GroupModeAD, GroupModeADInChain, GroupModeMemberOf, GroupModePosix:
	default:
		add("group_mode", "%q: want ad, ad_in_chain, memberof or posix", c.GroupMode)
	}
	for i, g := range c.AllowedGroups {
		if strings.TrimSpace(g) == "" {
			add(fmt.Sprintf("allowed_groups[%d]", i), "empty group name")
		}
	}
	for g, roles := range c.GroupRoles {
		key := fmt.Sprintf("group_roles.%q", g)
		if strings.TrimSpace(g) == "" {
			add(key, "empty group name")
		}
		if len(roles) == 0 {
			add(key, "no roles")
		}
		for _, r := range roles {
			if strings.TrimSpace(r) == "" {
				add(key, "empty role name")
			}
		}
	}
	if c.DialTimeout < 0 || (c.DialTimeout != 0 && c.DialTimeout.D() < 10*time.Millisecond) {
		add("dial_timeout", "must be at least 10ms")
	}
	if c.RequestTimeout < 0 || (c.RequestTimeout != 0 && c.RequestTimeout.D() < 10*time.Millisecond) {
		add("request_timeout", "must be at least 10ms")
	}
	if c.PageSize < 0 || c.PageSize > 100000 {
		add("page_size", "must be between 1 and 100000")
	}
	if c.GroupCacheTTL < 0 {
		add("group_cache_ttl", "must not be negative")
	}
	if c.MaxConnections < 0 || c.MaxConnections > 1024 {
		add("max_connections", "must be between 1 and 1024")
	}
	if c.MaxFailuresPerUser < 0 {
		add("max_failures_per_user", "must be positive")
	}
	for i, src := range c.SharedSources {
		if _, err := netip.ParsePrefix(src); err != nil {
			add(fmt.Sprintf("shared_sources[%d]", i), "%q is not a network like \"10.30.0.5/32\"", src)
		}
	}
	if c.MaxFailuresPerSource < 0 {
		add("max_failures_per_source", "must be positive")
	}
	if c.FailureWindow < 0 {
		add("failure_window", "must not be negative")
	}
	return errs
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
