package hardening

import (
	"context"
	"fmt"
	"os/user"
	"slices"
	"strings"
	"time"
)

// SyslogTarget is the delivery state of one [[audit.syslog]] target, as the
// running daemon's forwarder sees it.
type SyslogTarget struct {
	Address   string
	Connected bool
	// Lag is how many journal events wait to be delivered.
	Lag uint64
	// LagAge is the age of the oldest undelivered event (zero if none).
	LagAge    time.Duration
	LastError string
}

// SyslogStatus reports the forwarders' state (the running daemon).
type SyslogStatus interface {
	SyslogTargets(ctx context.Context) ([]SyslogTarget, error)
}

// A connected target warns when its backlog is older than SyslogLagWarn
// or longer than SyslogLagEventsWarn events.
const (
	SyslogLagWarn       = time.Minute
	SyslogLagEventsWarn = 1000
)

// SyslogCheck reports each syslog target: connected and caught up passes, a
// backlog beyond SyslogLagWarn or SyslogLagEventsWarn warns, disconnected
// fails. A nil src (no
// daemon to ask) is a skip.
func SyslogCheck(src SyslogStatus) Check {
	return Check{Name: "syslog targets", Run: func(ctx context.Context) []Result {
		if src == nil {
			return []Result{{Name: "syslog", Status: Skip, Detail: "the daemon is not running; delivery state unknown",
				Fix: "systemctl start applianced"}}
		}
		ts, err := src.SyslogTargets(ctx)
		if err != nil {
			return []Result{{Name: "syslog", Status: Skip, Detail: "cannot ask the daemon: " + err.Error(), Fix: "systemctl status applianced"}}
		}
		if len(ts) == 0 {
			return []Result{{Name: "syslog", Status: Warn, Detail: "no [[audit.syslog]] target: the audit trail stays on this host",
				Fix: "add an [[audit.syslog]] target pointing at the SIEM"}}
		}
		out := make([]Result, 0, len(ts))
		for _, t := range ts {
			out = append(out, syslogResult(t))
		}
		return out
	}}
}

func syslogResult(t SyslogTarget) Result {
	name := "syslog " + t.Address
	lag := fmt.Sprintf("%d events behind", t.Lag)
	if t.LagAge > 0 {
		lag += fmt.Sprintf(", oldest %s", t.LagAge.Round(time.Second))
	}
	switch {
	case !t.Connected:
		d := "not connected, " + lag
		if t.LastError != "" {
			d += ": " + t.LastError
		}
		return Result{Name: name, Status: Fail, Detail: d, Fix: "check the SIEM is up and the [[net.egress]] rule to it; events are kept and resent"}
	case t.LagAge > SyslogLagWarn, t.Lag > SyslogLagEventsWarn:
		return Result{Name: name, Status: Warn, Detail: "connected, " + lag, Fix: "check the SIEM's ingestion rate and the link to it"}
	}
	return Result{Name: name, Status: Pass, Detail: "connected, " + lag}
}

// FirewallState reports whether the kernel holds table inet applianced and
// how it differs from what the config asks for.
type FirewallState interface {
	FirewallDrift(ctx context.Context) (present bool, drift []string, err error)
}

// FirewallCheck passes when the table is loaded and equals the config. A nil
// fw is a skip.
func FirewallCheck(fw FirewallState) Check {
	return Check{Name: "firewall", Run: func(ctx context.Context) []Result {
		name := "firewall table inet applianced"
		if fw == nil {
			return []Result{{Name: name, Status: Skip, Detail: "firewall state unavailable", Fix: "run `applianced net status`"}}
		}
		present, drift, err := fw.FirewallDrift(ctx)
		switch {
		case err != nil:
			return []Result{{Name: name, Status: Warn, Detail: "firewall state unavailable: " + err.Error(), Fix: "systemctl status applianced; then `applianced net status`"}}
		case !present:
			return []Result{{Name: name, Status: Fail, Detail: "not loaded: this host's egress is not restricted",
				Fix: "`applianced net plan`, then `applianced net apply` and `applianced net confirm`"}}
		case len(drift) > 0:
			d := fmt.Sprintf("loaded but differs from the config in %d place(s): %s", len(drift), drift[0])
			return []Result{{Name: name, Status: Fail, Detail: d, Fix: "review `applianced net plan` and apply it"}}
		}
		return []Result{{Name: name, Status: Pass, Detail: "loaded and equal to the config"}}
	}}
}

// AgentAuth is how one agent proves its identity: "unix" (peer credentials
// on the agent socket), "private_key_jwt" or "client_secret".
type AgentAuth struct {
	Name   string
	Method string
	// UnixUser is the agent's unix_user, if any: it must exist on this
	// host for the agent to use the agent socket.
	UnixUser string
}

