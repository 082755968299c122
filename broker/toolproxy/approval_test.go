package toolproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/pquerna/otp/totp"
	bolt "go.etcd.io/bbolt"
)

// askApproval makes a call that needs approval and returns its id.
func askApproval(t *testing.T, e *env, token, path string, body []byte) string {
	t.Helper()
	got := e.do("DELETE", path, token, body, nil)
	var eb errorBody
	_ = json.Unmarshal(got.body, &eb)
	if got.status != http.StatusForbidden || eb.Error != CodeApprovalRequired || eb.ApprovalID == "" {
		t.Fatalf("got %d %s, want 403 approval_required with an id", got.status, got.body)
	}
	return eb.ApprovalID
}

func adminActor() audit.Actor { uid := 0; return audit.Actor{UID: &uid} }

func TestApprovalIsBoundSingleUseAndExpires(t *testing.T) {
	u := newUpstream(t, jsonOK(`{"deleted": true}`))
	e := stdEnv(t, u, RiskConfig{})
	const path = "/v1/tools/tickets/tickets/7"
	body := []byte(`{"reason": "duplicate"}`)
	ctx := t.Context()

	id := askApproval(t, e, agentToken, path, body)
	if u.count() != 0 {
		t.Fatal("the upstream was called before approval")
	}
	if ev := e.lastEvent("approval.request"); ev.Details["approval_id"] != id || ev.Actor.Agent != "bot" {
		t.Errorf("got approval.request event %+v", ev)
	}
	poll := e.do("GET", "/v1/approvals/"+id, "", nil, nil)
	if !bytes.Contains(poll.body, []byte(`"pending"`)) {
		t.Errorf("got poll %d %s, want pending", poll.status, poll.body)
	}
	withID := map[string]string{ApprovalHeader: id}
	if got := e.do("DELETE", path, agentToken, body, withID); got.status != 403 || got.errorCode() != CodeApprovalInvalid {
		t.Errorf("before approval: got %d %s, want 403 approval_invalid", got.status, got.body)
	}
	if _, err := e.proxy.Decide(ctx, id, true, adminActor()); err != nil {
		t.Fatalf("Decide: %v", err)
	}
	if _, err := e.proxy.Decide(ctx, id, false, adminActor()); err == nil {
		t.Errorf("a second decision was accepted")
	}

	tests := []struct {
		name       string
		token      string
		path       string
		body       []byte
		wantStatus int
	}{
		{"changed body", agentToken, path, []byte(`{"reason": "spam"}`), 403},
		{"other path", agentToken, "/v1/tools/tickets/tickets/8", body, 403},
		{"other query", agentToken, path + "?force=1", body, 403},
		{"exact call", agentToken, path, body, 200},
		{"second use", agentToken, path, body, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := e.do("DELETE", tt.path, tt.token, tt.body, withID)
			if got.status != tt.wantStatus {
				t.Errorf("got %d %s, want %d", got.status, got.body, tt.wantStatus)
			}
		})
	}
	if u.count() != 1 {
		t.Errorf("upstream got %d calls, want exactly 1", u.count())
	}
	if ev := e.lastEvent("tool.call"); ev.Details["approval_id"] != id {
		t.Errorf("got tool.call approval_id %q, want %q", ev.Details["approval_id"], id)
	}

	t.Run("another user's token", func(t *testing.T) {
		e.tok.add("bob-token", Principal{Agent: "bot", User: "bob", Scopes: allScopes()}, "tickets")
		id2 := askApproval(t, e, agentToken, path, body)
		if _, err := e.proxy.Decide(ctx, id2, true, adminActor()); err != nil {
			t.Fatal(err)
		}
		if got := e.do("DELETE", path, "bob-token", body, map[string]string{ApprovalHeader: id2}); got.status != 403 {
			t.Errorf("got %d, want 403 for the same call on behalf of another user", got.status)
		}
	})
	t.Run("expired", func(t *testing.T) {
		id3 := askApproval(t, e, agentToken, path, body)
		if _, err := e.proxy.Decide(ctx, id3, true, adminActor()); err != nil {
			t.Fatal(err)
		}
		e.clk.Add(DefaultApprovalTTL + time.Second)
		got := e.do("DELETE", path, agentToken, body, map[string]string{ApprovalHeader: id3})
		if got.status != 403 || !bytes.Contains(got.body, []byte("expired")) {
			t.Errorf("got %d %s, want 403 expired", got.status, got.body)
		}
	})
	t.Run("denied", func(t *testing.T) {
		id4 := askApproval(t, e, agentToken, path, body)
		if _, err := e.proxy.Decide(ctx, id4, false, adminActor()); err != nil {
			t.Fatal(err)
		}
		if got := e.do("DELETE", path, agentToken, body, map[string]string{ApprovalHeader: id4}); got.status != 403 {
			t.Errorf("got %d, want 403 for a denied approval", got.status)
		}
	})
	if u.count() != 1 {
		t.Errorf("upstream got %d calls, want exactly 1", u.count())
	}
}

