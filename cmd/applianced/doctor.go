package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/hardening"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/netseg"
	"github.com/applianced/applianced/syslog"
	"github.com/applianced/applianced/vault"
)

// The unit doctor scores. It reads the daemon's state through the admin
// routes adminAuditTargets ({"targets": [syslog.TargetStatus]}) and
// netPathStatus (netseg.Status).
const (
	unitName = "applianced.service"
	unitPath = "/lib/systemd/system/applianced.service"
)

func cmdDoctor(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("doctor", "", "Check this host and the appliance: the unit's sandbox, file modes, the master key's\n"+
		"source, the audit chain, the vault's state, the domain controllers' certificates, syslog\n"+
		"delivery, the firewall, an egress probe, kernel settings, listening sockets, the clock\n"+
		"and agent credentials. Each line is pass, warn, fail or skip, with a one-line fix.\n"+
		"Exit 1 when any check fails.",
		"applianced doctor", "applianced doctor --json")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	rep := hardening.Run(ctx, doctorChecks(e, *cfgPath), 0)
	var err error
	if *asJSON {
		err = rep.WriteJSON(e.stdout)
	} else {
		err = rep.WriteText(e.stdout)
	}
	if err != nil {
		return e.fail("doctor", err)
	}
	if !rep.OK() {
		return exitFailure
	}
	return exitOK
}

// doctorChecks lists every check, host ones first. A config with errors
// still gets the host checks.
func doctorChecks(e *env, cfgPath string) []hardening.Check {
	cfg, cfgErr := config.Load(cfgPath)
	checks := []hardening.Check{configCheck(cfgPath, cfgErr)}
	checks = append(checks, hardening.UnitExposureCheck(unitName, unitPath))
	if cfg == nil {
		return append(checks, hardening.SysctlCheck("/proc"), hardening.ClockCheck())
	}
	keyFile := cfg.Vault.MasterKeyFile
	if keyFile == "" {
		keyFile = vault.DefaultMasterKeyFile
	}
	unitText := systemctlCat()
	sealed := strings.Contains(unitText, "LoadCredentialEncrypted=master.key:")
	client := admin.NewClient(cfg.Server.AdminSocket)
	checks = append(checks,
		hardening.FileModesCheck([]hardening.FileSpec{
			{Path: cfg.Path, Kind: hardening.ConfigFile},
			{Path: keyFile, Kind: hardening.KeyFile, Optional: sealed},
			{Path: cfg.Server.TLSKey, Kind: hardening.KeyFile},
			{Path: cfg.Server.StateDir, Kind: hardening.StateDir},
		}, serviceUID()),
		hardening.MasterKeyCheck(keyFile, unitText),
		hardening.JournalLimitCheck(cfg.Server.StateDir, int64(cfg.Audit.MaxBytes), cmp.Or(cfg.Audit.DiskFull, audit.DiskFullBlock)),
		auditChainCheck(cfg.Server.StateDir),
		vaultStateCheck(cfg.Server.StateDir, client),
	)
	if cfg.LDAP != nil {
		l := cfg.LDAP
		checks = append(checks, hardening.DCCheck(hardening.DCConfig{
			URLs: l.URLs, StartTLS: l.StartTLS, CAFile: l.CAFile, ServerName: l.ServerName,
			InsecurePlaintext: l.InsecurePlaintext, DialTimeout: l.DialTimeout.D(),
		}))
	}
	var ingress []hardening.PortRule
	for _, r := range cfg.Net.Ingress {
		proto := r.Proto
		if proto == "" {
			proto = "tcp"
		}
		for _, p := range r.Ports {
			ingress = append(ingress, hardening.PortRule{Proto: proto, Port: p})
		}
	}
	var agents []hardening.AgentAuth
	for _, a := range cfg.Agents {
		method := "unix"
		switch {
		case a.ClientSecretHash != "":
			method = "client_secret"
		case a.PublicKeyFile != "":
			method = "private_key_jwt"
		}
		agents = append(agents, hardening.AgentAuth{Name: a.Name, Method: method, UnixUser: a.UnixUser})
	}
	var tools []hardening.ToolCredential
	var routes []hardening.RouteScope
	for _, t := range cfg.Tools {
		tools = append(tools, hardening.ToolCredential{Tool: t.Name, Secret: t.Auth.Secret})
		for _, r := range t.Routes {
			routes = append(routes, hardening.RouteScope{Tool: t.Name, Route: r.Method + " " + r.Path, Scope: r.Scope})
		}
	}
	// A tool token carries scopes of the roles its agent holds.
	held := map[string]bool{}
	for _, a := range cfg.Agents {
		for _, r := range a.Roles {
			held[r] = true
		}
	}
	var granted []string
	for _, r := range cfg.Roles {
		if held[r.Name] {
			granted = append(granted, r.Scopes...)
		}
	}
	return append(checks,
		hardening.ServiceCheck(unitName, systemctlState("is-enabled"), systemctlState("is-active")),
		hardening.SyslogCheck(adminSyslog{client}),
		hardening.FirewallCheck(adminFirewall{client, cfg.Server.StateDir}),
		forwardLinksCheck(&cfg.Net, 0),
		hardening.EgressProbeCheck(hardening.DefaultEgressProbe),
		hardening.SysctlCheck("/proc"),
		hardening.ListeningCheck("/proc", ingress),
		hardening.ClockCheck(),
		hardening.AgentSecretCheck(agents),
		hardening.ToolCredentialCheck(tools, adminSecrets{client}),
		hardening.RouteScopeCheck(routes, granted),
	)
}

