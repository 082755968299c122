package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/applianced/applianced/broker/toolproxy"
)

func cmdUserTOTPEnroll(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("user totp enroll", "USER", "Create (or replace) USER's TOTP seed for approving their agents' tool calls, and\n"+
		"print the otpauth:// URI to load into their authenticator app. The URI holds the\n"+
		"seed: hand it to the user only. The seed is stored sealed in the state dir, bound\n"+
		"to the directory account that has the name now (--json shows its id): if the\n"+
		"name later passes to another account, that account must be enrolled again.",
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
