package toolproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker/dlp"
	"github.com/applianced/applianced/vault"
)

// clock is a settable clock shared by the proxy and the fakes.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// tokens is a Verifier over a fixed table of raw tokens. The broker's real
// verifier lives in another package; this one implements the contract the
// proxy relies on (audience, disabled agents, revoked tokens).
type tokens struct {
	mu      sync.Mutex
	byRaw   map[string]tokenEntry
	agents  *agents
	revoked map[string]bool // agent -> all tokens revoked
}

type tokenEntry struct {
	p   Principal
	aud []string
}

func (v *tokens) Verify(_ context.Context, raw, audience string) (Principal, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.byRaw[raw]
	if !ok || v.revoked[e.p.Agent] {
		return Principal{}, errors.New("invalid token")
	}
	if !slices.Contains(e.aud, audience) {
		return Principal{}, fmt.Errorf("invalid token: %w", ErrWrongAudience)
	}
	if on, _ := v.agents.Enabled(context.Background(), e.p.Agent); !on {
		return Principal{}, errors.New("agent disabled")
	}
	return e.p, nil
}

// userAud is the audience the fake gives a user's own token.
const userAud = "user-own-token"

func (v *tokens) VerifyUser(_ context.Context, raw string) (Principal, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.byRaw[raw]
	if !ok || e.p.Agent != "" || !slices.Contains(e.aud, userAud) {
		return Principal{}, errors.New("invalid token")
	}
	return e.p, nil
}

func (v *tokens) add(raw string, p Principal, aud ...string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.byRaw[raw] = tokenEntry{p: p, aud: aud}
}

// agents is an AgentControl over a map, honouring "until".
type agents struct {
	mu       sync.Mutex
	clk      *clock
	disabled map[string]time.Time // zero: until enabled
	revokes  map[string]int
	tok      *tokens
}

func (a *agents) Enabled(_ context.Context, agent string) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	until, off := a.disabled[agent]
	if !off {
		return true, nil
	}
	if !until.IsZero() && !a.clk.Now().Before(until) {
		delete(a.disabled, agent)
		return true, nil
	}
	return false, nil
}

func (a *agents) Disable(_ context.Context, agent, _ string, until time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.disabled[agent] = until
	return nil
}

func (a *agents) RevokeAgentTokens(_ context.Context, agent, _ string) error {
	a.mu.Lock()
	a.revokes[agent]++
	a.mu.Unlock()
	return nil
}

// syncBuffer is a log sink the test scans for secrets.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

// env is one proxy with real journal and vault, served on loopback.
type env struct {
	t       testing.TB
	dir     string
	clk     *clock
	journal *audit.Journal
	vault   *vault.Vault
	tok     *tokens
	agents  *agents
	users   *users
	logs    *syncBuffer
	proxy   *Proxy
	srv     *httptest.Server
	audit   audit.Appender
}

// users is a directory: the account id each name signs in as; a name not
// in ids is user_not_found.
type users struct {
	mu  sync.Mutex
	ids map[string]string
}

func (u *users) UserAccount(_ context.Context, user string) (id, refused string, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if id, ok := u.ids[user]; ok {
		return id, "", nil
	}
	return "", "user_not_found", nil
}

// set gives the name user to the account id, or takes it away ("").
func (u *users) set(user, id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if id == "" {
		delete(u.ids, user)
		return
	}
	u.ids[user] = id
}

type envOpts struct {
	tools   []Tool
	risk    RiskConfig
	secrets map[string]string // name -> value, allowed for every tool
	policy  PolicyChecker
	dlp     *dlp.Scanner
	now     time.Time
	// wrap, if set, stands between the proxy and the journal.
	wrap func(audit.Appender) audit.Appender
}

