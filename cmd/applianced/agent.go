package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

func cmdAgentList(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("agent list", "", "List the configured agents with their roles, how they authenticate, whether\n"+
		"they are enabled and when they last got a token.",
		"applianced agent list", "applianced agent list --json")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 0); !ok {
		return code
	}
	var out broker.AgentList
	return e.show(ctx, *cfgPath, "agent list", http.MethodGet, broker.AdminAgentList, nil, &out, *asJSON, func() {
		if len(out.Agents) == 0 {
			fmt.Fprintln(e.stdout, "no agents configured")
			return
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tSTATE\tROLES\tAUTH\tLAST SEEN")
		for _, a := range out.Agents {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Name, agentState(a), strings.Join(a.Roles, ","), strings.Join(a.Auth, ","), when(a.LastSeen))
		}
		tw.Flush()
	})
}

func agentState(a broker.AgentInfo) string {
	switch {
	case a.Enabled:
		return "enabled"
	case !a.DisabledUntil.IsZero():
		return "disabled until " + a.DisabledUntil.Local().Format(time.DateTime)
	default:
		return "disabled"
	}
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Local().Format(time.DateTime)
}

func cmdAgentShow(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("agent show", "NAME", "Show one agent: roles, scopes, authentication, the groups it may act for and\n"+
		"its state.", "applianced agent show ticket-bot")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 1); !ok {
		return code
	}
	var a broker.AgentInfo
	return e.show(ctx, *cfgPath, "agent show", http.MethodPost, broker.AdminAgentShow, broker.AgentRef{Name: fs.Arg(0)}, &a, *asJSON, func() {
		printAgent(e, a)
	})
}

func printAgent(e *env, a broker.AgentInfo) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name\t%s\n", a.Name)
	fmt.Fprintf(tw, "state\t%s\n", agentState(a))
	if a.Reason != "" {
		fmt.Fprintf(tw, "reason\t%s\n", a.Reason)
	}
	fmt.Fprintf(tw, "roles\t%s\n", strings.Join(a.Roles, ", "))
	fmt.Fprintf(tw, "scopes\t%s\n", strings.Join(a.Scopes, " "))
	fmt.Fprintf(tw, "auth\t%s\n", strings.Join(a.Auth, ", "))
	fmt.Fprintf(tw, "acts for groups\t%s\n", orDash(strings.Join(a.ActForGroups, ", ")))
	fmt.Fprintf(tw, "last seen\t%s\n", when(a.LastSeen))
	tw.Flush()
}

func cmdAgentDisable(ctx context.Context, e *env, args []string) int {
	return agentSetEnabled(ctx, e, args, false)
}

func cmdAgentEnable(ctx context.Context, e *env, args []string) int {
	return agentSetEnabled(ctx, e, args, true)
}

func agentSetEnabled(ctx context.Context, e *env, args []string, enable bool) int {
	verb, path := "agent disable", broker.AdminAgentDisable
	about := "Disable an agent at once: it gets no new tokens, and the tokens it holds stop\n" +
		"working at introspection and at the tool proxy. Survives restarts."
	if enable {
		verb, path = "agent enable", broker.AdminAgentEnable
		about = "Enable a disabled agent again. Tokens revoked with `token revoke` stay revoked."
	}
	fs, cfgPath := e.flags(verb, "NAME", about, "applianced "+verb+" ticket-bot")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 1); !ok {
		return code
	}
	var a broker.AgentInfo
	return e.show(ctx, *cfgPath, verb, http.MethodPost, path, broker.AgentRef{Name: fs.Arg(0)}, &a, *asJSON, func() {
		fmt.Fprintf(e.stdout, "%s: %s\n", a.Name, agentState(a))
	})
}

// openBroker opens the token broker: its state file in the state dir, its
// signing keys and the audit HMAC key in the vault, user login through the
// directory. It mounts the OAuth2 endpoints and /v1/login on the API (the
// HTTPS listener and the agent socket, whose connections it annotates with
// the peer's kernel credentials) and the agent and token verbs on the admin
// socket. It is a step of (*daemon).open after the vault and the directory:
//
//	{"broker", func(ctx, bg context.Context) error { var err error; d.broker, err = d.openBroker(ctx, bg, d.vault, d.directory); return err }},
func (d *daemon) openBroker(ctx, bg context.Context, v *vault.Vault, dir broker.DirectoryLogin) (*broker.Broker, error) {
	if v == nil {
		return nil, errors.New("the broker keeps its signing keys in the vault, which is not open")
	}
	cfg := d.config()
	st, err := broker.OpenStore(filepath.Join(cfg.Server.StateDir, "broker.db"))
	if err != nil {
		return nil, err
	}
	hasher, err := audit.NewHasher(ctx, v)
	if err != nil {
		st.Close()
		return nil, err
	}
	opts := broker.Options{
		Config: brokerConfig(cfg), Issuer: issuer(cfg), Keys: v, Store: st, Audit: d.journal, Hasher: hasher,
		Logger: d.log.With("component", "broker"),
	}
	if dir != nil {
		opts.Auth = broker.FromLDAP(dir)
	}
	b, err := broker.New(ctx, opts)
	if err != nil {
		st.Close()
		return nil, err
	}
	d.closers = append(d.closers, st.Close)
	h := b.Handler()
	for _, p := range []string{"/oauth2/", "/v1/login", "/.well-known/oauth-authorization-server", "/.well-known/jwks.json"} {
		d.api.Handle(p, h)
	}
	b.RegisterAdmin(d.admin)
	d.agentConnContext = broker.ConnContext
	d.reloaders = append(d.reloaders, func(_ context.Context, cfg *config.File) error {
		return b.Reload(brokerConfig(cfg))
	})
	d.goBackground(bg, func(ctx context.Context) { _ = b.Run(ctx) })
	return b, nil
}

