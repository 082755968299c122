package ldapauth

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/samba"
	"github.com/go-ldap/ldap/v3"
)

// TestRenamedGroupIsSeenWithinTheGroupCacheTTL: an administrator renames
// a group to take away the roles group_roles grants by its name. The old
// name lasts no longer than a removed membership would (group_cache_ttl):
// the SID cache of group_mode "ad" forgets names as soon as the group
// cache forgets the user's groups.
func TestRenamedGroupIsSeenWithinTheGroupCacheTTL(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	if _, err := dc.AddUser(ctx, samba.User{Name: "renata", Password: pw("renata")}); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.AddGroup(ctx, "grp-privileged", "renata"); err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: time.Now()}
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.GroupRoles["grp-privileged"] = []string{"admin"}
	}), clk.Now)
	login := func() Identity {
		t.Helper()
		id, out, err := a.Login(ctx, Request{Username: "renata", Password: pw("renata")})
		if err != nil || !out.OK {
			t.Fatalf("login: %+v %v", out, err)
		}
		return id
	}
	if id := login(); !slices.Contains(id.Roles, "admin") {
		t.Fatalf("before the rename: roles %v, want admin", id.Roles)
	}

	adm := adAdmin(t)
	m := ldap.NewModifyRequest(dc.GroupDN("grp-privileged"), nil)
	m.Replace("sAMAccountName", []string{"grp-retired"})
	if err := adm.Modify(m); err != nil {
		t.Fatal(err)
	}
	if err := adm.ModifyDN(ldap.NewModifyDNRequest(dc.GroupDN("grp-privileged"), "CN=grp-retired", true, "")); err != nil {
		t.Fatal(err)
	}
	clk.Add(adConfig(nil).withDefaults().GroupCacheTTL.D() + time.Second)
	id := login()
	names := groupNames(id.Groups)
	if slices.Contains(id.Roles, "admin") || slices.Contains(names, "grp-privileged") || !slices.Contains(names, "grp-retired") {
		t.Errorf("a group cache TTL after the rename: groups %v roles %v, want grp-retired and no admin", names, id.Roles)
	}
}
