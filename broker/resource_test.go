package broker

import (
	"context"
	"errors"
	"net/url"
	"testing"

	"github.com/applianced/applianced/audit"
)

// wantDenied checks the newest token.deny event records code.
func wantDenied(t *testing.T, e *env, code string) {
	t.Helper()
	ev, ok := e.lastEvent("token.deny")
	if !ok || ev.Outcome != audit.OutcomeDenied || ev.Details["error"] != code {
		t.Fatalf("audit: got %+v (found %v), want a token.deny with error %s", ev, ok, code)
	}
}

// TestResourceNamesOneTool: resource, by URL or bare name, gives a token
// whose only audience is that tool's; none gives the general audience.
func TestResourceNamesOneTool(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	ctx := context.Background()
	cases := []struct {
		name, resource, wantAud string
	}{
		{"bare name", "tickets", testIssuer + "/v1/tools/tickets"},
		{"tool URL", testIssuer + "/v1/tools/wiki", testIssuer + "/v1/tools/wiki"},
		{"no resource", "", testIssuer + "/v1/tools"},
		{"the general audience", testIssuer + "/v1/tools", testIssuer + "/v1/tools"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := url.Values{"grant_type": {GrantClientCredentials}}
			if tc.resource != "" {
				f.Set("resource", tc.resource)
			}
			a := e.socketPost("/oauth2/token", f)
			if a.status != 200 {
				t.Fatalf("token: got %d %v", a.status, a.body)
			}
			p, err := e.b.Verify(ctx, a.str("access_token"), tc.wantAud)
			if err != nil {
				t.Fatalf("Verify for %s: %v", tc.wantAud, err)
			}
			if len(p.Audience) != 1 || p.Audience[0] != tc.wantAud {
				t.Fatalf("aud: got %v, want exactly [%s]", p.Audience, tc.wantAud)
			}
			if ev, _ := e.lastEvent("token.issue"); ev.Details["aud"] != tc.wantAud {
				t.Fatalf("audit aud: got %q, want %q", ev.Details["aud"], tc.wantAud)
			}
			in := e.socketPost("/oauth2/introspect", url.Values{"token": {a.str("access_token")}})
			if in.body["active"] != true {
				t.Fatalf("introspection: got %v, want active", in.body)
			}
		})
	}
}

// TestToolTokenOnlyForItsTool: a token for one tool does not verify for
// another tool nor for the general audience.
func TestToolTokenOnlyForItsTool(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	a := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantClientCredentials}, "resource": {"tickets"}})
	if a.status != 200 {
		t.Fatalf("token: got %d %v", a.status, a.body)
	}
	for _, aud := range []string{e.b.ToolResource("wiki"), e.b.ToolAudience()} {
		if _, err := e.b.Verify(context.Background(), a.str("access_token"), aud); !errors.Is(err, ErrAudience) {
			t.Errorf("Verify for %s: got %v, want ErrAudience", aud, err)
		}
	}
}

// TestResourceUnknownTool: a resource that is not a configured tool is
// invalid_target, audited.
func TestResourceUnknownTool(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	for _, r := range []string{"crm", testIssuer + "/v1/tools/crm", "https://elsewhere.test/v1/tools/tickets",
		testIssuer + "/v1/tools/tickets/x", "../tickets", "TICKETS"} {
		t.Run(r, func(t *testing.T) {
			a := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantClientCredentials}, "resource": {r}})
			wantOAuthError(t, a, 400, "invalid_target")
			wantDenied(t, e, "invalid_target")
		})
	}
}

// TestMoreThanOneResource: a token names one tool; several targets in a
// request are invalid_target, audited.
func TestMoreThanOneResource(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	cases := []struct {
		name string
		form url.Values
	}{
		{"two tools", url.Values{"grant_type": {GrantClientCredentials}, "resource": {"tickets", "wiki"}}},
		{"the same tool twice", url.Values{"grant_type": {GrantClientCredentials}, "resource": {"tickets", "tickets"}}},
		{"exchange with two audiences", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {"a.b.c"},
			"subject_token_type": {tokenTypeAccess}, "audience": {"tickets", "wiki"}}},
		{"exchange with resource and audience apart", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {"a.b.c"},
			"subject_token_type": {tokenTypeAccess}, "resource": {"tickets"}, "audience": {"wiki"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantOAuthError(t, e.socketPost("/oauth2/token", tc.form), 400, "invalid_target")
			wantDenied(t, e, "invalid_target")
		})
	}
}

// TestTargetWhereNotDefined: audience belongs to token exchange, and a
// refresh gives user tokens, never tool tokens.
func TestTargetWhereNotDefined(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	e.serveHTTPS()
	a := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantClientCredentials}, "audience": {"tickets"}})
	wantOAuthError(t, a, 400, "invalid_request")
	lg := e.login("alice", "alice-pw")
	if lg.status != 200 {
		t.Fatalf("login: got %d %v", lg.status, lg.body)
	}
	r := e.httpsPost("/oauth2/token", url.Values{"grant_type": {GrantRefreshToken}, "refresh_token": {lg.str("refresh_token")}, "resource": {"tickets"}})
	wantOAuthError(t, r, 400, "invalid_target")
}

// TestExchangeForOneTool: token exchange with resource (RFC 8707) or
// audience (RFC 8693) gives the tool's audience and keeps act.
func TestExchangeForOneTool(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	e.serveHTTPS()
	ctx := context.Background()
	cases := []struct{ param, value string }{
		{"resource", "tickets"},
		{"resource", testIssuer + "/v1/tools/tickets"},
		{"audience", "tickets"},
		{"audience", testIssuer + "/v1/tools/tickets"},
	}
	for _, tc := range cases {
		t.Run(tc.param+"="+tc.value, func(t *testing.T) {
			lg := e.login("alice", "alice-pw")
			if lg.status != 200 {
				t.Fatalf("login: got %d %v", lg.status, lg.body)
			}
			ex := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantTokenExchange}, "subject_token": {lg.str("access_token")},
				"subject_token_type": {tokenTypeAccess}, tc.param: {tc.value}})
			if ex.status != 200 {
				t.Fatalf("exchange: got %d %v", ex.status, ex.body)
			}
			p, err := e.b.Verify(ctx, ex.str("access_token"), e.b.ToolResource("tickets"))
			if err != nil {
				t.Fatal(err)
			}
			if p.User != "alice" || p.Agent != "bot" || len(p.Audience) != 1 {
				t.Fatalf("principal: got %+v, want alice acted for by bot with one audience", p)
			}
			in := e.socketPost("/oauth2/introspect", url.Values{"token": {ex.str("access_token")}})
			if act, _ := in.body["act"].(map[string]any); in.body["active"] != true || act["sub"] != "bot" {
				t.Fatalf("introspection: got %v", in.body)
			}
		})
	}
}

// TestReloadChangesTools: the tool names follow the config on reload.
func TestReloadChangesTools(t *testing.T) {
	e := newEnv(t, nil)
	e.serveSocket()
	cfg := e.opts.Config
	cfg.Tools = []string{"crm"}
	if err := e.b.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if a := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantClientCredentials}, "resource": {"crm"}}); a.status != 200 {
		t.Fatalf("new tool: got %d %v", a.status, a.body)
	}
	a := e.socketPost("/oauth2/token", url.Values{"grant_type": {GrantClientCredentials}, "resource": {"tickets"}})
	wantOAuthError(t, a, 400, "invalid_target")
}
