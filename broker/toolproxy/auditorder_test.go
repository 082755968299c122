package toolproxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
)

// refuse is an Appender in front of the real journal that refuses events of
// the given types, as a journal whose disk fails at that moment would.
type refuse struct {
	audit.Appender
	types map[string]bool
}

var errRefused = errors.New("toolproxy test: the journal refuses this event")

func (f refuse) Append(ctx context.Context, ev *audit.Event) (uint64, error) {
	if f.types[ev.Type] {
		return 0, errRefused
	}
	return f.Appender.Append(ctx, ev)
}

func refusing(types ...string) func(audit.Appender) audit.Appender {
	m := map[string]bool{}
	for _, t := range types {
		m[t] = true
	}
	return func(a audit.Appender) audit.Appender { return refuse{a, m} }
}

// entries returns every journal entry so far, with its sequence number.
func (e *env) entries() []audit.Entry {
	e.t.Helper()
	r, err := e.journal.Reader(1)
	if err != nil {
		e.t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []audit.Entry
	for range e.journal.LastSeq() {
		en, err := r.Next(ctx)
		if err != nil {
			e.t.Fatalf("reading the journal: %v", err)
		}
		out = append(out, en)
	}
	return out
}

// A call the journal cannot take never reaches the tool, whatever its
// method: the decision is recorded before the call is sent.
func TestUnrecordedCallNeverReachesTheTool(t *testing.T) {
	tests := []struct {
		name   string
		method string
		path   string
		body   []byte
		wrap   func(audit.Appender) audit.Appender
		closed bool
	}{
		{name: "POST, journal closed", method: "POST", path: "/tickets", body: []byte(`{"title":"unrecorded"}`), closed: true},
		{name: "GET, journal closed", method: "GET", path: "/tickets/1?q=x", closed: true},
		{name: "POST, decision refused", method: "POST", path: "/tickets", body: []byte(`{"title":"unrecorded"}`), wrap: refusing("tool.call")},
		{name: "GET, decision refused", method: "GET", path: "/tickets/1", wrap: refusing("tool.call")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, jsonOK(`{"id":1}`))
			e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL)}, wrap: tt.wrap, secrets: map[string]string{"tickets-key": toolSecret}})
			e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Scopes: allScopes()}, "tickets")
			if tt.closed {
				e.journal.Close()
			}
			got := e.do(tt.method, "/v1/tools/tickets"+tt.path, agentToken, tt.body, nil)
			if got.status != http.StatusServiceUnavailable || got.errorCode() != CodeAuditUnavailable {
				t.Errorf("got %d %s, want 503 %s", got.status, got.body, CodeAuditUnavailable)
			}
			if n := u.count(); n != 0 {
				t.Errorf("the tool got %d requests, want 0", n)
			}
			if bytes.Contains(got.body, []byte(`"id"`)) {
				t.Errorf("the agent got the tool's answer: %s", got.body)
			}
			if !tt.closed {
				for _, ev := range e.events() {
					if ev.Type == "tool.result" || ev.Type == "tool.dlp" {
						t.Errorf("got a %s event for a call that was never sent", ev.Type)
					}
				}
			}
		})
	}
}

