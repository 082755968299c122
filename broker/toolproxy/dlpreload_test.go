package toolproxy

import (
	"errors"
	"strings"
	"testing"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker/dlp"
)

// TestReloadSwapsDLPDetectors checks that a config reload swaps the site's
// DLP detectors for responses and audit details alike, and that a reload
// with a bad detector changes nothing: not the detectors, not the tools.
func TestReloadSwapsDLPDetectors(t *testing.T) {
	const (
		order    = "ORD-12345"  // matched by set A
		employee = "EMP-654321" // matched by set B
	)
	setA := dlp.Config{Detectors: []dlp.DetectorConfig{{Name: "order_id", Pattern: `\bORD-[0-9]{5}\b`}}}
	setB := dlp.Config{Detectors: []dlp.DetectorConfig{{Name: "employee_id", Pattern: `\bEMP-[0-9]{6}\b`}}}
	scanner, err := dlp.New(setA)
	if err != nil {
		t.Fatal(err)
	}
	u := newUpstream(t, jsonOK(`{"order": "`+order+`", "owner": "`+employee+`"}`))
	tl := stdTool(u.URL)
	e := newEnv(t, envOpts{
		tools: []Tool{tl}, secrets: map[string]string{"tickets-key": toolSecret}, dlp: scanner,
		// As the daemon wires it: audit details pass the same scanner.
		wrap: func(j audit.Appender) audit.Appender { return &dlp.Appender{Next: j, Scanner: scanner} },
	})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Scopes: allScopes()}, "tickets")
	wiki := Tool{Name: "wiki", BaseURL: u.URL + "/wiki", Auth: ToolAuth{Type: AuthHeader, Name: "X-Api-Key", Secret: "tickets-key"},
		Routes: []Route{{Method: "GET", Path: "/**", Scope: "tickets:read"}}}
	e.tok.add("wiki-token", Principal{Agent: "bot", User: "alice", Scopes: allScopes()}, "wiki")

	steps := []struct {
		name       string
		reload     func() error
		wantErr    bool
		redacted   string // in the response, replaced
		kept       string // in the response, untouched
		wantDetect string // the tool.dlp event's detector
	}{
		{
			name:     "set A at start",
			reload:   func() error { return nil },
			redacted: order, kept: employee, wantDetect: "order_id",
		},
		{
			name:     "reload to set B",
			reload:   func() error { return e.proxy.ReloadWithDLP([]Tool{tl}, RiskConfig{}, setB) },
			redacted: employee, kept: order, wantDetect: "employee_id",
		},
		{
			name: "bad pattern refused with a new tool: nothing changes",
			reload: func() error {
				bad := dlp.Config{Detectors: []dlp.DetectorConfig{{Name: "order_id", Pattern: `ORD-[0-9`}}}
				return e.proxy.ReloadWithDLP([]Tool{tl, wiki}, RiskConfig{}, bad)
			},
			wantErr:  true,
			redacted: employee, kept: order, wantDetect: "employee_id",
		},
		{
			name: "pattern matching everything refused",
			reload: func() error {
				bad := dlp.Config{Detectors: []dlp.DetectorConfig{{Name: "any", Pattern: `.*`}}}
				return e.proxy.ReloadWithDLP([]Tool{tl}, RiskConfig{}, bad)
			},
			wantErr:  true,
			redacted: employee, kept: order, wantDetect: "employee_id",
		},
		{
			name:     "Reload without [dlp] keeps set B",
			reload:   func() error { return e.proxy.Reload([]Tool{tl}, RiskConfig{}) },
			redacted: employee, kept: order, wantDetect: "employee_id",
		},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			err := st.reload()
			if st.wantErr {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("got %v, want ErrConfig", err)
				}
			} else if err != nil {
				t.Fatalf("reload: %v", err)
			}
			got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil)
			if got.status != 200 {
				t.Fatalf("got %d %s, want 200", got.status, got.body)
			}
			body := string(got.body)
			if strings.Contains(body, st.redacted) || !strings.Contains(body, "[REDACTED:"+st.wantDetect+"]") {
				t.Errorf("got body %s, want %s redacted as %s", body, st.redacted, st.wantDetect)
			}
			if !strings.Contains(body, st.kept) {
				t.Errorf("got body %s, want %s untouched", body, st.kept)
			}
			if ev := e.lastCall(); ev.Type != "tool.dlp" || ev.Details["dlp"] != st.wantDetect {
				t.Errorf("got %s with dlp %q, want tool.dlp naming %s", ev.Type, ev.Details["dlp"], st.wantDetect)
			}
			// The new tool of the refused reload is not served.
			if got := e.do("GET", "/v1/tools/wiki/page", "wiki-token", nil, nil); got.status != 404 || got.errorCode() != CodeUnknownTool {
				t.Errorf("wiki: got %d %s, want 404 %s", got.status, got.body, CodeUnknownTool)
			}
		})
	}

	// Audit details pass the reloaded set too: a path naming an employee
	// id reaches the journal redacted.
	e.do("GET", "/v1/tools/tickets/tickets/"+employee, agentToken, nil, nil)
	if ev := e.lastEvent("tool.call"); strings.Contains(ev.Details["path"], employee) {
		t.Errorf("got tool.call path %q, want the employee id redacted", ev.Details["path"])
	}
	if strings.Contains(string(e.journalBytes()), employee) {
		t.Errorf("the journal holds %s after the reload to set B", employee)
	}
}
