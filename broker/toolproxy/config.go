package toolproxy

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/applianced/applianced/internal/conf"
)

// Tool is one [[tool]] of applianced.toml: an internal service agents reach
// through the credential-injection proxy at /v1/tools/{name}/{path...}.
//
//	[[tool]]
//	name = "tickets"
//	base_url = "https://tickets.corp.example/api"
//	ca_file = "/etc/applianced/corp-ca.pem"
//	timeout = "10s"
//	auth = { type = "header", name = "X-Api-Key", secret = "tickets-key" }
//
//	[[tool.route]]
//	method = "GET"
//	path = "/tickets/*"
//	scope = "tickets:read"
//	dlp = "redact"
type Tool struct {
	// Name is the tool's name in the URL and the audience an agent's token
	// must carry. Lowercase letters, digits, '-' and '_'.
	Name string `toml:"name"`
	// BaseURL is the upstream, http:// or https://, with an optional path
	// prefix. No request ever leaves that prefix.
	BaseURL string `toml:"base_url"`
	// CAFile is a PEM bundle that replaces the system roots for this
	// upstream's TLS certificate. Empty means the system roots.
	CAFile string `toml:"ca_file"`
	// Timeout bounds one whole upstream exchange (connect, headers, body).
	// Default (and when 0) 30s.
	Timeout conf.Duration `toml:"timeout"`
	// MaxRequestBytes bounds a request body the agent sends. Default 1MiB.
	MaxRequestBytes conf.ByteSize `toml:"max_request_bytes"`
	// Auth says how the credential is injected.
	Auth ToolAuth `toml:"auth"`
	// Routes are what agents may call; a request no route matches is refused.
	Routes []Route `toml:"route"`
}

// Auth types.
const (
	AuthBearer       = "bearer"                    // Authorization: Bearer <secret>
	AuthBasic        = "basic"                     // secret is "user:password"
	AuthHeader       = "header"                    // <name>: <secret>
	AuthQuery        = "query"                     // ?<name>=<secret>
	AuthOAuth2Client = "oauth2_client_credentials" // secret is JSON, see ToolAuth
	AuthTLSClient    = "tls_client"                // secret is PEM certificate + key
)

// ToolAuth says how the proxy injects the credential. The secret's value
// lives in the vault (applianced secret put NAME), must list this tool in its
// allowed tools, and is never seen by the agent.
//
// For oauth2_client_credentials the secret holds JSON:
//
//	{"client_id": "...", "client_secret": "...", "token_url": "https://idp/token",
//	 "scopes": ["api"]}
//
// For basic it holds {"user": ..., "password": ...} (or "user:password");
// for tls_client {"cert": PEM, "key": PEM} (or the PEM certificate chain
// followed by the PEM private key).
type ToolAuth struct {
	Type   string `toml:"type"`   // bearer | basic | header | query | oauth2_client_credentials | tls_client
	Name   string `toml:"name"`   // header or query parameter name (header, query)
	Secret string `toml:"secret"` // vault secret name
}

// Approval and DLP values of a route.
const (
	ApprovalNone     = "none"
	ApprovalRequired = "required"

	DLPRedact = "redact"
	DLPBlock  = "block"
	DLPOff    = "off"
)

// Route is one [[tool.route]]: a method and path pattern and what a call on
// it needs. The pattern is matched segment by segment against the path below
// the tool's name: "*" matches exactly one segment, a final "**" matches any
// number (including none); anything else matches literally.
type Route struct {
	// Method is an HTTP method, or "*" for any.
	Method string `toml:"method"`
	// Path is the pattern, starting with "/".
	Path string `toml:"path"`
	// Scope is the scope the token must carry. Required.
	Scope string `toml:"scope"`
	// Approval is "none" (default) or "required": each call then waits for a
	// human to approve that exact call.
	Approval string `toml:"approval"`
	// MaxResponseBytes bounds the upstream response body. Default 10MB.
	MaxResponseBytes conf.ByteSize `toml:"max_response_bytes"`
	// DLP is what happens to text and JSON responses holding card numbers,
	// keys and the like: "redact" (default), "block" (502) or "off".
	DLP string `toml:"dlp"`
}

// Risk actions.
const (
	ActionStepUp = "step_up" // the call needs a human approval
	ActionBlock  = "block"   // the agent is disabled for block_for and its tokens revoked
	ActionAlert  = "alert"   // the call goes on; a high-severity audit event is written
)

