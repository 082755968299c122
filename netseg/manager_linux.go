package netseg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/applianced/applianced/audit"
	"golang.org/x/sys/unix"
)

// Options configures a Manager. Audit is required; zero values elsewhere
// mean the defaults noted.
type Options struct {
	// Audit records every apply, confirm, rollback, drift, down and blocked
	// traffic. An apply whose event cannot be recorded is undone.
	Audit audit.Appender
	// Logger receives operational messages. Default slog.Default().
	Logger *slog.Logger
	// StateDir keeps the applied and previous state across restarts
	// (file net-state.json, 0600). Empty keeps it in memory only.
	StateDir string
	// NetNSFd is the network namespace to work in, as an open file
	// descriptor; 0 means the daemon's own.
	NetNSFd int
	// SSHPorts are the local ports whose established sessions the lockout
	// check protects. Default: the Port lines of /etc/ssh/sshd_config, or 22.
	SSHPorts []int
	// NeedsOwners are the user ids whose sockets the appliance's own
	// egress (the Needs of Plan and Apply) is accepted from: the daemon's
	// and root's. Empty accepts it from any process on the host, agents
	// included.
	NeedsOwners []uint32
	// Resolver resolves host names in Needs. Default net.DefaultResolver.
	Resolver *net.Resolver
	// DriftInterval is how often the kernel is compared with the applied
	// state when no change notification came. Default 5s.
	DriftInterval time.Duration
	// LogInterval is the window over which blocked packets are aggregated
	// into one event per peer. Default 10s.
	LogInterval time.Duration
	// LogEventsPerInterval bounds the blocked-traffic events per window;
	// further peers are folded into one summary. Default 20.
	LogEventsPerInterval int
}

// ApplyOptions are the choices of one apply.
type ApplyOptions struct {
	// ConfirmWithin arms an automatic rollback unless Confirm is called in
	// time; 0 applies for good.
	ConfirmWithin time.Duration
	// Force applies even when the admin's SSH address would be locked out.
	Force bool
	// SSHConnection is the admin client's $SSH_CONNECTION ("client_ip
	// client_port server_ip server_port"); empty when not over SSH.
	SSHConnection string
	// Actor and RequestID go into the audit events.
	Actor     audit.Actor
	RequestID string
}

// applied is one state the Manager can put in the kernel.
type applied struct {
	Config Config         `json:"config"`
	Needs  []resolvedNeed `json:"needs"`
	// Owners are the uids the needs are accepted from (Options.NeedsOwners
	// at the apply); none: any process.
	Owners []uint32  `json:"owners,omitempty"`
	At     time.Time `json:"at"`
	rs     *ruleset
}

type savedState struct {
	Current     *applied  `json:"current"`
	Previous    *applied  `json:"previous"`
	HasPrevious bool      `json:"has_previous"`
	Pending     bool      `json:"pending"`
	Deadline    time.Time `json:"deadline"`
}

// Manager owns table inet applianced and the appliance's VLANs.
type Manager struct {
	opts Options
	log  *slog.Logger
	k    *nft
	l    *links

	mu      sync.Mutex
	cur     *applied // nil: no table of ours
	prev    *applied
	hasPrev bool
	pending *pendingConfirm
	agg     aggregator
	kick    chan struct{}
	group   chan uint16
}

type pendingConfirm struct {
	prev     *applied
	deadline time.Time
	timer    *time.Timer
	lastErr  string // why the automatic rollback failed, if it did
}

