package ldapauth

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// TestLookupAccountStates: the password-less lookup sees, with the service
// account alone, every account state AD refuses at bind, and audits each
// lookup as auth.recheck.
func TestLookupAccountStates(t *testing.T) {
	needDC(t)
	a, j := newAuth(t, adConfig(nil), nil)
	tests := []struct {
		user   string
		wantOK bool
		reason Reason
	}{
		{"alice", true, ""},
		{"ALICE", true, ""},
		{"carol", false, ReasonAccountDisabled},
		{"dave", false, ReasonAccountLocked},
		{"erin", false, ReasonAccountExpired},
		{"frank", false, ReasonPasswordMustChange},
		{"gina", false, ReasonPasswordExpired},
		{"nobody-here", false, ReasonUserNotFound},
		{"x*)(uid=*", false, ReasonUserNotFound},
		{"shared@corp.example", false, ReasonUserNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			id, out, err := a.Lookup(context.Background(), LookupRequest{Username: tt.user, Source: "192.0.2.7"})
			if err != nil || out.OK != tt.wantOK || out.Reason != tt.reason {
				t.Fatalf("got ok=%v reason=%q err=%v, want ok=%v reason=%q", out.OK, out.Reason, err, tt.wantOK, tt.reason)
			}
			if tt.wantOK && (id.Username != "alice" || !slices.Contains(id.Roles, "chat-user")) {
				t.Errorf("identity: got %+v", id)
			}
			if !tt.wantOK && id.DN != "" {
				t.Errorf("denied lookup returned an identity: %+v", id)
			}
		})
	}
	evs := events(t, j)
	if len(evs) != len(tests) {
		t.Fatalf("audit: got %d events, want %d", len(evs), len(tests))
	}
	for i, e := range evs {
		want := "denied"
		if tests[i].wantOK {
			want = "success"
		}
		if e.Event.Type != "auth.recheck" || e.Event.Outcome != want || e.Event.Reason != string(tests[i].reason) {
			t.Errorf("event %d: got type=%q outcome=%q reason=%q, want auth.recheck %s %q", i, e.Event.Type, e.Event.Outcome, e.Event.Reason, want, tests[i].reason)
		}
	}
}

// removeMember takes member out of group as the domain administrator.
func removeMember(t *testing.T, group, member string) {
	t.Helper()
	if err := dc.RemoveMembers(context.Background(), group, member); err != nil {
		t.Fatalf("removing %s from %s: %v", member, group, err)
	}
}

// TestLookupSeesChanges: a user disabled or locked after login is refused
// by the next lookup, never from the cache, and the cached groups are
// dropped; a group removed in AD is gone at a FreshGroups lookup while a
// plain lookup may still use the cache.
func TestLookupSeesChanges(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	a, _ := newAuth(t, adConfig(func(c *Config) { c.AllowedGroups = []string{"ai-users", "helpdesk"} }), nil)
	tests := []struct {
		name   string
		change func(user string) error
		reason Reason
	}{
		{"disabled", func(u string) error { return dc.Disable(ctx, u) }, ReasonAccountDisabled},
		{"locked", func(u string) error { return dc.Lock(ctx, u) }, ReasonAccountLocked},
		{"expired", func(u string) error { return dc.ExpireAccount(ctx, u) }, ReasonAccountExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := freshUser(t, "lk")
			if err := dc.AddMembers(ctx, "helpdesk", u); err != nil {
				t.Fatal(err)
			}
			id, out, err := a.Login(ctx, Request{Username: u, Password: pw(u)})
			if err != nil || !out.OK {
				t.Fatalf("login: got %+v %v", out, err)
			}
			if _, hit := a.cache.get(id.ID, a.now()); !hit {
				t.Fatalf("the login's groups are not cached under the account's id")
			}
			if _, out, err := a.Lookup(ctx, LookupRequest{Username: u}); err != nil || !out.OK {
				t.Fatalf("lookup before the change: got %+v %v", out, err)
			}
			if err := tt.change(u); err != nil {
				t.Fatal(err)
			}
			_, out, err = a.Lookup(ctx, LookupRequest{Username: u, ID: id.ID})
			if err != nil || out.OK || out.Reason != tt.reason {
				t.Fatalf("lookup after the change: got ok=%v reason=%q err=%v, want %q", out.OK, out.Reason, err, tt.reason)
			}
			if _, hit := a.cache.get(id.ID, a.now()); hit {
				t.Errorf("the denied user's groups are still cached")
			}
		})
	}

	t.Run("group removed", func(t *testing.T) {
		u := freshUser(t, "lg")
		if err := dc.AddMembers(ctx, "helpdesk", u); err != nil {
			t.Fatal(err)
		}
		id, out, err := a.Lookup(ctx, LookupRequest{Username: u, FreshGroups: true})
		if err != nil || !out.OK || !slices.Contains(id.Roles, "ticket-user") {
			t.Fatalf("before: got %+v %+v %v", id, out, err)
		}
		removeMember(t, "helpdesk", u)
		id, out, err = a.Lookup(ctx, LookupRequest{Username: u})
		if err != nil || !out.OK || !slices.Contains(id.Roles, "ticket-user") {
			t.Fatalf("a cached lookup within group_cache_ttl: got %+v %+v %v, want the cached groups", id, out, err)
		}
		_, out, err = a.Lookup(ctx, LookupRequest{Username: u, FreshGroups: true})
		if err != nil || out.OK || out.Reason != ReasonNotInAllowedGroups {
			t.Fatalf("fresh lookup: got ok=%v reason=%q err=%v, want %q", out.OK, out.Reason, err, ReasonNotInAllowedGroups)
		}
	})
}

