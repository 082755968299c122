package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/broker/toolproxy/demotool"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

// devDaemon is the demo appliance of `applianced dev`, run in process by
// serve with its log captured: the real journal, vault, broker, embedded
// LDAP directory, tool proxy and demo tool, on loopback and Unix sockets.
type devDaemon struct {
	t       *testing.T
	ctx     context.Context
	dir     string
	cfg     *config.File
	d       *daemon
	logs    *syncBuffer
	toolKey []byte // the demo tool's API key (put into the vault by the test)
	toolURL string // the demo tool itself, bypassing the proxy
	alicePW string
	base    string // https://listen
	agent   *http.Client
	https   *http.Client
	admin   *admin.Client
	answers [][]byte // every API answer, headers and body
	stop    func()
}

func startDevDaemon(t *testing.T, logLevel string, extraTOML ...string) *devDaemon {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	dir := t.TempDir()
	dv := &devEnv{dir: dir, cfgPath: filepath.Join(dir, "applianced.toml"), cli: "applianced", listen: pickPort(t)}
	t.Cleanup(func() {
		for i := len(dv.cleanup) - 1; i >= 0; i-- {
			dv.cleanup[i]()
		}
	})
	for _, step := range devSteps {
		if err := step(ctx, dv); err != nil {
			t.Fatal(err)
		}
	}
	x := &devDaemon{t: t, ctx: ctx, dir: dir, base: "https://" + dv.listen, alicePW: devPassword(t, dv, "alice")}
	var b strings.Builder
	template.Must(template.New("dev").Parse(devBaseConfig)).Execute(&b, map[string]string{"Listen": dv.listen, "Dir": dir})
	for _, s := range append(dv.sections, extraTOML...) {
		b.WriteString("\n" + s + "\n")
	}
	body := strings.Replace(b.String(), `log_level = "info"`, `log_level = "`+logLevel+`"`, 1)
	if m := regexp.MustCompile(`base_url = "([^"]+)"`).FindStringSubmatch(body); m != nil {
		x.toolURL = m[1]
	} else {
		t.Fatal("no demo tool in the dev config")
	}
	if err := os.WriteFile(dv.cfgPath, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if err := initState(testEnv(), cfg); err != nil {
		t.Fatal(err)
	}
	x.cfg = cfg
	if x.toolKey, err = os.ReadFile(filepath.Join(dir, "demo-tool.key")); err != nil {
		t.Fatal(err)
	}

	e := testEnv()
	x.logs = e.stderr.(*syncBuffer)
	ready := make(chan *daemon, 1)
	done := make(chan int, 1)
	go func() {
		done <- serve(ctx, e, cfg, serveOptions{adminGID: os.Getgid(), onReady: func(d *daemon) { ready <- d }})
	}()
	stopped := false
	x.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the daemon did not stop")
		}
	}
	t.Cleanup(x.stop)
	select {
	case x.d = <-ready:
	case code := <-done:
		t.Fatalf("serve exited with %d:\n%s", code, x.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not become ready")
	}
	x.agent = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", cfg.Server.AgentSocket)
	}}}
	x.https = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	x.admin = admin.NewClient(cfg.Server.AdminSocket)
	return x
}

// call makes one API request and keeps the answer.
func (x *devDaemon) call(c *http.Client, method, u string, hdr map[string]string, body io.Reader, form url.Values) (int, []byte) {
	x.t.Helper()
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequestWithContext(x.ctx, method, u, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		x.t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	var hb bytes.Buffer
	_ = resp.Header.Write(&hb)
	x.answers = append(x.answers, append(hb.Bytes(), got...))
	return resp.StatusCode, got
}

// token returns the access and refresh tokens of a 200 token answer.
func (x *devDaemon) token(status int, got []byte, what string) (access, refresh string) {
	x.t.Helper()
	var tr struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
	}
	if err := json.Unmarshal(got, &tr); err != nil || status != 200 || tr.AccessToken == "" {
		x.t.Fatalf("%s: %d %s", what, status, got)
	}
	return tr.AccessToken, tr.RefreshToken
}

func (x *devDaemon) login(pw string) (int, []byte) {
	return x.call(x.https, "POST", x.base+"/v1/login", nil, nil, url.Values{"username": {"alice"}, "password": {pw}})
}

func (x *devDaemon) agentToken() (int, []byte) {
	return x.call(x.agent, "POST", "http://agent/oauth2/token", nil, nil, url.Values{"grant_type": {"client_credentials"}, "resource": {"tickets"}})
}