// New returns a Manager. It reads the saved state but does not touch the
// kernel; Run starts drift repair and the drop log.
func New(opts Options) (*Manager, error) {
	if opts.Audit == nil {
		return nil, errors.New("netseg: Options.Audit is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Resolver == nil {
		opts.Resolver = net.DefaultResolver
	}
	if opts.DriftInterval <= 0 {
		opts.DriftInterval = 5 * time.Second
	}
	if opts.LogInterval <= 0 {
		opts.LogInterval = 10 * time.Second
	}
	if opts.LogEventsPerInterval <= 0 {
		opts.LogEventsPerInterval = 20
	}
	m := &Manager{
		opts: opts, log: opts.Logger,
		k: &nft{nsFd: opts.NetNSFd}, l: &links{nsFd: opts.NetNSFd},
		kick: make(chan struct{}, 1), group: make(chan uint16, 1),
	}
	m.agg.max = opts.LogEventsPerInterval
	if err := m.load(); err != nil {
		return nil, err
	}
	return m, nil
}

// RestoreTable puts the table of the state saved in stateDir back into
// the kernel (of the namespace nsFd, 0 for the daemon's own) when the
// kernel's differs, and says what differed; nothing when no state was
// saved or the kernel already holds it. It needs no journal, so that
// `applianced serve` can call it first, before anything that can fail:
// nftables does not survive a reboot, and the egress filter must not wait
// for the vault, the directory or the first drift check. VLANs are left to
// the drift repair of Run. The caller records what was restored once its
// journal is open.
func RestoreTable(stateDir string, nsFd int) (changed []string, err error) {
	if stateDir == "" {
		return nil, nil
	}
	m := &Manager{opts: Options{StateDir: stateDir}, k: &nft{nsFd: nsFd}}
	if err := m.load(); err != nil {
		return nil, err
	}
	if m.cur == nil {
		return nil, nil
	}
	kt, err := m.k.read()
	if err != nil {
		return nil, err
	}
	changed = tableDrift(m.cur.rs, kt)
	if len(changed) == 0 {
		return nil, nil
	}
	if err := m.k.replace(m.cur.rs); err != nil {
		return changed, fmt.Errorf("netseg: restoring table inet %s from %s: %w", TableName, m.statePath(), err)
	}
	return changed, nil
}

// CheckTable compares the kernel's table (in namespace nsFd, 0 for the
// caller's) with the state saved in stateDir, without a Manager and
// without changing anything: for doctor, when the daemon cannot be asked.
// applied is false when no state was saved.
func CheckTable(stateDir string, nsFd int) (applied bool, drift []string, err error) {
	m := &Manager{opts: Options{StateDir: stateDir}, k: &nft{nsFd: nsFd}}
	if err := m.load(); err != nil {
		return false, nil, err
	}
	if m.cur == nil {
		return false, nil, nil
	}
	kt, err := m.k.read()
	if err != nil {
		return true, nil, err
	}
	return true, tableDrift(m.cur.rs, kt), nil
}

func (m *Manager) statePath() string {
	if m.opts.StateDir == "" {
		return ""
	}
	return filepath.Join(m.opts.StateDir, "net-state.json")
}

func (m *Manager) load() error {
	p := m.statePath()
	if p == "" {
		return nil
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netseg: read state: %w", err)
	}
	var s savedState
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("netseg: state file %s: %w", p, err)
	}
	for _, a := range []*applied{s.Current, s.Previous} {
		if a == nil {
			continue
		}
		if a.rs, err = buildRuleset(&a.Config, a.Needs, a.Owners); err != nil {
			return fmt.Errorf("netseg: state file %s: %w", p, err)
		}
	}
	m.cur, m.prev, m.hasPrev = s.Current, s.Previous, s.HasPrevious
	if s.Pending {
		m.pending = &pendingConfirm{prev: s.Previous, deadline: s.Deadline}
	}
	return nil
}

func (m *Manager) save() error {
	p := m.statePath()
	if p == "" {
		return nil
	}
	s := savedState{Current: m.cur, Previous: m.prev, HasPrevious: m.hasPrev}
	if m.pending != nil {
		s.Pending, s.Deadline, s.Previous = true, m.pending.deadline, m.pending.prev
	}
	b, err := json.MarshalIndent(&s, "", "  ")
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("netseg: write state: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("netseg: write state: %w", err)
	}
	return nil
}

