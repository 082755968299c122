package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/applianced/applianced/audit"
)

// Identity is a directory user after a successful login.
type Identity struct {
	Username string // login name (sAMAccountName or uid)
	// ID is the account's immutable id in the directory (objectGUID,
	// entryUUID). Required: sessions and rechecks follow the account by
	// it, not by a name the directory may give to someone else.
	ID     string
	DN     string   // distinguished name
	Groups []string // group names, nested groups resolved
	Roles  []string // [[role]] names from [ldap.group_roles]
}

// Account is a directory account as the broker knows a token's user: the
// name the tokens carry (sub) and the account's immutable id. ID is empty
// only for sessions stored before account ids were kept.
type Account struct {
	Name string
	ID   string
}

// holding is an entry of Broker.holders.
type holding struct {
	acct  Account
	until time.Time // when the last token of or for the account expires
	saved time.Time // the until the store holds for it (Store.PutHolder)
}

// holderSaveSlack is how far past a token's expiry a holder's stored
// record reaches, so that the store is written once per holder in that
// time rather than at every token: a restart checks the holder that much
// longer than needed, never shorter.
const holderSaveSlack = 10 * time.Minute

// holderKey is the key of acct in Broker.holders: its id and the name its
// tokens carry, or for a session without an id, its name. An account
// renamed while it holds tokens is held under each name, and each is
// checked: the tokens under its old name end, those under its new one
// stay.
func holderKey(acct Account) string {
	if acct.ID != "" {
		return "id:" + strings.ToLower(acct.ID) + "\x00" + userKey(acct.Name)
	}
	return "name:" + userKey(acct.Name)
}

// deniedRenamed is the directory's answer for an account that goes by
// another name now than the one its tokens carry (ldapauth's
// ReasonAccountRenamed): only the tokens and sessions under the old name
// end.
const deniedRenamed = "account_renamed"

// deniedNoAccountID is the refusal of a session stored before account ids
// were kept: which account it belongs to cannot be told any more (the name
// may be someone else's now), so it ends and the user logs in again.
const deniedNoAccountID = "session_without_account_id"

// Authenticator checks a user's password against the directory. A wrong
// password, an unknown or disabled user is ok == false with a nil error;
// err is for a directory that cannot answer, or a *ThrottledError when the
// attempt was refused before the directory was asked (too many failures).
//
// Recheck looks an account that logged in before up again, by its id and
// without a password, at refresh and at token exchange: denied is why the
// directory refuses the account now ("" when it may still sign in; a
// deleted account is refused; a renamed one is refused under its old name
// with deniedRenamed), err is for a directory that
// cannot answer. freshGroups asks for the groups from the directory rather
// than from a cache; the account state is always read afresh.
type Authenticator interface {
	Login(ctx context.Context, username, password, source string) (id Identity, ok bool, err error)
	Recheck(ctx context.Context, acct Account, source string, freshGroups bool) (id Identity, denied string, err error)
}

// ThrottledError is a login refused, without asking the directory,
// because of the user's or the address's recent failures.
type ThrottledError struct {
	RetryAfter time.Duration // until the next attempt is let through
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("too many failed sign-ins; retry in %s", e.RetryAfter.Round(time.Second))
}

// Hasher turns an identifier into the keyed hash under which it appears
// in audit events; *audit.Hasher implements it.
type Hasher interface {
	Sum(value string) string
}

