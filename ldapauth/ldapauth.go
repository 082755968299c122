// Package ldapauth logs users in against Active Directory or another LDAP
// directory: it finds the user with a service account, checks the password by
// binding as the user, resolves the user's groups (nested), and maps groups
// to roles.
//
// It owns the LDAP side of user login: TLS to the DCs (LDAPS or StartTLS,
// verified against ca_file), failover across DCs with hold-down, pooled and
// health-checked service connections, group resolution (tokenGroups with a
// SID cache, the in-chain rule with the primary group, memberOf or posix
// groups), a per-user group cache, failure limits per user name, account
// and source address (kept across reloads, see Options.Replaces), and one
// audit event per attempt. Lookup re-checks a user who logged in before without a
// password, with the service account only (auth.recheck): it reads the
// account state afresh every time (AD: userAccountControl, the DC-computed
// lockout and password expiry, accountExpires, pwdLastSet; elsewhere:
// ppolicy lock, nsAccountLock, shadowExpire, and that the entry exists) and
// resolves the groups, from the group cache unless asked for fresh ones; a
// denial drops the cache entry.
//
// An account is known by its immutable id (Identity.ID: objectGUID in AD,
// entryUUID elsewhere, whichever the entry has, in any group mode), not by
// its name or DN, which offboarding renames and gives to the next person:
// a recheck with the id finds the account that logged in, and answers
// user_not_found when it is gone, and account_renamed (target: its DN now)
// when it no longer carries the name its sessions were issued under, even
// if another account has that name now. The group cache is keyed by the id too. A user entry
// without an id is not logged in (ErrNoAccountID).
//
// It refuses: an empty password (never sent, since LDAP treats it as an
// anonymous bind); plain LDAP unless insecure_plaintext is set; a name that
// matches zero or several entries; retrying a wrong password on another DC
// (it would count twice against AD's lockout); searching on a connection
// that carried a user's password bind. Every value placed in a filter is
// escaped once, where the filter is built.
//
// Caveats: the reasons a login was denied (Reason) are for the audit trail
// and for administrators; callers facing users must answer them all with the
// same generic error. At login AD only reveals account states (disabled,
// expired, …) to a bind with the right password, except lockout; Lookup
// reads them as attributes with the service account instead.
package ldapauth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/conf"
)

// SecretFunc returns the value of the named vault secret (the service
// account's password). The caller's buffer may be cleared after use.
type SecretFunc func(ctx context.Context, name string) ([]byte, error)

// Options are the collaborators of an Authenticator.
type Options struct {
	// Audit records every login attempt before Login returns. Required.
	Audit audit.Appender
	// BindPassword fetches bind_password_secret. Required with bind_dn.
	BindPassword SecretFunc
	// Logger; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Replaces, on a reload, is the Authenticator the new one takes over
	// from: the failures it counted (per user name, account and source)
	// and its attempts still at the directory carry over, under the new
	// limits, so a reload (SIGHUP) does not hand out a fresh allowance of
	// wrong passwords. Nil starts with none counted.
	Replaces *Authenticator
	// NameHash, when set, is what the audit records of a login name that
	// matches no account (audit.Hasher.Sum): users type their password
	// into the name field, and the journal must not hold it. Nil records
	// such a name as typed.
	NameHash func(string) string
}

// Request is one login attempt.
type Request struct {
	Username  string // "alice", "alice@corp.example" or "CORP\alice"
	Password  string
	Source    string // client address, for per-source limits and the audit; "" for local tools
	RequestID string // correlates the audit event with the API request
}

