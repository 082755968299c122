package broker

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/samba"
	"github.com/applianced/applianced/ldapauth"
)

// TestEndToEndSambaAD: a user of a real Samba AD domain logs in over
// HTTPS, the agent exchanges the user's token on the agent socket, and
// introspection shows the agent as the actor. A user outside the agent's
// act_for_groups (resolved through nested groups) is refused.
func TestEndToEndSambaAD(t *testing.T) {
	if err := samba.Available(); err != nil {
		t.Skipf("no Samba AD DC can run here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dc, err := samba.Start(ctx, samba.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dc.Stop)
	const svc, svcPass = "svc-applianced", "Svc-pass-9z!Q"
	pw := func(u string) string { return "Pw-" + u + "-7x!Q" }
	for _, u := range []samba.User{{Name: svc, Password: svcPass}, {Name: "carl", Password: pw("carl")}, {Name: "dana", Password: pw("dana")}} {
		if _, err := dc.AddUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	// carl ∈ team-support ∈ helpdesk ∈ ai-users; dana ∈ ai-users only.
	for _, g := range []struct {
		name    string
		members []string
	}{{"team-support", []string{"carl"}}, {"helpdesk", []string{"team-support"}}, {"ai-users", []string{"helpdesk", "dana"}}} {
		if _, err := dc.AddGroup(ctx, g.name, g.members...); err != nil {
			t.Fatal(err)
		}
	}

	e := newEnv(t, nil)
	la, err := ldapauth.New(ldapauth.Config{
		URLs: []string{dc.LDAPSURL()}, CAFile: dc.CAFile, ServerName: dc.Hostname,
		BindDN: dc.UserDN(svc), BindPasswordSecret: "ldap-bind", UserBase: dc.BaseDN,
		GroupMode: ldapauth.GroupModeAD, AllowedGroups: []string{"ai-users"},
		GroupRoles: map[string][]string{"ai-users": {"chat-user"}},
	}, ldapauth.Options{Audit: e.j, BindPassword: func(ctx context.Context, name string) ([]byte, error) {
		if name != "ldap-bind" {
			return nil, fmt.Errorf("no secret %q", name)
		}
		return []byte(svcPass), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { la.Close() })
	e.opts.Auth = FromLDAP(la)
	if e.b, err = New(ctx, e.opts); err != nil {
		t.Fatal(err)
	}
	e.serveHTTPS()
	e.serveSocket()

	exchange := func(userTok string) answer {
		return e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {userTok},
			"subject_token_type": {tokenTypeAccess}})
	}

	lg := e.login("carl", pw("carl"))
	if lg.status != 200 {
		t.Fatalf("carl's login: got %d %v", lg.status, lg.body)
	}
	ex := exchange(lg.str("access_token"))
	if ex.status != 200 {
		t.Fatalf("exchange for carl: got %d %v", ex.status, ex.body)
	}
	in := e.socketPost("/oauth2/introspect", url.Values{"token": {ex.str("access_token")}})
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
	wantOAuthError(t, exchange(lg.str("access_token")), 400, "unauthorized_client")

	wantOAuthError(t, e.login("carl", "wrong-password"), 400, "invalid_grant")
	if ev, ok := e.lastEvent("auth.login"); !ok || ev.Outcome != "denied" {
		t.Fatalf("the wrong password was not recorded as a denial: %+v", ev)
	}
}