// TestLookupNeverBindsAsUser: a lookup is searches on the service
// connection only; the user's failed-password count does not move.
func TestLookupNeverBindsAsUser(t *testing.T) {
	needDC(t)
	a, _ := newAuth(t, adConfig(nil), nil)
	u := freshUser(t, "nb")
	for range 3 {
		if _, out, err := a.Lookup(context.Background(), LookupRequest{Username: u}); err != nil || !out.OK {
			t.Fatalf("got %+v %v", out, err)
		}
	}
	bad, err := dc.Attr(context.Background(), u, "badPwdCount")
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 && bad[0] != "0" {
		t.Errorf("badPwdCount: got %v, want 0", bad)
	}
	if n := a.bindPoolLen(); n != 0 {
		t.Errorf("bind connections: got %d, want 0 (no user bind)", n)
	}
}

// TestLookupUnavailable: no DC answers: an error, audited as a failure.
func TestLookupUnavailable(t *testing.T) {
	needDC(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	a, j := newAuth(t, adConfig(func(c *Config) { c.URLs = []string{"ldaps://" + addr} }), nil)
	_, out, err := a.Lookup(context.Background(), LookupRequest{Username: "alice"})
	if err == nil || out.OK || out.Reason != ReasonDirectoryUnavailable {
		t.Fatalf("got %+v %v, want an error and directory_unavailable", out, err)
	}
	evs := events(t, j)
	if len(evs) != 1 || evs[0].Event.Type != "auth.recheck" || evs[0].Event.Outcome != "failure" {
		t.Errorf("audit: got %+v", evs)
	}
}

// bindPoolLen counts pooled connections that carried a user's bind.
func (a *Authenticator) bindPoolLen() int {
	n := 0
	for _, d := range a.dcs {
		d.mu.Lock()
		n += len(d.binds)
		d.mu.Unlock()
	}
	return n
}

// TestAccountState: the attribute rules of Lookup, for the states a test
// directory cannot easily be put in (no computed flags, OpenLDAP's
// ppolicy and shadow attributes).
func TestAccountState(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	filetime := func(t time.Time) string { return fmt.Sprint(t.UnixNano()/100 + 116444736000000000) }
	tests := []struct {
		name  string
		mode  string
		attrs map[string][]string
		want  Reason
	}{
		{"ad normal", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "msDS-User-Account-Control-Computed": {"0"}, "accountExpires": {"9223372036854775807"}, "pwdLastSet": {"134000000000000000"}}, ""},
		{"ad no expiry 0", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "accountExpires": {"0"}}, ""},
		{"ad disabled", GroupModeAD, map[string][]string{"userAccountControl": {"514"}}, ReasonAccountDisabled},
		{"ad expired", GroupModeADInChain, map[string][]string{"userAccountControl": {"512"}, "accountExpires": {filetime(now.Add(-time.Minute))}}, ReasonAccountExpired},
		{"ad expires later", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "accountExpires": {filetime(now.Add(time.Hour))}}, ""},
		{"ad computed lockout", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "msDS-User-Account-Control-Computed": {"16"}, "lockoutTime": {"1"}}, ReasonAccountLocked},
		{"ad lockout over", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "msDS-User-Account-Control-Computed": {"0"}, "lockoutTime": {"1"}}, ""},
		{"ad lockoutTime without computed", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "lockoutTime": {"133000000000000000"}}, ReasonAccountLocked},
		{"ad lockoutTime 0", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "lockoutTime": {"0"}}, ""},
		{"ad must change", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "pwdLastSet": {"0"}}, ReasonPasswordMustChange},
		{"ad password expired", GroupModeAD, map[string][]string{"userAccountControl": {"512"}, "msDS-User-Account-Control-Computed": {"8388608"}, "pwdLastSet": {"1"}}, ReasonPasswordExpired},
		{"ad garbage numbers", GroupModeAD, map[string][]string{"userAccountControl": {"x"}, "accountExpires": {"-"}}, ""},
		{"posix normal", GroupModePosix, map[string][]string{"uid": {"alice"}}, ""},
		{"ppolicy locked", GroupModeMemberOf, map[string][]string{"pwdAccountLockedTime": {"000001010000Z"}}, ReasonAccountLocked},
		{"389 locked", GroupModePosix, map[string][]string{"nsAccountLock": {"TRUE"}}, ReasonAccountDisabled},
		{"shadow expired", GroupModePosix, map[string][]string{"shadowExpire": {"20000"}}, ReasonAccountExpired},
		{"shadow later", GroupModePosix, map[string][]string{"shadowExpire": {"40000"}}, ""},
		{"shadow none", GroupModePosix, map[string][]string{"shadowExpire": {"-1"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := ldap.NewEntry("cn=x,dc=example", tt.attrs)
			if got := accountState(e, tt.mode, now); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