// brokerConfig is the broker's part of the config file.
func brokerConfig(cfg *config.File) broker.Config {
	c := broker.Config{Tokens: cfg.Tokens, Roles: cfg.Roles, Agents: cfg.Agents, Policies: cfg.Policies}
	for _, t := range cfg.Tools {
		c.Tools = append(c.Tools, t.Name)
	}
	if cfg.LDAP != nil {
		for _, roles := range cfg.LDAP.GroupRoles {
			c.UserRoles = append(c.UserRoles, roles...)
		}
	}
	return c
}

// issuer is [tokens] issuer, or https:// and [server] listen.
func issuer(cfg *config.File) string {
	if cfg.Tokens.Issuer != "" {
		return cfg.Tokens.Issuer
	}
	return "https://" + cfg.Server.Listen
}

// devBroker adds the demo roles, a demo agent that is the user running
// `applianced dev` on the agent socket, the roles of the demo directory's
// groups, and the printout of getting a token, logging in and exchanging.
func devBroker(ctx context.Context, dv *devEnv) error {
	uid := os.Getuid()
	dv.sections = append(dv.sections, fmt.Sprintf(`# Tokens: roles, a demo agent (you, on the agent socket), and who may act for whom.
[tokens]
ttl = "5m"
max_ttl = "1h"

[[role]]
name = "support"
scopes = ["tickets:read", "tickets:create", "tickets:delete"]

[[role]]
name = "chat-user"
scopes = ["tickets:read", "tickets:create", "tickets:delete"]   # a delete waits for approval

[[agent]]
name = "demo-agent"
roles = ["support"]
unix_uid = %d                 # your uid: the kernel vouches for you on the agent socket
act_for_groups = ["ai-users"]

[ldap.group_roles]
"ai-users" = ["chat-user"]`, uid))
	sock := filepath.Join(dv.dir, "agent.sock")
	curl := "curl -s --unix-socket " + sock
	extract := `sed -E 's/.*"access_token":"([^"]+)".*/\1/'`
	dv.addTry("an agent token on the agent socket: no secret, your uid is the identity; resource names the one tool it is for",
		curl+" -d grant_type=client_credentials http://agent/oauth2/token    # general audience: introspection only, no tool takes it",
		"AGENT_TOKEN=$("+curl+" -d grant_type=client_credentials -d resource=tickets http://agent/oauth2/token | "+extract+")",
		curl+" -d grant_type=client_credentials -d resource=nosuch http://agent/oauth2/token    # invalid_target: no such tool")
	dv.addTry("log in as alice, then let the agent act for her",
		fmt.Sprintf("ALICE_PW='%s'", dv.users["alice"]),
		fmt.Sprintf(`USER_TOKEN=$(curl -sk https://%s/v1/login --data-urlencode username=alice --data-urlencode password="$ALICE_PW" | %s)`, dv.listen, extract),
		fmt.Sprintf(`OBO=$(%s -d grant_type=%s -d subject_token_type=%s -d subject_token="$USER_TOKEN" -d resource=tickets http://agent/oauth2/token | %s)`,
			curl, url.QueryEscape(broker.GrantTokenExchange), url.QueryEscape("urn:ietf:params:oauth:token-type:access_token"), extract),
		curl+` -d token="$OBO" http://agent/oauth2/introspect    # sub = alice, act.sub = demo-agent, aud = the tickets tool`,
		dv.cli+" agent list")
	dv.addTry("switch the agent off, and revoke a user's tokens, at once",
		dv.cli+" agent disable demo-agent",
		curl+" -d grant_type=client_credentials http://agent/oauth2/token    # unauthorized_client: the agent is disabled",
		dv.cli+" agent enable demo-agent",
		dv.cli+` token revoke --user alice && `+curl+` -d token="$OBO" http://agent/oauth2/introspect    # active: false`)
	return nil
}
