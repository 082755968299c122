package ldapauth

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/conf"
	"github.com/applianced/applianced/internal/testenv/samba"
)

// TestLoginAD is the main table: names in every accepted form, nested
// groups, roles, and each AD account state told apart.
func TestLoginAD(t *testing.T) {
	needDC(t)
	for _, mode := range []string{GroupModeAD, GroupModeADInChain} {
		t.Run(mode, func(t *testing.T) {
			a, _ := newAuth(t, adConfig(func(c *Config) { c.GroupMode = mode }), nil)
			tests := []struct {
				name       string
				user, pass string
				wantOK     bool
				wantReason Reason
				wantCode   string
				wantGroups []string
				wantRoles  []string
			}{
				{name: "sAMAccountName", user: "alice", pass: pw("alice"), wantOK: true,
					wantGroups: []string{"team-a", "dept-eng", "ai-users"}, wantRoles: []string{"chat-user", "engineer"}},
				{name: "UPN", user: "alice@corp.example", pass: pw("alice"), wantOK: true,
					wantGroups: []string{"team-a", "dept-eng", "ai-users"}},
				{name: "DOMAIN\\user", user: `CORP\alice`, pass: pw("alice"), wantOK: true,
					wantGroups: []string{"ai-users"}},
				{name: "case-insensitive name", user: "ALICE", pass: pw("alice"), wantOK: true},
				{name: "group by DN", user: "bob", pass: pw("bob"), wantOK: true,
					wantGroups: []string{"helpdesk"}, wantRoles: []string{"ticket-user"}},
				{name: "wrong password", user: "bob", pass: "nope-Wr0ng!", wantReason: ReasonInvalidCredentials, wantCode: "52e"},
				{name: "disabled", user: "carol", pass: pw("carol"), wantReason: ReasonAccountDisabled, wantCode: "533"},
				{name: "locked", user: "dave", pass: pw("dave"), wantReason: ReasonAccountLocked, wantCode: "775"},
				{name: "account expired", user: "erin", pass: pw("erin"), wantReason: ReasonAccountExpired, wantCode: "701"},
				{name: "must change password", user: "frank", pass: pw("frank"), wantReason: ReasonPasswordMustChange, wantCode: "773"},
				{name: "password expired", user: "gina", pass: pw("gina"), wantReason: ReasonPasswordExpired, wantCode: "532"},
				{name: "outside logon hours", user: "hank", pass: pw("hank"), wantReason: ReasonLogonNotAllowed, wantCode: "530"},
				{name: "not found", user: "nobody", pass: "x", wantReason: ReasonUserNotFound},
				{name: "empty password", user: "alice", pass: "", wantReason: ReasonEmptyPassword},
				{name: "huge password", user: "alice", pass: strings.Repeat("p", MaxPasswordLen+1), wantReason: ReasonInvalidPassword},
				{name: "any domain prefix without netbios_domain", user: `OTHER\alice`, pass: pw("alice"), wantOK: true},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					id, out, err := a.Login(context.Background(), Request{Username: tt.user, Password: tt.pass, Source: "192.0.2.1"})
					if err != nil {
						t.Fatalf("Login: %v", err)
					}
					if out.OK != tt.wantOK || out.Reason != tt.wantReason {
						t.Fatalf("got ok=%v reason=%q, want ok=%v reason=%q", out.OK, out.Reason, tt.wantOK, tt.wantReason)
					}
					if out.ADCode != tt.wantCode {
						t.Errorf("AD code: got %q, want %q", out.ADCode, tt.wantCode)
					}
					if !tt.wantOK {
						if id.DN != "" || len(id.Groups) != 0 {
							t.Errorf("denied login returned an identity: %+v", id)
						}
						return
					}
					if id.DC != dc.LDAPSURL() {
						t.Errorf("DC: got %q, want %q", id.DC, dc.LDAPSURL())
					}
					if got := groupNames(id.Groups); !hasAll(got, tt.wantGroups...) {
						t.Errorf("groups: got %v, want at least %v", got, tt.wantGroups)
					}
					if tt.wantRoles != nil && !slices.Equal(id.Roles, tt.wantRoles) {
						t.Errorf("roles: got %v, want %v", id.Roles, tt.wantRoles)
					}
				})
			}
		})
	}
}

