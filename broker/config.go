package broker

import (
	"fmt"
	"net/netip"
	"net/url"
	"os/user"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/applianced/applianced/internal/conf"
)

// Defaults applied when a [tokens] key is absent.
const (
	DefaultTTL    = 5 * time.Minute
	DefaultMaxTTL = time.Hour
	// MaxAllowedTTL bounds max_ttl: an access token is short-lived, and a
	// session longer than a day is refresh tokens' business. A revocation
	// is kept this long.
	MaxAllowedTTL                = 24 * time.Hour
	DefaultRotateSigningKeyEvery = 720 * time.Hour
	DefaultRefreshTTL            = 8 * time.Hour
)

// TokenConfig is the [tokens] section of applianced.toml:
//
//	[tokens]
//	ttl = "5m"                         # access token lifetime unless a role says less
//	max_ttl = "1h"                     # no access token ever lives longer
//	rotate_signing_key_every = "720h"  # a new Ed25519 signing key after this long
//	refresh_ttl = "8h"                 # a user session (refresh token family) ends after this long
//	issuer = "https://ai.corp.example:8443"  # default: https:// and [server] listen
type TokenConfig struct {
	// Issuer is the iss of every token and the base URL of the OAuth2
	// endpoints in the RFC 8414 metadata. Default: "https://" followed by
	// [server] listen. Set it when clients reach the appliance by a name.
	Issuer string `toml:"issuer"`
	// TTL is the lifetime of an access token when no role of the agent sets
	// a shorter one. Default 5m.
	TTL conf.Duration `toml:"ttl"`
	// MaxTTL caps every access token's lifetime, whatever the roles say.
	// Default 1h.
	MaxTTL conf.Duration `toml:"max_ttl"`
	// RotateSigningKeyEvery is how long one signing key signs before the
	// next one is made. The previous key stays published in the JWKS so
	// tokens it signed verify until they expire. Default 720h.
	RotateSigningKeyEvery conf.Duration `toml:"rotate_signing_key_every"`
	// RefreshTTL is the lifetime of a user session started by /v1/login:
	// rotating refresh tokens work until this long after the login.
	// Default 8h.
	RefreshTTL conf.Duration `toml:"refresh_ttl"`
}

// ttl returns the configured TTL or its default.
func (t TokenConfig) ttl() time.Duration { return orDefault(t.TTL, DefaultTTL) }

func (t TokenConfig) maxTTL() time.Duration { return orDefault(t.MaxTTL, DefaultMaxTTL) }

func (t TokenConfig) rotateEvery() time.Duration {
	return orDefault(t.RotateSigningKeyEvery, DefaultRotateSigningKeyEvery)
}

func (t TokenConfig) refreshTTL() time.Duration { return orDefault(t.RefreshTTL, DefaultRefreshTTL) }

func orDefault(d conf.Duration, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d.D()
}

// Validate checks the [tokens] section. Keys are relative to it ("ttl").
func (t TokenConfig) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if t.Issuer != "" {
		u, err := url.Parse(t.Issuer)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil ||
			strings.HasSuffix(t.Issuer, "/") {
			errs = append(errs, conf.Errf("issuer", "%q is not an https URL without a trailing slash, query or fragment", t.Issuer))
		}
	}
	if t.TTL > 0 && t.TTL.D() < 10*time.Second {
		errs = append(errs, conf.Errf("ttl", "must be at least 10s, got %s", t.TTL.D()))
	}
	if t.ttl() > t.maxTTL() {
		errs = append(errs, conf.Errf("ttl", "%s is longer than max_ttl %s", t.ttl(), t.maxTTL()))
	}
	if t.maxTTL() > MaxAllowedTTL {
		errs = append(errs, conf.Errf("max_ttl", "%s is longer than %s: access tokens are short-lived; use refresh_ttl for longer sessions", t.maxTTL(), MaxAllowedTTL))
	}
	if t.RotateSigningKeyEvery > 0 && t.RotateSigningKeyEvery.D() < 2*t.maxTTL() {
		errs = append(errs, conf.Errf("rotate_signing_key_every",
			"must be at least twice max_ttl (%s) so a rotated key outlives its tokens", t.maxTTL()))
	}
	if t.RefreshTTL > 0 && t.RefreshTTL.D() < t.ttl() {
		errs = append(errs, conf.Errf("refresh_ttl", "%s is shorter than ttl %s", t.RefreshTTL.D(), t.ttl()))
	}
	return errs
}

