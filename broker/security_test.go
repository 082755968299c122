package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/conf"
)

// goodClaims returns valid claims of an agent token for "bot".
func (e *env) goodClaims() *claims {
	now := e.clock.Now()
	return &claims{Issuer: testIssuer, Subject: "bot", Audience: jwt.Audience{e.b.ToolAudience()}, ClientID: "bot",
		Kind: KindAgent, Scope: "tickets:read", ID: newID(),
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(5 * time.Minute))}
}

func (e *env) signed(c *claims) string {
	e.t.Helper()
	raw, err := e.b.sign(c)
	if err != nil {
		e.t.Fatal(err)
	}
	return raw
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

// signWith signs c with an arbitrary algorithm, key and kid.
func signWith(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, c *claims) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", kid)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(c)
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestVerifyAttacks is the token security suite: one forged or stale token
// per attack, each rejected with its specific reason.
func TestVerifyAttacks(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	kid := e.b.keys.cur.Load().kid
	pub := e.b.keys.cur.Load().pub[kid]

	good := e.signed(e.goodClaims())
	if _, err := e.b.Verify(ctx, good, e.b.ToolAudience()); err != nil {
		t.Fatalf("a good token must verify (else the cases below prove nothing): %v", err)
	}

	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	revoked := e.goodClaims()
	if err := e.b.RevokeJTI(ctx, revoked.ID, audit.Actor{}); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name string
		tok  func() string
		want error
	}{
		{"alg none", func() string {
			return b64(map[string]string{"alg": "none", "typ": "at+jwt", "kid": kid}) + "." + b64(e.goodClaims()) + "."
		}, ErrAlgorithm},
		{"HS256 with the public key as secret", func() string {
			return signWith(t, jose.HS256, []byte(pub), kid, e.goodClaims())
		}, ErrAlgorithm},
		{"unknown kid", func() string { return signWith(t, jose.EdDSA, otherKey, "nope", e.goodClaims()) }, ErrUnknownKey},
		{"our kid, another key", func() string { return signWith(t, jose.EdDSA, otherKey, kid, e.goodClaims()) }, ErrSignature},
		{"kid path traversal", func() string {
			return signWith(t, jose.EdDSA, otherKey, "../../../../etc/passwd", e.goodClaims())
		}, ErrUnknownKey},
		{"kid SQL injection", func() string {
			return signWith(t, jose.EdDSA, otherKey, "x' OR '1'='1' --", e.goodClaims())
		}, ErrUnknownKey},
		{"kid empty", func() string { return signWith(t, jose.EdDSA, otherKey, "", e.goodClaims()) }, ErrUnknownKey},
		{"expired", func() string {
			c := e.goodClaims()
			c.IssuedAt = jwt.NewNumericDate(time.Now().Add(-10 * time.Minute))
			c.Expiry = jwt.NewNumericDate(time.Now().Add(-2 * time.Minute))
			return e.signed(c)
		}, ErrExpired},
		{"nbf in the future", func() string {
			c := e.goodClaims()
			c.NotBefore = jwt.NewNumericDate(time.Now().Add(5 * time.Minute))
			return e.signed(c)
		}, ErrNotYetValid},
		{"wrong iss", func() string { c := e.goodClaims(); c.Issuer = "https://evil.test"; return e.signed(c) }, ErrIssuer},
		{"wrong aud", func() string {
			c := e.goodClaims()
			c.Audience = jwt.Audience{"https://other.test/api"}
			return e.signed(c)
		}, ErrAudience},
		{"user token at the tool audience", func() string {
			c := e.goodClaims()
			c.Kind, c.Subject, c.Audience = KindUser, "alice", jwt.Audience{e.b.userAudience()}
			return e.signed(c)
		}, ErrAudience},
		{"payload changed after signing", func() string {
			parts := strings.Split(good, ".")
			c := e.goodClaims()
			c.Scope = "tickets:read tickets:delete"
			return parts[0] + "." + b64(c) + "." + parts[2]
		}, ErrSignature},
		{"signature stripped", func() string { return good[:strings.LastIndex(good, ".")+1] }, ErrSignature},
		{"no typ", func() string {
			s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: otherKey}, (&jose.SignerOptions{}).WithHeader("kid", kid))
			payload, _ := json.Marshal(e.goodClaims())
			jws, _ := s.Sign(payload)
			raw, _ := jws.CompactSerialize()
			return raw
		}, ErrTokenType},
		{"no exp", func() string { c := e.goodClaims(); c.Expiry = nil; return e.signed(c) }, ErrMalformed},
		{"revoked jti", func() string { return e.signed(revoked) }, ErrRevoked},
		{"garbage", func() string { return "a.b.c" }, ErrMalformed},
		{"oversized", func() string { return strings.Repeat("a", maxTokenBytes) + ".b.c" }, ErrMalformed},
		{"JSON serialization", func() string { return `{"payload":"e30","signatures":[]}` }, ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := e.b.Verify(ctx, tc.tok(), e.b.ToolAudience())
			if p != nil || !errors.Is(err, ErrInvalidToken) || !errors.Is(err, tc.want) {
				t.Fatalf("got principal %v, err %v; want %v", p, err, tc.want)
			}
		})
	}
}

