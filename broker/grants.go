package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"mime"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/applianced/applianced/audit"
)

// tokenResponse is the token endpoint's success answer (RFC 6749 §5.1,
// RFC 8693 §2.2.1).
type tokenResponse struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type,omitempty"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope,omitempty"`
	RefreshToken    string `json:"refresh_token,omitempty"`
}

// request carries what one token-endpoint call has established, for the
// audit event.
type request struct {
	grant     string
	client    clientAuth
	user      string
	src       netip.Addr
	srcString string
}

func (q *request) actor() audit.Actor {
	a := audit.Actor{User: q.user}
	if q.client.agent != nil {
		a.Agent = q.client.agent.Name
	}
	if q.client.peer != nil {
		uid := q.client.peer.UID
		a.UID, a.PID = &uid, q.client.peer.PID
	}
	return a
}

// deny audits a refusal and returns the error to answer with. A refusal
// is answered even when it could not be recorded: nothing was granted.
func (b *Broker) deny(ctx context.Context, q *request, typ string, e *oauthError, sev string) *oauthError {
	ev := &audit.Event{Type: typ, Severity: sev, Actor: q.actor(), Action: "token.issue", Target: q.grant,
		Outcome: audit.OutcomeDenied, Reason: e.desc, Source: q.srcString,
		Details: map[string]string{"grant": q.grant, "error": e.code}}
	if q.client.method != "" {
		ev.Details["client_auth"] = q.client.method
	}
	_ = b.record(ctx, ev)
	return e
}

func (b *Broker) handleToken(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	f, oe := decodeForm(r)
	if oe != nil {
		writeOAuthError(w, oe)
		return
	}
	q := &request{grant: f.get("grant_type")}
	q.src, q.srcString = source(r)
	id, secret, hasBasic, oe := basicAuth(r)
	if oe != nil {
		writeOAuthError(w, b.deny(ctx, q, "token.deny", oe, audit.SeverityWarn))
		return
	}
	ca, err := b.authenticateClient(ctx, f, id, secret, hasBasic)
	q.client = ca
	if err != nil {
		var ce *errClient
		if errors.As(err, &ce) {
			writeOAuthError(w, b.deny(ctx, q, "token.deny", oerr(http.StatusUnauthorized, "invalid_client", "%s", ce.msg), audit.SeverityWarn))
			return
		}
		b.log.Error("broker: client authentication", "err", err)
		writeOAuthError(w, errUnavailable)
		return
	}
	var resp *tokenResponse
	switch q.grant {
	case GrantClientCredentials:
		resp, oe = b.grantClientCredentials(ctx, q, f)
	case GrantTokenExchange:
		resp, oe = b.grantTokenExchange(ctx, q, f)
	case GrantRefreshToken:
		resp, oe = b.grantRefresh(ctx, q, f)
	case "":
		oe = b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_request", "grant_type is missing"), "")
	default:
		q.grant = "unsupported"
		oe = b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "unsupported_grant_type",
			"grant_type must be client_credentials, token-exchange or refresh_token"), "")
	}
	if oe != nil {
		writeOAuthError(w, oe)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// requireAgent checks the authenticated client may get tokens.
func (b *Broker) requireAgent(ctx context.Context, q *request) *oauthError {
	if q.client.agent == nil {
		return b.deny(ctx, q, "token.deny", oerr(http.StatusUnauthorized, "invalid_client",
			"client authentication required (agent socket, private_key_jwt or client_secret)"), audit.SeverityWarn)
	}
	if b.agentDisabled(q.client.agent.Name) {
		return b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "unauthorized_client", "agent %q is disabled", q.client.agent.Name), audit.SeverityWarn)
	}
	return nil
}

// pickScopes intersects the requested scopes (all of allowed when none
// are requested) with allowed and the policies. Explicitly requested
// scopes must all be granted; defaults denied by a policy are dropped.
func (b *Broker) pickScopes(ctx context.Context, q *request, f form, allowed []string, groups []string) ([]string, *oauthError) {
	requested := strings.Fields(f.get("scope"))
	if len(requested) > 64 || slices.ContainsFunc(requested, func(s string) bool { return !scopeRE.MatchString(s) }) {
		// Not echoed: the audit record stays small and clean.
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_scope", "malformed scope parameter"), audit.SeverityWarn)
	}
	explicit := len(requested) > 0
	if !explicit {
		requested = allowed
	}
	now := b.now()
	var out []string
	for _, s := range requested {
		if !slices.Contains(allowed, s) {
			return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_scope", "scope %q is not granted to this client", s), audit.SeverityWarn)
		}
		d := b.Authorize(AccessRequest{Agent: q.client.agent.Name, User: q.user, UserGroups: groups, Scope: s, Source: q.src, Time: now})
		if !d.Allowed {
			if explicit {
				return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_scope", "scope %q: %s", s, d.Reason), audit.SeverityWarn)
			}
			continue
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_scope", "no scope is allowed now"), audit.SeverityWarn)
	}
	return out, nil
}

// issue signs c, audits the issuance and returns the answer. It fails
// (503) when the issuance cannot be recorded.
func (b *Broker) issue(ctx context.Context, q *request, typ string, c *claims, refresh string) (*tokenResponse, *oauthError) {
	raw, err := b.sign(c)
	if err != nil {
		b.log.Error("broker: signing", "err", err)
		return nil, oerr(http.StatusInternalServerError, "server_error", "could not sign the token")
	}
	details := map[string]string{"grant": q.grant, "scope": c.Scope, "aud": strings.Join(c.Audience, " "),
		"exp": strconv.FormatInt(int64(*c.Expiry), 10)}
	if h := b.hashID(c.ID); h != "" {
		details["jti_hmac"] = h
	}
	if q.client.method != "" {
		details["client_auth"] = q.client.method
	}
	if refresh != "" {
		details["refresh"] = "issued"
	}
	if c.UserID != "" {
		// The name may be another account's later; the id is not.
		details["account_id"] = c.UserID
	}
	ev := &audit.Event{Type: typ, Actor: q.actor(), Action: "token.issue", Target: q.grant, Outcome: audit.OutcomeSuccess,
		Source: q.srcString, Details: details}
	// The holder is recorded first: a token that a restart would not
	// check against the directory is not handed out.
	if _, user := holderOf(c); user != "" {
		if err := b.noteHolder(ctx, Account{Name: user, ID: c.UserID}, c.Expiry.Time()); err != nil {
			b.log.Error("broker: recording a token holder", "user", user, "err", err)
			return nil, errUnavailable
		}
	}
	if err := b.record(ctx, ev); err != nil {
		return nil, errUnavailable
	}
	if q.client.agent != nil {
		b.seen.Store(q.client.agent.Name, b.now().UTC().Truncate(time.Second))
	}
	resp := &tokenResponse{AccessToken: raw, TokenType: "Bearer", ExpiresIn: int64(*c.Expiry) - int64(*c.IssuedAt),
		Scope: c.Scope, RefreshToken: refresh}
	if q.grant == GrantTokenExchange {
		resp.IssuedTokenType = tokenTypeAccess
	}
	return resp, nil
}

func (b *Broker) newClaims(sub, kind string, aud []string, ttl time.Duration) *claims {
	now := b.now()
	return &claims{
		Issuer: b.issuer, Subject: sub, Audience: aud, Kind: kind, ID: newID(),
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(ttl)),
	}
}

func (b *Broker) grantClientCredentials(ctx context.Context, q *request, f form) (*tokenResponse, *oauthError) {
	if oe := b.requireAgent(ctx, q); oe != nil {
		return nil, oe
	}
	a := q.client.agent
	if f.has("audience") {
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_request",
			"audience is a token-exchange parameter; name the tool with resource"), "")
	}
	aud, oe := b.target(ctx, q, f)
	if oe != nil {
		return nil, oe
	}
	scopes, oe := b.pickScopes(ctx, q, f, a.scopes, nil)
	if oe != nil {
		return nil, oe
	}
	c := b.newClaims(a.Name, KindAgent, []string{aud}, a.ttl)
	c.ClientID, c.Scope = a.Name, strings.Join(scopes, " ")
	return b.issue(ctx, q, "token.issue", c, "")
}

func (b *Broker) grantTokenExchange(ctx context.Context, q *request, f form) (*tokenResponse, *oauthError) {
	if oe := b.requireAgent(ctx, q); oe != nil {
		return nil, oe
	}
	a := q.client.agent
	switch {
	case !f.has("subject_token") || !f.has("subject_token_type"):
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_request", "subject_token and subject_token_type are required"), "")
	case f.get("subject_token_type") != tokenTypeAccess && f.get("subject_token_type") != tokenTypeJWT:
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_request", "subject_token_type must be %s", tokenTypeAccess), "")
	case f.has("actor_token") || f.has("actor_token_type"):
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_request", "the actor is the authenticated agent; actor_token is not accepted"), "")
	case f.has("requested_token_type") && f.get("requested_token_type") != tokenTypeAccess:
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_request", "only access tokens are issued"), "")
	}
	aud, oe := b.target(ctx, q, f)
	if oe != nil {
		return nil, oe
	}
	c, err := b.verifyClaims(f.get("subject_token"), func(aud string) bool { return aud == b.userAudience() })
	var p *Principal
	if err == nil {
		p, err = b.checkState(c)
	}
	if err != nil {
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_grant", "subject_token: %s", reason(err)), audit.SeverityWarn)
	}
	q.user = p.User
	if c.Kind != KindUser || c.Act != nil {
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_grant", "subject_token must be a user's own token"), audit.SeverityWarn)
	}
	groups, userScopes := p.Groups, p.Scopes
	// The account state is read from the directory at every exchange; the
	// groups may come from its cache (group_cache_ttl).
	fresh, oe := b.recheckUser(ctx, q, Account{Name: p.User, ID: p.UserID}, false)
	if oe != nil {
		return nil, oe
	}
	if fresh != nil {
		groups = fresh.Groups
		cur, _ := b.cfg.Load().scopesAndTTL(fresh.Roles)
		userScopes = slices.DeleteFunc(slices.Clone(p.Scopes), func(s string) bool { return !slices.Contains(cur, s) })
	}
	if !intersects(a.ActForGroups, groups) {
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "unauthorized_client",
			"agent %q may not act for this user (no group in act_for_groups)", a.Name), audit.SeverityWarn)
	}
	var both []string
	for _, s := range a.scopes {
		if slices.Contains(userScopes, s) {
			both = append(both, s)
		}
	}
	scopes, oe := b.pickScopes(ctx, q, f, both, groups)
	if oe != nil {
		return nil, oe
	}
	ttl := a.ttl
	left := p.Expiry.Sub(b.now())
	if left < minExchangeTTL {
		// Verify allows a little clock skew past exp; a token made from
		// that would be born expired (a negative expires_in).
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_grant",
			"subject_token expires in %s: too soon to act on it; have the user log in again or refresh", left.Round(time.Second)), audit.SeverityWarn)
	}
	ttl = min(ttl, left)
	nc := b.newClaims(p.User, KindUser, []string{aud}, ttl)
	nc.ClientID, nc.Scope, nc.Act = a.Name, strings.Join(scopes, " "), &actClaim{Sub: a.Name}
	nc.Groups, nc.UserID = groups, p.UserID
	return b.issue(ctx, q, "token.exchange", nc, "")
}

// minExchangeTTL is the least time a subject_token must have left for a
// token exchange: the token made from it lives no longer.
const minExchangeTTL = 10 * time.Second

// toolNameRE is the shape of a [[tool]] name, to tell a bare name from a
// URL and to echo only a well-formed name in an error.
var toolNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// target returns the aud of the token to issue from the request's
// resource (RFC 8707) or, in a token exchange, audience (RFC 8693): none
// gives the general ToolAudience; one naming a tool, by its URL
// ToolResource(name) or by its bare name, gives ToolResource(name). More
// than one target, a target that is not a tool of this appliance, or
// resource and audience naming different tools are refused with
// invalid_target: a token is for one tool.
func (b *Broker) target(ctx context.Context, q *request, f form) (string, *oauthError) {
	res, auds := f.all("resource"), f.all("audience")
	if len(res) > 1 || len(auds) > 1 {
		return "", b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_target",
			"one resource per token: ask for a token per tool"), audit.SeverityWarn)
	}
	aud := b.ToolAudience()
	for i, v := range append(slices.Clone(res), auds...) {
		a, oe := b.resolveTarget(v)
		if oe != nil {
			return "", b.deny(ctx, q, "token.deny", oe, audit.SeverityWarn)
		}
		if i > 0 && a != aud {
			return "", b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_target",
				"resource and audience name different targets"), audit.SeverityWarn)
		}
		aud = a
	}
	return aud, nil
}

// resolveTarget maps one resource or audience value to an audience.
func (b *Broker) resolveTarget(v string) (string, *oauthError) {
	if v == b.ToolAudience() {
		return v, nil
	}
	name, isURL := strings.CutPrefix(v, b.ToolAudience()+"/")
	if !isURL {
		name = v
	}
	if !toolNameRE.MatchString(name) {
		return "", oerr(http.StatusBadRequest, "invalid_target", "resource must be %s/TOOL or a tool's name", b.ToolAudience())
	}
	if !b.cfg.Load().tools[name] {
		return "", oerr(http.StatusBadRequest, "invalid_target", "no tool named %q", name)
	}
	return b.ToolResource(name), nil
}

// reason returns the specific cause inside a verification error.
func reason(err error) string {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		if errs := u.Unwrap(); len(errs) == 2 {
			return errs[1].Error()
		}
	}
	return "invalid"
}

func hashRefresh(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func (b *Broker) grantRefresh(ctx context.Context, q *request, f form) (*tokenResponse, *oauthError) {
	if f.has("resource") || f.has("audience") {
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_target",
			"a user session's tokens are for token exchange, not for tools: exchange them with resource"), "")
	}
	tok := f.get("refresh_token")
	if tok == "" || len(tok) > 256 {
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_request", "refresh_token is missing"), "")
	}
	// The directory is asked before the token is used up, so that a
	// directory that cannot answer costs the user nothing.
	next := newID() + newID()
	rec := RefreshToken{Hash: hashRefresh(next)}
	// A token that is unknown, used (reuse revokes its family), revoked or
	// expired is refused by RotateRefresh below without asking.
	if cur, err := b.store.GetRefresh(ctx, hashRefresh(tok), b.now()); err == nil && !cur.Used {
		q.user = cur.User
		rec.User, rec.UserID, rec.Groups, rec.Scopes = cur.User, cur.UserID, cur.Groups, cur.Scopes
		id, oe := b.recheckUser(ctx, q, Account{Name: cur.User, ID: cur.UserID}, true)
		if oe != nil {
			return nil, oe
		}
		if id != nil {
			rec.Groups = id.Groups
			rec.Scopes, _ = b.cfg.Load().scopesAndTTL(id.Roles)
		}
	} else if err != nil && !errors.Is(err, ErrRefreshUnknown) && !errors.Is(err, ErrRefreshRevoked) && !errors.Is(err, ErrRefreshExpired) {
		b.log.Error("broker: refresh", "err", err)
		return nil, errUnavailable
	}
	now := b.now()
	rec.Issued = now.UTC()
	old, err := b.store.RotateRefresh(ctx, hashRefresh(tok), now, rec)
	q.user = old.User
	switch {
	case errors.Is(err, ErrRefreshReused):
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_grant",
			"refresh token already used; the session is revoked"), audit.SeverityHigh)
	case errors.Is(err, ErrRefreshUnknown), errors.Is(err, ErrRefreshRevoked), errors.Is(err, ErrRefreshExpired):
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_grant", "refresh token is not valid"), audit.SeverityWarn)
	case err != nil:
		b.log.Error("broker: refresh", "err", err)
		return nil, errUnavailable
	}
	if err := b.revs.check(&Principal{User: old.User, UserID: old.UserID, IssuedAt: old.Issued}); err != nil {
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusBadRequest, "invalid_grant", "the user's tokens are revoked"), audit.SeverityWarn)
	}
	groups, scopes := old.Groups, old.Scopes
	if old.User == rec.User && old.UserID == rec.UserID {
		// Group and role changes in the directory take effect here.
		groups, scopes = rec.Groups, rec.Scopes
	}
	resp, oe := b.userToken(ctx, q, "token.refresh", Account{Name: old.User, ID: old.UserID}, groups, scopes, next)
	if oe != nil {
		// The new refresh token never reached the client (the issuance
		// could not be recorded or signed): the old one stays good, so
		// that the client's retry is not taken for the reuse of a stolen
		// token, which would end the session and raise an alert.
		if err := b.store.UndoRotate(ctx, hashRefresh(tok), rec.Hash); err != nil {
			b.log.Error("broker: refresh", "err", err)
		}
	}
	return resp, oe
}

// recheckUser asks the directory whether the account may still sign in,
// at refresh (freshGroups) and token exchange. An account it refuses, and
// a session without an account id, lose every session and token at once
// (revokeDirectoryDenied) and the grant is invalid_grant; a directory that
// cannot answer refuses the grant with temporarily_unavailable and revokes
// nothing. Without a directory (no Authenticator) there is nothing to ask
// and it returns nil, nil.
func (b *Broker) recheckUser(ctx context.Context, q *request, acct Account, freshGroups bool) (*Identity, *oauthError) {
	if b.auth == nil {
		return nil, nil
	}
	user := acct.Name
	var (
		id     Identity
		denied = deniedNoAccountID
		err    error
	)
	if acct.ID != "" {
		id, denied, err = b.auth.Recheck(ctx, acct, q.srcString, freshGroups)
	}
	if err != nil {
		b.log.Warn("broker: directory recheck failed", "user", user, "err", err)
		return nil, b.deny(ctx, q, "token.deny", oerr(http.StatusServiceUnavailable, "temporarily_unavailable",
			"the directory cannot be reached to check the user; try again"), audit.SeverityWarn)
	}
	if denied != "" {
		if err := b.revokeDirectoryDenied(ctx, q, acct, denied); err != nil {
			b.log.Error("broker: revoking a user the directory refuses", "user", user, "err", err)
			return nil, errUnavailable
		}
		// The reason is in the audit trail; the caller gets the generic answer.
		why := "directory: " + denied
		if denied == deniedNoAccountID {
			why = denied
		}
		ev := oerr(http.StatusBadRequest, "invalid_grant", "the user may no longer sign in")
		details := map[string]string{"grant": q.grant, "error": ev.code}
		if acct.ID != "" {
			details["account_id"] = acct.ID
		}
		_ = b.record(ctx, &audit.Event{Type: "token.deny", Severity: audit.SeverityHigh, Actor: q.actor(), Action: "token.issue",
			Target: q.grant, Outcome: audit.OutcomeDenied, Reason: why, Source: q.srcString, Details: details})
		return nil, ev
	}
	return &id, nil
}

// userToken issues a user's own access token, with refresh as its refresh token.
func (b *Broker) userToken(ctx context.Context, q *request, typ string, acct Account, groups, scopes []string, refresh string) (*tokenResponse, *oauthError) {
	cc := b.cfg.Load()
	c := b.newClaims(acct.Name, KindUser, []string{b.userAudience()}, min(cc.tokens.ttl(), cc.tokens.maxTTL()))
	c.ClientID, c.Scope, c.Groups, c.UserID = "login", strings.Join(scopes, " "), groups, acct.ID
	return b.issue(ctx, q, typ, c, refresh)
}

// loginRequest is the JSON form of a /v1/login body.
type loginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

func (b *Broker) handleLogin(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := &request{grant: "password"}
	q.src, q.srcString = source(r)
	var in loginRequest
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "application/json" && r.Method == http.MethodPost && r.URL.RawQuery == "" {
		body, oe := readBody(r)
		if oe != nil {
			writeOAuthError(w, oe)
			return
		}
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil || dec.More() {
			why := "trailing data"
			if err != nil {
				why = strings.TrimPrefix(err.Error(), "json: ")
			}
			writeOAuthError(w, oerr(http.StatusBadRequest, "invalid_request",
				`malformed JSON body (%s): /v1/login takes {"username": ..., "password": ...}; a token for a tool is an agent's, got by token exchange`, why))
			return
		}
	} else {
		f, oe := decodeForm(r)
		if oe != nil {
			writeOAuthError(w, oe)
			return
		}
		if f.has("resource") || f.has("audience") {
			writeOAuthError(w, oerr(http.StatusBadRequest, "invalid_request",
				"/v1/login issues the user's own token and takes no resource or audience: a token for a tool is an agent's, which it gets by exchanging the user's token (grant token-exchange, audience=TOOL)"))
			return
		}
		in.Username, in.Password = f.get("username"), f.get("password")
	}
	switch {
	case in.Username == "" || in.Password == "":
		writeOAuthError(w, oerr(http.StatusBadRequest, "invalid_request", "username and password are required"))
		return
	case len(in.Username) > 256:
		writeOAuthError(w, oerr(http.StatusBadRequest, "invalid_request", "username too long (at most 256 bytes)"))
		return
	case len(in.Password) > 1024:
		writeOAuthError(w, oerr(http.StatusBadRequest, "invalid_request", "password too long (at most 1024 bytes)"))
		return
	}
	q.user = in.Username
	if b.auth == nil {
		writeOAuthError(w, oerr(http.StatusServiceUnavailable, "temporarily_unavailable", "login is not configured"))
		return
	}
	// The Authenticator records the attempt and its outcome (auth.login).
	id, ok, err := b.auth.Login(ctx, in.Username, in.Password, q.srcString)
	if te := (*ThrottledError)(nil); errors.As(err, &te) {
		secs := max(int64(math.Ceil(te.RetryAfter.Seconds())), 1)
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		writeOAuthError(w, oerr(http.StatusTooManyRequests, "too_many_attempts",
			"too many failed sign-ins for this account or from this address; try again in %d s", secs))
		return
	}
	if err != nil {
		b.log.Warn("broker: directory login failed", "err", err)
		writeOAuthError(w, oerr(http.StatusServiceUnavailable, "temporarily_unavailable", "the directory cannot be reached; try again"))
		return
	}
	if !ok {
		writeOAuthError(w, oerr(http.StatusBadRequest, "invalid_grant", "invalid username or password"))
		return
	}
	if id.ID == "" {
		// Without the account's id, its sessions could not be told from
		// those of a later account given the same name.
		b.log.Error("broker: the directory gave no account id for a user; login refused", "user", id.Username)
		writeOAuthError(w, oerr(http.StatusInternalServerError, "server_error", "the directory gave no id for the account"))
		return
	}
	q.user = id.Username
	cc := b.cfg.Load()
	scopes, _ := cc.scopesAndTTL(id.Roles)
	refresh := newID() + newID()
	now := b.now()
	rt := RefreshToken{Hash: hashRefresh(refresh), Family: newID(), User: id.Username, UserID: id.ID, Groups: id.Groups, Scopes: scopes,
		Issued: now.UTC(), Expires: now.Add(cc.tokens.refreshTTL()).UTC()}
	if err := b.store.PutRefresh(ctx, rt); err != nil {
		b.log.Error("broker: storing refresh token", "err", err)
		writeOAuthError(w, errUnavailable)
		return
	}
	resp, oe := b.userToken(ctx, q, "token.issue", Account{Name: id.Username, ID: id.ID}, id.Groups, scopes, refresh)
	if oe != nil {
		_, _ = b.store.RevokeRefresh(ctx, rt.Hash)
		writeOAuthError(w, oe)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// authenticatedCaller runs client authentication for introspection and
// revocation, which answer their own errors.
func (b *Broker) authenticatedCaller(w http.ResponseWriter, r *http.Request) (form, clientAuth, bool) {
	f, oe := decodeForm(r)
	if oe != nil {
		writeOAuthError(w, oe)
		return nil, clientAuth{}, false
	}
	id, secret, hasBasic, oe := basicAuth(r)
	if oe != nil {
		writeOAuthError(w, oe)
		return nil, clientAuth{}, false
	}
	ca, err := b.authenticateClient(r.Context(), f, id, secret, hasBasic)
	if err != nil {
		var ce *errClient
		if errors.As(err, &ce) {
			writeOAuthError(w, oerr(http.StatusUnauthorized, "invalid_client", "%s", ce.msg))
		} else {
			writeOAuthError(w, errUnavailable)
		}
		return nil, clientAuth{}, false
	}
	return f, ca, true
}

// introspection is the RFC 7662 answer.
type introspection struct {
	Active    bool      `json:"active"`
	Scope     string    `json:"scope,omitempty"`
	ClientID  string    `json:"client_id,omitempty"`
	Username  string    `json:"username,omitempty"`
	TokenType string    `json:"token_type,omitempty"`
	Exp       int64     `json:"exp,omitempty"`
	Iat       int64     `json:"iat,omitempty"`
	Nbf       int64     `json:"nbf,omitempty"`
	Sub       string    `json:"sub,omitempty"`
	Aud       []string  `json:"aud,omitempty"`
	Iss       string    `json:"iss,omitempty"`
	Jti       string    `json:"jti,omitempty"`
	Act       *actClaim `json:"act,omitempty"`
	Groups    []string  `json:"groups,omitempty"`
	// OID is the user's account id in the directory (the token's oid):
	// unlike username and sub, it is never another person's later.
	OID string `json:"oid,omitempty"`
}

func (b *Broker) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	f, ca, ok := b.authenticatedCaller(w, r)
	if !ok {
		return
	}
	if ca.agent == nil {
		writeOAuthError(w, oerr(http.StatusUnauthorized, "invalid_client", "introspection callers must authenticate"))
		return
	}
	if b.agentDisabled(ca.agent.Name) {
		writeOAuthError(w, oerr(http.StatusUnauthorized, "invalid_client", "agent %q is disabled", ca.agent.Name))
		return
	}
	if !f.has("token") {
		writeOAuthError(w, oerr(http.StatusBadRequest, "invalid_request", "token is missing"))
		return
	}
	c, err := b.verifyClaims(f.get("token"), b.ownAudience)
	var p *Principal
	if err == nil {
		p, err = b.checkState(c)
	}
	if err != nil {
		writeJSON(w, http.StatusOK, introspection{Active: false})
		return
	}
	out := introspection{Active: true, Scope: c.Scope, ClientID: c.ClientID, TokenType: "Bearer",
		Exp: int64(*c.Expiry), Iat: int64(*c.IssuedAt), Sub: c.Subject, Aud: c.Audience, Iss: c.Issuer, Jti: c.ID,
		Act: c.Act, Groups: c.Groups, Username: p.User, OID: p.UserID}
	if c.NotBefore != nil {
		out.Nbf = int64(*c.NotBefore)
	}
	writeJSON(w, http.StatusOK, out)
}