func totpSecret(t *testing.T, uri string) string {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "otpauth" {
		t.Fatalf("enrolment URI %q: %v", uri, err)
	}
	return u.Query().Get("secret")
}

// decideTOTP posts d with token (a user's own token, or none: "").
func (e *env) decideTOTP(id, token string, d TOTPDecision) reply {
	e.t.Helper()
	b, _ := json.Marshal(d)
	return e.do("POST", "/v1/approvals/"+id, token, b, map[string]string{"Content-Type": "application/json"})
}

func TestTOTPApprovalOnlyByTheUserActedFor(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	ctx := t.Context()
	aliceURI, err := e.proxy.EnrollTOTP(ctx, "alice", aliceID)
	if err != nil {
		t.Fatalf("EnrollTOTP: %v", err)
	}
	bobURI, err := e.proxy.EnrollTOTP(ctx, "bob", bobID)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := totpSecret(t, aliceURI), totpSecret(t, bobURI)
	if bytes.Contains(e.journalBytes(), []byte(alice)) || bytes.Contains(e.logs.Bytes(), []byte(alice)) {
		t.Error("a TOTP seed is in the journal or the logs")
	}
	code := func(seed string) string {
		c, err := totp.GenerateCode(seed, e.clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	const path = "/v1/tools/tickets/tickets/3"
	id := askApproval(t, e, agentToken, path, nil) // the agent acts for alice

	tests := []struct {
		name  string
		token string
		d     TOTPDecision
		want  int
	}{
		{"bob with his own code", bobToken, TOTPDecision{User: "bob", Code: code(bob), Decision: "approve"}, 403},
		{"bob naming alice", bobToken, TOTPDecision{User: "alice", Code: code(bob), Decision: "approve"}, 403},
		{"alice's code without her token", "", TOTPDecision{User: "alice", Code: code(alice), Decision: "approve"}, 401},
		{"alice's code with bob's token", bobToken, TOTPDecision{User: "alice", Code: code(alice), Decision: "approve"}, 403},
		{"alice's code with the agent's token", agentToken, TOTPDecision{User: "alice", Code: code(alice), Decision: "approve"}, 401},
		{"alice with a wrong code", aliceToken, TOTPDecision{User: "alice", Code: "000000", Decision: "approve"}, 403},
		{"alice", aliceToken, TOTPDecision{User: "alice", Code: code(alice), Decision: "approve"}, 200},
		{"alice again", aliceToken, TOTPDecision{User: "alice", Code: code(alice), Decision: "approve"}, 409},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := e.decideTOTP(id, tt.token, tt.d); got.status != tt.want {
				t.Errorf("got %d %s, want %d", got.status, got.body, tt.want)
			}
		})
	}
	if got := e.do("DELETE", path, agentToken, nil, map[string]string{ApprovalHeader: id}); got.status != 200 {
		t.Errorf("got %d %s, want the approved call through", got.status, got.body)
	}
	if ev := e.lastEvent("approval.approve"); ev.Actor.User != "alice" || ev.Details["approver"] != "totp" {
		t.Errorf("got approval event %+v", ev)
	}

	t.Run("a code is good once", func(t *testing.T) {
		id2 := askApproval(t, e, agentToken, path, nil)
		if got := e.decideTOTP(id2, aliceToken, TOTPDecision{User: "alice", Code: code(alice), Decision: "approve"}); got.status != 403 {
			t.Errorf("got %d %s, want the replayed code refused", got.status, got.body)
		}
	})
	t.Run("too many wrong codes deny the approval", func(t *testing.T) {
		id3 := askApproval(t, e, agentToken, path, nil)
		for range maxTOTPFailures {
			e.decideTOTP(id3, aliceToken, TOTPDecision{User: "alice", Code: "123456", Decision: "approve"})
		}
		e.clk.Add(time.Minute)
		if got := e.decideTOTP(id3, aliceToken, TOTPDecision{User: "alice", Code: code(alice), Decision: "approve"}); got.status != 409 {
			t.Errorf("got %d %s, want 409 once the approval is denied", got.status, got.body)
		}
		if ev := e.lastEvent("approval.deny"); ev.Target != id3 || ev.Reason != "too many failed codes" {
			t.Errorf("the automatic denial recorded as %+v", ev)
		}
	})
}

