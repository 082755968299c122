package toolproxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker/dlp"
	"github.com/applianced/applianced/internal/conf"
)

// Principal is what a verified token says about its bearer.
type Principal struct {
	Agent string // agent name from the config (for a token exchange: act.sub)
	User  string // the user the agent acts for; empty when it acts alone
	// UserID is User's directory account id (the token's oid): what TOTP
	// approvals are checked against, since a name can pass to another
	// account.
	UserID string
	Groups []string // the user's directory groups
	Scopes []string
	JTI    string
	// JTIHMAC is the keyed hash of JTI under which the token's issuance
	// was recorded (jti_hmac), if the Verifier knows it.
	JTIHMAC string
	Expiry  time.Time
}

// Verifier checks an access token. Verify must check signature, expiry,
// revocation, that the agent is enabled, and that the token is for the
// tool named audience: its aud must be that tool's own audience, never a
// general one shared by several tools. An error wrapping ErrWrongAudience
// (a sound token for another audience) refuses the call with 403; any
// other error with 401.
type Verifier interface {
	Verify(ctx context.Context, rawToken, audience string) (Principal, error)
	// VerifyUser accepts only a user's own token (from a login or its
	// refresh): not an agent's, not one exchanged for an agent. It is what
	// a user deciding an approval with a TOTP code presents.
	VerifyUser(ctx context.Context, rawToken string) (Principal, error)
}

// PolicyRequest is what an ABAC decision is about.
type PolicyRequest struct {
	Agent  string
	User   string
	Groups []string
	Scope  string
	Tool   string
	Source netip.Addr // invalid for a Unix-socket caller
	Time   time.Time
}

// PolicyChecker decides the [[policy]] rules for one call. allowed false
// refuses with 403 and reason in the audit record; an error refuses too.
type PolicyChecker interface {
	Allow(ctx context.Context, req PolicyRequest) (allowed bool, reason string, err error)
}

// AgentControl is the broker's kill switch, seen from the proxy.
type AgentControl interface {
	// Enabled reports whether the agent may act now; checked on every call.
	Enabled(ctx context.Context, agent string) (bool, error)
	// Disable disables the agent until the given time (zero: until enabled).
	Disable(ctx context.Context, agent, reason string, until time.Time) error
	// RevokeAgentTokens revokes every token issued to the agent.
	RevokeAgentTokens(ctx context.Context, agent, reason string) error
}

// SecretSource hands out a secret's value for a tool; it must refuse when
// the tool is not among the secret's allowed tools. It returns a fresh copy:
// the proxy zeroes it after use. The proxy never keeps
// the value beyond the call (an upstream OAuth2 token and a TLS client
// certificate are cached, keyed by the value's hash).
type SecretSource interface {
	ForTool(ctx context.Context, tool, name string) ([]byte, error)
}

// KeySource hands out a 32-byte key for a purpose; the proxy seals TOTP
// seeds with the key for "toolproxy.totp".
type KeySource interface {
	Key(ctx context.Context, purpose string) ([]byte, error)
}

