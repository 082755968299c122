package toolproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	cfgconf "github.com/applianced/applianced/internal/conf"
)

func TestCredentialReachesUpstreamAndNowhereElse(t *testing.T) {
	tests := []struct {
		auth  ToolAuth
		check func(r *http.Request) bool
	}{
		{ToolAuth{Type: AuthBearer, Secret: "k"}, func(r *http.Request) bool {
			return r.Header.Get("Authorization") == "Bearer "+toolSecret
		}},
		{ToolAuth{Type: AuthBasic, Secret: "k"}, func(r *http.Request) bool {
			u, p, ok := r.BasicAuth()
			return ok && u == "svc" && p == toolSecret
		}},
		{ToolAuth{Type: AuthHeader, Name: "X-Api-Key", Secret: "k"}, func(r *http.Request) bool {
			return r.Header.Get("X-Api-Key") == toolSecret && r.Header.Get("Authorization") == ""
		}},
		{ToolAuth{Type: AuthQuery, Name: "api_key", Secret: "k"}, func(r *http.Request) bool {
			return r.URL.Query()["api_key"][0] == toolSecret && len(r.URL.Query()["api_key"]) == 1 && r.Header.Get("Authorization") == ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.auth.Type, func(t *testing.T) {
			secret := toolSecret
			if tt.auth.Type == AuthBasic {
				secret = "svc:" + toolSecret
			}
			u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				// A careless upstream echoes what it got and sets a session.
				http.SetCookie(w, &http.Cookie{Name: "session", Value: toolSecret})
				w.Header().Set("WWW-Authenticate", `Basic realm="`+toolSecret+`"`)
				w.Header().Set("X-Debug-Auth", r.Header.Get("Authorization")+r.Header.Get("X-Api-Key"))
				w.Header().Set("Content-Type", "text/plain")
				fmt.Fprintf(w, "hello %s; you sent %q %q %q", r.URL.Query().Get("q"),
					r.Header.Get("Authorization"), r.Header.Get("X-Api-Key"), r.URL.RawQuery)
			})
			tl := stdTool(u.URL)
			tl.Auth = tt.auth
			e := newEnv(t, envOpts{tools: []Tool{tl}, secrets: map[string]string{"k": secret}})
			e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Scopes: allScopes()}, "tickets")

			// The agent even tries to smuggle its own api_key parameter.
			got := e.do("GET", "/v1/tools/tickets/tickets/1?q=x&api_key=agent-supplied", agentToken, nil, nil)
			if got.status != http.StatusOK {
				t.Fatalf("got status %d %s, want 200", got.status, got.body)
			}
			r, _ := u.last(t)
			if !tt.check(r) {
				t.Errorf("upstream did not get the credential the %s way: headers %v query %v", tt.auth.Type, r.Header, r.URL.RawQuery)
			}
			if got.header.Get("Set-Cookie") != "" || got.header.Get("Www-Authenticate") != "" {
				t.Errorf("got headers %v, want no Set-Cookie or WWW-Authenticate from upstream", got.header)
			}
			if !strings.HasPrefix(string(got.body), "hello x; you sent") {
				t.Errorf("got body %q, want the upstream's answer", got.body)
			}
			e.assertNowhere(toolSecret, got)
			if tt.auth.Type == AuthBasic {
				e.assertNowhere(base64.StdEncoding.EncodeToString([]byte(secret)), got)
			}
			e.assertNowhere(agentToken)
			ev := e.lastCall()
			if ev.Outcome != audit.OutcomeSuccess || ev.Actor.Agent != "bot" || ev.Actor.User != "alice" ||
				ev.Details["upstream_status"] != "200" || ev.Details["path"] != "/tickets/1?api_key=REDACTED&q=REDACTED" {
				t.Errorf("got audit event %+v", ev)
			}
		})
	}
}

