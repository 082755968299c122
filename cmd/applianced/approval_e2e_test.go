package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

// TestToolProxyEndToEnd runs the demo tool behind the proxy with the real
// journal, vault and broker, as the daemon wires them: an agent gets a token
// on the agent socket (its uid is its identity), calls the tool, is asked
// for approval, is approved by an administrator, and the tool's key appears
// in no answer and no journal entry.
func TestToolProxyEndToEnd(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	dv := &devEnv{dir: dir, cfgPath: filepath.Join(dir, "applianced.toml"), cli: "applianced", listen: "127.0.0.1:8443"}
	t.Cleanup(func() {
		for _, c := range dv.cleanup {
			c()
		}
	})
	if err := devBroker(ctx, dv); err != nil {
		t.Fatal(err)
	}
	dv.sections = dv.sections[:1:1]
	dv.sections[0] = strings.Split(dv.sections[0], "[ldap.group_roles]")[0] // no directory here
	if err := devTools(ctx, dv); err != nil {
		t.Fatal(err)
	}
	// A second tool, for the check that a token is good for one tool only.
	wiki := strings.Split(dv.sections[len(dv.sections)-1], "\n[risk]")[0]
	dv.sections = append(dv.sections, strings.Replace(wiki, `name = "tickets"`, `name = "wiki"`, 1))
	text := writeDevConfig(t, dv, dv.sections)
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}

	d, bg, v := brokerTestDaemon(t, ctx, cfg)
	key, err := os.ReadFile(filepath.Join(dir, "demo-tool.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Put(ctx, audit.Actor{}, vault.PutRequest{Name: "tickets-key", Type: vault.TypeAPIKey, Value: key, AllowedTools: []string{"tickets"}}); err != nil {
		t.Fatal(err)
	}
	br, err := d.openBroker(ctx, bg, v, nil)
	if err != nil {
		t.Fatalf("openBroker: %v", err)
	}
	if err := d.mountToolProxy(br, v); err != nil {
		t.Fatalf("mountToolProxy: %v", err)
	}

	// The agent socket: the same API, the caller's identity from the kernel.
	sock := filepath.Join(dir, "agent.sock")
	hc := serveAgentSocket(t, d, sock)
	type answer struct {
		status int
		body   []byte
		header http.Header
	}
	var answers []answer
	do := func(method, path string, hdr map[string]string, form url.Values) answer {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		a := answer{resp.StatusCode, rb, resp.Header}
		answers = append(answers, a)
		return a
	}

	type tokenAnswer struct {
		AccessToken string `json:"access_token"`
	}
	token := func(form url.Values) tokenAnswer {
		t.Helper()
		form.Set("grant_type", "client_credentials")
		tok := do("POST", "/oauth2/token", nil, form)
		var tr tokenAnswer
		if err := json.Unmarshal(tok.body, &tr); err != nil || tr.AccessToken == "" {
			t.Fatalf("token: %d %s", tok.status, tok.body)
		}
		return tr
	}
	tr := token(url.Values{"resource": {"tickets"}})
	bearer := map[string]string{"Authorization": "Bearer " + tr.AccessToken}

	// A token is good at one tool only: the general token (no resource)
	// and a token for another tool are refused, and the refusal audited.
	refused := []struct{ name, token string }{
		{"general audience", token(url.Values{}).AccessToken},
		{"token for another tool", token(url.Values{"resource": {"wiki"}}).AccessToken},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			before := journalCount(t, cfg.Server.StateDir, `"decision":"wrong_audience"`)
			got := do("GET", "/v1/tools/tickets/tickets/2", map[string]string{"Authorization": "Bearer " + tc.token}, nil)
			if got.status != 403 || !bytes.Contains(got.body, []byte(`"wrong_audience"`)) {
				t.Fatalf("got %d %s, want 403 wrong_audience", got.status, got.body)
			}
			if journalCount(t, cfg.Server.StateDir, `"decision":"wrong_audience"`) != before+1 {
				t.Errorf("the refusal is not in the journal")
			}
		})
	}

	got := do("GET", "/v1/tools/tickets/tickets/2", bearer, nil)
	if got.status != 200 || !bytes.Contains(got.body, []byte("Refund for order 1042")) {
		t.Fatalf("GET: %d %s", got.status, got.body)
	}
	if bytes.Contains(got.body, []byte("4111 1111 1111 1111")) || !bytes.Contains(got.body, []byte("[REDACTED:card]")) {
		t.Errorf("the card number was not redacted: %s", got.body)
	}
	if got.header.Get("Set-Cookie") != "" {
		t.Errorf("the tool's session cookie reached the agent")
	}

	del := do("DELETE", "/v1/tools/tickets/tickets/3", bearer, nil)
	var eb struct {
		Error      string `json:"error"`
		ApprovalID string `json:"approval_id"`
	}
	if err := json.Unmarshal(del.body, &eb); err != nil || del.status != 403 || eb.Error != "approval_required" {
		t.Fatalf("DELETE: %d %s", del.status, del.body)
	}
	rec := httptest.NewRecorder()
	d.admin.ServeHTTP(rec, httptest.NewRequest("POST", toolproxy.AdminApprovalApprove, strings.NewReader(`{"id":"`+eb.ApprovalID+`"}`)))
	if rec.Code != 200 {
		t.Fatalf("approve: %d %s", rec.Code, rec.Body)
	}
	withID := map[string]string{"Authorization": bearer["Authorization"], "Approval-Id": eb.ApprovalID}
	if got := do("DELETE", "/v1/tools/tickets/tickets/3", withID, nil); got.status != 200 {
		t.Errorf("approved DELETE: %d %s", got.status, got.body)
	}
	if got := do("DELETE", "/v1/tools/tickets/tickets/3", withID, nil); got.status != 403 {
		t.Errorf("second use: %d %s, want 403", got.status, got.body)
	}
	if got := do("GET", "/v1/tools/tickets/tickets/1", nil, nil); got.status != 401 {
		t.Errorf("no token: %d, want 401", got.status)
	}

	// The tool's key: in no answer, no journal entry.
	var journal []byte
	files, _ := filepath.Glob(filepath.Join(cfg.Server.StateDir, "audit", "*"))
	for _, f := range files {
		jb, _ := os.ReadFile(f)
		journal = append(journal, jb...)
	}
	if !bytes.Contains(journal, []byte(`"type":"tool.dlp"`)) || !bytes.Contains(journal, []byte(`"type":"approval.approve"`)) {
		t.Errorf("the journal lacks the calls")
	}
	for _, secret := range [][]byte{key, []byte(tr.AccessToken)} {
		if bytes.Contains(journal, secret) {
			t.Errorf("the journal holds a secret (%d bytes)", len(secret))
		}
	}
	for _, a := range answers {
		if bytes.Contains(a.body, key) {
			t.Errorf("an answer holds the tool's key")
		}
	}
}

// journalCount counts the occurrences of s in the audit journal's files
// under stateDir.
func journalCount(t *testing.T, stateDir, s string) int {
	t.Helper()
	n := 0
	files, _ := filepath.Glob(filepath.Join(stateDir, "audit", "*"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			n += bytes.Count(b, []byte(s))
		}
	}
	return n
}
