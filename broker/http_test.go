package broker

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/applianced/applianced/audit"
)

func TestClientCredentialsOnSocket(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	ctx := context.Background()
	a := e.agentToken("tickets:read tickets:create")
	if a.status != 200 {
		t.Fatalf("got %d %v", a.status, a.body)
	}
	if got, want := a.str("scope"), "tickets:read tickets:create"; got != want {
		t.Fatalf("scope: got %q, want %q", got, want)
	}
	if a.str("token_type") != "Bearer" || a.body["expires_in"] != float64(300) {
		t.Fatalf("token_type/expires_in: got %v", a.body)
	}
	p, err := e.b.Verify(ctx, a.str("access_token"), e.b.ToolAudience())
	if err != nil {
		t.Fatal(err)
	}
	if p.Agent != "bot" || p.ClientID != "bot" || p.User != "" || !p.HasScope("tickets:create") || p.HasScope("tickets:delete") {
		t.Fatalf("principal: got %+v", p)
	}
	// The audit event came before the answer, carries the jti's HMAC, not the token.
	ev, ok := e.lastEvent("token.issue")
	if !ok {
		t.Fatal("no token.issue event in the journal")
	}
	if ev.Actor.Agent != "bot" || ev.Outcome != audit.OutcomeSuccess || ev.Details["client_auth"] != AuthPeerCred ||
		ev.Details["jti_hmac"] != e.hasher.Sum(p.JTI) || ev.Source != "unix" || ev.Actor.UID == nil {
		t.Fatalf("event: got %+v", ev)
	}
	for _, x := range e.events() {
		b, _ := x.Canonical()
		if strings.Contains(string(b), a.str("access_token")) || strings.Contains(string(b), p.JTI) {
			t.Fatalf("a token or raw jti is in the journal: %s", b)
		}
	}
}

// TestScopesBeyondRole: asking for a scope the roles do not grant is
// invalid_scope, and audited as a denial.
func TestScopesBeyondRole(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	wantOAuthError(t, e.agentToken(strings.Repeat("x", 300)), 400, "invalid_scope")
	if ev, _ := e.lastEvent("token.deny"); strings.Contains(ev.Reason, "xxx") {
		t.Fatalf("a malformed scope is echoed into the audit record: %q", ev.Reason)
	}
	wantOAuthError(t, e.agentToken("tickets:read admin:all"), 400, "invalid_scope")
	ev, ok := e.lastEvent("token.deny")
	if !ok || ev.Actor.Agent != "bot" || ev.Details["error"] != "invalid_scope" {
		t.Fatalf("denial not audited: %+v", ev)
	}
}

// TestPolicyWindow: the office-hours policy allows deletes on a weekday at
// 10:00 and refuses them on Saturday and at night; Authorize agrees.
func TestPolicyWindow(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	cases := []struct {
		name   string
		at     time.Time
		allow  bool
		scopes string // default scopes granted
	}{
		{"Wednesday 10:00", time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), true, "tickets:create tickets:delete tickets:read"},
		{"Wednesday 18:00", time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), false, "tickets:create tickets:read"},
		{"Saturday 10:00", time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC), false, "tickets:create tickets:read"},
		{"Monday 07:59", time.Date(2026, 11, 30, 7, 59, 0, 0, time.UTC), false, "tickets:create tickets:read"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.clock.Set(tc.at)
			a := e.agentToken("tickets:delete")
			if tc.allow && a.status != 200 {
				t.Fatalf("got %d %v, want a token", a.status, a.body)
			}
			if !tc.allow {
				wantOAuthError(t, a, 400, "invalid_scope")
			}
			d := e.b.Authorize(AccessRequest{Agent: "bot", Scope: "tickets:delete", Time: tc.at})
			if d.Allowed != tc.allow {
				t.Fatalf("Authorize: got %+v, want allowed %v", d, tc.allow)
			}
			if def := e.agentToken(""); def.str("scope") != tc.scopes {
				t.Fatalf("default scopes: got %q, want %q", def.str("scope"), tc.scopes)
			}
		})
	}
}

