package ldapauth

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"
)

func TestParseLoginName(t *testing.T) {
	tests := []struct {
		in, netbios string
		wantValue   string
		wantDomain  string
		wantKey     string
		wantErr     bool
	}{
		{in: "alice", wantValue: "alice", wantKey: "alice"},
		{in: "Alice", wantValue: "Alice", wantKey: "alice"},
		{in: "alice@corp.example", wantValue: "alice@corp.example", wantKey: "alice"},
		{in: `CORP\alice`, wantValue: "alice", wantDomain: "CORP", wantKey: "alice"},
		{in: `corp.example\alice`, wantValue: "alice", wantDomain: "corp.example", wantKey: "alice"},
		{in: `CORP\alice`, netbios: "corp", wantValue: "alice", wantDomain: "CORP", wantKey: "alice"},
		{in: `OTHER\alice`, netbios: "CORP", wantErr: true},
		{in: "", wantErr: true},
		{in: `\alice`, wantErr: true},
		{in: `CORP\`, wantErr: true},
		{in: `CORP\al\ice`, wantErr: true},
		{in: `CORP\alice@corp.example`, wantErr: true},
		{in: `CO*RP\alice`, wantErr: true},
		{in: "@corp.example", wantErr: true},
		{in: "alice@", wantErr: true},
		{in: "a@b@c", wantErr: true},
		{in: "alice\x00", wantErr: true},
		{in: "ali\nce", wantErr: true},
		{in: " alice", wantErr: true},
		{in: "alice ", wantErr: true},
		{in: "\xff\xfe", wantErr: true},
		{in: strings.Repeat("a", MaxNameLen+1), wantErr: true},
		{in: strings.Repeat("a", MaxNameLen), wantValue: strings.Repeat("a", MaxNameLen), wantKey: strings.Repeat("a", MaxNameLen)},
		// Filter metacharacters are allowed here: they are escaped in the
		// filter, and match only themselves.
		{in: "*", wantValue: "*", wantKey: "*"},
		{in: "a)(cn=*", wantValue: "a)(cn=*", wantKey: "a)(cn=*"},
	}
	for _, tt := range tests {
		t.Run(strings.ToValidUTF8(tt.in[:min(len(tt.in), 40)], "?"), func(t *testing.T) {
			got, err := parseLoginName(tt.in, tt.netbios)
			if tt.wantErr {
				if !errors.Is(err, errBadName) {
					t.Fatalf("got %+v, %v; want errBadName", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := loginName{value: tt.wantValue, domain: tt.wantDomain, key: tt.wantKey}
			if got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestUserFilter(t *testing.T) {
	tests := []struct {
		name  string
		attrs []string
		value string
		want  string
	}{
		{"one attribute", []string{"uid"}, "alice", "(&(objectClass=person)(uid=alice))"},
		{"two attributes", []string{"sAMAccountName", "userPrincipalName"}, "alice",
			"(&(objectClass=person)(|(sAMAccountName=alice)(userPrincipalName=alice)))"},
		{"escaped once", []string{"uid"}, `a*)(uid=\`, `(&(objectClass=person)(uid=a\2a\29\28uid=\5c))`},
		{"already-escaped text is escaped again, as text", []string{"uid"}, `\2a`, `(&(objectClass=person)(uid=\5c2a))`},
		{"NUL and non-ASCII", []string{"uid"}, "a\x00é", `(&(objectClass=person)(uid=a\00\c3\a9))`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := userFilter("(objectClass=person)", tt.attrs, loginName{value: tt.value})
			if got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
			if _, err := ldap.CompileFilter(got); err != nil {
				t.Errorf("filter does not compile: %v", err)
			}
		})
	}
}

func TestEscapeBytes(t *testing.T) {
	if got, want := escapeBytes([]byte{0x01, 0x05, 0x00, 0xff, '*'}), `\01\05\00\ff\2a`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// FuzzLoginName: any accepted name yields a filter that compiles, whose
// only equality value decodes back to exactly the name (escaped once, no
// extra clause), and whose rate key is lowercase.
func FuzzLoginName(f *testing.F) {
	for _, s := range []string{
		"alice", `CORP\alice`, "alice@corp.example", "*", `\`, "a)(b=*", "\x00", "é", `CORP\\alice`,
		"a@b@c", " x", `\2a`, "(|(uid=*))", "\xff",
	} {
		f.Add(s, "")
		f.Add(s, "CORP")
	}
	f.Fuzz(func(t *testing.T, in, netbios string) {
		n, err := parseLoginName(in, netbios)
		if err != nil {
			return
		}
		if !utf8.ValidString(n.value) || n.value == "" || len(n.value) > MaxNameLen {
			t.Fatalf("accepted bad value %q", n.value)
		}
		if strings.ToLower(n.key) != n.key {
			t.Fatalf("key not lowercase: %q", n.key)
		}
		filter := userFilter("(objectClass=user)", []string{"uid"}, n)
		p, err := ldap.CompileFilter(filter)
		if err != nil {
			t.Fatalf("filter %q does not compile: %v", filter, err)
		}
		// (&(objectClass=user)(uid=VALUE)): two children, the second an
		// equality match on uid whose value is the name, byte for byte.
		if len(p.Children) != 2 {
			t.Fatalf("filter %q has %d clauses, want 2", filter, len(p.Children))
		}
		eq := p.Children[1]
		if len(eq.Children) != 2 || eq.Children[0].Data.String() != "uid" {
			t.Fatalf("filter %q: second clause is not uid=…", filter)
		}
		if got := eq.Children[1].Data.String(); got != n.value {
			t.Fatalf("filter value %q, want %q", got, n.value)
		}
	})
}

func TestBindReason(t *testing.T) {
	adErr := func(code string) error {
		return ldap.NewError(ldap.LDAPResultInvalidCredentials,
			errors.New("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data "+code+", v1db1"))
	}
	tests := []struct {
		err      error
		want     Reason
		wantCode string
	}{
		{adErr("52e"), ReasonInvalidCredentials, "52e"},
		{adErr("533"), ReasonAccountDisabled, "533"},
		{adErr("775"), ReasonAccountLocked, "775"},
		{adErr("701"), ReasonAccountExpired, "701"},
		{adErr("532"), ReasonPasswordExpired, "532"},
		{adErr("773"), ReasonPasswordMustChange, "773"},
		{adErr("530"), ReasonLogonNotAllowed, "530"},
		{adErr("525"), ReasonUserNotFound, "525"},
		{adErr("999"), ReasonInvalidCredentials, "999"},
		{ldap.NewError(ldap.LDAPResultInvalidCredentials, errors.New("")), ReasonInvalidCredentials, ""},
		{ldap.NewError(ldap.LDAPResultUnwillingToPerform, errors.New("no")), ReasonDirectoryRefused, ""},
		{errors.New("other"), ReasonDirectoryRefused, ""},
	}
	for _, tt := range tests {
		t.Run(string(tt.want)+tt.wantCode, func(t *testing.T) {
			got, code := bindReason(tt.err)
			if got != tt.want || code != tt.wantCode {
				t.Errorf("got %q %q, want %q %q", got, code, tt.want, tt.wantCode)
			}
		})
	}
}
