package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/samba"
	"github.com/applianced/applianced/ldapauth"
)

// The package's Samba AD DC, started by the first test that needs it and
// stopped by TestMain: provisioning a domain takes seconds.
var (
	dcOnce sync.Once
	dcErr  error
	theDC  *samba.DC
)

const svc, svcPass = "svc-applianced", "Svc-pass-9z!Q"

func pw(u string) string { return "Pw-" + u + "-7x!Q" }

// sharedDC returns the package's DC, seeded with the service account and
// carl ∈ team-support ∈ helpdesk ∈ ai-users, dana ∈ ai-users, and an empty
// group deleters; it skips when no DC can run here.
func sharedDC(t *testing.T) *samba.DC {
	t.Helper()
	if err := samba.Available(); err != nil {
		t.Skipf("no Samba AD DC can run here: %v", err)
	}
	dcOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		dc, err := samba.Start(ctx, samba.Options{})
		if err != nil {
			dcErr = err
			return
		}
		theDC = dc
		for _, u := range []samba.User{{Name: svc, Password: svcPass}, {Name: "carl", Password: pw("carl")}, {Name: "dana", Password: pw("dana")}} {
			if _, err := dc.AddUser(ctx, u); err != nil {
				dcErr = err
				return
			}
		}
		for _, g := range []struct {
			name    string
			members []string
		}{{"team-support", []string{"carl"}}, {"helpdesk", []string{"team-support"}}, {"ai-users", []string{"helpdesk", "dana"}}, {"deleters", nil}} {
			if _, err := dc.AddGroup(ctx, g.name, g.members...); err != nil {
				dcErr = err
				return
			}
		}
	})
	if dcErr != nil {
		t.Fatal(dcErr)
	}
	return theDC
}

// stopSharedDC stops the package's DC, if a test started it.
func stopSharedDC() {
	if theDC != nil {
		theDC.Stop()
	}
}

// ldapConfig is the [ldap] config for the shared DC.
func ldapConfig(dc *samba.DC) ldapauth.Config {
	return ldapauth.Config{
		URLs: []string{dc.LDAPSURL()}, CAFile: dc.CAFile, ServerName: dc.Hostname,
		BindDN: dc.UserDN(svc), BindPasswordSecret: "ldap-bind", UserBase: dc.BaseDN,
		GroupMode: ldapauth.GroupModeAD, AllowedGroups: []string{"ai-users"},
		GroupRoles: map[string][]string{"ai-users": {"chat-user"}, "deleters": {"support"}},
	}
}

