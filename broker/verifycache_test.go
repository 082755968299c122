package broker

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/go-jose/go-jose/v4/jwt"
)

// verifiedOnce verifies raw for the tool audience and fails the test
// unless it passes; it returns how many full signature checks it took.
func (e *env) verifiedOnce(t *testing.T, raw string) int64 {
	t.Helper()
	before := e.b.signatureChecks.Load()
	if _, err := e.b.Verify(context.Background(), raw, e.b.ToolAudience()); err != nil {
		t.Fatalf("Verify of a good token: %v", err)
	}
	return e.b.signatureChecks.Load() - before
}

func TestVerifyChecksASignatureOnce(t *testing.T) {
	e := newEnv(t, nil)
	raw := e.signed(e.goodClaims())
	if n := e.verifiedOnce(t, raw); n != 1 {
		t.Fatalf("first Verify: %d signature checks, want 1", n)
	}
	if n := e.verifiedOnce(t, raw); n != 0 {
		t.Fatalf("second Verify of the same token: %d signature checks, want 0 (cached)", n)
	}
	// One character changed in the signature: not the cached token, so it
	// is checked in full, and fails.
	i := strings.LastIndexByte(raw, '.') + 5
	flip := byte('A')
	if raw[i] == 'A' {
		flip = 'B'
	}
	bad := raw[:i] + string(flip) + raw[i+1:]
	before := e.b.signatureChecks.Load()
	if _, err := e.b.Verify(context.Background(), bad, e.b.ToolAudience()); !errors.Is(err, ErrSignature) {
		t.Fatalf("a changed token: got %v, want ErrSignature", err)
	}
	if e.b.signatureChecks.Load() == before {
		t.Fatal("a changed token was not checked in full")
	}
}

func TestCachedTokenStillExpires(t *testing.T) {
	e := newEnv(t, nil)
	c := e.goodClaims()
	raw := e.signed(c)
	e.verifiedOnce(t, raw)
	e.clock.Set(c.Expiry.Time().Add(leeway + time.Second))
	if _, err := e.b.Verify(context.Background(), raw, e.b.ToolAudience()); !errors.Is(err, ErrExpired) {
		t.Fatalf("a cached token after exp: got %v, want ErrExpired", err)
	}
}

func TestCachedTokenNotBeforeStillApplies(t *testing.T) {
	e := newEnv(t, nil)
	c := e.goodClaims()
	raw := e.signed(c)
	e.verifiedOnce(t, raw)
	e.clock.Set(c.NotBefore.Time().Add(-leeway - time.Minute))
	if _, err := e.b.Verify(context.Background(), raw, e.b.ToolAudience()); !errors.Is(err, ErrNotYetValid) {
		t.Fatalf("a cached token before nbf: got %v, want ErrNotYetValid", err)
	}
}

func TestCachedTokenRevokedAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	c := e.goodClaims()
	raw := e.signed(c)
	e.verifiedOnce(t, raw)
	if err := e.b.RevokeJTI(context.Background(), c.ID, audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Verify(context.Background(), raw, e.b.ToolAudience()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a cached token after revocation: got %v, want ErrRevoked", err)
	}
}

func TestCachedTokenOfDisabledAgentRejected(t *testing.T) {
	e := newEnv(t, nil)
	raw := e.signed(e.goodClaims())
	e.verifiedOnce(t, raw)
	if err := e.b.SetAgentEnabled(context.Background(), "bot", false, audit.Actor{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Verify(context.Background(), raw, e.b.ToolAudience()); !errors.Is(err, ErrAgentDisabled) {
		t.Fatalf("a cached token of a disabled agent: got %v, want ErrAgentDisabled", err)
	}
}

func TestCachedTokenAudienceCheckedPerCall(t *testing.T) {
	e := newEnv(t, nil)
	raw := e.signed(e.goodClaims())
	e.verifiedOnce(t, raw)
	if _, err := e.b.Verify(context.Background(), raw, "tool:other"); !errors.Is(err, ErrAudience) {
		t.Fatalf("a cached token for another audience: got %v, want ErrAudience", err)
	}
}

// TestCachedTokenOfRetiredKeyRejected: after two rotations the key that
// signed a cached token is no longer trusted, and the token fails at once.
func TestCachedTokenOfRetiredKeyRejected(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	c := e.goodClaims()
	c.Expiry = jwt.NewNumericDate(time.Now().Add(3 * DefaultRotateSigningKeyEvery))
	raw := e.signed(c)
	e.verifiedOnce(t, raw)
	for i := 1; i <= 2; i++ {
		e.clock.Set(time.Now().Add(time.Duration(i) * (DefaultRotateSigningKeyEvery + time.Minute)))
		e.b.Tick(ctx)
	}
	if _, err := e.b.Verify(ctx, raw, e.b.ToolAudience()); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("a cached token of a retired key: got %v, want ErrUnknownKey", err)
	}
}

func TestCachedPrincipalIsACopy(t *testing.T) {
	e := newEnv(t, nil)
	c := e.goodClaims()
	c.Kind, c.Subject, c.Groups, c.UserID = KindUser, "alice", []string{"helpdesk"}, "0a11ce00-0000-4000-8000-000000000001"
	raw := e.signed(c)
	p, err := e.b.Verify(context.Background(), raw, e.b.ToolAudience())
	if err != nil {
		t.Fatal(err)
	}
	p.Groups[0], p.Audience[0] = "domain-admins", "tool:everything"
	p2, err := e.b.Verify(context.Background(), raw, e.b.ToolAudience())
	if err != nil {
		t.Fatal(err)
	}
	if p2.Groups[0] != "helpdesk" || p2.Audience[0] != e.b.ToolAudience() {
		t.Fatalf("a caller's change to a principal reached the cache: groups %v aud %v", p2.Groups, p2.Audience)
	}
}

func TestVerifiedCacheIsBounded(t *testing.T) {
	vc := newVerifiedCache()
	now := time.Now()
	entry := func(exp time.Time) verifiedEntry {
		return verifiedEntry{c: &claims{Expiry: jwt.NewNumericDate(exp)}, kid: "k"}
	}
	// Half of them already expired: those go first when the cache is full.
	var live [][sha256.Size]byte
	for i := range verifiedMax {
		k := sha256.Sum256([]byte(fmt.Sprint(i)))
		exp := now.Add(-time.Hour)
		if i%2 == 0 {
			exp = now.Add(time.Hour)
			live = append(live, k)
		}
		vc.put(k, entry(exp), now)
	}
	if got := vc.len(); got != verifiedMax {
		t.Fatalf("after %d puts: %d entries", verifiedMax, got)
	}
	vc.put(sha256.Sum256([]byte("one more")), entry(now.Add(time.Hour)), now)
	if got := vc.len(); got > verifiedMax/2+1 || got == 0 {
		t.Fatalf("after overflowing: %d entries, want at most %d", got, verifiedMax/2+1)
	}
	kept := 0
	for _, k := range live {
		if _, ok := vc.get(k); ok {
			kept++
		}
	}
	if kept != len(live) {
		t.Fatalf("eviction dropped %d live tokens while expired ones could go", len(live)-kept)
	}
	for i := range 3 * verifiedMax {
		vc.put(sha256.Sum256([]byte(fmt.Sprint("churn", i))), entry(now.Add(time.Hour)), now)
		if vc.len() > verifiedMax {
			t.Fatalf("cache grew to %d entries, bound %d", vc.len(), verifiedMax)
		}
	}
}
