package ldapauth

import (
	"context"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/internal/testenv/samba"
	"github.com/applianced/applianced/internal/testenv/slapd"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// adAdmin is an LDAPS connection bound as the DC's Administrator.
func adAdmin(t *testing.T) *ldap.Conn {
	t.Helper()
	c, err := ldap.DialURL(dc.LDAPSURL(), ldap.DialWithTLSConfig(dc.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Bind(dc.AdminDN, dc.AdminPass); err != nil {
		t.Fatal(err)
	}
	return c
}

// offboard does to an AD account what offboarding does: renames it (CN,
// sAMAccountName and UPN) to to, and disables it when disable is set.
func offboard(t *testing.T, from, to string, disable bool) {
	t.Helper()
	adm := adAdmin(t)
	m := ldap.NewModifyRequest(dc.UserDN(from), nil)
	m.Replace("sAMAccountName", []string{to})
	m.Replace("userPrincipalName", []string{dc.UPN(to)})
	if err := adm.Modify(m); err != nil {
		t.Fatalf("renaming %s: %v", from, err)
	}
	if err := adm.ModifyDN(ldap.NewModifyDNRequest(dc.UserDN(from), "CN="+ldap.EscapeDN(to), true, "")); err != nil {
		t.Fatalf("moving %s to CN=%s: %v", from, to, err)
	}
	if disable {
		if err := dc.Disable(context.Background(), to); err != nil {
			t.Fatal(err)
		}
	}
}

// A recheck asks about the account that logged in, by its objectGUID, not
// about whoever has its name now: offboarding renames (and disables) the
// old account and gives the name to a new person, and the old account's
// sessions must not pass as the new one's, nor pick up its groups.
func TestLookupByAccountIDAfterTheNameIsReused(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	tests := []struct {
		name    string
		disable bool
		remove  bool   // delete the old account instead of renaming it
		want    Reason // of the recheck of the old account's session
	}{
		{name: "renamed and disabled", disable: true, want: ReasonAccountDisabled},
		{name: "renamed only", want: ReasonAccountRenamed},
		{name: "deleted", remove: true, want: ReasonUserNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, j := newAuth(t, adConfig(func(c *Config) { c.AllowedGroups = []string{"ai-users", "helpdesk"} }), nil)
			u := freshUser(t, "ren")
			if err := dc.AddMembers(ctx, "helpdesk", u); err != nil {
				t.Fatal(err)
			}
			old, out, err := a.Login(ctx, Request{Username: u, Password: pw(u)})
			if err != nil || !out.OK {
				t.Fatalf("login of the first %s: %+v %v", u, out, err)
			}
			if !uuidRE.MatchString(old.ID) {
				t.Fatalf("Identity.ID: got %q, want a lowercase UUID", old.ID)
			}
			guid, err := dc.Attr(ctx, u, "objectGUID")
			if err != nil || len(guid) != 1 || guidString([]byte(guid[0])) != old.ID {
				t.Fatalf("Identity.ID %q is not the account's objectGUID (%x, %v)", old.ID, guid, err)
			}
			if _, out, err := a.Lookup(ctx, LookupRequest{Username: u, ID: old.ID}); err != nil || !out.OK {
				t.Fatalf("lookup by id before the change: %+v %v", out, err)
			}

			if tt.remove {
				if err := adAdmin(t).Del(ldap.NewDelRequest(dc.UserDN(u), nil)); err != nil {
					t.Fatal(err)
				}
			} else {
				offboard(t, u, u+"-left", tt.disable)
			}
			// The name goes to someone else, in the same place (the same DN),
			// who is in none of the old account's groups but ai-users.
			if _, err := dc.AddUser(ctx, samba.User{Name: u, Password: pw(u) + "2"}); err != nil {
				t.Fatal(err)
			}
			if err := dc.AddMembers(ctx, "ai-users", u); err != nil {
				t.Fatal(err)
			}

			id, out, err := a.Lookup(ctx, LookupRequest{Username: u, ID: old.ID})
			if err != nil || out.OK || out.Reason != tt.want {
				t.Fatalf("recheck of the old account's session: got ok=%v reason=%q err=%v (groups %v), want %s",
					out.OK, out.Reason, err, groupNames(id.Groups), tt.want)
			}
			if _, out, err := a.Lookup(ctx, LookupRequest{Username: u + "-left", ID: old.ID}); !tt.remove && !tt.disable && (err != nil || !out.OK) {
				t.Errorf("recheck of the renamed account under its name now: got %+v %v, want it allowed", out, err)
			}
			if _, out, err := a.Lookup(ctx, LookupRequest{Username: u, ID: old.ID, Periodic: true}); err != nil || out.OK {
				t.Fatalf("periodic recheck of the old account: got %+v %v, want a refusal", out, err)
			}
			// The refusal names the account, and for a rename where it
			// is now and the name it goes by.
			evs := events(t, j)
			ev := evs[len(evs)-1].Event
			if ev.Type != "auth.recheck" || ev.Details["account_id"] != old.ID {
				t.Errorf("auth.recheck: got %+v, want account_id %s", ev, old.ID)
			}
			if tt.want == ReasonAccountRenamed && (ev.Target != dc.UserDN(u+"-left") || ev.Details["name_now"] != u+"-left") {
				t.Errorf("auth.recheck of the renamed account: got target %q name_now %q, want %q %q",
					ev.Target, ev.Details["name_now"], dc.UserDN(u+"-left"), u+"-left")
			}

			// The new person is a different account, with only their own
			// groups, none cached from the old account under the same DN.
			nu, out, err := a.Login(ctx, Request{Username: u, Password: pw(u) + "2"})
			if err != nil || !out.OK {
				t.Fatalf("login of the new %s: %+v %v", u, out, err)
			}
			if nu.ID == old.ID || !uuidRE.MatchString(nu.ID) {
				t.Errorf("the new account's id: got %q, the old one's was %q", nu.ID, old.ID)
			}
			// Both logins are told apart in the trail by the account id.
			var logins []string
			for _, e := range events(t, j) {
				if e.Event.Type == "auth.login" && e.Event.Outcome == "success" {
					logins = append(logins, e.Event.Details["account_id"])
				}
			}
			if !slices.Equal(logins, []string{old.ID, nu.ID}) {
				t.Errorf("auth.login account_id: got %v, want %v", logins, []string{old.ID, nu.ID})
			}
			if got := groupNames(nu.Groups); slices.Contains(got, "helpdesk") {
				t.Errorf("the new account got the old one's groups: %v", got)
			}
			if _, out, err := a.Lookup(ctx, LookupRequest{Username: u, ID: nu.ID}); err != nil || !out.OK {
				t.Errorf("recheck of the new account: %+v %v", out, err)
			}
		})
	}
}

// With login_attributes = ["userPrincipalName"] the identity's name is
// still the sAMAccountName; the recheck finds the account by its id, so
// sessions live on, and a lookup by that name finds it too.
func TestLookupWithUPNOnlyLoginAttributes(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	a, _ := newAuth(t, adConfig(func(c *Config) { c.LoginAttributes = []string{"userPrincipalName"} }), nil)
	id, out, err := a.Login(ctx, Request{Username: "alice@corp.example", Password: pw("alice")})
	if err != nil || !out.OK || id.Username != "alice" {
		t.Fatalf("login: got %+v %+v %v", id, out, err)
	}
	for _, r := range []LookupRequest{{Username: id.Username, ID: id.ID}, {Username: id.Username}} {
		lid, out, err := a.Lookup(ctx, r)
		if err != nil || !out.OK || lid.ID != id.ID || !slices.Contains(lid.Roles, "chat-user") {
			t.Errorf("lookup %+v: got %+v %+v %v", r, lid, out, err)
		}
	}
}

// An id that is not a UUID is refused before any filter is built.
func TestLookupRefusesAMalformedID(t *testing.T) {
	needDC(t)
	a, j := newAuth(t, adConfig(nil), nil)
	for _, bad := range []string{"*", "x)(objectClass=*", "6f1c0000-0000-0000-0000-00000000000", "6f1c0000-0000-0000-0000-00000000000g", `\2a`} {
		_, out, err := a.Lookup(context.Background(), LookupRequest{Username: "alice", ID: bad})
		if err != nil || out.OK || out.Reason != ReasonInvalidAccountID {
			t.Errorf("id %q: got %+v %v, want invalid_account_id", bad, out, err)
		}
	}
	if evs := events(t, j); len(evs) != 5 || evs[0].Event.Reason != string(ReasonInvalidAccountID) {
		t.Errorf("audit: got %d events, want 5 invalid_account_id rechecks", len(evs))
	}
}

// TestAccountIDForms: objectGUID bytes and their Windows string form,
// entryUUID strings, and the filters built from them.
func TestAccountIDForms(t *testing.T) {
	raw := []byte{0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	const guid = "00112233-4455-6677-8899-aabbccddeeff"
	if got := guidString(raw); got != guid {
		t.Errorf("guidString: got %q, want %q", got, guid)
	}
	const both = `(|(objectGUID=\33\22\11\00\55\44\77\66\88\99\aa\bb\cc\dd\ee\ff)(entryUUID=00112233-4455-6677-8899-aabbccddeeff))`
	for _, id := range []string{guid, "00112233-4455-6677-8899-AABBCCDDEEFF"} {
		got, err := idFilter(id)
		if err != nil || got != both {
			t.Errorf("idFilter(%s): got %q %v, want %q", id, got, err, both)
		}
	}
	tests := []struct {
		name  string
		attrs map[string][]string
		want  string // "" for an error
	}{
		{"entryUUID", map[string][]string{"entryUUID": {"00112233-4455-6677-8899-AABBCCDDEEFF"}}, guid},
		{"objectGUID", map[string][]string{"objectGUID": {string(raw)}}, guid},
		{"objectGUID first", map[string][]string{"objectGUID": {string(raw)}, "entryUUID": {"ffffffff-4455-6677-8899-aabbccddeeff"}}, guid},
		{"short objectGUID", map[string][]string{"objectGUID": {string(raw[:15])}, "entryUUID": {guid}}, ""},
		{"neither", nil, ""},
	}
	for _, tt := range tests {
		got, err := accountID(ldap.NewEntry("uid=x", tt.attrs))
		if tt.want == "" && err == nil || tt.want != "" && (err != nil || got != tt.want) {
			t.Errorf("accountID(%s): got %q %v, want %q", tt.name, got, err, tt.want)
		}
	}
}

// AD keeps memberOf natively, so group_mode memberof is a valid choice
// against it: the account id is still its objectGUID, which the directory
// has whatever the mode, and the recheck finds the account by it.
func TestMemberOfModeAgainstAD(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.GroupMode = GroupModeMemberOf
		c.LoginAttributes = []string{"sAMAccountName"}
		c.UserFilter = "(objectClass=user)"
	}), nil)
	id, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")})
	if err != nil || !out.OK {
		t.Fatalf("login in memberof mode on AD: got %+v %v", out, err)
	}
	guid, err := dc.Attr(ctx, "alice", "objectGUID")
	if err != nil || len(guid) != 1 || guidString([]byte(guid[0])) != id.ID {
		t.Errorf("Identity.ID %q is not alice's objectGUID (%x, %v)", id.ID, guid, err)
	}
	if got := groupNames(id.Groups); !slices.Contains(got, "ai-users") {
		t.Errorf("groups: got %v, want ai-users among them", got)
	}
	if _, out, err := a.Lookup(ctx, LookupRequest{Username: id.Username, ID: id.ID}); err != nil || !out.OK {
		t.Errorf("lookup by id in memberof mode: got %+v %v", out, err)
	}
}