// Identity is a logged-in user.
type Identity struct {
	DN       string `json:"dn"`
	Username string `json:"username"` // sAMAccountName, or uid outside AD
	// ID is the account's immutable id: its objectGUID in AD, its
	// entryUUID elsewhere, as a lowercase UUID string. It survives
	// renames and moves and is never given to another account, so it is
	// what a later recheck asks about (LookupRequest.ID), not the name.
	ID          string   `json:"id"`
	UPN         string   `json:"upn,omitempty"`
	DisplayName string   `json:"display_name,omitempty"`
	Email       string   `json:"email,omitempty"`
	Groups      []Group  `json:"groups"` // direct and nested
	Roles       []string `json:"roles"`  // from group_roles, sorted
	DC          string   `json:"dc"`     // URL of the DC that answered
}

// Outcome is the decision on a login. A denial is an Outcome, not an error.
type Outcome struct {
	OK     bool   `json:"ok"`
	Reason Reason `json:"reason,omitempty"`  // why it was denied
	ADCode string `json:"ad_code,omitempty"` // AD's bind sub-code ("52e", "775", …)
	DC     string `json:"dc,omitempty"`      // DC that gave the answer, if any
	// RetryAfter is, for ReasonRateLimited, how long until the next
	// attempt would be let through.
	RetryAfter time.Duration `json:"-"`
}

// Authenticator logs users in. It is safe for concurrent use.
type Authenticator struct {
	cfg     Config
	opts    Options
	log     *slog.Logger
	dcs     []*server
	cache   groupCache
	sids    sidCache
	users   *limiter
	sources *limiter
	// accounts counts failures per directory account (its DN), whatever
	// name form they came under (alice, alice@corp, first.last@corp): the
	// per-name count alone gives each form its own allowance.
	accounts *limiter
	acctOf   *accountKeys // for Unlock
	stats    stats
	svcHold  atomic.Pointer[time.Time] // service binds refused until then
}

// accountKeys maps a user's name key to the account key its failures were
// last counted under.
type accountKeys struct {
	mu sync.Mutex
	m  map[string]string
}

// ErrAudit means the audit event could not be recorded, so the login failed.
var ErrAudit = errors.New("ldapauth: audit failed")

// New validates cfg and returns an Authenticator. cfg is not modified.
func New(cfg Config, opts Options) (*Authenticator, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		es := make([]error, len(errs))
		for i, e := range errs {
			es[i] = e
		}
		return nil, fmt.Errorf("ldapauth: invalid config: %w", errors.Join(es...))
	}
	if opts.Audit == nil {
		return nil, errors.New("ldapauth: an audit appender is required")
	}
	if cfg.BindDN != "" && opts.BindPassword == nil {
		return nil, errors.New("ldapauth: bind_dn is set but no secret source was given")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	// Not kept: every Authenticator would hold on to all it ever replaced.
	prev := opts.Replaces
	opts.Replaces = nil
	c := cfg.withDefaults()
	c.URLs = append([]string(nil), cfg.URLs...)
	var roots *x509.CertPool
	if c.CAFile != "" {
		var err error
		if roots, err = conf.CertPool(c.CAFile); err != nil {
			return nil, fmt.Errorf("ldapauth: ca_file: %w", err)
		}
	}
	a := &Authenticator{
		cfg:      c,
		opts:     opts,
		log:      opts.Logger,
		cache:    groupCache{ttl: c.GroupCacheTTL.D(), m: map[string]cachedGroups{}},
		sids:     sidCache{m: map[string]sidEntry{}},
		users:    newLimiter(c.MaxFailuresPerUser, c.FailureWindow.D(), true),
		sources:  newLimiter(c.MaxFailuresPerSource, c.FailureWindow.D(), false),
		accounts: newLimiter(c.MaxFailuresPerUser, c.FailureWindow.D(), true),
		acctOf:   &accountKeys{m: map[string]string{}},
	}
	for _, u := range c.URLs {
		d, err := newDC(u, c.StartTLS, roots, c.ServerName)
		if err != nil {
			return nil, err
		}
		a.dcs = append(a.dcs, d)
	}
	if p := prev; p != nil {
		// The very counters, not a copy: a login still running on the
		// old Authenticator counts its failure where the new one sees
		// it. Taken last, so a config New refuses leaves the old limits.
		a.users, a.sources, a.accounts, a.acctOf = p.users, p.sources, p.accounts, p.acctOf
		a.users.configure(c.MaxFailuresPerUser, c.FailureWindow.D())
		a.sources.configure(c.MaxFailuresPerSource, c.FailureWindow.D())
		a.accounts.configure(c.MaxFailuresPerUser, c.FailureWindow.D())
	}
	return a, nil
}