func (b *Broker) handleRevoke(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	f, ca, ok := b.authenticatedCaller(w, r)
	if !ok {
		return
	}
	tok := f.get("token")
	if tok == "" {
		writeOAuthError(w, oerr(http.StatusBadRequest, "invalid_request", "token is missing"))
		return
	}
	q := &request{grant: "revoke", client: ca}
	q.src, q.srcString = source(r)
	ev := &audit.Event{Type: "token.revoke", Actor: q.actor(), Action: "token.revoke", Outcome: audit.OutcomeSuccess, Source: q.srcString}
	if strings.Count(tok, ".") == 2 {
		c, err := b.verifyClaims(tok, b.ownAudience)
		if err != nil {
			// RFC 7009 §2.2: an invalid token is not an error.
			writeJSON(w, http.StatusOK, struct{}{})
			return
		}
		caller := ""
		if ca.agent != nil {
			caller = ca.agent.Name
		}
		owner := c.ClientID
		ownToken := (caller != "" && (owner == caller || (c.Act != nil && c.Act.Sub == caller))) ||
			(caller == "" && c.Kind == KindUser && c.Act == nil) // a user's own token: whoever holds it may end it
		if !ownToken {
			writeOAuthError(w, oerr(http.StatusBadRequest, "unauthorized_client", "the token was not issued to this client"))
			return
		}
		ev.Target, ev.Actor.User = RevokeJTI, ""
		if c.Kind == KindUser {
			ev.Actor.User = c.Subject
		}
		ev.Details = map[string]string{"jti_hmac": b.hashID(c.ID)}
		x := Revocation{Kind: RevokeJTI, Value: c.ID, At: b.now(), Until: c.Expiry.Time().Add(leeway)}
		// Recorded first: a revocation the journal cannot take is not made.
		if err := b.record(ctx, ev); err != nil {
			writeOAuthError(w, errUnavailable)
			return
		}
		if err := b.revoke(ctx, x); err != nil {
			b.log.Error("broker: revoking", "err", err)
			b.recordRevokeFailed(ctx, ev, err)
			writeOAuthError(w, errUnavailable)
			return
		}
	} else {
		hash := hashRefresh(tok)
		rt, err := b.store.GetRefresh(ctx, hash, b.now())
		if errors.Is(err, ErrRefreshUnknown) || errors.Is(err, ErrRefreshRevoked) || errors.Is(err, ErrRefreshExpired) {
			writeJSON(w, http.StatusOK, struct{}{}) // RFC 7009 §2.2; nothing left to revoke
			return
		}
		if err != nil {
			b.log.Error("broker: revoking", "err", err)
			writeOAuthError(w, errUnavailable)
			return
		}
		ev.Target, ev.Actor.User = "refresh_token", rt.User
		if err := b.record(ctx, ev); err != nil {
			writeOAuthError(w, errUnavailable)
			return
		}
		if _, err := b.store.RevokeRefresh(ctx, hash); err != nil && !errors.Is(err, ErrRefreshUnknown) {
			b.log.Error("broker: revoking", "err", err)
			b.recordRevokeFailed(ctx, ev, err)
			writeOAuthError(w, errUnavailable)
			return
		}
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// recordRevokeFailed records that a revocation recorded as made could not
// be made after all.
func (b *Broker) recordRevokeFailed(ctx context.Context, ev *audit.Event, err error) {
	failed := *ev
	failed.Outcome, failed.Reason = audit.OutcomeFailure, "recorded above but not made: "+err.Error()
	_ = b.record(ctx, &failed)
}

// noteHolder remembers that acct holds a token until exp, for
// RecheckHolders, in memory and, when its stored record does not reach
// exp, in the store (with holderSaveSlack to spare).
func (b *Broker) noteHolder(ctx context.Context, acct Account, exp time.Time) error {
	h := b.holdInMemory(acct, exp, time.Time{})
	if !exp.After(h.saved) {
		return nil
	}
	save := exp.Add(holderSaveSlack)
	if err := b.store.PutHolder(ctx, acct, save); err != nil {
		return err
	}
	k := holderKey(acct)
	for {
		v, ok := b.holders.Load(k)
		if !ok {
			return nil
		}
		cur := v.(holding)
		if !save.After(cur.saved) {
			return nil
		}
		next := cur
		next.saved = save
		if b.holders.CompareAndSwap(k, v, next) {
			return nil
		}
	}
}

// holdInMemory records acct in Broker.holders with until exp (never
// shortening it) and saved (never lowering it), and returns the entry.
func (b *Broker) holdInMemory(acct Account, exp, saved time.Time) holding {
	k := holderKey(acct)
	for {
		v, loaded := b.holders.LoadOrStore(k, holding{acct: acct, until: exp, saved: saved})
		if !loaded {
			return holding{acct: acct, until: exp, saved: saved}
		}
		cur := v.(holding)
		next := cur
		next.until, next.saved = later(cur.until, exp), later(cur.saved, saved)
		if next == cur || b.holders.CompareAndSwap(k, v, next) {
			return next
		}
	}
}
