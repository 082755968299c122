package main

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/broker/dlp"
	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

func cmdApprovalList(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("approval list", "", "List recent tool-call approvals, newest first, with the agent, the user it acts\n"+
		"for, the exact call and the status.",
		"applianced approval list", "applianced approval list --json")
	asJSON := fs.Bool("json", false, "print JSON")
	pending := fs.Bool("pending", false, "only approvals still waiting for a decision")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	var out toolproxy.ApprovalList
	if err := e.call(ctx, *cfgPath, http.MethodGet, toolproxy.AdminApprovalList, nil, &out); err != nil {
		return e.fail("approval list", err)
	}
	if *pending {
		kept := out.Approvals[:0]
		for _, a := range out.Approvals {
			if a.Status == toolproxy.StatusPending {
				kept = append(kept, a)
			}
		}
		out.Approvals = kept
	}
	if *asJSON {
		e.printJSON(out)
		return exitOK
	}
	if len(out.Approvals) == 0 {
		fmt.Fprintln(e.stdout, "no approvals")
		return exitOK
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tAGENT\tUSER\tCALL\tEXPIRES\tREASON")
	for _, a := range out.Approvals {
		user := a.User
		if user == "" {
			user = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s %s%s\t%s\t%s\n", a.ID, a.Status, a.Agent, user, a.Method, a.Tool, a.Path,
			a.Expires.Local().Format(time.DateTime), a.Reason)
	}
	tw.Flush()
	return exitOK
}

func cmdApprovalApprove(ctx context.Context, e *env, args []string) int {
	return approvalDecide(ctx, e, args, true)
}

func cmdApprovalDeny(ctx context.Context, e *env, args []string) int {
	return approvalDecide(ctx, e, args, false)
}

func approvalDecide(ctx context.Context, e *env, args []string, approve bool) int {
	verb, path := "approval deny", toolproxy.AdminApprovalDeny
	about := "Deny a pending tool-call approval: the waiting call stays refused."
	if approve {
		verb, path = "approval approve", toolproxy.AdminApprovalApprove
		about = "Approve a pending tool-call approval. The agent may then make exactly that call\n" +
			"(same agent, user, method, path, query and body) once, before the approval expires."
	}
	fs, cfgPath := e.flags(verb, "ID", about, "applianced "+verb+" 3f9c0e6a4b2d4c1e8f7a6b5c4d3e2f10")
	asJSON := fs.Bool("json", false, "print the decided approval as JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 1) {
		return exitUsage
	}
	var a toolproxy.Approval
	id := strings.TrimSpace(fs.Arg(0))
	if err := e.call(ctx, *cfgPath, http.MethodPost, path, toolproxy.ApprovalRef{ID: id}, &a); err != nil {
		return e.fail(verb, err)
	}
	if *asJSON {
		e.printJSON(a)
		return exitOK
	}
	fmt.Fprintf(e.stdout, "%s: %s %s%s by %s for %s\n", a.Status, a.Method, a.Tool, a.Path, a.Agent, orDash(a.User))
	return exitOK
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// mountToolProxy opens the credential-injection proxy on top of the broker
// (tokens, policies, the agents' kill switch) and the vault (the tools'
// credentials, the key sealing TOTP seeds), and mounts /v1/tools/ and
// /v1/approvals/ on the API and the approval and TOTP verbs on the admin
// socket. It is a step of (*daemon).open after the broker:
//
//	{"tool proxy", func(ctx, bg context.Context) error { return d.mountToolProxy(d.broker, d.vault) }},
func (d *daemon) mountToolProxy(b *broker.Broker, v *vault.Vault) error {
	cfg := d.config()
	scanner, err := dlp.New(dlp.Config{})
	if err != nil {
		return err
	}
	p, err := toolproxy.New(toolproxy.Options{
		Tools: cfg.Tools, Risk: cfg.Risk, DLP: scanner, StateDir: cfg.Server.StateDir,
		Verifier: brokerTools{b}, Policy: brokerTools{b}, Agents: b, Secrets: v, Keys: v,
		// Audit details (paths, reasons) pass DLP before the journal.
		Audit:  &dlp.Appender{Next: d.journal, Scanner: scanner},
		Logger: d.log.With("component", "toolproxy"),
	})
	if err != nil {
		return err
	}
	d.api.Handle("/v1/tools/", p)
	d.api.Handle("/v1/approvals/", p)
	p.RegisterAdmin(d.admin)
	d.closers = append(d.closers, p.Close)
	d.reloaders = append(d.reloaders, func(_ context.Context, cfg *config.File) error {
		return p.Reload(cfg.Tools, cfg.Risk)
	})
	return nil
}

// brokerTools adapts the broker to the proxy's Verifier and PolicyChecker.
type brokerTools struct{ b *broker.Broker }

// Verify accepts the broker's agent tokens, whose audience is the tool
// proxy as a whole, or a token whose audience names this tool.
func (t brokerTools) Verify(ctx context.Context, raw, tool string) (toolproxy.Principal, error) {
	p, err := t.b.Verify(ctx, raw, t.b.ToolAudience())
	if err != nil {
		if p, err = t.b.Verify(ctx, raw, t.b.ToolAudience()+"/"+tool); err != nil {
			return toolproxy.Principal{}, err
		}
	}
	return toolproxy.Principal{Agent: p.Agent, User: p.User, Groups: p.Groups, Scopes: p.Scopes, JTI: p.JTI, Expiry: p.Expiry}, nil
}

// Allow evaluates the [[policy]] rules; the agent socket counts as
// 127.0.0.1, as for token issuance.
func (t brokerTools) Allow(_ context.Context, r toolproxy.PolicyRequest) (bool, string, error) {
	src := r.Source
	if !src.IsValid() {
		src = netip.MustParseAddr("127.0.0.1")
	}
	dec := t.b.Authorize(broker.AccessRequest{Agent: r.Agent, User: r.User, UserGroups: r.Groups, Scope: r.Scope, Source: src, Time: r.Time})
	return dec.Allowed, dec.Reason, nil
}