func newLDAP(t *testing.T, e *env, cfg ldapauth.Config) *ldapauth.Authenticator {
	t.Helper()
	la, err := ldapauth.New(cfg, ldapauth.Options{Audit: e.j, BindPassword: func(ctx context.Context, name string) ([]byte, error) {
		if name != "ldap-bind" {
			return nil, fmt.Errorf("no secret %q", name)
		}
		return []byte(svcPass), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { la.Close() })
	return la
}

// newSambaEnv is newEnv with users logging in against dc, serving HTTPS
// and the agent socket.
func newSambaEnv(t *testing.T, dc *samba.DC) *env {
	t.Helper()
	e := newEnv(t, nil)
	e.opts.Auth = FromLDAP(newLDAP(t, e, ldapConfig(dc)))
	var err error
	if e.b, err = New(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	e.serveHTTPS()
	e.serveSocket()
	return e
}

// TestEndToEndSambaAD: a user of a real Samba AD domain logs in over
// HTTPS, the agent exchanges the user's token on the agent socket, and
// introspection shows the agent as the actor. A user outside the agent's
// act_for_groups (resolved through nested groups) is refused.
func TestEndToEndSambaAD(t *testing.T) {
	e := newSambaEnv(t, sharedDC(t))

	lg := e.login("carl", pw("carl"))
	if lg.status != 200 {
		t.Fatalf("carl's login: got %d %v", lg.status, lg.body)
	}
	ex := e.exchange(lg.str("access_token"))
	if ex.status != 200 {
		t.Fatalf("exchange for carl: got %d %v", ex.status, ex.body)
	}
	in := e.introspect(ex.str("access_token"))
	act, _ := in.body["act"].(map[string]any)
	if in.body["active"] != true || in.str("sub") != "carl" || act["sub"] != "bot" || in.str("client_id") != "bot" {
		t.Fatalf("introspection: got %d %v", in.status, in.body)
	}
	if got := in.str("scope"); got != "tickets:create tickets:read" && got != "tickets:read tickets:create" {
		t.Fatalf("scopes: got %q, want bot's support ∩ carl's chat-user", got)
	}
	if ev, ok := e.lastEvent("auth.login"); !ok || ev.Outcome != "success" {
		t.Fatalf("the directory login was not recorded: %+v", ev)
	}

	lg = e.login("dana", pw("dana"))
	if lg.status != 200 {
		t.Fatalf("dana's login: got %d %v", lg.status, lg.body)
	}
	wantOAuthError(t, e.exchange(lg.str("access_token")), 400, "unauthorized_client")

	wantOAuthError(t, e.login("carl", "wrong-password"), 400, "invalid_grant")
	if ev, ok := e.lastEvent("auth.login"); !ok || ev.Outcome != "denied" {
		t.Fatalf("the wrong password was not recorded as a denial: %+v", ev)
	}
}

func (e *env) exchange(userTok string) answer {
	e.t.Helper()
	return e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {userTok},
		"subject_token_type": {tokenTypeAccess}})
}

func (e *env) refresh(tok string) answer {
	e.t.Helper()
	return e.httpsPost("/oauth2/token", url.Values{"grant_type": {GrantRefreshToken}, "refresh_token": {tok}})
}

func (e *env) introspect(tok string) answer {
	e.t.Helper()
	return e.socketPost("/oauth2/introspect", url.Values{"token": {tok}})
}

var userSeq atomic.Int32

// adUser creates a fresh user in team-support (so in helpdesk and
// ai-users) and in the extra groups, and returns its name.
func adUser(t *testing.T, dc *samba.DC, prefix string, groups ...string) string {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("%s%d", prefix, userSeq.Add(1))
	if _, err := dc.AddUser(ctx, samba.User{Name: name, Password: pw(name)}); err != nil {
		t.Fatal(err)
	}
	for _, g := range append([]string{"team-support"}, groups...) {
		if err := dc.AddMembers(ctx, g, name); err != nil {
			t.Fatal(err)
		}
	}
	return name
}

// removeMember takes member out of group as the domain administrator.
func removeMember(t *testing.T, dc *samba.DC, group, member string) {
	t.Helper()
	if err := dc.RemoveMembers(context.Background(), group, member); err != nil {
		t.Fatalf("removing %s from %s: %v", member, group, err)
	}
}

// switchDir logs users in with one Authenticator and looks them up with
// another that can be swapped, as the daemon swaps its directory on reload.
type switchDir struct {
	login  *ldapauth.Authenticator
	lookup atomic.Pointer[ldapauth.Authenticator]
}

func (s *switchDir) Login(ctx context.Context, r ldapauth.Request) (ldapauth.Identity, ldapauth.Outcome, error) {
	return s.login.Login(ctx, r)
}

func (s *switchDir) Lookup(ctx context.Context, r ldapauth.LookupRequest) (ldapauth.Identity, ldapauth.Outcome, error) {
	return s.lookup.Load().Lookup(ctx, r)
}

// session is a user logged in through the broker.
type session struct {
	user, access, refresh string
}

func (e *env) session(t *testing.T, user string) session {
	t.Helper()
	lg := e.login(user, pw(user))
	if lg.status != 200 || lg.str("refresh_token") == "" {
		t.Fatalf("%s's login: got %d %v", user, lg.status, lg.body)
	}
	return session{user, lg.str("access_token"), lg.str("refresh_token")}
}

// TestDirectoryRecheck: refresh and token exchange ask AD again. A user
// disabled or locked in AD after login is refused at the next refresh or
// exchange with invalid_grant, and at that moment the session and every
// token of or for the user (the agent's exchanged tokens included) become
// inactive. A group removed in AD is gone from the next refreshed token. A
// DC that cannot be reached refuses the refresh with
// temporarily_unavailable and revokes nothing.
func TestDirectoryRecheck(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newEnv(t, nil)
	real := newLDAP(t, e, ldapConfig(dc))
	dir := &switchDir{login: real}
	dir.lookup.Store(real)
	e.opts.Auth = FromLDAP(dir)
	var err error
	if e.b, err = New(ctx, e.opts); err != nil {
		t.Fatal(err)
	}
	e.serveHTTPS()
	e.serveSocket()

	denials := []struct {
		name    string
		change  func(ctx context.Context, user string) error
		reason  string
		trigger string // the grant that meets the change
	}{
		{"disabled at refresh", dc.Disable, "account_disabled", GrantRefreshToken},
		{"locked at refresh", dc.Lock, "account_locked", GrantRefreshToken},
		{"expired at refresh", dc.ExpireAccount, "account_expired", GrantRefreshToken},
		{"disabled at exchange", dc.Disable, "account_disabled", GrantTokenExchange},
		{"locked at exchange", dc.Lock, "account_locked", GrantTokenExchange},
	}
	for _, tt := range denials {
		t.Run(tt.name, func(t *testing.T) {
			u := adUser(t, dc, "rc")
			s := e.session(t, u)
			ex := e.exchange(s.access)
			if ex.status != 200 {
				t.Fatalf("exchange before the change: got %d %v", ex.status, ex.body)
			}
			if in := e.introspect(ex.str("access_token")); in.body["active"] != true {
				t.Fatalf("exchanged token before the change: got %v", in.body)
			}
			if err := tt.change(ctx, u); err != nil {
				t.Fatal(err)
			}
			if tt.trigger == GrantRefreshToken {
				wantOAuthError(t, e.refresh(s.refresh), 400, "invalid_grant")
			} else {
				wantOAuthError(t, e.exchange(s.access), 400, "invalid_grant")
			}
			for name, tok := range map[string]string{"the user's access token": s.access, "the exchanged token": ex.str("access_token")} {
				if in := e.introspect(tok); in.status != 200 || in.body["active"] != false {
					t.Errorf("%s after the denial: got %d %v, want inactive", name, in.status, in.body)
				}
			}
			// The session is gone: the refresh token no longer works,
			// whichever grant met the change.
			wantOAuthError(t, e.refresh(s.refresh), 400, "invalid_grant")
			ev, ok := e.lastEvent("auth.recheck")
			if !ok || ev.Outcome != "denied" || ev.Reason != tt.reason {
				t.Errorf("auth.recheck: got %+v, want denied %s", ev, tt.reason)
			}
			rev, ok := e.lastEvent("token.revoke")
			if !ok || rev.Details["user"] != u || rev.Reason != "directory_denied" || rev.Details["trigger"] != tt.trigger ||
				rev.Details["sessions"] != "1" {
				t.Errorf("token.revoke: got %+v", rev)
			}
		})
	}

	t.Run("group removed takes effect at refresh", func(t *testing.T) {
		u := adUser(t, dc, "gr", "deleters")
		s := e.session(t, u)
		in := e.introspect(s.access)
		if !strings.Contains(in.str("scope"), "tickets:delete") {
			t.Fatalf("before: scope %q lacks the support role's tickets:delete", in.str("scope"))
		}
		removeMember(t, dc, "deleters", u)
		r := e.refresh(s.refresh)
		if r.status != 200 {
			t.Fatalf("refresh: got %d %v", r.status, r.body)
		}
		in = e.introspect(r.str("access_token"))
		groups := fmt.Sprint(in.body["groups"])
		if in.body["active"] != true || strings.Contains(in.str("scope"), "tickets:delete") || strings.Contains(groups, "deleters") {
			t.Fatalf("refreshed token: got scope %q groups %s, want neither tickets:delete nor deleters", in.str("scope"), groups)
		}
		// The rotated refresh token carries the new groups on.
		r2 := e.refresh(r.str("refresh_token"))
		if in := e.introspect(r2.str("access_token")); r2.status != 200 || in.str("sub") != u || strings.Contains(in.str("scope"), "tickets:delete") {
			t.Fatalf("second refresh: got %d %v / %v", r2.status, r2.body, in.body)
		}
	})

	t.Run("DC unreachable", func(t *testing.T) {
		u := adUser(t, dc, "un")
		s := e.session(t, u)
		ex := e.exchange(s.access)
		if ex.status != 200 {
			t.Fatalf("exchange: got %d %v", ex.status, ex.body)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := ldapConfig(dc)
		dead.URLs = []string{"ldaps://" + ln.Addr().String()}
		ln.Close()
		dir.lookup.Store(newLDAP(t, e, dead))
		t.Cleanup(func() { dir.lookup.Store(real) })
		wantOAuthError(t, e.refresh(s.refresh), 503, "temporarily_unavailable")
		wantOAuthError(t, e.exchange(s.access), 503, "temporarily_unavailable")
		if ev, ok := e.lastEvent("auth.recheck"); !ok || ev.Outcome != "failure" {
			t.Errorf("auth.recheck: got %+v, want a failure", ev)
		}
		for name, tok := range map[string]string{"the user's access token": s.access, "the exchanged token": ex.str("access_token")} {
			if in := e.introspect(tok); in.body["active"] != true {
				t.Errorf("%s while the DC is down: got %v, want still active", name, in.body)
			}
		}
		// Nothing was revoked or used up: once the DC answers, the same
		// refresh token works.
		dir.lookup.Store(real)
		if r := e.refresh(s.refresh); r.status != 200 {
			t.Fatalf("refresh once the DC is back: got %d %v", r.status, r.body)
		}
	})

	t.Run("removed from allowed_groups", func(t *testing.T) {
		u := adUser(t, dc, "ag")
		s := e.session(t, u)
		removeMember(t, dc, "team-support", u)
		wantOAuthError(t, e.refresh(s.refresh), 400, "invalid_grant")
		if ev, ok := e.lastEvent("auth.recheck"); !ok || ev.Reason != "not_in_allowed_groups" {
			t.Errorf("auth.recheck: got %+v", ev)
		}
		if in := e.introspect(s.access); in.body["active"] != false {
			t.Errorf("access token: got %v, want inactive", in.body)
		}
	})
}

// A user locked in the directory who neither refreshes nor exchanges loses
// every token at the next periodic check (RecheckHolders, every
// DirectoryRecheckEvery under Run). While the directory says the user may
// still sign in, the periodic check records nothing.
func TestPeriodicRecheckEndsALockedUsersTokens(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	u := adUser(t, dc, "pr")
	s := e.session(t, u)
	ex := e.exchange(s.access)
	if ex.status != 200 {
		t.Fatalf("exchange: got %d %v", ex.status, ex.body)
	}
	rechecks := func() int {
		n := 0
		for _, x := range e.events() {
			if x.Type == "auth.recheck" {
				n++
			}
		}
		return n
	}
	before := rechecks()
	e.b.RecheckHolders(ctx)
	if n := rechecks(); n != before {
		t.Errorf("a periodic check the user passed recorded %d auth.recheck events, want none", n-before)
	}
	if in := e.introspect(ex.str("access_token")); in.body["active"] != true {
		t.Fatalf("exchanged token after a check the user passed: got %v", in.body)
	}
	if err := dc.Lock(ctx, u); err != nil {
		t.Fatal(err)
	}
	e.b.RecheckHolders(ctx)
	for name, tok := range map[string]string{"the user's access token": s.access, "the exchanged token": ex.str("access_token")} {
		if in := e.introspect(tok); in.status != 200 || in.body["active"] != false {
			t.Errorf("%s after the periodic check: got %d %v, want inactive", name, in.status, in.body)
		}
	}
	rev, ok := e.lastEvent("token.revoke")
	if !ok || rev.Details["user"] != u || rev.Reason != "directory_denied" || rev.Details["trigger"] != "directory_recheck" {
		t.Errorf("token.revoke: got %+v, want directory_denied for %s by directory_recheck", rev, u)
	}
	if ev, ok := e.lastEvent("auth.recheck"); !ok || ev.Outcome != "denied" || ev.Reason != "account_locked" {
		t.Errorf("auth.recheck: got %+v, want the denial recorded", ev)
	}
	wantOAuthError(t, e.refresh(s.refresh), 400, "invalid_grant")

	// After a restart, a user with a live session is checked too: the
	// broker that starts knows them from the stored sessions.
	u2 := adUser(t, dc, "pr")
	s2 := e.session(t, u2)
	restarted, err := New(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := dc.Lock(ctx, u2); err != nil {
		t.Fatal(err)
	}
	restarted.RecheckHolders(ctx)
	if _, err := restarted.Verify(ctx, s2.access, restarted.userAudience()); !errors.Is(err, ErrUserRevoked) {
		t.Errorf("a token issued before the restart, after the periodic check: got %v, want ErrUserRevoked", err)
	}
}