// TestAnotherUIDOnSocket and the peer helper live in peer_test.go.

func TestPrivateKeyJWT(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	now := time.Now()
	cc := func(assertion string) url.Values {
		return url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {assertionType}, "client_assertion": {assertion}}
	}
	good := e.assertion(e.b.tokenEndpoint(), now.Add(time.Minute), newID())
	a := e.httpsPost("/oauth2/token", cc(good))
	if a.status != 200 || a.str("scope") != "tickets:read" {
		t.Fatalf("good assertion: got %d %v", a.status, a.body)
	}
	if ev, _ := e.lastEvent("token.issue"); ev.Details["client_auth"] != AuthPrivateKeyJWT || ev.Source != "127.0.0.1" {
		t.Fatalf("event: got %+v", ev)
	}
	_, otherKey, _ := ed25519GenerateKey()
	cases := []struct {
		name string
		form url.Values
	}{
		{"replayed assertion", cc(good)},
		{"assertion with the wrong aud", cc(e.assertion("https://other.test/token", now.Add(time.Minute), newID()))},
		{"assertion expiring too far ahead", cc(e.assertion(e.b.tokenEndpoint(), now.Add(time.Hour), newID()))},
		{"expired assertion", cc(e.assertion(e.b.tokenEndpoint(), now.Add(-time.Hour), newID()))},
		{"assertion signed by another key", cc(signAssertion(t, otherKey, "remote", e.b.tokenEndpoint(), now.Add(time.Minute), newID(), now))},
		{"assertion for an agent without a key", cc(signAssertion(t, otherKey, "bot", e.b.tokenEndpoint(), now.Add(time.Minute), newID(), now))},
		{"wrong assertion type", url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {"urn:x"}, "client_assertion": {good}}},
		{"no client authentication over HTTPS", url.Values{"grant_type": {"client_credentials"}}},
		{"two methods", func() url.Values {
			f := cc(e.assertion(e.b.tokenEndpoint(), now.Add(time.Minute), newID()))
			f.Set("client_secret", "x")
			return f
		}()},
		{"wrong client secret", url.Values{"grant_type": {"client_credentials"}, "client_id": {"legacy"}, "client_secret": {"wrong"}}},
		{"client_id mismatch", func() url.Values {
			f := cc(e.assertion(e.b.tokenEndpoint(), now.Add(time.Minute), newID()))
			f.Set("client_id", "bot")
			return f
		}()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantOAuthError(t, e.httpsPost("/oauth2/token", tc.form), 401, "invalid_client")
		})
	}
}

