package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/conf"
	"github.com/applianced/applianced/vault"
)

// testClock is an injectable clock; zero offset means real time.
type testClock struct {
	mu    sync.Mutex
	fixed time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fixed.IsZero() {
		return time.Now()
	}
	return c.fixed
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	c.fixed = t
	c.mu.Unlock()
}

// dirAuth is the users of the unit tests' Authenticator. The end-to-end
// test uses the real directory instead.
type staticAuth map[string]struct {
	password string
	id       Identity
}

func (a staticAuth) Login(ctx context.Context, username, password, source string) (Identity, bool, error) {
	u, ok := a[username]
	if !ok || u.password != password {
		return Identity{}, false, nil
	}
	return u.id, true, nil
}

type env struct {
	t      testing.TB
	b      *Broker
	j      *audit.Journal
	v      *vault.Vault
	store  Store
	clock  *testClock
	hasher *audit.Hasher
	opts   Options
	dir    string

	remoteKey ed25519.PrivateKey // agent "remote"'s private_key_jwt key
	https     *httptest.Server   // TLS on loopback
	sock      string             // agent socket path
	sockHC    *http.Client       // client on the agent socket
}

const testIssuer = "https://appliance.test:8443"

// testConfig is the config the suite runs with. Agent "bot" is this
// process's uid on the agent socket.
func testConfig(t testing.TB, dir string, pubFile string) Config {
	t.Helper()
	uid := os.Getuid()
	secretHash, err := HashClientSecret("s3cret-for-tests")
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Tokens: TokenConfig{TTL: conf.Duration(5 * time.Minute), MaxTTL: conf.Duration(time.Hour)},
		Roles: []Role{
			{Name: "support", Scopes: []string{"tickets:read", "tickets:create", "tickets:delete"}},
			{Name: "reader", Scopes: []string{"tickets:read"}, TTL: conf.Duration(2 * time.Minute)},
			{Name: "chat-user", Scopes: []string{"tickets:read", "tickets:create", "wiki:read"}},
		},
		Agents: []Agent{
			{Name: "bot", Roles: []string{"support"}, UnixUID: &uid, ActForGroups: []string{"helpdesk"}},
			{Name: "remote", Roles: []string{"reader"}, PublicKeyFile: pubFile},
			{Name: "legacy", Roles: []string{"reader"}, ClientSecretHash: secretHash},
		},
		Tools: []string{"tickets", "wiki"},
		Policies: []Policy{
			{Name: "office-hours-deletes", Agents: []string{"bot"}, Scopes: []string{"tickets:delete"},
				Hours: "Mon-Fri 08:00-18:00", Effect: "allow"},
		},
	}
}

func newEnv(t testing.TB, mutate func(*Config)) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	e := &env{t: t, clock: &testClock{}, dir: dir}
	j, err := audit.Open(filepath.Join(dir, "audit"), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.j = j
	t.Cleanup(func() { j.Close() })
	master := make([]byte, vault.MasterKeySize)
	if _, err := io.ReadFull(rand.Reader, master); err != nil {
		t.Fatal(err)
	}
	v, err := vault.Open(ctx, filepath.Join(dir, "vault.db"), master, vault.Config{}, &vault.Options{Audit: j, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	e.v = v
	t.Cleanup(func() { v.Close() })
	if e.hasher, err = audit.NewHasher(ctx, v); err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e.remoteKey = priv
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, "remote.pem")
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, dir, pubFile)
	if mutate != nil {
		mutate(&cfg)
	}
	st, err := OpenStore(filepath.Join(dir, "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	t.Cleanup(func() { st.Close() })
	e.opts = Options{
		Config: cfg, Issuer: testIssuer, Keys: v, Store: st, Audit: j, Hasher: e.hasher, Now: e.clock.Now,
		Location: time.UTC,
		Auth: staticAuth{
			"alice": {"alice-pw", Identity{Username: "alice", ID: "0a11ce00-0000-4000-8000-000000000001", Groups: []string{"ai-users", "helpdesk"}, Roles: []string{"chat-user"}}},
			"bob":   {"bob-pw", Identity{Username: "bob", ID: "0b0b0000-0000-4000-8000-000000000002", Groups: []string{"ai-users", "finance"}, Roles: []string{"chat-user"}}},
		},
	}
	if e.b, err = New(ctx, e.opts); err != nil {
		t.Fatal(err)
	}
	return e
}

// serveHTTPS starts the handler on loopback TLS.
func (e *env) serveHTTPS() {
	e.t.Helper()
	srv := httptest.NewUnstartedServer(e.b.Handler())
	srv.StartTLS()
	e.t.Cleanup(srv.Close)
	e.https = srv
}

// serveSocket starts the handler on a Unix socket with peer credentials,
// in a directory other users may enter.
func (e *env) serveSocket() {
	e.t.Helper()
	dir, err := os.MkdirTemp("", "broker-sock-")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	e.sock = filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", e.sock)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := os.Chmod(e.sock, 0o777); err != nil {
		e.t.Fatal(err)
	}
	srv := &http.Server{Handler: e.b.Handler(), ConnContext: ConnContext, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	e.t.Cleanup(func() { srv.Close() })
	e.sockHC = unixClient(e.sock)
}

func unixClient(path string) *http.Client {
	d := net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", path) },
		MaxIdleConnsPerHost: 64,
	}}
}