// Role is one [[role]] of applianced.toml: a named set of scopes that agents
// hold, and that users get through [ldap.group_roles].
//
//	[[role]]
//	name = "support"
//	scopes = ["tickets:read", "tickets:create"]
//	ttl = "5m"
type Role struct {
	// Name identifies the role in [[agent]] roles and [ldap.group_roles].
	Name string `toml:"name"`
	// Scopes are the OAuth2 scopes the role grants, e.g. "tickets:read".
	Scopes []string `toml:"scopes"`
	// TTL, when set, is the lifetime of tokens carrying this role; an
	// agent with several roles gets the shortest. Zero means [tokens] ttl.
	TTL conf.Duration `toml:"ttl"`
	// MaxTTL, when set, caps tokens carrying this role below [tokens] max_ttl.
	MaxTTL conf.Duration `toml:"max_ttl"`
}

// Agent is one [[agent]] of applianced.toml: a program that gets tokens of
// its own. Exactly one way to authenticate is named, except that
// public_key_file (over HTTPS) may accompany one local identity.
//
//	[[agent]]
//	name = "ticket-bot"
//	roles = ["support"]
//	unix_user = "ticketbot"          # on the agent socket, by kernel peer credentials
//	act_for_groups = ["helpdesk"]    # token exchange for members of these groups
type Agent struct {
	// Name is the agent's identity: the token's sub and client_id.
	Name string `toml:"name"`
	// Roles are [[role]] names; the agent's scopes are their union.
	Roles []string `toml:"roles"`
	// UnixUser identifies the agent on the agent socket by the peer's uid,
	// looked up by user name when the broker starts.
	UnixUser string `toml:"unix_user"`
	// UnixUID identifies the agent on the agent socket by the peer's uid.
	UnixUID *int `toml:"unix_uid"`
	// SystemdUnit identifies the agent on the agent socket by the systemd
	// unit its process runs in (from /proc/PID/cgroup), e.g. "bot.service".
	SystemdUnit string `toml:"systemd_unit"`
	// PublicKeyFile is a PEM Ed25519 public key ("PUBLIC KEY"); the agent
	// authenticates over HTTPS with private_key_jwt (RFC 7523) signed by it.
	PublicKeyFile string `toml:"public_key_file"`
	// ClientSecretHash is an argon2id hash (see HashClientSecret) of a
	// shared secret sent as client_secret. Allowed, but doctor flags it:
	// prefer a key or a local identity.
	ClientSecretHash string `toml:"client_secret_hash"`
	// ActForGroups are the directory groups whose members this agent may
	// act for through token exchange. Empty means nobody.
	ActForGroups []string `toml:"act_for_groups"`
}

// Policy is one [[policy]] of applianced.toml: an attribute-based rule
// checked when a token is issued and again on every tool request.
//
// A policy applies to a request when each of agents, scopes and
// user_groups that is set matches (user_groups needs a user). Its
// conditions are hours and source_cidrs, each when set. A deny policy that
// applies and whose conditions hold denies. When allow policies apply, at
// least one of them must have its conditions hold. Deny wins. A request no
// policy applies to is decided by the roles alone.
//
//	[[policy]]
//	name = "office-hours-deletes"
//	agents = ["ticket-bot"]
//	scopes = ["tickets:delete"]
//	hours = "Mon-Fri 08:00-18:00"     # the site's local time; windows joined by ";"
//	source_cidrs = ["10.20.0.0/24"]   # the agent socket counts as 127.0.0.1
//	effect = "allow"
type Policy struct {
	// Name identifies the policy in audit events and denials.
	Name string `toml:"name"`
	// Agents limits the policy to these agent names. Empty: any agent.
	Agents []string `toml:"agents"`
	// Scopes limits the policy to these scopes. Empty: any scope.
	Scopes []string `toml:"scopes"`
	// UserGroups limits the policy to requests made for a user in one of
	// these groups. Empty: with or without a user.
	UserGroups []string `toml:"user_groups"`
	// Hours is a condition: weekday and time windows in the site's time
	// zone, "Mon-Fri 08:00-18:00", "Sat,Sun 10:00-12:00; Mon 00:00-24:00".
	Hours string `toml:"hours"`
	// SourceCIDRs is a condition: the client address is in one of these.
	SourceCIDRs []string `toml:"source_cidrs"`
	// Effect is "allow" or "deny".
	Effect string `toml:"effect"`
}

