package ldapauth

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/samba"
)

// The Samba AD DC shared by every test of the package, provisioned once in
// TestMain; nil (with sambaSkip saying why) when it cannot run here.
var (
	dc        *samba.DC
	sambaSkip error
)

const svcName = "svc-applianced"

// The seeded directory. alice is in ai-users through three levels of
// nesting: alice ∈ team-a ∈ dept-eng ∈ ai-users.
var seedUsers = []samba.User{
	{Name: svcName, Password: pw(svcName)},
	{Name: "alice", Password: pw("alice"), DisplayName: "Alice Liddell", Mail: "alice@corp.example"},
	{Name: "bob", Password: pw("bob"), DisplayName: "Bob"},
	{Name: "carol", Password: pw("carol")}, // disabled
	{Name: "dave", Password: pw("dave")},   // locked
	{Name: "erin", Password: pw("erin")},   // account expired
	{Name: "frank", Password: pw("frank")}, // must change password
	{Name: "gina", Password: pw("gina")},   // password expired
	{Name: "hank", Password: pw("hank")},   // no logon hours
	{Name: "dup1", Password: pw("dup1"), Mail: "shared@corp.example"},
	{Name: "dup2", Password: pw("dup2"), Mail: "shared@corp.example"},
}

func pw(name string) string { return "Pw-" + name + "-7x!Q" }

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// Fuzzing needs no DC, and each fuzz worker runs TestMain.
		sambaSkip = errors.New("not started while fuzzing")
		os.Exit(m.Run())
	}
	if err := samba.Available(); err != nil {
		sambaSkip = err
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	d, err := samba.Start(ctx, samba.Options{LockoutThreshold: 6})
	if err != nil {
		log.Fatal(err)
	}
	if err := seed(ctx, d); err != nil {
		d.Stop()
		log.Fatal(err)
	}
	cancel()
	dc = d
	code := m.Run()
	d.Stop()
	os.Exit(code)
}

func seed(ctx context.Context, d *samba.DC) error {
	for _, u := range seedUsers {
		if _, err := d.AddUser(ctx, u); err != nil {
			return err
		}
	}
	steps := []func() error{
		func() error { _, err := d.AddGroup(ctx, "team-a", "alice"); return err },
		func() error { _, err := d.AddGroup(ctx, "dept-eng", "team-a"); return err },
		func() error { _, err := d.AddGroup(ctx, "ai-users", "dept-eng"); return err },
		func() error { _, err := d.AddGroup(ctx, "helpdesk", "bob"); return err },
		func() error { return d.Disable(ctx, "carol") },
		func() error { return d.Lock(ctx, "dave") },
		func() error { return d.ExpireAccount(ctx, "erin") },
		func() error { return d.MustChangePassword(ctx, "frank") },
		func() error { return d.ExpirePassword(ctx, "gina") },
		func() error { return d.DenyLogonHours(ctx, "hank") },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}

func needDC(t *testing.T) {
	t.Helper()
	if dc == nil {
		t.Skipf("no Samba AD DC: %v", sambaSkip)
	}
}

// adConfig is a working config for the shared DC; mut adjusts it.
func adConfig(mut func(*Config)) Config {
	c := Config{
		URLs:               []string{dc.LDAPSURL()},
		CAFile:             dc.CAFile,
		ServerName:         dc.Hostname,
		BindDN:             dc.UserDN(svcName),
		BindPasswordSecret: "ldap-bind",
		UserBase:           dc.BaseDN,
		GroupMode:          GroupModeAD,
		GroupRoles: map[string][]string{
			"ai-users":                          {"chat-user"},
			"dept-eng":                          {"engineer"},
			"CN=helpdesk,CN=Users," + dc.BaseDN: {"ticket-user"},
		},
		DialTimeout:    0,
		RequestTimeout: 0,
	}
	if mut != nil {
		mut(&c)
	}
	return c
}

func secrets(ctx context.Context, name string) ([]byte, error) {
	if name != "ldap-bind" {
		return nil, fmt.Errorf("no secret %q", name)
	}
	return []byte(pw(svcName)), nil
}

func newJournal(t testing.TB) *audit.Journal {
	t.Helper()
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// newAuth returns an Authenticator auditing to a real journal in a temp dir.
func newAuth(t *testing.T, cfg Config, now func() time.Time) (*Authenticator, *audit.Journal) {
	t.Helper()
	j := newJournal(t)
	a, err := New(cfg, Options{Audit: j, BindPassword: secrets, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, j
}

// events reads every event the journal holds.
func events(t *testing.T, j *audit.Journal) []audit.Entry {
	t.Helper()
	r, err := j.Reader(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []audit.Entry
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		e, err := r.Next(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
}

func groupNames(gs []Group) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.Name
	}
	return out
}

func hasAll(have []string, want ...string) bool {
	set := map[string]bool{}
	for _, h := range have {
		set[strings.ToLower(h)] = true
	}
	for _, w := range want {
		if !set[strings.ToLower(w)] {
			return false
		}
	}
	return true
}

// fakeClock is a settable clock for the failure limits (no test waits on
// the wall clock).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
