package ldapauth

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/slapd"
)

// TestLoginOpenLDAP: the memberof and posix group modes against a real
// OpenLDAP with the memberof overlay.
func TestLoginOpenLDAP(t *testing.T) {
	if err := slapd.Available(); err != nil {
		t.Skipf("no OpenLDAP: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := slapd.Start(ctx, slapd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	seed := []func() error{
		func() error { return s.AddUser(ctx, "alice", pw("alice"), 10001) },
		func() error { return s.AddUser(ctx, "bob", pw("bob"), 10002) },
		// Three levels: alice ∈ team ∈ eng ∈ staff.
		func() error { return s.AddGroup(ctx, "team", s.UserDN("alice")) },
		func() error { return s.AddGroup(ctx, "eng", s.GroupDN("team")) },
		func() error { return s.AddGroup(ctx, "staff", s.GroupDN("eng"), s.UserDN("bob")) },
		func() error { return s.AddPosixOU(ctx) },
		func() error { return s.AddPosixGroup(ctx, "developers", 5001, "alice") },
		func() error { return s.AddPosixGroup(ctx, "ops", 5002, "alice", "bob") },
		func() error { return s.AddPosixGroup(ctx, "empty", 5003) },
	}
	for _, f := range seed {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	base := func(mode string) Config {
		return Config{
			URLs: []string{s.URL}, CAFile: s.CAFile,
			BindDN: slapd.ServiceDN, BindPasswordSecret: "slapd-svc",
			UserBase: slapd.PeopleDN, GroupBase: slapd.GroupsDN, GroupMode: mode,
			GroupRoles: map[string][]string{"staff": {"chat-user"}, "developers": {"dev"}},
		}
	}
	tests := []struct {
		name       string
		mode       string
		user, pass string
		wantOK     bool
		wantReason Reason
		wantGroups []string
		wantRoles  []string
	}{
		{"memberof nested", GroupModeMemberOf, "alice", pw("alice"), true, "", []string{"eng", "staff", "team"}, []string{"chat-user"}},
		{"memberof direct", GroupModeMemberOf, "bob", pw("bob"), true, "", []string{"staff"}, []string{"chat-user"}},
		{"memberof wrong password", GroupModeMemberOf, "alice", "nope", false, ReasonInvalidCredentials, nil, nil},
		{"posix", GroupModePosix, "alice", pw("alice"), true, "", []string{"developers", "ops"}, []string{"dev"}},
		{"posix other", GroupModePosix, "bob", pw("bob"), true, "", []string{"ops"}, []string{}},
		{"posix injection", GroupModePosix, "*", pw("alice"), false, ReasonUserNotFound, nil, nil},
		{"unknown", GroupModePosix, "carol", "x", false, ReasonUserNotFound, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := newJournal(t)
			a, err := New(base(tt.mode), Options{Audit: j, BindPassword: func(context.Context, string) ([]byte, error) {
				return []byte(s.ServicePassword), nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			id, out, err := a.Login(ctx, Request{Username: tt.user, Password: tt.pass})
			if err != nil {
				t.Fatal(err)
			}
			if out.OK != tt.wantOK || out.Reason != tt.wantReason {
				t.Fatalf("got ok=%v reason=%q, want ok=%v reason=%q", out.OK, out.Reason, tt.wantOK, tt.wantReason)
			}
			if !tt.wantOK {
				return
			}
			if got := groupNames(id.Groups); !slices.Equal(got, tt.wantGroups) {
				t.Errorf("groups: got %v, want %v", got, tt.wantGroups)
			}
			if !slices.Equal(id.Roles, tt.wantRoles) {
				t.Errorf("roles: got %v, want %v", id.Roles, tt.wantRoles)
			}
			if id.Username != tt.user {
				t.Errorf("username: got %q", id.Username)
			}
			// The password-less lookup finds the same user and groups.
			lid, lout, err := a.Lookup(ctx, LookupRequest{Username: tt.user, FreshGroups: true})
			if err != nil || !lout.OK || !slices.Equal(groupNames(lid.Groups), tt.wantGroups) || !slices.Equal(lid.Roles, tt.wantRoles) {
				t.Errorf("lookup: got %+v %+v %v, want groups %v roles %v", lid, lout, err, tt.wantGroups, tt.wantRoles)
			}
		})
	}
}
