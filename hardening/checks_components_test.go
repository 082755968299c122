package hardening

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// syslogTargets is this package's own SyslogStatus for tests: the forwarder
// state lives in the running daemon, which these tests do not start.
type syslogTargets struct {
	ts  []SyslogTarget
	err error
}

func (s syslogTargets) SyslogTargets(context.Context) ([]SyslogTarget, error) { return s.ts, s.err }

func TestSyslogCheck(t *testing.T) {
	for _, tc := range []struct {
		name       string
		src        SyslogStatus
		want       []Status
		wantDetail string
	}{
		{"no daemon", nil, []Status{Skip}, "not running"},
		{"daemon error", syslogTargets{err: errors.New("dial unix: no such file")}, []Status{Skip}, "cannot ask"},
		{"no targets", syslogTargets{}, []Status{Warn}, "stays on this host"},
		{"caught up and lagging and down", syslogTargets{ts: []SyslogTarget{
			{Address: "tls://siem:6514", Connected: true},
			{Address: "tcp://wazuh:514", Connected: true, Lag: 5000},
			{Address: "udp://old:514", Connected: false, Lag: 3, LagAge: time.Second, LastError: "connection refused"},
		}}, []Status{Pass, Warn, Fail}, "connection refused"},
		{"old backlog", syslogTargets{ts: []SyslogTarget{{Address: "tcp://wazuh:514", Connected: true, Lag: 3, LagAge: 10 * time.Minute}}},
			[]Status{Warn}, "oldest 10m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := SyslogCheck(tc.src).Run(context.Background())
			if len(rs) != len(tc.want) {
				t.Fatalf("got %d results, want %d: %+v", len(rs), len(tc.want), rs)
			}
			for i, w := range tc.want {
				if rs[i].Status != w {
					t.Errorf("result %d got %+v, want %s", i, rs[i], w)
				}
			}
			if last := rs[len(rs)-1]; !strings.Contains(last.Detail, tc.wantDetail) {
				t.Errorf("detail got %q, want %q", last.Detail, tc.wantDetail)
			}
		})
	}
}

type firewall struct {
	present bool
	drift   []string
	err     error
}

func (f firewall) FirewallDrift(context.Context) (bool, []string, error) {
	return f.present, f.drift, f.err
}

func TestFirewallCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		fw   FirewallState
		want Status
	}{
		{"unknown", nil, Skip},
		{"equal", firewall{present: true}, Pass},
		{"absent", firewall{}, Fail},
		{"drifted", firewall{present: true, drift: []string{"egress rule 10.10.0.11/32 tcp 636 missing"}}, Fail},
		{"unreadable", firewall{err: errors.New("netlink: operation not permitted")}, Warn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := FirewallCheck(tc.fw).Run(context.Background())[0]
			if r.Status != tc.want || (r.Status != Pass && r.Fix == "") {
				t.Errorf("got %+v, want %s with a fix", r, tc.want)
			}
		})
	}
}

func TestAgentSecretCheck(t *testing.T) {
	rs := AgentSecretCheck([]AgentAuth{{Name: "ticket-bot", Method: "unix"}, {Name: "legacy", Method: "client_secret"}, {Name: "remote", Method: "private_key_jwt"}}).Run(context.Background())
	if len(rs) != 1 || rs[0].Name != "agent legacy" || rs[0].Status != Warn || rs[0].Fix == "" {
		t.Errorf("got %+v, want one warn for agent legacy", rs)
	}
	rs = AgentSecretCheck([]AgentAuth{{Name: "ticket-bot", Method: "unix"}}).Run(context.Background())
	if len(rs) != 1 || rs[0].Status != Pass {
		t.Errorf("got %+v, want one pass", rs)
	}
}

