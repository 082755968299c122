package ldapauth

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/audit"
)

// A burst of wrong passwords for one user, sent at once, reaches the DC no
// more often than max_failures_per_user allows: the failure is counted only
// when its bind returns, so without a guard all of them would pass the
// check together and lock the account in AD (here at 6 bad passwords).
func TestConcurrentLoginsStayWithinTheUserLimit(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	u := freshUser(t, "cc")
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.MaxFailuresPerUser = 3
		c.MaxConnections = 16
	}), nil)
	const n = 12
	var wg sync.WaitGroup
	reasons := make([]Reason, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, out, err := a.Login(ctx, Request{Username: u, Password: fmt.Sprintf("Wrong-%dx!", i), Source: fmt.Sprintf("198.51.100.%d", i+1)})
			if err != nil {
				t.Error(err)
				return
			}
			reasons[i] = out.Reason
		}()
	}
	close(start)
	wg.Wait()
	reached := 0
	for _, r := range reasons {
		if r != ReasonRateLimited {
			reached++
		}
	}
	bad, err := dc.Attr(ctx, u, "badPwdCount")
	if err != nil {
		t.Fatal(err)
	}
	if reached > 3 || len(bad) != 1 {
		t.Fatalf("%d of %d parallel wrong passwords reached the DC (badPwdCount %v), want at most 3", reached, n, bad)
	}
	if c, _ := strconv.Atoi(bad[0]); c > 3 {
		t.Errorf("DC badPwdCount %d, want at most max_failures_per_user (3)", c)
	}
}

// A computer account is a user in AD, with a password any local admin of
// a domain-joined host can read from its LSA secrets: the default
// user_filter keeps it out.
func TestComputerAccountCannotLogIn(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	adm, err := ldap.DialURL(dc.LDAPSURL(), ldap.DialWithTLSConfig(dc.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.Bind(dc.AdminDN, dc.AdminPass); err != nil {
		t.Fatal(err)
	}
	name := "ws" + freshUser(t, "c")[1:]
	add := ldap.NewAddRequest("CN="+name+",CN=Computers,"+dc.BaseDN, nil)
	add.Attribute("objectClass", []string{"top", "person", "organizationalPerson", "user", "computer"})
	add.Attribute("sAMAccountName", []string{name + "$"})
	add.Attribute("userAccountControl", []string{"4096"}) // a workstation trust account
	add.Attribute("unicodePwd", []string{unicodePwd("Machine-Pw-1x!Q")})
	if err := adm.Add(add); err != nil {
		t.Fatal(err)
	}
	a, _ := newAuth(t, adConfig(nil), nil)
	_, out, err := a.Login(ctx, Request{Username: name + "$", Password: "Machine-Pw-1x!Q"})
	if err != nil || out.OK || out.Reason != ReasonUserNotFound {
		t.Fatalf("computer account %s$: got %+v, %v; want user_not_found", name, out, err)
	}
	// A person still logs in.
	if _, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")}); err != nil || !out.OK {
		t.Fatalf("alice: got %+v, %v", out, err)
	}
}

// unicodePwd is a password as AD's unicodePwd attribute takes it.
func unicodePwd(p string) string {
	r := []rune(`"` + p + `"`)
	b := make([]byte, 2*len(r))
	for i, c := range r {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(c))
	}
	return string(b)
}

// A login name that matches no account may be a password typed into the
// wrong field: the journal holds its keyed hash, never the text. A name
// that is an account's is recorded as it is.
func TestUnknownLoginNameIsHashedInTheAudit(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	j := newJournal(t)
	a, err := New(adConfig(nil), Options{Audit: j, BindPassword: secrets, NameHash: func(s string) string { return "hmac(" + strconv.Itoa(len(s)) + ")" }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	const typed = "Correct-Horse-9x!"
	if _, out, err := a.Login(ctx, Request{Username: typed, Password: "whatever-1x!"}); err != nil || out.Reason != ReasonUserNotFound {
		t.Fatalf("got %+v, %v; want user_not_found", out, err)
	}
	if _, out, err := a.Login(ctx, Request{Username: "alice", Password: "wrong-1x!"}); err != nil || out.Reason != ReasonInvalidCredentials {
		t.Fatalf("got %+v, %v; want invalid_credentials", out, err)
	}
	var unknown, alice *audit.Event
	for _, e := range events(t, j) {
		if e.Event.Type != "auth.login" {
			continue
		}
		ev := e.Event
		switch ev.Reason {
		case string(ReasonUserNotFound):
			unknown = &ev
		case string(ReasonInvalidCredentials):
			alice = &ev
		}
		if b, _ := ev.Canonical(); strings.Contains(string(b), typed) {
			t.Errorf("the journal holds the name typed: %s", b)
		}
	}
	if unknown == nil || unknown.Actor.User != "" || unknown.Details["username_hmac"] != "hmac(17)" {
		t.Errorf("unknown name's event: %+v, want its hash and no user", unknown)
	}
	if alice == nil || alice.Actor.User != "alice" {
		t.Errorf("alice's event: %+v, want her name", alice)
	}
}

// Every name form of one account shares its failure count: a UPN whose
// local part is not the sAMAccountName, and DOMAIN\name, do not each get
// max_failures_per_user more tries at AD's lockout counter. Unlocking the
// name clears the account's count too.
func TestNameFormsShareTheAccountsLimit(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	u := freshUser(t, "nf")
	adm, err := ldap.DialURL(dc.LDAPSURL(), ldap.DialWithTLSConfig(dc.TLSConfig()))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if err := adm.Bind(dc.AdminDN, dc.AdminPass); err != nil {
		t.Fatal(err)
	}
	upn := "first.last." + u + "@corp.example"
	m := ldap.NewModifyRequest(dc.UserDN(u), nil)
	m.Replace("userPrincipalName", []string{upn})
	if err := adm.Modify(m); err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: time.Now()}
	a, _ := newAuth(t, adConfig(func(c *Config) { c.MaxFailuresPerUser = 3 }), clk.Now)
	for _, name := range []string{u, u, upn, upn, upn, u} {
		clk.Add(10 * time.Second) // past every backoff, inside the window
		if _, _, err := a.Login(ctx, Request{Username: name, Password: "Wrong-Pass-1x!"}); err != nil {
			t.Fatal(err)
		}
	}
	bad, err := dc.Attr(ctx, u, "badPwdCount")
	if err != nil || len(bad) != 1 {
		t.Fatalf("badPwdCount: %v %v", bad, err)
	}
	if c, _ := strconv.Atoi(bad[0]); c > 3 {
		t.Errorf("badPwdCount %d across name forms, want at most max_failures_per_user (3)", c)
	}
	key, _ := a.UserKey(u)
	a.Unlock(key, "")
	clk.Add(10 * time.Second)
	if _, out, err := a.Login(ctx, Request{Username: u, Password: pw(u)}); err != nil || !out.OK {
		t.Errorf("after ldap unlock --user %s: got %+v, %v; want the login through", u, out, err)
	}
}