// RiskConfig is the [risk] section: limits applied to each agent and to each
// user separately, and what happens when one is crossed.
//
//	[risk]
//	requests_per_minute = 120
//	response_bytes_per_hour = "50MB"
//	on_exceed = "step_up"
//	business_hours = "Mon-Fri 08:00-18:00"
//	on_off_hours = "alert"
//	on_new_source = "step_up"
//	block_for = "15m"
type RiskConfig struct {
	// RequestsPerMinute limits calls per agent and per user; 0 is no limit.
	RequestsPerMinute int `toml:"requests_per_minute"`
	// ResponseBytesPerHour limits response bytes per agent and per user; 0 is
	// no limit.
	ResponseBytesPerHour conf.ByteSize `toml:"response_bytes_per_hour"`
	// OnExceed is the action when a limit is crossed. Default step_up.
	OnExceed string `toml:"on_exceed"`
	// BusinessHours is when calls are ordinary, in the appliance's local
	// time, as "Mon-Fri 08:00-18:00" (days optional). Empty disables the
	// off-hours rule.
	BusinessHours string `toml:"business_hours"`
	// OnOffHours is the action for a call outside BusinessHours. Default alert.
	OnOffHours string `toml:"on_off_hours"`
	// OnNewSource is the action for a call from a source address the agent
	// never used before. Empty disables the rule.
	OnNewSource string `toml:"on_new_source"`
	// BlockFor is how long the block action disables the agent. Default 15m.
	BlockFor conf.Duration `toml:"block_for"`
	// ApprovalTTL is how long an approval request stays valid. Default 10m.
	ApprovalTTL conf.Duration `toml:"approval_ttl"`
}

// Defaults.
const (
	DefaultTimeout          = 30 * time.Second
	DefaultMaxRequestBytes  = 1 << 20
	DefaultMaxResponseBytes = 10_000_000
	DefaultBlockFor         = 15 * time.Minute
	DefaultApprovalTTL      = 10 * time.Minute
)

var (
	toolNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	headerNameR = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

// forbiddenAuthHeaders may not be used as the header of auth type "header":
// the proxy manages them itself.
var forbiddenAuthHeaders = map[string]bool{
	"Host": true, "Connection": true, "Content-Length": true, "Transfer-Encoding": true,
	"Cookie": true, "Te": true, "Upgrade": true, "Approval-Id": true,
}

// Validate checks t; keys are relative to the [[tool]] entry.
func (t *Tool) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if !toolNameRE.MatchString(t.Name) {
		errs = append(errs, conf.Errf("name", "%q is not a tool name: use lowercase letters, digits, '-' and '_' (at most 63)", t.Name))
	}
	if u, err := url.Parse(t.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, conf.Errf("base_url", "%q is not an http:// or https:// URL", t.BaseURL))
	} else if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		errs = append(errs, conf.Errf("base_url", "must not carry a query, fragment or user info"))
	}
	if t.CAFile != "" {
		if !filepath.IsAbs(t.CAFile) {
			errs = append(errs, conf.Errf("ca_file", "must be an absolute path, got %q", t.CAFile))
		} else if _, err := conf.CertPool(t.CAFile); err != nil {
			errs = append(errs, conf.Errf("ca_file", "%v", err))
		}
	}
	if t.Timeout < 0 {
		errs = append(errs, conf.Errf("timeout", "must not be negative"))
	}
	if t.MaxRequestBytes < 0 {
		errs = append(errs, conf.Errf("max_request_bytes", "must not be negative"))
	}
	errs = append(errs, conf.Join("auth", t.Auth.validate())...)
	if len(t.Routes) == 0 {
		errs = append(errs, conf.Errf("route", "a tool needs at least one [[tool.route]]; without one every call is refused"))
	}
	for i := range t.Routes {
		errs = append(errs, conf.Join(fmt.Sprintf("route[%d]", i), t.Routes[i].Validate())...)
	}
	// The first route that matches a call decides it, so a route that an
	// earlier one covers never applies: its scope, approval and limits
	// would be skipped without a word.
	// Likewise a route that needs approval, which an earlier route without
	// approval takes some of the calls of: those calls would skip it.
	for i := range t.Routes {
		ri := &t.Routes[i]
		for j := range i {
			rj := &t.Routes[j]
			if rj.covers(ri) {
				errs = append(errs, conf.Errf(fmt.Sprintf("route[%d]", i),
					"%s %s can never apply: route[%d] (%s %s) comes first and matches every call it would; list the more specific route first",
					ri.Method, ri.Path, j, rj.Method, rj.Path))
				break
			}
			if ri.Approval == ApprovalRequired && rj.Approval != ApprovalRequired {
				if m, p, ok := t.skipsApproval(j, i); ok {
					errs = append(errs, conf.Errf(fmt.Sprintf("route[%d]", i),
						"%s %s needs approval, but route[%d] (%s %s), without approval, comes first for some of its calls (such as %s %s), which would skip it; list route[%d] first or narrow route[%d]",
						ri.Method, ri.Path, j, rj.Method, rj.Path, m, p, i, j))
					break
				}
			}
		}
	}
	return errs
}

