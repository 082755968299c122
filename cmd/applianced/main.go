// Command applianced is the appliance daemon and its admin CLI: one binary.
//
// Where a request goes, top-down:
//   - main.go (this file): the verb table; `applianced VERB ...` runs the
//     verb's function with its arguments.
//   - serve.go: `serve` loads the config, opens the daemon (daemon.go), binds
//     the HTTPS listener, the agent socket and the admin socket, and only
//     then tells systemd READY=1. Signals: SIGHUP reloads, SIGTERM drains.
//   - daemon.go: the components in the order they open (journal, vault,
//     directory, broker, tool proxy, forwarders, network) and the HTTP routes
//     each one mounts on the API mux and the admin mux.
//   - one file per area for its CLI verbs and admin handlers: secret.go,
//     vault.go, ldap.go, agent.go, token.go, approval.go, user.go, net.go,
//     auditcmd.go, doctor.go. Admin verbs talk to the running daemon over
//     the admin socket (internal/admin).
//
// Adding a verb: write `func cmdX(ctx context.Context, e *env, args []string) int`
// in the area's file and add one line to the table below (a verb with
// sub-verbs, like "secret put", is one line per sub-verb). Adding a
// component: a method `(d *daemon) openX(ctx, bg context.Context) error` in
// the area's file and one line in the steps of (*daemon).open; it mounts its
// HTTP routes on d.api / d.admin, appends to d.closers and d.reloaders, and
// runs loops with d.goBackground(bg, ...). Adding to `applianced dev`: a
// `func devX(ctx context.Context, dv *devEnv) error` in the area's file and
// one line in devSteps (dev.go); it starts its in-process service, appends
// TOML to dv.sections, registers dv.cleanup, and adds printout lines with
// dv.addTry.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// Exit codes of every verb.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	// exitNeedsAdmin (EX_CONFIG) is a daemon that cannot start until an
	// admin acts: a config with errors, a vault to upgrade. The unit does
	// not restart it (RestartPreventExitStatus=78): retrying cannot help.
	exitNeedsAdmin = 78
)

type verb struct {
	name    string // "secret put": words after "applianced"
	summary string
	run     func(ctx context.Context, e *env, args []string) int
}

