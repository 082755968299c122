package toolproxy

import (
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	cfgconf "github.com/applianced/applianced/internal/conf"
)

func countEvents(e *env, typ string) int {
	n := 0
	for _, ev := range e.events() {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

func TestRiskActionsTriggerAndExpire(t *testing.T) {
	const path = "/v1/tools/tickets/tickets/1"
	t.Run("requests_per_minute step_up", func(t *testing.T) {
		u := newUpstream(t, jsonOK(`{}`))
		e := stdEnv(t, u, RiskConfig{RequestsPerMinute: 2, OnExceed: ActionStepUp})
		e.clk.t = e.clk.t.Truncate(time.Minute)
		for i := range 2 {
			if got := e.do("GET", path, agentToken, nil, nil); got.status != 200 {
				t.Fatalf("call %d: got %d, want 200", i, got.status)
			}
		}
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 403 || got.errorCode() != CodeApprovalRequired {
			t.Errorf("third call: got %d %s, want 403 approval_required", got.status, got.body)
		}
		e.clk.Add(time.Minute)
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 200 {
			t.Errorf("next minute: got %d %s, want 200", got.status, got.body)
		}
	})
	t.Run("requests_per_minute block", func(t *testing.T) {
		u := newUpstream(t, jsonOK(`{}`))
		e := stdEnv(t, u, RiskConfig{RequestsPerMinute: 1, OnExceed: ActionBlock, BlockFor: cfgconf.Duration(10 * time.Minute)})
		e.clk.t = e.clk.t.Truncate(time.Minute)
		e.do("GET", path, agentToken, nil, nil)
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 403 || got.errorCode() != CodeAgentBlocked {
			t.Errorf("got %d %s, want 403 agent_blocked", got.status, got.body)
		}
		if e.agents.revokes["bot"] != 1 {
			t.Errorf("got %d revocations, want the agent's tokens revoked once", e.agents.revokes["bot"])
		}
		if ev := e.lastEvent("agent.blocked"); ev.Severity != audit.SeverityHigh {
			t.Errorf("got %+v, want a high-severity agent.blocked event", ev)
		}
		e.clk.Add(5 * time.Minute) // a new minute, but still blocked
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 401 && got.status != 403 {
			t.Errorf("during the block: got %d, want a refusal", got.status)
		}
		e.clk.Add(6 * time.Minute)
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 200 {
			t.Errorf("after the block: got %d %s, want 200", got.status, got.body)
		}
		if u.count() != 2 {
			t.Errorf("upstream got %d calls, want 2", u.count())
		}
	})
	t.Run("requests_per_minute alert", func(t *testing.T) {
		u := newUpstream(t, jsonOK(`{}`))
		e := stdEnv(t, u, RiskConfig{RequestsPerMinute: 1, OnExceed: ActionAlert})
		e.clk.t = e.clk.t.Truncate(time.Minute)
		e.do("GET", path, agentToken, nil, nil)
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 200 {
			t.Errorf("got %d, want the call through with an alert", got.status)
		}
		ev := e.lastEvent("agent.risk")
		if ev.Severity != audit.SeverityHigh || ev.Details["rule"] != "requests_per_minute" {
			t.Errorf("got %+v, want a high-severity requests_per_minute alert", ev)
		}
		// Both the agent's and the user's windows crossed the limit.
		if n := countEvents(e, "agent.risk"); n != 2 {
			t.Errorf("got %d alerts, want 2 (agent and user)", n)
		}
		e.clk.Add(time.Minute)
		e.do("GET", path, agentToken, nil, nil)
		if n := countEvents(e, "agent.risk"); n != 2 {
			t.Errorf("got %d alerts after the window, want still 2", n)
		}
	})
	t.Run("response_bytes_per_hour", func(t *testing.T) {
		u := newUpstream(t, jsonOK(`{"data": "`+strings.Repeat("x", 200)+`"}`))
		e := stdEnv(t, u, RiskConfig{ResponseBytesPerHour: 100})
		e.clk.t = e.clk.t.Truncate(time.Hour)
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 200 {
			t.Fatalf("got %d", got.status)
		}
		if got := e.do("GET", path, agentToken, nil, nil); got.errorCode() != CodeApprovalRequired {
			t.Errorf("got %d %s, want a step-up once the hour's bytes are spent", got.status, got.body)
		}
		e.clk.Add(time.Hour)
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 200 {
			t.Errorf("next hour: got %d", got.status)
		}
	})
	t.Run("off_hours", func(t *testing.T) {
		u := newUpstream(t, jsonOK(`{}`))
		e := stdEnv(t, u, RiskConfig{BusinessHours: "Mon-Fri 08:00-18:00", OnOffHours: ActionStepUp})
		e.clk.t = time.Date(2026, 11, 25, 10, 0, 0, 0, time.Local) // Wednesday 10:00
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 200 {
			t.Errorf("in hours: got %d", got.status)
		}
		e.clk.t = time.Date(2026, 11, 25, 22, 0, 0, 0, time.Local)
		if got := e.do("GET", path, agentToken, nil, nil); got.errorCode() != CodeApprovalRequired {
			t.Errorf("at 22:00: got %d %s, want a step-up", got.status, got.body)
		}
		e.clk.t = time.Date(2026, 11, 28, 10, 0, 0, 0, time.Local) // Saturday
		if got := e.do("GET", path, agentToken, nil, nil); got.errorCode() != CodeApprovalRequired {
			t.Errorf("on Saturday: got %d %s, want a step-up", got.status, got.body)
		}
	})
	t.Run("new_source", func(t *testing.T) {
		u := newUpstream(t, jsonOK(`{}`))
		e := stdEnv(t, u, RiskConfig{OnNewSource: ActionStepUp})
		id := ""
		if got := e.do("GET", path, agentToken, nil, nil); got.errorCode() != CodeApprovalRequired {
			t.Fatalf("first call from 127.0.0.1: got %d %s, want a step-up", got.status, got.body)
		} else {
			id = e.lastEvent("approval.request").Details["approval_id"]
		}
		if _, err := e.proxy.Decide(t.Context(), id, true, adminActor()); err != nil {
			t.Fatal(err)
		}
		if got := e.do("GET", path, agentToken, nil, map[string]string{ApprovalHeader: id}); got.status != 200 {
			t.Fatalf("approved call: got %d %s", got.status, got.body)
		}
		if got := e.do("GET", path, agentToken, nil, nil); got.status != 200 {
			t.Errorf("known source: got %d %s, want 200", got.status, got.body)
		}
	})
}

func TestRiskConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     RiskConfig
		wantKey string
	}{
		{"ok", RiskConfig{RequestsPerMinute: 5, OnExceed: ActionBlock, BusinessHours: "Mon-Fri 08:00-18:00"}, ""},
		{"bad action", RiskConfig{OnExceed: "panic"}, "on_exceed"},
		{"bad new source action", RiskConfig{OnNewSource: "ignore"}, "on_new_source"},
		{"bad hours", RiskConfig{BusinessHours: "weekdays"}, "business_hours"},
		{"bad days", RiskConfig{BusinessHours: "Mon-Fry 08:00-18:00"}, "business_hours"},
		{"negative", RiskConfig{RequestsPerMinute: -1}, "requests_per_minute"},
		{"approval ttl", RiskConfig{ApprovalTTL: cfgconf.Duration(48 * time.Hour)}, "approval_ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := tt.cfg.Validate()
			if tt.wantKey == "" && len(errs) != 0 || tt.wantKey != "" && (len(errs) != 1 || errs[0].Key != tt.wantKey) {
				t.Errorf("got %v, want key %q", errs, tt.wantKey)
			}
		})
	}
}