// Failed TOTP decisions by anyone but the user the agent acts for do not
// count against the approval: a stranger who knows its id, even naming the
// user, cannot deny it by failing on purpose without the user's own token;
// nor one where the agent acts for no user. And the user named in a
// refused decision is recorded as a claim, not as the actor.
func TestStrangersCannotDenyAnApproval(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	aliceURI, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID)
	if err != nil {
		t.Fatal(err)
	}
	const path = "/v1/tools/tickets/tickets/3"
	id := askApproval(t, e, agentToken, path, nil) // the agent acts for alice
	strangers := []struct {
		name, token, user string
		want              int
	}{
		{"mallory", "", "mallory", 401},
		{"naming alice without a token", "", "alice", 401},
		{"naming alice with a forged token", "not-a-token", "alice", 401},
		{"bob naming alice", bobToken, "alice", 403},
		{"the agent naming alice", agentToken, "alice", 401},
	}
	for _, s := range strangers {
		for range maxTOTPFailures + 2 {
			if got := e.decideTOTP(id, s.token, TOTPDecision{User: s.user, Code: "000000", Decision: "deny"}); got.status != s.want {
				t.Fatalf("%s: got %d %s, want %d", s.name, got.status, got.body, s.want)
			}
		}
	}
	if ev := e.lastEvent("approval.refused"); ev.Actor != (audit.Actor{}) || ev.Details["claimed_user"] != "alice" || ev.Details["agent"] != "bot" {
		t.Errorf("refused decision recorded as %+v, want no actor, claimed_user=alice, agent=bot", ev)
	}
	if a, err := e.proxy.store.approval(id); err != nil || a.Failures != 0 {
		t.Fatalf("after the strangers: %v, %d failures counted, want none", err, a.Failures)
	}
	code, err := totp.GenerateCode(totpSecret(t, aliceURI), e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: code, Decision: "approve"}); got.status != 200 {
		t.Fatalf("alice after a stranger's failures: got %d %s, want 200", got.status, got.body)
	}

	// An agent acting for no user: only an admin decides, and the refusals
	// leave the approval pending.
	const noUser = "agent-token-for-no-user"
	e.tok.add(noUser, Principal{Agent: "bot", Scopes: allScopes(), JTI: "jti-nouser"}, "tickets")
	id2 := askApproval(t, e, noUser, path, nil)
	for range maxTOTPFailures + 2 {
		if got := e.decideTOTP(id2, aliceToken, TOTPDecision{User: "alice", Code: "000000", Decision: "deny"}); got.status != 403 {
			t.Fatalf("got %d %s, want 403", got.status, got.body)
		}
	}
	a, err := e.proxy.store.approval(id2)
	if err != nil {
		t.Fatal(err)
	}
	if st := a.effective(e.clk.Now()); st != StatusPending {
		t.Errorf("an approval for no user is %s after refused TOTP decisions, want pending", st)
	}
}

