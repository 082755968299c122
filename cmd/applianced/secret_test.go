package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

// vaultDaemon opens the journal and the vault the way the daemon does
// (master key made by init, openVault) and serves the admin socket.
func vaultDaemon(t testing.TB) (cfgPath string, d *daemon) {
	t.Helper()
	cfgPath = vaultConfig(t, t.TempDir(), nil)
	return cfgPath, startVaultDaemon(t, cfgPath)
}

// vaultConfig writes in dir a config whose vault's master key file is
// dir/master.key (key, when not nil; else init makes one), creates the
// state the way init does, and returns the config's path.
func vaultConfig(t testing.TB, dir string, key []byte) string {
	t.Helper()
	if key != nil {
		if err := os.WriteFile(filepath.Join(dir, "master.key"), key, 0o400); err != nil {
			t.Fatal(err)
		}
	}
	body := fmt.Sprintf("[server]\nstate_dir = %q\nadmin_socket = %q\ntls_cert = %q\ntls_key = %q\n\n[vault]\nmaster_key_file = %q\nkeep_versions = 3\n",
		dir+"/state", dir+"/admin.sock", dir+"/tls/api.pem", dir+"/tls/api.key", dir+"/master.key")
	// The tools that --allow-tool may name.
	for _, tool := range []string{"tickets", "wiki", "wiki2"} {
		body += fmt.Sprintf("\n[[tool]]\nname = %q\nbase_url = \"http://127.0.0.1:1\"\nauth = { type = \"bearer\", secret = %q }\n"+
			"[[tool.route]]\nmethod = \"GET\"\npath = \"/**\"\nscope = \"%s:read\"\n", tool, tool+"-key", tool)
	}
	if err := os.WriteFile(filepath.Join(dir, "applianced.toml"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(filepath.Join(dir, "applianced.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := initState(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: os.Getenv}, cfg); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "applianced.toml")
}

// startVaultDaemon opens the journal and the vault of the config at
// cfgPath the way the daemon does and serves the admin socket; it is
// closed when the test ends.
func startVaultDaemon(t testing.TB, cfgPath string) *daemon {
	t.Helper()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d, bg := newTestDaemon(t, ctx, cfg)
	if err := d.openVault(ctx, bg); err != nil {
		t.Fatalf("openVault: %v", err)
	}
	serveAdmin(t, d, cfg.Server.AdminSocket)
	return d
}

func TestSecretAndVaultVerbs(t *testing.T) {
	ctx := t.Context()
	cfgPath, d := vaultDaemon(t)
	var seen strings.Builder // everything the verbs printed
	verb := func(stdin string, args ...string) (int, string) {
		t.Helper()
		var out, errOut strings.Builder
		e := &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }}
		code := run(ctx, e, append(args, "--config", cfgPath))
		seen.WriteString(out.String() + errOut.String())
		return code, out.String() + errOut.String()
	}
	const (
		apiKey  = "tk-SECRET-0123456789"
		apiKey2 = "tk-ROTATED-9876543210"
		wikiPW  = "Wiki-Pa55word-XYZ"
	)
	wikiJSON := `{"user":"svc-wiki","password":"` + wikiPW + `"}`
	backup := filepath.Join(t.TempDir(), "vault-backup.db")

	steps := []struct {
		name     string
		stdin    string
		args     []string
		wantCode int
		want     string
	}{
		{"put api key", apiKey + "\n", []string{"secret", "put", "tickets-key", "--type", "api_key", "--allow-tool", "tickets"}, exitOK, "tickets-key: version 1 stored (api_key; tools: tickets)"},
		{"put basic", wikiJSON, []string{"secret", "put", "--type", "basic", "wiki", "--allow-tool", "wiki,wiki2"}, exitOK, "version 1 stored (basic; tools: wiki,wiki2)"},
		{"list", "", []string{"secret", "list"}, exitOK, "tickets-key  api_key  1"},
		{"list json", "", []string{"secret", "list", "--json"}, exitOK, `"name": "wiki"`},
		{"verify match", apiKey + "\n", []string{"secret", "verify", "tickets-key"}, exitOK, "match"},
		{"verify no match", "wrong\n", []string{"secret", "verify", "tickets-key"}, exitFailure, "no match"},
		{"verify basic by content", `{"password":"` + wikiPW + `","user":"svc-wiki"}`, []string{"secret", "verify", "wiki"}, exitOK, "match"},
		{"rotate", apiKey2 + "\n", []string{"secret", "rotate", "tickets-key"}, exitOK, "tickets-key: version 2 stored"},
		{"put for a tool not configured", "x\n", []string{"secret", "put", "crm-key", "--type", "api_key", "--allow-tool", "crm"}, exitOK, "warning: --allow-tool crm: no [[tool]] of that name in the running config (tools: tickets,wiki,wiki2)"},
		{"delete it", "", []string{"secret", "delete", "crm-key"}, exitOK, "crm-key: deleted"},
		{"put bad name", "x\n", []string{"secret", "put", "bad/name", "--type", "password"}, exitFailure, "has '/'"},
		{"put unknown type", "x\n", []string{"secret", "put", "x", "--type", "nope"}, exitUsage, "unknown secret type"},
		{"put without type", "x\n", []string{"secret", "put", "x"}, exitUsage, "--type is required: password, api_key"},
		{"put bad name without type", "x\n", []string{"secret", "put", "../x"}, exitFailure, "use letters, digits"},
		{"put empty value", "", []string{"secret", "put", "x", "--type", "password"}, exitFailure, "empty value"},
		{"put basic missing field", `{"user":"u"}`, []string{"secret", "put", "x", "--type", "basic"}, exitFailure, "password"},
		{"put two names", "x", []string{"secret", "put", "a", "b", "--type", "password"}, exitUsage, "want 1 argument"},
		{"rotate missing", "x\n", []string{"secret", "rotate", "ghost"}, exitFailure, "no such secret"},
		{"delete missing", "", []string{"secret", "delete", "ghost"}, exitFailure, "no such secret"},
		{"status", "", []string{"vault", "status"}, exitOK, "keyring term    1 of 1"},
		{"rekey", "", []string{"vault", "rekey", "--reencrypt"}, exitOK, "keyring term 2 is active; 3 versions re-encrypted"},
		{"status after rekey", "", []string{"vault", "status", "--json"}, exitOK, `"term": 2`},
		{"backup", "", []string{"vault", "backup", backup}, exitOK, "bytes written"},
		{"backup never overwrites", "", []string{"vault", "backup", backup}, exitFailure, "exists"},
		{"delete", "", []string{"secret", "delete", "wiki"}, exitOK, "wiki: deleted"},
		{"verify deleted", wikiJSON, []string{"secret", "verify", "wiki"}, exitFailure, "no such secret"},
		{"restore", "", []string{"vault", "restore", backup}, exitOK, "restored 2 secrets"},
		{"verify restored", wikiJSON, []string{"secret", "verify", "wiki"}, exitOK, "match"},
		{"restore a non-vault", "", []string{"vault", "restore", cfgPath}, exitFailure, "not a usable vault"},
	}
	for _, s := range steps {
		code, out := verb(s.stdin, s.args...)
		if code != s.wantCode || !strings.Contains(out, s.want) {
			t.Errorf("%s: applianced %s: exit %d, output %q; want exit %d and %q", s.name, strings.Join(s.args, " "), code, out, s.wantCode, s.want)
		}
	}

	got, err := d.vault.ForTool(ctx, "tickets", "tickets-key")
	if err != nil || string(got) != apiKey2 {
		t.Errorf("the tool sees %q, %v; want the rotated key", got, err)
	}
	if got, err := d.vault.ForTool(ctx, "wiki2", "wiki"); err != nil || string(got) != "svc-wiki:"+wikiPW {
		t.Errorf("the basic secret for its tool: %q, %v", got, err)
	}
	if st, err := os.Stat(backup); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("backup file mode: %v, %v; want 0600", st, err)
	}

	// No verb printed a value, and none reached the journal.
	var list struct{ Secrets []vault.Meta }
	_, out := verb("", "secret", "list", "--json")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Secrets) != 2 {
		t.Errorf("secret list --json: %v, %q", err, out)
	}
	journal, err := os.ReadDir(d.journal.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var trail []byte
	for _, f := range journal {
		b, _ := os.ReadFile(filepath.Join(d.journal.Dir(), f.Name()))
		trail = append(trail, b...)
	}
	if !strings.Contains(string(trail), `"secret.put"`) || !strings.Contains(string(trail), `"vault.restore"`) {
		t.Error("the journal misses the vault's events")
	}
	for _, v := range []string{apiKey, apiKey2, wikiPW} {
		if strings.Contains(seen.String(), v) {
			t.Errorf("a verb printed the value %q", v)
		}
		if strings.Contains(string(trail), v) {
			t.Errorf("the journal holds the value %q", v)
		}
	}
}

// BenchmarkAdminVerify measures reads through the admin socket: secret
// verify decrypts the stored value, compares, and appends its audit event
// before answering, one connection per call as the CLI makes them.
func BenchmarkAdminVerify(b *testing.B) {
	_, d := vaultDaemon(b)
	ctx := context.Background()
	if _, err := d.vault.Put(ctx, audit.Actor{}, vault.PutRequest{Name: "k", Type: vault.TypeAPIKey, Value: []byte("value-0123456789")}); err != nil {
		b.Fatal(err)
	}
	c := admin.NewClient(d.config().Server.AdminSocket)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			var out secretVerifyReply
			if err := c.Call(ctx, http.MethodPost, adminSecretVerify, secretVerifyRequest{Name: "k", Candidate: []byte("value-0123456789")}, &out); err != nil || !out.Match {
				b.Errorf("verify: %v, %v", out.Match, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
}
