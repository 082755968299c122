package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/vault"
	"github.com/pquerna/otp/totp"
)

// totpUser is alice on the demo appliance, enrolled, logged in, and an
// agent acting for her.
type totpUser struct {
	x       *devDaemon
	seed    string // what her authenticator holds
	account string
	userTok string // her own token, which decides
	obo     string // the agent's token for her
	calls   int
}

func enrolledAlice(t *testing.T, x *devDaemon) *totpUser {
	t.Helper()
	if err := x.putSecret(secretPutRequest{Name: "tickets-key", Type: vault.TypeAPIKey, Value: x.toolKey, AllowedTools: []string{"tickets"}}); err != nil {
		t.Fatal(err)
	}
	var enr toolproxy.EnrollAnswer
	if err := x.admin.Call(x.ctx, "POST", toolproxy.AdminTOTPEnroll, toolproxy.EnrollRequest{User: "alice"}, &enr); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	u, err := url.Parse(enr.URI)
	if err != nil {
		t.Fatal(err)
	}
	a := &totpUser{x: x, seed: u.Query().Get("secret"), account: enr.AccountID}
	st, got := x.login(x.alicePW)
	a.userTok, _ = x.token(st, got, "login")
	st, got = x.exchange(a.userTok)
	a.obo, _ = x.token(st, got, "exchange")
	return a
}

// decide asks for the approval of a new DELETE and posts code for it.
func (a *totpUser) decide(t *testing.T, code string) (int, []byte) {
	t.Helper()
	a.calls++
	st, got := a.x.tool("DELETE", fmt.Sprintf("/tickets/%d", a.calls), a.obo, nil)
	var eb struct {
		Error      string `json:"error"`
		ApprovalID string `json:"approval_id"`
	}
	if err := json.Unmarshal(got, &eb); err != nil || st != http.StatusForbidden || eb.Error != "approval_required" {
		t.Fatalf("DELETE: %d %s, want 403 approval_required", st, got)
	}
	hdr := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + a.userTok}
	body := `{"user":"alice","code":"` + code + `","decision":"approve"}`
	return a.x.call(a.x.https, "POST", a.x.base+"/v1/approvals/"+eb.ApprovalID, hdr, strings.NewReader(body), nil)
}

// wrong gives n wrong codes, a few per approval (each allows five).
func (a *totpUser) wrong(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if st, got := a.decide(t, "000000"); st != http.StatusForbidden {
			t.Fatalf("wrong code %d: %d %s, want 403", i+1, st, got)
		}
	}
}

// totpVerb runs `applianced user totp SUB --config ... ARGS` against x.
func (x *devDaemon) totpVerb(sub string, args ...string) (code int, stdout, stderr string) {
	e := testEnv()
	code = run(x.ctx, e, append([]string{"user", "totp", sub, "--config", x.cfg.Path}, args...))
	return code, e.stdout.(*syncBuffer).String(), e.stderr.(*syncBuffer).String()
}

