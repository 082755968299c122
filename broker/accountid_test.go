package broker

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/internal/testenv/samba"
)

// offboard does to an AD account what offboarding does: renames it (CN,
// sAMAccountName, UPN) to name+"-left" and disables it; then the name goes
// to a new person, in team-support like the old one, with password
// pw(name+"2").
func offboard(t *testing.T, dc *samba.DC, name string) {
	t.Helper()
	ctx := context.Background()
	adm, err := ldap.DialURL(dc.LDAPSURL(), ldap.DialWithTLSConfig(dc.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.Bind(dc.AdminDN, dc.AdminPass); err != nil {
		t.Fatal(err)
	}
	left := name + "-left"
	m := ldap.NewModifyRequest(dc.UserDN(name), nil)
	m.Replace("sAMAccountName", []string{left})
	m.Replace("userPrincipalName", []string{dc.UPN(left)})
	if err := adm.Modify(m); err != nil {
		t.Fatalf("renaming %s: %v", name, err)
	}
	if err := adm.ModifyDN(ldap.NewModifyDNRequest(dc.UserDN(name), "CN="+left, true, "")); err != nil {
		t.Fatalf("moving %s: %v", name, err)
	}
	if err := dc.Disable(ctx, left); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.AddUser(ctx, samba.User{Name: name, Password: pw(name + "2")}); err != nil {
		t.Fatal(err)
	}
	if err := dc.AddMembers(ctx, "team-support", name); err != nil {
		t.Fatal(err)
	}
}

// A disabled and renamed account whose name went to a new person loses
// its sessions and tokens, at the periodic check, at refresh and at token
// exchange alike, although the name now passes every check; the new
// person's own session is untouched.
func TestRenamedAccountsSessionsEndWhenItsNameIsReused(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	for _, trigger := range []string{"directory_recheck", GrantRefreshToken, GrantTokenExchange} {
		t.Run(trigger, func(t *testing.T) {
			u := adUser(t, dc, "ob")
			s := e.session(t, u)
			ex := e.exchange(s.access)
			if ex.status != 200 {
				t.Fatalf("exchange before offboarding: got %d %v", ex.status, ex.body)
			}
			offboard(t, dc, u)
			// The new person logs in first: their session and tokens
			// must survive the old account's revocation.
			lg := e.login(u, pw(u+"2"))
			if lg.status != 200 {
				t.Fatalf("the new %s's login: got %d %v", u, lg.status, lg.body)
			}
			fresh := session{u, lg.str("access_token"), lg.str("refresh_token")}

			switch trigger {
			case "directory_recheck":
				e.b.RecheckHolders(ctx)
			case GrantRefreshToken:
				wantOAuthError(t, e.refresh(s.refresh), 400, "invalid_grant")
			case GrantTokenExchange:
				wantOAuthError(t, e.exchange(s.access), 400, "invalid_grant")
			}
			for name, tok := range map[string]string{"the old account's access token": s.access, "its exchanged token": ex.str("access_token")} {
				if in := e.introspect(tok); in.status != 200 || in.body["active"] != false {
					t.Errorf("%s: got %d %v, want inactive", name, in.status, in.body)
				}
			}
			wantOAuthError(t, e.refresh(s.refresh), 400, "invalid_grant")
			rev, ok := e.lastEvent("token.revoke")
			if !ok || rev.Reason != "directory_denied" || rev.Details["user"] != u || rev.Details["trigger"] != trigger ||
				rev.Details["reason"] != "directory: account_disabled" || rev.Details["sessions"] != "1" || rev.Details["account_id"] == "" {
				t.Errorf("token.revoke: got %+v", rev)
			}

			if in := e.introspect(fresh.access); in.body["active"] != true {
				t.Errorf("the new %s's token: got %v, want active", u, in.body)
			}
			r := e.refresh(fresh.refresh)
			if r.status != 200 {
				t.Fatalf("the new %s's refresh: got %d %v", u, r.status, r.body)
			}
			if ex := e.exchange(r.str("access_token")); ex.status != 200 {
				t.Errorf("the new %s's exchange: got %d %v", u, ex.status, ex.body)
			}
		})
	}
}

// With login_attributes = ["userPrincipalName"] users log in with their
// UPN, and the periodic check, refresh and exchange keep their sessions
// alive: the recheck finds the account by its id.
func TestUPNOnlyLoginKeepsSessions(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newEnv(t, nil)
	cfg := ldapConfig(dc)
	cfg.LoginAttributes = []string{"userPrincipalName"}
	e.opts.Auth = FromLDAP(newLDAP(t, e, cfg))
	var err error
	if e.b, err = New(ctx, e.opts); err != nil {
		t.Fatal(err)
	}
	e.serveHTTPS()
	e.serveSocket()
	u := adUser(t, dc, "upn")
	lg := e.login(dc.UPN(u), pw(u))
	if lg.status != 200 {
		t.Fatalf("login with the UPN: got %d %v", lg.status, lg.body)
	}
	for range 2 {
		e.b.RecheckHolders(ctx)
	}
	if in := e.introspect(lg.str("access_token")); in.body["active"] != true || in.str("sub") != u {
		t.Fatalf("the token after the periodic check: got %v, want active for %s", in.body, u)
	}
	r := e.refresh(lg.str("refresh_token"))
	if r.status != 200 {
		t.Fatalf("refresh: got %d %v", r.status, r.body)
	}
	if ex := e.exchange(r.str("access_token")); ex.status != 200 {
		t.Fatalf("exchange: got %d %v", ex.status, ex.body)
	}
	if ev, ok := e.lastEvent("token.revoke"); ok {
		t.Errorf("a session was revoked: %+v", ev)
	}

	// A restarted broker knows the session's account from the store, by
	// its id, and keeps it too.
	restarted, err := New(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	restarted.RecheckHolders(ctx)
	if _, err := restarted.Verify(ctx, r.str("access_token"), restarted.userAudience()); err != nil {
		t.Errorf("the token after a restart and a periodic check: %v", err)
	}
}

// A session stored before account ids were kept cannot be tied to an
// account any more (the name may be someone else's now): at the first
// periodic check or refresh it ends, audited, without asking the directory
// by name; its tokens, which carry no account id, are refused from the
// start (an exchange of one too); the same user's new login after the
// start is not touched.
func TestSessionWithoutAccountIDEnds(t *testing.T) {
	for _, trigger := range []string{"directory_recheck", GrantRefreshToken, GrantTokenExchange} {
		t.Run(trigger, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, nil)
			start := time.Now().Truncate(time.Second)
			// What an earlier version stored: a session with no user_id.
			legacy := "legacy-refresh-token-0123456789abcdef"
			if err := e.store.PutRefresh(ctx, RefreshToken{Hash: hashRefresh(legacy), Family: newID(), User: "alice",
				Groups: []string{"ai-users"}, Scopes: []string{"tickets:read"}, Issued: start.Add(-time.Hour), Expires: start.Add(7 * time.Hour)}); err != nil {
				t.Fatal(err)
			}
			e.clock.Set(start)
			auth := &perUserAuth{staticAuth: e.opts.Auth.(staticAuth)}
			e.opts.Auth = auth
			var err error
			if e.b, err = New(ctx, e.opts); err != nil {
				t.Fatal(err)
			}
			e.serveHTTPS()
			e.serveSocket()
			// An access token of that session, as the earlier version
			// signed it: no oid.
			old, oe := e.b.userToken(ctx, &request{grant: GrantRefreshToken}, "token.refresh", Account{Name: "alice"},
				[]string{"ai-users", "helpdesk"}, []string{"tickets:read"}, "")
			if oe != nil {
				t.Fatal(oe)
			}
			e.clock.Set(start.Add(2 * time.Second))
			lg := e.login("alice", "alice-pw")
			if lg.status != 200 {
				t.Fatalf("login: got %d %v", lg.status, lg.body)
			}

			asked := 0
			switch trigger {
			case "directory_recheck":
				e.b.RecheckHolders(ctx)
				asked = 1 // the new session, by its id
			case GrantRefreshToken:
				wantOAuthError(t, e.refresh(legacy), 400, "invalid_grant")
			case GrantTokenExchange:
				// The token without an account id is refused as such;
				// its session ends at the periodic check.
				wantOAuthError(t, e.exchange(old.AccessToken), 400, "invalid_grant")
				e.b.RecheckHolders(ctx)
				asked, trigger = 1, "directory_recheck"
			}
			rev, ok := e.lastEvent("token.revoke")
			if !ok || rev.Reason != deniedNoAccountID || rev.Details["user"] != "alice" || rev.Details["sessions"] != "1" ||
				rev.Details["trigger"] != trigger {
				t.Errorf("token.revoke: got %+v, want the session without an account id ended", rev)
			}
			wantOAuthError(t, e.refresh(legacy), 400, "invalid_grant")
			if in := e.introspect(old.AccessToken); in.body["active"] != false {
				t.Errorf("the old session's access token: got %v, want inactive", in.body)
			}
			if len(auth.asked) != asked {
				t.Errorf("the directory was asked about %v, want %d (never by the old session's name)", auth.asked, asked)
			}
			if in := e.introspect(lg.str("access_token")); in.body["active"] != true {
				t.Errorf("alice's login after the start: got %v, want active", in.body)
			}
			if r := e.refresh(lg.str("refresh_token")); r.status != 200 {
				t.Errorf("alice's refresh after the start: got %d %v", r.status, r.body)
			}
		})
	}
}

// A login whose identity has no account id is refused: its session could
// not be told from a later account's of the same name.
func TestLoginWithoutAccountIDRefused(t *testing.T) {
	e := newEnv(t, nil)
	auth := e.opts.Auth.(staticAuth)
	auth["noid"] = struct {
		password string
		id       Identity
	}{"noid-pw", Identity{Username: "noid", Groups: []string{"ai-users"}, Roles: []string{"chat-user"}}}
	var err error
	if e.b, err = New(context.Background(), e.opts); err != nil {
		t.Fatal(err)
	}
	e.serveHTTPS()
	e.serveSocket()
	wantOAuthError(t, e.httpsPost("/v1/login", url.Values{"username": {"noid"}, "password": {"noid-pw"}}), 500, "server_error")
}

// A user token signed by a version that kept no account id, whose user has
// no session left (logged out; an agent may still hold exchanged tokens),
// is refused after the upgrade, although no stored session names the user
// for the periodic check: the account it was issued to cannot be told any
// more, and its name may be someone else's by now.
func TestTokenWithoutAccountIDRefusedAfterUpgrade(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	u := adUser(t, dc, "mg")
	// What the previous version issued: a user token without oid, and no
	// session (refresh family) left for its user.
	old, oe := e.b.userToken(ctx, &request{grant: "password"}, "token.issue", Account{Name: u},
		[]string{"ai-users"}, []string{"tickets:read"}, "")
	if oe != nil {
		t.Fatal(oe)
	}
	b2, err := New(ctx, e.opts) // the upgrade: a restart
	if err != nil {
		t.Fatal(err)
	}
	offboard(t, dc, u)
	for _, round := range []int{0, 1} {
		if round > 0 {
			b2.RecheckHolders(ctx)
		}
		if p, err := b2.Verify(ctx, old.AccessToken, b2.userAudience()); !errors.Is(err, ErrUserRevoked) {
			t.Errorf("after %d periodic rounds, the token without an account id of the offboarded %s: got %+v %v, want ErrUserRevoked", round, u, p, err)
		}
	}
	// The new holder of the name logs in and is not touched.
	lg := e.login(u, pw(u+"2"))
	if lg.status != 200 {
		t.Fatalf("the new %s's login: got %d %v", u, lg.status, lg.body)
	}
	if _, err := e.b.Verify(ctx, lg.str("access_token"), e.b.userAudience()); err != nil {
		t.Errorf("the new %s's token: %v", u, err)
	}
}