// newEnv opens a journal and a vault in a temp dir, stores the secrets,
// and starts the proxy on a loopback HTTP server.
func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, logs: &syncBuffer{}}
	e.clk = &clock{t: o.now}
	if e.clk.t.IsZero() {
		e.clk.t = time.Date(2026, 11, 25, 10, 0, 0, 0, time.Local) // a Wednesday morning
	}
	j, err := audit.Open(filepath.Join(dir, "audit"), nil)
	if err != nil {
		t.Fatalf("audit.Open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	e.journal, e.audit = j, j
	mk := make([]byte, vault.MasterKeySize)
	if _, err := rand.Read(mk); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, filepath.Join(dir, "vault.db"), mk, vault.Config{}, &vault.Options{Audit: j, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("vault.Open: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	e.vault = v
	var names []string
	for _, tl := range o.tools {
		names = append(names, tl.Name)
	}
	for name, val := range o.secrets {
		typ := vault.TypeAPIKey
		if strings.HasPrefix(val, "{") {
			typ = vault.TypeOpaque
		}
		if _, err := v.Put(ctx, audit.Actor{}, vault.PutRequest{Name: name, Type: typ, Value: []byte(val), AllowedTools: names}); err != nil {
			t.Fatalf("vault Put %s: %v", name, err)
		}
	}
	e.agents = &agents{clk: e.clk, disabled: map[string]time.Time{}, revokes: map[string]int{}}
	e.tok = &tokens{byRaw: map[string]tokenEntry{}, agents: e.agents, revoked: map[string]bool{}}
	e.agents.tok = e.tok
	var app audit.Appender = j
	if o.wrap != nil {
		app = o.wrap(j)
	}
	e.users = &users{ids: map[string]string{"alice": aliceID, "bob": bobID}}
	p, err := New(Options{
		Tools: o.tools, Risk: o.risk, DLP: o.dlp, StateDir: dir,
		Verifier: e.tok, Policy: o.policy, Agents: e.agents, Users: e.users, Secrets: v, Keys: v, Audit: app,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:    e.clk.Now,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	e.proxy = p
	e.srv = httptest.NewServer(p)
	t.Cleanup(e.srv.Close)
	return e
}

// reply is an answer to the agent.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) errorCode() string {
	var eb errorBody
	_ = json.Unmarshal(r.body, &eb)
	return eb.Error
}

// do sends an agent request through the proxy.
func (e *env) do(method, path, token string, body []byte, hdr map[string]string) reply {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatalf("NewRequest: %v", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

// events returns every journal entry so far.
func (e *env) events() []audit.Event {
	e.t.Helper()
	r, err := e.journal.Reader(1)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []audit.Event
	last := e.journal.LastSeq()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range last {
		en, err := r.Next(ctx)
		if err != nil {
			e.t.Fatalf("reading the journal: %v", err)
		}
		out = append(out, en.Event)
	}
	return out
}

// lastEvent returns the newest event of type typ.
func (e *env) lastEvent(typ string) audit.Event {
	e.t.Helper()
	evs := e.events()
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type == typ {
			return evs[i]
		}
	}
	e.t.Fatalf("no %s event in the journal", typ)
	return audit.Event{}
}

// journalBytes returns the raw bytes of the journal's segments. (Not the
// marker beside them: a seq and a raw hash, whose random bytes can spell
// anything, and nothing else.)
func (e *env) journalBytes() []byte {
	e.t.Helper()
	var all []byte
	_ = filepath.Walk(filepath.Join(e.dir, "audit"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.HasPrefix(fi.Name(), "journal-") {
			b, _ := os.ReadFile(p)
			all = append(all, b...)
		}
		return nil
	})
	if len(all) == 0 {
		e.t.Fatal("journal is empty")
	}
	return all
}

// assertNowhere fails if secret appears in the journal, the logs or any of
// the given replies.
func (e *env) assertNowhere(secret string, replies ...reply) {
	e.t.Helper()
	s := []byte(secret)
	if bytes.Contains(e.journalBytes(), s) {
		e.t.Errorf("secret %q found in the audit journal", secret)
	}
	if bytes.Contains(e.logs.Bytes(), s) {
		e.t.Errorf("secret %q found in the logs", secret)
	}
	for _, r := range replies {
		if bytes.Contains(r.body, s) {
			e.t.Errorf("secret %q found in a reply body", secret)
		}
		for k, vs := range r.header {
			for _, v := range vs {
				if strings.Contains(v, secret) {
					e.t.Errorf("secret %q found in reply header %s", secret, k)
				}
			}
		}
	}
}

// upstream is a real HTTP server on loopback that records what it got.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
	body [][]byte
	fn   http.HandlerFunc
}

func newUpstream(t testing.TB, fn http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{fn: fn}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, r)
		u.body = append(u.body, b)
		u.mu.Unlock()
		u.fn(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) count() int { u.mu.Lock(); defer u.mu.Unlock(); return len(u.reqs) }

func (u *upstream) last(t *testing.T) (*http.Request, []byte) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("the upstream got no request")
	}
	return u.reqs[len(u.reqs)-1], u.body[len(u.body)-1]
}

func jsonOK(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}
}

// stdTool is a tool with header auth and the usual routes.
func stdTool(base string) Tool {
	return Tool{
		Name: "tickets", BaseURL: base + "/api", Timeout: 0,
		Auth: ToolAuth{Type: AuthHeader, Name: "X-Api-Key", Secret: "tickets-key"},
		Routes: []Route{
			{Method: "GET", Path: "/tickets/**", Scope: "tickets:read"},
			{Method: "POST", Path: "/tickets", Scope: "tickets:create"},
			{Method: "DELETE", Path: "/tickets/*", Scope: "tickets:delete", Approval: ApprovalRequired},
			{Method: "GET", Path: "/blocked/*", Scope: "tickets:read", DLP: DLPBlock},
			{Method: "GET", Path: "/raw/*", Scope: "tickets:read", DLP: DLPOff, MaxResponseBytes: 1000},
		},
	}
}

const (
	agentToken = "agent-token-3f1d9a"
	// The user tokens of alice and bob, from their logins.
	aliceToken = "user-token-alice-8e21"
	bobToken   = "user-token-bob-44c7"
	// The directory account ids (objectGUID form) of alice and bob.
	aliceID    = "5b0c6f1e-2d7a-4c1b-9e43-0a8f7d2c6b11"
	bobID      = "c3e9a4d2-8f61-4b07-a5d8-71e2f09b3c44"
	toolSecret = "s3cret-upstream-key-7c2e94b1"
)

func allScopes() []string { return []string{"tickets:read", "tickets:create", "tickets:delete"} }

// stdEnv is newEnv with stdTool, its secret and a token for agent "bot"
// acting for user "alice".
func stdEnv(t testing.TB, u *upstream, risk RiskConfig) *env {
	t.Helper()
	e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL)}, risk: risk, secrets: map[string]string{"tickets-key": toolSecret}})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", UserID: aliceID, Groups: []string{"helpdesk"}, Scopes: allScopes(), JTI: "jti-1"}, "tickets")
	e.tok.add(aliceToken, Principal{User: "alice", UserID: aliceID, JTI: "jti-alice"}, userAud)
	e.tok.add(bobToken, Principal{User: "bob", UserID: bobID, JTI: "jti-bob"}, userAud)
	return e
}

// lastCall returns the newest sent call's outcome event (tool.result, or
// tool.dlp when DLP redacted the answer).
func (e *env) lastCall() audit.Event {
	e.t.Helper()
	evs := e.events()
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type == "tool.result" || evs[i].Type == "tool.dlp" {
			return evs[i]
		}
	}
	e.t.Fatalf("no tool.result or tool.dlp event in the journal")
	return audit.Event{}
}