// Options configure a Broker. Config, Issuer, Keys, Store and Audit are
// required.
type Options struct {
	Config Config
	// Issuer is the iss of every token and the base of the endpoints'
	// URLs, e.g. "https://10.20.0.5:8443".
	Issuer string
	Keys   KeyStore
	Store  Store
	Audit  audit.Appender
	// Auth checks user passwords for /v1/login; nil disables login.
	Auth Authenticator
	// Hasher HMACs token ids for audit events; nil leaves them out.
	Hasher Hasher
	Logger *slog.Logger
	// Location is the site's time zone for policy hours; nil means Local.
	Location *time.Location
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Broker issues, verifies and revokes tokens. It is safe for concurrent use.
type Broker struct {
	issuer string
	keys   *keyring
	store  Store
	audit  audit.Appender
	auth   Authenticator
	hasher Hasher
	log    *slog.Logger
	loc    *time.Location
	now    func() time.Time

	cfg  atomic.Pointer[compiled]
	revs *revocations

	verified        *verifiedCache
	signatureChecks atomic.Int64 // full verifications (cache misses), for tests

	stateMu sync.RWMutex
	states  map[string]AgentState
	seen    sync.Map // agent name -> time.Time, flushed to the store by Run
	holders sync.Map // holderKey(account) -> holding
}

// compiled is a validated config with its lookup tables.
type compiled struct {
	tokens   TokenConfig
	roles    map[string]Role
	agents   map[string]*agentEntry
	byUID    map[int]*agentEntry
	byUnit   map[string]*agentEntry
	policies []compiledPolicy
	tools    map[string]bool
}

type agentEntry struct {
	Agent
	scopes []string // union of the roles' scopes, sorted
	ttl    time.Duration
	pub    ed25519.PublicKey
	secret *argon2Hash
}

// New validates opts and returns a working broker: it loads (or creates)
// the signing keys and the runtime state.
func New(ctx context.Context, opts Options) (*Broker, error) {
	if opts.Issuer == "" || opts.Keys == nil || opts.Store == nil || opts.Audit == nil {
		return nil, errors.New("broker: Issuer, Keys, Store and Audit are required")
	}
	b := &Broker{
		issuer: opts.Issuer, store: opts.Store, audit: opts.Audit, auth: opts.Auth, hasher: opts.Hasher,
		log: opts.Logger, loc: opts.Location, now: opts.Now, verified: newVerifiedCache(),
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	if b.loc == nil {
		b.loc = time.Local
	}
	if b.now == nil {
		b.now = time.Now
	}
	cc, err := b.compile(opts.Config)
	if err != nil {
		return nil, err
	}
	b.cfg.Store(cc)
	if b.keys, err = openKeyring(ctx, opts.Keys, cc.tokens.rotateEvery(), b.now()); err != nil {
		return nil, err
	}
	if b.keys.due(b.now()) {
		if err := b.rotateKey(ctx); err != nil {
			return nil, err
		}
	}
	if b.states, err = b.store.AgentStates(ctx); err != nil {
		return nil, err
	}
	revs, err := b.store.Revocations(ctx)
	if err != nil {
		return nil, err
	}
	b.revs = newRevocations(revs)
	// Users with a live session may hold live tokens issued before this
	// start: they are checked against the directory with the rest
	// (RecheckHolders), for as long as a token could still be live.
	users, err := b.store.SessionUsers(ctx, b.now())
	if err != nil {
		return nil, err
	}
	until := b.now().Add(cc.tokens.maxTTL())
	for _, acct := range users {
		// A session without an account id is refused at the first
		// check (deniedNoAccountID).
		b.holdInMemory(acct, until, time.Time{})
	}
	// And every account that was issued a token that may still be live,
	// with or without a session left (logged out, an agent's exchanged
	// token).
	held, err := b.store.Holders(ctx, b.now())
	if err != nil {
		return nil, err
	}
	for _, h := range held {
		b.holdInMemory(Account{Name: h.Name, ID: h.ID}, h.Until, h.Until)
	}
	return b, nil
}

// Reload replaces the roles, agents, policies and tool names. Tokens already issued
// stay valid unless their agent is gone or disabled.
func (b *Broker) Reload(cfg Config) error {
	cc, err := b.compile(cfg)
	if err != nil {
		return err
	}
	b.cfg.Store(cc)
	return nil
}

func (b *Broker) compile(cfg Config) (*compiled, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("broker: invalid config: %w", errs[0])
	}
	cc := &compiled{
		tokens: cfg.Tokens, roles: map[string]Role{}, agents: map[string]*agentEntry{},
		byUID: map[int]*agentEntry{}, byUnit: map[string]*agentEntry{}, tools: map[string]bool{},
	}
	for _, t := range cfg.Tools {
		cc.tools[t] = true
	}
	for _, r := range cfg.Roles {
		cc.roles[r.Name] = r
	}
	for _, a := range cfg.Agents {
		e := &agentEntry{Agent: a}
		e.scopes, e.ttl = cc.scopesAndTTL(a.Roles)
		own := func(uid int) error {
			if o, taken := cc.byUID[uid]; taken && o.Name != a.Name {
				return fmt.Errorf("broker: agents %q and %q are both uid %d on the agent socket: give each its own user", o.Name, a.Name, uid)
			}
			cc.byUID[uid] = e
			return nil
		}
		if a.UnixUID != nil {
			if err := own(*a.UnixUID); err != nil {
				return nil, err
			}
		}
		if a.UnixUser != "" {
			u, err := user.Lookup(a.UnixUser)
			if err != nil {
				b.log.Warn("broker: agent's unix_user not found; it cannot use the agent socket",
					"agent", a.Name, "unix_user", a.UnixUser, "err", err)
			} else if uid, err := strconv.Atoi(u.Uid); err == nil {
				if err := own(uid); err != nil {
					return nil, err
				}
			}
		}
		if a.SystemdUnit != "" {
			cc.byUnit[a.SystemdUnit] = e
		}
		if a.PublicKeyFile != "" {
			pub, err := readEd25519PublicKey(a.PublicKeyFile)
			if err != nil {
				return nil, fmt.Errorf("broker: agent %q: %w", a.Name, err)
			}
			e.pub = pub
		}
		if a.ClientSecretHash != "" {
			h, err := parseArgon2id(a.ClientSecretHash)
			if err != nil {
				return nil, fmt.Errorf("broker: agent %q: %w", a.Name, err)
			}
			e.secret = h
		}
		cc.agents[a.Name] = e
	}
	pols, err := compilePolicies(cfg.Policies)
	if err != nil {
		return nil, err
	}
	cc.policies = pols
	return cc, nil
}

// scopesAndTTL returns the union of roles' scopes and the token lifetime.
func (cc *compiled) scopesAndTTL(roles []string) ([]string, time.Duration) {
	ttl, maxTTL := cc.tokens.ttl(), cc.tokens.maxTTL()
	var scopes []string
	for _, name := range roles {
		r, ok := cc.roles[name]
		if !ok {
			continue
		}
		for _, s := range r.Scopes {
			if !slices.Contains(scopes, s) {
				scopes = append(scopes, s)
			}
		}
		if r.TTL > 0 && r.TTL.D() < ttl {
			ttl = r.TTL.D()
		}
		if r.MaxTTL > 0 && r.MaxTTL.D() < maxTTL {
			maxTTL = r.MaxTTL.D()
		}
	}
	sort.Strings(scopes)
	return scopes, min(ttl, maxTTL)
}

func readEd25519PublicKey(path string) (ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading public key: %w", err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s: want a PEM \"PUBLIC KEY\" block", path)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an Ed25519 key", path)
	}
	return pub, nil
}

