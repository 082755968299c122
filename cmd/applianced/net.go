package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/netseg"
)

// Admin routes of the network verbs.
const (
	netPathPlan     = "/admin/v1/net/plan"
	netPathApply    = "/admin/v1/net/apply"
	netPathConfirm  = "/admin/v1/net/confirm"
	netPathRollback = "/admin/v1/net/rollback"
	netPathStatus   = "/admin/v1/net/status"
	netPathDown     = "/admin/v1/net/down"
)

// netApplyRequest is the body of plan and apply.
type netApplyRequest struct {
	ConfirmWithin string `json:"confirm_within,omitempty"` // Go duration; "" applies for good
	Force         bool   `json:"force,omitempty"`
	SSHConnection string `json:"ssh_connection,omitempty"` // the admin client's $SSH_CONNECTION
}

// netNeeds derives the egress the appliance itself needs from the rest of
// the config: its directory servers, audit targets and tool upstreams.
func netNeeds(f *config.File) []netseg.Need {
	var out []netseg.Need
	add := func(raw, origin string, defPorts map[string]string, protos map[string]string) {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" {
			return
		}
		proto, ok := protos[u.Scheme]
		if !ok {
			return // unix sockets and the like need no egress
		}
		port := u.Port()
		if port == "" {
			port = defPorts[u.Scheme]
		}
		if port == "" {
			return
		}
		out = append(out, netseg.Need{Address: net.JoinHostPort(u.Hostname(), port), Proto: proto, Origin: origin})
	}
	if f.LDAP != nil {
		for i, u := range f.LDAP.URLs {
			add(u, fmt.Sprintf("ldap.urls[%d]", i), map[string]string{"ldaps": "636", "ldap": "389"}, map[string]string{"ldaps": "tcp", "ldap": "tcp"})
		}
	}
	for i, s := range f.Audit.Syslog {
		add(s.Address, fmt.Sprintf("audit.syslog[%d].address", i), map[string]string{"tls": "6514", "tcp": "514", "udp": "514", "relp": "2514", "relp+tls": "2514"},
			map[string]string{"tls": "tcp", "tcp": "tcp", "udp": "udp", "relp": "tcp", "relp+tls": "tcp"})
	}
	for i, t := range f.Tools {
		add(t.BaseURL, fmt.Sprintf("tool[%d].base_url", i), map[string]string{"https": "443", "http": "80"}, map[string]string{"https": "tcp", "http": "tcp"})
	}
	return out
}

// Where the host's name servers are listed: the resolver's file, and
// systemd-resolved's list of its upstream servers when the first names
// only its local stub.
const (
	resolvConf   = "/etc/resolv.conf"
	resolvedConf = "/run/systemd/resolve/resolv.conf"
)

// resolverNeeds is DNS to the host's name servers (udp and tcp 53): the
// appliance resolves its directory servers', SIEM's and tools' names, at
// plan time and when it connects. Name servers on loopback (a local stub
// or cache) need no egress of theirs here; systemd-resolved's upstream
// servers are read from its own list. A cache like dnsmasq or unbound
// that runs as its own user needs an [[net.egress]] rule of its own.
func resolverNeeds(resolvConf, resolvedConf string) []netseg.Need {
	servers := nameservers(resolvConf)
	origin := resolvConf
	if len(servers) == 0 && slices.ContainsFunc(nameserverLines(resolvConf), func(a netip.Addr) bool { return a.IsLoopback() }) {
		servers, origin = nameservers(resolvedConf), resolvedConf
	}
	var out []netseg.Need
	for _, a := range servers {
		for _, proto := range []string{"udp", "tcp"} {
			out = append(out, netseg.Need{Address: netip.AddrPortFrom(a, 53).String(), Proto: proto, Origin: origin + " nameserver"})
		}
	}
	return out
}

// nameservers are the non-loopback nameserver lines of a resolv.conf.
func nameservers(path string) []netip.Addr {
	var out []netip.Addr
	for _, a := range nameserverLines(path) {
		if !a.IsLoopback() {
			out = append(out, a)
		}
	}
	return out
}