// Asking again for the same call answers with the approval already
// pending; an agent can have at most maxPendingPerAgent pending, and the
// next call that needs one is refused with 429 until they are decided.
func TestPendingApprovalsAreReusedAndBounded(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	first := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/1", nil)
	if again := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/1", nil); again != first {
		t.Errorf("the same call asked twice got approvals %s and %s, want the pending one again", first, again)
	}
	if other := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/1", []byte(`{"other":"body"}`)); other == first {
		t.Error("a call with another body got the same approval")
	}
	for i := 2; i < maxPendingPerAgent; i++ {
		askApproval(t, e, agentToken, fmt.Sprintf("/v1/tools/tickets/tickets/%d", i), nil)
	}
	got := e.do("DELETE", "/v1/tools/tickets/tickets/999", agentToken, nil, nil)
	var eb errorBody
	if err := json.Unmarshal(got.body, &eb); err != nil || got.status != http.StatusTooManyRequests || eb.Error != CodeTooManyApprovals {
		t.Fatalf("call %d needing approval: got %d %s, want 429 %s", maxPendingPerAgent+1, got.status, got.body, CodeTooManyApprovals)
	}
	if ra := got.header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After %q, want when the first pending approval expires", ra)
	}
	// The room is per user: the same agent acting for bob still asks.
	const forBob = "agent-token-for-bob"
	e.tok.add(forBob, Principal{Agent: "bot", User: "bob", Scopes: allScopes(), JTI: "jti-bob"}, "tickets")
	if id := askApproval(t, e, forBob, "/v1/tools/tickets/tickets/999", nil); id == "" {
		t.Fatal("bob's call got no approval: alice's pending ones used up his room")
	}
	list, err := e.proxy.store.listApprovals(e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != maxPendingPerAgent+1 {
		t.Errorf("%d approvals stored, want %d for alice and bob's one", len(list), maxPendingPerAgent)
	}
	// Once they expire, the agent may ask again.
	e.clk.Add(time.Hour)
	if id := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/999", nil); id == "" {
		t.Error("no approval after the pending ones expired")
	}
}

// A TOTP enrolment belongs to the directory account, not to its name:
// once the name alice passes to another account, the code of the account
// that enrolled as alice does not approve the new alice's calls, and an
// administrator enrolls the new account under the name again.
func TestTOTPFollowsTheAccountNotTheName(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	ctx := t.Context()
	c := adminSocket(t, e)
	var old EnrollAnswer
	if err := c.Call(ctx, "POST", AdminTOTPEnroll, EnrollRequest{User: "alice"}, &old); err != nil || old.AccountID != aliceID {
		t.Fatalf("enroll alice: %v %+v, want account %s", err, old, aliceID)
	}
	oldSeed := totpSecret(t, old.URI)

	// alice's account is renamed; a new account is given her name, and an
	// agent acts for it.
	const newAlice = "0f7e2b55-91c3-4a6d-b8e0-3d4c5a6b7e81"
	e.users.set("alice", newAlice)
	const tok = "agent-token-for-the-new-alice"
	e.tok.add(tok, Principal{Agent: "bot", User: "alice", UserID: newAlice, Scopes: allScopes(), JTI: "jti-new-alice"}, "tickets")
	const newAliceToken = "user-token-of-the-new-alice"
	e.tok.add(newAliceToken, Principal{User: "alice", UserID: newAlice, JTI: "jti-new-alice-own"}, userAud)
	const path = "/v1/tools/tickets/tickets/5"
	id := askApproval(t, e, tok, path, nil)
	code, err := totp.GenerateCode(oldSeed, e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: code, Decision: "approve"}); got.status != 403 {
		t.Fatalf("the former alice's token and code: got %d %s, want 403", got.status, got.body)
	}
	if ev := e.lastEvent("approval.refused"); ev.Details["token_user"] != "alice" || ev.Details["account_id"] != newAlice {
		t.Errorf("refusal recorded as %+v", ev.Details)
	}
	if got := e.decideTOTP(id, newAliceToken, TOTPDecision{User: "alice", Code: code, Decision: "approve"}); got.status != 403 {
		t.Fatalf("the former alice's code under the new alice's token: got %d %s, want 403", got.status, got.body)
	}
	if ev := e.lastEvent("approval.refused"); ev.Details["account_id"] != newAlice || ev.Details["totp"] != "enrolled_for_another_account" {
		t.Errorf("refusal recorded as %+v, want account_id %s and totp=enrolled_for_another_account", ev.Details, newAlice)
	}

	// Nor does the former alice's token still under the name decide her
	// own approvals: the directory has given the name to another account.
	oldID := askApproval(t, e, agentToken, path, nil)
	if got := e.decideTOTP(oldID, aliceToken, TOTPDecision{User: "alice", Code: code, Decision: "approve"}); got.status != 403 {
		t.Fatalf("a token under a name the directory gave away: got %d %s, want 403", got.status, got.body)
	}
	if ev := e.lastEvent("approval.refused"); ev.Details["directory"] != "name_now_another_account" {
		t.Errorf("refusal recorded as %+v", ev.Details)
	}

	var fresh EnrollAnswer
	if err := c.Call(ctx, "POST", AdminTOTPEnroll, EnrollRequest{User: "alice"}, &fresh); err != nil || fresh.AccountID != newAlice {
		t.Fatalf("enroll the new alice: %v %+v", err, fresh)
	}
	if ev := e.lastEvent("auth.totp"); ev.Target != "alice" || ev.Details["account_id"] != newAlice {
		t.Errorf("enrolment recorded as %+v", ev)
	}
	e.clk.Add(totpPeriod * time.Second)
	newCode, err := totp.GenerateCode(totpSecret(t, fresh.URI), e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := e.decideTOTP(id, newAliceToken, TOTPDecision{User: "alice", Code: newCode, Decision: "approve"}); got.status != 200 {
		t.Fatalf("the new alice's own code: got %d %s, want 200", got.status, got.body)
	}
	if ev := e.lastEvent("approval.approve"); ev.Target != id || ev.Details["account_id"] != newAlice {
		t.Errorf("approval recorded as %+v", ev)
	}

	// The directory decides who can enroll.
	var ae *admin.Error
	if err := c.Call(ctx, "POST", AdminTOTPEnroll, EnrollRequest{User: "carol"}, nil); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("enrolling a name the directory does not know: got %v, want 404", err)
	}
}

