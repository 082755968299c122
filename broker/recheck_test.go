package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
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

func (a *recheckAuth) Recheck(ctx context.Context, acct Account, source string, fresh bool) (Identity, string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.err != nil || a.denied != "" {
		return Identity{}, a.denied, a.err
	}
	return a.staticAuth.Recheck(ctx, acct, source, fresh)
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

// perUserAuth answers Recheck from a table per user: an error, a refusal,
// or (absent) staticAuth's answer.
type perUserAuth struct {
	staticAuth
	mu     sync.Mutex
	denied map[string]string
	errs   map[string]error
	asked  []string
}

func (a *perUserAuth) Recheck(ctx context.Context, acct Account, source string, fresh bool) (Identity, string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	username := acct.Name
	a.asked = append(a.asked, username)
	if err := a.errs[username]; err != nil {
		return Identity{}, "", err
	}
	if d := a.denied[username]; d != "" {
		return Identity{}, d, nil
	}
	return a.staticAuth.Recheck(ctx, acct, source, fresh)
}

// TestPeriodicRecheckGoesOnPastOneUsersFailure: the directory failing to
// answer about one user does not spare another it now refuses, whatever
// order the round takes them in; two failures in a row end the round.
func TestPeriodicRecheckGoesOnPastOneUsersFailure(t *testing.T) {
	e := newEnv(t, nil)
	auth := &perUserAuth{staticAuth: e.opts.Auth.(staticAuth)}
	e.opts.Auth = auth
	var err error
	if e.b, err = New(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	e.serveHTTPS()
	e.serveSocket()
	tokens := map[string]string{}
	for _, u := range []string{"alice", "bob"} {
		lg := e.login(u, u+"-pw")
		if lg.status != 200 {
			t.Fatalf("login %s: got %d %v", u, lg.status, lg.body)
		}
		tokens[u] = lg.str("access_token")
	}
	auth.errs = map[string]error{"bob": errors.New("ldapauth: search for bob: size limit exceeded")}
	auth.denied = map[string]string{"alice": "account_locked"}
	// The round's order is the map's, which varies: several rounds see
	// both orders.
	for range 8 {
		e.b.RecheckHolders(context.Background())
	}
	if in := e.introspect(tokens["alice"]); in.body["active"] != false {
		t.Errorf("alice's token after the directory refused her: got %v, want inactive", in.body)
	}
	if in := e.introspect(tokens["bob"]); in.body["active"] != true {
		t.Errorf("bob's token after a failed lookup: got %v, want still active", in.body)
	}

	// A directory that fails for everyone: one round asks two users, not
	// every holder.
	auth.mu.Lock()
	auth.errs["alice"], auth.errs["carol"] = errors.New("down"), errors.New("down")
	auth.asked = nil
	auth.mu.Unlock()
	if err := e.b.noteHolder(context.Background(), Account{Name: "alice", ID: "0a11ce00-0000-4000-8000-000000000001"}, e.clock.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := e.b.noteHolder(context.Background(), Account{Name: "carol", ID: "0ca10000-0000-4000-8000-000000000003"}, e.clock.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	e.b.RecheckHolders(context.Background())
	if len(auth.asked) != 2 {
		t.Errorf("a round with the directory down asked %v, want two users", auth.asked)
	}
}