// auditChainCheck looks at the journal's chain from outside: the record
// beside it (audit.last) must name it once it holds entries, or a chain
// that replaces it would not name it; and each journal set aside in the
// state dir (audit.* directories) is named, with how to deliver what its
// targets may not have got.
func auditChainCheck(stateDir string) hardening.Check {
	const name = "audit chain"
	return hardening.Check{Name: name, Run: func(context.Context) []hardening.Result {
		dir := filepath.Join(stateDir, "audit")
		var out []hardening.Result
		chain, segs, err := audit.DirChain(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out = append(out, hardening.Result{Name: name, Status: hardening.Skip, Detail: "no journal yet in " + dir})
		case err != nil:
			out = append(out, hardening.Result{Name: name, Status: hardening.Warn, Detail: err.Error(),
				Fix: "run `applianced audit verify` and see the README on a damaged journal"})
		case segs == 0:
			out = append(out, hardening.Result{Name: name, Status: hardening.Skip, Detail: "no journal yet in " + dir})
		default:
			rc, seq, rerr := audit.RecordedChain(dir)
			fix := "check the state dir's free space and permissions; the daemon writes the record at each checkpoint and at a clean stop (audit.chain_record events say why it could not)"
			switch {
			case errors.Is(rerr, audit.ErrNoRecord):
				out = append(out, hardening.Result{Name: name, Status: hardening.Warn,
					Detail: "no record of the journal's chain (" + dir + ".last): a chain that replaced this journal would not name it", Fix: fix})
			case rerr != nil:
				out = append(out, hardening.Result{Name: name, Status: hardening.Warn, Detail: rerr.Error(), Fix: fix})
			case rc != chain:
				out = append(out, hardening.Result{Name: name, Status: hardening.Warn,
					Detail: fmt.Sprintf("the record names chain %q, the journal is chain %q: until a checkpoint records it, a chain that replaced this journal would name the one before", rc, chain), Fix: fix})
			default:
				out = append(out, hardening.Result{Name: name, Status: hardening.Pass,
					Detail: fmt.Sprintf("the journal is chain %q, recorded up to seq %d", chain, seq)})
			}
		}
		for _, a := range setAsideJournals(stateDir) {
			out = append(out, hardening.Result{Name: name, Status: hardening.Pass,
				Detail: fmt.Sprintf("a journal set aside: %s (chain %q); if its targets may not have got all of it: `applianced audit deliver %s`, and keep it until the receivers' files verify", a.dir, a.chain, a.dir)})
		}
		return out
	}}
}

