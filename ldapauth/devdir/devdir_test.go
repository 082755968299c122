package devdir

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"
	"github.com/pelletier/go-toml/v2"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/ldapauth"
)

func start(t *testing.T, o ...Options) *Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	opts := Options{}
	if len(o) > 0 {
		opts = o[0]
	}
	opts.Dir = t.TempDir()
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

func password(t *testing.T, s *Server, user string) string {
	t.Helper()
	for _, c := range s.Credentials() {
		if c.Username == user {
			return c.Password
		}
	}
	t.Fatalf("no demo user %q", user)
	return ""
}

// TestLoginWithLdapauth: the production login code against the demo
// directory, over LDAPS verified against its CA, with a service account and
// with anonymous searches.
func TestLoginWithLdapauth(t *testing.T) {
	for _, anon := range []bool{false, true} {
		t.Run(map[bool]string{false: "service account", true: "anonymous search"}[anon], func(t *testing.T) {
			testLogin(t, start(t, Options{AnonymousSearch: anon}))
		})
	}
}

func testLogin(t *testing.T, s *Server) {
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	a, err := ldapauth.New(s.Config(), ldapauth.Options{Audit: j, BindPassword: s.Secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	tests := []struct {
		name, user, pass string
		wantOK           bool
		wantReason       ldapauth.Reason
		wantGroups       []string
		wantRoles        []string
	}{
		{"alice, nested group", "alice", password(t, s, "alice"), true, "", []string{"ai-users", "team-ai"}, []string{"chat-user"}},
		{"alice by mail", "alice@applianced.dev", password(t, s, "alice"), true, "", []string{"ai-users", "team-ai"}, []string{"chat-user"}},
		{"wrong password", "alice", "nope", false, ldapauth.ReasonInvalidCredentials, nil, nil},
		{"disabled", "bob", password(t, s, "bob"), false, ldapauth.ReasonAccountDisabled, nil, nil},
		{"not allowed", "carol", password(t, s, "carol"), false, ldapauth.ReasonNotInAllowedGroups, nil, nil},
		{"unknown", "mallory", "x", false, ldapauth.ReasonUserNotFound, nil, nil},
		{"wildcard", "*", password(t, s, "alice"), false, ldapauth.ReasonUserNotFound, nil, nil},
		{"injection", "alice)(uid=*", password(t, s, "alice"), false, ldapauth.ReasonUserNotFound, nil, nil},
		{"substring", "al*", password(t, s, "alice"), false, ldapauth.ReasonUserNotFound, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, out, err := a.Login(context.Background(), ldapauth.Request{Username: tt.user, Password: tt.pass})
			if err != nil {
				t.Fatal(err)
			}
			if out.OK != tt.wantOK || out.Reason != tt.wantReason {
				t.Fatalf("got ok=%v reason=%q, want ok=%v reason=%q", out.OK, out.Reason, tt.wantOK, tt.wantReason)
			}
			if !tt.wantOK {
				return
			}
			var got []string
			for _, g := range id.Groups {
				got = append(got, g.Name)
			}
			if !slices.Equal(got, tt.wantGroups) || !slices.Equal(id.Roles, tt.wantRoles) {
				t.Errorf("got groups %v roles %v, want %v %v", got, id.Roles, tt.wantGroups, tt.wantRoles)
			}
			if id.DisplayName != "Alice Example" || id.Username != "alice" || len(id.ID) != 36 {
				t.Errorf("identity: got %+v", id)
			}
			// The recheck finds the account again by its entryUUID.
			if _, out, err := a.Lookup(context.Background(), ldapauth.LookupRequest{Username: id.Username, ID: id.ID}); err != nil || !out.OK {
				t.Errorf("lookup by id: got %+v %v", out, err)
			}
		})
	}
}

// An entry without an immutable id (neither objectGUID nor entryUUID) is
// not logged in, its password not sent: its sessions could not be told from
// those of a later account of the same name. The group mode does not
// matter: the id attribute is the directory's, not the mode's.
func TestLoginWithoutAccountIDIsRefused(t *testing.T) {
	s := start(t)
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	s.mu.Lock()
	alice := s.find("uid=alice," + PeopleDN)
	alice.attrs = slices.DeleteFunc(alice.attrs, func(a [2]string) bool { return strings.EqualFold(a[0], "entryUUID") })
	s.mu.Unlock()
	cfg := s.Config()
	cfg.GroupMode, cfg.UserFilter = ldapauth.GroupModeADInChain, "(objectClass=person)"
	a, err := ldapauth.New(cfg, ldapauth.Options{Audit: j, BindPassword: s.Secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	_, out, err := a.Login(context.Background(), ldapauth.Request{Username: "alice", Password: password(t, s, "alice")})
	if !errors.Is(err, ldapauth.ErrNoAccountID) || out.OK {
		t.Fatalf("got %+v %v, want an error wrapping ErrNoAccountID", out, err)
	}
	if !strings.Contains(err.Error(), "objectGUID") || !strings.Contains(err.Error(), "entryUUID") {
		t.Errorf("the error does not name the attributes: %v", err)
	}
	s.mu.Lock()
	bound := len(s.bound)
	s.mu.Unlock()
	if bound != 1 {
		t.Errorf("connections bound: %d, want only the service account's", bound)
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:636", "[::]:0", "localhost:636"} {
		if s, err := Start(context.Background(), Options{Addr: addr, Dir: t.TempDir()}); err == nil {
			s.Stop()
			t.Errorf("Start(%q) succeeded, want a refusal", addr)
		}
	}
}

// TestSearchNeedsServiceAccount: anonymous or user connections cannot read
// the directory.
func TestSearchNeedsServiceAccount(t *testing.T) {
	s := start(t)
	pool := x509.NewCertPool()
	b, err := os.ReadFile(s.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(b)
	tests := []struct {
		name     string
		dn, pass string
		wantOK   bool
	}{
		{"anonymous", "", "", false},
		{"user", "uid=alice," + PeopleDN, password(t, s, "alice"), false},
		{"service", ServiceDN, s.BindPassword(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ldap.DialURL(s.URL(), ldap.DialWithTLSConfig(&tls.Config{RootCAs: pool}))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.dn != "" {
				if err := c.Bind(tt.dn, tt.pass); err != nil {
					t.Fatal(err)
				}
			}
			_, err = c.Search(ldap.NewSearchRequest(BaseDN, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(uid=*)", nil, nil))
			if (err == nil) != tt.wantOK {
				t.Errorf("search: got err=%v, want ok=%v", err, tt.wantOK)
			}
		})
	}
	// A DN with an empty password is refused (an unauthenticated bind).
	c, err := ldap.DialURL(s.URL(), ldap.DialWithTLSConfig(&tls.Config{RootCAs: pool}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.UnauthenticatedBind(ServiceDN); err == nil {
		t.Error("unauthenticated bind accepted")
	}
}

// TestTOML: the section parses back into the same config.
func TestTOML(t *testing.T) {
	s := start(t, Options{AnonymousSearch: true})
	var f struct {
		LDAP ldapauth.Config `toml:"ldap"`
	}
	if err := toml.Unmarshal([]byte(s.TOML()), &f); err != nil {
		t.Fatalf("%v\n%s", err, s.TOML())
	}
	want := s.Config()
	want.GroupRoles = nil
	if fmt.Sprint(f.LDAP) != fmt.Sprint(want) {
		t.Errorf("got %+v\nwant %+v", f.LDAP, want)
	}
	if errs := f.LDAP.Validate(); len(errs) != 0 {
		t.Errorf("Validate: %v", errs)
	}
}
