package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/ldapauth/devdir"
)

// TestLDAPTestVerb runs `applianced ldap test` through a real daemon against
// the embedded directory: the CLI reads the password from stdin, the daemon
// logs in with ldapauth and answers with the identity or the exact reason.
func TestLDAPTestVerb(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (the test daemon's admin socket admits uid 0 only)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()
	srv, err := devdir.Start(ctx, devdir.Options{Dir: dir, AnonymousSearch: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	pass := map[string]string{}
	for _, c := range srv.Credentials() {
		pass[c.Username] = c.Password
	}
	cfg := testConfig(t, dir, "\n"+srv.TOML())
	startDaemon(t, cfg)

	verb := func(stdin string, args ...string) (int, string, string) {
		e := testEnv()
		e.stdin = strings.NewReader(stdin)
		code := run(ctx, e, append([]string{"ldap", "test", "--config", cfg.Path}, args...))
		return code, e.stdout.(*syncBuffer).String(), e.stderr.(*syncBuffer).String()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, _, errOut := verb("x\n", "nobody"); !strings.Contains(errOut, "admin") && !strings.Contains(errOut, "connect") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the daemon's admin socket never answered")
		}
		time.Sleep(100 * time.Millisecond)
	}
	tests := []struct {
		name     string
		user     string
		stdin    string
		wantCode int
		want     []string
	}{
		{"alice, nested groups", "alice", pass["alice"] + "\n", exitOK,
			[]string{"ok: alice", "DN: uid=alice,ou=people,dc=applianced,dc=dev", "\nid: ", "team-ai", "ai-users", "DC: ldaps://127.0.0.1:"}},
		{"wrong password", "alice", "wrong\n", exitFailure, []string{"denied: invalid_credentials", "AD code: 52e"}},
		{"disabled", "bob", pass["bob"], exitFailure, []string{"denied: account_disabled", "AD code: 533"}},
		{"not in allowed_groups", "carol", pass["carol"], exitFailure, []string{"denied: not_in_allowed_groups"}},
		// A user of its own: alice is in her backoff after the wrong password.
		{"empty password", "erin", "\n", exitFailure, []string{"denied: empty_password"}},
		{"unknown", "mallory", "x", exitFailure, []string{"denied: user_not_found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := verb(tt.stdin, tt.user)
			if code != tt.wantCode {
				t.Errorf("exit: got %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, out, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out+errOut, pass[tt.user]) && pass[tt.user] != "" {
				t.Errorf("the password was printed")
			}
		})
	}
	code, out, _ := verb(pass["alice"], "--json", "alice")
	var res ldapTestResult
	if err := json.Unmarshal([]byte(out), &res); code != exitOK || err != nil || res.Identity == nil || res.Identity.Username != "alice" {
		t.Errorf("--json: exit %d err %v result %+v", code, err, res)
	}

	// A TOTP enrolment is bound to the account the directory has under the
	// name, and refused for a name it does not know.
	enroll := func(args ...string) (int, string, string) {
		e := testEnv()
		code := run(ctx, e, append([]string{"user", "totp", "enroll", "--config", cfg.Path}, args...))
		return code, e.stdout.(*syncBuffer).String(), e.stderr.(*syncBuffer).String()
	}
	code, out, errOut := enroll("--json", "alice")
	var enr toolproxy.EnrollAnswer
	if err := json.Unmarshal([]byte(out), &enr); code != exitOK || err != nil || res.Identity == nil || enr.AccountID != res.Identity.ID || !strings.HasPrefix(enr.URI, "otpauth://totp/") {
		t.Errorf("totp enroll alice: exit %d err %v answer %+v, want account %q\n%s", code, err, enr, res.Identity.ID, errOut)
	}
	if code, _, errOut := enroll("mallory"); code == exitOK || !strings.Contains(errOut, "user_not_found") {
		t.Errorf("totp enroll of an unknown name: exit %d, stderr %q; want a failure naming user_not_found", code, errOut)
	}

	// The DC's health and the login counters are on the admin socket's
	// /metrics.
	hc := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", cfg.Server.AdminSocket)
	}}}
	resp, err := hc.Get("http://admin/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`applianced_ldap_dc_up{url="` + srv.URL() + `"} 1`,
		"applianced_ldap_logins_total ",
		"applianced_ldap_operations_total ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// A reload (SIGHUP) builds a new directory login from the new [ldap]
// section; the failures counted before it carry over, so a user refused
// for too many wrong passwords stays refused, and the limit of the new
// config is what judges them.
func TestLoginFailuresSurviveAReload(t *testing.T) {
	x := startDevDaemon(t, "info")
	path := x.d.config().Path
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	reload := func(maxFailures int) {
		t.Helper()
		body := bytes.Replace(good, []byte("[ldap]\n"), []byte(fmt.Sprintf("[ldap]\nmax_failures_per_user = %d\n", maxFailures)), 1)
		if err := os.WriteFile(path, body, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := x.d.reloadFrom(x.ctx, path, audit.Actor{}); err != nil {
			t.Fatalf("reload: %v", err)
		}
		if ev := x.lastEvent("config.reload"); ev.Outcome != audit.OutcomeSuccess {
			t.Fatalf("reload: got %s %q", ev.Outcome, ev.Reason)
		}
	}
	reload(2)
	for i := range 2 {
		if code, body := x.login("wrong-" + strconv.Itoa(i)); code != http.StatusBadRequest {
			t.Fatalf("wrong password %d: got %d %s, want 400 invalid_grant", i+1, code, body)
		}
	}
	reload(2)
	if code, body := x.login("wrong-2"); code != http.StatusTooManyRequests {
		t.Fatalf("a wrong password after the reload: got %d %s, want 429 (the two failures before it still count)", code, body)
	}
	if code, body := x.login(x.alicePW); code != http.StatusTooManyRequests {
		t.Fatalf("the right password after the reload: got %d %s, want 429 until the window passes", code, body)
	}
	if ev := x.lastEvent("auth.login"); ev.Reason != "rate_limited" {
		t.Errorf("auth.login: got %+v, want rate_limited", ev)
	}
}
