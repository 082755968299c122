package ldapauth

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"
)

// A user's primary group (primaryGroupID) is no member link, so the
// in-chain rule alone misses it and every group nested above it. Mode
// ad_in_chain resolves it from the user's SID and gives the same groups
// and roles as mode ad (tokenGroups), and admits the user when that group
// is the allowed one. The group's name has filter metacharacters: its DN
// goes into the in-chain filter escaped.
func TestInChainIncludesThePrimaryGroup(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	u := freshUser(t, "pg")
	suffix := fmt.Sprintf("%d-%d", os.Getpid()%10000, userSeq.Add(1))
	pg, outer := "pg(p)"+suffix, "pg-outer"+suffix
	if _, err := dc.AddGroup(ctx, pg, u); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.AddGroup(ctx, outer, pg); err != nil {
		t.Fatal(err)
	}
	sid, err := dc.Attr(ctx, pg, "objectSid")
	if err != nil || len(sid) != 1 || len(sid[0]) < 12 {
		t.Fatalf("objectSid of %s: %x %v", pg, sid, err)
	}
	rid := binary.LittleEndian.Uint32([]byte(sid[0][len(sid[0])-4:]))
	m := ldap.NewModifyRequest(dc.UserDN(u), nil)
	m.Replace("primaryGroupID", []string{strconv.FormatUint(uint64(rid), 10)})
	if err := adAdmin(t).Modify(m); err != nil {
		t.Fatalf("setting %s's primary group: %v", u, err)
	}
	if members, err := dc.Attr(ctx, pg, "member"); err != nil || len(members) != 0 {
		t.Fatalf("%s still lists members %v (%v): the test would not be about the primary group", pg, members, err)
	}

	got := map[string][]string{}
	for _, mode := range []string{GroupModeAD, GroupModeADInChain} {
		t.Run(mode, func(t *testing.T) {
			a, _ := newAuth(t, adConfig(func(c *Config) {
				c.GroupMode = mode
				c.AllowedGroups = []string{outer}
				c.GroupRoles = map[string][]string{pg: {"primary-role"}, outer: {"outer-role"}}
			}), nil)
			id, out, err := a.Login(ctx, Request{Username: u, Password: pw(u)})
			if err != nil || !out.OK {
				t.Fatalf("login: got ok=%v reason=%q err=%v (groups %v)", out.OK, out.Reason, err, groupNames(id.Groups))
			}
			if !slices.Equal(id.Roles, []string{"outer-role", "primary-role"}) {
				t.Errorf("roles: got %v, want [outer-role primary-role]", id.Roles)
			}
			lid, lout, err := a.Lookup(ctx, LookupRequest{Username: u, ID: id.ID, FreshGroups: true})
			if err != nil || !lout.OK || !slices.Equal(groupNames(lid.Groups), groupNames(id.Groups)) {
				t.Errorf("recheck: got %+v groups %v %v, want the login's groups %v", lout, groupNames(lid.Groups), err, groupNames(id.Groups))
			}
			names := groupNames(id.Groups)
			for i := range names {
				names[i] = strings.ToLower(names[i])
			}
			got[mode] = names
		})
	}
	if !slices.Equal(got[GroupModeAD], got[GroupModeADInChain]) {
		t.Errorf("groups: mode ad %v, mode ad_in_chain %v; want the same", got[GroupModeAD], got[GroupModeADInChain])
	}
}

func TestWithRID(t *testing.T) {
	// S-1-5-21-1-2-3-1001
	sid := []byte{1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0xe9, 3, 0, 0}
	got, ok := withRID(sid, 513)
	want := append(slices.Clone(sid[:24]), 1, 2, 0, 0)
	if !ok || !slices.Equal(got, want) || sid[24] != 0xe9 {
		t.Errorf("withRID: got %v %v, want %v (and the input unchanged)", got, ok, want)
	}
	for _, bad := range [][]byte{nil, {1, 0, 0, 0, 0, 0, 0, 5}, {2, 1, 0, 0, 0, 0, 0, 5, 1, 0, 0, 0}, sid[:27]} {
		if _, ok := withRID(bad, 513); ok {
			t.Errorf("withRID(%v): accepted", bad)
		}
	}
}

// A primary group outside group_base that is nested into a group under it:
// ad_in_chain finds the outer group through the primary group, as mode ad
// (tokenGroups) does and as it does through an ordinary member group
// outside group_base; the primary group itself, outside group_base, does
// not count.
func TestInChainPrimaryGroupOutsideGroupBase(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	suffix := fmt.Sprintf("%d-%d", os.Getpid()%10000, userSeq.Add(1))
	ou := "OU=pgo" + suffix + "," + dc.BaseDN
	ar := ldap.NewAddRequest(ou, nil)
	ar.Attribute("objectClass", []string{"organizationalUnit"})
	adm := adAdmin(t)
	if err := adm.Add(ar); err != nil {
		t.Fatal(err)
	}
	u := freshUser(t, "pgo")
	pg := "pgo-prim" + suffix // under CN=Users, outside group_base
	if _, err := dc.AddGroup(ctx, pg, u); err != nil {
		t.Fatal(err)
	}
	outer := "pgo-outer" + suffix
	gr := ldap.NewAddRequest("CN="+outer+","+ou, nil)
	gr.Attribute("objectClass", []string{"group"})
	gr.Attribute("sAMAccountName", []string{outer})
	gr.Attribute("member", []string{dc.GroupDN(pg)})
	if err := adm.Add(gr); err != nil {
		t.Fatal(err)
	}
	sid, err := dc.Attr(ctx, pg, "objectSid")
	if err != nil || len(sid) != 1 || len(sid[0]) < 12 {
		t.Fatalf("objectSid of %s: %x %v", pg, sid, err)
	}
	rid := binary.LittleEndian.Uint32([]byte(sid[0][len(sid[0])-4:]))
	m := ldap.NewModifyRequest(dc.UserDN(u), nil)
	m.Replace("primaryGroupID", []string{strconv.FormatUint(uint64(rid), 10)})
	if err := adm.Modify(m); err != nil {
		t.Fatalf("setting %s's primary group: %v", u, err)
	}
	for _, mode := range []string{GroupModeAD, GroupModeADInChain} {
		t.Run(mode, func(t *testing.T) {
			a, _ := newAuth(t, adConfig(func(c *Config) {
				c.GroupMode = mode
				c.GroupBase = ou
				c.GroupRoles = map[string][]string{outer: {"outer-role"}, pg: {"primary-role"}}
			}), nil)
			id, out, err := a.Login(ctx, Request{Username: u, Password: pw(u)})
			if err != nil || !out.OK {
				t.Fatalf("login: got %+v %v", out, err)
			}
			if got := groupNames(id.Groups); !slices.Equal(got, []string{outer}) || !slices.Equal(id.Roles, []string{"outer-role"}) {
				t.Errorf("groups %v roles %v, want [%s] [outer-role]", got, id.Roles, outer)
			}
		})
	}
}