// vaultStateCheck says whether vault.db is the file the daemon last
// closed. While the daemon runs it reports what the vault's opening
// compared (the admin status): a fail when the vault opened in another
// state than its last close (vault.db was replaced or edited while the
// daemon was down; the daemon recorded vault.state_changed), a warning
// when the run before recorded no close (a crash or a kill: nothing to
// compare with). While the daemon is stopped it compares vault.db with the
// journal's last close (read from the journal's newest segments, not the
// whole of it): a fail says the next start will find the vault changed.
func vaultStateCheck(stateDir string, client *admin.Client) hardening.Check {
	const name = "vault state"
	const fixChanged = "if an administrator put a backup in place by hand, tell the auditor (the journal records it as vault.state_changed); " +
		"otherwise investigate who replaced the file, check `applianced secret list` and rotate what it brought back"
	const fixUnverified = "see why the last run ended without a close (journalctl -u applianced: a crash, a full journal); if no one killed it on purpose, " +
		"find out who did and check `applianced secret list`; the next clean stop and start compare again"
	return hardening.Check{Name: name, Run: func(ctx context.Context) []hardening.Result {
		res := func(st hardening.Status, detail, fix string) []hardening.Result {
			return []hardening.Result{{Name: name, Status: st, Detail: detail, Fix: fix}}
		}
		var status struct {
			Check *vault.StateCheck `json:"vault_state_check"`
		}
		err := client.Call(ctx, "GET", "/admin/v1/status", nil, &status)
		switch {
		case err == nil && status.Check == nil:
			return res(hardening.Skip, "the running daemon does not report its vault's state (no vault open, or an older daemon)", "")
		case err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED):
			// Something answers on the admin socket, or it cannot be
			// reached for another reason: the daemon may be running, and
			// its journal and vault.db are its own.
			return res(hardening.Warn, "could not ask the daemon for its vault's state: "+err.Error(),
				"run doctor as root (or a member of the admin group) once the daemon is ready")
		case err == nil:
			c := status.Check
			switch c.Result {
			case vault.StateSame:
				return res(hardening.Pass, fmt.Sprintf("the running daemon opened the vault in the state it closed in (seq %d)", c.MarkSeq), "")
			case vault.StateChanged:
				return res(hardening.Fail, fmt.Sprintf("the running daemon opened the vault in another state (%.12s…) than it closed in (seq %d, %.12s…): "+
					"vault.db was replaced (an older copy put back) or edited while the daemon was down, and what was revoked or rotated since that copy may be back",
					c.State, c.MarkSeq, c.MarkState), fixChanged+". This check passes again after a clean stop and start")
			case vault.StateUnverified:
				return res(hardening.Warn, fmt.Sprintf("the run before this one recorded no close of the vault after its opening (%s): a crash, a kill, or a stop whose close the journal did not take, "+
					"so whether vault.db was changed meanwhile cannot be told", markSeq(c.MarkSeq)), fixUnverified)
			default:
				return res(hardening.Skip, "the daemon found no earlier state of the vault to compare with (a first start, or a journal set aside out of the state dir)", "")
			}
		}
		// The daemon is stopped (or does not answer): the file against
		// the journal's last record of it.
		dir := filepath.Join(stateDir, "audit")
		marks, err := audit.DirLastVaultMarks(ctx, dir, 1, doctorMarkSegments)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, audit.ErrNoSegments) {
			return res(hardening.Skip, "no journal yet in "+dir, "")
		}
		if err != nil {
			return res(hardening.Warn, "cannot read the vault's recorded states: "+err.Error(), "run `applianced audit verify` and see the README on a damaged journal")
		}
		state, serr := vault.FileState(filepath.Join(stateDir, vault.DefaultFile))
		if errors.Is(serr, vault.ErrLocked) {
			// Its admin socket is not up, yet the daemon has the vault
			// open: it is starting or stopping.
			return res(hardening.Warn, "the daemon has vault.db open but does not answer on its admin socket yet: it is starting or stopping", "run doctor again once it is ready")
		}
		if len(marks) == 0 {
			if _, segs, _ := audit.DirChain(dir); segs <= doctorMarkSegments {
				return res(hardening.Skip, "the journal records no state of the vault yet", "")
			}
			// A clean stop's close would be among the newest segments.
			marks = []audit.VaultMark{{Type: "vault.unseal"}}
		}
		m := marks[0]
		if m.Type != "vault.close" {
			return res(hardening.Warn, fmt.Sprintf("the daemon's last run recorded no close of the vault after its opening (%s): a crash, a kill, or a stop whose close the journal did not take, "+
				"so whether vault.db was changed since cannot be told", markSeq(m.Seq)), fixUnverified)
		}
		if serr != nil {
			return res(hardening.Warn, "cannot read vault.db's state: "+serr.Error(), "")
		}
		if state != m.State {
			return res(hardening.Fail, fmt.Sprintf("vault.db (%.12s…) is not in the state the daemon closed it in (seq %d, %.12s…): it was replaced (an older copy put back) "+
				"or edited since, and the next start will record vault.state_changed", state, m.Seq, m.State), fixChanged)
		}
		return res(hardening.Pass, fmt.Sprintf("vault.db is in the state the daemon closed it in (seq %d)", m.Seq), "")
	}}
}

