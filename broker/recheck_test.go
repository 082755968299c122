package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// recheckAuth is staticAuth whose Recheck answer a test sets.
type recheckAuth struct {
	staticAuth
	mu     sync.Mutex
	denied string
	err    error
	calls  int
}

func (a *recheckAuth) set(denied string, err error) {
	a.mu.Lock()
	a.denied, a.err = denied, err
	a.mu.Unlock()
}

func (a *recheckAuth) Recheck(ctx context.Context, username, source string, fresh bool) (Identity, string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.err != nil || a.denied != "" {
		return Identity{}, a.denied, a.err
	}
	return a.staticAuth.Recheck(ctx, username, source, fresh)
}

// TestRecheckSemantics: the broker's side of the directory re-check,
// without a directory: a refusal revokes the session and the user's
// tokens; a directory error refuses with 503 and revokes nothing; a
// refresh token whose session already ended is refused without asking.
func TestRecheckSemantics(t *testing.T) {
	e := newEnv(t, nil)
	auth := &recheckAuth{staticAuth: e.opts.Auth.(staticAuth)}
	e.opts.Auth = auth
	var err error
	if e.b, err = New(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	e.serveHTTPS()
	e.serveSocket()
	login := func() session {
		t.Helper()
		lg := e.login("alice", "alice-pw")
		if lg.status != 200 {
			t.Fatalf("login: got %d %v", lg.status, lg.body)
		}
		return session{"alice", lg.str("access_token"), lg.str("refresh_token")}
	}

	t.Run("directory error", func(t *testing.T) {
		auth.set("", errors.New("ldapauth: no directory server available"))
		t.Cleanup(func() { auth.set("", nil) })
		s := login()
		wantOAuthError(t, e.refresh(s.refresh), 503, "temporarily_unavailable")
		wantOAuthError(t, e.exchange(s.access), 503, "temporarily_unavailable")
		if in := e.introspect(s.access); in.body["active"] != true {
			t.Errorf("access token after a directory error: got %v, want active", in.body)
		}
		auth.set("", nil)
		if r := e.refresh(s.refresh); r.status != 200 {
			t.Errorf("the same refresh token once the directory answers: got %d %v", r.status, r.body)
		}
	})

	t.Run("denied", func(t *testing.T) {
		s := login()
		auth.set("account_disabled", nil)
		t.Cleanup(func() { auth.set("", nil) })
		wantOAuthError(t, e.refresh(s.refresh), 400, "invalid_grant")
		if in := e.introspect(s.access); in.body["active"] != false {
			t.Errorf("access token after the refusal: got %v, want inactive", in.body)
		}
		if ev, ok := e.lastEvent("token.deny"); !ok || ev.Reason != "directory: account_disabled" {
			t.Errorf("token.deny: got %+v", ev)
		}
		auth.mu.Lock()
		before := auth.calls
		auth.mu.Unlock()
		wantOAuthError(t, e.refresh(s.refresh), 400, "invalid_grant")
		auth.mu.Lock()
		after := auth.calls
		auth.mu.Unlock()
		if after != before {
			t.Errorf("a revoked session asked the directory again (%d calls)", after-before)
		}
	})
}