// answer is a decoded JSON answer.
type answer struct {
	status int
	body   map[string]any
}

func (a answer) str(k string) string { s, _ := a.body[k].(string); return s }

// post sends a form to path on hc at base.
func (e *env) post(hc *http.Client, base, path string, form url.Values, hdr map[string]string) answer {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return e.do(hc, req)
}

func (e *env) do(hc *http.Client, req *http.Request) answer {
	e.t.Helper()
	resp, err := hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var a answer
	a.status = resp.StatusCode
	data, _ := io.ReadAll(resp.Body)
	if len(data) > 0 {
		if err := json.Unmarshal(data, &a.body); err != nil {
			e.t.Fatalf("answer is not JSON (status %d): %q", resp.StatusCode, data)
		}
	}
	return a
}

// socketPost posts to the agent socket.
func (e *env) socketPost(path string, form url.Values) answer {
	e.t.Helper()
	return e.post(e.sockHC, "http://agent", path, form, nil)
}

// httpsPost posts to the HTTPS listener.
func (e *env) httpsPost(path string, form url.Values) answer {
	e.t.Helper()
	return e.post(e.https.Client(), e.https.URL, path, form, nil)
}

// assertion makes a private_key_jwt assertion for agent "remote".
func (e *env) assertion(aud string, exp time.Time, jti string) string {
	e.t.Helper()
	return signAssertion(e.t, e.remoteKey, "remote", aud, exp, jti, e.clock.Now())
}

func signAssertion(t testing.TB, key ed25519.PrivateKey, agent, aud string, exp time.Time, jti string, now time.Time) string {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(jwt.Claims{Issuer: agent, Subject: agent, Audience: jwt.Audience{aud},
		Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(now), ID: jti}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// events returns every journal entry so far.
func (e *env) events() []audit.Event {
	e.t.Helper()
	r, err := e.j.Reader(1)
	if err != nil {
		e.t.Fatal(err)
	}
	defer r.Close()
	var out []audit.Event
	for range e.j.LastSeq() {
		ent, err := r.Next(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, ent.Event)
	}
	return out
}

// lastEvent returns the newest journal event of type typ.
func (e *env) lastEvent(typ string) (audit.Event, bool) {
	e.t.Helper()
	evs := e.events()
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type == typ {
			return evs[i], true
		}
	}
	return audit.Event{}, false
}

// agentToken gets a client_credentials token for "bot" on the socket.
func (e *env) agentToken(scope string) answer {
	e.t.Helper()
	f := url.Values{"grant_type": {"client_credentials"}}
	if scope != "" {
		f.Set("scope", scope)
	}
	return e.socketPost("/oauth2/token", f)
}

func (e *env) login(user, pw string) answer {
	e.t.Helper()
	return e.httpsPost("/v1/login", url.Values{"username": {user}, "password": {pw}})
}

func wantOAuthError(t *testing.T, a answer, status int, code string) {
	t.Helper()
	if a.status != status || a.str("error") != code {
		t.Fatalf("got %d %q (%q), want %d %q", a.status, a.str("error"), a.str("error_description"), status, code)
	}
}

func ed25519GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

func (a staticAuth) Recheck(ctx context.Context, acct Account, source string, freshGroups bool) (Identity, string, error) {
	u, ok := a[acct.Name]
	if !ok || u.id.ID != acct.ID {
		return Identity{}, "user_not_found", nil
	}
	return u.id, "", nil
}