// markSeq names the opening a state check found: its seq, or none when it
// lies further back than what was read.
func markSeq(seq uint64) string {
	if seq == 0 {
		return "further back than the journal's newest segments"
	}
	return fmt.Sprintf("seq %d", seq)
}

// doctorMarkSegments bounds how far back doctor reads the journal for the
// vault's last recorded state.
const doctorMarkSegments = 8

// forwardLinksCheck warns about each link of the host (of namespace nsFd,
// 0 for doctor's own) that [net] forward_from matches although it is a
// link of the LAN (a NIC, a bond, a VLAN, or a bridge holding one): the
// table applied before such a link appeared routes its hosts, and the next
// `net plan` is refused.
func forwardLinksCheck(cfg *netseg.Config, nsFd int) hardening.Check {
	const name = "forward_from links"
	return hardening.Check{Name: name, Run: func(ctx context.Context) []hardening.Result {
		probs, err := netseg.ForwardLinkProblems(cfg, nsFd)
		if err != nil {
			return []hardening.Result{{Name: name, Status: hardening.Skip, Detail: err.Error()}}
		}
		if len(probs) == 0 {
			return []hardening.Result{{Name: name, Status: hardening.Pass, Detail: "no link of the LAN matches [net] forward_from"}}
		}
		var out []hardening.Result
		for _, p := range probs {
			out = append(out, hardening.Result{Name: name, Status: hardening.Warn, Detail: p,
				Fix: "set [net] forward_from to the container and VM bridges by name, then `applianced net plan` and `applianced net apply`"})
		}
		return out
	}}
}

// adminSecrets asks the running daemon which secrets the vault holds
// (names and allowed tools, never values).
type adminSecrets struct{ c *admin.Client }

func (a adminSecrets) Secrets(ctx context.Context) ([]hardening.SecretInfo, error) {
	var reply secretListReply
	if err := a.c.Call(ctx, "GET", adminSecretList, nil, &reply); err != nil {
		return nil, err
	}
	out := make([]hardening.SecretInfo, 0, len(reply.Secrets))
	for _, s := range reply.Secrets {
		out = append(out, hardening.SecretInfo{Name: s.Name, AllowedTools: s.AllowedTools})
	}
	return out, nil
}

func configCheck(path string, err error) hardening.Check {
	return hardening.Check{Name: "config", Run: func(context.Context) []hardening.Result {
		name := "config " + path
		var ce *config.Error
		switch {
		case err == nil:
			return []hardening.Result{{Name: name, Status: hardening.Pass, Detail: "valid"}}
		case errors.As(err, &ce) && len(ce.Problems) > 0:
			return []hardening.Result{{Name: name, Status: hardening.Fail,
				Detail: fmt.Sprintf("%d error(s), first: %s", len(ce.Problems), ce.Problems[0]),
				Fix:    "run `applianced config check` and fix each line it names"}}
		}
		return []hardening.Result{{Name: name, Status: hardening.Fail, Detail: err.Error(), Fix: "run `applianced config check`"}}
	}}
}