func TestClientSecretFlagged(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	a := e.httpsPost("/oauth2/token", url.Values{"grant_type": {"client_credentials"}, "client_id": {"legacy"}, "client_secret": {"s3cret-for-tests"}})
	if a.status != 200 {
		t.Fatalf("client_secret_post: got %d %v", a.status, a.body)
	}
	req, _ := http.NewRequest(http.MethodPost, e.https.URL+"/oauth2/token", strings.NewReader("grant_type=client_credentials"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("legacy", "s3cret-for-tests")
	if a := e.do(e.https.Client(), req); a.status != 200 {
		t.Fatalf("client_secret_basic: got %d %v", a.status, a.body)
	}
	if got := e.b.SecretAgents(); !slices.Equal(got, []string{"legacy"}) {
		t.Fatalf("SecretAgents: got %v, want [legacy]", got)
	}
}

// TestLoginExchangeIntrospect: a user logs in, the agent exchanges the
// user's token, introspection shows act.
func TestLoginExchangeIntrospect(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	e.serveSocket()
	ctx := context.Background()
	lg := e.login("alice", "alice-pw")
	if lg.status != 200 || lg.str("refresh_token") == "" {
		t.Fatalf("login: got %d %v", lg.status, lg.body)
	}
	userTok := lg.str("access_token")
	if _, err := e.b.Verify(ctx, userTok, e.b.ToolAudience()); !errors.Is(err, ErrAudience) {
		t.Fatalf("a user token must not work at the tool proxy: %v", err)
	}
	ex := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {userTok},
		"subject_token_type": {tokenTypeAccess}})
	if ex.status != 200 {
		t.Fatalf("exchange: got %d %v", ex.status, ex.body)
	}
	// bot has support (read, create, delete); alice has chat-user (read, create, wiki:read).
	if got := ex.str("scope"); got != "tickets:create tickets:read" && got != "tickets:read tickets:create" {
		t.Fatalf("exchanged scopes: got %q, want the intersection tickets:read tickets:create", got)
	}
	p, err := e.b.Verify(ctx, ex.str("access_token"), e.b.ToolAudience())
	if err != nil {
		t.Fatal(err)
	}
	if p.User != "alice" || p.Agent != "bot" || p.Subject != "alice" {
		t.Fatalf("principal: got %+v", p)
	}
	in := e.socketPost("/oauth2/introspect", url.Values{"token": {ex.str("access_token")}})
	act, _ := in.body["act"].(map[string]any)
	if in.status != 200 || in.body["active"] != true || in.str("sub") != "alice" || act["sub"] != "bot" {
		t.Fatalf("introspection: got %d %v", in.status, in.body)
	}
	if ev, ok := e.lastEvent("token.exchange"); !ok || ev.Actor.Agent != "bot" || ev.Actor.User != "alice" {
		t.Fatalf("exchange event: got %+v", ev)
	}
	var loginEv audit.Event
	for _, x := range e.events() {
		if x.Type == "token.issue" && x.Details["grant"] == "password" {
			loginEv = x
		}
	}
	if loginEv.Actor.User != "alice" || loginEv.Outcome != audit.OutcomeSuccess || loginEv.Details["refresh"] != "issued" {
		t.Fatalf("login token event: got %+v", loginEv)
	}
	// Introspection needs an authenticated caller.
	wantOAuthError(t, e.httpsPost("/oauth2/introspect", url.Values{"token": {userTok}}), 401, "invalid_client")
}

func TestLoginDenied(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	for _, tc := range []struct{ name, user, pw string }{
		{"wrong password", "alice", "nope"},
		{"unknown user", "mallory", "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := e.login(tc.user, tc.pw)
			wantOAuthError(t, a, 400, "invalid_grant")
			if a.str("error_description") != "invalid username or password" {
				t.Fatalf("the denial must not tell which part was wrong: %q", a.str("error_description"))
			}
			for _, ev := range e.events() {
				if ev.Type == "token.issue" && ev.Actor.User == tc.user {
					t.Fatalf("a token was recorded for a denied login: %+v", ev)
				}
				b, _ := ev.Canonical()
				if strings.Contains(string(b), tc.pw) {
					t.Fatalf("password in the audit trail: %s", b)
				}
			}
		})
	}
}

// TestExchangeNotAllowedForGroups: bob is not in helpdesk, so bot may not
// act for him.
func TestExchangeNotAllowedForGroups(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	e.serveSocket()
	lg := e.login("bob", "bob-pw")
	if lg.status != 200 {
		t.Fatalf("login: %d %v", lg.status, lg.body)
	}
	ex := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {lg.str("access_token")},
		"subject_token_type": {tokenTypeAccess}})
	wantOAuthError(t, ex, 400, "unauthorized_client")
	// An agent token is no subject token, and an exchanged one is not either.
	ag := e.agentToken("")
	ex = e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {ag.str("access_token")},
		"subject_token_type": {tokenTypeAccess}})
	wantOAuthError(t, ex, 400, "invalid_grant")
}