func (x *devDaemon) exchange(userTok string) (int, []byte) {
	return x.call(x.agent, "POST", "http://agent/oauth2/token", nil, nil, url.Values{
		"grant_type": {broker.GrantTokenExchange}, "subject_token": {userTok},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"}, "resource": {"tickets"}})
}

func (x *devDaemon) tool(method, path, tok string, body io.Reader) (int, []byte) {
	return x.call(x.https, method, x.base+"/v1/tools/tickets"+path, map[string]string{"Authorization": "Bearer " + tok}, body, nil)
}

func (x *devDaemon) putSecret(p secretPutRequest) error {
	var reply json.RawMessage
	err := x.admin.Call(x.ctx, "POST", adminSecretPut, p, &reply)
	x.answers = append(x.answers, reply)
	return err
}

// TestNoSecretInLogsOrJournal runs the whole demo appliance in process, as
// `applianced dev` does but with debug logging, drives every flow that
// handles a secret (a login with a password and one with a wrong password,
// an agent token, a token exchange, introspection, a secret put, a tool call
// whose credential the proxy injects, a forged token), and then scans the
// daemon's log output and every journal file for each password, token and
// secret value, raw or encoded, and every API answer for the stored secrets.
func TestNoSecretInLogsOrJournal(t *testing.T) {
	x := startDevDaemon(t, "debug")
	var secrets []string // every value that must appear in no log or journal
	toolKey := x.toolKey
	// The administrator stores the tool's key and a second secret.
	other := []byte("s3cret-" + hex.EncodeToString(toolKey[:4]) + "-value")
	for _, p := range []secretPutRequest{
		{Name: "tickets-key", Type: vault.TypeAPIKey, Value: toolKey, AllowedTools: []string{"tickets"}},
		{Name: "other-key", Type: vault.TypeAPIKey, Value: other, AllowedTools: []string{"tickets"}},
	} {
		if err := x.putSecret(p); err != nil {
			t.Fatalf("secret put %s: %v", p.Name, err)
		}
	}
	secrets = append(secrets, string(toolKey), string(other), x.alicePW)

	// A wrong password: refused, and not written anywhere either.
	wrongPW := "Wr0ng-" + x.alicePW
	secrets = append(secrets, wrongPW)
	if st, got := x.login(wrongPW); st == 200 {
		t.Fatalf("login with a wrong password: %d %s", st, got)
	}
	st, got := x.login(x.alicePW)
	userTok, userRefresh := x.token(st, got, "login")
	st, got = x.agentToken()
	agentTok, _ := x.token(st, got, "client_credentials")
	st, got = x.exchange(userTok)
	obo, _ := x.token(st, got, "token exchange")
	secrets = append(secrets, userTok, userRefresh, agentTok, obo)
	if st, got := x.call(x.agent, "POST", "http://agent/oauth2/introspect", nil, nil, url.Values{"token": {obo}}); st != 200 || !bytes.Contains(got, []byte(`"active":true`)) {
		t.Fatalf("introspect: %d %s", st, got)
	}
	if userRefresh != "" {
		st, got = x.call(x.https, "POST", x.base+"/oauth2/token", nil, nil, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {userRefresh}})
		if st == 200 {
			a, r := x.token(st, got, "refresh")
			secrets = append(secrets, a, r)
		}
	}
	if st, got := x.tool("GET", "/tickets/2", agentTok, nil); st != 200 {
		t.Fatalf("tool call: %d %s", st, got)
	}
	if st, got := x.tool("GET", "/tickets/1", obo, nil); st != 200 {
		t.Fatalf("tool call for alice: %d %s", st, got)
	}
	// A call with a forged token must not echo it either.
	forged := agentTok[:len(agentTok)-6] + "AAAAAA"
	secrets = append(secrets, forged)
	if st, _ := x.tool("GET", "/tickets/2", forged, nil); st != 401 {
		t.Errorf("forged token: %d, want 401", st)
	}
	x.stop()

	journal := readTree(t, filepath.Join(x.cfg.Server.StateDir, "audit"))
	for _, typ := range []string{"secret.put", "tool.", "daemon.stop"} {
		if !bytes.Contains(journal, []byte(typ)) {
			t.Fatalf("the journal holds no %s: the scan would prove nothing", typ)
		}
	}
	logs := x.logs.String()
	if !strings.Contains(logs, "applianced ready") {
		t.Fatalf("the daemon's log was not captured: the scan would prove nothing")
	}
	places := map[string][]byte{"the log": []byte(logs), "the journal": journal}
	for i, a := range x.answers {
		// Answers carry tokens (that is their job) but never a stored secret.
		places[fmt.Sprintf("API answer %d", i)] = a
	}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		forms := map[string]string{
			"raw":       s,
			"base64":    base64.StdEncoding.EncodeToString([]byte(s)),
			"base64url": base64.RawURLEncoding.EncodeToString([]byte(s)),
			"hex":       hex.EncodeToString([]byte(s)),
		}
		stored := s == string(toolKey) || s == string(other)
		for where, data := range places {
			if strings.HasPrefix(where, "API answer") && !stored {
				continue
			}
			for form, v := range forms {
				if bytes.Contains(data, []byte(v)) {
					t.Errorf("%s holds a secret (%d bytes, %s form, starts %.4q)", where, len(s), form, s)
				}
			}
		}
	}
}