// ConfigError lists every problem of a [net] section, with keys relative
// to the section. It wraps ErrInvalidConfig.
type ConfigError struct{ Fields []string }

func (e *ConfigError) Error() string {
	return ErrInvalidConfig.Error() + ": " + strings.Join(e.Fields, "; ")
}

func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// prepare validates cfg against itself and the kernel, resolves needs and
// builds the ruleset. It changes nothing.
func (m *Manager) prepare(ctx context.Context, cfg *Config, needs []Need) (*applied, error) {
	var fields []string
	for _, fe := range cfg.Validate() {
		fields = append(fields, fe.Error())
	}
	if len(fields) > 0 {
		return nil, &ConfigError{Fields: fields}
	}
	known, err := m.l.linkNames()
	if err != nil {
		return nil, err
	}
	for _, v := range cfg.VLANs {
		known = append(known, v.Name)
	}
	for _, rules := range []struct {
		kind string
		rs   []Rule
	}{{"egress", cfg.Egress}, {"ingress", cfg.Ingress}} {
		for i, r := range rules.rs {
			if r.Interface != "" && !containsStr(known, r.Interface) {
				fields = append(fields, fmt.Sprintf("%s[%d].interface: unknown interface %q (not a link and not a [[net.vlan]])", rules.kind, i, r.Interface))
			}
		}
	}
	pf, err := m.l.checkParents(cfg.VLANs)
	if err != nil {
		return nil, err
	}
	fields = append(fields, pf...)
	// Only here, at a plan or apply: drift repair and the restore at boot
	// put back what was applied, and must neither fail nor open anything.
	lp, err := m.l.forwardProblems(cfg)
	if err != nil {
		return nil, err
	}
	fields = append(fields, lp...)
	rn, err := m.resolve(ctx, needs)
	if err != nil {
		fields = append(fields, err.Error())
	}
	if len(fields) > 0 {
		return nil, &ConfigError{Fields: fields}
	}
	rs, err := buildRuleset(cfg, rn, m.opts.NeedsOwners)
	if err != nil {
		return nil, &ConfigError{Fields: []string{err.Error()}}
	}
	return &applied{Config: *cfg, Needs: rn, Owners: m.opts.NeedsOwners, rs: rs}, nil
}

func containsStr(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func (m *Manager) resolve(ctx context.Context, needs []Need) ([]resolvedNeed, error) {
	var out []resolvedNeed
	var errs []error
	for _, n := range needs {
		host, port, err := net.SplitHostPort(n.Address)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port", n.Origin, n.Address))
			continue
		}
		pn, err := strconv.ParseUint(port, 10, 16)
		if err != nil || pn == 0 {
			errs = append(errs, fmt.Errorf("%s: port %q must be between 1 and 65535", n.Origin, port))
			continue
		}
		if p := strings.ToLower(n.Proto); p != "tcp" && p != "udp" {
			errs = append(errs, fmt.Errorf("%s: proto %q must be tcp or udp", n.Origin, n.Proto))
			continue
		}
		rn := resolvedNeed{Need: n, Port: uint16(pn)}
		if a, err := netip.ParseAddr(host); err == nil {
			rn.Addrs = []netip.Addr{a.Unmap()}
		} else {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ips, err := m.opts.Resolver.LookupNetIP(rctx, "ip", host)
			cancel()
			if err != nil {
				hint := ""
				if m.cur != nil {
					// Our own table may be what stops the query.
					hint = " (the applied table lets DNS reach only the name servers the last apply knew: if they changed since, give addresses instead of names, or run `applianced net down` and apply again)"
				}
				errs = append(errs, fmt.Errorf("%s: resolve %s: %w%s", n.Origin, host, err, hint))
				continue
			}
			for _, ip := range ips {
				rn.Addrs = append(rn.Addrs, ip.Unmap())
			}
		}
		out = append(out, rn)
	}
	return out, errors.Join(errs...)
}

