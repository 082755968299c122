package toolproxy

import (
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/admin"
)

// adminSocket serves the proxy's admin verbs on a real admin socket.
func adminSocket(t *testing.T, e *env) *admin.Client {
	t.Helper()
	mux := http.NewServeMux()
	e.proxy.RegisterAdmin(mux)
	sock := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := admin.NewServer(admin.ServerConfig{AdminGID: os.Getgid(), Handler: mux, Audit: e.audit})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown(t.Context()); l.Close() })
	return admin.NewClient(sock)
}

func TestAdminVerbsOverTheAdminSocket(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	c := adminSocket(t, e)
	ctx := t.Context()

	id := askApproval(t, e, agentToken, "/v1/tools/tickets/tickets/9?confirm=yes", nil)
	var list ApprovalList
	if err := c.Call(ctx, "GET", AdminApprovalList, nil, &list); err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(list.Approvals) != 1 || list.Approvals[0].ID != id || list.Approvals[0].Status != StatusPending ||
		list.Approvals[0].Path != "/tickets/9?confirm=REDACTED" {
		t.Fatalf("got %+v", list.Approvals)
	}
	var a Approval
	if err := c.Call(ctx, "POST", AdminApprovalApprove, ApprovalRef{ID: id}, &a); err != nil || a.Status != StatusApproved {
		t.Fatalf("approve: %v %+v", err, a)
	}
	var ae *admin.Error
	if err := c.Call(ctx, "POST", AdminApprovalDeny, ApprovalRef{ID: id}, nil); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
		t.Errorf("deny after approve: got %v, want 409", err)
	}
	if err := c.Call(ctx, "POST", AdminApprovalApprove, ApprovalRef{ID: strings.Repeat("0", 32)}, nil); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("unknown id: got %v, want 404", err)
	}
	if got := e.do("DELETE", "/v1/tools/tickets/tickets/9?confirm=yes", agentToken, nil, map[string]string{ApprovalHeader: id}); got.status != 200 {
		t.Errorf("got %d %s, want the approved call through", got.status, got.body)
	}
	if ev := e.lastEvent("approval.approve"); ev.Actor.UID == nil || ev.Details["approver"] != "admin" {
		t.Errorf("got %+v, want the admin's uid on the approval event", ev)
	}

	var enr EnrollAnswer
	if err := c.Call(ctx, "POST", AdminTOTPEnroll, EnrollRequest{User: "alice"}, &enr); err != nil || !strings.HasPrefix(enr.URI, "otpauth://totp/") {
		t.Fatalf("enroll: %v %+v", err, enr)
	}
	if err := c.Call(ctx, "POST", AdminTOTPEnroll, EnrollRequest{User: "bad user\n"}, nil); !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Errorf("bad user name: got %v, want 400", err)
	}
	e.assertNowhere(totpSecret(t, enr.URI))
}

func TestReloadSwapsToolsAndKeepsState(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{RequestsPerMinute: 1, OnExceed: ActionStepUp})
	e.clk.t = e.clk.t.Truncate(time.Minute)
	if got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil); got.status != 200 {
		t.Fatalf("got %d", got.status)
	}
	tl := stdTool(u.URL)
	tl.Routes = tl.Routes[:1] // GET only
	if err := e.proxy.Reload([]Tool{tl}, RiskConfig{RequestsPerMinute: 1, OnExceed: ActionAlert}); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	// The minute's counter survived the reload; the new action applies.
	if got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil); got.status != 200 {
		t.Errorf("got %d %s, want 200 with an alert", got.status, got.body)
	}
	if ev := e.lastEvent("agent.risk"); ev.Action != ActionAlert {
		t.Errorf("got %+v, want an alert after the reload", ev)
	}
	if got := e.do("POST", "/v1/tools/tickets/tickets", agentToken, []byte(`{}`), nil); got.errorCode() != CodeNoRoute {
		t.Errorf("got %d %s, want the removed route refused", got.status, got.body)
	}
	bad := tl
	bad.Routes = nil
	if err := e.proxy.Reload([]Tool{bad}, RiskConfig{}); err == nil {
		t.Error("Reload accepted a tool without routes")
	}
	if got := e.do("GET", "/v1/tools/tickets/tickets/2", agentToken, nil, nil); got.status != 200 {
		t.Errorf("after a refused reload: got %d, want the old config still serving", got.status)
	}
}
