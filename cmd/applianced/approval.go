package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/broker/dlp"
	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/broker/toolproxy/demotool"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

func cmdApprovalList(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("approval list", "", "List recent tool-call approvals, newest first, with the agent, the user it acts\n"+
		"for, the exact call and the status.",
		"applianced approval list", "applianced approval list --json")
	asJSON := fs.Bool("json", false, "print JSON")
	pending := fs.Bool("pending", false, "only approvals still waiting for a decision")
	if code, ok := e.parseArgs(fs, args, 0); !ok {
		return code
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
	if code, ok := e.parseArgs(fs, args, 1); !ok {
		return code
	}
	var a toolproxy.Approval
	id := strings.TrimSpace(fs.Arg(0))
	return e.show(ctx, *cfgPath, verb, http.MethodPost, path, toolproxy.ApprovalRef{ID: id}, &a, *asJSON, func() {
		forUser := ""
		if a.User != "" {
			forUser = " for " + a.User
		}
		fmt.Fprintf(e.stdout, "%s: %s %s%s by agent %s%s\n", a.Status, a.Method, a.Tool, a.Path, a.Agent, forUser)
	})
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
	scanner, err := dlp.New(cfg.DLP)
	if err != nil {
		return err
	}
	p, err := toolproxy.New(toolproxy.Options{
		Tools: cfg.Tools, Risk: cfg.Risk, DLP: scanner, StateDir: cfg.Server.StateDir,
		Verifier: brokerTools{b}, Policy: brokerTools{b}, Agents: b, Secrets: v, Keys: v, Users: d.directory,
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
		return p.ReloadWithDLP(cfg.Tools, cfg.Risk, cfg.DLP)
	})
	return nil
}

// brokerTools adapts the broker to the proxy's Verifier and PolicyChecker.
type brokerTools struct{ b *broker.Broker }

// Verify accepts only a token whose audience is this tool's
// (broker.ToolResource): a token for another tool, or the general agent
// token issued without a resource, is refused.
func (t brokerTools) Verify(ctx context.Context, raw, tool string) (toolproxy.Principal, error) {
	p, err := t.b.Verify(ctx, raw, t.b.ToolResource(tool))
	if err != nil {
		// Whom an authentic token was issued to goes into the audit record
		// of the refusal; why it is refused goes to the caller.
		te := &toolproxy.TokenError{Err: err}
		var he *broker.HolderError
		if errors.As(err, &he) {
			te.Holder = toolproxy.Principal{Agent: he.Agent, User: he.User, JTI: he.JTI, JTIHMAC: t.b.HashID(he.JTI)}
		}
		switch {
		case errors.Is(err, broker.ErrAudience):
			te.Err = fmt.Errorf("%w: %w", toolproxy.ErrWrongAudience, err)
		case errors.Is(err, broker.ErrExpired):
			te.Why = "expired: get a new one"
		case errors.Is(err, broker.ErrNotYetValid):
			te.Why = "is not valid yet: check this machine's clock and the client's"
		case errors.Is(err, broker.ErrRevoked):
			te.Why = "was revoked"
		case errors.Is(err, broker.ErrUserRevoked):
			te.Why = "was revoked with every token of its user"
		case errors.Is(err, broker.ErrAgentDisabled):
			te.Disabled = true
		case errors.Is(err, broker.ErrUnknownAgent):
			te.Why = "names an agent that is not configured"
		}
		return toolproxy.Principal{}, te
	}
	return toolproxy.Principal{Agent: p.Agent, User: p.User, UserID: p.UserID, Groups: p.Groups, Scopes: p.Scopes, JTI: p.JTI,
		JTIHMAC: t.b.HashID(p.JTI), Expiry: p.Expiry}, nil
}

// VerifyUser accepts only a user's own token, for a user deciding an
// approval with a TOTP code.
func (t brokerTools) VerifyUser(ctx context.Context, raw string) (toolproxy.Principal, error) {
	p, err := t.b.VerifyUser(ctx, raw)
	if err != nil {
		te := &toolproxy.TokenError{Err: err}
		switch {
		case errors.Is(err, broker.ErrExpired):
			te.Why = "expired: log in again"
		case errors.Is(err, broker.ErrRevoked), errors.Is(err, broker.ErrUserRevoked):
			te.Why = "was revoked: log in again"
		}
		return toolproxy.Principal{}, te
	}
	return toolproxy.Principal{User: p.User, UserID: p.UserID, Groups: p.Groups, JTI: p.JTI, JTIHMAC: t.b.HashID(p.JTI), Expiry: p.Expiry}, nil
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

// devTools starts the demo ticketing tool on loopback and adds its [[tool]]
// section: GET is free, DELETE needs a human approval, and the tool's API
// key sits in a 0600 file of the demo dir for the admin to put into the
// vault; the agent never sees it.
func devTools(ctx context.Context, dv *devEnv) error {
	srv, err := demotool.Start(ctx)
	if err != nil {
		return err
	}
	dv.cleanup = append(dv.cleanup, func() { srv.Close() })
	keyFile := filepath.Join(dv.dir, "demo-tool.key")
	if err := os.WriteFile(keyFile, srv.Secret, 0o600); err != nil {
		return err
	}
	tool := srv.Tool("tickets-key")
	var b strings.Builder
	fmt.Fprintf(&b, "# The demo ticketing tool (%s). Its key is in the vault as tickets-key.\n", srv.URL)
	fmt.Fprintf(&b, "[[tool]]\nname = %q\nbase_url = %q\ntimeout = \"5s\"\n", tool.Name, tool.BaseURL)
	fmt.Fprintf(&b, "auth = { type = %q, name = %q, secret = %q }\n", tool.Auth.Type, tool.Auth.Name, tool.Auth.Secret)
	for _, r := range tool.Routes {
		fmt.Fprintf(&b, "\n[[tool.route]]\nmethod = %q\npath = %q\nscope = %q\n", r.Method, r.Path, r.Scope)
		if r.Approval != "" {
			fmt.Fprintf(&b, "approval = %q\n", r.Approval)
		}
		if r.DLP != "" {
			fmt.Fprintf(&b, "dlp = %q\n", r.DLP)
		}
	}
	b.WriteString("\n[risk]\nrequests_per_minute = 60\nresponse_bytes_per_hour = \"10MB\"\non_exceed = \"step_up\"\n")
	dv.sections = append(dv.sections, b.String())
	api := "https://" + dv.listen + "/v1/tools/tickets"
	auth := `-H "Authorization: Bearer $AGENT_TOKEN"`
	dv.addTry("call a tool without holding its credential ($AGENT_TOKEN: tickets:* scopes, aud = the tickets tool, from resource=tickets)",
		dv.cli+" secret put tickets-key --type api_key --allow-tool tickets < "+keyFile+"    # the admin, once",
		"curl -sk "+auth+" "+api+"/tickets              # the proxy adds X-Api-Key on the way out",
		`curl -sk -H "Authorization: Bearer $(curl -s --unix-socket `+filepath.Join(dv.dir, "agent.sock")+
			` -d grant_type=client_credentials http://agent/oauth2/token | sed -E 's/.*"access_token":"([^"]+)".*/\1/')" `+api+
			"/tickets    # 403 wrong_audience: a token without resource=tickets",
		"curl -sk "+auth+" "+api+"/tickets/2            # the card number and IBAN in the notes come back redacted",
		"curl -sk -X DELETE "+auth+" "+api+"/tickets/3  # 403 approval_required, with an approval_id",
		dv.cli+" approval list",
		dv.cli+" approval approve APPROVAL_ID",
		"curl -sk -X DELETE "+auth+` -H "Approval-Id: APPROVAL_ID" `+api+"/tickets/3    # 200, exactly once",
		dv.cli+" audit tail -n 10                        # tool.call, approval.request, approval.approve",
		`grep -rc "$(cat `+keyFile+`)" `+filepath.Join(dv.dir, "state", "audit")+"    # 0 everywhere: the key is in no record",
	)
	dv.addTry("or alice decides for the agent acting for her ($OBO), as her chatbot would: her own token and her authenticator's code",
		dv.cli+" user totp enroll alice    # an otpauth:// URI for her authenticator app (| qrencode -t ansiutf8 shows a QR code)",
		`curl -sk -X DELETE -H "Authorization: Bearer $OBO" `+api+"/tickets/1    # 403 approval_required, with an approval_id",
		`curl -sk -H "Authorization: Bearer $USER_TOKEN" -d '{"user":"alice","code":"CODE_FROM_THE_APP","decision":"approve"}' https://`+dv.listen+"/v1/approvals/APPROVAL_ID",
		`curl -sk -X DELETE -H "Authorization: Bearer $OBO" -H "Approval-Id: APPROVAL_ID" `+api+"/tickets/1    # 200",
	)
	return nil
}