func TestAgentHeadersNeverReachUpstream(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, map[string]string{
		"Cookie":                "sid=agent-cookie",
		"Proxy-Authorization":   "Basic Zm9vOmJhcg==",
		"Connection":            "X-Private",
		"X-Private":             "hop",
		"X-Forwarded-For":       "6.6.6.6",
		"X-Forwarded-Port":      "8443",
		"X_Forwarded_For":       "6.6.6.7",
		"X-Original-URL":        "/admin",
		"X-Rewrite-URL":         "/admin",
		"X-Forwarded-Prefix":    "/evil",
		"X-Envoy-Original-Path": "/admin",
		"X-Api-Key":             "agent-chosen-key",
		"X-Trace":               "kept",
	})
	if got.status != http.StatusOK {
		t.Fatalf("got %d %s", got.status, got.body)
	}
	r, _ := u.last(t)
	for _, h := range []string{"Authorization", "Cookie", "Proxy-Authorization", "X-Private", "X-Forwarded-For", "X-Forwarded-Port", "Approval-Id",
		"X_Forwarded_For", "X-Original-Url", "X-Rewrite-Url", "X-Forwarded-Prefix", "X-Envoy-Original-Path"} {
		if v := r.Header.Get(h); v != "" {
			t.Errorf("upstream got %s: %q, want none", h, v)
		}
	}
	if got, want := r.Header.Values("X-Api-Key"), []string{toolSecret}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("upstream got X-Api-Key %q, want only the injected one", got)
	}
	if got := r.Header.Get("X-Trace"); got != "kept" {
		t.Errorf("upstream got X-Trace %q, want an ordinary header kept", got)
	}
}

// rawRequest sends bytes as they are (no client-side cleaning) and returns
// the status code.
func rawRequest(t *testing.T, addr, req string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", req, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestPathEscapesAreRefused(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	for _, path := range []string{
		"/v1/tools/tickets/tickets/../admin",
		"/v1/tools/tickets/tickets/..",
		"/v1/tools/tickets/tickets/%2e%2e/admin",
		"/v1/tools/tickets/tickets/%2E%2e/%2e%2E/etc",
		"/v1/tools/tickets/tickets/.%2e/x",
		"/v1/tools/tickets/tickets/./1",
		"/v1/tools/tickets/tickets/a%2f..%2fadmin",
		"/v1/tools/tickets/tickets/a%2F..%2Fadmin",
		"/v1/tools/tickets/tickets/a%5c..%5cadmin",
		"/v1/tools/tickets/tickets//admin",
		"/v1/tools/tickets//tickets/1",
		"/v1/tools/tickets/tickets/%252e%252e/admin",
		"/v1/tools/tickets/tickets/..;/admin",
		"/v1/tools/tickets/tickets/%00",
		"/v1/tools/tickets/tickets/a%0d%0aX-Injected:%20yes",
		"/v1/tools/tickets/tickets/%zz",
		"/v1/tools/tickets/tickets/" + strings.Repeat("a/", 1100),
		"/v1/tools/tickets/tickets/" + strings.Repeat("a", MaxPathBytes),
		"/v1/tools/../tools/tickets/tickets/1",
		"/v1/tools/Tickets/tickets/1",
	} {
		name := path
		if len(name) > 60 {
			name = name[:60]
		}
		t.Run(name, func(t *testing.T) {
			before := u.count()
			status := rawRequest(t, addr, "GET "+path+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+agentToken+"\r\nConnection: close\r\n\r\n")
			if status < 400 || status > 499 {
				t.Errorf("got status %d, want a 4xx refusal", status)
			}
			if u.count() != before {
				t.Errorf("the upstream was called")
			}
		})
	}
}

func TestAcceptedPathsStayUnderThePrefix(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	tests := []struct{ in, wantEscaped string }{
		{"/v1/tools/tickets/tickets/1", "/api/tickets/1"},
		{"/v1/tools/tickets/tickets/a%20b", "/api/tickets/a%20b"},
		{"/v1/tools/tickets/tickets/caf%C3%A9/x.json", "/api/tickets/caf%C3%A9/x.json"},
		{"/v1/tools/tickets/tickets/a..b", "/api/tickets/a..b"},
		{"/v1/tools/tickets/tickets/dir/", "/api/tickets/dir/"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			status := rawRequest(t, addr, "GET "+tt.in+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+agentToken+"\r\nConnection: close\r\n\r\n")
			if status != http.StatusOK {
				t.Fatalf("got status %d, want 200", status)
			}
			r, _ := u.last(t)
			if got := r.URL.EscapedPath(); got != tt.wantEscaped {
				t.Errorf("upstream got path %q, want %q", got, tt.wantEscaped)
			}
		})
	}
}