func TestHours(t *testing.T) {
	h, err := parseHours("Mon-Fri 22:00-06:00")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		at   time.Time
		want bool
	}{
		{time.Date(2026, 11, 25, 23, 0, 0, 0, time.Local), true},  // Wed night
		{time.Date(2026, 11, 26, 5, 59, 0, 0, time.Local), true},  // Thu early, started Wed
		{time.Date(2026, 11, 26, 6, 0, 0, 0, time.Local), false},  // Thu 06:00
		{time.Date(2026, 11, 29, 23, 0, 0, 0, time.Local), false}, // Sunday night
		{time.Date(2026, 11, 30, 1, 0, 0, 0, time.Local), false},  // Monday early, started Sunday
	}
	for _, tt := range tests {
		if got := h.contains(tt.at); got != tt.want {
			t.Errorf("contains(%s) = %v, want %v", tt.at.Format("Mon 15:04"), got, tt.want)
		}
	}
}

func TestToolValidate(t *testing.T) {
	good := stdTool("http://127.0.0.1:1")
	tests := []struct {
		name    string
		mut     func(*Tool)
		wantKey string
	}{
		{"ok", func(*Tool) {}, ""},
		{"name", func(tl *Tool) { tl.Name = "Tickets!" }, "name"},
		{"base_url", func(tl *Tool) { tl.BaseURL = "ftp://x" }, "base_url"},
		{"base_url query", func(tl *Tool) { tl.BaseURL = "http://x/?a=1" }, "base_url"},
		{"auth type", func(tl *Tool) { tl.Auth.Type = "magic" }, "auth.type"},
		{"auth header managed", func(tl *Tool) { tl.Auth.Name = "Host" }, "auth.name"},
		{"auth secret", func(tl *Tool) { tl.Auth.Secret = "" }, "auth.secret"},
		{"no routes", func(tl *Tool) { tl.Routes = nil }, "route"},
		{"route method", func(tl *Tool) { tl.Routes[0].Method = "get" }, "route[0].method"},
		{"route path", func(tl *Tool) { tl.Routes[1].Path = "tickets" }, "route[1].path"},
		{"route dot path", func(tl *Tool) { tl.Routes[1].Path = "/a/../b" }, "route[1].path"},
		{"route glob", func(tl *Tool) { tl.Routes[1].Path = "/a/**/b" }, "route[1].path"},
		{"route scope", func(tl *Tool) { tl.Routes[2].Scope = "" }, "route[2].scope"},
		{"route approval", func(tl *Tool) { tl.Routes[2].Approval = "maybe" }, "route[2].approval"},
		{"route dlp", func(tl *Tool) { tl.Routes[0].DLP = "mask" }, "route[0].dlp"},
		{"ca_file missing", func(tl *Tool) { tl.CAFile = "/nonexistent/corp-ca.pem" }, "ca_file"},
		{"ca_file relative", func(tl *Tool) { tl.CAFile = "corp-ca.pem" }, "ca_file"},
		{"route method misspelt", func(tl *Tool) { tl.Routes[2].Method = "DELET" }, "route[2].method"},
		// A route an earlier one covers would never apply: here the DELETE
		// that needs approval, behind a catch-all.
		{"route behind a catch-all", func(tl *Tool) {
			tl.Routes = append([]Route{{Method: "*", Path: "/**", Scope: "tickets:read"}}, tl.Routes[2])
		}, "route[1]"},
		{"route behind one segment", func(tl *Tool) {
			tl.Routes = []Route{{Method: "DELETE", Path: "/tickets/*", Scope: "tickets:read"}, {Method: "DELETE", Path: "/tickets/7", Scope: "tickets:delete"}}
		}, "route[1]"},
		{"route twice", func(tl *Tool) { tl.Routes = append(tl.Routes, tl.Routes[1]) }, "route[5]"},
		{"specific route first", func(tl *Tool) {
			tl.Routes = []Route{{Method: "DELETE", Path: "/tickets/7", Scope: "tickets:delete"}, {Method: "*", Path: "/**", Scope: "tickets:read"}}
		}, ""},
		{"other method", func(tl *Tool) {
			tl.Routes = []Route{{Method: "GET", Path: "/**", Scope: "tickets:read"}, {Method: "DELETE", Path: "/tickets/*", Scope: "tickets:delete"}}
		}, ""},
		{"star does not cover an empty segment", func(tl *Tool) {
			tl.Routes = []Route{{Method: "GET", Path: "/tickets/*", Scope: "tickets:read"}, {Method: "GET", Path: "/tickets/", Scope: "tickets:read"}}
		}, ""},
		{"longer path not covered", func(tl *Tool) {
			tl.Routes = []Route{{Method: "GET", Path: "/tickets/*", Scope: "tickets:read"}, {Method: "GET", Path: "/tickets/*/notes", Scope: "tickets:read"}}
		}, ""},
		{"approval route partly behind one without", func(tl *Tool) {
			tl.Routes = []Route{{Method: "*", Path: "/pages/*", Scope: "tickets:read"}, {Method: "DELETE", Path: "/pages/**", Scope: "tickets:delete", Approval: ApprovalRequired}}
		}, "route[1]"},
		{"approval route partly behind one without, the rest behind one with", func(tl *Tool) {
			tl.Routes = []Route{
				{Method: "GET", Path: "/admin/**", Scope: "tickets:read", Approval: ApprovalRequired},
				{Method: "GET", Path: "/**", Scope: "tickets:read"},
				{Method: "*", Path: "/admin/**", Scope: "tickets:delete", Approval: ApprovalRequired},
			}
		}, ""},
		{"approval route first", func(tl *Tool) {
			tl.Routes = []Route{{Method: "DELETE", Path: "/pages/**", Scope: "tickets:delete", Approval: ApprovalRequired}, {Method: "*", Path: "/pages/*", Scope: "tickets:read"}}
		}, ""},
		{"double star covers its prefix", func(tl *Tool) {
			tl.Routes = []Route{{Method: "GET", Path: "/tickets/**", Scope: "tickets:read"}, {Method: "GET", Path: "/tickets", Scope: "tickets:read"}}
		}, "route[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := good
			tl.Routes = append([]Route(nil), good.Routes...)
			tt.mut(&tl)
			errs := tl.Validate()
			if tt.wantKey == "" && len(errs) != 0 || tt.wantKey != "" && (len(errs) != 1 || errs[0].Key != tt.wantKey) {
				t.Errorf("got %v, want one error on %q", errs, tt.wantKey)
			}
		})
	}
	dup := ValidateTools([]Tool{good, good})
	if len(dup) != 1 || dup[0].Key != "tool[1].name" {
		t.Errorf("got %v, want a duplicate name on tool[1].name", dup)
	}
}

