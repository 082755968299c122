package ldapauth

import (
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/internal/conf"
	"github.com/applianced/applianced/internal/testenv/slapd"
)

// startSlapd starts a real OpenLDAP for the test, or skips it where none
// can run.
func startSlapd(t *testing.T, ctx context.Context) *slapd.Server {
	t.Helper()
	if err := slapd.Available(); err != nil {
		t.Skipf("no OpenLDAP: %v", err)
	}
	s, err := slapd.Start(ctx, slapd.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// TestLoginOpenLDAP: the memberof and posix group modes against a real
// OpenLDAP with the memberof overlay.
func TestLoginOpenLDAP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startSlapd(t, ctx)
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

// bindWatcher is a plaintext LDAP proxy that reads what the client sends
// and counts the binds of one DN; with hold set, it stops forwarding a
// connection at such a bind and leaves it silent, as a DC that hangs.
type bindWatcher struct {
	target, dn string
	hold       bool
	binds      atomic.Int32
}

func (w *bindWatcher) listen(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", w.target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			go func() { _, _ = io.Copy(c, up) }()
			go func() {
				for {
					p, err := ber.ReadPacket(c)
					if err != nil {
						up.Close()
						return
					}
					if len(p.Children) > 1 && p.Children[1].ClassType == ber.ClassApplication && p.Children[1].Tag == ldap.ApplicationBindRequest &&
						len(p.Children[1].Children) > 1 && p.Children[1].Children[1].Data.String() == w.dn {
						w.binds.Add(1)
						if w.hold {
							return // the bind never arrives, and nothing answers
						}
					}
					if _, err := up.Write(p.Bytes()); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// A DC that goes silent once it has the user's bind may have counted a
// wrong password already: the same password is not sent to the next DC
// (AD lockout counters would count it twice). The login fails as the
// directory being unavailable.
func TestBindThatTimesOutIsNotRetriedOnAnotherDC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startSlapd(t, ctx)
	if err := s.AddUser(ctx, "alice", pw("alice"), 10001); err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(s.PlainURL, "ldap://")
	silent := &bindWatcher{target: target, dn: s.UserDN("alice"), hold: true}
	second := &bindWatcher{target: target, dn: s.UserDN("alice")}
	silentAddr, secondAddr := silent.listen(t), second.listen(t)
	newAuth := func(urls ...string) *Authenticator {
		cfg := Config{
			URLs: urls, InsecurePlaintext: true, RequestTimeout: conf.Duration(time.Second),
			BindDN: slapd.ServiceDN, BindPasswordSecret: "slapd-svc",
			UserBase: slapd.PeopleDN, GroupBase: slapd.GroupsDN, GroupMode: GroupModeMemberOf,
		}
		a, err := New(cfg, Options{Audit: newJournal(t), BindPassword: func(context.Context, string) ([]byte, error) {
			return []byte(s.ServicePassword), nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}

	a := newAuth("ldap://"+silentAddr, "ldap://"+secondAddr)
	_, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")})
	if err == nil || out.OK {
		t.Fatalf("login with a DC silent at the bind: ok=%v err=%v, want the directory unavailable", out.OK, err)
	}
	if silent.binds.Load() != 1 {
		t.Fatalf("the silent DC saw %d binds of the user, want 1 (the test proves nothing otherwise)", silent.binds.Load())
	}
	if n := second.binds.Load(); n != 0 {
		t.Errorf("the user's password was sent to the next DC %d times after the first went silent, want 0", n)
	}

	// The control: the second DC does take the user's bind when the first
	// one is down before anything is sent.
	b := newAuth("ldap://127.0.0.1:1", "ldap://"+secondAddr)
	if _, out, err := b.Login(ctx, Request{Username: "alice", Password: pw("alice")}); err != nil || !out.OK {
		t.Fatalf("login through the second DC: ok=%v err=%v", out.OK, err)
	}
	if second.binds.Load() != 1 {
		t.Errorf("the second DC saw %d binds of the user, want 1", second.binds.Load())
	}
}

// In memberof mode only groups under group_base count: a group of the same
// name elsewhere in the tree (a delegated OU) grants no access and no role.
// And an account OpenLDAP does not refuse at the bind (shadowExpire passed)
// is refused at login as at the recheck.
func TestOpenLDAPGroupBaseAndAccountState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startSlapd(t, ctx)
	for _, f := range []func() error{
		func() error { return s.AddUser(ctx, "alice", pw("alice"), 10001) },
		func() error { return s.AddUser(ctx, "mallory", pw("mallory"), 10002) },
		func() error { return s.AddUser(ctx, "olga", pw("olga"), 10003) },
		func() error { return s.AddGroup(ctx, "staff", s.UserDN("alice"), s.UserDN("olga")) },
		func() error {
			return s.Add(ctx, "ou=projects,"+slapd.BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"projects"}})
		},
		func() error {
			return s.Add(ctx, "cn=staff,ou=projects,"+slapd.BaseDN, map[string][]string{
				"objectClass": {"groupOfNames"}, "cn": {"staff"}, "member": {s.UserDN("mallory")}})
		},
	} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	adm, err := ldap.DialURL(s.URL, ldap.DialWithTLSConfig(s.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.Bind(slapd.AdminDN, s.AdminPassword); err != nil {
		t.Fatal(err)
	}
	m := ldap.NewModifyRequest(s.UserDN("olga"), nil)
	m.Add("objectClass", []string{"shadowAccount"})
	m.Add("shadowExpire", []string{"1"}) // expired in 1970
	if err := adm.Modify(m); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{
		URLs: []string{s.URL}, CAFile: s.CAFile,
		BindDN: slapd.ServiceDN, BindPasswordSecret: "slapd-svc",
		UserBase: slapd.PeopleDN, GroupBase: slapd.GroupsDN, GroupMode: GroupModeMemberOf,
		AllowedGroups: []string{"staff"}, GroupRoles: map[string][]string{"staff": {"chat-user"}},
	}, Options{Audit: newJournal(t), BindPassword: func(context.Context, string) ([]byte, error) {
		return []byte(s.ServicePassword), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")}); err != nil || !out.OK {
		t.Fatalf("alice, in staff under group_base: got %+v, %v", out, err)
	}
	if id, out, err := a.Login(ctx, Request{Username: "mallory", Password: pw("mallory")}); err != nil || out.OK || out.Reason != ReasonNotInAllowedGroups {
		t.Errorf("mallory, in a staff outside group_base: got %+v (groups %v), %v; want not_in_allowed_groups", out, id.Groups, err)
	}
	if _, out, err := a.Login(ctx, Request{Username: "olga", Password: pw("olga")}); err != nil || out.OK || out.Reason != ReasonAccountExpired {
		t.Errorf("olga, shadowExpire in 1970: got %+v, %v; want account_expired", out, err)
	}
}