// systemctlCat returns the unit with its drop-ins as systemd has them, or
// the shipped unit file when systemd is not running.
func systemctlCat() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "systemctl", "cat", "--no-pager", unitName).Output(); err == nil {
		return string(out)
	}
	b, _ := os.ReadFile(unitPath)
	return string(b)
}

// systemctlState is what `systemctl VERB applianced.service` prints
// (is-enabled, is-active), or "" when systemd cannot be asked.
func systemctlState(verb string) string {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "systemctl", verb, unitName).Output() // non-zero for "inactive", "disabled"
	return strings.TrimSpace(string(out))
}

// serviceUID is the applianced user's uid, or -1.
func serviceUID() int {
	u, err := user.Lookup("applianced")
	if err != nil {
		return -1
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return -1
	}
	return uid
}

// adminSyslog asks the running daemon for its forwarders' state.
type adminSyslog struct{ c *admin.Client }

func (a adminSyslog) SyslogTargets(ctx context.Context) ([]hardening.SyslogTarget, error) {
	var reply struct {
		Targets []syslog.TargetStatus `json:"targets"`
	}
	if err := a.c.Call(ctx, "GET", adminAuditTargets, nil, &reply); err != nil {
		return nil, err
	}
	out := make([]hardening.SyslogTarget, 0, len(reply.Targets))
	for _, t := range reply.Targets {
		out = append(out, hardening.SyslogTarget{Address: t.Address, Connected: t.Connected, Lag: t.Lag, LastError: t.LastError})
	}
	return out, nil
}

// adminFirewall asks the running daemon for the firewall's state against
// what it applied.
type adminFirewall struct {
	c        *admin.Client
	stateDir string
}

// FirewallDrift asks the daemon; when it cannot be reached, doctor reads
// the kernel itself against the saved state (it runs as root): a stopped
// daemon after a reboot means no table at all, and nothing to repair it.
func (a adminFirewall) FirewallDrift(ctx context.Context) (bool, []string, error) {
	var st netseg.Status
	err := a.c.Call(ctx, "GET", netPathStatus, nil, &st)
	if err == nil {
		return st.Applied, st.Drift, nil
	}
	applied, drift, kerr := netseg.CheckTable(a.stateDir, 0)
	if kerr != nil || !applied {
		return false, nil, err // never applied, or the kernel not readable either: the daemon's error says more
	}
	if len(drift) == 0 {
		return true, nil, nil
	}
	return !slices.Contains(drift, "table inet "+netseg.TableName+" is missing"),
		append(drift, "the daemon is not running to repair it ("+err.Error()+")"), nil
}

// hardenProcess protects the daemon before it reads a key: no core dumps,
// not dumpable, umask 077, memory locked when the unit permits it
// (LimitMEMLOCK=infinity), and a config file nobody else can write.
func hardenProcess(e *env, cfgPath string) error {
	a, err := hardening.Apply(nil)
	if err != nil {
		return err
	}
	if !a.MemoryLocked {
		fmt.Fprintf(e.stderr, "applianced serve: memory not locked: %s\n", a.MemoryLockSkipped)
	}
	if _, err := os.Lstat(cfgPath); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot read the config file %s: %v (name another with --config; the package installs /etc/applianced/applianced.toml)", cfgPath, err)
	}
	return hardening.CheckConfigFile(cfgPath)
}

// checkKeyFiles refuses to serve with the API's TLS key readable or
// replaceable by anyone but the service (the vault checks its own key).
func checkKeyFiles(cfg *config.File) error {
	if _, err := os.Lstat(cfg.Server.TLSKey); errors.Is(err, os.ErrNotExist) {
		return nil // `applianced init` makes it; loading it says it is missing
	}
	return hardening.CheckKeyFile(cfg.Server.TLSKey)
}