// An enrolment stored under the name alone (before account ids) is not
// taken to belong to whoever has the name now: the user is told that an
// administrator must enroll them again, and the failure is not counted.
func TestTOTPEnrolmentByNameOnlyIsRefused(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	rec, err := json.Marshal(totpRecord{Sealed: make([]byte, 40), Enrolled: e.clk.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.proxy.store.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketTOTP).Put([]byte("alice"), rec) }); err != nil {
		t.Fatal(err)
	}
	id := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/6", nil)
	for range maxTOTPFailures + 1 {
		got := e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: "123456", Decision: "approve"})
		if got.status != 403 || !strings.Contains(string(got.body), "applianced user totp enroll alice") {
			t.Fatalf("got %d %s, want 403 naming the enrolment to redo", got.status, got.body)
		}
	}
	if ev := e.lastEvent("approval.refused"); ev.Details["totp"] != "enrolled_by_name_only" {
		t.Errorf("refusal recorded as %+v", ev.Details)
	}
	a, err := e.proxy.store.approval(id)
	if err != nil {
		t.Fatal(err)
	}
	if st := a.effective(e.clk.Now()); st != StatusPending || a.Failures != 0 {
		t.Errorf("approval is %s with %d failures, want pending with none", st, a.Failures)
	}

	// Enrolling again replaces the record kept under the name.
	if _, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID); err != nil {
		t.Fatal(err)
	}
	if err := e.proxy.store.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketTOTP).Get([]byte("alice")) != nil {
			return errors.New("the enrolment under the name is still there")
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}

