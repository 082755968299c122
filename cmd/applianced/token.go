package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/applianced/applianced/broker"
)

func cmdTokenRevoke(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("token revoke", "", "Revoke access tokens at once, everywhere the appliance checks them (introspection\n"+
		"and the tool proxy). Name exactly one of:\n"+
		"  --jti J       one token, by its id (from introspection)\n"+
		"  --agent NAME  every token the agent holds or acts with, issued until now\n"+
		"  --user NAME   every token of or for the user, and the user's sessions\n"+
		"  --account ID  every token of or for the directory account with that immutable id\n"+
		"                (the oid of its tokens, or the id `ldap test` prints), under any name\n"+
		"                it had, and its sessions; another account that has one of its names\n"+
		"                now keeps its own\n"+
		"New tokens are still issued afterwards; use `agent disable` to stop an agent.",
		"applianced token revoke --agent ticket-bot", "applianced token revoke --user alice",
		"applianced token revoke --account 6f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c")
	jti := fs.String("jti", "", "token id")
	agent := fs.String("agent", "", "agent `NAME`")
	user := fs.String("user", "", "user `NAME`")
	account := fs.String("account", "", "directory account `ID`")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 0); !ok {
		return code
	}
	n := 0
	for _, s := range []string{*jti, *agent, *user, *account} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		fmt.Fprintln(e.stderr, "applianced token revoke: name exactly one of --jti, --agent, --user and --account")
		fs.Usage()
		return exitUsage
	}
	req := broker.RevokeRequest{JTI: *jti, Agent: *agent, User: *user, Account: *account}
	var ans broker.RevokeAnswer
	if err := e.call(ctx, *cfgPath, http.MethodPost, broker.AdminTokenRevoke, req, &ans); err != nil {
		return e.fail("token revoke", err)
	}
	if *asJSON {
		e.printJSON(ans)
		return exitOK
	}
	switch {
	case *jti != "":
		fmt.Fprintf(e.stdout, "token %s revoked\n", *jti)
	case *agent != "":
		fmt.Fprintf(e.stdout, "every token of agent %s issued until now is revoked\n", *agent)
	case *account != "":
		fmt.Fprintf(e.stdout, "every token of account %s issued until now is revoked", *account)
		u := ans.User
		if u == nil {
			u = &broker.UserRevocation{}
		}
		if len(u.Names) > 0 {
			fmt.Fprintf(e.stdout, " (names: %s)", strings.Join(u.Names, ", "))
		}
		fmt.Fprintf(e.stdout, "; %d session(s) ended\n", u.SessionsEnded)
		if u.SessionsEnded == 0 && !u.HeldLiveToken {
			fmt.Fprintf(e.stderr, "applianced token revoke: warning: account %s had no session and no token that may still be live on this appliance\n", *account)
		}
	default:
		fmt.Fprintf(e.stdout, "every token of user %s issued until now is revoked", *user)
		if u := ans.User; u != nil {
			if u.SessionsEnded == 1 {
				fmt.Fprintln(e.stdout, "; 1 session ended")
			} else {
				fmt.Fprintf(e.stdout, "; %d sessions ended\n", u.SessionsEnded)
			}
			if len(u.AccountIDs) > 1 {
				fmt.Fprintf(e.stderr, "applianced token revoke: note: the name %s was held by several directory accounts (%s); "+
					"to reach one account under every name it had, use --account\n", *user, strings.Join(u.AccountIDs, ", "))
			}
			if u.SessionsEnded == 0 && !u.HeldLiveToken {
				fmt.Fprintf(e.stderr, "applianced token revoke: warning: %s had no session and no token that may still be live on this appliance; "+
					"if that is a misspelling, give the login name as the directory has it (e.g. alice, not CORP\\alice)\n", *user)
			}
		} else {
			fmt.Fprintln(e.stdout)
		}
	}
	return exitOK
}
