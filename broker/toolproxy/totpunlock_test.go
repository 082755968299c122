package toolproxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/admin"
	"github.com/pquerna/otp/totp"
	bolt "go.etcd.io/bbolt"
)

// wrongCodes gives k wrong codes for alice, over as many approvals as the
// per-approval limit needs, and returns the last answer.
func wrongCodes(t *testing.T, e *env, k int) reply {
	t.Helper()
	var last reply
	for k > 0 {
		id := askApproval(t, e, agentToken, fmt.Sprintf("/v1/tools/tickets/tickets/%d", 400+k), nil)
		for range min(k, maxTOTPFailures-1) {
			last = e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: "000000", Decision: "approve"})
			k--
		}
	}
	return last
}

// rightCode moves the clock to the next time step and approves a new
// approval with the code the authenticator holding uri's seed shows then.
func rightCode(t *testing.T, e *env, uri string) reply {
	t.Helper()
	e.clk.Add(totpPeriod * time.Second)
	code, err := totp.GenerateCode(totpSecret(t, uri), e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	id := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/1", nil)
	return e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: code, Decision: "approve"})
}

// lockAlice enrolls alice and locks her TOTP with wrong codes; it returns
// her enrolment URI.
func lockAlice(t *testing.T, e *env) string {
	t.Helper()
	uri, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID)
	if err != nil {
		t.Fatal(err)
	}
	if got := wrongCodes(t, e, maxAccountTOTPFailures); got.status != http.StatusForbidden || !strings.Contains(string(got.body), "locked") {
		t.Fatalf("wrong code number %d: got %d %s, want 403 locked", maxAccountTOTPFailures, got.status, got.body)
	}
	return uri
}

// An unlocked account's authenticator works again as it was: the unlock
// clears the lock, not the seed, so the user does not scan a new one.
func TestTOTPUnlockKeepsTheSeed(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	c := adminSocket(t, e)
	uri := lockAlice(t, e)
	if got := rightCode(t, e, uri); got.status != http.StatusForbidden {
		t.Fatalf("the right code while locked: got %d %s, want 403", got.status, got.body)
	}
	var out TOTPUnlock
	if err := c.Call(t.Context(), "POST", AdminTOTPUnlock, UserRef{User: "alice"}, &out); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if out.Cleared != maxAccountTOTPFailures || out.Locked || out.Failures != 0 || out.AccountID != aliceID {
		t.Errorf("unlock answered %+v, want %d failures cleared, not locked, account %s", out, maxAccountTOTPFailures, aliceID)
	}
	if got := rightCode(t, e, uri); got.status != http.StatusOK {
		t.Fatalf("the same authenticator's code after the unlock: got %d %s, want 200", got.status, got.body)
	}
	ev := e.lastEvent("auth.totp_unlock")
	if ev.Action != "totp.unlock" || ev.Target != "alice" || ev.Actor.UID == nil || ev.Details["account_id"] != aliceID ||
		ev.Details["user"] != "alice" || ev.Details["failures_cleared"] != fmt.Sprint(maxAccountTOTPFailures) {
		t.Errorf("the unlock recorded as %+v", ev)
	}
}

// An unlock the journal cannot record is not done: the admin gets 503 and
// the account stays locked.
func TestTOTPUnlockNotRecordedIsNotTaken(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL)}, secrets: map[string]string{"tickets-key": toolSecret}, wrap: refusing("auth.totp_unlock")})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", UserID: aliceID, Scopes: allScopes(), JTI: "jti-1"}, "tickets")
	e.tok.add(aliceToken, Principal{User: "alice", UserID: aliceID, JTI: "jti-alice"}, userAud)
	c := adminSocket(t, e)
	uri := lockAlice(t, e)
	var ae *admin.Error
	if err := c.Call(t.Context(), "POST", AdminTOTPUnlock, UserRef{User: "alice"}, nil); !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("unlock with a journal that refuses it: got %v, want 503", err)
	}
	if rec, err := e.proxy.store.getTOTP(aliceID); err != nil || rec.Failures != maxAccountTOTPFailures || rec.LockedAt.IsZero() {
		t.Errorf("after the refused unlock: got %+v (%v), want still locked", rec, err)
	}
	if got := rightCode(t, e, uri); got.status != http.StatusForbidden {
		t.Errorf("the right code after the refused unlock: got %d %s, want 403 (still locked)", got.status, got.body)
	}
}