// The same on OpenLDAP, with entryUUID: a uid renamed (modrdn) and given
// to a new entry at the old DN.
func TestOpenLDAPLookupByAccountID(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startSlapd(t, ctx)
	if err := s.AddUser(ctx, "alice", pw("alice"), 10001); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{
		URLs: []string{s.URL}, CAFile: s.CAFile,
		BindDN: slapd.ServiceDN, BindPasswordSecret: "slapd-svc",
		UserBase: slapd.PeopleDN, GroupBase: slapd.GroupsDN, GroupMode: GroupModePosix,
	}, Options{Audit: newJournal(t), BindPassword: func(context.Context, string) ([]byte, error) {
		return []byte(s.ServicePassword), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	old, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")})
	if err != nil || !out.OK || !uuidRE.MatchString(old.ID) {
		t.Fatalf("login: got %+v %+v %v, want an entryUUID id", old, out, err)
	}
	adm, err := ldap.DialURL(s.URL, ldap.DialWithTLSConfig(s.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.Bind(slapd.AdminDN, s.AdminPassword); err != nil {
		t.Fatal(err)
	}
	if err := adm.ModifyDN(ldap.NewModifyDNRequest(s.UserDN("alice"), "uid=alice-left", true, "")); err != nil {
		t.Fatal(err)
	}
	if err := s.AddUser(ctx, "alice", pw("alice")+"2", 10002); err != nil {
		t.Fatal(err)
	}
	if _, out, err := a.Lookup(ctx, LookupRequest{Username: "alice", ID: old.ID}); err != nil || out.OK || out.Reason != ReasonAccountRenamed {
		t.Errorf("recheck of the renamed account's session: got %+v %v, want account_renamed", out, err)
	}
	nu, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice") + "2"})
	if err != nil || !out.OK || nu.ID == old.ID {
		t.Fatalf("the new alice: got %+v %+v %v", nu, out, err)
	}
	if _, out, err := a.Lookup(ctx, LookupRequest{Username: "alice", ID: nu.ID}); err != nil || !out.OK {
		t.Errorf("recheck of the new alice: got %+v %v", out, err)
	}
}