func TestBadInputIsRefused(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/hang"):
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		case strings.HasSuffix(r.URL.Path, "/big"):
			w.Header().Set("Content-Type", "application/octet-stream")
			_, _ = w.Write(make([]byte, 5000))
		default:
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{}`)
		}
	})
	// A "tool" that answers garbage instead of HTTP.
	garbage, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { garbage.Close() })
	go func() {
		for {
			c, err := garbage.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "\x00\x01garbage garbage\r\n\r\n")
			c.Close()
		}
	}()
	tl := stdTool(u.URL)
	tl.Timeout = cfgconf.Duration(300 * time.Millisecond)
	tl.MaxRequestBytes = 1000
	bad := Tool{Name: "garbage", BaseURL: "http://" + garbage.Addr().String(), Auth: ToolAuth{Type: AuthBearer, Secret: "tickets-key"},
		Routes: []Route{{Method: "GET", Path: "/**", Scope: "tickets:read"}}}
	e := newEnv(t, envOpts{tools: []Tool{tl, bad}, secrets: map[string]string{"tickets-key": toolSecret}})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Scopes: allScopes()}, "tickets", "garbage", "nosuch")
	e.tok.add("other-aud", Principal{Agent: "bot", Scopes: allScopes()}, "crm")
	e.tok.add("few-scopes", Principal{Agent: "bot", Scopes: []string{"tickets:create"}}, "tickets")

	many := map[string]string{}
	for i := range 80 {
		many[fmt.Sprintf("X-H%d", i)] = "v"
	}
	tests := []struct {
		name, method, path, token string
		body                      []byte
		hdr                       map[string]string
		wantStatus                int
		wantCode                  string
	}{
		{"no token", "GET", "/v1/tools/tickets/tickets/1", "", nil, nil, 401, CodeInvalidToken},
		{"token never issued", "GET", "/v1/tools/tickets/tickets/1", "never-issued", nil, nil, 401, CodeInvalidToken},
		{"token for another tool", "GET", "/v1/tools/tickets/tickets/1", "other-aud", nil, nil, 403, CodeWrongAudience},
		{"unknown tool", "GET", "/v1/tools/nosuch/x", agentToken, nil, nil, 404, CodeUnknownTool},
		{"no route", "PUT", "/v1/tools/tickets/tickets/1", agentToken, nil, nil, 403, CodeNoRoute},
		{"no route for path", "GET", "/v1/tools/tickets/admin/users", agentToken, nil, nil, 403, CodeNoRoute},
		{"scope missing", "GET", "/v1/tools/tickets/tickets/1", "few-scopes", nil, nil, 403, CodeInsufficient},
		{"absurd header count", "GET", "/v1/tools/tickets/tickets/1", agentToken, nil, many, 431, CodeInvalidRequest},
		{"body over limit", "POST", "/v1/tools/tickets/tickets", agentToken, make([]byte, 1001), nil, 413, CodeTooLarge},
		{"upstream hangs", "GET", "/v1/tools/tickets/tickets/hang", agentToken, nil, nil, 504, CodeUpstreamTimeout},
		{"upstream garbage", "GET", "/v1/tools/garbage/x", agentToken, nil, nil, 502, CodeUpstreamError},
		{"response over limit", "GET", "/v1/tools/tickets/raw/big", agentToken, nil, nil, 502, CodeResponseTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := e.do(tt.method, tt.path, tt.token, tt.body, tt.hdr)
			if got.status != tt.wantStatus || got.errorCode() != tt.wantCode {
				t.Errorf("got %d %s, want %d %s", got.status, got.body, tt.wantStatus, tt.wantCode)
			}
		})
	}
	// Every refusal is in the journal, none with a secret.
	n := 0
	for _, ev := range e.events() {
		if ev.Outcome != audit.OutcomeSuccess && (strings.HasPrefix(ev.Type, "tool.") || ev.Type == "agent.blocked") {
			n++
		}
	}
	if n < len(tests) {
		t.Errorf("got %d refusal events, want at least %d", n, len(tests))
	}
	e.assertNowhere(toolSecret)
}

func TestCRLFInHeaderIsRefused(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	status := rawRequest(t, addr, "GET /v1/tools/tickets/tickets/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+agentToken+"\r\nX-A: a\rX-Injected: b\r\nConnection: close\r\n\r\n")
	if status != http.StatusBadRequest {
		t.Errorf("got %d, want 400", status)
	}
	if u.count() != 0 {
		t.Errorf("the upstream was called")
	}
}

func TestAuditFailureFailsTheCall(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	e.journal.Close()
	got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil)
	if got.status != http.StatusServiceUnavailable || got.errorCode() != CodeAuditUnavailable {
		t.Errorf("got %d %s, want 503 %s", got.status, got.body, CodeAuditUnavailable)
	}
	if n := u.count(); n != 0 {
		t.Errorf("the upstream got %d requests, want 0: the decision is recorded before the call goes out", n)
	}
}

func TestDisableStopsAccessAtTheNextRequest(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	if got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil); got.status != 200 {
		t.Fatalf("got %d, want 200 before the disable", got.status)
	}
	// Same client, same keep-alive connection, same (still unexpired) token.
	if err := e.agents.Disable(t.Context(), "bot", "kill switch", time.Time{}); err != nil {
		t.Fatal(err)
	}
	got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil)
	if got.status != http.StatusUnauthorized && got.status != http.StatusForbidden {
		t.Errorf("got %d %s, want the call refused", got.status, got.body)
	}
	if u.count() != 1 {
		t.Errorf("upstream got %d calls, want 1", u.count())
	}
}

func TestPolicyDenies(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL)}, secrets: map[string]string{"tickets-key": toolSecret},
		policy: policyFunc(func(r PolicyRequest) (bool, string) {
			return r.Scope != "tickets:create", "creates are off today"
		})})
	e.tok.add(agentToken, Principal{Agent: "bot", Scopes: allScopes()}, "tickets")
	if got := e.do("POST", "/v1/tools/tickets/tickets", agentToken, []byte(`{}`), nil); got.status != 403 || got.errorCode() != CodeAccessDenied {
		t.Errorf("got %d %s, want 403 access_denied", got.status, got.body)
	}
	if got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil); got.status != 200 {
		t.Errorf("got %d, want 200 for a call the policy allows", got.status)
	}
	if ev := e.lastEvent("tool.deny"); ev.Reason != "creates are off today" {
		t.Errorf("got reason %q", ev.Reason)
	}
}

type policyFunc func(PolicyRequest) (bool, string)

func (f policyFunc) Allow(_ context.Context, r PolicyRequest) (bool, string, error) {
	ok, why := f(r)
	return ok, why, nil
}

// A call that says its method or path is another one than the route was
// matched on (X-HTTP-Method-Override, X-Original-URL, _method, ...) is
// refused, and the upstream never sees it: a read scope must not reach a
// DELETE route or one that needs approval.
func TestMethodAndPathOverridesAreRefused(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	cases := []struct {
		name, path string
		headers    map[string]string
	}{
		{"X-HTTP-Method-Override", "/v1/tools/tickets/tickets/1", map[string]string{"X-HTTP-Method-Override": "DELETE"}},
		{"X-HTTP-Method", "/v1/tools/tickets/tickets/1", map[string]string{"X-HTTP-Method": "DELETE"}},
		{"X-Method-Override", "/v1/tools/tickets/tickets/1", map[string]string{"X-Method-Override": "DELETE"}},
		{"X_HTTP_Method_Override", "/v1/tools/tickets/tickets/1", map[string]string{"X_HTTP_Method_Override": "DELETE"}},
		{"_method", "/v1/tools/tickets/tickets/1?_method=DELETE", nil},
		{".method", "/v1/tools/tickets/tickets/1?.method=DELETE", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := u.count()
			got := e.do("GET", tc.path, agentToken, nil, tc.headers)
			if got.status != http.StatusBadRequest {
				t.Fatalf("got %d %s, want 400", got.status, got.body)
			}
			if !strings.Contains(strings.ToLower(string(got.body)), strings.ToLower(tc.name)) {
				t.Errorf("the error does not name %s: %s", tc.name, got.body)
			}
			if u.count() != before {
				t.Error("the upstream was called")
			}
		})
	}
}

// A _method field in a form, multipart or JSON body is refused like the
// header: a POST on a create route must not reach the tool as a DELETE.
func TestMethodOverrideInTheBodyIsRefused(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	_ = mw.WriteField("title", "x")
	_ = mw.WriteField("_method", "DELETE")
	mw.Close()
	for _, c := range []struct{ name, ct, body string }{
		{"form", "application/x-www-form-urlencoded", "title=x&_method=DELETE"},
		{"json", "application/json", `{"title": "x", "_method": "DELETE"}`},
		{"multipart", mw.FormDataContentType(), mp.String()},
		{"form, name encoded", "application/x-www-form-urlencoded", "%5Fmethod=DELETE"},
		{"form, another pair malformed", "application/x-www-form-urlencoded", "a=50%&_method=DELETE"},
		{"json, name escaped", "application/json", `{"\u005fmethod": "DELETE"}`},
		{"no content type", "", "_method=DELETE"},
		{"two types", "application/x-www-form-urlencoded, text/plain", "_method=DELETE"},
		{"name as PHP reads it", "application/x-www-form-urlencoded", ".method=DELETE"},
		{"multipart, odd parameter", "multipart/form-data; boundary=XYZ; charset", "--XYZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XYZ--\r\n"},
		{"multipart/mixed", "multipart/mixed; boundary=XYZ", "--XYZ\r\nContent-Disposition: attachment; name=\"_method\"\r\n\r\nDELETE\r\n--XYZ--\r\n"},
		{"text/json", "text/json", `{"_method": "DELETE"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := u.count()
			got := e.do("POST", "/v1/tools/tickets/tickets", agentToken, []byte(c.body), map[string]string{"Content-Type": c.ct})
			if got.status != http.StatusBadRequest || !bytes.Contains(got.body, []byte("_method")) {
				t.Fatalf("got %d %s, want 400 naming _method", got.status, got.body)
			}
			if u.count() != before {
				t.Error("the upstream was called")
			}
		})
	}
	// A body that only mentions the word is not refused, nor one that a
	// form parser cannot read.
	for _, c := range []struct{ ct, body string }{
		{"application/json", `{"title": "what _method means"}`},
		{"text/plain", "_method=DELETE is what some frameworks read"},
		{"application/octet-stream", "\x00\x01&_method=DELETE"},
		{"application/x-www-form-urlencoded", "comment=rename the _method param; thanks"},
		{"application/x-www-form-urlencoded", "comment=_method at 50%"},
	} {
		if got := e.do("POST", "/v1/tools/tickets/tickets", agentToken, []byte(c.body), map[string]string{"Content-Type": c.ct}); got.status != http.StatusOK {
			t.Fatalf("an ordinary body %q: got %d %s", c.body, got.status, got.body)
		}
	}
}

// FuzzBodyOverridesMethod: any body and content type is read without a
// panic, and a form body that parses is refused exactly when it has a field
// frameworks read as _method.
func FuzzBodyOverridesMethod(f *testing.F) {
	f.Add("application/x-www-form-urlencoded", "title=x&_method=DELETE")
	f.Add("application/json", `{"_method": "PUT", "a": [1, 2]}`)
	f.Add("multipart/form-data; boundary=XX", "--XX\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XX--\r\n")
	f.Add("text/plain", "_method=DELETE")
	f.Fuzz(func(t *testing.T, ct, body string) {
		got := bodyOverridesMethod(ct, []byte(body))
		if ct == "application/x-www-form-urlencoded" {
			if q, err := url.ParseQuery(body); err == nil && got != (methodField(q) != "") {
				t.Fatalf("form %q: got %v, want %v", body, got, methodField(q) != "")
			}
		}
	})
}