// verbs is every command of the binary. The CLI contract is DESIGN.md's.
var verbs = []verb{
	{"serve", "run the daemon (systemd ExecStart)", cmdServe},
	{"dev", "all-in-one demo on loopback: no root, no AD, no firewall changes", cmdDev},
	{"init", "create the state dir, master key and API TLS certificate (never overwrites)", cmdInit},
	{"config check", "validate the config file; print every error with its line", cmdConfigCheck},
	{"config reload", "make the daemon read its config again; wait until it is in effect or refused", cmdConfigReload},
	{"version", "print the version, commit and Go version", cmdVersion},
	{"audit verify", "verify the audit journal (or syslog captures)", cmdAuditVerify},
	{"audit tail", "print the newest audit events; -f follows", cmdAuditTail},
	{"audit deliver", "deliver to the targets what they never got of a journal set aside (DIR)", cmdAuditDeliver},
	{"audit pubkey", "print the public key of the audit checkpoints, for auditors", cmdAuditPubkey},
	{"audit hash", "print the HMAC under which a secret value appears in audit events", cmdAuditHash},
	{"doctor", "check the host and the appliance: pass/warn/fail with a fix each", cmdDoctor},
	{"ldap test", "log a user in through the daemon; print DN, nested groups, roles or the exact denial reason", cmdLDAPTest},
	{"ldap unlock", "clear the login failures counted against a user or a client address", cmdLDAPUnlock},
	{"approval list", "list tool-call approvals", cmdApprovalList},
	{"approval approve", "approve one pending tool call", cmdApprovalApprove},
	{"approval deny", "deny one pending tool call", cmdApprovalDeny},
	{"user totp enroll", "print an otpauth:// URI for a user's authenticator", cmdUserTOTPEnroll},
	{"user totp status", "show a user's TOTP enrolment: wrong codes in a row, locked since when", cmdUserTOTPStatus},
	{"user totp unlock", "clear a user's TOTP lock after wrong codes, keeping the seed", cmdUserTOTPUnlock},
	{"agent list", "list agents with their state and last use", cmdAgentList},
	{"agent show", "show one agent's roles, scopes, authentication and state", cmdAgentShow},
	{"agent disable", "disable an agent at once (its tokens stop working)", cmdAgentDisable},
	{"agent enable", "enable a disabled agent", cmdAgentEnable},
	{"token revoke", "revoke tokens by --jti, --agent or --user, at once", cmdTokenRevoke},
	{"net plan", "show what net apply would change in the firewall and VLANs", cmdNetPlan},
	{"net apply", "apply the firewall and VLANs atomically; --confirm-within arms a rollback", cmdNetApply},
	{"net confirm", "keep an apply made with --confirm-within", cmdNetConfirm},
	{"net rollback", "put back the firewall and VLANs as before the last apply", cmdNetRollback},
	{"net status", "show the firewall's rules, counters and drift", cmdNetStatus},
	{"net down", "remove the appliance's firewall table and the VLANs it created", cmdNetDown},
	{"net restore", "put the applied firewall table back into the kernel, without the daemon (at boot)", cmdNetRestore},
	{"secret put", "store a secret (value from stdin, never argv)", cmdSecretPut},
	{"secret rotate", "store a new version of a secret (value from stdin)", cmdSecretRotate},
	{"secret list", "list secrets: metadata only, no command prints a value", cmdSecretList},
	{"secret delete", "delete a secret and all its versions", cmdSecretDelete},
	{"secret verify", "compare a candidate from stdin with a secret: match / no match", cmdSecretVerify},
	{"vault status", "show the key source, keyring term and counts", cmdVaultStatus},
	{"vault rekey", "start a new keyring term; --reencrypt moves everything to it", cmdVaultRekey},
	{"vault backup", "write an encrypted, consistent snapshot of the vault to FILE", cmdVaultBackup},
	{"vault restore", "replace the vault with a backup the master key opens", cmdVaultRestore},
	{"vault upgrade", "once, daemon stopped: upgrade a vault from before record MACs, then compact it", cmdVaultUpgrade},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, newEnv(), os.Args[1:])
	stop()
	os.Exit(code)
}

// run finds the verb named by the longest prefix of args and runs it.
func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(e, "")
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	best := -1
	for i, v := range verbs {
		words := strings.Fields(v.name)
		if len(words) <= len(args) && strings.Join(args[:len(words)], " ") == v.name {
			if best < 0 || len(words) > len(strings.Fields(verbs[best].name)) {
				best = i
			}
		}
	}
	if best < 0 {
		fmt.Fprintf(e.stderr, "applianced: unknown command %q\n\n", strings.Join(args, " "))
		usage(e, args[0])
		return exitUsage
	}
	v := verbs[best]
	return v.run(ctx, e, args[len(strings.Fields(v.name)):])
}

func usage(e *env, prefix string) {
	fmt.Fprintln(e.stderr, "applianced: credentials broker, audit trail and egress firewall for local AI agents")
	fmt.Fprintln(e.stderr, "\nUsage: applianced COMMAND [flags]   (every command takes -h)")
	fmt.Fprintln(e.stderr, "\nCommands:")
	vs := append([]verb(nil), verbs...)
	sort.SliceStable(vs, func(a, b int) bool { return vs[a].name < vs[b].name })
	for _, v := range vs {
		if prefix != "" && !strings.HasPrefix(v.name, prefix) {
			continue
		}
		fmt.Fprintf(e.stderr, "  %-22s %s\n", v.name, v.summary)
	}
	fmt.Fprintln(e.stderr, "\nExit codes: 0 ok, 1 failure, 2 usage.")
}
