package samba

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// TestDC provisions a DC and checks each account state gives AD's own reason
// code at bind, since the ldapauth tests rely on exactly these.
func TestDC(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dc, err := Start(ctx, Options{LockoutThreshold: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dc.Stop)
	const pw = "Harness-Passw0rd!"
	for _, n := range []string{"ok", "dis", "exp", "chg", "lck", "old", "hrs"} {
		if _, err := dc.AddUser(ctx, User{Name: n, Password: pw}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dc.AddGroup(ctx, "g1", "ok"); err != nil {
		t.Fatal(err)
	}
	for _, step := range []error{dc.Disable(ctx, "dis"), dc.ExpireAccount(ctx, "exp"), dc.MustChangePassword(ctx, "chg"), dc.Lock(ctx, "lck"), dc.ExpirePassword(ctx, "old"), dc.DenyLogonHours(ctx, "hrs")} {
		if step != nil {
			t.Fatal(step)
		}
	}
	tests := []struct {
		user, want string
	}{
		{"ok", ""}, {"dis", "data 533"}, {"exp", "data 701"}, {"chg", "data 773"}, {"lck", "data 775"}, {"old", "data 532"}, {"hrs", "data 530"},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			c, err := dc.dialAs(ctx, dc.UPN(tt.user), pw)
			if err == nil {
				c.Close()
			}
			got := ""
			if err != nil {
				var le *ldap.Error
				if !errors.As(err, &le) {
					t.Fatalf("bind: %v", err)
				}
				got = le.Err.Error()
			}
			if (tt.want == "") != (got == "") || (tt.want != "" && !strings.Contains(got, tt.want)) {
				t.Errorf("bind %s: got %q, want %q", tt.user, got, tt.want)
			}
		})
	}
	if v, err := dc.Attr(ctx, "lck", "badPwdCount"); err != nil || len(v) != 1 || v[0] != "3" {
		t.Errorf("badPwdCount of lck: got %v %v, want [3]", v, err)
	}
}