// Run does the periodic work until ctx ends: signing-key rotation when
// due, pruning expired state, and saving agents' last-seen times.
func (b *Broker) Run(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	rt := time.NewTicker(DirectoryRecheckEvery)
	defer rt.Stop()
	for {
		select {
		case <-ctx.Done():
			b.flushSeen(context.WithoutCancel(ctx))
			return nil
		case <-t.C:
			b.Tick(ctx)
		case <-rt.C:
			b.RecheckHolders(ctx)
		}
	}
}

// DirectoryRecheckEvery is how often the directory is asked about every
// user who holds a token that may still be live. A user disabled, locked
// or expired in the directory loses every token and session within this
// time, and at once at their next refresh or token exchange.
const DirectoryRecheckEvery = 30 * time.Second

// PeriodicRechecker is an Authenticator that can check a user without
// recording an answer that the user may still sign in (FromLDAP's is one).
type PeriodicRechecker interface {
	RecheckPeriodic(ctx context.Context, acct Account) (denied string, err error)
}

// RecheckHolders asks the directory about every user holding a token that
// may still be live (as the store recorded them, across restarts), and revokes every token and session of one it now
// refuses (a token.revoke event with trigger directory_recheck). A user
// the directory fails to answer about is asked again at the next round;
// two failures in a row end the round, as a directory that cannot answer
// one user cannot answer the next, and waiting out a timeout per user
// would only delay the round after it.
func (b *Broker) RecheckHolders(ctx context.Context) {
	if b.auth == nil {
		return
	}
	now := b.now()
	failures := 0
	b.holders.Range(func(k, v any) bool {
		h := v.(holding)
		user := h.acct.Name
		if now.After(h.until.Add(leeway)) {
			b.holders.CompareAndDelete(k, h)
			return true
		}
		var denied string
		var err error
		switch pr, ok := b.auth.(PeriodicRechecker); {
		case h.acct.ID == "":
			denied = deniedNoAccountID
		case ok:
			denied, err = pr.RecheckPeriodic(ctx, h.acct)
		default:
			_, denied, err = b.auth.Recheck(ctx, h.acct, "", false)
		}
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			failures++
			if failures == 2 {
				b.log.Warn("broker: periodic directory check failed twice in a row; the round ends and the next one tries again", "user", user, "err", err)
				return false
			}
			b.log.Warn("broker: periodic directory check of a user failed; asking again at the next round", "user", user, "err", err)
			return true
		}
		failures = 0
		if denied != "" {
			if err := b.revokeDirectoryDenied(ctx, &request{grant: "directory_recheck"}, h.acct, denied); err != nil {
				b.log.Error("broker: revoking the tokens of a user the directory refuses", "user", user, "err", err)
				return true
			}
			b.holders.CompareAndDelete(k, h)
			if err := b.store.DropHolder(ctx, h.acct); err != nil {
				b.log.Warn("broker: forgetting a user whose tokens were revoked; the next start checks them again", "user", user, "err", err)
			}
		}
		return true
	})
}

