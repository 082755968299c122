package broker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/samba"
)

// renameAccount renames an AD account (sAMAccountName, UPN and CN) without
// disabling it: a name change, the same person, the same objectGUID.
func renameAccount(t *testing.T, dc *samba.DC, from, to string) {
	t.Helper()
	adm, err := ldap.DialURL(dc.LDAPSURL(), ldap.DialWithTLSConfig(dc.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.Bind(dc.AdminDN, dc.AdminPass); err != nil {
		t.Fatal(err)
	}
	m := ldap.NewModifyRequest(dc.UserDN(from), nil)
	m.Replace("sAMAccountName", []string{to})
	m.Replace("userPrincipalName", []string{dc.UPN(to)})
	if err := adm.Modify(m); err != nil {
		t.Fatalf("renaming %s: %v", from, err)
	}
	if err := adm.ModifyDN(ldap.NewModifyDNRequest(dc.UserDN(from), "CN="+to, true, "")); err != nil {
		t.Fatalf("moving %s: %v", from, err)
	}
}

// renamedWithFreshLogin makes an account, a session under its name, then
// renames the account (still active), logs it in under the new name a few
// seconds later (exp has one-second resolution), and gives the old name to
// a new person. It returns the old name and both sessions.
func renamedWithFreshLogin(t *testing.T, e *env, dc *samba.DC, prefix string) (string, session, session) {
	t.Helper()
	u := adUser(t, dc, prefix)
	start := time.Now()
	e.clock.Set(start)
	old := e.session(t, u)
	renameAccount(t, dc, u, u+"x")
	e.clock.Set(start.Add(3 * time.Second))
	lg := e.login(u+"x", pw(u))
	if lg.status != 200 {
		t.Fatalf("login under the new name: got %d %v", lg.status, lg.body)
	}
	ctx := context.Background()
	if _, err := dc.AddUser(ctx, samba.User{Name: u, Password: pw(u + "2")}); err != nil {
		t.Fatal(err)
	}
	if err := dc.AddMembers(ctx, "team-support", u); err != nil {
		t.Fatal(err)
	}
	return u, old, session{u + "x", lg.str("access_token"), lg.str("refresh_token")}
}

// An account renamed and still active, that logged in again under its new
// name: the periodic check ends the tokens and the session it holds under
// the old name (now someone else's), and only those; its session under
// the new name lives on, also after the old-name session is refreshed.
func TestRenamedAccountLosesOnlyItsOldNameTokens(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	u, old, fresh := renamedWithFreshLogin(t, e, dc, "rn")
	ex := e.exchange(old.access)
	// Refused: the exchange asks the directory about the old name.
	wantOAuthError(t, ex, 400, "invalid_grant")
	rev, ok := e.lastEvent("token.revoke")
	if !ok || rev.Target != RevokeAccountName || rev.Details["reason"] != "directory: account_renamed" ||
		rev.Details["user"] != u || rev.Details["account_id"] == "" || rev.Details["sessions"] != "1" {
		t.Errorf("token.revoke: got %+v", rev)
	}

	for range 2 {
		e.b.RecheckHolders(ctx)
	}
	if in := e.introspect(old.access); in.body["active"] != false {
		t.Errorf("the token issued under the old name %q: got %v, want inactive", u, in.body)
	}
	wantOAuthError(t, e.refresh(old.refresh), 400, "invalid_grant")
	if in := e.introspect(fresh.access); in.body["active"] != true {
		t.Errorf("the account's token under its new name %q: got %v, want active", fresh.user, in.body)
	}
	r := e.refresh(fresh.refresh)
	if r.status != 200 {
		t.Fatalf("refresh of the session under the new name: got %d %v", r.status, r.body)
	}
	if ex := e.exchange(r.str("access_token")); ex.status != 200 {
		t.Errorf("exchange under the new name: got %d %v", ex.status, ex.body)
	}
	// The new person who has the old name logs in and keeps the session.
	lg := e.login(u, pw(u+"2"))
	if lg.status != 200 {
		t.Fatalf("the new %s's login: got %d %v", u, lg.status, lg.body)
	}
	e.b.RecheckHolders(ctx)
	if in := e.introspect(lg.str("access_token")); in.body["active"] != true {
		t.Errorf("the new %s's token: got %v, want active", u, in.body)
	}
}

// The same with the periodic check as the only trigger: no exchange and
// no refresh; the tokens under the old name end at the first round.
func TestPeriodicCheckEndsTheOldNameTokensOfARenamedAccount(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	u, old, fresh := renamedWithFreshLogin(t, e, dc, "rp")
	e.b.RecheckHolders(ctx)
	if in := e.introspect(old.access); in.body["active"] != false {
		t.Errorf("the token issued under the old name %q: got %v, want inactive", u, in.body)
	}
	if in := e.introspect(fresh.access); in.body["active"] != true {
		t.Errorf("the account's token under its new name: got %v, want active", in.body)
	}
	rev, ok := e.lastEvent("token.revoke")
	if !ok || rev.Target != RevokeAccountName || rev.Details["trigger"] != "directory_recheck" {
		t.Errorf("token.revoke: got %+v", rev)
	}
}

// After a restart the broker holds both names of a renamed account from
// its stored sessions, and a periodic round ends only the old one.
func TestRenamedAccountAfterRestart(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	u, old, fresh := renamedWithFreshLogin(t, e, dc, "rr")
	b2, err := New(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	b2.RecheckHolders(ctx)
	if _, err := b2.Verify(ctx, fresh.access, b2.userAudience()); err != nil {
		t.Errorf("after a restart and a periodic round, the login under the new name %q: %v", fresh.user, err)
	}
	if _, err := b2.Verify(ctx, old.access, b2.userAudience()); err == nil {
		t.Errorf("after a restart and a periodic round, the token under the old name %q is still accepted", u)
	}
}

// A restart still checks every account that was issued a token that may be
// live, although it has no session left: here the user logged out (the
// refresh token revoked, RFC 7009) and an agent still holds an exchanged
// token for them. The account is disabled after the restart; the periodic
// round refuses the agent's token.
func TestExchangedTokenRecheckedAfterRestart(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	u := adUser(t, dc, "rs")
	s := e.session(t, u)
	ex := e.exchange(s.access)
	if ex.status != 200 {
		t.Fatal(ex.body)
	}
	if r := e.httpsPost("/oauth2/revoke", map[string][]string{"token": {s.refresh}}); r.status != 200 {
		t.Fatalf("revoke: %d %v", r.status, r.body)
	}
	b2, err := New(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := dc.Disable(ctx, u); err != nil {
		t.Fatal(err)
	}
	b2.RecheckHolders(ctx)
	if p, err := b2.Verify(ctx, ex.str("access_token"), b2.ToolAudience()); !errors.Is(err, ErrUserRevoked) {
		t.Errorf("after a restart and a periodic round, the agent's exchanged token for the disabled %s: got %+v %v, want ErrUserRevoked", u, p, err)
	}
	// Its record is gone with its tokens: the next start does not ask again.
	held, err := e.store.Holders(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range held {
		if h.Name == u {
			t.Errorf("the holder record of %s outlived the revocation of its tokens: %+v", u, h)
		}
	}
}

// After offboarding gives a name to a new person, the trail tells the two
// accounts apart: every login, recheck and token event of a user carries
// the account id, and introspection answers it as oid.
func TestAuditAndIntrospectionNameTheAccount(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	u := adUser(t, dc, "au")
	s := e.session(t, u)
	if ex := e.exchange(s.access); ex.status != 200 {
		t.Fatal(ex.body)
	}
	oldID, _ := e.introspect(s.access).body["oid"].(string)
	offboard(t, dc, u)
	lg := e.login(u, pw(u+"2"))
	if lg.status != 200 {
		t.Fatal(lg.body)
	}
	if ex := e.exchange(lg.str("access_token")); ex.status != 200 {
		t.Fatal(ex.body)
	}
	newID, _ := e.introspect(lg.str("access_token")).body["oid"].(string)
	if oldID == "" || newID == "" || oldID == newID {
		t.Fatalf("introspection oid: the old %s %q, the new %q, want two different ids", u, oldID, newID)
	}
	e.b.RecheckHolders(ctx)
	ids := map[string]map[string]bool{} // event type -> account ids
	for _, ev := range e.events() {
		if ev.Actor.User != u && ev.Details["user"] != u {
			continue
		}
		switch ev.Type {
		case "auth.login", "auth.recheck", "token.issue", "token.exchange", "token.refresh", "token.deny", "token.revoke":
		default:
			continue
		}
		id := ev.Details["account_id"]
		if id != oldID && id != newID {
			t.Errorf("%s (%s %s): account_id %q, want one of the two accounts'", ev.Type, ev.Outcome, ev.Reason, id)
		}
		if ids[ev.Type] == nil {
			ids[ev.Type] = map[string]bool{}
		}
		ids[ev.Type][id] = true
	}
	for typ, want := range map[string]int{"auth.login": 2, "token.issue": 2, "token.exchange": 2, "auth.recheck": 2, "token.revoke": 1} {
		if len(ids[typ]) != want {
			t.Errorf("%s events: got the accounts %v, want %d", typ, ids[typ], want)
		}
	}
	if !ids["token.revoke"][oldID] {
		t.Errorf("token.revoke: got the accounts %v, want the old one %s", ids["token.revoke"], oldID)
	}
}

// The kill switch by account id reaches every token and session of a
// renamed account, under its old name and its new one, and leaves the new
// person who has its old name alone; by name, it says which accounts held
// tokens under the name.
func TestRevokeAccountReachesEveryName(t *testing.T) {
	dc := sharedDC(t)
	ctx := context.Background()
	e := newSambaEnv(t, dc)
	u, old, fresh := renamedWithFreshLogin(t, e, dc, "ks")
	id, _ := e.introspect(fresh.access).body["oid"].(string)
	e.clock.Set(time.Now().Add(5 * time.Second))
	lg := e.login(u, pw(u+"2")) // the new person with the old name
	if lg.status != 200 {
		t.Fatalf("the new %s's login: got %d %v", u, lg.status, lg.body)
	}
	other, _ := e.introspect(lg.str("access_token")).body["oid"].(string)

	byName, err := e.b.RevokeUser(ctx, "nobody-"+u, audit.Actor{})
	if err != nil || len(byName.AccountIDs) != 0 {
		t.Fatalf("revoke --user of an unused name: got %+v %v", byName, err)
	}
	e.clock.Set(time.Now().Add(6 * time.Second))
	res, err := e.b.RevokeAccount(ctx, strings.ToUpper(id), audit.Actor{})
	if err != nil || res.SessionsEnded != 2 || !res.HeldLiveToken || !slices.Equal(res.Names, []string{u, u + "x"}) {
		t.Fatalf("revoke --account %s: got %+v %v, want 2 sessions ended under the names %s and %sx", id, res, err, u, u)
	}
	for name, tok := range map[string]string{"old name": old.access, "new name": fresh.access} {
		if in := e.introspect(tok); in.body["active"] != false {
			t.Errorf("the account's token under its %s: got %v, want inactive", name, in.body)
		}
	}
	wantOAuthError(t, e.refresh(fresh.refresh), 400, "invalid_grant")
	if in := e.introspect(lg.str("access_token")); in.body["active"] != true {
		t.Errorf("the new %s (%s): got %v, want active", u, other, in.body)
	}
	rev, ok := e.lastEvent("broker.revoke")
	if !ok || rev.Target != RevokeAccount || rev.Details["account_id"] != id {
		t.Errorf("broker.revoke: got %+v", rev)
	}
	if _, err := e.b.RevokeAccount(ctx, "x)(uid=*", audit.Actor{}); err == nil {
		t.Errorf("revoke --account of a malformed id: no error")
	}
	// By name: the old name was held by two accounts.
	e.clock.Set(time.Now().Add(7 * time.Second))
	byName, err = e.b.RevokeUser(ctx, u, audit.Actor{})
	want := []string{id, other}
	slices.Sort(want)
	if err != nil || !slices.Equal(byName.AccountIDs, want) {
		t.Errorf("revoke --user %s: got %+v %v, want the account ids %v", u, byName, err, want)
	}
}