// After ten wrong codes lock alice's TOTP, `user totp unlock alice` lets
// the authenticator she already has approve again: the seed is the same.
func TestTOTPUnlockVerbLetsTheSameAuthenticatorApprove(t *testing.T) {
	x := startDevDaemon(t, "info")
	a := enrolledAlice(t, x)
	a.wrong(t, 10)
	code, err := totp.GenerateCode(a.seed, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if st, got := a.decide(t, code); st != http.StatusForbidden || !strings.Contains(string(got), "applianced user totp unlock alice") {
		t.Fatalf("her code while locked: %d %s, want 403 naming the unlock", st, got)
	}
	ec, out, errOut := x.totpVerb("unlock", "alice")
	if ec != exitOK || !strings.Contains(out, "unlocked (10 wrong codes cleared)") {
		t.Fatalf("unlock: exit %d\nstdout: %s\nstderr: %s", ec, out, errOut)
	}
	if ev := x.lastEvent("auth.totp_unlock"); ev.Target != "alice" || ev.Details["account_id"] != a.account || ev.Details["failures_cleared"] != "10" || ev.Actor.UID == nil {
		t.Errorf("the unlock recorded as %+v", ev)
	}
	// The code above was never accepted, so its time step is still good.
	if st, got := a.decide(t, code); st != http.StatusOK {
		t.Fatalf("her authenticator's code after the unlock: %d %s, want 200", st, got)
	}
}

// `user totp status` tells the wrong codes in a row and, once locked,
// since when; never the seed.
func TestTOTPStatusVerbReportsFailuresAndLock(t *testing.T) {
	x := startDevDaemon(t, "info")
	a := enrolledAlice(t, x)
	a.wrong(t, 3)
	ec, out, errOut := x.totpVerb("status", "--json", "alice")
	var st toolproxy.TOTPStatus
	if err := json.Unmarshal([]byte(out), &st); ec != exitOK || err != nil || !st.Enrolled || st.AccountID != a.account || st.Failures != 3 || st.Locked {
		t.Fatalf("status --json after 3 wrong codes: exit %d, %v, %+v\n%s", ec, err, st, errOut)
	}
	before := time.Now().Truncate(time.Second)
	a.wrong(t, 7)
	ec, out, errOut = x.totpVerb("status", "alice")
	if ec != exitOK {
		t.Fatalf("status: exit %d\n%s", ec, errOut)
	}
	for _, want := range []string{"account id  " + a.account, "wrong codes in a row  10", "locked  yes, since ", "applianced user totp unlock alice"} {
		if !strings.Contains(strings.Join(strings.Fields(out), "  "), strings.Join(strings.Fields(want), "  ")) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	_, out2, _ := x.totpVerb("status", "--json", "alice")
	if err := json.Unmarshal([]byte(out2), &st); err != nil || !st.Locked || st.LockedAt.Before(before) || st.LockedAt.After(time.Now()) {
		t.Errorf("status --json once locked: %v %+v, want locked since the tenth wrong code", err, st)
	}
	if strings.Contains(out+out2, a.seed) {
		t.Errorf("status printed the seed")
	}
}

// A user who is not enrolled is a state status reports, not a failure.
func TestTOTPStatusVerbOfAUserNotEnrolled(t *testing.T) {
	x := startDevDaemon(t, "info")
	ec, out, errOut := x.totpVerb("status", "--json", "alice")
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); ec != exitOK || err != nil || st["enrolled"] != false || st["account_id"] == "" {
		t.Fatalf("status --json of alice, not enrolled: exit %d, %v, %s\n%s", ec, err, out, errOut)
	}
	if ec, out, _ := x.totpVerb("status", "alice"); ec != exitOK || !strings.Contains(out, "applianced user totp enroll alice") {
		t.Errorf("status of alice, not enrolled: exit %d\n%s\nwant exit 0 saying how to enroll", ec, out)
	}
}

// Unlocking an account that is not locked changes nothing and says so.
func TestTOTPUnlockVerbOfAnAccountNotLocked(t *testing.T) {
	x := startDevDaemon(t, "info")
	a := enrolledAlice(t, x)
	a.wrong(t, 2)
	ec, out, errOut := x.totpVerb("unlock", "alice")
	if ec != exitOK || !strings.Contains(out, "not locked (2 wrong codes in a row); nothing changed") {
		t.Fatalf("unlock of alice, not locked: exit %d\nstdout: %s\nstderr: %s", ec, out, errOut)
	}
	_, out, _ = x.totpVerb("status", "--json", "alice")
	var st toolproxy.TOTPStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Failures != 2 {
		t.Errorf("after the unlock: %v %+v, want the 2 wrong codes still counted", err, st)
	}
}

// eventsAfter returns the journal's events after seq.
func (x *devDaemon) eventsAfter(seq uint64) []audit.Event {
	x.t.Helper()
	r, err := x.d.journal.Reader(seq + 1)
	if err != nil {
		x.t.Fatal(err)
	}
	defer r.Close()
	var out []audit.Event
	for range x.d.journal.LastSeq() - seq {
		e, err := r.Next(x.ctx)
		if err != nil {
			x.t.Fatal(err)
		}
		out = append(out, e.Event)
	}
	return out
}

// An unknown user, or one not enrolled, cannot be unlocked: exit 1 with
// what to do, and no unlock is recorded.
func TestTOTPUnlockVerbWithoutAnEnrolmentFails(t *testing.T) {
	x := startDevDaemon(t, "info")
	tests := []struct {
		name, user string
		want       []string
	}{
		{"unknown user", "mallory", []string{`"mallory" (user_not_found)`, "name the user as they log in"}},
		{"not enrolled", "alice", []string{"has no TOTP enrolment", "applianced user totp enroll alice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := x.d.journal.LastSeq()
			ec, out, errOut := x.totpVerb("unlock", tt.user)
			if ec != exitFailure {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", ec, exitFailure, out, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q: %s", w, errOut)
				}
			}
			// The directory's lookup of the name is recorded; no unlock is.
			for _, ev := range x.eventsAfter(before) {
				if ev.Type == "auth.totp_unlock" {
					t.Errorf("an unlock was recorded: %+v", ev)
				}
			}
		})
	}
}