// Tick does one round of Run's work.
func (b *Broker) Tick(ctx context.Context) {
	now := b.now()
	if b.keys.due(now) {
		if err := b.rotateKey(ctx); err != nil {
			b.log.Error("broker: signing key rotation failed", "err", err)
		}
	}
	if err := b.store.Prune(ctx, now); err != nil {
		b.log.Error("broker: pruning", "err", err)
	}
	b.revs.prune(now)
	b.flushSeen(ctx)
}

// rotateKey makes a new signing key and records it.
func (b *Broker) rotateKey(ctx context.Context) error {
	old := b.keys.cur.Load().kid
	if err := b.keys.rotate(ctx, b.now()); err != nil {
		return err
	}
	kid := b.keys.cur.Load().kid
	b.log.Info("broker: signing key rotated", "kid", kid)
	return b.record(ctx, &audit.Event{Type: "token.sign_key", Action: "key.rotate", Target: kid,
		Outcome: audit.OutcomeSuccess, Details: map[string]string{"previous_kid": old}})
}

func (b *Broker) flushSeen(ctx context.Context) {
	b.seen.Range(func(k, v any) bool {
		name, at := k.(string), v.(time.Time)
		b.seen.Delete(name)
		// Under the lock until stored: a copy written after it was let go
		// could overwrite an agent disable made meanwhile, and the agent
		// would be enabled again at the next start.
		b.stateMu.Lock()
		defer b.stateMu.Unlock()
		st := b.states[name]
		st.LastSeen = at
		b.states[name] = st
		if err := b.store.PutAgentState(ctx, name, st); err != nil {
			b.log.Warn("broker: saving last seen", "agent", name, "err", err)
		}
		return true
	})
}

func (b *Broker) agentDisabled(name string) bool {
	b.stateMu.RLock()
	st := b.states[name]
	b.stateMu.RUnlock()
	return st.Disabled && (st.DisabledUntil.IsZero() || b.now().Before(st.DisabledUntil))
}

// Issuer returns the iss of the broker's tokens.
func (b *Broker) Issuer() string { return b.issuer }

// ToolAudience is the general aud of agent tokens, issued when a request
// names no resource: such a token is good for introspection and
// revocation, and the tool proxy refuses it (it wants ToolResource).
func (b *Broker) ToolAudience() string { return b.issuer + "/v1/tools" }

// ToolResource is the audience of a token for one tool: the tool's URL
// "<issuer>/v1/tools/<name>". A client asks for it with the resource
// parameter (RFC 8707) or, in a token exchange, audience (RFC 8693); the
// tool proxy verifies a call to the tool against exactly this audience.
func (b *Broker) ToolResource(tool string) string { return b.ToolAudience() + "/" + tool }

// ownAudience reports whether aud is one the broker issues: the general
// agent audience, a tool's (configured or not: a removed tool's token
// still introspects and revokes) or the user audience.
func (b *Broker) ownAudience(aud string) bool {
	if aud == b.ToolAudience() || aud == b.userAudience() {
		return true
	}
	name, ok := strings.CutPrefix(aud, b.ToolAudience()+"/")
	return ok && name != "" && !strings.Contains(name, "/")
}

// userAudience is the aud of a user's own token: usable as a token
// exchange subject_token, not at the tool proxy.
func (b *Broker) userAudience() string { return b.issuer + "/oauth2/token" }

// Authorize evaluates the [[policy]] rules for one use of a scope. The tool
// proxy calls it on every request; issuance calls it per scope.
func (b *Broker) Authorize(r AccessRequest) Decision {
	if r.Time.IsZero() {
		r.Time = b.now()
	}
	return evaluate(b.cfg.Load().policies, r, b.loc)
}

// SecretAgents lists agents that may authenticate with a shared
// client_secret, for doctor to flag.
func (b *Broker) SecretAgents() []string {
	var out []string
	for name, a := range b.cfg.Load().agents {
		if a.secret != nil {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// hashID returns the audit form of a token id.
// HashID is the keyed hash under which the broker's events record a token
// id (jti_hmac), for other components' records to match them.
func (b *Broker) HashID(id string) string { return b.hashID(id) }

func (b *Broker) hashID(id string) string {
	if b.hasher == nil || id == "" {
		return ""
	}
	return b.hasher.Sum(id)
}

// record appends e to the audit journal.
func (b *Broker) record(ctx context.Context, e *audit.Event) error {
	if _, err := b.audit.Append(ctx, e); err != nil {
		b.log.Error("broker: audit append failed", "type", e.Type, "err", err)
		return fmt.Errorf("broker: audit: %w", err)
	}
	return nil
}
