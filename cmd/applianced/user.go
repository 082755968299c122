package main

import (
	"context"
	"fmt"
	"net/http"
	"text/tabwriter"

	"github.com/applianced/applianced/broker/toolproxy"
)

func cmdUserTOTPEnroll(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("user totp enroll", "USER", "Create (or replace) USER's TOTP seed for approving their agents' tool calls, and\n"+
		"print the otpauth:// URI to load into their authenticator app. The URI holds the\n"+
		"seed: hand it to the user only. The seed is stored sealed in the state dir, bound\n"+
		"to the directory account that has the name now (--json shows its id): if the\n"+
		"name later passes to another account, that account must be enrolled again.\n"+
		"For a user locked out by wrong codes who still has the authenticator, use\n"+
		"`applianced user totp unlock USER` instead: it keeps the seed.",
		"applianced user totp enroll alice", "applianced user totp enroll alice | qrencode -t ansiutf8")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 1); !ok {
		return code
	}
	var out toolproxy.EnrollAnswer
	return e.show(ctx, *cfgPath, "user totp enroll", http.MethodPost, toolproxy.AdminTOTPEnroll, toolproxy.EnrollRequest{User: fs.Arg(0)}, &out, *asJSON, func() {
		fmt.Fprintln(e.stdout, out.URI)
	})
}

// cmdUserTOTPStatus is `applianced user totp status USER`.
func cmdUserTOTPStatus(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("user totp status", "USER", "Show USER's TOTP enrolment: the directory account the name resolves to now,\n"+
		"whether it is enrolled and since when, the wrong codes in a row counted against\n"+
		"it, and whether it is locked and since when. Never the seed. A user who is not\n"+
		"enrolled is a state, not an error (exit 0; --json says \"enrolled\": false).",
		"applianced user totp status alice", "applianced user totp status --json alice")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 1); !ok {
		return code
	}
	var st toolproxy.TOTPStatus
	return e.show(ctx, *cfgPath, "user totp status", http.MethodPost, toolproxy.AdminTOTPStatus, toolproxy.UserRef{User: fs.Arg(0)}, &st, *asJSON, func() {
		printTOTPStatus(e, st)
	})
}

func printTOTPStatus(e *env, st toolproxy.TOTPStatus) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "user\t%s\n", st.User)
	fmt.Fprintf(tw, "account id\t%s\n", st.AccountID)
	if !st.Enrolled {
		fmt.Fprintf(tw, "enrolled\tno (applianced user totp enroll %s)\n", st.User)
		switch {
		case st.ByNameOnly:
			fmt.Fprintf(tw, "note\tan enrolment stored under the name by a version before account ids is no longer accepted\n")
		case st.OtherAccount:
			fmt.Fprintf(tw, "note\tthe enrolment under this name belongs to another account that had it\n")
		}
		tw.Flush()
		return
	}
	fmt.Fprintf(tw, "enrolled\tyes, %s\n", when(st.EnrolledAt))
	fmt.Fprintf(tw, "wrong codes in a row\t%d\n", st.Failures)
	switch {
	case !st.Locked:
		fmt.Fprintf(tw, "locked\tno\n")
	case st.LockedAt.IsZero():
		fmt.Fprintf(tw, "locked\tyes, since a time not recorded (applianced user totp unlock %s)\n", st.User)
	default:
		fmt.Fprintf(tw, "locked\tyes, since %s (applianced user totp unlock %s)\n", when(st.LockedAt), st.User)
	}
	tw.Flush()
}

// cmdUserTOTPUnlock is `applianced user totp unlock USER`.
func cmdUserTOTPUnlock(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("user totp unlock", "USER", "Clear the lock that too many wrong codes in a row put on USER's TOTP, and the\n"+
		"count of them, keeping the seed: the authenticator the user has works again at\n"+
		"once. Recorded in the audit trail before it takes effect. An account that is\n"+
		"not locked is left as it is, its count included (exit 0). For a lost\n"+
		"authenticator, enroll the user again (applianced user totp enroll USER).",
		"applianced user totp unlock alice")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 1); !ok {
		return code
	}
	var out toolproxy.TOTPUnlock
	return e.show(ctx, *cfgPath, "user totp unlock", http.MethodPost, toolproxy.AdminTOTPUnlock, toolproxy.UserRef{User: fs.Arg(0)}, &out, *asJSON, func() {
		if out.Cleared == 0 {
			fmt.Fprintf(e.stdout, "%s: TOTP is not locked (%d wrong codes in a row); nothing changed\n", out.User, out.Failures)
			return
		}
		fmt.Fprintf(e.stdout, "%s: TOTP unlocked (%d wrong codes cleared); the same authenticator works again\n", out.User, out.Cleared)
	})
}