// devPassword is a demo user's password, from the printout's ldap test line.
func devPassword(t *testing.T, dv *devEnv, user string) string {
	t.Helper()
	re := regexp.MustCompile(`printf '%s' '([^']+)' \| .* ldap test ` + regexp.QuoteMeta(user) + ` `)
	for _, l := range dv.try {
		if m := re.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no password for %s in the demo printout", user)
	return ""
}

func readTree(t *testing.T, root string) []byte {
	t.Helper()
	var all []byte
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		all = append(all, b...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// adminStatus is the HTTP status of an admin call's error (200 for none).
func adminStatus(err error) int {
	var ae *admin.Error
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &ae):
		return ae.Status
	default:
		return -1
	}
}

// TestDeadJournalFailsEveryAction stops the running daemon's journal (every
// Append now fails) and then tries each kind of action through the daemon's
// own listeners: each answers 503 and changes nothing.
func TestDeadJournalFailsEveryAction(t *testing.T) {
	x := startDevDaemon(t, "info")
	if err := x.putSecret(secretPutRequest{Name: "tickets-key", Type: vault.TypeAPIKey, Value: x.toolKey, AllowedTools: []string{"tickets"}}); err != nil {
		t.Fatal(err)
	}
	st, got := x.login(x.alicePW)
	userTok, userRefresh := x.token(st, got, "login")
	st, got = x.agentToken()
	agentTok, _ := x.token(st, got, "client_credentials")
	if st, got := x.tool("GET", "/tickets/1", agentTok, nil); st != 200 {
		t.Fatalf("tool call before the journal died: %d %s", st, got)
	}

	st, got = x.tool("DELETE", "/tickets/3", agentTok, nil)
	var pending struct {
		ApprovalID string `json:"approval_id"`
	}
	if err := json.Unmarshal(got, &pending); err != nil || st != http.StatusForbidden || pending.ApprovalID == "" {
		t.Fatalf("DELETE before the journal died: %d %s, want 403 with an approval_id", st, got)
	}

	if err := x.d.journal.Close(); err != nil {
		t.Fatal(err)
	}
	wantUnavailable := func(t *testing.T, st int, got []byte) {
		t.Helper()
		if st != http.StatusServiceUnavailable {
			t.Errorf("got %d %s, want 503", st, got)
		}
		if bytes.Contains(got, []byte("access_token")) {
			t.Errorf("a token was issued without a record: %s", got)
		}
	}
	t.Run("login", func(t *testing.T) {
		st, got := x.login(x.alicePW)
		wantUnavailable(t, st, got)
	})
	t.Run("agent token", func(t *testing.T) {
		st, got := x.agentToken()
		wantUnavailable(t, st, got)
	})
	t.Run("token exchange", func(t *testing.T) {
		st, got := x.exchange(userTok)
		wantUnavailable(t, st, got)
	})
	t.Run("refresh", func(t *testing.T) {
		if userRefresh == "" {
			t.Skip("login issued no refresh token")
		}
		st, got := x.call(x.https, "POST", x.base+"/oauth2/token", nil, nil, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {userRefresh}})
		wantUnavailable(t, st, got)
	})
	t.Run("tool call", func(t *testing.T) {
		st, got := x.tool("GET", "/tickets/1", agentTok, nil)
		wantUnavailable(t, st, got)
		if bytes.Contains(got, []byte("Printer")) {
			t.Errorf("the tool's answer reached the agent without a record: %s", got)
		}
	})
	t.Run("tool call that changes the tool", func(t *testing.T) {
		before := x.ticketCount()
		st, got := x.tool("POST", "/tickets", agentTok, strings.NewReader(`{"title":"unrecorded"}`))
		wantUnavailable(t, st, got)
		if after := x.ticketCount(); after != before {
			t.Errorf("tool holds %d tickets, was %d", after, before)
		}
	})
	t.Run("secret put", func(t *testing.T) {
		err := x.putSecret(secretPutRequest{Name: "unrecorded", Type: vault.TypeAPIKey, Value: []byte("v"), AllowedTools: []string{"tickets"}})
		if got := adminStatus(err); got != http.StatusServiceUnavailable {
			t.Errorf("got %d (%v), want 503", got, err)
		}
		if _, err := x.d.vault.Describe(x.ctx, "unrecorded"); !errors.Is(err, vault.ErrNotFound) {
			t.Errorf("the secret exists after an unrecorded put: %v", err)
		}
	})
	t.Run("agent disable", func(t *testing.T) {
		err := x.admin.Call(x.ctx, "POST", broker.AdminAgentDisable, broker.AgentRef{Name: "demo-agent"}, nil)
		if got := adminStatus(err); got != http.StatusServiceUnavailable {
			t.Errorf("got %d (%v), want 503", got, err)
		}
		if a, err := x.d.broker.Agent("demo-agent"); err != nil || !a.Enabled {
			t.Errorf("after an unrecorded disable: enabled %v, err %v; want still enabled", a.Enabled, err)
		}
	})
	t.Run("approval approve", func(t *testing.T) {
		err := x.admin.Call(x.ctx, "POST", toolproxy.AdminApprovalApprove, map[string]string{"id": pending.ApprovalID}, nil)
		if got := adminStatus(err); got != http.StatusServiceUnavailable {
			t.Errorf("got %d (%v), want 503", got, err)
		}
		var list json.RawMessage
		if err := x.admin.Call(x.ctx, "GET", toolproxy.AdminApprovalList, nil, &list); err != nil || !bytes.Contains(list, []byte(`"status":"pending"`)) {
			t.Errorf("after an unrecorded approve: list %s, err %v; want the approval still pending", list, err)
		}
	})
	t.Run("token revoke", func(t *testing.T) {
		err := x.admin.Call(x.ctx, "POST", broker.AdminTokenRevoke, broker.RevokeRequest{User: "alice"}, nil)
		if got := adminStatus(err); got != http.StatusServiceUnavailable {
			t.Errorf("got %d (%v), want 503", got, err)
		}
		if _, err := x.d.broker.Verify(x.ctx, userTok, x.d.broker.Issuer()+"/oauth2/token"); err != nil {
			t.Errorf("after an unrecorded revoke, alice's token is refused (%v); want it unchanged", err)
		}
	})
	t.Run("config reload", func(t *testing.T) {
		before := x.d.config()
		path := before.Path
		good, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		changed := append(bytes.Clone(good), []byte("\n[[role]]\nname = \"unrecorded-role\"\nscopes = [\"tickets:read\"]\n")...)
		if err := os.WriteFile(path, changed, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(path, good, 0o600)
		x.d.reloadFrom(x.ctx, path, audit.Actor{})
		if x.d.config() != before {
			t.Error("a reload that could not be recorded was applied")
		}
	})
	t.Run("token revoke at /oauth2/revoke", func(t *testing.T) {
		if userRefresh == "" {
			t.Skip("login issued no refresh token")
		}
		st, got := x.call(x.https, "POST", x.base+"/oauth2/revoke", nil, nil, url.Values{"token": {userTok}})
		wantUnavailable(t, st, got)
		if _, err := x.d.broker.Verify(x.ctx, userTok, x.d.broker.Issuer()+"/oauth2/token"); err != nil {
			t.Errorf("after an unrecorded revoke, alice's token is refused (%v); want it unchanged", err)
		}
	})
}

// jti is the token id in a JWT's payload (read without verification).
func jti(t *testing.T, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		ID string `json:"jti"`
	}
	if err != nil || json.Unmarshal(raw, &c) != nil || c.ID == "" {
		t.Fatalf("no jti in the token: %v", err)
	}
	return c.ID
}

