package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/internal/config"
)

// TestDevBrokerConfigLoads checks that the demo roles and agent, with the
// demo directory's section before them, are a valid part of the dev config.
func TestDevBrokerConfigLoads(t *testing.T) {
	dir := t.TempDir()
	dv := &devEnv{dir: dir, cfgPath: filepath.Join(dir, "applianced.toml"), cli: "applianced", listen: "127.0.0.1:8443"}
	t.Cleanup(func() {
		for _, c := range dv.cleanup {
			c()
		}
	})
	for _, step := range []func() error{
		func() error { return devLDAP(t.Context(), dv) },
		func() error { return devBroker(t.Context(), dv) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	text := writeDevConfig(t, dv, dv.sections)
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		t.Fatalf("the dev config does not load: %v\n%s", err, text)
	}
	bc := brokerConfig(cfg)
	if errs := bc.Validate(); len(errs) > 0 {
		t.Fatalf("broker config: %v", errs)
	}
	if len(bc.Agents) != 1 || bc.Agents[0].UnixUID == nil || *bc.Agents[0].UnixUID != os.Getuid() {
		t.Fatalf("the demo agent is not this uid: %+v", bc.Agents)
	}
	if got := issuer(cfg); got != "https://127.0.0.1:8443" {
		t.Fatalf("issuer: got %q", got)
	}
}

// TestAgentAndTokenVerbs runs the CLI verbs against the broker as the
// daemon opens it, over a real admin socket.
func TestAgentAndTokenVerbs(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	dv := &devEnv{dir: dir, cfgPath: filepath.Join(dir, "applianced.toml"), cli: "applianced", listen: "127.0.0.1:8443"}
	if err := devBroker(ctx, dv); err != nil {
		t.Fatal(err)
	}
	section := strings.Split(dv.sections[0], "[ldap.group_roles]")[0] // no directory here
	writeDevConfig(t, dv, []string{section})
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	d, bg, v := brokerTestDaemon(t, ctx, cfg)
	br, err := d.openBroker(ctx, bg, v, nil)
	if err != nil {
		t.Fatalf("openBroker: %v", err)
	}
	serveAdmin(t, d, cfg.Server.AdminSocket)

	// Flags go before positional arguments.
	verb := func(words int, args ...string) (int, string) {
		t.Helper()
		full := append(append(append([]string{}, args[:words]...), "--config", dv.cfgPath), args[words:]...)
		var out, errOut strings.Builder
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }}
		return run(ctx, e, full), out.String() + errOut.String()
	}
	if code, out := verb(2, "agent", "list"); code != exitOK || !strings.Contains(out, "demo-agent") || !strings.Contains(out, "enabled") {
		t.Fatalf("agent list: %d %q", code, out)
	}
	raw := mintToken(t, d)
	tok, err := br.Verify(ctx, raw, br.ToolAudience())
	if err != nil {
		t.Fatal(err)
	}
	if code, out := verb(2, "agent", "disable", "demo-agent"); code != exitOK || !strings.Contains(out, "disabled") {
		t.Fatalf("agent disable: %d %q", code, out)
	}
	if code, out := verb(2, "agent", "show", "--json", "demo-agent"); code != exitOK || !strings.Contains(out, `"enabled": false`) {
		t.Fatalf("agent show --json: %d %q", code, out)
	}
	if code, _ := verb(2, "agent", "enable", "demo-agent"); code != exitOK {
		t.Fatalf("agent enable: %d", code)
	}
	if code, out := verb(2, "token", "revoke", "--jti", tok.JTI); code != exitOK || !strings.Contains(out, "revoked") {
		t.Fatalf("token revoke --jti: %d %q", code, out)
	}
	if _, err := br.Verify(ctx, raw, br.ToolAudience()); !errors.Is(err, broker.ErrRevoked) {
		t.Fatalf("after token revoke --jti: got %v, want ErrRevoked", err)
	}
	if code, out := verb(2, "token", "revoke", "--jti", "nosuch"); code != exitFailure || !strings.Contains(out, "is not a token id") {
		t.Fatalf("token revoke --jti nosuch: got %d %q, want a failure saying it is not a token id", code, out)
	}
	if code, out := verb(2, "token", "revoke", "--user", "nosuch"); code != exitOK || !strings.Contains(out, "0 sessions ended") || !strings.Contains(out, "misspelling") {
		t.Fatalf("token revoke --user nosuch: got %d %q, want success with a warning that nosuch had nothing to revoke", code, out)
	}
	if code, out := verb(2, "token", "revoke", "--account", "alice"); code != exitFailure || !strings.Contains(out, "is not an account id") {
		t.Fatalf("token revoke --account alice: got %d %q, want a failure saying it is not an account id", code, out)
	}
	if code, out := verb(2, "token", "revoke", "--account", "6f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c"); code != exitOK ||
		!strings.Contains(out, "0 session(s) ended") || !strings.Contains(out, "no token that may still be live") {
		t.Fatalf("token revoke --account of an unknown id: got %d %q, want success with a warning that it had nothing to revoke", code, out)
	}
	if code, out := verb(2, "token", "revoke", "--user", "alice", "--account", "6f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c"); code != exitUsage {
		t.Fatalf("token revoke --user and --account: got %d %q, want %d", code, out, exitUsage)
	}
	if code, out := verb(2, "token", "revoke"); code != exitUsage {
		t.Fatalf("token revoke without a target: got %d %q, want %d", code, out, exitUsage)
	}
	if code, out := verb(2, "agent", "show", "ghost"); code != exitFailure || !strings.Contains(out, "no such agent") {
		t.Fatalf("agent show ghost: got %d %q", code, out)
	}
}

// mintToken gets a client_credentials token from the daemon's API as this
// process's uid (the demo agent) over a real agent socket.
func mintToken(t *testing.T, d *daemon) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	hc := serveAgentSocket(t, d, sock)
	resp, err := hc.Post("http://agent/oauth2/token", "application/x-www-form-urlencoded", strings.NewReader("grant_type=client_credentials"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.AccessToken == "" {
		t.Fatalf("token: status %d, %v", resp.StatusCode, err)
	}
	return out.AccessToken
}