// TestDisabledAgentRejectedAtOnce: disabling an agent fails its existing
// tokens at Verify and at introspection, and refuses new ones.
func TestDisabledAgentRejectedAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	ctx := context.Background()
	tok := e.agentToken("tickets:read")
	if tok.status != 200 {
		t.Fatalf("token: got %d %v", tok.status, tok.body)
	}
	raw := tok.str("access_token")
	if _, err := e.b.Verify(ctx, raw, e.b.ToolAudience()); err != nil {
		t.Fatalf("before disable: %v", err)
	}
	if err := e.b.SetAgentEnabled(ctx, "bot", false, audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Verify(ctx, raw, e.b.ToolAudience()); !errors.Is(err, ErrAgentDisabled) {
		t.Fatalf("Verify after disable: got %v, want ErrAgentDisabled", err)
	}
	wantOAuthError(t, e.agentToken(""), 400, "unauthorized_client")
	in := e.post(e.https0(), e.httpsURL(), "/oauth2/introspect", url.Values{"token": {raw}, "client_assertion_type": {assertionType},
		"client_assertion": {e.assertion(e.b.tokenEndpoint(), time.Now().Add(time.Minute), newID())}}, nil)
	if in.status != 200 || in.body["active"] != false {
		t.Fatalf("introspection after disable: got %d %v, want active false", in.status, in.body)
	}
	// The state survives a restart.
	b2, err := New(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Verify(ctx, raw, b2.ToolAudience()); !errors.Is(err, ErrAgentDisabled) {
		t.Fatalf("after restart: got %v, want ErrAgentDisabled", err)
	}
	if err := e.b.SetAgentEnabled(ctx, "bot", true, audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	if got := e.agentToken(""); got.status != 200 {
		t.Fatalf("after enable: got %d %v", got.status, got.body)
	}
	// Enabling it again does not bring back a token from before the
	// disable (disable, rotate the agent's key, enable).
	if _, err := e.b.Verify(ctx, raw, e.b.ToolAudience()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a token from before the disable, after enable: got %v, want ErrRevoked", err)
	}
}

// A revocation outlives every token it revokes, even when max_ttl was
// lowered after those tokens were issued: it is kept for the longest
// lifetime any config allows, not the current one.
func TestRevocationOutlivesTokensFromALongerMaxTTL(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Tokens.TTL, c.Tokens.MaxTTL = conf.Duration(time.Hour), conf.Duration(time.Hour) })
	ctx := context.Background()
	c := e.goodClaims()
	c.Expiry = jwt.NewNumericDate(e.clock.Now().Add(time.Hour))
	raw := e.signed(c)
	cfg := e.opts.Config
	cfg.Tokens.TTL, cfg.Tokens.MaxTTL = conf.Duration(10*time.Minute), conf.Duration(10*time.Minute)
	if err := e.b.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if err := e.b.RevokeJTI(ctx, c.ID, audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	e.clock.Set(time.Now().Add(15 * time.Minute)) // the new max_ttl has passed; the token has 45 min left
	e.b.Tick(ctx)
	if _, err := e.b.Verify(ctx, raw, e.b.ToolAudience()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a revoked token, 15 min on, 45 min before its exp: got %v, want ErrRevoked", err)
	}
	if errs := (TokenConfig{MaxTTL: conf.Duration(48 * time.Hour)}).Validate(); len(errs) != 1 || errs[0].Key != "max_ttl" {
		t.Errorf("max_ttl = 48h: got %v, want an error on max_ttl", errs)
	}
}

// https0 and httpsURL start the HTTPS listener on first use.
func (e *env) https0() *http.Client {
	if e.https == nil {
		e.serveHTTPS()
	}
	return e.https.Client()
}

func (e *env) httpsURL() string {
	if e.https == nil {
		e.serveHTTPS()
	}
	return e.https.URL
}

// TestRevocationPersistsAndIsPruned: a revoked jti stays revoked across a
// restart, and the entry is pruned once the token could no longer verify.
func TestRevocationPersistsAndIsPruned(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	c := e.goodClaims()
	raw := e.signed(c)
	if err := e.b.RevokeJTI(ctx, c.ID, audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	b2, err := New(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Verify(ctx, raw, b2.ToolAudience()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after restart: got %v, want ErrRevoked", err)
	}
	e.clock.Set(time.Now().Add(MaxAllowedTTL + time.Hour))
	b2.Tick(ctx)
	revs, err := e.store.Revocations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(revs) != 0 {
		t.Fatalf("after expiry: got %d revocations kept, want 0", len(revs))
	}
}

// TestRevokeUserIgnoresCase: the directory matches login names without
// regard to case, so `token revoke --user ALICE` ends the tokens and the
// sessions of the user the directory calls alice, and says what it found.
func TestRevokeUserIgnoresCase(t *testing.T) {
	e := newEnv(t, nil)
	e.serveHTTPS()
	e.serveSocket()
	ctx := context.Background()
	lg := e.login("alice", "alice-pw")
	if lg.status != 200 {
		t.Fatalf("login: got %d %v", lg.status, lg.body)
	}
	e.clock.Set(time.Now().Add(time.Second)) // iat has one-second resolution
	res, err := e.b.RevokeUser(ctx, "ALICE", audit.Actor{})
	if err != nil {
		t.Fatal(err)
	}
	if res.SessionsEnded != 1 || !res.HeldLiveToken {
		t.Errorf("revoking ALICE found %+v, want her one session and a live token", res)
	}
	if in := e.introspect(lg.str("access_token")); in.body["active"] != false {
		t.Errorf("alice's token after revoking ALICE: got %v, want inactive", in.body)
	}
	if r := e.refresh(lg.str("refresh_token")); r.status == 200 {
		t.Errorf("alice's session after revoking ALICE: refresh got %d, want refused", r.status)
	}
	if res, err := e.b.RevokeUser(ctx, "nosuch", audit.Actor{}); err != nil || res.SessionsEnded != 0 || res.HeldLiveToken || len(res.AccountIDs) != 0 {
		t.Errorf("revoking a name nobody uses: got %+v, %v, want nothing found", res, err)
	}
}

// TestRevokeAgentAndUser: token revoke --agent and --user take effect at once.
func TestRevokeAgentAndUser(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	c := e.goodClaims()
	c.IssuedAt = jwt.NewNumericDate(time.Now().Add(-time.Second))
	agentTok := e.signed(c)
	u := e.goodClaims()
	u.Kind, u.Subject, u.Act = KindUser, "alice", &actClaim{Sub: "bot"}
	u.IssuedAt = jwt.NewNumericDate(time.Now().Add(-time.Second))
	userTok := e.signed(u)
	if _, err := e.b.RevokeUser(ctx, "alice", audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Verify(ctx, userTok, e.b.ToolAudience()); !errors.Is(err, ErrUserRevoked) {
		t.Fatalf("user token: got %v, want ErrUserRevoked", err)
	}
	if _, err := e.b.Verify(ctx, agentTok, e.b.ToolAudience()); err != nil {
		t.Fatalf("the agent's own token is not the user's: %v", err)
	}
	if err := e.b.RevokeAgent(ctx, "bot", audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Verify(ctx, agentTok, e.b.ToolAudience()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("agent token: got %v, want ErrRevoked", err)
	}
	if ev, ok := e.lastEvent("broker.revoke"); !ok || ev.Details["agent"] != "bot" {
		t.Fatalf("revocation not audited: %+v", ev)
	}
}