// TestRevocationReachesIntrospectionAndProxyAtOnce: through the daemon's
// own wiring (the real broker verifying for the real tool proxy), a revoked
// jti, a revoked user and a disabled agent are refused by introspection and
// by the tool proxy at the very next request, with tokens that have not
// expired.
func TestRevocationReachesIntrospectionAndProxyAtOnce(t *testing.T) {
	// A second agent, the resource server that introspects, so that the
	// introspecting caller is not the agent being disabled.
	const checkerSecret = "checker-client-secret-0123456789"
	hash, err := broker.HashClientSecret(checkerSecret)
	if err != nil {
		t.Fatal(err)
	}
	x := startDevDaemon(t, "info", fmt.Sprintf("[[agent]]\nname = \"checker\"\nroles = [\"chat-user\"]\nclient_secret_hash = %q\n", hash))
	if err := x.putSecret(secretPutRequest{Name: "tickets-key", Type: vault.TypeAPIKey, Value: x.toolKey, AllowedTools: []string{"tickets"}}); err != nil {
		t.Fatal(err)
	}
	active := func(tok string) bool {
		t.Helper()
		st, got := x.call(x.https, "POST", x.base+"/oauth2/introspect", nil, nil, url.Values{"token": {tok}, "client_id": {"checker"}, "client_secret": {checkerSecret}})
		var in struct {
			Active bool `json:"active"`
		}
		if st != 200 || json.Unmarshal(got, &in) != nil {
			t.Fatalf("introspect: %d %s", st, got)
		}
		return in.Active
	}
	works := func(tok string) bool {
		t.Helper()
		st, got := x.tool("GET", "/tickets/1", tok, nil)
		if st == 200 {
			return true
		}
		if st != http.StatusUnauthorized && st != http.StatusForbidden {
			t.Fatalf("tool call: %d %s, want 200, 401 or 403", st, got)
		}
		return false
	}
	fresh := func(userToo bool) (agentTok, oboTok string) {
		t.Helper()
		st, got := x.agentToken()
		agentTok, _ = x.token(st, got, "client_credentials")
		if userToo {
			st, got = x.login(x.alicePW)
			userTok, _ := x.token(st, got, "login")
			st, got = x.exchange(userTok)
			oboTok, _ = x.token(st, got, "token exchange")
		}
		return agentTok, oboTok
	}
	revoke := func(req broker.RevokeRequest) {
		t.Helper()
		if err := x.admin.Call(x.ctx, "POST", broker.AdminTokenRevoke, req, nil); err != nil {
			t.Fatalf("revoke %+v: %v", req, err)
		}
	}

	t.Run("revoked jti", func(t *testing.T) {
		victim, _ := fresh(false)
		bystander, _ := fresh(false)
		if !active(victim) || !works(victim) {
			t.Fatal("a fresh agent token must work before the revocation, else this proves nothing")
		}
		revoke(broker.RevokeRequest{JTI: jti(t, victim)})
		if active(victim) {
			t.Error("introspection: a revoked jti is still active")
		}
		if works(victim) {
			t.Error("proxy: a revoked jti still calls the tool")
		}
		if !works(bystander) {
			t.Error("revoking one jti refused another token of the same agent")
		}
	})
	t.Run("revoked user", func(t *testing.T) {
		agentTok, obo := fresh(true)
		if !active(obo) || !works(obo) {
			t.Fatal("a fresh on-behalf-of token must work before the revocation, else this proves nothing")
		}
		revoke(broker.RevokeRequest{User: "alice"})
		if active(obo) {
			t.Error("introspection: a token for a revoked user is still active")
		}
		if works(obo) {
			t.Error("proxy: a token for a revoked user still calls the tool")
		}
		if !works(agentTok) {
			t.Error("revoking the user refused the agent's own token")
		}
	})
	t.Run("disabled agent", func(t *testing.T) {
		agentTok, _ := fresh(false)
		if !active(agentTok) || !works(agentTok) {
			t.Fatal("a fresh agent token must work before the disable, else this proves nothing")
		}
		if err := x.admin.Call(x.ctx, "POST", broker.AdminAgentDisable, broker.AgentRef{Name: "demo-agent"}, nil); err != nil {
			t.Fatal(err)
		}
		if active(agentTok) {
			t.Error("introspection: a disabled agent's token is still active")
		}
		if works(agentTok) {
			t.Error("proxy: a disabled agent's token still calls the tool")
		}
	})
}