// Wrong codes count per account too, over all approvals: whoever holds the
// user's token (an agent that exchanges it does) cannot ask for approval
// after approval and keep guessing. maxAccountTOTPFailures in a row lock
// the account's TOTP until it is enrolled again; a right code in between
// starts the count anew.
func TestTOTPLocksAfterWrongCodesAcrossApprovals(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	uri, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	ask := func() string {
		n++
		return askApproval(t, e, agentToken, fmt.Sprintf("/v1/tools/tickets/tickets/%d", 100+n), nil)
	}
	wrong := func(k int) reply {
		var last reply
		for k > 0 {
			id := ask()
			for range min(k, maxTOTPFailures-1) {
				last = e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: "000000", Decision: "approve"})
				k--
			}
		}
		return last
	}
	right := func() reply {
		e.clk.Add(totpPeriod * time.Second)
		code, err := totp.GenerateCode(totpSecret(t, uri), e.clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return e.decideTOTP(ask(), aliceToken, TOTPDecision{User: "alice", Code: code, Decision: "approve"})
	}

	wrong(maxAccountTOTPFailures - 1)
	if got := right(); got.status != 200 {
		t.Fatalf("the right code after %d wrong ones: got %d %s, want 200", maxAccountTOTPFailures-1, got.status, got.body)
	}
	got := wrong(maxAccountTOTPFailures)
	if got.status != 403 || !strings.Contains(string(got.body), "locked") {
		t.Fatalf("wrong code number %d: got %d %s, want 403 saying TOTP is locked", maxAccountTOTPFailures, got.status, got.body)
	}
	if ev := e.lastEvent("approval.refused"); ev.Severity != audit.SeverityHigh || ev.Details["totp_locked_now"] != "true" || ev.Details["jti"] != "jti-alice" {
		t.Errorf("the refusal that locked recorded as %+v", ev)
	}
	if ev := e.lastEvent("auth.totp"); ev.Action != "totp.lock" || ev.Severity != audit.SeverityHigh || ev.Details["account_id"] != aliceID || ev.Actor.User != "alice" {
		t.Errorf("the lock recorded as %+v", ev)
	}
	if got := right(); got.status != 403 || !strings.Contains(string(got.body), "applianced user totp unlock alice") ||
		!strings.Contains(string(got.body), "applianced user totp enroll alice") {
		t.Fatalf("the right code once locked: got %d %s, want 403 naming the ways out (unlock, or enroll a lost authenticator)", got.status, got.body)
	}
	if uri, err = e.proxy.EnrollTOTP(t.Context(), "alice", aliceID); err != nil {
		t.Fatal(err)
	}
	if got := right(); got.status != 200 {
		t.Fatalf("the right code after enrolling again: got %d %s, want 200", got.status, got.body)
	}
}

// An approval asked before account ids were kept (stored without one, its
// call hash over the call without it) is still used once an administrator
// approves it, by the same agent token, which carries the account id now:
// the earlier release already issued tokens with it but did not pass it on.
func TestApprovalFromBeforeAccountIDsStillWorks(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	const path = "/v1/tools/tickets/tickets/7"
	id := askApproval(t, e, agentToken, path, nil)
	a, err := e.proxy.store.approval(id)
	if err != nil {
		t.Fatal(err)
	}
	// As the release before account ids stored it: no account, and the
	// hash over seven fields.
	h := sha256.New()
	for _, f := range []string{"bot", "alice", "tickets", "DELETE", "/tickets/7", "", a.BodySHA256} {
		fmt.Fprintf(h, "%d:%s", len(f), f)
	}
	a.UserID, a.CallHash = "", hex.EncodeToString(h.Sum(nil))
	v, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.proxy.store.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketApprovals).Put([]byte(id), v) }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.proxy.Decide(t.Context(), id, true, adminActor()); err != nil {
		t.Fatal(err)
	}
	// Another call does not take it.
	if got := e.do("DELETE", "/v1/tools/tickets/tickets/8", agentToken, nil, map[string]string{ApprovalHeader: id}); got.status != 403 {
		t.Errorf("the approval used for another call: got %d %s, want 403", got.status, got.body)
	}
	if got := e.do("DELETE", path, agentToken, nil, map[string]string{ApprovalHeader: id}); got.status != 200 {
		t.Errorf("the admin-approved approval from before the upgrade: got %d %s, want 200", got.status, got.body)
	}
	// A new approval keeps the account: its seven-field hash does not
	// take it.
	id2 := askApproval(t, e, agentToken, path, nil)
	a2, _ := e.proxy.store.approval(id2)
	if a2.UserID != aliceID || a2.CallHash == a.CallHash {
		t.Errorf("a new approval: account %q, hash %s; want %s and a hash with the account", a2.UserID, a2.CallHash, aliceID)
	}
}