func (a *Authenticator) now() time.Time { return a.opts.Now() }

// Close closes pooled connections.
func (a *Authenticator) Close() error {
	for _, d := range a.dcs {
		d.closeAll()
	}
	return nil
}

// Health returns the state of each DC, in configuration order.
func (a *Authenticator) Health() []DCHealth {
	now := a.now()
	out := make([]DCHealth, len(a.dcs))
	for i, d := range a.dcs {
		out[i] = d.health(now)
	}
	return out
}

// Stats returns counters since New.
func (a *Authenticator) Stats() Stats {
	return Stats{
		Logins: a.stats.logins.Load(), Dials: a.stats.dials.Load(),
		Operations: a.stats.ops.Load(), GroupCacheHits: a.stats.cacheHit.Load(),
	}
}

// UserKey is the key under which failed logins of user are counted (the
// name as the directory knows it), or why user is not a login name.
func (a *Authenticator) UserKey(user string) (string, error) {
	name, err := parseLoginName(user, a.cfg.NetBIOSDomain)
	if err != nil {
		return "", err
	}
	return name.key, nil
}

// Unlock clears the failures counted against a user key (UserKey) and
// against a client address, as logins give it (either may be empty), so
// that their next login goes to the directory at once. It reports whether
// anything was counted. It does not touch the directory's own lockout
// (AD's badPwdCount).
func (a *Authenticator) Unlock(userKey, source string) (userHad, sourceHad bool) {
	if userKey != "" {
		userHad = a.users.reset(userKey)
		a.acctOf.mu.Lock()
		ak := a.acctOf.m[userKey]
		a.acctOf.mu.Unlock()
		if ak != "" && a.accounts.reset(ak) {
			userHad = true
		}
	}
	if source != "" {
		sourceHad = a.sources.reset(source)
	}
	return userHad, sourceHad
}