func TestIdentityFields(t *testing.T) {
	needDC(t)
	a, _ := newAuth(t, adConfig(nil), nil)
	id, out, err := a.Login(context.Background(), Request{Username: `corp\alice`, Password: pw("alice")})
	if err != nil || !out.OK {
		t.Fatalf("Login: %v %+v", err, out)
	}
	tests := []struct{ field, got, want string }{
		{"username", id.Username, "alice"},
		{"upn", id.UPN, "alice@corp.example"},
		{"display name", id.DisplayName, "Alice Liddell"},
		{"email", id.Email, "alice@corp.example"},
		{"dc", id.DC, dc.LDAPSURL()},
		{"dn", strings.ToLower(id.DN), strings.ToLower(dc.UserDN("alice"))},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.field, tt.got, tt.want)
		}
	}
}

func TestNetBIOSDomain(t *testing.T) {
	needDC(t)
	a, _ := newAuth(t, adConfig(func(c *Config) { c.NetBIOSDomain = "CORP" }), nil)
	tests := []struct {
		user   string
		wantOK bool
	}{
		{`CORP\alice`, true}, {`corp\alice`, true}, {`OTHER\alice`, false}, {`alice`, true},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			_, out, err := a.Login(context.Background(), Request{Username: tt.user, Password: pw("alice")})
			if err != nil || out.OK != tt.wantOK {
				t.Errorf("got ok=%v reason=%q err=%v, want ok=%v", out.OK, out.Reason, err, tt.wantOK)
			}
		})
	}
}