// A renamed user keeps deciding their approvals: the account decides, not
// the name; and a user the directory now refuses decides nothing.
func TestTOTPDecisionFollowsTheDirectory(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	uri, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID)
	if err != nil {
		t.Fatal(err)
	}
	code := func() string {
		e.clk.Add(totpPeriod * time.Second)
		c, err := totp.GenerateCode(totpSecret(t, uri), e.clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	id := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/8", nil) // for "alice"
	e.users.set("alice", "")
	e.users.set("alice.smith", aliceID)
	const renamed = "user-token-alice-smith"
	e.tok.add(renamed, Principal{User: "alice.smith", UserID: aliceID, JTI: "jti-alice-smith"}, userAud)
	if got := e.decideTOTP(id, renamed, TOTPDecision{User: "alice.smith", Code: code(), Decision: "approve"}); got.status != 200 {
		t.Fatalf("renamed alice: got %d %s, want 200", got.status, got.body)
	}
	if ev := e.lastEvent("approval.approve"); ev.Actor.User != "alice.smith" || ev.Details["account_id"] != aliceID {
		t.Errorf("approval recorded as %+v", ev)
	}

	id2 := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/9", nil)
	e.users.set("alice.smith", "") // disabled, deleted: the directory refuses her
	if got := e.decideTOTP(id2, renamed, TOTPDecision{User: "alice.smith", Code: code(), Decision: "approve"}); got.status != 403 {
		t.Fatalf("a user the directory refuses: got %d %s, want 403", got.status, got.body)
	}
	if ev := e.lastEvent("approval.refused"); ev.Details["directory"] != "user_not_found" {
		t.Errorf("refusal recorded as %+v", ev.Details)
	}
}

// Wrong codes posted at the same moment are counted one at a time: the one
// that denies the approval records the denial before it takes effect.
func TestConcurrentWrongCodesRecordTheDenial(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	if _, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		id := askApproval(t, e, agentToken, fmt.Sprintf("/v1/tools/tickets/tickets/%d", 200+round), nil)
		for range maxTOTPFailures - 2 {
			e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: "000000", Decision: "approve"})
		}
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() { e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: "000000", Decision: "approve"}) })
		}
		wg.Wait()
		a, err := e.proxy.store.approval(id)
		if err != nil {
			t.Fatal(err)
		}
		if a.Status != StatusDenied {
			t.Fatalf("round %d: approval %s after %d wrong codes, want denied", round, a.Status, a.Failures)
		}
		found := false
		for _, ev := range e.events() {
			found = found || ev.Type == "approval.deny" && ev.Target == id
		}
		if !found {
			t.Fatalf("round %d: the approval was denied with no approval.deny event", round)
		}
		// Clear the account's count, which these rounds would lock.
		if _, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID); err != nil {
			t.Fatal(err)
		}
	}
}

// A lock the journal cannot record is not taken: the wrong code that would
// lock the account's TOTP answers 503 and is not counted.
func TestTOTPLockNotRecordedIsNotTaken(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL)}, secrets: map[string]string{"tickets-key": toolSecret}, wrap: refusing("auth.totp")})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", UserID: aliceID, Scopes: allScopes(), JTI: "jti-1"}, "tickets")
	e.tok.add(aliceToken, Principal{User: "alice", UserID: aliceID, JTI: "jti-alice"}, userAud)
	if _, err := e.proxy.EnrollTOTP(t.Context(), "alice", aliceID); err != nil {
		t.Fatal(err)
	}
	var last reply
	for n := 0; n < maxAccountTOTPFailures; {
		id := askApproval(t, e, agentToken, fmt.Sprintf("/v1/tools/tickets/tickets/%d", 300+n), nil)
		for range min(maxAccountTOTPFailures-n, maxTOTPFailures-1) {
			last = e.decideTOTP(id, aliceToken, TOTPDecision{User: "alice", Code: "000000", Decision: "approve"})
			n++
		}
	}
	if last.status != http.StatusServiceUnavailable {
		t.Errorf("the wrong code that would lock, unrecordable: got %d %s, want 503", last.status, last.body)
	}
	if rec, err := e.proxy.store.getTOTP(aliceID); err != nil || rec.Failures != maxAccountTOTPFailures-1 {
		t.Errorf("got %+v (%v), want %d failures counted and no lock", rec, err, maxAccountTOTPFailures-1)
	}
}