// The decision event is durable when the tool is called; the outcome event
// follows it, with the same request id.
func TestDecisionIsDurableBeforeTheToolSeesTheCall(t *testing.T) {
	var (
		mu      sync.Mutex
		e       *env
		seenSeq uint64
		seen    []audit.Event
	)
	u := newUpstream(t, func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		j := e.journal
		mu.Unlock()
		last := j.LastSeq()
		var evs []audit.Event
		if r, err := j.Reader(1); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for range last {
				en, err := r.Next(ctx)
				if err != nil {
					break
				}
				evs = append(evs, en.Event)
			}
			cancel()
			r.Close()
		}
		mu.Lock()
		seenSeq, seen = last, evs
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":7}`)
	})
	mu.Lock()
	e = stdEnv(t, u, RiskConfig{})
	mu.Unlock()

	got := e.do("POST", "/v1/tools/tickets/tickets?api_key=k1", agentToken, []byte(`{"title":"x"}`), nil)
	if got.status != http.StatusCreated {
		t.Fatalf("got %d %s, want 201", got.status, got.body)
	}
	if n := u.count(); n != 1 {
		t.Fatalf("the tool got %d requests, want 1", n)
	}

	mu.Lock()
	defer mu.Unlock()
	var decisions []audit.Event
	for _, ev := range seen {
		if ev.Type == "tool.call" {
			decisions = append(decisions, ev)
		}
	}
	if len(decisions) != 1 {
		t.Fatalf("when the tool was called the journal (last seq %d) held %d tool.call events, want 1", seenSeq, len(decisions))
	}
	dec := decisions[0]
	want := map[string]string{"method": "POST", "path": "/tickets?api_key=REDACTED", "decision": "allow", "route": "POST /tickets"}
	for k, v := range want {
		if dec.Details[k] != v {
			t.Errorf("tool.call detail %s: got %q, want %q", k, dec.Details[k], v)
		}
	}
	if dec.Actor.Agent != "bot" || dec.Actor.User != "alice" || dec.Target != "tickets" || dec.RequestID == "" || dec.Outcome != audit.OutcomeSuccess {
		t.Errorf("got tool.call %+v, want agent bot, user alice, tool tickets, a request id, success", dec)
	}
	for _, ev := range seen {
		if ev.Type == "tool.result" {
			t.Errorf("the outcome was recorded before the tool answered: %+v", ev)
		}
	}

	var calls, results []audit.Entry
	for _, en := range e.entries() {
		if en.Event.RequestID != dec.RequestID {
			continue
		}
		switch en.Event.Type {
		case "tool.call":
			calls = append(calls, en)
		case "tool.result":
			results = append(results, en)
		default:
			t.Errorf("unexpected %s event for the call", en.Event.Type)
		}
	}
	if len(calls) != 1 || len(results) != 1 {
		t.Fatalf("got %d tool.call and %d tool.result events for request %s, want 1 and 1", len(calls), len(results), dec.RequestID)
	}
	if calls[0].Seq > seenSeq || results[0].Seq <= seenSeq {
		t.Errorf("got tool.call at seq %d, tool.result at %d, tool called at last seq %d: want call <= %d < result", calls[0].Seq, results[0].Seq, seenSeq, seenSeq)
	}
	res := results[0].Event
	if res.Outcome != audit.OutcomeSuccess || res.Details["upstream_status"] != "201" || res.Details["bytes"] != "8" || res.Details["duration_ms"] == "" {
		t.Errorf("got tool.result %+v, want success, upstream_status 201, bytes 8, duration_ms", res)
	}
	e.assertNowhere(toolSecret, got)
	e.assertNowhere(`"title":"x"`)
	e.assertNowhere("k1")
}

// When the tool has answered but the outcome cannot be recorded, the agent
// gets 503, not the answer; the tool.call record of the call remains, and
// the failure is logged at error level.
func TestUnrecordedOutcomeFailsClosed(t *testing.T) {
	for _, typ := range []string{"tool.result", "tool.dlp"} {
		t.Run(typ, func(t *testing.T) {
			body := `{"id":7,"card":"4111 1111 1111 1111"}` // DLP redacts it: tool.dlp
			if typ == "tool.result" {
				body = `{"id":7}`
			}
			u := newUpstream(t, jsonOK(body))
			path := "/tickets/1"
			e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL)}, wrap: refusing(typ), secrets: map[string]string{"tickets-key": toolSecret}})
			e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Scopes: allScopes()}, "tickets")
			got := e.do("GET", "/v1/tools/tickets"+path, agentToken, nil, nil)
			if got.status != http.StatusServiceUnavailable || got.errorCode() != CodeAuditUnavailable {
				t.Errorf("got %d %s, want 503 %s", got.status, got.body, CodeAuditUnavailable)
			}
			if n := u.count(); n != 1 {
				t.Errorf("the tool got %d requests, want 1", n)
			}
			if bytes.Contains(got.body, []byte(`"id"`)) {
				t.Errorf("the agent got the tool's answer without a record: %s", got.body)
			}
			ev := e.lastEvent("tool.call")
			if ev.Details["path"] != path || ev.Actor.Agent != "bot" {
				t.Errorf("got tool.call %+v, want the call's decision", ev)
			}
			logs := string(e.logs.Bytes())
			if !strings.Contains(logs, `"level":"ERROR"`) || !strings.Contains(logs, ev.RequestID) {
				t.Errorf("no error-level log line with request id %s:\n%s", ev.RequestID, logs)
			}
		})
	}
}

// A tool that cannot be reached still leaves the decision and a failed
// outcome, correlated.
func TestUnreachableToolLeavesDecisionAndFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e := newEnv(t, envOpts{tools: []Tool{stdTool("http://" + addr)}, secrets: map[string]string{"tickets-key": toolSecret}})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Scopes: allScopes()}, "tickets")
	got := e.do("POST", "/v1/tools/tickets/tickets", agentToken, []byte(`{}`), nil)
	if got.status != http.StatusBadGateway || got.errorCode() != CodeUpstreamError {
		t.Fatalf("got %d %s, want 502 %s", got.status, got.body, CodeUpstreamError)
	}
	dec := e.lastEvent("tool.call")
	res := e.lastEvent("tool.result")
	if dec.RequestID != res.RequestID || dec.Outcome != audit.OutcomeSuccess {
		t.Errorf("got tool.call %+v and tool.result %+v, want one request id", dec, res)
	}
	if res.Outcome != audit.OutcomeFailure || res.Details["decision"] != CodeUpstreamError {
		t.Errorf("got tool.result %+v, want failure %s", res, CodeUpstreamError)
	}
}