// Options configure a Proxy. Every interface is required except Policy
// (nil: no ABAC rules beyond scopes) and Logger.
type Options struct {
	Tools []Tool
	Risk  RiskConfig
	// DLP scans responses; nil: the built-in detectors. ReloadWithDLP
	// swaps this scanner's detector set, so an audit Appender sharing it
	// follows the reload too.
	DLP      *dlp.Scanner
	StateDir string // toolproxy.db lives here
	Verifier Verifier
	Policy   PolicyChecker
	Agents   AgentControl
	// Users resolves a user to their directory account before a TOTP
	// enrolment, which is stored under the account's id; without it no one
	// can enroll.
	Users   UserDirectory
	Secrets SecretSource
	Keys    KeySource
	Audit   audit.Appender
	Logger  *slog.Logger
	// Issuer names the appliance in TOTP enrolment URIs. Default "applianced".
	Issuer string
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Proxy serves /v1/tools/ and /v1/approvals/.
type Proxy struct {
	opts  Options
	log   *slog.Logger
	now   func() time.Time
	dlp   *dlp.Scanner
	cur   atomic.Pointer[state] // swapped by Reload
	risk  *riskEngine
	store *store

	sweepMu  sync.Mutex // one sweep of expired approvals at a time
	sweeper  sync.Mutex // guards sweepCtl
	sweepCtl *sweepControl
	// totpMu makes each TOTP decision's check and counting one step.
	totpMu sync.Mutex
}

// state is the configuration-derived part of the proxy.
type state struct {
	tools map[string]*tool
	risk  RiskConfig
	hours *hours
}

// tool is a Tool ready to serve.
type tool struct {
	cfg         Tool
	base        *url.URL
	basePath    string // decoded, no trailing slash
	baseEscaped string // escaped, no trailing slash
	timeout     time.Duration
	maxReq      int64
	routes      []route
	tlsBase     *tls.Config
	transport   *http.Transport // without a client certificate

	// forms are the spellings of the credential last injected, to scrub
	// it from audited paths (learnForms); every call refreshes them.
	forms atomic.Pointer[echoForms]

	mu     sync.Mutex
	tlsKey [32]byte // hash of the tls_client secret the cached transport uses
	tlsTr  *http.Transport
	oauth  oauthCache
}

type route struct {
	cfg     Route
	pat     pattern
	maxResp int64
	dlp     string
}

// Errors a caller of New may branch on.
var (
	ErrConfig = errors.New("toolproxy: invalid configuration")
)

// UserDirectory resolves a user name to the directory account that may
// sign in under it: id is that account's immutable id (objectGUID,
// entryUUID) when refused is "", else refused is the directory's reason
// (user_not_found, account_locked, ...). An error is for a directory that
// cannot answer.
type UserDirectory interface {
	UserAccount(ctx context.Context, user string) (id, refused string, err error)
}

// ErrWrongAudience is what a Verifier wraps when a token is sound but was
// issued for another audience (another tool, or no tool in particular).
var ErrWrongAudience = errors.New("toolproxy: token is for another audience")

// TokenError is what a Verifier returns for a token it refuses but could
// attribute (its signature checked out): Why is told to the caller
// ("expired", "was revoked", ...), and Holder (Agent, User, JTI) goes into
// the audit record of the refusal, so that an auditor sees who kept
// calling with a revoked token or after being disabled.
type TokenError struct {
	Why      string
	Holder   Principal
	Disabled bool // the agent is disabled: answered as agent_disabled
	Err      error
}

func (e *TokenError) Error() string { return e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

// New validates opts, opens the state file and returns a proxy. Close it.
func New(opts Options) (*Proxy, error) {
	if errs := ValidateTools(opts.Tools); len(errs) > 0 {
		return nil, fmt.Errorf("%w: %v", ErrConfig, errs[0])
	}
	if errs := opts.Risk.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("%w: risk.%v", ErrConfig, errs[0])
	}
	if opts.Verifier == nil || opts.Agents == nil || opts.Secrets == nil || opts.Keys == nil || opts.Audit == nil {
		return nil, fmt.Errorf("%w: Verifier, Agents, Secrets, Keys and Audit are required", ErrConfig)
	}
	if opts.StateDir == "" {
		return nil, fmt.Errorf("%w: no state directory", ErrConfig)
	}
	p := &Proxy{opts: opts, log: opts.Logger, now: opts.Now, dlp: opts.DLP}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.opts.Issuer == "" {
		p.opts.Issuer = "applianced"
	}
	if p.dlp == nil {
		s, err := dlp.New(dlp.Config{})
		if err != nil {
			return nil, err
		}
		p.dlp = s
	}
	stt, err := buildState(opts.Tools, opts.Risk, nil)
	if err != nil {
		return nil, err
	}
	p.cur.Store(stt)
	p.learnForms(stt)
	st, err := openStore(filepath.Join(opts.StateDir, "toolproxy.db"))
	if err != nil {
		return nil, err
	}
	p.store = st
	p.risk = newRiskEngine(opts.Risk)
	p.startSweeper(approvalSweepEvery)
	return p, nil
}

// buildState compiles the sections, reusing the tools of old whose entry is
// unchanged (their connections and cached upstream tokens stay).
func buildState(tools []Tool, risk RiskConfig, old *state) (*state, error) {
	st := &state{tools: map[string]*tool{}, risk: risk}
	if risk.BusinessHours != "" {
		h, err := parseHours(risk.BusinessHours)
		if err != nil {
			return nil, fmt.Errorf("%w: risk.business_hours: %v", ErrConfig, err)
		}
		st.hours = h
	}
	for i := range tools {
		if old != nil {
			if t, ok := old.tools[tools[i].Name]; ok && reflect.DeepEqual(t.cfg, tools[i]) {
				st.tools[t.cfg.Name] = t
				continue
			}
		}
		t, err := newTool(tools[i])
		if err != nil {
			return nil, err
		}
		st.tools[t.cfg.Name] = t
	}
	return st, nil
}

// Reload swaps in new [[tool]] and [risk] sections (SIGHUP) and keeps the
// DLP detectors. Calls in flight finish on the old ones; counters, blocks,
// approvals and enrolments are kept. On error nothing changes.
func (p *Proxy) Reload(tools []Tool, risk RiskConfig) error {
	return p.reload(tools, risk, nil)
}

// ReloadWithDLP is Reload that also swaps the DLP detector set for the
// [dlp] section dc. All three sections are checked before anything is
// swapped: an invalid one (a bad detector pattern, say) is refused with
// ErrConfig and the old tools, limits and detectors stay in force.
func (p *Proxy) ReloadWithDLP(tools []Tool, risk RiskConfig, dc dlp.Config) error {
	return p.reload(tools, risk, &dc)
}

func (p *Proxy) reload(tools []Tool, risk RiskConfig, dc *dlp.Config) error {
	if errs := ValidateTools(tools); len(errs) > 0 {
		return fmt.Errorf("%w: %v", ErrConfig, errs[0])
	}
	if errs := risk.Validate(); len(errs) > 0 {
		return fmt.Errorf("%w: risk.%v", ErrConfig, errs[0])
	}
	if dc != nil {
		if errs := dc.Validate(); len(errs) > 0 {
			return fmt.Errorf("%w: dlp.%v", ErrConfig, errs[0])
		}
	}
	old := p.cur.Load()
	st, err := buildState(tools, risk, old)
	if err != nil {
		return err
	}
	if dc != nil {
		if err := p.dlp.Reload(*dc); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	p.cur.Store(st)
	p.learnForms(st)
	p.risk.setConfig(risk)
	for name, t := range old.tools {
		if st.tools[name] != t {
			t.closeIdle()
		}
	}
	return nil
}

// Close stops the sweep of expired approvals and closes the state file and
// idle upstream connections.
func (p *Proxy) Close() error {
	p.stopSweeper()
	for _, t := range p.cur.Load().tools {
		t.closeIdle()
	}
	return p.store.close()
}

func (t *tool) closeIdle() {
	t.transport.CloseIdleConnections()
	t.mu.Lock()
	if t.tlsTr != nil {
		t.tlsTr.CloseIdleConnections()
	}
	t.mu.Unlock()
}

func newTool(c Tool) (*tool, error) {
	u, _ := url.Parse(c.BaseURL) // validated
	t := &tool{
		cfg:         c,
		base:        u,
		basePath:    strings.TrimRight(u.Path, "/"),
		baseEscaped: strings.TrimRight(u.EscapedPath(), "/"),
		timeout:     c.Timeout.D(),
		maxReq:      int64(c.MaxRequestBytes),
	}
	if t.timeout == 0 {
		t.timeout = DefaultTimeout
	}
	if t.maxReq == 0 {
		t.maxReq = DefaultMaxRequestBytes
	}
	t.tlsBase = &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pool, err := conf.CertPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: tool %s: ca_file: %w", ErrConfig, c.Name, err)
		}
		t.tlsBase.RootCAs = pool
	}
	t.transport = newTransport(t.tlsBase, t.timeout)
	for _, rc := range c.Routes {
		pat, _ := compilePattern(rc.Path) // validated
		r := route{cfg: rc, pat: pat, maxResp: int64(rc.MaxResponseBytes), dlp: rc.DLP}
		if r.maxResp == 0 {
			r.maxResp = DefaultMaxResponseBytes
		}
		if r.dlp == "" {
			r.dlp = DLPRedact
		}
		t.routes = append(t.routes, r)
	}
	return t, nil
}