// TestStateFilesArePrivate runs the daemon through a login, a token, a
// secret put and a tool call, then checks every file it and `init` made:
// the master key is 0400, the vault and every other file under the state
// dir (journal, broker state, signing and TLS keys) are readable by the
// owner alone, and directories are 0700.
func TestStateFilesArePrivate(t *testing.T) {
	x := startDevDaemon(t, "info")
	if err := x.putSecret(secretPutRequest{Name: "tickets-key", Type: vault.TypeAPIKey, Value: x.toolKey, AllowedTools: []string{"tickets"}}); err != nil {
		t.Fatal(err)
	}
	st, got := x.login(x.alicePW)
	x.token(st, got, "login")
	st, got = x.agentToken()
	agentTok, _ := x.token(st, got, "client_credentials")
	if st, got := x.tool("GET", "/tickets/1", agentTok, nil); st != 200 {
		t.Fatalf("tool call: %d %s", st, got)
	}
	x.stop()

	mk, err := os.Stat(x.cfg.Vault.MasterKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := mk.Mode().Perm(); got != 0o400 {
		t.Errorf("master key %s: mode %04o, want 0400", x.cfg.Vault.MasterKeyFile, got)
	}
	if st, err := os.Stat(x.cfg.Server.TLSKey); err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("TLS key: %v, err %v; want no group or other bits", st.Mode(), err)
	}
	var files, vaultSeen int
	err = filepath.WalkDir(x.cfg.Server.StateDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if got := info.Mode().Perm(); got&0o077 != 0 {
				t.Errorf("dir %s: mode %04o, want no group or other bits", p, got)
			}
		case info.Mode().IsRegular():
			files++
			if filepath.Base(p) == "vault.db" {
				vaultSeen++
			}
			if got := info.Mode().Perm(); got&0o077 != 0 || got&0o200 == 0 && got != 0o400 {
				t.Errorf("%s: mode %04o, want 0600 or 0400", p, got)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 3 || vaultSeen != 1 {
		t.Fatalf("the state dir holds %d files, vault.db %d times: the check proves nothing", files, vaultSeen)
	}
}

// TestBadInputChangesNothing sends malformed bodies to every admin verb that
// changes state and to every API endpoint of the running daemon, and bad
// tokens to the tool proxy: each gets a 4xx with a JSON error, and
// afterwards the secrets, the agents, the approvals, a live token and the
// tool behind the proxy are exactly as before.
func TestBadInputChangesNothing(t *testing.T) {
	x := startDevDaemon(t, "info")
	if err := x.putSecret(secretPutRequest{Name: "tickets-key", Type: vault.TypeAPIKey, Value: x.toolKey, AllowedTools: []string{"tickets"}}); err != nil {
		t.Fatal(err)
	}
	st, got := x.agentToken()
	agentTok, _ := x.token(st, got, "client_credentials")
	// A pending approval, so approve and deny have something to hit.
	if st, got := x.tool("DELETE", "/tickets/3", agentTok, nil); st != http.StatusForbidden {
		t.Fatalf("DELETE: %d %s, want 403 approval_required", st, got)
	}
	snapshot := func() string {
		t.Helper()
		var b strings.Builder
		secrets, err := x.d.vault.List(x.ctx, audit.Actor{})
		if err != nil {
			t.Fatal(err)
		}
		vs, err := x.d.vault.Status(x.ctx, audit.Actor{})
		if err != nil {
			t.Fatal(err)
		}
		var approvals json.RawMessage
		if err := x.admin.Call(x.ctx, "GET", toolproxy.AdminApprovalList, nil, &approvals); err != nil {
			t.Fatal(err)
		}
		for _, v := range []any{secrets, vs.Term, x.d.broker.Agents(), approvals} {
			j, _ := json.Marshal(v)
			b.Write(j)
			b.WriteByte('\n')
		}
		st, got := x.call(x.agent, "POST", "http://agent/oauth2/introspect", nil, nil, url.Values{"token": {agentTok}})
		fmt.Fprintf(&b, "introspect %d active=%v\n", st, bytes.Contains(got, []byte(`"active":true`)))
		fmt.Fprintf(&b, "tickets %d\n", x.ticketCount())
		return b.String()
	}
	before := snapshot()

	adminHC := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", x.cfg.Server.AdminSocket)
	}}}
	bodies := map[string]string{
		"empty":           "",
		"truncated":       `{"name":"tickets-key"`,
		"array":           `[]`,
		"null":            `null`,
		"wrong type":      `{"name":7,"jti":7,"user":7,"id":7,"value":7}`,
		"unknown field":   `{"name":"tickets-key","id":"x","jti":"x","agent":"demo-agent","value":"eA==","shell":"rm -rf /"}`,
		"trailing data":   `{"name":"demo-agent"} {"name":"demo-agent"}`,
		"NUL in name":     `{"name":"tickets-key\u0000"}`,
		"oversized":       `{"name":"` + strings.Repeat("a", 4<<20) + `"}`,
		"not JSON":        "name=demo-agent",
		"invalid UTF-8":   "{\"name\":\"\xff\xfe\"}",
		"deeply nested":   strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		"bad base64":      `{"name":"tickets-key","value":"!!!"}`,
		"empty object":    `{}`,
		"two revocations": `{"jti":"x","user":"alice"}`,
	}
	changers := []string{adminSecretPut, adminSecretRotate, adminSecretDelete, adminSecretVerify,
		broker.AdminAgentDisable, broker.AdminAgentEnable, broker.AdminTokenRevoke,
		toolproxy.AdminApprovalApprove, toolproxy.AdminApprovalDeny, adminVaultRekey, adminVaultRestore}
	for _, path := range changers {
		for name, body := range bodies {
			if path == adminVaultRekey && (body == "null" || body == "{}") {
				continue // a valid request: rekey takes no required field
			}
			t.Run(path+"/"+name, func(t *testing.T) {
				req, _ := http.NewRequestWithContext(x.ctx, "POST", "http://admin"+path, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := adminHC.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				rb, _ := io.ReadAll(resp.Body)
				var eb struct {
					Error string `json:"error"`
				}
				if resp.StatusCode/100 != 4 || json.Unmarshal(rb, &eb) != nil || eb.Error == "" {
					t.Errorf("got %d %.200s, want a 4xx with a JSON error", resp.StatusCode, rb)
				}
			})
		}
	}

	api := []struct {
		name   string
		c      *http.Client
		method string
		url    string
		ctype  string
		body   string
	}{
		{"token: no grant", x.agent, "POST", "http://agent/oauth2/token", "application/x-www-form-urlencoded", ""},
		{"token: unknown grant", x.agent, "POST", "http://agent/oauth2/token", "application/x-www-form-urlencoded", "grant_type=password&username=alice&password=x"},
		{"token: bad form", x.agent, "POST", "http://agent/oauth2/token", "application/x-www-form-urlencoded", "grant_type=%zz"},
		{"token: repeated grant", x.agent, "POST", "http://agent/oauth2/token", "application/x-www-form-urlencoded", "grant_type=client_credentials&grant_type=refresh_token"},
		{"token: JSON body", x.agent, "POST", "http://agent/oauth2/token", "application/json", `{"grant_type":"client_credentials"}`},
		{"token: oversized", x.agent, "POST", "http://agent/oauth2/token", "application/x-www-form-urlencoded", "grant_type=client_credentials&scope=" + strings.Repeat("a", 4<<20)},
		{"exchange: garbage subject", x.agent, "POST", "http://agent/oauth2/token", "application/x-www-form-urlencoded",
			url.Values{"grant_type": {broker.GrantTokenExchange}, "subject_token": {"a.b.c"}, "subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"}}.Encode()},
		{"exchange: own token as subject", x.agent, "POST", "http://agent/oauth2/token", "application/x-www-form-urlencoded",
			url.Values{"grant_type": {broker.GrantTokenExchange}, "subject_token": {agentTok}, "subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"}}.Encode()},
		{"refresh: garbage", x.agent, "POST", "http://agent/oauth2/token", "application/x-www-form-urlencoded", "grant_type=refresh_token&refresh_token=garbage"},
		{"revoke: no token", x.agent, "POST", "http://agent/oauth2/revoke", "application/x-www-form-urlencoded", "token_type_hint=access_token"},
		{"introspect: no token", x.agent, "POST", "http://agent/oauth2/introspect", "application/x-www-form-urlencoded", ""},
		{"login: malformed JSON", x.https, "POST", x.base + "/v1/login", "application/json", `{"username":"alice","password":`},
		{"login: unknown field", x.https, "POST", x.base + "/v1/login", "application/json", `{"username":"alice","password":"x","admin":true}`},
		{"login: wrong types", x.https, "POST", x.base + "/v1/login", "application/json", `{"username":["alice"],"password":1}`},
		{"login: filter injection", x.https, "POST", x.base + "/v1/login", "application/x-www-form-urlencoded", "username=*)(uid=*&password=x"},
		{"login: NUL in name", x.https, "POST", x.base + "/v1/login", "application/x-www-form-urlencoded", "username=alice%00&password=x"},
		{"login: empty password", x.https, "POST", x.base + "/v1/login", "application/x-www-form-urlencoded", "username=alice&password="},
		{"login: GET", x.https, "GET", x.base + "/v1/login?username=alice&password=x", "", ""},
	}
	for _, tc := range api {
		t.Run(tc.name, func(t *testing.T) {
			var hdr map[string]string
			if tc.ctype != "" {
				hdr = map[string]string{"Content-Type": tc.ctype}
			}
			st, got := x.call(tc.c, tc.method, tc.url, hdr, strings.NewReader(tc.body), nil)
			var eb struct {
				Error string `json:"error"`
			}
			if st/100 != 4 || json.Unmarshal(got, &eb) != nil || eb.Error == "" {
				t.Errorf("got %d %.200s, want a 4xx with a JSON error", st, got)
			}
		})
	}

	parts := strings.Split(agentTok, ".")
	badTokens := map[string]string{
		"garbage":         "garbage",
		"alg none":        base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"at+jwt"}`)) + "." + parts[1] + ".",
		"payload swapped": parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"demo-agent","scope":"tickets:delete"}`)) + "." + parts[2],
		"signature cut":   parts[0] + "." + parts[1] + ".",
		"oversized":       strings.Repeat("a", 1<<16),
	}
	for name, tok := range badTokens {
		t.Run("tool token: "+name, func(t *testing.T) {
			st, got := x.call(x.https, "POST", x.base+"/v1/tools/tickets/tickets", map[string]string{"Authorization": "Bearer " + tok},
				strings.NewReader(`{"title":"from a bad token"}`), nil)
			if st != http.StatusUnauthorized && st != http.StatusBadRequest {
				t.Errorf("got %d %.200s, want 401 (or 400)", st, got)
			}
		})
	}

	if after := snapshot(); after != before {
		t.Errorf("bad input changed the state:\n got %s\nwant %s", after, before)
	}
}