func nameserverLines(path string) []netip.Addr {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			// A link-local server carries its zone ("fe80::1%eth0").
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Zone() == "" {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}

// openNet opens the network manager: it keeps the applied firewall and
// VLANs in place (drift repair) and audits dropped traffic. It applies
// nothing by itself; `net apply` does.
func (d *daemon) openNet(ctx, bg context.Context) error {
	// The appliance's own egress (directory, SIEM, tools' upstreams) is
	// for this process and root (doctor, the CLI), not for every user on
	// the AI server: an agent must not reach the directory or the SIEM
	// around the appliance.
	owners := []uint32{uint32(os.Geteuid())}
	if owners[0] != 0 {
		owners = append(owners, 0)
	}
	// systemd-resolved asks the upstream name servers for the daemon
	// (resolverNeeds), as its own user.
	if u, err := user.Lookup("systemd-resolve"); err == nil {
		if id, err := strconv.ParseUint(u.Uid, 10, 32); err == nil && !slices.Contains(owners, uint32(id)) {
			owners = append(owners, uint32(id))
		}
	}
	m, err := netseg.New(netseg.Options{Audit: d.journal, Logger: d.log.With("component", "netseg"), StateDir: d.config().Server.StateDir,
		NeedsOwners: owners})
	if err != nil {
		return err
	}
	if len(d.netRestored) > 0 {
		// Done before the journal was open (serve's first step); it is
		// recorded as the drift repair it was.
		if _, err := d.journal.Append(ctx, &audit.Event{Type: "net.drift", Severity: audit.SeverityWarn, Action: "net.drift",
			Target: "inet " + netseg.TableName, Outcome: audit.OutcomeSuccess,
			Details: map[string]string{"changed": strings.Join(d.netRestored, "; "), "repaired": "true", "trigger": "start"}}); err != nil {
			return err
		}
	}
	d.goBackground(bg, func(ctx context.Context) {
		if err := m.Run(ctx); err != nil {
			d.log.Warn("network drift repair and drop logging stopped (they need CAP_NET_ADMIN)", "err", err)
		}
	})
	h := &netHandlers{d: d, m: m}
	d.admin.HandleFunc("POST "+netPathPlan, h.plan)
	d.admin.HandleFunc("POST "+netPathApply, h.apply)
	d.admin.HandleFunc("POST "+netPathConfirm, h.simple(m.Confirm))
	d.admin.HandleFunc("POST "+netPathRollback, h.simple(m.Rollback))
	d.admin.HandleFunc("POST "+netPathDown, h.simple(m.Down))
	d.admin.HandleFunc("GET "+netPathStatus, h.status)
	return nil
}

type netHandlers struct {
	d *daemon
	m *netseg.Manager
}

// load reads the config file as it is now on disk: a plan or apply always
// reflects what the admin just edited, with every problem and its line.
func (h *netHandlers) load(w http.ResponseWriter) (*config.File, bool) {
	f, err := config.Load(h.d.config().Path)
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "invalid_config", err.Error())
		return nil, false
	}
	return f, true
}

func netError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, netseg.ErrInvalidConfig), errors.Is(err, netseg.ErrNo8021Q):
		admin.WriteError(w, http.StatusBadRequest, "invalid_config", err.Error())
	case errors.Is(err, netseg.ErrLockout):
		admin.WriteError(w, http.StatusConflict, "lockout", err.Error())
	case errors.Is(err, netseg.ErrNothingToConfirm), errors.Is(err, netseg.ErrNothingToRollback):
		admin.WriteError(w, http.StatusConflict, "nothing_to_do", err.Error())
	case errors.Is(err, audit.ErrClosed), errors.Is(err, audit.ErrUnwritable), errors.Is(err, audit.ErrDiskLimit):
		admin.WriteError(w, http.StatusServiceUnavailable, "audit_unavailable", err.Error())
	default:
		admin.WriteError(w, http.StatusInternalServerError, "server_error", err.Error())
	}
}