func (a *ToolAuth) validate() []*conf.FieldError {
	var errs []*conf.FieldError
	switch a.Type {
	case AuthBearer, AuthBasic, AuthOAuth2Client, AuthTLSClient:
		if a.Name != "" {
			errs = append(errs, conf.Errf("name", "only auth types header and query take a name"))
		}
	case AuthHeader:
		if !headerNameR.MatchString(a.Name) {
			errs = append(errs, conf.Errf("name", "%q is not an HTTP header name", a.Name))
		} else if forbiddenAuthHeaders[http.CanonicalHeaderKey(a.Name)] {
			errs = append(errs, conf.Errf("name", "header %q is managed by the proxy", a.Name))
		}
	case AuthQuery:
		if a.Name == "" || strings.ContainsAny(a.Name, "&=#?% ") {
			errs = append(errs, conf.Errf("name", "%q is not a query parameter name", a.Name))
		}
	default:
		errs = append(errs, conf.Errf("type", "%q: want bearer, basic, header, query, oauth2_client_credentials or tls_client", a.Type))
	}
	if a.Secret == "" {
		errs = append(errs, conf.Errf("secret", "name the vault secret holding the credential"))
	}
	return errs
}

// Validate checks r; keys are relative to the [[tool.route]] entry.
func (r *Route) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if r.Method != "*" && !isMethod(r.Method) {
		errs = append(errs, conf.Errf("method", "%q: want an HTTP method in upper case (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, ...), or \"*\"", r.Method))
	}
	if _, err := compilePattern(r.Path); err != nil {
		errs = append(errs, conf.Errf("path", "%v", err))
	}
	if r.Scope == "" {
		errs = append(errs, conf.Errf("scope", "every route needs the scope a token must carry"))
	}
	switch r.Approval {
	case "", ApprovalNone, ApprovalRequired:
	default:
		errs = append(errs, conf.Errf("approval", "%q: want none or required", r.Approval))
	}
	if r.MaxResponseBytes < 0 {
		errs = append(errs, conf.Errf("max_response_bytes", "must not be negative"))
	}
	switch r.DLP {
	case "", DLPRedact, DLPBlock, DLPOff:
	default:
		errs = append(errs, conf.Errf("dlp", "%q: want redact, block or off", r.DLP))
	}
	return errs
}

// methods are the methods a route may name: RFC 9110's, PATCH, and
// WebDAV's. A misspelt one would make a route that never matches.
var methods = map[string]bool{
	"GET": true, "HEAD": true, "POST": true, "PUT": true, "DELETE": true, "CONNECT": true, "OPTIONS": true,
	"TRACE": true, "PATCH": true, "PROPFIND": true, "PROPPATCH": true, "MKCOL": true, "COPY": true,
	"MOVE": true, "LOCK": true, "UNLOCK": true, "REPORT": true, "SEARCH": true,
}

func isMethod(m string) bool { return methods[m] }

// overlap returns a call (method and path) that both a and b match, if
// there is one.
func (a *Route) overlap(b *Route) (method, path string, ok bool) {
	switch {
	case a.Method == "*" && b.Method == "*":
		method = "GET"
	case a.Method == "*":
		method = b.Method
	case b.Method == "*" || a.Method == b.Method:
		method = a.Method
	default:
		return "", "", false
	}
	pa, err1 := compilePattern(a.Path)
	pb, err2 := compilePattern(b.Path)
	if err1 != nil || err2 != nil {
		return "", "", false
	}
	// example spells out a pattern's remaining segments as a path.
	example := func(segs []string) []string {
		var out []string
		for _, s := range segs {
			switch s {
			case "**":
				return out
			case "*":
				out = append(out, "x")
			default:
				out = append(out, s)
			}
		}
		return out
	}
	as, bs := pa.segs, pb.segs
	var p []string
	for i := 0; ; i++ {
		aEnd, bEnd := i >= len(as), i >= len(bs)
		switch {
		case !aEnd && as[i] == "**":
			p = append(p, example(bs[min(i, len(bs)):])...)
		case !bEnd && bs[i] == "**":
			p = append(p, example(as[i:])...)
		case aEnd && bEnd:
		case aEnd || bEnd:
			return "", "", false
		default:
			x, y := as[i], bs[i]
			switch {
			case x == "*" && y == "*":
				p = append(p, "x")
				continue
			case x == "*" && y != "":
				p = append(p, y)
				continue
			case y == "*" && x != "":
				p = append(p, x)
				continue
			case x == y && x != "*":
				p = append(p, x)
				continue
			}
			return "", "", false
		}
		return method, "/" + strings.Join(p, "/"), true
	}
}

