package toolproxy

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
)

// expireEvents returns the approval.expire events for id.
func (e *env) expireEvents(id string) []audit.Event {
	e.t.Helper()
	var out []audit.Event
	for _, ev := range e.events() {
		if ev.Type == "approval.expire" && ev.Target == id {
			out = append(out, ev)
		}
	}
	return out
}

// sweep runs one sweep of expired approvals as the sweeper goroutine would.
func (e *env) sweep() {
	e.t.Helper()
	if _, err := e.proxy.sweepApprovals(context.Background()); err != nil {
		e.t.Fatalf("sweepApprovals: %v", err)
	}
}

const expirePath = "/v1/tools/tickets/tickets/7"

// expireBody carries a marker that must never reach the journal.
var expireBody = []byte(`{"reason": "duplicate", "note": "body-marker-41c7"}`)

func TestApprovalExpireRecordedOnceWhenUnused(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(t *testing.T, e *env, id string) // after the request, before the clock passes the TTL
		wantEvents int
		wantStatus string // details.status of the event
	}{
		{
			name:       "pending and never polled",
			setup:      func(*testing.T, *env, string) {},
			wantEvents: 1, wantStatus: StatusPending,
		},
		{
			name: "approved but never used",
			setup: func(t *testing.T, e *env, id string) {
				if _, err := e.proxy.Decide(t.Context(), id, true, adminActor()); err != nil {
					t.Fatal(err)
				}
			},
			wantEvents: 1, wantStatus: StatusApproved,
		},
		{
			name: "approved and used",
			setup: func(t *testing.T, e *env, id string) {
				if _, err := e.proxy.Decide(t.Context(), id, true, adminActor()); err != nil {
					t.Fatal(err)
				}
				if got := e.do("DELETE", expirePath, agentToken, expireBody, map[string]string{ApprovalHeader: id}); got.status != 200 {
					t.Fatalf("got %d %s, want 200 with the approval", got.status, got.body)
				}
			},
			wantEvents: 0,
		},
		{
			name: "denied",
			setup: func(t *testing.T, e *env, id string) {
				if _, err := e.proxy.Decide(t.Context(), id, false, adminActor()); err != nil {
					t.Fatal(err)
				}
			},
			wantEvents: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, jsonOK(`{"deleted": true}`))
			e := stdEnv(t, u, RiskConfig{})
			e.proxy.stopSweeper() // the test sweeps itself, with the clock it sets
			id := askApproval(t, e, agentToken, expirePath, expireBody)
			tt.setup(t, e, id)

			e.clk.Add(DefaultApprovalTTL - time.Second)
			e.sweep()
			if got := e.expireEvents(id); len(got) != 0 {
				t.Fatalf("got %d approval.expire events before the expiry, want 0", len(got))
			}
			e.clk.Add(time.Second) // exactly at the expiry: expired
			for range 3 {
				e.sweep()
			}
			got := e.expireEvents(id)
			if len(got) != tt.wantEvents {
				t.Fatalf("got %d approval.expire events, want %d", len(got), tt.wantEvents)
			}
			if tt.wantEvents == 0 {
				return
			}
			ev := got[0]
			want := map[string]string{
				"approval_id": id, "agent": "bot", "user": "alice", "tool": "tickets",
				"method": "DELETE", "path": "/tickets/7", "status": tt.wantStatus,
			}
			for k, v := range want {
				if ev.Details[k] != v {
					t.Errorf("got details[%s] %q, want %q", k, ev.Details[k], v)
				}
			}
			wantKeys := append(slices.Collect(maps.Keys(want)), "expires_at")
			if gotKeys := slices.Collect(maps.Keys(ev.Details)); !sameSet(gotKeys, wantKeys) {
				t.Errorf("got details keys %v, want exactly %v", gotKeys, wantKeys)
			}
			if ev.Actor.Agent != "bot" || ev.Actor.User != "alice" || ev.Action != "approval.expire" || ev.Outcome != audit.OutcomeSuccess {
				t.Errorf("got event %+v", ev)
			}
			raw, _ := json.Marshal(ev)
			for _, s := range []string{"body-marker-41c7", "duplicate", toolSecret, agentToken} {
				if strings.Contains(string(raw), s) {
					t.Errorf("approval.expire holds %q: %s", s, raw)
				}
			}
			e.assertNowhere("body-marker-41c7")
			e.assertNowhere(toolSecret)

			// The approval is expired for every path that looks at it.
			if got := e.do("DELETE", expirePath, agentToken, expireBody, map[string]string{ApprovalHeader: id}); got.status != 403 || !strings.Contains(string(got.body), "expired") {
				t.Errorf("using it: got %d %s, want 403 expired", got.status, got.body)
			}
			if _, err := e.proxy.Decide(t.Context(), id, true, adminActor()); !errors.Is(err, ErrApprovalExpired) {
				t.Errorf("deciding it: got %v, want ErrApprovalExpired", err)
			}
			if got := e.do("GET", "/v1/approvals/"+id, "", nil, nil); !strings.Contains(string(got.body), `"expired"`) {
				t.Errorf("polling it: got %d %s, want expired", got.status, got.body)
			}
			if u.count() != 0 {
				t.Errorf("the upstream got %d calls, want 0", u.count())
			}
			e.sweep()
			if got := e.expireEvents(id); len(got) != 1 {
				t.Errorf("got %d approval.expire events after more sweeps, want still 1", len(got))
			}
		})
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// failingExpire refuses approval.expire events while fail is set.
type failingExpire struct {
	next audit.Appender
	fail atomic.Bool
}

