package broker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Token verification errors. Every one wraps ErrInvalidToken, so a caller
// that only needs "valid or not" checks that; the specific ones say why.
var (
	ErrInvalidToken  = errors.New("broker: invalid token")
	ErrMalformed     = errors.New("malformed token")
	ErrAlgorithm     = errors.New("signature algorithm not allowed (EdDSA only)")
	ErrTokenType     = errors.New("not an access token (typ must be at+jwt)")
	ErrUnknownKey    = errors.New("unknown signing key (kid)")
	ErrSignature     = errors.New("bad signature")
	ErrExpired       = errors.New("token expired")
	ErrNotYetValid   = errors.New("token not valid yet")
	ErrIssuer        = errors.New("wrong issuer")
	ErrAudience      = errors.New("wrong audience")
	ErrRevoked       = errors.New("token revoked")
	ErrAgentDisabled = errors.New("agent disabled")
	ErrUnknownAgent  = errors.New("agent not configured")
	ErrUserRevoked   = errors.New("user's tokens revoked")
)

// Kinds of token subject.
const (
	KindAgent = "agent" // sub is an agent (client_credentials)
	KindUser  = "user"  // sub is a user (login, refresh, token exchange)
)

// leeway is the clock skew tolerated on exp, nbf and iat.
const leeway = 30 * time.Second

// maxTokenBytes bounds a token before it is parsed.
const maxTokenBytes = 8 << 10

// actClaim is RFC 8693's actor claim.
type actClaim struct {
	Sub string `json:"sub"`
}