// skipsApproval looks for a call that route i matches but that route j,
// listed before it, decides, no route before j having matched it: such a
// call skips what route i asks for. It tries the calls both routes match
// (overlap), with fresh names for wildcard segments and a few lengths for
// "**", and each method when both routes take any.
func (t *Tool) skipsApproval(j, i int) (method, path string, ok bool) {
	rj, ri := &t.Routes[j], &t.Routes[i]
	m, p, ok := rj.overlap(ri)
	if !ok {
		return "", "", false
	}
	ms := []string{m}
	if rj.Method == "*" && ri.Method == "*" {
		ms = slices.Sorted(maps.Keys(methods))
	}
	const fresh = "zz-any"
	var base []string
	if p != "/" {
		base = strings.Split(strings.TrimPrefix(p, "/"), "/")
	}
	for k := range base {
		if base[k] == "x" {
			base[k] = fresh
		}
	}
	paths := [][]string{base, append(slices.Clone(base), fresh), append(slices.Clone(base), fresh, fresh)}
	pats := make([]pattern, i+1)
	for k := 0; k <= i; k++ {
		pats[k], _ = compilePattern(t.Routes[k].Path)
	}
	for _, method := range ms {
		for _, segs := range paths {
			if !pats[i].match(segs) || !pats[j].match(segs) {
				continue
			}
			first := -1
			for k := 0; k <= i && first < 0; k++ {
				if (t.Routes[k].Method == "*" || t.Routes[k].Method == method) && pats[k].match(segs) {
					first = k
				}
			}
			if first == j {
				return method, "/" + strings.Join(segs, "/"), true
			}
		}
	}
	return "", "", false
}

// covers reports whether route a, listed before b, matches every call b
// matches: b can then never be chosen (the first matching route wins).
func (a *Route) covers(b *Route) bool {
	if a.Method != "*" && a.Method != b.Method {
		return false
	}
	pa, err1 := compilePattern(a.Path)
	pb, err2 := compilePattern(b.Path)
	if err1 != nil || err2 != nil {
		return false
	}
	as, bs := pa.segs, pb.segs
	for i, seg := range as {
		switch {
		case seg == "**":
			return true
		case i >= len(bs), bs[i] == "**":
			// b's paths end here, or go on as they like; a's do not.
			return false
		case seg == "*":
			if bs[i] == "" {
				return false // "*" never matches an empty segment
			}
		case seg != bs[i]:
			return false
		}
	}
	return len(as) == len(bs)
}

// Validate checks the [risk] section.
func (c *RiskConfig) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if c.RequestsPerMinute < 0 {
		errs = append(errs, conf.Errf("requests_per_minute", "must not be negative"))
	}
	if c.ResponseBytesPerHour < 0 {
		errs = append(errs, conf.Errf("response_bytes_per_hour", "must not be negative"))
	}
	for _, a := range []struct{ key, v string }{
		{"on_exceed", c.OnExceed}, {"on_off_hours", c.OnOffHours}, {"on_new_source", c.OnNewSource},
	} {
		switch a.v {
		case "", ActionStepUp, ActionBlock, ActionAlert:
		default:
			errs = append(errs, conf.Errf(a.key, "%q: want step_up, block or alert", a.v))
		}
	}
	if c.BusinessHours != "" {
		if _, err := parseHours(c.BusinessHours); err != nil {
			errs = append(errs, conf.Errf("business_hours", "%v", err))
		}
	}
	if c.BlockFor < 0 {
		errs = append(errs, conf.Errf("block_for", "must not be negative"))
	}
	if c.ApprovalTTL < 0 || c.ApprovalTTL.D() > 24*time.Hour {
		errs = append(errs, conf.Errf("approval_ttl", "must be between 0 (default 10m) and 24h"))
	}
	return errs
}

// ValidateTools checks the [[tool]] list as a whole (names unique) and each
// entry; keys are "tool[i]....".
func ValidateTools(tools []Tool) []*conf.FieldError {
	var errs []*conf.FieldError
	seen := map[string]int{}
	for i := range tools {
		key := fmt.Sprintf("tool[%d]", i)
		errs = append(errs, conf.Join(key, tools[i].Validate())...)
		if j, dup := seen[tools[i].Name]; dup {
			errs = append(errs, conf.Errf(key+".name", "tool %q is already defined by tool[%d]", tools[i].Name, j))
		}
		seen[tools[i].Name] = i
	}
	return errs
}