func newTransport(tc *tls.Config, timeout time.Duration) *http.Transport {
	d := &net.Dialer{Timeout: min(timeout, 10*time.Second), KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                  nil, // never an environment proxy: the upstream is internal
		DialContext:            d.DialContext,
		TLSClientConfig:        tc,
		TLSHandshakeTimeout:    min(timeout, 10*time.Second),
		ResponseHeaderTimeout:  timeout,
		ExpectContinueTimeout:  time.Second,
		MaxIdleConns:           256,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		ForceAttemptHTTP2:      true,
	}
}

func (t *tool) match(method string, segs []string) (*route, bool) {
	for i := range t.routes {
		r := &t.routes[i]
		if (r.cfg.Method == "*" || r.cfg.Method == method) && r.pat.match(segs) {
			return r, true
		}
	}
	return nil, false
}

// ServeHTTP serves /v1/tools/{tool}/{path...}, GET and POST
// /v1/approvals/{id}.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	switch {
	case strings.HasPrefix(path, "/v1/tools/"):
		p.serveTool(w, r, strings.TrimPrefix(path, "/v1/tools/"))
	case strings.HasPrefix(path, "/v1/approvals/"):
		p.serveApproval(w, r, strings.TrimPrefix(path, "/v1/approvals/"))
	default:
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
	}
}

func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func sourceOf(r *http.Request) (netip.Addr, string) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, "unix"
	}
	a := ap.Addr().Unmap()
	return a, a.String()
}

func hasScope(scopes []string, s string) bool { return slices.Contains(scopes, s) }

func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return "", false
	}
	scheme, tok, ok := strings.Cut(h[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}