// Login checks a user's password and returns the user's identity. A denied
// login returns ok == false with a Reason and a nil error; an error means
// the machine failed (no DC reachable, TLS failure, audit failure) and the
// login is refused too. Every attempt is audited before Login returns.
func (a *Authenticator) Login(ctx context.Context, r Request) (Identity, Outcome, error) {
	name, err := parseLoginName(r.Username, a.cfg.NetBIOSDomain)
	if err != nil {
		return a.finish(ctx, r, Identity{}, Outcome{Reason: ReasonInvalidName}, nil, "")
	}
	if r.Password == "" {
		return a.finish(ctx, r, Identity{}, Outcome{Reason: ReasonEmptyPassword}, nil, name.key)
	}
	if len(r.Password) > MaxPasswordLen {
		return a.finish(ctx, r, Identity{}, Outcome{Reason: ReasonInvalidPassword}, nil, name.key)
	}
	now := a.now()
	srcKey := r.Source
	if a.shared(r.Source) {
		srcKey = "" // counted per user only
	}
	uok, uwait, utrip := a.users.checkTrip(name.key, now)
	sok, swait, strip := a.sources.checkTrip(srcKey, now)
	// Limited with no failure to trip it (a reload lowered the limit
	// below the failures counted): the trip is audited all the same.
	if utrip {
		if err := a.auditLimit(ctx, r, "user:"+name.key, a.cfg.MaxFailuresPerUser); err != nil {
			return Identity{}, Outcome{Reason: ReasonRateLimited, RetryAfter: uwait}, err
		}
	}
	if strip {
		if err := a.auditLimit(ctx, r, "source:"+r.Source, a.cfg.MaxFailuresPerSource); err != nil {
			return Identity{}, Outcome{Reason: ReasonRateLimited, RetryAfter: swait}, err
		}
	}
	if !uok || !sok {
		wait := time.Duration(0)
		if !uok {
			wait = uwait
		}
		if !sok {
			wait = max(wait, swait)
		}
		return a.finish(ctx, r, Identity{}, Outcome{Reason: ReasonRateLimited, RetryAfter: wait}, nil, "")
	}
	// No more attempts at the directory at once than the user's failure
	// budget: a burst of parallel wrong passwords must not reach the DC
	// together (see limiter.begin).
	if ok, wait := a.users.begin(ctx, name.key, a.now); !ok {
		return a.finish(ctx, r, Identity{}, Outcome{Reason: ReasonRateLimited, RetryAfter: wait}, nil, "")
	}
	defer a.users.end(name.key)
	a.stats.logins.Add(1)
	id, out, err := a.login(ctx, name, r.Password)
	if err != nil {
		return a.finish(ctx, r, Identity{}, out, err, "")
	}
	ak := accountKey(id.DN)
	if ak != "" {
		a.acctOf.mu.Lock()
		if len(a.acctOf.m) >= limiterMaxKeys {
			clear(a.acctOf.m)
		}
		a.acctOf.m[name.key] = ak
		a.acctOf.mu.Unlock()
	}
	if out.OK {
		a.users.reset(name.key)
		a.accounts.reset(ak)
		return a.finish(ctx, r, id, out, nil, "")
	}
	if countsAsFailure(out.Reason) {
		now := a.now()
		a.accounts.fail(ak, now)
		if a.users.fail(name.key, now) {
			if err := a.auditLimit(ctx, r, "user:"+name.key, a.cfg.MaxFailuresPerUser); err != nil {
				return Identity{}, out, err
			}
		}
		if a.sources.fail(srcKey, now) {
			if err := a.auditLimit(ctx, r, "source:"+r.Source, a.cfg.MaxFailuresPerSource); err != nil {
				return Identity{}, out, err
			}
		}
	}
	return a.finish(ctx, r, id, out, nil, "")
}

// shared reports whether source is one of [ldap] shared_sources.
func (a *Authenticator) shared(source string) bool {
	if len(a.cfg.SharedSources) == 0 || source == "" {
		return false
	}
	if h, _, err := net.SplitHostPort(source); err == nil {
		source = h
	}
	addr, err := netip.ParseAddr(source)
	if err != nil {
		return false
	}
	for _, s := range a.cfg.SharedSources {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(addr.Unmap()) {
			return true
		}
	}
	return false
}

// accountKey is the per-account limiter key of a DN ("" for none).
func accountKey(dn string) string {
	if dn == "" {
		return ""
	}
	return "dn:" + strings.ToLower(normDN(dn))
}

func countsAsFailure(r Reason) bool {
	switch r {
	case ReasonNotInAllowedGroups, ReasonDirectoryUnavailable, ReasonRateLimited, "":
		return false
	}
	return true
}

// finish audits the attempt and returns the result; an audit failure turns
// any result into an error.
func (a *Authenticator) finish(ctx context.Context, r Request, id Identity, out Outcome, lerr error, key string) (Identity, Outcome, error) {
	ev := authEvent("auth.login", "ldap.login", r.Username, r.RequestID, r.Source, id, out, lerr)
	if lerr == nil && out.OK {
		ev.Actor.User = id.Username
		// The name and the DN may be another account's later; the id is not.
		ev.Details["account_id"] = id.ID
	}
	if (out.Reason == ReasonUserNotFound || out.Reason == ReasonInvalidName) && a.opts.NameHash != nil {
		// No account by that name: it may be a password typed in the
		// wrong field. Its keyed hash still lets an auditor match repeats
		// (`applianced audit hash`).
		ev.Actor.User = ""
		ev.Details["username_hmac"] = a.opts.NameHash(r.Username)
	}
	if out.ADCode != "" {
		ev.Details["ad_code"] = out.ADCode
	}
	return a.record(ctx, ev, "login", id, out, lerr)
}