// Config is everything the broker reads from applianced.toml.
type Config struct {
	Tokens   TokenConfig
	Roles    []Role
	Agents   []Agent
	Policies []Policy
	// UserRoles lists role names users may hold ([ldap.group_roles]
	// values); each must name a [[role]]. Used only by Validate.
	UserRoles []string
	// Tools lists the [[tool]] names (validated with that section): the
	// resources a token may be issued for, each with the audience
	// ToolResource(name).
	Tools []string
}

var (
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	scopeRE = regexp.MustCompile(`^[\x21\x23-\x5B\x5D-\x7E]{1,128}$`) // RFC 6749 scope-token
	unitRE  = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]{1,200}\.(service|scope)$`)
)

// Validate checks one [[role]]. Keys are relative to it ("scopes[0]").
// Names' uniqueness is the loader's (or Config.Validate's) job.
func (r Role) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if !nameRE.MatchString(r.Name) {
		errs = append(errs, conf.Errf("name", "%q is not a valid name (letters, digits, . _ -)", r.Name))
	}
	if len(r.Scopes) == 0 {
		errs = append(errs, conf.Errf("scopes", "a role needs at least one scope"))
	}
	for j, s := range r.Scopes {
		if !scopeRE.MatchString(s) {
			errs = append(errs, conf.Errf(fmt.Sprintf("scopes[%d]", j), "%q is not a valid scope", s))
		}
	}
	if r.TTL > 0 && r.TTL.D() < 10*time.Second {
		errs = append(errs, conf.Errf("ttl", "must be at least 10s"))
	}
	if r.MaxTTL > 0 && r.TTL > r.MaxTTL {
		errs = append(errs, conf.Errf("ttl", "%s is longer than max_ttl %s", r.TTL.D(), r.MaxTTL.D()))
	}
	return errs
}

// Validate checks one [[agent]]. Keys are relative to it ("roles[1]").
func (a Agent) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if !nameRE.MatchString(a.Name) {
		errs = append(errs, conf.Errf("name", "%q is not a valid name (letters, digits, . _ -)", a.Name))
	}
	if len(a.Roles) == 0 {
		errs = append(errs, conf.Errf("roles", "an agent needs at least one role"))
	}
	local := 0
	if a.UnixUser != "" {
		local++
	}
	if a.UnixUID != nil {
		local++
		if *a.UnixUID < 0 {
			errs = append(errs, conf.Errf("unix_uid", "must not be negative"))
		}
	}
	if a.SystemdUnit != "" {
		local++
		if !unitRE.MatchString(a.SystemdUnit) {
			errs = append(errs, conf.Errf("systemd_unit", "%q is not a .service or .scope unit name", a.SystemdUnit))
		}
	}
	if local > 1 {
		errs = append(errs, conf.Errf("", "name one of unix_user, unix_uid and systemd_unit, not several"))
	}
	if a.ClientSecretHash != "" {
		if _, err := parseArgon2id(a.ClientSecretHash); err != nil {
			errs = append(errs, conf.Errf("client_secret_hash", "%v", err))
		}
	}
	if a.PublicKeyFile != "" {
		if _, err := readEd25519PublicKey(a.PublicKeyFile); err != nil {
			errs = append(errs, conf.Errf("public_key_file", "%v", err))
		}
	}
	if local == 0 && a.PublicKeyFile == "" && a.ClientSecretHash == "" {
		errs = append(errs, conf.Errf("", "no way to authenticate: set unix_user, unix_uid, systemd_unit, public_key_file or client_secret_hash"))
	}
	for j, g := range a.ActForGroups {
		if strings.TrimSpace(g) == "" {
			errs = append(errs, conf.Errf(fmt.Sprintf("act_for_groups[%d]", j), "empty group name"))
		}
	}
	return errs
}

// Validate checks one [[policy]]. Keys are relative to it ("hours").
func (p Policy) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if !nameRE.MatchString(p.Name) {
		errs = append(errs, conf.Errf("name", "%q is not a valid name (letters, digits, . _ -)", p.Name))
	}
	for j, s := range p.Scopes {
		if !scopeRE.MatchString(s) {
			errs = append(errs, conf.Errf(fmt.Sprintf("scopes[%d]", j), "%q is not a valid scope", s))
		}
	}
	if p.Hours != "" {
		if _, err := ParseHours(p.Hours); err != nil {
			errs = append(errs, conf.Errf("hours", "%v", err))
		}
	}
	for j, s := range p.SourceCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			errs = append(errs, conf.Errf(fmt.Sprintf("source_cidrs[%d]", j), "%q is not a CIDR like \"10.20.0.0/24\"", s))
		}
	}
	switch p.Effect {
	case "allow", "deny":
	case "":
		errs = append(errs, conf.Errf("effect", "missing: \"allow\" or \"deny\""))
	default:
		errs = append(errs, conf.Errf("effect", "%q: want \"allow\" or \"deny\"", p.Effect))
	}
	if p.Effect == "allow" && p.Hours == "" && len(p.SourceCIDRs) == 0 {
		errs = append(errs, conf.Errf("", "an allow policy needs a condition (hours or source_cidrs)"))
	}
	return errs
}

// Validate checks the [tokens], [[role]], [[agent]] and [[policy]] sections
// together: each one, then what they say about each other (unique names,
// known roles and agents, one agent per local identity, role TTLs within
// max_ttl). Keys are relative to the file's root: "tokens.ttl",
// "role[1].name", "agent[0].roles[2]".
func (c Config) Validate() []*conf.FieldError {
	errs := conf.Join("tokens", c.Tokens.Validate())
	roles := map[string]bool{}
	for i, r := range c.Roles {
		k := fmt.Sprintf("role[%d]", i)
		errs = append(errs, conf.Join(k, r.Validate())...)
		if roles[r.Name] {
			errs = append(errs, conf.Errf(k+".name", "duplicate role %q", r.Name))
		}
		roles[r.Name] = true
		if r.TTL.D() > c.Tokens.maxTTL() {
			errs = append(errs, conf.Errf(k+".ttl", "%s is longer than tokens.max_ttl %s", r.TTL.D(), c.Tokens.maxTTL()))
		}
	}
	errs = append(errs, unknownRefs("ldap.group_roles", c.UserRoles, roles, "role")...)
	agents := map[string]bool{}
	uids := map[int]string{}
	users := map[string]string{}
	units := map[string]string{}
	for i, a := range c.Agents {
		k := fmt.Sprintf("agent[%d]", i)
		errs = append(errs, conf.Join(k, a.Validate())...)
		if agents[a.Name] {
			errs = append(errs, conf.Errf(k+".name", "duplicate agent %q", a.Name))
		}
		agents[a.Name] = true
		errs = append(errs, unknownRefs(k+".roles", a.Roles, roles, "role")...)
		if a.UnixUser != "" {
			errs = append(errs, claim(users, a.UnixUser, a.Name, k+".unix_user", fmt.Sprintf("%q", a.UnixUser))...)
			// Two names of one uid, or a name and a unix_uid, are one
			// identity on the agent socket.
			if u, err := user.Lookup(a.UnixUser); err == nil {
				if uid, err := strconv.Atoi(u.Uid); err == nil {
					errs = append(errs, claim(uids, uid, a.Name, k+".unix_user", fmt.Sprintf("%q (uid %d)", a.UnixUser, uid))...)
				}
			}
		}
		if a.UnixUID != nil {
			errs = append(errs, claim(uids, *a.UnixUID, a.Name, k+".unix_uid", fmt.Sprintf("uid %d", *a.UnixUID))...)
		}
		if a.SystemdUnit != "" {
			errs = append(errs, claim(units, a.SystemdUnit, a.Name, k+".systemd_unit", fmt.Sprintf("%q", a.SystemdUnit))...)
		}
	}
	pols := map[string]bool{}
	for i, p := range c.Policies {
		k := fmt.Sprintf("policy[%d]", i)
		errs = append(errs, conf.Join(k, p.Validate())...)
		if pols[p.Name] {
			errs = append(errs, conf.Errf(k+".name", "duplicate policy %q", p.Name))
		}
		pols[p.Name] = true
		errs = append(errs, unknownRefs(k+".agents", p.Agents, agents, "agent")...)
	}
	return errs
}

// unknownRefs reports each of refs (key[i]) that known does not hold.
func unknownRefs(key string, refs []string, known map[string]bool, what string) []*conf.FieldError {
	var errs []*conf.FieldError
	for i, r := range refs {
		if !known[r] {
			errs = append(errs, conf.Errf(fmt.Sprintf("%s[%d]", key, i), "unknown %s %q", what, r))
		}
	}
	return errs
}

// claim records that agent owns the local identity id (shown as label) and
// reports, at key, an identity another agent owns already.
func claim[K comparable](owners map[K]string, id K, agent, key, label string) []*conf.FieldError {
	var errs []*conf.FieldError
	if o, dup := owners[id]; dup {
		errs = append(errs, conf.Errf(key, "%s is already agent %q", label, o))
	}
	owners[id] = agent
	return errs
}