// lockout returns a reason when a applied would stop the admin's SSH
// address from making a new connection, or "".
// lockoutAll is the lockout check of an apply: the admin's own session
// (sshConn, from $SSH_CONNECTION, empty when unknown: sudo drops it) and
// every SSH session established now, whoever runs the apply. It returns
// why the apply would cut someone off, or "".
func (m *Manager) lockoutAll(a *applied, sshConn string) (string, error) {
	var reasons []string
	if sshConn != "" {
		r, err := m.lockout(a, sshConn)
		if err != nil {
			return "", err
		}
		if r != "" {
			reasons = append(reasons, r)
		}
	}
	r, err := m.sessionsLockout(a)
	if err != nil {
		return "", err
	}
	if r != "" {
		reasons = append(reasons, r)
	}
	return strings.Join(reasons, "; "), nil
}

// sessionsLockout checks the SSH sessions established now (the kernel's
// list of sockets, so it does not depend on the caller's environment):
// each one's client must still be able to connect again.
func (m *Manager) sessionsLockout(a *applied) (string, error) {
	ports := m.opts.SSHPorts
	if len(ports) == 0 {
		ports = sshdPorts(sshdConfig)
	}
	sessions, err := m.l.inboundSessions(ports)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPROTONOSUPPORT) {
		// A kernel without inet_diag (tcp_diag) cannot list sockets:
		// the check of $SSH_CONNECTION, when given, is all there is.
		m.log.Warn("netseg: cannot list established SSH sessions (kernel without tcp_diag); only $SSH_CONNECTION is checked for a lockout", "err", err)
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var cut []string
	seen := map[string]bool{}
	for _, s := range sessions {
		iface, err := m.l.ifaceOf(s.local.Addr())
		if err != nil {
			return "", err
		}
		if ingressAllows(&a.Config, iface, s.client.Unmap(), "tcp", int(s.local.Port())) {
			continue
		}
		k := fmt.Sprintf("%s to port %d on %s", s.client.Unmap(), s.local.Port(), orDefault(iface, "the interface holding "+s.local.Addr().String()))
		if !seen[k] {
			seen[k] = true
			cut = append(cut, k)
		}
	}
	if len(cut) == 0 {
		return "", nil
	}
	return "no ingress rule accepts tcp from " + strings.Join(cut, ", ") + ": the SSH sessions from there now, and any new login from there, would be cut", nil
}