// authEvent is the audit event of a login or a recheck of username: denied
// unless out is OK, a directory failure when lerr is set (see failed).
func authEvent(typ, action, username, requestID, source string, id Identity, out Outcome, lerr error) *audit.Event {
	ev := &audit.Event{
		Type:      typ,
		Action:    action,
		Actor:     audit.Actor{User: auditName(username)},
		Outcome:   audit.OutcomeDenied,
		Reason:    string(out.Reason),
		RequestID: requestID,
		Source:    source,
		Details:   map[string]string{},
	}
	switch {
	case lerr != nil:
		failed(ev, lerr)
	case out.OK:
		ev.Outcome = audit.OutcomeSuccess
		ev.Details["groups"] = fmt.Sprint(len(id.Groups))
		ev.Details["roles"] = strings.Join(id.Roles, ",")
	}
	return ev
}

// record completes ev with what every auth event carries (the DC, the
// user's DN), appends it and returns the result; an audit failure turns any
// result into an error. what names the check in the log ("login",
// "recheck").
func (a *Authenticator) record(ctx context.Context, ev *audit.Event, what string, id Identity, out Outcome, lerr error) (Identity, Outcome, error) {
	if out.DC != "" {
		ev.Details["dc"] = out.DC
	}
	if id.DN != "" {
		ev.Target = id.DN
	}
	if len(ev.Details) == 0 {
		ev.Details = nil
	}
	if _, err := a.opts.Audit.Append(ctx, ev); err != nil {
		a.log.Error("ldap "+what+" not audited", "user", ev.Actor.User, "error", err)
		return Identity{}, Outcome{Reason: out.Reason, DC: out.DC}, fmt.Errorf("%w: %w", ErrAudit, err)
	}
	a.log.Info("ldap "+what, "user", ev.Actor.User, "outcome", ev.Outcome, "reason", ev.Reason, "source", ev.Source, "dc", out.DC)
	if lerr != nil {
		return Identity{}, out, lerr
	}
	if !out.OK {
		return Identity{}, out, nil
	}
	return id, out, nil
}

// failed marks ev as a directory failure: the check could not be answered.
func failed(ev *audit.Event, lerr error) {
	ev.Outcome = audit.OutcomeFailure
	ev.Severity = audit.SeverityWarn
	if ev.Reason == "" {
		ev.Reason = string(ReasonDirectoryUnavailable)
	}
	ev.Details["error"] = lerr.Error()
}

func (a *Authenticator) auditLimit(ctx context.Context, r Request, key string, limit int) error {
	ev := &audit.Event{
		Type:      "auth.login",
		Severity:  audit.SeverityHigh,
		Action:    "ldap.login.limit",
		Actor:     audit.Actor{User: auditName(r.Username)},
		Target:    auditName(key),
		Outcome:   audit.OutcomeDenied,
		Reason:    "rate_limit_tripped",
		RequestID: r.RequestID,
		Source:    r.Source,
		Details: map[string]string{"failures": fmt.Sprint(limit), "window": a.cfg.FailureWindow.D().String(),
			"effect": "further attempts refused without asking the directory"},
	}
	if _, err := a.opts.Audit.Append(ctx, ev); err != nil {
		return fmt.Errorf("%w: %w", ErrAudit, err)
	}
	a.log.Warn("ldap login limit tripped", "key", ev.Target, "source", r.Source)
	return nil
}

