package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/systemd"
	"github.com/applianced/applianced/vault"
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
	var b strings.Builder
	template.Must(template.New("dev").Parse(devBaseConfig)).Execute(&b, map[string]string{"Listen": dv.listen, "Dir": dir})
	for _, s := range dv.sections {
		b.WriteString("\n" + s + "\n")
	}
	if err := os.WriteFile(dv.cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		t.Fatalf("the dev config does not load: %v\n%s", err, b.String())
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
	var b strings.Builder
	template.Must(template.New("dev").Parse(devBaseConfig)).Execute(&b, map[string]string{"Listen": dv.listen, "Dir": dir})
	b.WriteString("\n" + section + "\n")
	if err := os.WriteFile(dv.cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if err := os.MkdirAll(cfg.Server.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	d := &daemon{log: slog.New(slog.DiscardHandler), notify: &systemd.Notifier{Logger: slog.New(slog.DiscardHandler)},
		api: http.NewServeMux(), admin: http.NewServeMux(), metrics: prometheus.NewRegistry()}
	d.cfg.Store(cfg)
	bg, cancel := context.WithCancel(context.Background())
	d.bgCancel = cancel
	t.Cleanup(d.close)
	if err := d.openJournal(ctx, bg); err != nil {
		t.Fatal(err)
	}
	mk := make([]byte, vault.MasterKeySize)
	_, _ = rand.Read(mk)
	v, err := vault.Open(ctx, filepath.Join(cfg.Server.StateDir, "vault.db"), mk, cfg.Vault, &vault.Options{Audit: d.journal, Logger: d.log})
	if err != nil {
		t.Fatal(err)
	}
	d.closers = append(d.closers, v.Close)
	br, err := d.openBroker(ctx, bg, v, nil)
	if err != nil {
		t.Fatalf("openBroker: %v", err)
	}
	l, err := net.Listen("unix", cfg.Server.AdminSocket)
	if err != nil {
		t.Fatal(err)
	}
	as := admin.NewServer(admin.ServerConfig{AdminGID: os.Getgid(), Handler: d.admin, Audit: d.journal})
	go func() { _ = as.Serve(l) }()
	t.Cleanup(func() { as.Shutdown(context.Background()) })

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
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: d.api, ConnContext: broker.ConnContext}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", sock)
	}}}
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
