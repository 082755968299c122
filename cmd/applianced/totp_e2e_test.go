package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/vault"
	"github.com/pquerna/otp/totp"
)

// TestTOTPApprovalByTheUserEndToEnd runs the demo appliance (its directory
// in slapd, the real broker, journal and vault): alice is enrolled, logs
// in, and an agent acting for her is asked for approval of a DELETE. Only
// alice's own token with her code decides it: without a token, or with the
// agent's, the code is not even tried. The agent's retry then goes through.
func TestTOTPApprovalByTheUserEndToEnd(t *testing.T) {
	x := startDevDaemon(t, "info")
	if err := x.putSecret(secretPutRequest{Name: "tickets-key", Type: vault.TypeAPIKey, Value: x.toolKey, AllowedTools: []string{"tickets"}}); err != nil {
		t.Fatal(err)
	}
	var enr toolproxy.EnrollAnswer
	if err := x.admin.Call(x.ctx, "POST", toolproxy.AdminTOTPEnroll, toolproxy.EnrollRequest{User: "alice"}, &enr); err != nil || enr.AccountID == "" {
		t.Fatalf("enroll: %v %+v", err, enr)
	}
	u, err := url.Parse(enr.URI)
	if err != nil {
		t.Fatal(err)
	}
	seed := u.Query().Get("secret")

	st, got := x.login(x.alicePW)
	userTok, _ := x.token(st, got, "login")
	st, got = x.exchange(userTok)
	obo, _ := x.token(st, got, "exchange")
	st, got = x.tool("DELETE", "/tickets/3", obo, nil)
	var eb struct {
		Error      string `json:"error"`
		ApprovalID string `json:"approval_id"`
	}
	if err := json.Unmarshal(got, &eb); err != nil || st != http.StatusForbidden || eb.Error != "approval_required" {
		t.Fatalf("DELETE: %d %s, want 403 approval_required", st, got)
	}
	code, err := totp.GenerateCode(seed, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	decide := func(tok string) (int, []byte) {
		t.Helper()
		hdr := map[string]string{"Content-Type": "application/json"}
		if tok != "" {
			hdr["Authorization"] = "Bearer " + tok
		}
		body := `{"user":"alice","code":"` + code + `","decision":"approve"}`
		return x.call(x.https, "POST", x.base+"/v1/approvals/"+eb.ApprovalID, hdr, strings.NewReader(body), nil)
	}
	if st, got := decide(""); st != http.StatusUnauthorized {
		t.Errorf("alice's code without a token: %d %s, want 401", st, got)
	}
	if st, got := decide(obo); st != http.StatusUnauthorized {
		t.Errorf("alice's code with the agent's token for her: %d %s, want 401", st, got)
	}
	if st, got := decide(userTok); st != http.StatusOK {
		t.Fatalf("alice's code with her token: %d %s, want 200", st, got)
	}
	if ev := x.lastEvent("approval.approve"); ev.Actor.User != "alice" || ev.Details["approver"] != "totp" || ev.Details["account_id"] != enr.AccountID {
		t.Errorf("approval event: %+v", ev)
	}
	withID := map[string]string{"Authorization": "Bearer " + obo, toolproxy.ApprovalHeader: eb.ApprovalID}
	if st, got := x.call(x.https, "DELETE", x.base+"/v1/tools/tickets/tickets/3", withID, nil, nil); st != http.StatusOK {
		t.Errorf("the approved DELETE: %d %s", st, got)
	}
}