// claims is the JWT access token body (RFC 9068) plus the broker's own
// "kind" and, on user tokens, "groups" and "oid" (the user's account id in
// the directory, which a rename does not change).
type claims struct {
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub"`
	Audience  jwt.Audience     `json:"aud"`
	Expiry    *jwt.NumericDate `json:"exp"`
	NotBefore *jwt.NumericDate `json:"nbf"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	ID        string           `json:"jti"`
	ClientID  string           `json:"client_id"`
	Scope     string           `json:"scope,omitempty"`
	Act       *actClaim        `json:"act,omitempty"`
	Kind      string           `json:"kind"`
	Groups    []string         `json:"groups,omitempty"`
	UserID    string           `json:"oid,omitempty"`
}

// Principal is a verified token: who holds it and what it allows.
type Principal struct {
	Kind      string    // KindAgent or KindUser
	Subject   string    // sub: the agent, or the user
	Agent     string    // the agent: sub of an agent token, act.sub of an exchanged one
	User      string    // the user, for user and exchanged tokens
	UserID    string    // the user's account id in the directory (oid); empty in tokens from before account ids were kept
	Groups    []string  // the user's groups (user tokens)
	Scopes    []string  // granted scopes
	ClientID  string    // client_id
	Audience  []string  // aud
	JTI       string    // the token's id
	IssuedAt  time.Time // iat
	NotBefore time.Time // nbf
	Expiry    time.Time // exp
}

// HasScope reports whether the token grants scope.
func (p *Principal) HasScope(scope string) bool {
	for _, s := range p.Scopes {
		if s == scope {
			return true
		}
	}
	return false
}

func newID() string {
	var b [16]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		panic("broker: crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// sign serializes and signs c with the current key.
func (b *Broker) sign(c *claims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("broker: encoding claims: %w", err)
	}
	jws, err := b.keys.cur.Load().signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("broker: signing: %w", err)
	}
	return jws.CompactSerialize()
}

func invalid(why error) error { return fmt.Errorf("%w: %w", ErrInvalidToken, why) }

// HolderError is the refusal of a token whose signature checked out, so
// that whom it was issued to is known: Agent, User and JTI are for the
// audit record of the refusal. Err wraps ErrInvalidToken and the reason.
type HolderError struct {
	Err   error
	Agent string
	User  string
	JTI   string
}

func (e *HolderError) Error() string { return e.Err.Error() }
func (e *HolderError) Unwrap() error { return e.Err }

// holderOf says whom c was issued to: an agent, a user, or an agent acting
// for a user.
func holderOf(c *claims) (agent, user string) {
	switch {
	case c.Kind == KindAgent:
		return c.Subject, ""
	case c.Act != nil:
		return c.Act.Sub, c.Subject
	default:
		return "", c.Subject
	}
}

// refused is err for the authentic token c.
func refused(c *claims, err error) error {
	agent, user := holderOf(c)
	return &HolderError{Err: err, Agent: agent, User: user, JTI: c.ID}
}

// Verify checks raw as an access token for audience and returns who holds
// it. The checks run in this order: size and parse (EdDSA only), typ, key
// by kid, signature, claims (iss, exp, nbf, iat with 30 s leeway), aud,
// then the revocation list, the agent's state and user revocation. The
// error wraps ErrInvalidToken and the specific reason.
//
// A token seen before with a good signature skips parse and signature (see
// verifiedCache); every other check runs on every call.
func (b *Broker) Verify(ctx context.Context, raw, audience string) (*Principal, error) {
	c, err := b.verifyClaims(raw, func(aud string) bool { return aud == audience })
	if err != nil {
		return nil, err
	}
	return b.checkState(c)
}

// VerifyUser checks raw as a user's own token: one from a login or its
// refresh (aud the token endpoint, no act), never an agent's or one
// exchanged for an agent. The same checks as Verify run, revocations of
// the user and of the account included.
func (b *Broker) VerifyUser(ctx context.Context, raw string) (*Principal, error) {
	c, err := b.verifyClaims(raw, func(aud string) bool { return aud == b.userAudience() })
	if err != nil {
		return nil, err
	}
	if c.Kind != KindUser || c.Act != nil {
		return nil, refused(c, invalid(ErrAudience))
	}
	return b.checkState(c)
}

// verifyClaims checks raw up to its claims; accept decides which aud
// values are good (one is enough).
func (b *Broker) verifyClaims(raw string, accept func(aud string) bool) (*claims, error) {
	if len(raw) > maxTokenBytes || strings.Count(raw, ".") != 2 {
		return nil, invalid(ErrMalformed)
	}
	key := sha256.Sum256([]byte(raw))
	c, kid := (*claims)(nil), ""
	if e, ok := b.verified.get(key); ok {
		if _, trusted := b.keys.cur.Load().pub[e.kid]; !trusted {
			return nil, invalid(ErrUnknownKey)
		}
		c = e.c
	} else {
		var err error
		if c, kid, err = b.verifySignature(raw); err != nil {
			return nil, err
		}
		// Authentic: remembered even if it fails what follows, which every
		// later presentation checks again.
		b.verified.put(key, verifiedEntry{c: c, kid: kid}, b.now())
	}
	if _, err := b.checkClaims(c, accept); err != nil {
		return nil, refused(c, err)
	}
	return c, nil
}

// verifySignature parses raw (EdDSA only), checks typ, finds the key by kid,
// verifies the signature and decodes the claims, which must have the
// fields every token of the broker has. It returns the claims and the kid.
func (b *Broker) verifySignature(raw string) (*claims, string, error) {
	b.signatureChecks.Add(1)
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		var alg *jose.ErrUnexpectedSignatureAlgorithm
		if errors.As(err, &alg) {
			return nil, "", invalid(ErrAlgorithm)
		}
		return nil, "", invalid(ErrMalformed)
	}
	if len(jws.Signatures) != 1 {
		return nil, "", invalid(ErrMalformed)
	}
	h := jws.Signatures[0].Protected
	if h.Algorithm != string(jose.EdDSA) {
		return nil, "", invalid(ErrAlgorithm)
	}
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); !strings.EqualFold(typ, "at+jwt") && !strings.EqualFold(typ, "application/at+jwt") {
		return nil, "", invalid(ErrTokenType)
	}
	pub, ok := b.keys.cur.Load().pub[h.KeyID]
	if !ok {
		return nil, "", invalid(ErrUnknownKey)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return nil, "", invalid(ErrSignature)
	}
	var c claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, "", invalid(ErrMalformed)
	}
	if c.Expiry == nil || c.IssuedAt == nil || c.ID == "" || c.Subject == "" || (c.Kind != KindAgent && c.Kind != KindUser) {
		return nil, "", invalid(ErrMalformed)
	}
	return &c, h.KeyID, nil
}

// checkClaims checks what depends on the clock and the caller: iss, exp,
// nbf and iat (30 s leeway), then aud. It does not modify c.
func (b *Broker) checkClaims(c *claims, accept func(aud string) bool) (*claims, error) {
	std := jwt.Claims{Issuer: c.Issuer, Subject: c.Subject, Audience: c.Audience, Expiry: c.Expiry,
		NotBefore: c.NotBefore, IssuedAt: c.IssuedAt, ID: c.ID}
	err := std.ValidateWithLeeway(jwt.Expected{Issuer: b.issuer, Time: b.now()}, leeway)
	switch {
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return nil, invalid(ErrIssuer)
	case errors.Is(err, jwt.ErrExpired):
		return nil, invalid(ErrExpired)
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return nil, invalid(ErrNotYetValid)
	case err != nil:
		return nil, invalid(ErrMalformed)
	}
	if !slices.ContainsFunc(c.Audience, accept) {
		return nil, invalid(ErrAudience)
	}
	return c, nil
}

// checkState applies what changes after issuance: revocations and the
// agent's state. It returns the principal.
func (b *Broker) checkState(c *claims) (*Principal, error) {
	p := &Principal{
		Kind: c.Kind, Subject: c.Subject, ClientID: c.ClientID, Audience: slices.Clone(c.Audience), JTI: c.ID,
		Groups: slices.Clone(c.Groups), Scopes: strings.Fields(c.Scope), IssuedAt: c.IssuedAt.Time(), Expiry: c.Expiry.Time(),
	}
	if c.NotBefore != nil {
		p.NotBefore = c.NotBefore.Time()
	}
	p.Agent, p.User = holderOf(c)
	if p.User != "" {
		p.UserID = c.UserID
	}
	// The agent's state first: a disabled agent's tokens are also revoked,
	// and "the agent is disabled" is what its operator needs to hear.
	if p.Agent != "" {
		cc := b.cfg.Load()
		if _, ok := cc.agents[p.Agent]; !ok {
			return nil, refused(c, invalid(ErrUnknownAgent))
		}
		if b.agentDisabled(p.Agent) {
			return nil, refused(c, invalid(ErrAgentDisabled))
		}
	}
	if err := b.revs.check(p); err != nil {
		return nil, refused(c, invalid(err))
	}
	return p, nil
}