// auditName makes an untrusted name safe to record: valid UTF-8, bounded.
func auditName(s string) string {
	if len(s) > MaxNameLen {
		s = s[:MaxNameLen]
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// dcOrder is the order DCs are tried: those not held down in configuration
// order, then held-down ones, soonest back first.
func (a *Authenticator) dcOrder(now time.Time) []*server {
	type held struct {
		d     *server
		until time.Time
	}
	var up []*server
	var down []held
	for _, d := range a.dcs {
		if isDown, until := d.isDown(now); isDown {
			down = append(down, held{d, until})
		} else {
			up = append(up, d)
		}
	}
	sort.SliceStable(down, func(i, j int) bool { return down[i].until.Before(down[j].until) })
	for _, h := range down {
		up = append(up, h.d)
	}
	return up
}

func (a *Authenticator) login(ctx context.Context, name loginName, password string) (Identity, Outcome, error) {
	return a.tryDCs(ctx, func(d *server) (Identity, Outcome, error, bool) {
		return a.loginOn(ctx, d, name, password)
	})
}

// tryDCs runs try on each DC in dcOrder until one answers (failover false)
// and returns that answer. A DC that failed is held down and the next one
// tried; when the caller gives up or no DC is left, the directory is
// unavailable.
func (a *Authenticator) tryDCs(ctx context.Context, try func(d *server) (id Identity, out Outcome, err error, failover bool)) (Identity, Outcome, error) {
	var lastErr error
	for _, d := range a.dcOrder(a.now()) {
		id, out, err, failover := try(d)
		if !failover {
			return id, out, err
		}
		if cerr := ctxErr(ctx); cerr != nil {
			// The caller gave up; the DC is not to blame.
			if !errors.Is(err, cerr) {
				err = fmt.Errorf("%w (%w)", cerr, err)
			}
			lastErr = err
			break
		}
		lastErr = err
		d.markDown(a.now(), err)
		a.log.Warn("ldap server failed, trying the next", "dc", d.url, "error", err)
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return Identity{}, Outcome{Reason: ReasonDirectoryUnavailable}, fmt.Errorf("%w: %w", ErrUnavailable, lastErr)
}

// releaseSearch returns sc to d's pool of search connections when keep,
// else closes it; a nil sc (a redial that failed) is left alone.
func (a *Authenticator) releaseSearch(d *server, sc *ldap.Conn, keep bool) {
	switch {
	case sc == nil:
	case keep:
		d.put(false, sc, a.cfg.MaxConnections, a.now())
	default:
		sc.Close()
	}
}

// searchUser runs the user search req on sc. A pooled connection the
// network dropped while idle is closed and the search repeated, once, on a
// fresh connection to the same DC (searches are safe to repeat). It returns
// the connection now in use, nil when that redial failed (err says why).
func (a *Authenticator) searchUser(ctx context.Context, d *server, sc *ldap.Conn, pooled bool, req *ldap.SearchRequest) (*ldap.Conn, *ldap.SearchResult, error) {
	res, err := a.search(ctx, sc, req, false)
	if err != nil && pooled && connFailed(sc, err) && ctxErr(ctx) == nil {
		sc.Close()
		if sc, err = a.dial(ctx, d, true); err != nil {
			return nil, nil, err
		}
		res, err = a.search(ctx, sc, req, false)
	}
	return sc, res, err
}

// searchFailure classifies a failed user search on d: a size limit means
// the name is ambiguous (a denial; sc may be kept), a connection that
// failed lets the next DC be tried, anything else leaves the directory
// unavailable.
func searchFailure(d *server, sc *ldap.Conn, err error) (out Outcome, keep bool, ferr error, failover bool) {
	if ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		return Outcome{Reason: ReasonAmbiguousUser, DC: d.url}, true, nil, false
	}
	if connFailed(sc, err) {
		return Outcome{DC: d.url}, false, fmt.Errorf("ldapauth: user search on %s: %w", d.url, err), true
	}
	return Outcome{Reason: ReasonDirectoryUnavailable, DC: d.url}, false, fmt.Errorf("ldapauth: user search on %s: %w", d.url, err), false
}

// searchConnFailure says what a failure to get a search connection to d
// means: the next DC may be tried when d could not be reached; a refused
// service bind or any other error ends the attempt.
func searchConnFailure(d *server, err error) (out Outcome, failover bool) {
	if errors.Is(err, ErrServiceBind) || !isConnErr(err) {
		return Outcome{Reason: ReasonDirectoryUnavailable, DC: d.url}, false
	}
	return Outcome{DC: d.url}, true
}

// loginOn tries one DC. failover reports that the DC itself failed before
// the user's password was sent to it, so the next DC may be tried.
func (a *Authenticator) loginOn(ctx context.Context, d *server, name loginName, password string) (id Identity, out Outcome, err error, failover bool) {
	out.DC = d.url
	sc, pooled, err := a.searchConn(ctx, d)
	if err != nil {
		out, failover := searchConnFailure(d, err)
		return id, out, err, failover
	}
	keep := false
	defer func() { a.releaseSearch(d, sc, keep) }()

	req := ldap.NewSearchRequest(a.cfg.UserBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, 0, false, userFilter(a.cfg.UserFilter, a.cfg.LoginAttributes, name),
		append(userAttrs(a.cfg.GroupMode, a.cfg.LoginAttributes), stateAttrs(a.cfg.GroupMode)...), nil)
	var res *ldap.SearchResult
	if sc, res, err = a.searchUser(ctx, d, sc, pooled, req); sc == nil {
		return id, out, err, isConnErr(err)
	}
	if err != nil {
		out, keep, err, failover = searchFailure(d, sc, err)
		return id, out, err, failover
	}
	switch {
	case len(res.Entries) == 0:
		keep = true
		out.Reason = ReasonUserNotFound
		return id, out, nil, false
	case len(res.Entries) > 1:
		keep = true
		out.Reason = ReasonAmbiguousUser
		return id, out, nil, false
	}
	user := res.Entries[0]
	if user.DN == "" {
		out.Reason = ReasonUserNotFound
		return id, out, nil, false
	}
	// An account that cannot be told apart from a later one of the same
	// name is not logged in, and its password is not sent.
	acctID, err := accountID(user)
	if err != nil {
		keep = true
		out.Reason = ReasonDirectoryUnavailable
		return id, out, fmt.Errorf("ldapauth: user search on %s: %w", d.url, err), false
	}
	// The account's own count, whatever name form it came under: the
	// search does not touch AD's bad password count, the bind does.
	if ok, wait := a.accounts.check(accountKey(user.DN), a.now()); !ok {
		keep = true
		out.Reason, out.RetryAfter = ReasonRateLimited, wait
		id.DN = user.DN
		return id, out, nil, false
	}

	// The password bind, on a connection that never searches.
	bc, pooled, err := a.bindConn(ctx, d)
	if err != nil {
		return id, out, err, isConnErr(err)
	}
	bindOnce := func(c *ldap.Conn) error {
		return withCtx(ctx, c, a.cfg.RequestTimeout.D(), func() error {
			a.stats.ops.Add(1)
			return c.Bind(user.DN, password)
		})
	}
	err = bindOnce(bc)
	if err != nil && pooled && bc.IsClosing() && ctxErr(ctx) == nil {
		// A pooled connection the DC had closed while idle: the request
		// never left, so one retry on a fresh connection is safe.
		bc.Close()
		if bc, err = a.dial(ctx, d, false); err != nil {
			return id, out, err, isConnErr(err)
		}
		err = bindOnce(bc)
	}
	if err != nil {
		var le *ldap.Error
		if errors.As(err, &le) && !connFailed(bc, err) {
			// The DC answered: a denial. Never retried on another DC.
			d.put(true, bc, a.cfg.MaxConnections, a.now())
			keep = true
			a.cache.drop(acctID)
			out.Reason, out.ADCode = bindReason(err)
			id.DN = user.DN
			return id, out, nil, false
		}
		bc.Close()
		// The bind went out: the DC may have checked the password, and
		// counted a wrong one, before it failed. Sent to the next DC it
		// could count twice toward AD's lockout, so the login ends here,
		// as the directory being unavailable, and the DC is held down.
		err = fmt.Errorf("ldapauth: bind on %s: %w", d.url, err)
		if ctxErr(ctx) == nil {
			d.markDown(a.now(), err)
			a.log.Warn("ldap server failed during a bind; not retried on another DC", "dc", d.url, "error", err)
		}
		out.Reason = ReasonDirectoryUnavailable
		return id, out, fmt.Errorf("%w: %w", ErrUnavailable, err), false
	}
	d.put(true, bc, a.cfg.MaxConnections, a.now())
	if a.cfg.GroupMode != GroupModeAD && a.cfg.GroupMode != GroupModeADInChain {
		// OpenLDAP does not refuse the bind of an account expired
		// (shadowExpire), disabled (nsAccountLock) or locked without
		// ppolicy: the states the recheck enforces are enforced here too,
		// or a refused account would log in again every 30 s. (AD refuses
		// them at the bind.)
		if reason := accountState(user, a.cfg.GroupMode, a.now()); reason != "" {
			keep = true
			out.Reason = reason
			id.DN = user.DN
			return id, out, nil, false
		}
	}

	groups, hit := a.cache.get(acctID, a.now())
	if hit {
		a.stats.cacheHit.Add(1)
	} else {
		groups, err = a.groups(ctx, sc, user)
		if err != nil {
			return id, out, fmt.Errorf("ldapauth: groups on %s: %w", d.url, err), connFailed(sc, err)
		}
		a.cache.put(acctID, groups, a.now())
	}
	keep = true
	d.markUp(a.now())

	id = a.identity(user, acctID, groups, d.url)
	if len(a.cfg.AllowedGroups) > 0 && !a.allowed(groups) {
		out.Reason = ReasonNotInAllowedGroups
		return id, out, nil, false
	}
	out.OK = true
	return id, out, nil, false
}

// username is the name an Identity carries for the account e:
// sAMAccountName, else uid, else the first login attribute.
func (a *Authenticator) username(e *ldap.Entry) string {
	for _, attr := range []string{"sAMAccountName", "uid", a.cfg.LoginAttributes[0]} {
		if v := e.GetAttributeValue(attr); v != "" {
			return v
		}
	}
	return ""
}

// identity is the Identity of the account e, whose canonical id is acctID.
func (a *Authenticator) identity(e *ldap.Entry, acctID string, groups []Group, dcURL string) Identity {
	id := Identity{
		DN:          e.DN,
		Username:    a.username(e),
		ID:          acctID,
		UPN:         e.GetAttributeValue("userPrincipalName"),
		DisplayName: e.GetAttributeValue("displayName"),
		Email:       e.GetAttributeValue("mail"),
		Groups:      groups,
		DC:          dcURL,
	}
	if id.DisplayName == "" {
		id.DisplayName = e.GetAttributeValue("cn")
	}
	roles := map[string]bool{}
	for ref, rs := range a.cfg.GroupRoles {
		for _, g := range groups {
			if matchGroup(g, ref) {
				for _, r := range rs {
					roles[r] = true
				}
				break
			}
		}
	}
	id.Roles = make([]string, 0, len(roles))
	for r := range roles {
		id.Roles = append(id.Roles, r)
	}
	sort.Strings(id.Roles)
	if id.Groups == nil {
		id.Groups = []Group{}
	}
	return id
}

func (a *Authenticator) allowed(groups []Group) bool {
	for _, ref := range a.cfg.AllowedGroups {
		for _, g := range groups {
			if matchGroup(g, ref) {
				return true
			}
		}
	}
	return false
}