func (m *Manager) lockout(a *applied, sshConn string) (string, error) {
	f := strings.Fields(sshConn)
	if len(f) != 4 {
		return "", fmt.Errorf("netseg: SSH_CONNECTION %q: want \"client_ip client_port server_ip server_port\"", sshConn)
	}
	client, err1 := netip.ParseAddr(f[0])
	server, err2 := netip.ParseAddr(f[2])
	port, err3 := strconv.Atoi(f[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return "", fmt.Errorf("netseg: SSH_CONNECTION %q: %w", sshConn, err)
	}
	iface, err := m.l.ifaceOf(server)
	if err != nil {
		return "", err
	}
	if ingressAllows(&a.Config, iface, client.Unmap(), "tcp", port) {
		return "", nil
	}
	return fmt.Sprintf("no ingress rule accepts tcp from %s to port %d on %s: your SSH session and any new login from there would be cut",
		client, port, orDefault(iface, "the interface holding "+server.String())), nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (m *Manager) audit(ctx context.Context, typ, outcome, reason string, actor audit.Actor, reqID string, details map[string]string) error {
	e := &audit.Event{
		Type: typ, Action: typ, Target: "inet " + TableName, Outcome: outcome, Reason: reason,
		Actor: actor, RequestID: reqID, Details: details,
	}
	if outcome == audit.OutcomeDenied || typ == "net.drift" || typ == "net.down" || typ == "net.rollback" {
		e.Severity = audit.SeverityWarn
	}
	if _, err := m.opts.Audit.Append(ctx, e); err != nil {
		return fmt.Errorf("netseg: audit %s: %w", typ, err)
	}
	return nil
}

// put makes the kernel hold a (nil: nothing of ours): VLANs first, then the
// table in one transaction. When the table is refused, the VLANs are put
// back as they were in before.
func (m *Manager) put(a, before *applied) ([]string, error) {
	var done []string
	var vlans []VLAN
	if a != nil {
		vlans = a.Config.VLANs
	}
	ch, err := m.l.ensure(vlans)
	done = append(done, ch...)
	if err == nil {
		ch, err = m.l.removeManaged(vlans)
		done = append(done, ch...)
	}
	if err == nil {
		if a == nil {
			err = m.k.remove()
		} else {
			err = m.k.replace(a.rs)
		}
	}
	if err != nil && len(done) > 0 {
		var bv []VLAN
		if before != nil {
			bv = before.Config.VLANs
		}
		if _, rerr := m.l.ensure(bv); rerr != nil {
			m.log.Error("netseg: restoring VLANs after a failed apply", "err", rerr)
		}
		if _, rerr := m.l.removeManaged(bv); rerr != nil {
			m.log.Error("netseg: restoring VLANs after a failed apply", "err", rerr)
		}
	}
	return done, err
}

// restore puts a back (nil: nothing of ours) after drift or for a
// rollback: the table first, on its own, so that a VLAN that cannot be
// made (its parent gone, a name taken) never leaves the host without its
// filter; then the VLANs. tableErr means nothing changed; vlanErr means
// the table is in place and the VLANs are not (all of them).
func (m *Manager) restore(a *applied) (done []string, tableErr, vlanErr error) {
	var vlans []VLAN
	if a == nil {
		tableErr = m.k.remove()
	} else {
		tableErr = m.k.replace(a.rs)
		vlans = a.Config.VLANs
	}
	if tableErr != nil {
		return nil, tableErr, nil
	}
	done, vlanErr = m.l.ensure(vlans)
	if vlanErr == nil {
		var ch []string
		ch, vlanErr = m.l.removeManaged(vlans)
		done = append(done, ch...)
	}
	return done, nil, vlanErr
}

// Apply makes the kernel match cfg and needs: VLANs ensured, the whole
// table replaced atomically. On any error the previous state is kept.
func (m *Manager) Apply(ctx context.Context, cfg *Config, needs []Need, ao ApplyOptions) (*Plan, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.prepare(ctx, cfg, needs)
	if err != nil {
		if aerr := m.audit(ctx, "net.apply", audit.OutcomeFailure, err.Error(), ao.Actor, ao.RequestID, nil); aerr != nil {
			return nil, errors.Join(err, aerr)
		}
		return nil, err
	}
	plan, err := m.plan(a)
	if err != nil {
		return nil, err
	}
	reason, err := m.lockoutAll(a, ao.SSHConnection)
	if err != nil {
		return nil, err
	}
	plan.Lockout = reason
	if reason != "" && !ao.Force {
		det := map[string]string{}
		if f := strings.Fields(ao.SSHConnection); len(f) > 0 {
			det["ssh_client"] = f[0]
		}
		if aerr := m.audit(ctx, "net.apply", audit.OutcomeDenied, reason, ao.Actor, ao.RequestID, det); aerr != nil {
			return nil, aerr
		}
		return plan, fmt.Errorf("%w: %s (use --force to apply anyway)", ErrLockout, reason)
	}
	before := m.cur
	if _, err := m.put(a, before); err != nil {
		if aerr := m.audit(ctx, "net.apply", audit.OutcomeFailure, err.Error(), ao.Actor, ao.RequestID, nil); aerr != nil {
			return nil, errors.Join(err, aerr)
		}
		return nil, err
	}
	a.At = time.Now().UTC()
	det := map[string]string{
		"changes": fmt.Sprint(len(plan.Changes)), "rules": fmt.Sprint(len(plan.Rules)),
		"summary": truncate(strings.Join(plan.Changes, "; "), 2000), "force": strconv.FormatBool(ao.Force),
	}
	// Flows the old rules let through and the new ones do not would run
	// on under "ct state established": they end now.
	maps.Copy(det, m.cutStaleFlows(before, a, plan))
	if ao.ConfirmWithin > 0 {
		det["confirm_within"] = ao.ConfirmWithin.String()
	}
	if plan.Lockout != "" {
		det["lockout_overridden"] = plan.Lockout
	}
	if err := m.audit(ctx, "net.apply", audit.OutcomeSuccess, "", ao.Actor, ao.RequestID, det); err != nil {
		if _, rerr := m.put(before, a); rerr != nil {
			m.log.Error("netseg: undoing an apply that could not be audited", "err", rerr)
		}
		return nil, err
	}
	// A pending confirmation keeps its original previous state: rollback
	// goes back to the last confirmed one.
	if m.pending != nil {
		m.pending.stop()
		before = m.pending.prev
		m.pending = nil
	}
	m.prev, m.hasPrev, m.cur = before, true, a
	if ao.ConfirmWithin > 0 {
		m.arm(before, ao.ConfirmWithin)
		plan.ConfirmBy = m.pending.deadline
	}
	m.signalGroup(a.Config.logGroup())
	return plan, m.save()
}

// stop cancels the automatic rollback; the timer is nil until Run arms a
// confirmation loaded from the state file.
func (p *pendingConfirm) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

func (m *Manager) arm(prev *applied, within time.Duration) {
	p := &pendingConfirm{prev: prev, deadline: time.Now().Add(within)}
	p.timer = time.AfterFunc(within, func() { m.expire(p) })
	m.pending = p
}

func (m *Manager) expire(p *pendingConfirm) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending != p {
		return // confirmed or superseded meanwhile
	}
	if err := m.rollbackLocked(ctx, audit.Actor{}, "", "not confirmed before "+p.deadline.UTC().Format(time.RFC3339), true); err != nil {
		// The kernel refused the previous table: try again, for as long
		// as it takes; Status shows the confirmation overdue meanwhile.
		m.log.Error("netseg: automatic rollback failed; trying again", "err", err, "in", rollbackRetry)
		p.lastErr = err.Error()
		p.timer = time.AfterFunc(rollbackRetry, func() { m.expire(p) })
	}
}

// rollbackRetry is how soon a failed automatic rollback is tried again.
var rollbackRetry = 10 * time.Second

// Confirm keeps an apply made with ConfirmWithin.
func (m *Manager) Confirm(ctx context.Context, actor audit.Actor, reqID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending == nil {
		return ErrNothingToConfirm
	}
	if time.Now().After(m.pending.deadline) {
		// The window closed: the rollback is due (and failing, or it
		// would have run). Keeping this state takes a new apply.
		why := ""
		if m.pending.lastErr != "" {
			why = " (it failed: " + m.pending.lastErr + ")"
		}
		return fmt.Errorf("%w: the window closed at %s and the automatic rollback is due%s; run `applianced net rollback`, or apply again to keep this config",
			ErrNothingToConfirm, m.pending.deadline.UTC().Format(time.RFC3339), why)
	}
	if err := m.audit(ctx, "net.confirm", audit.OutcomeSuccess, "", actor, reqID, nil); err != nil {
		return err
	}
	m.pending.stop()
	m.pending = nil
	return m.save()
}

// Rollback puts back the state before the last apply (the last confirmed
// one when a confirmation is pending).
func (m *Manager) Rollback(ctx context.Context, actor audit.Actor, reqID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rollbackLocked(ctx, actor, reqID, "asked for", false)
}

// rollbackLocked puts back the state before the last apply. auto marks
// the rollback of an apply not confirmed in time: that one is a safety net
// against a ruleset that cut the admin off, so it stays in effect even if
// it cannot be recorded (the failure is logged); one an admin asks for is
// undone then, as every action is that the journal cannot take.
func (m *Manager) rollbackLocked(ctx context.Context, actor audit.Actor, reqID, why string, auto bool) error {
	var target *applied
	switch {
	case m.pending != nil:
		target = m.pending.prev
	case m.hasPrev:
		target = m.prev
	default:
		return ErrNothingToRollback
	}
	_, err, verr := m.restore(target)
	if err != nil {
		if aerr := m.audit(ctx, "net.rollback", audit.OutcomeFailure, err.Error(), actor, reqID, map[string]string{"why": why}); aerr != nil {
			return errors.Join(err, aerr)
		}
		return err
	}
	det := map[string]string{"why": why, "to": "no table"}
	if target != nil {
		det["to"] = "state applied at " + target.At.Format(time.RFC3339)
	}
	maps.Copy(det, m.cutStaleFlows(m.cur, target, &Plan{}))
	if verr != nil {
		// The table is back: the rollback's point. The VLANs are said.
		det["vlans_not_restored"] = truncate(verr.Error(), 500)
		m.log.Error("netseg: rollback: the table is back, the VLANs are not", "err", verr)
	}
	// As for Apply: a rollback an admin asked for that cannot be recorded
	// is undone, and the state (a pending confirmation and its timer
	// included) stays as it was. The automatic one stays.
	if err := m.audit(ctx, "net.rollback", audit.OutcomeSuccess, "", actor, reqID, det); err != nil {
		if !auto {
			if _, rerr := m.put(m.cur, target); rerr != nil {
				m.log.Error("netseg: undoing a rollback that could not be audited", "err", rerr)
			}
			return err
		}
		m.log.Error("netseg: automatic rollback done, but it could not be recorded in the audit journal", "err", err, "why", why)
	}
	if m.pending != nil {
		m.pending.stop()
		m.pending = nil
	}
	m.cur, m.prev, m.hasPrev = target, nil, false
	return m.save()
}

// Down removes our table and the VLANs we created. Rollback afterwards
// puts them back.
func (m *Manager) Down(ctx context.Context, actor audit.Actor, reqID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	done, err := m.put(nil, m.cur)
	if err != nil {
		if aerr := m.audit(ctx, "net.down", audit.OutcomeFailure, err.Error(), actor, reqID, nil); aerr != nil {
			return errors.Join(err, aerr)
		}
		return err
	}
	// As for Apply: a down that cannot be recorded is undone, so the egress
	// filter never goes away unrecorded.
	if err := m.audit(ctx, "net.down", audit.OutcomeSuccess, "", actor, reqID, map[string]string{"vlans": strings.Join(done, "; ")}); err != nil {
		if m.cur != nil {
			if _, rerr := m.put(m.cur, nil); rerr != nil {
				m.log.Error("netseg: undoing a down that could not be audited", "err", rerr)
			}
		}
		return err
	}
	if m.pending != nil {
		m.pending.stop()
		m.pending = nil
	}
	if m.cur != nil {
		m.prev, m.hasPrev = m.cur, true
	}
	m.cur = nil
	return m.save()
}

// Plan reports what Apply would change, in words, without changing
// anything. It also says whether the apply would cut an SSH session
// established now, or the admin's own ($SSH_CONNECTION) (Plan.Lockout).
func (m *Manager) Plan(ctx context.Context, cfg *Config, needs []Need, sshConnection string) (*Plan, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, err := m.prepare(ctx, cfg, needs)
	if err != nil {
		return nil, err
	}
	p, err := m.plan(a)
	if err != nil {
		return nil, err
	}
	if p.Lockout, err = m.lockoutAll(a, sshConnection); err != nil {
		return nil, err
	}
	return p, nil
}