// ticketCount asks the demo tool itself, with its key, how many tickets it
// holds.
func (x *devDaemon) ticketCount() int {
	x.t.Helper()
	req, _ := http.NewRequestWithContext(x.ctx, "GET", x.toolURL+"/tickets", nil)
	req.Header.Set(demotool.KeyHeader, string(x.toolKey))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct {
		Tickets []json.RawMessage `json:"tickets"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != 200 {
		x.t.Fatalf("the demo tool: %d %v", resp.StatusCode, err)
	}
	return len(list.Tickets)
}

const firewallChildEnv = "APPLIANCED_FIREWALL_CHILD"

// TestFirewallChild is the process TestDaemonStopLeavesTheFirewall runs in
// a network namespace of its own; on its own it does nothing. It prints
// what it saw on lines the parent reads.
func TestFirewallChild(t *testing.T) {
	if os.Getenv(firewallChildEnv) == "" {
		return // only a helper process; not a skipped test
	}
	table := func() string {
		out, err := exec.Command("nft", "list", "tables").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list tables: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "table inet applianced\n") {
			return "present"
		}
		return "absent"
	}
	dir := t.TempDir()
	cfg := testConfig(t, dir, "\n[[net.egress]]\nto = [\"10.10.0.11/32\"]\nproto = \"tcp\"\nports = [636]\ncomment = \"domain controllers\"\n")
	call := func(path string, in any) error {
		t.Helper()
		var err error
		for range 200 {
			if err = admin.NewClient(cfg.Server.AdminSocket).Call(context.Background(), "POST", path, in, nil); err == nil || adminStatus(err) > 0 {
				return err
			}
			time.Sleep(50 * time.Millisecond)
		}
		return err
	}
	r := startDaemon(t, cfg)
	if err := call(netPathApply, netApplyRequest{}); err != nil {
		t.Fatalf("net apply: %v", err)
	}
	fmt.Println("AFTER_APPLY=" + table())
	r.stop(t)
	fmt.Println("AFTER_STOP=" + table())

	// A reboot empties the kernel's ruleset. The daemon's first step puts
	// the applied table back, before its admin socket (or anything else)
	// is up, and records it once the journal is open.
	if out, err := exec.Command("nft", "delete", "table", "inet", "applianced").CombinedOutput(); err != nil {
		t.Fatalf("nft delete table: %v\n%s", err, out)
	}
	fmt.Println("AFTER_REBOOT=" + table())
	// What applianced-firewall.service does at boot, with no daemon.
	if code := run(context.Background(), testEnv(), []string{"net", "restore", "--config", cfg.Path}); code != exitOK {
		t.Fatalf("net restore: exit %d", code)
	}
	fmt.Println("AFTER_NET_RESTORE=" + table())
	if out, err := exec.Command("nft", "delete", "table", "inet", "applianced").CombinedOutput(); err != nil {
		t.Fatalf("nft delete table: %v\n%s", err, out)
	}
	r = startDaemon(t, cfg)
	for i := 0; ; i++ {
		if err := admin.NewClient(cfg.Server.AdminSocket).Call(context.Background(), "GET", netPathStatus, nil, nil); err == nil {
			break
		} else if i == 200 {
			t.Fatalf("net status: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Println("AFTER_RESTART=" + table())
	recorded := "no"
	segs, _ := filepath.Glob(filepath.Join(cfg.Server.StateDir, "audit", "*"))
	for _, seg := range segs {
		b, _ := os.ReadFile(seg)
		for line := range bytes.Lines(b) {
			if bytes.Contains(line, []byte(`"type":"net.drift"`)) && bytes.Contains(line, []byte(`"trigger":"start"`)) {
				recorded = "yes"
			}
		}
	}
	fmt.Println("RESTORE_RECORDED=" + recorded)
	if err := call(netPathDown, struct{}{}); err != nil {
		t.Fatalf("net down: %v", err)
	}
	fmt.Println("AFTER_DOWN=" + table())
	r.stop(t)

	// With the journal dead, an apply is refused with 503 and changes nothing.
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *daemon, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		serve(ctx, testEnv(), cfg, serveOptions{adminGID: -1, onReady: func(d *daemon) { ready <- d }})
	}()
	defer func() { cancel(); <-done }()
	var d *daemon
	select {
	case d = <-ready:
	case <-done:
		t.Fatal("serve ended before it was ready")
	}
	if err := d.journal.Close(); err != nil {
		t.Fatal(err)
	}
	err := call(netPathApply, netApplyRequest{})
	fmt.Printf("DEAD_JOURNAL_APPLY=%d table=%s\n", adminStatus(err), table())
}

// TestDaemonStopLeavesTheFirewall runs the daemon in a network namespace of
// its own (a child process under unshare -n): `net apply` through the admin
// socket installs table inet applianced, stopping the daemon leaves it in
// place (fail closed), a new daemon puts it back at once after a reboot
// emptied the kernel's ruleset, `net down` through it removes it, and with
// the journal dead an apply answers 503 and installs nothing.
func TestDaemonStopLeavesTheFirewall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root for a network namespace and nftables")
	}
	for _, tool := range []string{"unshare", "ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s not installed", tool)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-n", "sh", "-c", `ip link set lo up && exec "$0" -test.run='^TestFirewallChild$' -test.count=1 -test.v`, exe)
	cmd.Env = append(os.Environ(), firewallChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	for _, want := range []string{"AFTER_APPLY=present", "AFTER_STOP=present", "AFTER_REBOOT=absent", "AFTER_NET_RESTORE=present", "AFTER_RESTART=present", "RESTORE_RECORDED=yes", "AFTER_DOWN=absent", "DEAD_JOURNAL_APPLY=503 table=absent"} {
		if !strings.Contains(string(out), want+"\n") {
			t.Errorf("child output lacks %s:\n%s", want, out)
		}
	}
}

// A login refused because of recent failures says so, and when to try
// again: not "invalid username or password", which would send the user to
// retype a right password and lengthen the wait.
func TestThrottledLoginSaysWhenToRetry(t *testing.T) {
	x := startDevDaemon(t, "info")
	for range 2 {
		if st, got := x.login("not-the-password"); st != http.StatusBadRequest {
			t.Fatalf("wrong password: got %d %s, want 400", st, got)
		}
	}
	st, got := x.login(x.alicePW)
	if st != http.StatusTooManyRequests || !bytes.Contains(got, []byte("too_many_attempts")) || !bytes.Contains(got, []byte("try again in")) {
		t.Fatalf("the right password right after two failures: got %d %s, want 429 too_many_attempts", st, got)
	}
	if hdr := x.answers[len(x.answers)-1]; !regexp.MustCompile(`(?m)^Retry-After: [1-9][0-9]*\r?$`).Match(hdr) {
		t.Errorf("no Retry-After header in:\n%s", hdr)
	}
}

// lastEvent is the newest journal entry of type typ.
func (x *devDaemon) lastEvent(typ string) audit.Event {
	x.t.Helper()
	r, err := x.d.journal.Reader(1)
	if err != nil {
		x.t.Fatal(err)
	}
	defer r.Close()
	last := x.d.journal.LastSeq()
	var found audit.Event
	ok := false
	for seq := uint64(1); seq <= last; seq++ {
		e, err := r.Next(x.ctx)
		if err != nil {
			x.t.Fatal(err)
		}
		if e.Event.Type == typ {
			found, ok = e.Event, true
		}
	}
	if !ok {
		x.t.Fatalf("no %s event in the journal", typ)
	}
	return found
}

// The tool proxy says why it refuses a token it issued (revoked, agent
// disabled, a user's own token), and the refusal's audit record names the
// agent, user and jti the token was issued to: an auditor sees who kept
// calling after being cut off.
func TestRefusedTokensSayWhyAndWhose(t *testing.T) {
	x := startDevDaemon(t, "info")
	if err := x.putSecret(secretPutRequest{Name: "tickets-key", Type: vault.TypeAPIKey, Value: x.toolKey, AllowedTools: []string{"tickets"}}); err != nil {
		t.Fatal(err)
	}
	st, got := x.login(x.alicePW)
	userTok, _ := x.token(st, got, "login")
	st, got = x.agentToken()
	agentTok, _ := x.token(st, got, "client_credentials")

	check := func(what string, wantStatus int, wantCode, wantDesc, wantType, wantAgent, wantUser, wantJTI string, st int, got []byte) {
		t.Helper()
		if st != wantStatus || !bytes.Contains(got, []byte(wantCode)) || !bytes.Contains(got, []byte(wantDesc)) {
			t.Errorf("%s: got %d %s, want %d %s %q", what, st, got, wantStatus, wantCode, wantDesc)
			return
		}
		ev := x.lastEvent(wantType)
		if ev.Actor.Agent != wantAgent || ev.Actor.User != wantUser || ev.Details["jti"] != wantJTI {
			t.Errorf("%s: audited as agent %q user %q jti %q, want %q %q %q", what, ev.Actor.Agent, ev.Actor.User, ev.Details["jti"], wantAgent, wantUser, wantJTI)
		}
		// The same keyed hash as the issuance's record, to match them.
		if wantJTI != "" && (ev.Details["jti_hmac"] == "" || ev.Details["jti_hmac"] != x.d.broker.HashID(wantJTI)) {
			t.Errorf("%s: jti_hmac %q, want the broker's %q", what, ev.Details["jti_hmac"], x.d.broker.HashID(wantJTI))
		}
	}

	st, got = x.tool("GET", "/tickets/1", userTok, nil)
	check("a user's own token", 403, "wrong_audience", "a user's own token is not accepted here", "tool.deny", "", "alice", jti(t, userTok), st, got)

	st, got = x.call(x.https, "GET", x.base+"/v1/tools/nosuch/x", map[string]string{"Authorization": "Bearer " + agentTok}, nil, nil)
	check("an unknown tool", 404, "unknown_tool", `no tool named \"nosuch\"`, "tool.deny", "demo-agent", "", jti(t, agentTok), st, got)

	if err := x.admin.Call(x.ctx, "POST", broker.AdminTokenRevoke, broker.RevokeRequest{JTI: jti(t, agentTok)}, nil); err != nil {
		t.Fatal(err)
	}
	st, got = x.tool("GET", "/tickets/1", agentTok, nil)
	check("a revoked token", 401, "invalid_token", "the access token was revoked", "tool.deny", "demo-agent", "", jti(t, agentTok), st, got)

	st, got = x.agentToken()
	fresh, _ := x.token(st, got, "client_credentials")
	if err := x.admin.Call(x.ctx, "POST", broker.AdminAgentDisable, broker.AgentRef{Name: "demo-agent"}, nil); err != nil {
		t.Fatal(err)
	}
	st, got = x.tool("GET", "/tickets/1", fresh, nil)
	check("a disabled agent's token", 403, "agent_disabled", "the agent is disabled", "agent.blocked", "demo-agent", "", jti(t, fresh), st, got)

	st, got = x.tool("GET", "/tickets/1", "not.a.token", nil)
	check("garbage", 401, "invalid_token", "not valid (malformed, or not signed by this appliance)", "tool.deny", "", "", "", st, got)
}

// TOTP enrollment asks the directory first: a name no one signs in with
// gets no seed (a typo would leave the real user without one).
func TestTOTPEnrollNeedsAUserInTheDirectory(t *testing.T) {
	x := startDevDaemon(t, "info")
	var out toolproxy.EnrollAnswer
	err := x.admin.Call(x.ctx, "POST", toolproxy.AdminTOTPEnroll, toolproxy.EnrollRequest{User: "nosuchuser"}, &out)
	if got := adminStatus(err); got != http.StatusNotFound || out.URI != "" || !strings.Contains(err.Error(), `"nosuchuser" (user_not_found)`) {
		t.Fatalf("enrolling a user not in the directory: got %d (%v), uri %q; want 404 naming the user and no seed", got, err, out.URI)
	}
	if err := x.admin.Call(x.ctx, "POST", toolproxy.AdminTOTPEnroll, toolproxy.EnrollRequest{User: "alice"}, &out); err != nil || !strings.HasPrefix(out.URI, "otpauth://") {
		t.Fatalf("enrolling alice: %v, uri %q", err, out.URI)
	}
}

// A path not in canonical form outside the tool proxy gets a JSON 400, not
// a redirect to another endpoint with an HTML body.
func TestNonCanonicalPathsGetAClearError(t *testing.T) {
	x := startDevDaemon(t, "info")
	for _, p := range []string{"/v1/approvals/../tools/tickets/tickets", "/v1//login", "/v1/./login"} {
		req, _ := http.NewRequestWithContext(x.ctx, "GET", x.base+"/", nil)
		req.URL.Path, req.URL.RawPath = p, p // sent as written
		resp, err := x.https.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !bytes.Contains(body, []byte(`"error":"invalid_request"`)) || !bytes.Contains(body, []byte("canonical")) {
			t.Errorf("GET %s: got %d %s, want a JSON 400", p, resp.StatusCode, body)
		}
	}
	if st, got := x.call(x.https, "GET", x.base+"/healthz", nil, nil, nil); st != http.StatusOK {
		t.Errorf("/healthz: got %d %s", st, got)
	}
}

// An admin clears the failures a user or an address has counted against
// it: the next login goes to the directory at once, and the unlock is
// recorded.
func TestLDAPUnlockClearsCountedFailures(t *testing.T) {
	x := startDevDaemon(t, "info")
	for range 2 {
		x.login("not-the-password")
	}
	if st, got := x.login(x.alicePW); st != http.StatusTooManyRequests {
		t.Fatalf("right after two failures: got %d %s, want 429 (the test needs the backoff)", st, got)
	}
	var rep ldapUnlockReply
	if err := x.admin.Call(x.ctx, "POST", adminLDAPUnlock, ldapUnlockRequest{User: "alice"}, &rep); err != nil || !rep.UserHad {
		t.Fatalf("unlock alice: %v %+v, want her failures cleared", err, rep)
	}
	if st, got := x.login(x.alicePW); st != http.StatusOK {
		t.Fatalf("after the unlock: got %d %s, want 200", st, got)
	}
	if ev := x.lastEvent("auth.unlock"); ev.Target != "alice" || ev.Details["user"] != "alice" {
		t.Errorf("auth.unlock recorded as %+v", ev)
	}
	err := x.admin.Call(x.ctx, "POST", adminLDAPUnlock, ldapUnlockRequest{Source: "not-an-address"}, nil)
	if got := adminStatus(err); got != http.StatusBadRequest {
		t.Errorf("unlock of a bad address: got %d (%v), want 400", got, err)
	}
	// The agent socket's logins are counted under "unix".
	if err := x.admin.Call(x.ctx, "POST", adminLDAPUnlock, ldapUnlockRequest{Source: "unix"}, &rep); err != nil {
		t.Errorf("unlock of the agent socket's source: %v", err)
	}
	// A name that is no login name is refused before anything is recorded.
	before := x.d.journal.LastSeq()
	err = x.admin.Call(x.ctx, "POST", adminLDAPUnlock, ldapUnlockRequest{User: "bad\x00name"}, nil)
	if got := adminStatus(err); got != http.StatusBadRequest || x.d.journal.LastSeq() != before {
		t.Errorf("unlock of a bad name: got %d (%v), journal %d -> %d; want 400 and no record", got, err, before, x.d.journal.LastSeq())
	}
}