// TestRefreshReuseRevokesFamily: a refresh token used twice revokes the
// whole session, including the token that replaced it.
func TestRefreshReuseRevokesFamily(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	lg := e.login("alice", "alice-pw")
	r1 := lg.str("refresh_token")
	refresh := func(tok string) answer {
		return e.httpsPost("/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok}})
	}
	a := refresh(r1)
	if a.status != 200 || a.str("refresh_token") == "" || a.str("refresh_token") == r1 {
		t.Fatalf("first refresh: got %d %v", a.status, a.body)
	}
	r2 := a.str("refresh_token")
	wantOAuthError(t, refresh(r1), 400, "invalid_grant") // reuse: the family is revoked
	wantOAuthError(t, refresh(r2), 400, "invalid_grant") // so the newer token is dead too
	ev, ok := e.lastEvent("token.deny")
	if !ok {
		t.Fatal("no denial event")
	}
	var sawHigh bool
	for _, x := range e.events() {
		if x.Type == "token.deny" && x.Severity == audit.SeverityHigh && x.Actor.User == "alice" {
			sawHigh = true
		}
	}
	if !sawHigh {
		t.Fatalf("reuse not audited as high severity; last denial %+v", ev)
	}
}

func TestRevokeEndpoint(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	e.serveSocket()
	ctx := context.Background()
	ag := e.agentToken("")
	raw := ag.str("access_token")
	// Another agent may not revoke bot's token.
	other := e.httpsPost("/oauth2/revoke", url.Values{"token": {raw}, "client_id": {"legacy"}, "client_secret": {"s3cret-for-tests"}})
	wantOAuthError(t, other, 400, "unauthorized_client")
	if a := e.socketPost("/oauth2/revoke", url.Values{"token": {raw}}); a.status != 200 {
		t.Fatalf("revoke: got %d %v", a.status, a.body)
	}
	if _, err := e.b.Verify(ctx, raw, e.b.ToolAudience()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after revoke: got %v, want ErrRevoked", err)
	}
	// A logout revokes the refresh token's session.
	lg := e.login("alice", "alice-pw")
	if a := e.httpsPost("/oauth2/revoke", url.Values{"token": {lg.str("refresh_token")}}); a.status != 200 {
		t.Fatalf("revoke refresh: got %d %v", a.status, a.body)
	}
	wantOAuthError(t, e.httpsPost("/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {lg.str("refresh_token")}}), 400, "invalid_grant")
	// Unknown tokens are not an error (RFC 7009 §2.2).
	if a := e.httpsPost("/oauth2/revoke", url.Values{"token": {"whatever"}}); a.status != 200 {
		t.Fatalf("unknown token: got %d %v", a.status, a.body)
	}
}

// TestBadInput: malformed requests get RFC 6749 errors, never a 500.
func TestBadInput(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	raw := func(method, path, ctype, body string) answer {
		req, _ := http.NewRequest(method, "http://agent"+path, strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		return e.do(e.sockHC, req)
	}
	form := "application/x-www-form-urlencoded"
	cases := []struct {
		name, method, path, ctype, body string
		status                          int
		code                            string
	}{
		{"unknown grant", "POST", "/oauth2/token", form, "grant_type=password", 400, "unsupported_grant_type"},
		{"missing grant", "POST", "/oauth2/token", form, "scope=x", 400, "invalid_request"},
		{"duplicated grant", "POST", "/oauth2/token", form, "grant_type=client_credentials&grant_type=client_credentials", 400, "invalid_request"},
		{"duplicated scope", "POST", "/oauth2/token", form, "grant_type=client_credentials&scope=a&scope=b", 400, "invalid_request"},
		{"wrong content type", "POST", "/oauth2/token", "application/json", `{"grant_type":"client_credentials"}`, 415, "invalid_request"},
		{"no content type", "POST", "/oauth2/token", "", "grant_type=client_credentials", 415, "invalid_request"},
		{"oversized body", "POST", "/oauth2/token", form, "grant_type=client_credentials&scope=" + strings.Repeat("a", maxFormBytes), 413, "invalid_request"},
		{"GET", "GET", "/oauth2/token", "", "", 405, "invalid_request"},
		{"params in the URL", "POST", "/oauth2/token?grant_type=client_credentials", form, "", 400, "invalid_request"},
		{"bad escape", "POST", "/oauth2/token", form, "grant_type=%zz", 400, "invalid_request"},
		{"semicolon", "POST", "/oauth2/token", form, "grant_type=client_credentials;scope=x", 400, "invalid_request"},
		{"malformed subject token", "POST", "/oauth2/token", form, "grant_type=" + url.QueryEscape(GrantTokenExchange) +
			"&subject_token=not.a.jwt&subject_token_type=" + url.QueryEscape(tokenTypeAccess), 400, "invalid_grant"},
		{"exchange without subject", "POST", "/oauth2/token", form, "grant_type=" + url.QueryEscape(GrantTokenExchange), 400, "invalid_request"},
		{"exchange with actor_token", "POST", "/oauth2/token", form, "grant_type=" + url.QueryEscape(GrantTokenExchange) +
			"&subject_token=a.b.c&subject_token_type=" + url.QueryEscape(tokenTypeAccess) + "&actor_token=x&actor_token_type=y", 400, "invalid_request"},
		{"refresh without token", "POST", "/oauth2/token", form, "grant_type=refresh_token", 400, "invalid_request"},
		{"unknown refresh token", "POST", "/oauth2/token", form, "grant_type=refresh_token&refresh_token=abc", 400, "invalid_grant"},
		{"login without password", "POST", "/v1/login", form, "username=alice", 400, "invalid_request"},
		{"login for a tool", "POST", "/v1/login", form, "username=alice&password=alice-pw&resource=tickets", 400, "invalid_request"},
		{"login JSON with unknown field", "POST", "/v1/login", "application/json", `{"username":"a","password":"b","x":1}`, 400, "invalid_request"},
		{"login JSON trailing data", "POST", "/v1/login", "application/json", `{"username":"a","password":"b"} {}`, 400, "invalid_request"},
		{"introspect without token", "POST", "/oauth2/introspect", form, "", 400, "invalid_request"},
		{"metadata by POST", "POST", "/.well-known/oauth-authorization-server", form, "", 405, "invalid_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantOAuthError(t, raw(tc.method, tc.path, tc.ctype, tc.body), tc.status, tc.code)
		})
	}
}

func TestAuditFailureFailsIssuance(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	e.j.Close()
	wantOAuthError(t, e.agentToken(""), 503, "temporarily_unavailable")
}

func TestMetadataAndJWKS(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	ctx := context.Background()
	md := e.do(e.https.Client(), mustGet(t, e.https.URL+"/.well-known/oauth-authorization-server"))
	if md.status != 200 || md.str("issuer") != testIssuer || md.str("token_endpoint") != testIssuer+"/oauth2/token" {
		t.Fatalf("metadata: got %d %v", md.status, md.body)
	}
	old := e.signed(e.goodClaims())
	oldKid := e.b.keys.cur.Load().kid
	// Rotation is due after rotate_signing_key_every; the previous key still verifies.
	e.clock.Set(time.Now().Add(DefaultRotateSigningKeyEvery + time.Minute))
	e.b.Tick(ctx)
	e.clock.Set(time.Time{})
	newKid := e.b.keys.cur.Load().kid
	if newKid == oldKid {
		t.Fatal("the signing key did not rotate")
	}
	jwks := e.do(e.https.Client(), mustGet(t, e.https.URL+"/.well-known/jwks.json"))
	keys, _ := jwks.body["keys"].([]any)
	var kids []string
	for _, k := range keys {
		m := k.(map[string]any)
		if m["alg"] != "EdDSA" || m["crv"] != "Ed25519" || m["d"] != nil {
			t.Fatalf("JWKS key: got %v", m)
		}
		kids = append(kids, m["kid"].(string))
	}
	if !slices.Equal(kids, []string{newKid, oldKid}) {
		t.Fatalf("JWKS kids: got %v, want [%s %s]", kids, newKid, oldKid)
	}
	if _, err := e.b.Verify(ctx, old, e.b.ToolAudience()); err != nil {
		t.Fatalf("a token of the previous key: %v", err)
	}
	if _, ok := e.lastEvent("token.sign_key"); !ok {
		t.Fatal("rotation not audited")
	}
	// A restart keeps the rotated ring.
	b2, err := New(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if b2.keys.cur.Load().kid != newKid {
		t.Fatal("restart lost the rotated key")
	}
	c := e.goodClaims()
	c.Expiry = jwt.NewNumericDate(time.Now().Add(time.Minute))
	if _, err := b2.Verify(ctx, e.signed(c), b2.ToolAudience()); err != nil {
		t.Fatal(err)
	}
}

func mustGet(t *testing.T, u string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestRevokeUserEndsSessions: token revoke --user kills the user's access
// tokens, exchanged tokens and refresh tokens at once.
func TestRevokeUserEndsSessions(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	e.serveSocket()
	ctx := context.Background()
	lg := e.login("alice", "alice-pw")
	ex := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {lg.str("access_token")},
		"subject_token_type": {tokenTypeAccess}})
	if ex.status != 200 {
		t.Fatalf("exchange: %d %v", ex.status, ex.body)
	}
	if _, err := e.b.RevokeUser(ctx, "alice", audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Verify(ctx, ex.str("access_token"), e.b.ToolAudience()); !errors.Is(err, ErrUserRevoked) {
		t.Fatalf("exchanged token: got %v, want ErrUserRevoked", err)
	}
	wantOAuthError(t, e.httpsPost("/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {lg.str("refresh_token")}}), 400, "invalid_grant")
	ex = e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {lg.str("access_token")},
		"subject_token_type": {tokenTypeAccess}})
	wantOAuthError(t, ex, 400, "invalid_grant")
}

// failingAppender fails the appends of events of type typ while on is set,
// as a journal does on a full disk, and passes every other one on.
type failingAppender struct {
	next audit.Appender
	typ  string
	on   atomic.Bool
}

func (f *failingAppender) Append(ctx context.Context, e *audit.Event) (uint64, error) {
	if f.on.Load() && e.Type == f.typ {
		return 0, errors.New("no space left on device (test)")
	}
	return f.next.Append(ctx, e)
}

// A refresh whose issuance cannot be recorded hands out nothing, and the
// refresh token it was asked with stays good: the client's retry once the
// journal works again gets a token, not the reuse alarm that ends the
// session.
func TestRefreshThatCannotBeRecordedKeepsTheOldToken(t *testing.T) {
	e := newEnv(t, nil)
	fa := &failingAppender{next: e.j, typ: "token.refresh"}
	opts := e.opts
	opts.Audit = fa
	var err error
	if e.b, err = New(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	e.serveHTTPS()
	r1 := e.login("alice", "alice-pw").str("refresh_token")
	refresh := func(tok string) answer {
		return e.httpsPost("/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok}})
	}
	fa.on.Store(true)
	wantOAuthError(t, refresh(r1), 503, "temporarily_unavailable")
	fa.on.Store(false)
	a := refresh(r1)
	if a.status != 200 || a.str("refresh_token") == "" {
		t.Fatalf("retry after the journal came back: got %d %v, want a new token", a.status, a.body)
	}
	for _, x := range e.events() {
		if x.Type == "token.deny" && x.Severity == audit.SeverityHigh {
			t.Fatalf("the retry raised %+v", x)
		}
	}
	if b := refresh(a.str("refresh_token")); b.status != 200 {
		t.Fatalf("the session ended: next refresh got %d %v", b.status, b.body)
	}
}

// A subject_token in its last seconds (or in the clock-skew leeway past
// its exp) is not exchanged: the token made from it would be born expired.
func TestExchangeNeedsASubjectTokenWithTimeLeft(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	e.serveSocket()
	lg := e.login("alice", "alice-pw")
	if lg.status != 200 {
		t.Fatalf("login: got %d %v", lg.status, lg.body)
	}
	exp := time.Now().Add(time.Duration(lg.body["expires_in"].(float64)) * time.Second)
	e.clock.Set(exp.Add(-time.Minute))
	if ex := e.exchange(lg.str("access_token")); ex.status != 200 || ex.body["expires_in"].(float64) > 60 || ex.body["expires_in"].(float64) <= 0 {
		t.Fatalf("a minute before exp: got %d %v, want a token living at most that minute", ex.status, ex.body)
	}
	e.clock.Set(exp.Add(20 * time.Second)) // within the verification leeway
	ex := e.exchange(lg.str("access_token"))
	wantOAuthError(t, ex, 400, "invalid_grant")
	if !strings.Contains(ex.str("error_description"), "too soon to act on it") {
		t.Errorf("description %q does not say why", ex.str("error_description"))
	}
}

// VerifyUser, what a user deciding an approval presents, takes a user's
// own token only: not an agent's, not one exchanged for an agent, not a
// revoked one.
func TestVerifyUserTakesOnlyAUsersOwnToken(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	e.serveSocket()
	ctx := context.Background()
	lg := e.login("alice", "alice-pw")
	if lg.status != 200 {
		t.Fatalf("login: got %d %v", lg.status, lg.body)
	}
	userTok := lg.str("access_token")
	p, err := e.b.VerifyUser(ctx, userTok)
	if err != nil || p.User != "alice" || p.UserID == "" || p.Agent != "" {
		t.Fatalf("alice's own token: %v %+v", err, p)
	}
	ex := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {userTok},
		"subject_token_type": {tokenTypeAccess}})
	if ex.status != 200 {
		t.Fatalf("exchange: got %d %v", ex.status, ex.body)
	}
	ag := e.agentToken("tickets:read")
	if ag.status != 200 {
		t.Fatalf("agent token: got %d %v", ag.status, ag.body)
	}
	for name, raw := range map[string]string{
		"exchanged for an agent": ex.str("access_token"),
		"an agent's own":         ag.str("access_token"),
		"garbage":                "a.b.c",
	} {
		if _, err := e.b.VerifyUser(ctx, raw); err == nil {
			t.Errorf("%s: accepted as a user's own token", name)
		}
	}
	// Signed by the broker for the user audience, yet not a user's own:
	// one that names an actor, and one of an agent.
	acting := e.goodClaims()
	acting.Audience, acting.Kind, acting.Subject, acting.UserID = jwt.Audience{e.b.userAudience()}, KindUser, "alice", p.UserID
	acting.Act = &actClaim{Sub: "bot"}
	agentOwn := e.goodClaims()
	agentOwn.Audience = jwt.Audience{e.b.userAudience()}
	plain := e.goodClaims()
	plain.Audience, plain.Kind, plain.Subject, plain.UserID = jwt.Audience{e.b.userAudience()}, KindUser, "alice", p.UserID
	for name, c := range map[string]*claims{"with act": acting, "of an agent": agentOwn} {
		if _, err := e.b.VerifyUser(ctx, e.signed(c)); !errors.Is(err, ErrAudience) {
			t.Errorf("a user-audience token %s: got %v, want it refused", name, err)
		}
	}
	if _, err := e.b.VerifyUser(ctx, e.signed(plain)); err != nil {
		t.Errorf("the same claims as a user's own token: %v", err)
	}
	if a := e.httpsPost("/oauth2/revoke", url.Values{"token": {userTok}}); a.status != 200 {
		t.Fatalf("revoke: got %d %v", a.status, a.body)
	}
	if _, err := e.b.VerifyUser(ctx, userTok); !errors.Is(err, ErrRevoked) {
		t.Errorf("a revoked user token: got %v, want ErrRevoked", err)
	}
}