func (f *failingExpire) Append(ctx context.Context, ev *audit.Event) (uint64, error) {
	if ev.Type == "approval.expire" && f.fail.Load() {
		return 0, errors.New("journal unavailable")
	}
	return f.next.Append(ctx, ev)
}

// TestApprovalExpireRetriedWhenJournalFails checks that an expiry the
// journal refused is neither lost nor recorded twice: the next sweep after
// the journal recovers records it once.
func TestApprovalExpireRetriedWhenJournalFails(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	fe := &failingExpire{}
	e := newEnv(t, envOpts{
		tools: []Tool{stdTool(u.URL)}, secrets: map[string]string{"tickets-key": toolSecret},
		wrap: func(j audit.Appender) audit.Appender { fe.next = j; return fe },
	})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Scopes: allScopes()}, "tickets")
	e.proxy.stopSweeper()
	id := askApproval(t, e, agentToken, expirePath, expireBody)
	e.clk.Add(DefaultApprovalTTL)

	fe.fail.Store(true)
	if _, err := e.proxy.sweepApprovals(t.Context()); err == nil {
		t.Fatal("got no error from a sweep whose journal append failed")
	}
	a, err := e.proxy.store.approval(id)
	if err != nil {
		t.Fatal(err)
	}
	if a.Status != StatusPending {
		t.Errorf("got stored status %q after the failed append, want %q (mark undone)", a.Status, StatusPending)
	}
	fe.fail.Store(false)
	e.sweep()
	e.sweep()
	if got := e.expireEvents(id); len(got) != 1 {
		t.Errorf("got %d approval.expire events, want 1", len(got))
	}
}

// TestApprovalExpireSweeperRunsUnpolled checks the background sweep: an
// approval nobody polls or uses gets its event without any call.
func TestApprovalExpireSweeperRunsUnpolled(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	e.proxy.stopSweeper()
	id := askApproval(t, e, agentToken, expirePath, expireBody)
	e.clk.Add(DefaultApprovalTTL + time.Minute)
	e.proxy.startSweeper(5 * time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for len(e.expireEvents(id)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no approval.expire event from the background sweep")
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.proxy.stopSweeper()
	e.proxy.stopSweeper() // idempotent, as Close relies on
	if got := e.expireEvents(id); len(got) != 1 {
		t.Errorf("got %d approval.expire events, want 1", len(got))
	}
}