// covers and overlap agree with pattern.match on every path of up to four
// segments over a small alphabet: covers(a, b) exactly when every path b
// matches a matches too, overlap exactly when one path matches both, and
// the example it gives is such a path.
func TestRouteCoverageAgreesWithMatching(t *testing.T) {
	patterns := []string{"/", "/**", "/a", "/a/", "/a/*", "/a/**", "/*", "/*/b", "/a/b", "/*/*", "/a/*/**", "/*/", "/b/**", "/a/b/*"}
	alphabet := []string{"a", "b", "x", ""}
	var paths [][]string
	var grow func(p []string)
	grow = func(p []string) {
		paths = append(paths, append([]string(nil), p...))
		if len(p) == 4 {
			return
		}
		for _, s := range alphabet {
			grow(append(p, s))
		}
	}
	grow(nil)
	for _, pa := range patterns {
		for _, pb := range patterns {
			a, b := &Route{Method: "GET", Path: pa}, &Route{Method: "GET", Path: pb}
			ca, _ := compilePattern(pa)
			cb, _ := compilePattern(pb)
			covered, both := true, false
			for _, p := range paths {
				ma, mb := ca.match(p), cb.match(p)
				if mb && !ma {
					covered = false
				}
				if ma && mb {
					both = true
				}
			}
			if got := a.covers(b); got != covered {
				t.Errorf("covers(%s, %s) = %v, want %v", pa, pb, got, covered)
			}
			_, ex, got := a.overlap(b)
			if got != both {
				t.Errorf("overlap(%s, %s) = %v, want %v", pa, pb, got, both)
				continue
			}
			if got {
				segs := strings.Split(strings.TrimPrefix(ex, "/"), "/")
				if ex == "/" {
					segs = nil
				}
				if !ca.match(segs) || !cb.match(segs) {
					t.Errorf("overlap(%s, %s) gave %q, which does not match both", pa, pb, ex)
				}
			}
		}
	}
}