// TestInjectionNames: with alice's right password, no crafted name logs in
// as alice or anyone else, and no name is an error of the machine.
func TestInjectionNames(t *testing.T) {
	needDC(t)
	a, j := newAuth(t, adConfig(func(c *Config) { c.MaxFailuresPerUser = 1000; c.MaxFailuresPerSource = 1000 }), nil)
	names := []string{
		"*", "a*", "*alice*", "alice*", "*)(sAMAccountName=*", "alice)(|(sAMAccountName=*",
		"*)(|(objectClass=*", `\2a`, `alice\00`, "alice\x00", "al\x00ice", `\`, `CORP\*`, `CORP\`, `\alice`,
		"alice@*", "*@corp.example", "alice@corp.example)(cn=*", "alice ", " alice", "\xff\xfealice",
		strings.Repeat("a", 100000), strings.Repeat("*", 300), "(", ")", "alice)", "ali(ce", "CN=alice,CN=Users," + dc.BaseDN,
		"shared@corp.example",
	}
	for i, n := range names {
		t.Run(strings.ToValidUTF8(n[:min(len(n), 30)], "?"), func(t *testing.T) {
			id, out, err := a.Login(context.Background(), Request{Username: n, Password: pw("alice")})
			if err != nil {
				t.Fatalf("name %d: error %v", i, err)
			}
			if out.OK || id.DN != "" {
				t.Fatalf("name %q logged in as %q", n, id.DN)
			}
			switch out.Reason {
			case ReasonUserNotFound, ReasonInvalidName, ReasonAmbiguousUser, ReasonInvalidCredentials, ReasonRateLimited:
			default:
				t.Errorf("reason: got %q", out.Reason)
			}
		})
	}
	// Every attempt is audited, none of them carries the password.
	evs := events(t, j)
	if len(evs) != len(names) {
		t.Errorf("audit events: got %d, want %d", len(evs), len(names))
	}
	for _, e := range evs {
		if bytes.Contains(e.Canonical, []byte(pw("alice"))) {
			t.Fatalf("password in audit event %s", e.Canonical)
		}
	}
}

// TestAmbiguousUser: a name matching two entries is denied.
func TestAmbiguousUser(t *testing.T) {
	needDC(t)
	a, _ := newAuth(t, adConfig(func(c *Config) { c.LoginAttributes = []string{"sAMAccountName", "mail"} }), nil)
	_, out, err := a.Login(context.Background(), Request{Username: "shared@corp.example", Password: pw("dup1")})
	if err != nil || out.OK || out.Reason != ReasonAmbiguousUser {
		t.Errorf("got ok=%v reason=%q err=%v, want %q", out.OK, out.Reason, err, ReasonAmbiguousUser)
	}
}

func TestAllowedGroups(t *testing.T) {
	needDC(t)
	a, j := newAuth(t, adConfig(func(c *Config) { c.AllowedGroups = []string{"ai-users"} }), nil)
	tests := []struct {
		user   string
		wantOK bool
		reason Reason
	}{
		{"alice", true, ""},
		{"bob", false, ReasonNotInAllowedGroups},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			id, out, err := a.Login(context.Background(), Request{Username: tt.user, Password: pw(tt.user)})
			if err != nil || out.OK != tt.wantOK || out.Reason != tt.reason {
				t.Errorf("got ok=%v reason=%q err=%v, want ok=%v reason=%q", out.OK, out.Reason, err, tt.wantOK, tt.reason)
			}
			if !tt.wantOK && len(id.Roles) != 0 {
				t.Errorf("denied user got roles %v", id.Roles)
			}
		})
	}
	evs := events(t, j)
	if len(evs) != 2 || evs[1].Event.Outcome != "denied" || evs[1].Event.Reason != string(ReasonNotInAllowedGroups) {
		t.Errorf("audit: got %+v", evs)
	}
}

// TestEmptyPasswordNeverContactsDC: the refusal happens before any dial.
func TestEmptyPasswordNeverContactsDC(t *testing.T) {
	needDC(t)
	var accepted atomic.Int32
	ln := listenCounting(t, &accepted, false)
	a, _ := newAuth(t, adConfig(func(c *Config) { c.URLs = []string{"ldaps://" + ln} }), nil)
	_, out, err := a.Login(context.Background(), Request{Username: "alice", Password: ""})
	if err != nil || out.OK || out.Reason != ReasonEmptyPassword {
		t.Fatalf("got ok=%v reason=%q err=%v", out.OK, out.Reason, err)
	}
	if n := accepted.Load(); n != 0 {
		t.Errorf("connections to the DC: got %d, want 0", n)
	}
}

// listenCounting listens on loopback, counts accepted connections and either
// proxies them to the DC or holds them open without a byte in reply.
func listenCounting(t *testing.T, n *atomic.Int32, proxy bool) string {
	t.Helper()
	target := ""
	if proxy {
		target = dc.Addr()
	}
	return listenProxy(t, n, target)
}

// listenProxy is listenCounting forwarding to target ("" holds connections
// silently).
func listenProxy(t *testing.T, n *atomic.Int32, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			if target == "" {
				go func() { <-done; c.Close() }()
				continue
			}
			go func() {
				defer c.Close()
				up, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer up.Close()
				go func() { _, _ = copyConn(up, c) }()
				_, _ = copyConn(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}

func copyConn(dst, src net.Conn) (int64, error) {
	buf := make([]byte, 32<<10)
	var total int64
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return total, werr
			}
			total += int64(k)
		}
		if err != nil {
			dst.Close()
			return total, err
		}
	}
}

// TestFailover: the first DC is down in several ways; the login succeeds on
// the second, and the first is held down.
func TestFailover(t *testing.T) {
	needDC(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	var n atomic.Int32
	silent := listenCounting(t, &n, false)
	tests := []struct {
		name  string
		first string
	}{
		{"connection refused", "ldaps://" + closedAddr},
		{"accepts TCP, never answers (LDAPS)", "ldaps://" + silent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A still clock keeps the first DC held down between the two
			// logins however slow the machine is.
			clk := &fakeClock{t: time.Now()}
			a, _ := newAuth(t, adConfig(func(c *Config) {
				c.URLs = []string{tt.first, dc.LDAPSURL()}
				c.DialTimeout = conf.Duration(2 * time.Second)
			}), clk.Now)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")})
			if err != nil || !out.OK {
				t.Fatalf("Login: ok=%v reason=%q err=%v", out.OK, out.Reason, err)
			}
			if id.DC != dc.LDAPSURL() {
				t.Errorf("answered by %q, want %q", id.DC, dc.LDAPSURL())
			}
			h := a.Health()
			if h[0].Up || h[0].LastError == "" || !h[1].Up {
				t.Errorf("health: got %+v, want first down with an error, second up", h)
			}
			// Held down: the next login goes straight to the second DC.
			dials := a.Stats().Dials
			if _, out, err := a.Login(ctx, Request{Username: "bob", Password: pw("bob")}); err != nil || !out.OK {
				t.Fatalf("second login: %v %+v", err, out)
			}
			if got := a.Stats().Dials - dials; got != 0 {
				t.Errorf("dials for the second login: got %d, want 0 (the held-down DC is skipped, pooled connections reused)", got)
			}
		})
	}
}

// TestSilentDCOnly: a DC that accepts TCP and never answers gives an error
// (not a hang) and a failure audit event.
func TestSilentDCOnly(t *testing.T) {
	needDC(t)
	var n atomic.Int32
	silent := listenCounting(t, &n, false)
	for _, u := range []string{"ldaps://" + silent, "ldap://" + silent} {
		t.Run(u[:5], func(t *testing.T) {
			a, j := newAuth(t, adConfig(func(c *Config) {
				c.URLs = []string{u}
				c.StartTLS = strings.HasPrefix(u, "ldap:")
				c.DialTimeout = conf.Duration(200 * time.Millisecond)
			}), nil)
			_, out, err := a.Login(context.Background(), Request{Username: "alice", Password: pw("alice")})
			if !errors.Is(err, ErrUnavailable) || out.OK {
				t.Fatalf("got ok=%v err=%v, want ErrUnavailable", out.OK, err)
			}
			evs := events(t, j)
			if len(evs) != 1 || evs[0].Event.Outcome != "failure" {
				t.Errorf("audit: got %+v, want one failure", evs)
			}
		})
	}
}

// TestWrongPasswordOneBind: with two DC URLs, a wrong password is tried on
// exactly one DC. Both URLs reach the same DC (the second through a counting
// proxy), so a retry would show twice in its badPwdCount, and as a
// connection on the proxy.
func TestWrongPasswordOneBind(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	wp1 := freshUser(t, "wp")
	var viaProxy atomic.Int32
	second := listenCounting(t, &viaProxy, true)
	a, _ := newAuth(t, adConfig(func(c *Config) { c.URLs = []string{dc.LDAPSURL(), "ldaps://" + second} }), nil)
	_, out, err := a.Login(ctx, Request{Username: wp1, Password: "Wrong-Pass1!"})
	if err != nil || out.Reason != ReasonInvalidCredentials {
		t.Fatalf("got reason=%q err=%v, want invalid_credentials", out.Reason, err)
	}
	got, err := dc.Attr(ctx, wp1, "badPwdCount")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "1" {
		t.Errorf("badPwdCount: got %v, want [1]", got)
	}
	if n := viaProxy.Load(); n != 0 {
		t.Errorf("connections to the second DC: got %d, want 0", n)
	}
	if h := a.Health(); !h[0].Up {
		t.Errorf("a wrong password marked the DC down: %+v", h[0])
	}
	// And the second URL does work when the first is down, so the zero above
	// is not a dead proxy.
	b, _ := newAuth(t, adConfig(func(c *Config) { c.URLs = []string{"ldaps://127.0.0.1:1", "ldaps://" + second} }), nil)
	if _, out, err := b.Login(ctx, Request{Username: wp1, Password: pw(wp1)}); err != nil || !out.OK {
		t.Fatalf("login through the proxy: %v %+v", err, out)
	}
	if viaProxy.Load() == 0 {
		t.Error("the proxy saw no connection")
	}
}

// TestTLS: LDAPS and StartTLS verify the DC against ca_file; another CA and a
// name mismatch fail with a TLS error.
func TestTLS(t *testing.T) {
	needDC(t)
	otherCA := filepath.Join(t.TempDir(), "other-ca.pem")
	_, der, err := samba.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(otherCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		url        string
		startTLS   bool
		caFile     string
		serverName string
		wantOK     bool
		wantTLSErr any
	}{
		{"LDAPS", dc.LDAPSURL(), false, dc.CAFile, dc.Hostname, true, nil},
		{"StartTLS", dc.StartTLSURL(), true, dc.CAFile, dc.Hostname, true, nil},
		{"LDAPS other CA", dc.LDAPSURL(), false, otherCA, dc.Hostname, false, &x509.UnknownAuthorityError{}},
		{"StartTLS other CA", dc.StartTLSURL(), true, otherCA, dc.Hostname, false, &x509.UnknownAuthorityError{}},
		{"LDAPS name mismatch", dc.LDAPSURL(), false, dc.CAFile, "dc9.elsewhere.example", false, &x509.HostnameError{}},
		{"StartTLS name mismatch", dc.StartTLSURL(), true, dc.CAFile, "dc9.elsewhere.example", false, &x509.HostnameError{}},
		{"LDAPS by IP without server_name", dc.LDAPSURL(), false, dc.CAFile, "", false, &x509.HostnameError{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _ := newAuth(t, adConfig(func(c *Config) {
				c.URLs, c.StartTLS, c.CAFile, c.ServerName = []string{tt.url}, tt.startTLS, tt.caFile, tt.serverName
			}), nil)
			_, out, err := a.Login(context.Background(), Request{Username: "alice", Password: pw("alice")})
			if tt.wantOK {
				if err != nil || !out.OK {
					t.Fatalf("got ok=%v err=%v", out.OK, err)
				}
				return
			}
			if out.OK || !errors.Is(err, ErrTLS) {
				t.Fatalf("got ok=%v err=%v, want ErrTLS", out.OK, err)
			}
			switch tt.wantTLSErr.(type) {
			case *x509.UnknownAuthorityError:
				var ue x509.UnknownAuthorityError
				if !errors.As(err, &ue) {
					t.Errorf("got %v, want an unknown-authority error", err)
				}
			case *x509.HostnameError:
				var he x509.HostnameError
				if !errors.As(err, &he) {
					t.Errorf("got %v, want a hostname error", err)
				}
			}
		})
	}
}

// TestPlaintextRefused: ldap:// without StartTLS is a config error, and the
// DC itself refuses a simple bind without TLS.
func TestPlaintextRefused(t *testing.T) {
	needDC(t)
	_, j := newAuth(t, adConfig(nil), nil)
	for _, insecure := range []bool{false, true} {
		cfg := adConfig(func(c *Config) { c.URLs = []string{dc.StartTLSURL()}; c.InsecurePlaintext = insecure })
		if _, err := New(cfg, Options{Audit: j, BindPassword: secrets}); err == nil {
			t.Fatalf("New accepted plain ldap:// to a non-loopback DC (insecure_plaintext=%v)", insecure)
		}
	}
	// Through a loopback forwarder, plaintext is allowed by the config, and
	// the DC itself refuses a simple bind without TLS.
	var n atomic.Int32
	fwd := listenProxy(t, &n, net.JoinHostPort(dc.IP.String(), "389"))
	a, _ := newAuth(t, adConfig(func(c *Config) { c.URLs = []string{"ldap://" + fwd}; c.InsecurePlaintext = true }), nil)
	_, out, err := a.Login(context.Background(), Request{Username: "alice", Password: pw("alice")})
	if out.OK || err == nil {
		t.Errorf("plain bind to AD: got ok=%v err=%v, want an error (strong auth required)", out.OK, err)
	}
	if n.Load() == 0 {
		t.Error("the forwarder saw no connection")
	}
}

// TestRateLimit: failures per user trip the limit, later attempts are
// refused without asking the DC (its badPwdCount stops), and the limit
// resets after the window.
func TestRateLimit(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	rl1 := freshUser(t, "rl")
	clk := &fakeClock{t: time.Now()}
	a, j := newAuth(t, adConfig(func(c *Config) {
		c.MaxFailuresPerUser = 3
		c.FailureWindow = conf.Duration(10 * time.Minute)
	}), clk.Now)
	login := func(pass string) Outcome {
		t.Helper()
		_, out, err := a.Login(ctx, Request{Username: rl1, Password: pass, Source: "198.51.100.7"})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	steps := []struct {
		name    string
		advance time.Duration
		pass    string
		want    Reason
		badPwd  string // the DC's badPwdCount after the step, when set
	}{
		{"fail 1", 0, "Wrong-1x!", ReasonInvalidCredentials, "1"},
		{"fail 2", time.Second, "Wrong-2x!", ReasonInvalidCredentials, "2"},
		{"backoff after two failures", 0, pw(rl1), ReasonRateLimited, "2"},
		{"fail 3 after the backoff trips the limit", 2 * time.Second, "Wrong-3x!", ReasonInvalidCredentials, "3"},
		{"refused even with the right password", time.Minute, pw(rl1), ReasonRateLimited, "3"},
		{"other name forms share the counter", 0, rl1 + "@corp.example", ReasonRateLimited, "3"},
		{"reset after the window", 11 * time.Minute, pw(rl1), "", "0"},
		{"a success cleared the counter", 0, "Wrong-4x!", ReasonInvalidCredentials, "1"},
	}
	for _, s := range steps {
		clk.Add(s.advance)
		var out Outcome
		if s.name == "other name forms share the counter" {
			var err error
			_, out, err = a.Login(ctx, Request{Username: rl1 + "@corp.example", Password: pw(rl1)})
			if err != nil {
				t.Fatal(err)
			}
		} else {
			out = login(s.pass)
		}
		if out.Reason != s.want {
			t.Fatalf("%s: got %q, want %q", s.name, out.Reason, s.want)
		}
		// Refused attempts never reach the DC: its counter does not move.
		// (A successful bind resets it.)
		if got, err := dc.Attr(ctx, rl1, "badPwdCount"); err != nil || len(got) != 1 || got[0] != s.badPwd {
			t.Fatalf("%s: badPwdCount got %v %v, want [%s]", s.name, got, err, s.badPwd)
		}
	}
	tripped := 0
	for _, e := range events(t, j) {
		if e.Event.Reason == "rate_limit_tripped" {
			tripped++
			if e.Event.Severity != "high" {
				t.Errorf("trip event severity: got %q", e.Event.Severity)
			}
		}
	}
	if tripped != 1 {
		t.Errorf("rate_limit_tripped events: got %d, want 1", tripped)
	}
}

// TestSourceRateLimit: many names from one address trip the source limit.
func TestSourceRateLimit(t *testing.T) {
	needDC(t)
	clk := &fakeClock{t: time.Now()}
	a, _ := newAuth(t, adConfig(func(c *Config) { c.MaxFailuresPerSource = 3 }), clk.Now)
	for i, want := range []Reason{ReasonUserNotFound, ReasonUserNotFound, ReasonUserNotFound, ReasonRateLimited} {
		clk.Add(time.Hour / 100)
		_, out, err := a.Login(context.Background(), Request{Username: "spray" + string(rune('a'+i)), Password: "x", Source: "203.0.113.9"})
		if err != nil || out.Reason != want {
			t.Fatalf("attempt %d: got %q %v, want %q", i, out.Reason, err, want)
		}
	}
	_, out, err := a.Login(context.Background(), Request{Username: "alice", Password: pw("alice"), Source: "203.0.113.10"})
	if err != nil || !out.OK {
		t.Errorf("another source: got %+v %v", out, err)
	}
}

// A shared source (the chatbot's backend, in [ldap] shared_sources) is not
// limited as a whole: many users' typos from it refuse none of the others.
func TestSharedSourceCountsPerUserOnly(t *testing.T) {
	needDC(t)
	clk := &fakeClock{t: time.Now()}
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.MaxFailuresPerSource = 3
		c.SharedSources = []string{"10.30.0.5/32"}
	}), clk.Now)
	for i := range 6 {
		clk.Add(time.Hour / 100)
		if _, out, err := a.Login(context.Background(), Request{Username: "typo" + string(rune('a'+i)), Password: "x", Source: "10.30.0.5:40000"}); err != nil || out.Reason != ReasonUserNotFound {
			t.Fatalf("attempt %d from the backend: got %q %v, want user_not_found", i, out.Reason, err)
		}
	}
	if _, out, err := a.Login(context.Background(), Request{Username: "alice", Password: pw("alice"), Source: "10.30.0.5:40001"}); err != nil || !out.OK {
		t.Errorf("alice through the backend after others' typos: got %+v %v", out, err)
	}
	if errs := (Config{URLs: []string{"ldaps://dc"}, UserBase: "dc=x", SharedSources: []string{"backend"}}).Validate(); !slices.ContainsFunc(errs, func(e *conf.FieldError) bool { return e.Key == "shared_sources[0]" }) {
		t.Errorf("a shared source that is no network: got %v", errs)
	}
}

// TestGroupCache: a warm cache saves the group lookup; a failed bind drops
// the user's entry.
func TestGroupCache(t *testing.T) {
	needDC(t)
	a, _ := newAuth(t, adConfig(nil), nil)
	ctx := context.Background()
	login := func(pass string) {
		t.Helper()
		if _, _, err := a.Login(ctx, Request{Username: "alice", Password: pass}); err != nil {
			t.Fatal(err)
		}
	}
	login(pw("alice"))
	s0 := a.Stats()
	login(pw("alice"))
	s1 := a.Stats()
	if s1.GroupCacheHits != s0.GroupCacheHits+1 {
		t.Errorf("cache hits: got %d, want %d", s1.GroupCacheHits, s0.GroupCacheHits+1)
	}
	if ops := s1.Operations - s0.Operations; ops != 2 {
		t.Errorf("LDAP operations for a warm login: got %d, want 2 (search + bind)", ops)
	}
	login("Wrong-Pass1!")
	s2 := a.Stats()
	login(pw("alice"))
	s3 := a.Stats()
	if s3.GroupCacheHits != s2.GroupCacheHits {
		t.Errorf("after a failed bind the cache was still used")
	}
}

// TestContextDeadline: an expired ctx ends the login at once with an error.
func TestContextDeadline(t *testing.T) {
	needDC(t)
	var n atomic.Int32
	silent := listenCounting(t, &n, false)
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.URLs = []string{"ldaps://" + silent}
		c.DialTimeout = conf.Duration(time.Minute)
	}), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")})
	if err == nil || out.OK {
		t.Fatalf("got ok=%v err=%v, want an error", out.OK, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want context.DeadlineExceeded in the chain", err)
	}
}

// TestAuditFailureFailsLogin: no audit, no login.
func TestAuditFailureFailsLogin(t *testing.T) {
	needDC(t)
	a, j := newAuth(t, adConfig(nil), nil)
	j.Close() // a closed journal refuses appends
	id, out, err := a.Login(context.Background(), Request{Username: "alice", Password: pw("alice")})
	if !errors.Is(err, ErrAudit) || out.OK || id.DN != "" {
		t.Errorf("got ok=%v id=%q err=%v, want ErrAudit and no identity", out.OK, id.DN, err)
	}
}

// TestConcurrentLogins exercises the pools under -race.
func TestConcurrentLogins(t *testing.T) {
	needDC(t)
	a, _ := newAuth(t, adConfig(func(c *Config) { c.MaxConnections = 2 }), nil)
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		go func(i int) {
			user := []string{"alice", "bob"}[i%2]
			_, out, err := a.Login(context.Background(), Request{Username: user, Password: pw(user)})
			if err == nil && !out.OK {
				err = errors.New(string(out.Reason))
			}
			errs <- err
		}(i)
	}
	for i := 0; i < 16; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if h := a.Health(); h[0].IdleConns > 4 {
		t.Errorf("idle connections: got %d, want at most 4", h[0].IdleConns)
	}
}

// TestServiceBindRefused: a wrong service password fails the login with
// ErrServiceBind, does not mark the DC down, and is not retried for a while
// (each retry would count against the service account's lockout).
func TestServiceBindRefused(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	svcWrong := freshUser(t, "svc-wrong")
	clk := &fakeClock{t: time.Now()}
	j := newJournal(t)
	a, err := New(adConfig(func(c *Config) { c.BindDN = dc.UserDN(svcWrong) }), Options{Audit: j, Now: clk.Now,
		BindPassword: func(context.Context, string) ([]byte, error) { return []byte("Not-The-Passw0rd"), nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	for i := 0; i < 3; i++ {
		_, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")})
		if !errors.Is(err, ErrServiceBind) || out.OK {
			t.Fatalf("login %d: got ok=%v err=%v, want ErrServiceBind", i, out.OK, err)
		}
	}
	if got, err := dc.Attr(ctx, svcWrong, "badPwdCount"); err != nil || len(got) != 1 || got[0] != "1" {
		t.Errorf("service account badPwdCount: got %v %v, want [1]", got, err)
	}
	if h := a.Health(); !h[0].Up {
		t.Errorf("a refused service account marked the DC down: %+v", h[0])
	}
	// A secret that cannot be read is not the DC's fault either.
	b, err := New(adConfig(nil), Options{Audit: j,
		BindPassword: func(context.Context, string) ([]byte, error) { return nil, errors.New("the vault is not open") }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if _, out, err := b.Login(ctx, Request{Username: "alice", Password: pw("alice")}); err == nil || out.OK {
		t.Fatalf("got ok=%v err=%v, want an error", out.OK, err)
	}
	if h := b.Health(); !h[0].Up {
		t.Errorf("an unreadable secret marked the DC down: %+v", h[0])
	}
}

var userSeq atomic.Int32

// freshUser creates a user no other test (or earlier -count run) touches,
// with password pw(name), and returns its name.
func freshUser(t *testing.T, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s%d-%d", prefix, os.Getpid()%10000, userSeq.Add(1))
	if _, err := dc.AddUser(context.Background(), samba.User{Name: name, Password: pw(name)}); err != nil {
		t.Fatal(err)
	}
	return name
}