func (h *netHandlers) plan(w http.ResponseWriter, r *http.Request) {
	var req netApplyRequest
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	f, ok := h.load(w)
	if !ok {
		return
	}
	p, err := h.m.Plan(r.Context(), &f.Net, append(netNeeds(f), resolverNeeds(resolvConf, resolvedConf)...), req.SSHConnection)
	if err != nil {
		netError(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, p)
}

func (h *netHandlers) apply(w http.ResponseWriter, r *http.Request) {
	var req netApplyRequest
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	var within time.Duration
	if req.ConfirmWithin != "" {
		d, err := time.ParseDuration(req.ConfirmWithin)
		if err != nil || d < 0 {
			admin.WriteError(w, http.StatusBadRequest, "invalid_request", "confirm_within: want a duration like \"120s\"")
			return
		}
		within = d
	}
	f, ok := h.load(w)
	if !ok {
		return
	}
	caller, _ := admin.CallerFrom(r.Context())
	p, err := h.m.Apply(r.Context(), &f.Net, append(netNeeds(f), resolverNeeds(resolvConf, resolvedConf)...), netseg.ApplyOptions{
		ConfirmWithin: within, Force: req.Force, SSHConnection: req.SSHConnection, Actor: caller.Actor(),
	})
	if err != nil {
		netError(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, p)
}

func (h *netHandlers) simple(fn func(context.Context, audit.Actor, string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		caller, _ := admin.CallerFrom(r.Context())
		if err := fn(r.Context(), caller.Actor(), ""); err != nil {
			netError(w, err)
			return
		}
		admin.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

func (h *netHandlers) status(w http.ResponseWriter, r *http.Request) {
	st, err := h.m.Status(r.Context())
	if err != nil {
		netError(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, st)
}

// CLI verbs.

func cmdNetPlan(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("net plan", "", "Show what `net apply` would change: the difference between the [net] section (plus\n"+
		"the egress the appliance derives from the rest of the config) and the kernel, and which of\n"+
		"the host's interfaces the traffic it routes for containers and VMs may come in on (forward_from).",
		"applianced net plan", "applianced net plan --json")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 0); !ok {
		return code
	}
	var p netseg.Plan
	req := netApplyRequest{SSHConnection: e.getenv("SSH_CONNECTION")}
	return e.show(ctx, *cfgPath, "net plan", http.MethodPost, netPathPlan, req, &p, *asJSON, func() {
		fmt.Fprint(e.stdout, p.String())
	})
}

func cmdNetApply(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("net apply", "", "Apply the [net] section: VLANs ensured, the firewall table replaced in one atomic\n"+
		"transaction. With --confirm-within, the previous state comes back by itself unless\n"+
		"`applianced net confirm` arrives in time. An apply that would lock out your SSH\n"+
		"address ($SSH_CONNECTION) is refused unless --force.",
		"applianced net apply --confirm-within 120s", "applianced net confirm")
	within := fs.Duration("confirm-within", 0, "roll back after this long unless confirmed (e.g. 120s)")
	force := fs.Bool("force", false, "apply even if it would cut your SSH session")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 0); !ok {
		return code
	}
	req := netApplyRequest{Force: *force, SSHConnection: e.getenv("SSH_CONNECTION")}
	if *within > 0 {
		req.ConfirmWithin = within.String()
	}
	var p netseg.Plan
	return e.show(ctx, *cfgPath, "net apply", http.MethodPost, netPathApply, req, &p, *asJSON, func() {
		fmt.Fprint(e.stdout, p.String())
		fmt.Fprintln(e.stdout, "\napplied.")
	})
}

func netSimpleVerb(verb, path, about, done string) func(context.Context, *env, []string) int {
	return func(ctx context.Context, e *env, args []string) int {
		fs, cfgPath := e.flags(verb, "", about, "applianced "+verb)
		if code, ok := e.parseArgs(fs, args, 0); !ok {
			return code
		}
		if err := e.call(ctx, *cfgPath, http.MethodPost, path, struct{}{}, nil); err != nil {
			return e.fail(verb, err)
		}
		fmt.Fprintln(e.stdout, done)
		return exitOK
	}
}

var (
	cmdNetConfirm = netSimpleVerb("net confirm", netPathConfirm,
		"Keep the last apply made with --confirm-within: its automatic rollback is cancelled.", "confirmed.")
	cmdNetRollback = netSimpleVerb("net rollback", netPathRollback,
		"Put back the firewall and VLANs as they were before the last apply.", "rolled back.")
	cmdNetDown = netSimpleVerb("net down", netPathDown,
		"Remove the appliance's firewall table and the VLANs it created. Nothing else is touched.", "firewall table and VLANs removed.")
)

func cmdNetStatus(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("net status", "", "Show the firewall as the kernel has it: rules with their counters, drift from the\n"+
		"applied state, a pending confirmation.", "applianced net status", "applianced net status --json")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := e.parseArgs(fs, args, 0); !ok {
		return code
	}
	var st netseg.Status
	return e.show(ctx, *cfgPath, "net status", http.MethodGet, netPathStatus, nil, &st, *asJSON, func() {
		if !st.Applied {
			fmt.Fprintln(e.stdout, "firewall: not applied (run `applianced net plan`, then `applianced net apply`)")
		} else {
			fmt.Fprintf(e.stdout, "firewall: applied at %s\n", st.AppliedAt.Local().Format(time.DateTime))
		}
		if st.RollbackError != "" {
			fmt.Fprintf(e.stdout, "ROLLBACK OVERDUE: not confirmed by %s, and the automatic rollback failed (%s); it is tried again every 10s\n", st.ConfirmBy.Local().Format(time.DateTime), st.RollbackError)
		} else if !st.ConfirmBy.IsZero() {
			fmt.Fprintf(e.stdout, "waiting for `applianced net confirm` until %s, then rolls back\n", st.ConfirmBy.Local().Format(time.DateTime))
		}
		for _, d := range st.Drift {
			fmt.Fprintf(e.stdout, "DRIFT: %s\n", d)
		}
		for _, v := range st.VLANs {
			fmt.Fprintf(e.stdout, "vlan %s\n", v)
		}
		if len(st.Rules) > 0 {
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "\nCHAIN\tPACKETS\tBYTES\tRULE")
			for _, r := range st.Rules {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", r.Chain, r.Packets, r.Bytes, strings.TrimPrefix(r.Rule, r.Chain+": "))
			}
			tw.Flush()
		}
	})
}

func cmdNetRestore(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("net restore", "", "Put the firewall table of the last apply back into the kernel, from the state the\n"+
		"daemon saved, when the kernel's differs; VLANs are left to the daemon. It needs no\n"+
		"daemon: applianced-firewall.service runs it at boot, before any interface comes up,\n"+
		"so that egress is filtered from the start. Nothing applied yet: nothing to do.",
		"applianced net restore")
	if code, ok := e.parseArgs(fs, args, 0); !ok {
		return code
	}
	// Only [server] state_dir is needed: a config with an error elsewhere
	// must not leave the host without its filter at boot.
	stateDir := config.DefaultStateDir
	if f, err := config.Load(*cfgPath); err == nil {
		stateDir = f.Server.StateDir
	} else if d, lerr := config.StateDir(*cfgPath); lerr == nil {
		fmt.Fprintf(e.stderr, "applianced net restore: the config has errors; using state_dir %s from it: %v\n", d, err)
		stateDir = d
	}
	changed, err := netseg.RestoreTable(stateDir, 0)
	if err != nil {
		return e.fail("net restore", err)
	}
	if len(changed) == 0 {
		fmt.Fprintln(e.stdout, "firewall: nothing to restore (the kernel has the applied table, or nothing was applied)")
		return exitOK
	}
	fmt.Fprintf(e.stdout, "firewall: table inet %s restored from %s (%s)\n", netseg.TableName, stateDir, strings.Join(changed, "; "))
	return exitOK
}