// Unlocking an account that is not locked changes nothing, its count of
// wrong codes included (clearing it would hand whoever guesses more
// tries), and says so; the attempt is recorded.
func TestTOTPUnlockOfAnAccountNotLockedChangesNothing(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	c := adminSocket(t, e)
	if _, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID); err != nil {
		t.Fatal(err)
	}
	wrongCodes(t, e, 3)
	before, err := e.proxy.store.getTOTP(aliceID)
	if err != nil {
		t.Fatal(err)
	}
	var out TOTPUnlock
	if err := c.Call(t.Context(), "POST", AdminTOTPUnlock, UserRef{User: "alice"}, &out); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if out.Cleared != 0 || out.Locked || out.Failures != 3 {
		t.Errorf("unlock answered %+v, want nothing cleared and the 3 failures still counted", out)
	}
	after, err := e.proxy.store.getTOTP(aliceID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(before)
	a, _ := json.Marshal(after)
	if string(a) != string(b) {
		t.Errorf("the enrolment changed:\nbefore %s\nafter  %s", b, a)
	}
	if ev := e.lastEvent("auth.totp_unlock"); ev.Details["failures_cleared"] != "0" || ev.Details["failures"] != "3" || ev.Reason == "" {
		t.Errorf("the attempt recorded as %+v, want 0 cleared, 3 failures and a reason", ev)
	}
}

// Status tells the wrong codes in a row, the lock and when it was taken,
// and never the seed.
func TestTOTPStatusReportsFailuresAndLock(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	c := adminSocket(t, e)
	uri, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID)
	if err != nil {
		t.Fatal(err)
	}
	status := func() (TOTPStatus, string) {
		t.Helper()
		var raw json.RawMessage
		if err := c.Call(t.Context(), "POST", AdminTOTPStatus, UserRef{User: "alice"}, &raw); err != nil {
			t.Fatalf("status: %v", err)
		}
		var st TOTPStatus
		if err := json.Unmarshal(raw, &st); err != nil {
			t.Fatal(err)
		}
		return st, string(raw)
	}
	wrongCodes(t, e, 3)
	if st, _ := status(); !st.Enrolled || st.AccountID != aliceID || st.Failures != 3 || st.Locked || !st.LockedAt.IsZero() {
		t.Errorf("after 3 wrong codes: got %+v, want enrolled, 3 failures, not locked", st)
	}
	wrongCodes(t, e, maxAccountTOTPFailures-4)
	e.clk.Add(time.Minute)
	lockTime := e.clk.Now()
	wrongCodes(t, e, 1)
	e.clk.Add(time.Hour)
	st, raw := status()
	if !st.Locked || st.Failures != maxAccountTOTPFailures || !st.LockedAt.Equal(lockTime) {
		t.Errorf("once locked: got %+v, want locked at %v after %d failures", st, lockTime, maxAccountTOTPFailures)
	}
	if secret := totpSecret(t, uri); strings.Contains(raw, secret) {
		t.Errorf("the status holds the seed: %s", raw)
	}
}

// A record the earlier release stored and locked, without a lock time,
// still loads: status says locked (since unknown) and unlock clears it.
func TestTOTPRecordLockedWithoutALockTimeLoads(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	c := adminSocket(t, e)
	uri, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := e.proxy.store.getTOTP(aliceID)
	if err != nil {
		t.Fatal(err)
	}
	// As the earlier release wrote it: these fields and no more.
	old, err := json.Marshal(map[string]any{"user": rec.User, "failures": maxAccountTOTPFailures, "sealed": rec.Sealed, "last_step": rec.LastStep, "enrolled": rec.Enrolled})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.proxy.store.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketTOTPAccounts).Put([]byte(aliceID), old) }); err != nil {
		t.Fatal(err)
	}
	var st TOTPStatus
	if err := c.Call(t.Context(), "POST", AdminTOTPStatus, UserRef{User: "alice"}, &st); err != nil || !st.Locked || !st.LockedAt.IsZero() {
		t.Fatalf("status of the old locked record: %v %+v, want locked with no lock time", err, st)
	}
	var out TOTPUnlock
	if err := c.Call(t.Context(), "POST", AdminTOTPUnlock, UserRef{User: "alice"}, &out); err != nil || out.Cleared != maxAccountTOTPFailures {
		t.Fatalf("unlock of the old locked record: %v %+v", err, out)
	}
	if got := rightCode(t, e, uri); got.status != http.StatusOK {
		t.Errorf("the right code after the unlock: got %d %s, want 200", got.status, got.body)
	}
}

// Unlocking a name the directory refuses, or an account with no
// enrolment, is refused with what to do, and records nothing.
func TestTOTPUnlockWithoutAnEnrolmentIsRefused(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	c := adminSocket(t, e)
	tests := []struct {
		name, user, wantCode string
		want                 []string
	}{
		{"not in the directory", "mallory", "not_found", []string{`"mallory" (user_not_found)`, "name the user as they log in"}},
		{"not enrolled", "bob", "not_enrolled", []string{"bob", bobID, "applianced user totp enroll bob"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.journal.LastSeq()
			var ae *admin.Error
			err := c.Call(t.Context(), "POST", AdminTOTPUnlock, UserRef{User: tt.user}, nil)
			if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code != tt.wantCode {
				t.Fatalf("got %v, want 404 %s", err, tt.wantCode)
			}
			for _, w := range tt.want {
				if !strings.Contains(ae.Description, w) {
					t.Errorf("the error %q does not say %q", ae.Description, w)
				}
			}
			if got := e.journal.LastSeq(); got != before {
				t.Errorf("the journal went from seq %d to %d, want nothing recorded", before, got)
			}
		})
	}
}