func TestAgentSecretCheckFailsForAMissingUnixUser(t *testing.T) {
	rs := AgentSecretCheck([]AgentAuth{{Name: "bot", Method: "unix", UnixUser: "root"}}).Run(context.Background())
	if len(rs) != 1 || rs[0].Status != Pass {
		t.Errorf("an existing unix_user: got %+v, want one pass", rs)
	}
	rs = AgentSecretCheck([]AgentAuth{{Name: "bot", Method: "unix", UnixUser: "no-such-user-applianced"}}).Run(context.Background())
	if len(rs) != 1 || rs[0].Status != Fail || !strings.Contains(rs[0].Detail, "no-such-user-applianced") || rs[0].Fix == "" {
		t.Errorf("a missing unix_user: got %+v, want one fail naming it", rs)
	}
}

type fakeSecrets struct {
	list []SecretInfo
	err  error
}

func (f fakeSecrets) Secrets(context.Context) ([]SecretInfo, error) { return f.list, f.err }

func TestToolCredentialCheck(t *testing.T) {
	tools := []ToolCredential{{Tool: "tickets", Secret: "tickets-key"}, {Tool: "wiki", Secret: "wiki-token"}, {Tool: "crm", Secret: "crm-key"}}
	vault := fakeSecrets{list: []SecretInfo{
		{Name: "tickets-key", AllowedTools: []string{"tickets"}},
		{Name: "wiki-token", AllowedTools: []string{"tickets"}},
	}}
	rs := ToolCredentialCheck(tools, vault).Run(context.Background())
	got := map[string]Result{}
	for _, r := range rs {
		got[r.Name] = r
	}
	if len(rs) != 2 || got["tool wiki"].Status != Fail || !strings.Contains(got["tool wiki"].Detail, "does not allow") ||
		got["tool crm"].Status != Fail || !strings.Contains(got["tool crm"].Detail, "not in the vault") ||
		!strings.Contains(got["tool crm"].Fix, "--allow-tool crm") {
		t.Errorf("got %+v, want fails for wiki (not allowed) and crm (missing)", rs)
	}
	rs = ToolCredentialCheck(tools[:1], vault).Run(context.Background())
	if len(rs) != 1 || rs[0].Status != Pass {
		t.Errorf("got %+v, want one pass", rs)
	}
	rs = ToolCredentialCheck(tools, fakeSecrets{err: errors.New("connection refused")}).Run(context.Background())
	if len(rs) != 1 || rs[0].Status != Skip {
		t.Errorf("daemon down: got %+v, want one skip", rs)
	}
}

func TestRouteScopeCheck(t *testing.T) {
	routes := []RouteScope{{"tickets", "GET /tickets/*", "tickets:read"}, {"tickets", "DELETE /tickets/*", "tickets:nuke"}}
	rs := RouteScopeCheck(routes, []string{"tickets:read", "tickets:create"}).Run(context.Background())
	if len(rs) != 1 || rs[0].Status != Warn || !strings.Contains(rs[0].Detail, "tickets:nuke") || rs[0].Name != "tool tickets route DELETE /tickets/*" {
		t.Errorf("got %+v, want one warning for the route whose scope no role grants", rs)
	}
	rs = RouteScopeCheck(routes[:1], []string{"tickets:read"}).Run(context.Background())
	if len(rs) != 1 || rs[0].Status != Pass {
		t.Errorf("got %+v, want one pass", rs)
	}
}

func TestServiceCheck(t *testing.T) {
	for _, tc := range []struct {
		enabled, active string
		want            Status
	}{
		{"enabled", "active", Pass},
		{"enabled", "failed", Fail},
		{"enabled", "inactive", Fail},
		{"disabled", "inactive", Warn},
		{"", "", Skip},
	} {
		r := ServiceCheck("applianced.service", tc.enabled, tc.active).Run(context.Background())
		if len(r) != 1 || r[0].Status != tc.want {
			t.Errorf("%s/%s: got %+v, want %s", tc.enabled, tc.active, r, tc.want)
		}
	}
}
