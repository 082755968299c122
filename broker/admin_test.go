package broker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/admin"
)

// adminClient serves the broker's admin verbs on a real admin socket.
func (e *env) adminClient(t *testing.T) *admin.Client {
	t.Helper()
	mux := http.NewServeMux()
	e.b.RegisterAdmin(mux)
	srv := admin.NewServer(admin.ServerConfig{AdminGID: os.Getgid(), Handler: mux, Audit: e.j})
	path := filepath.Join(t.TempDir(), "admin.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return admin.NewClient(path)
}

func TestAdminVerbs(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	c := e.adminClient(t)
	ctx := context.Background()

	var list AgentList
	if err := c.Call(ctx, "GET", AdminAgentList, nil, &list); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range list.Agents {
		names = append(names, a.Name)
	}
	if len(names) != 3 || names[0] != "bot" || names[1] != "legacy" || names[2] != "remote" {
		t.Fatalf("agent list: got %v", names)
	}
	var info AgentInfo
	if err := c.Call(ctx, "POST", AdminAgentShow, AgentRef{Name: "legacy"}, &info); err != nil {
		t.Fatal(err)
	}
	if !info.Enabled || len(info.Auth) != 1 || info.Auth[0] != "client_secret" {
		t.Fatalf("show legacy: got %+v", info)
	}
	var ae *admin.Error
	if err := c.Call(ctx, "POST", AdminAgentShow, AgentRef{Name: "ghost"}, &info); !errors.As(err, &ae) || ae.Status != 404 {
		t.Fatalf("unknown agent: got %v, want 404", err)
	}

	tok := e.agentToken("").str("access_token")
	if err := c.Call(ctx, "POST", AdminAgentDisable, AgentRef{Name: "bot"}, &info); err != nil || info.Enabled {
		t.Fatalf("disable: got %+v, %v", info, err)
	}
	if _, err := e.b.Verify(ctx, tok, e.b.ToolAudience()); !errors.Is(err, ErrAgentDisabled) {
		t.Fatalf("after admin disable: got %v", err)
	}
	if ev, ok := e.lastEvent("broker.agent"); !ok || ev.Action != "agent.disable" || ev.Actor.UID == nil {
		t.Fatalf("disable not audited with the admin's uid: %+v", ev)
	}
	if err := c.Call(ctx, "POST", AdminAgentEnable, AgentRef{Name: "bot"}, &info); err != nil || !info.Enabled {
		t.Fatalf("enable: got %+v, %v", info, err)
	}
	// Disabling revoked it: enabling does not bring it back.
	if _, err := e.b.Verify(ctx, tok, e.b.ToolAudience()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a token from before the disable, after enable: got %v, want ErrRevoked", err)
	}
	e.clock.Set(time.Now().Add(time.Second)) // iat has one-second resolution
	tok = e.agentToken("").str("access_token")
	p, err := e.b.Verify(ctx, tok, e.b.ToolAudience())
	if err != nil {
		t.Fatalf("a token issued after enable: %v", err)
	}
	if err := c.Call(ctx, "POST", AdminTokenRevoke, RevokeRequest{JTI: p.JTI}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Verify(ctx, tok, e.b.ToolAudience()); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after revoke --jti: got %v", err)
	}
	for _, bad := range []RevokeRequest{{}, {JTI: "a", User: "b"}} {
		if err := c.Call(ctx, "POST", AdminTokenRevoke, bad, nil); !errors.As(err, &ae) || ae.Status != 400 {
			t.Fatalf("revoke %+v: got %v, want 400", bad, err)
		}
	}
	if err := c.Call(ctx, "POST", AdminTokenRevoke, RevokeRequest{Agent: "ghost"}, nil); !errors.As(err, &ae) || ae.Status != 404 {
		t.Fatalf("revoke unknown agent: got %v, want 404", err)
	}
}

// TestTemporaryDisable: the tool proxy's risk block disables an agent
// until a time; it is enabled again after it without an administrator.
func TestTemporaryDisable(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	e.clock.Set(now)
	if err := e.b.Disable(ctx, "bot", "too many requests", now.Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e.b.Enabled(ctx, "bot"); ok {
		t.Fatal("enabled during the block")
	}
	e.clock.Set(now.Add(11 * time.Minute))
	if ok, _ := e.b.Enabled(ctx, "bot"); !ok {
		t.Fatal("still disabled after the block")
	}
	if ok, _ := e.b.Enabled(ctx, "ghost"); ok {
		t.Fatal("an unknown agent is enabled")
	}
}

// TestReloadRemovesAgent: after a reload without an agent, its tokens stop
// verifying; a reload with a bad config changes nothing.
func TestReloadRemovesAgent(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	tok := e.signed(e.goodClaims())
	bad := e.opts.Config
	bad.Agents = append([]Agent(nil), bad.Agents...)
	bad.Agents[0].Roles = []string{"nope"}
	if err := e.b.Reload(bad); err == nil {
		t.Fatal("a reload with an unknown role was accepted")
	}
	if _, err := e.b.Verify(ctx, tok, e.b.ToolAudience()); err != nil {
		t.Fatalf("after a refused reload: %v", err)
	}
	good := e.opts.Config
	good.Agents = good.Agents[1:] // without bot
	good.Policies = nil
	if err := e.b.Reload(good); err != nil {
		t.Fatal(err)
	}
	if _, err := e.b.Verify(ctx, tok, e.b.ToolAudience()); !errors.Is(err, ErrUnknownAgent) {
		t.Fatalf("after removing the agent: got %v, want ErrUnknownAgent", err)
	}
}