// AgentSecretCheck warns for each agent still authenticating with a shared
// client secret, which can be copied off the agent's host and replayed.
func AgentSecretCheck(agents []AgentAuth) Check {
	return Check{Name: "agent credentials", Run: func(ctx context.Context) []Result {
		var out []Result
		for _, a := range agents {
			if a.Method == "client_secret" {
				out = append(out, Result{Name: "agent " + a.Name, Status: Warn, Detail: "authenticates with a client_secret",
					Fix: "give it unix_user (agent socket) or public_key_file (private_key_jwt) instead"})
			}
			if a.UnixUser != "" {
				if _, err := lookupUser(a.UnixUser); err != nil {
					out = append(out, Result{Name: "agent " + a.Name, Status: Fail,
						Detail: fmt.Sprintf("unix_user %q does not exist on this host: the agent cannot use the agent socket", a.UnixUser),
						Fix:    "create the user the agent runs as, or correct unix_user"})
				}
			}
		}
		if len(out) == 0 {
			out = append(out, Result{Name: "agent credentials", Status: Pass,
				Detail: fmt.Sprintf("%d agent(s), none uses a client_secret, every unix_user exists", len(agents))})
		}
		return out
	}}
}

// lookupUser is user.Lookup; tests replace it.
var lookupUser = user.Lookup

// ToolCredential is a [[tool]]'s credential: the vault secret it names.
type ToolCredential struct {
	Tool, Secret string
}

// SecretInfo is what the vault says of a secret: never its value.
type SecretInfo struct {
	Name         string
	AllowedTools []string
}

// SecretLister lists the vault's secrets through the running daemon.
type SecretLister interface {
	Secrets(ctx context.Context) ([]SecretInfo, error)
}

// ToolCredentialCheck fails for each tool whose secret is not in the vault
// or does not allow that tool: its first call would fail with 502.
func ToolCredentialCheck(tools []ToolCredential, src SecretLister) Check {
	return Check{Name: "tool credentials", Run: func(ctx context.Context) []Result {
		if len(tools) == 0 {
			return []Result{{Name: "tool credentials", Status: Pass, Detail: "no [[tool]] configured"}}
		}
		secrets, err := src.Secrets(ctx)
		if err != nil {
			return []Result{{Name: "tool credentials", Status: Skip, Detail: "cannot ask the daemon: " + err.Error(), Fix: "systemctl status applianced"}}
		}
		byName := map[string]SecretInfo{}
		for _, s := range secrets {
			byName[s.Name] = s
		}
		var out []Result
		for _, t := range tools {
			s, ok := byName[t.Secret]
			switch {
			case !ok:
				out = append(out, Result{Name: "tool " + t.Tool, Status: Fail,
					Detail: fmt.Sprintf("its secret %q is not in the vault: every call would fail with 502", t.Secret),
					Fix:    fmt.Sprintf("applianced secret put %s --type TYPE --allow-tool %s", t.Secret, t.Tool)})
			case !slices.Contains(s.AllowedTools, t.Tool):
				out = append(out, Result{Name: "tool " + t.Tool, Status: Fail,
					Detail: fmt.Sprintf("its secret %q does not allow tool %s (allowed: %s)", t.Secret, t.Tool, strings.Join(s.AllowedTools, ", ")),
					Fix:    fmt.Sprintf("store the secret again with --allow-tool %s (applianced secret put %s --type TYPE --allow-tool %s)", t.Tool, t.Secret, t.Tool)})
			}
		}
		if len(out) == 0 {
			out = append(out, Result{Name: "tool credentials", Status: Pass,
				Detail: fmt.Sprintf("%d tool(s), each secret in the vault and allowed", len(tools))})
		}
		return out
	}}
}

// RouteScope is one tool route's scope, for RouteScopeCheck.
type RouteScope struct {
	Tool, Route, Scope string
}

// RouteScopeCheck warns for each tool route whose scope is not in granted
// (the scopes of the roles agents hold): no agent can ever get a token
// that calls it.
func RouteScopeCheck(routes []RouteScope, granted []string) Check {
	return Check{Name: "route scopes", Run: func(ctx context.Context) []Result {
		var out []Result
		for _, r := range routes {
			if !slices.Contains(granted, r.Scope) {
				out = append(out, Result{Name: "tool " + r.Tool + " route " + r.Route, Status: Warn,
					Detail: fmt.Sprintf("scope %q is granted by no role an agent holds: no agent can call this route", r.Scope),
					Fix:    fmt.Sprintf("add %q to the scopes of a role of the agent(s) that should call it, or correct the route's scope", r.Scope)})
			}
		}
		if len(out) == 0 {
			out = append(out, Result{Name: "route scopes", Status: Pass,
				Detail: fmt.Sprintf("%d route(s), each scope granted by a role", len(routes))})
		}
		return out
	}}
}

// ServiceCheck reports whether the service runs. state is systemd's view,
// as `systemctl is-enabled` and `is-active` print it ("" when systemd
// cannot be asked). Enabled but not active fails: nothing then answers
// agents or users, and nothing repairs the firewall.
func ServiceCheck(unit, enabled, active string) Check {
	return Check{Name: "service", Run: func(ctx context.Context) []Result {
		name := "service " + unit
		switch {
		case enabled == "" || active == "":
			return []Result{{Name: name, Status: Skip, Detail: "systemd cannot be asked (not booted with systemd?)"}}
		case active == "active" || active == "reloading":
			return []Result{{Name: name, Status: Pass, Detail: active + ", " + enabled}}
		case enabled == "enabled":
			return []Result{{Name: name, Status: Fail, Detail: "enabled but " + active + ": agents and users get no answer, and no one repairs the firewall",
				Fix: "systemctl start " + unit + "; if it fails: journalctl -u " + unit + " -n 50"}}
		}
		return []Result{{Name: name, Status: Warn, Detail: enabled + " and " + active, Fix: "systemctl enable --now " + unit}}
	}}
}
