package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/term"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/ldapauth"
	"github.com/applianced/applianced/ldapauth/devdir"
	"github.com/applianced/applianced/vault"
)

// Admin paths of the directory.
const (
	adminLDAPTest   = "/admin/v1/ldap/test"
	adminLDAPHealth = "/admin/v1/ldap/health"
	adminLDAPUnlock = "/admin/v1/ldap/unlock"
)

// ldapUnlockRequest names the user and/or client address whose counted
// login failures to clear.
type ldapUnlockRequest struct {
	User   string `json:"user,omitempty"`
	Source string `json:"source,omitempty"`
}

// ldapUnlockReply says which of them had failures counted.
type ldapUnlockReply struct {
	UserHad   bool `json:"user_had_failures"`
	SourceHad bool `json:"source_had_failures"`
}

// ldapTestRequest is the body of POST /admin/v1/ldap/test. It travels only
// over the admin socket.
type ldapTestRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// ldapTestResult is the full answer, reasons included: admins see why a
// login was denied; API callers never do.
type ldapTestResult struct {
	Outcome  ldapauth.Outcome   `json:"outcome"`
	Identity *ldapauth.Identity `json:"identity,omitempty"`
	Error    string             `json:"error,omitempty"`
}

// directory is the daemon's user login: the current Authenticator, swapped
// on reload. The broker logs users in through Login.
type directory struct {
	cur     atomic.Pointer[ldapauth.Authenticator]
	secrets ldapauth.SecretFunc
	d       *daemon
}

// Login logs a user in with the current [ldap] config.
func (dir *directory) Login(ctx context.Context, r ldapauth.Request) (ldapauth.Identity, ldapauth.Outcome, error) {
	a := dir.cur.Load()
	if a == nil {
		return ldapauth.Identity{}, ldapauth.Outcome{Reason: ldapauth.ReasonDirectoryUnavailable}, errors.New("no [ldap] section in the config")
	}
	return a.Login(ctx, r)
}

// Lookup re-checks a known user, without a password, with the current
// [ldap] config; the broker asks at refresh and token exchange.
func (dir *directory) Lookup(ctx context.Context, r ldapauth.LookupRequest) (ldapauth.Identity, ldapauth.Outcome, error) {
	a := dir.cur.Load()
	if a == nil {
		return ldapauth.Identity{}, ldapauth.Outcome{Reason: ldapauth.ReasonDirectoryUnavailable}, errors.New("no [ldap] section in the config")
	}
	return a.Lookup(ctx, r)
}

// UserAccount resolves user in the directory for a TOTP enrolment: the
// account's immutable id (objectGUID, entryUUID) if the user may sign in,
// else why not. Without an [ldap] section there is no account to bind a
// seed to, and the enrolment is refused.
func (dir *directory) UserAccount(ctx context.Context, user string) (id, refused string, err error) {
	if dir == nil || dir.cur.Load() == nil {
		return "", "", errors.New("no [ldap] section in the config")
	}
	ident, out, err := dir.Lookup(ctx, ldapauth.LookupRequest{Username: user, Source: "unix"})
	switch {
	case err != nil:
		return "", "", err
	case out.OK:
		return ident.ID, "", nil
	case out.Reason == "":
		return "", "denied", nil
	}
	return "", string(out.Reason), nil
}

// vaultSecrets reads bind_password_secret from the vault; without a vault,
// every service bind fails with a clear error (the daemon still starts).
func vaultSecrets(v *vault.Vault) ldapauth.SecretFunc {
	return func(ctx context.Context, name string) ([]byte, error) {
		if v == nil {
			return nil, errors.New("the vault is not open")
		}
		return v.ForInternal(ctx, "ldapauth", name)
	}
}

// openLDAP opens the directory login for [ldap] (a no-op without the
// section), mounts `ldap test` and the DC health on the admin socket, and
// exports each DC's state as a metric. It is a step of (*daemon).open after
// the vault:
//
//	{"directory", func(ctx, bg context.Context) error { _, err := d.openLDAP(d.vault); return err }},
func (d *daemon) openLDAP(v *vault.Vault) (*directory, error) {
	dir := &directory{secrets: vaultSecrets(v), d: d}
	if cfg := d.config().LDAP; cfg != nil {
		a, err := dir.open(*cfg, nil)
		if err != nil {
			return nil, err
		}
		dir.cur.Store(a)
	}
	if err := d.metrics.Register(dcCollector{dir: dir, up: prometheus.NewDesc("applianced_ldap_dc_up",
		"1 when the domain controller is not held down after a connection, TLS or timeout error.", []string{"url"}, nil)}); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, func() error {
		if a := dir.cur.Swap(nil); a != nil {
			return a.Close()
		}
		return nil
	})
	d.reloaders = append(d.reloaders, func(ctx context.Context, f *config.File) error {
		var next *ldapauth.Authenticator
		if f.LDAP != nil {
			// The failures counted so far carry over: a reload must not
			// give every user a fresh allowance of wrong passwords.
			a, err := dir.open(*f.LDAP, dir.cur.Load())
			if err != nil {
				return err
			}
			next = a
		}
		if old := dir.cur.Swap(next); old != nil {
			old.Close()
		}
		return nil
	})
	d.admin.HandleFunc("POST "+adminLDAPTest, dir.handleTest)
	d.admin.HandleFunc("POST "+adminLDAPUnlock, dir.handleUnlock)
	d.admin.HandleFunc("GET "+adminLDAPHealth, func(w http.ResponseWriter, r *http.Request) {
		a := dir.cur.Load()
		if a == nil {
			admin.WriteError(w, http.StatusNotFound, "not_configured", "no [ldap] section in the config")
			return
		}
		admin.WriteJSON(w, http.StatusOK, a.Health())
	})
	return dir, nil
}

// dcCollector exports each DC's state and the login counters at scrape
// time, for the current config (counters restart when a reload replaces
// the directory).
type dcCollector struct {
	dir *directory
	up  *prometheus.Desc
}

var (
	ldapLoginsDesc = prometheus.NewDesc("applianced_ldap_logins_total",
		"Logins that reached the directory or the group cache (refusals before it are not counted).", nil, nil)
	ldapOpsDesc = prometheus.NewDesc("applianced_ldap_operations_total",
		"LDAP requests sent to the domain controllers (binds, searches, StartTLS).", nil, nil)
	ldapDialsDesc = prometheus.NewDesc("applianced_ldap_dials_total",
		"TCP connections opened to the domain controllers.", nil, nil)
	ldapCacheDesc = prometheus.NewDesc("applianced_ldap_group_cache_hits_total",
		"Logins whose groups came from the group cache.", nil, nil)
)

func (c dcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, ldapLoginsDesc, ldapOpsDesc, ldapDialsDesc, ldapCacheDesc} {
		ch <- d
	}
}

func (c dcCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.dir.cur.Load()
	if a == nil {
		return
	}
	for _, h := range a.Health() {
		v := 0.0
		if h.Up {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, v, h.URL)
	}
	st := a.Stats()
	ch <- prometheus.MustNewConstMetric(ldapLoginsDesc, prometheus.CounterValue, float64(st.Logins))
	ch <- prometheus.MustNewConstMetric(ldapOpsDesc, prometheus.CounterValue, float64(st.Operations))
	ch <- prometheus.MustNewConstMetric(ldapDialsDesc, prometheus.CounterValue, float64(st.Dials))
	ch <- prometheus.MustNewConstMetric(ldapCacheDesc, prometheus.CounterValue, float64(st.GroupCacheHits))
}

// open makes the Authenticator for cfg; prev, on a reload, is the one it
// replaces, whose counted failures it takes over.
func (dir *directory) open(cfg ldapauth.Config, prev *ldapauth.Authenticator) (*ldapauth.Authenticator, error) {
	opts := ldapauth.Options{
		Audit:        dir.d.journal,
		BindPassword: dir.secrets,
		Logger:       dir.d.log.With("component", "ldapauth"),
		Replaces:     prev,
	}
	// A login name that matches no account goes into the journal as its
	// keyed hash: it may be a password typed into the name field.
	if h, err := dir.d.auditHasher(context.Background()); err == nil {
		opts.NameHash = h.Sum
	}
	return ldapauth.New(cfg, opts)
}

func (dir *directory) handleTest(w http.ResponseWriter, r *http.Request) {
	var req ldapTestRequest
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	source := "unix"
	if c, ok := admin.CallerFrom(r.Context()); ok {
		source = "unix:uid=" + strconv.Itoa(c.UID)
	}
	id, out, err := dir.Login(r.Context(), ldapauth.Request{Username: req.Username, Password: req.Password, Source: source})
	res := ldapTestResult{Outcome: out}
	if err != nil {
		res.Error = err.Error()
	}
	if out.OK {
		res.Identity = &id
	}
	admin.WriteJSON(w, http.StatusOK, res)
}

// handleUnlock clears the login failures counted against a user name or a
// client address; recorded before it takes effect.
func (dir *directory) handleUnlock(w http.ResponseWriter, r *http.Request) {
	var req ldapUnlockRequest
	if !admin.DecodeJSON(w, r, &req) {
		return
	}
	if req.User == "" && req.Source == "" {
		admin.WriteError(w, http.StatusBadRequest, "invalid_request", "name a user, a source address, or both")
		return
	}
	if req.Source != "" {
		// As logins give it: an IP address, "unix" for the agent socket,
		// "unix:uid=N" for `ldap test`.
		switch addr, err := netip.ParseAddr(req.Source); {
		case err == nil:
			req.Source = addr.Unmap().String()
		case req.Source == "unix" || unixUIDSourceRE.MatchString(req.Source):
		default:
			admin.WriteError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf(
				"--source %q: want an IP address, \"unix\" (logins over the agent socket) or \"unix:uid=N\" (ldap test)", req.Source))
			return
		}
	}
	a := dir.cur.Load()
	if a == nil {
		admin.WriteError(w, http.StatusNotFound, "not_configured", "no [ldap] section in the config")
		return
	}
	var userKey string
	if req.User != "" {
		k, err := a.UserKey(req.User)
		if err != nil {
			admin.WriteError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf("--user %q: %v", req.User, err))
			return
		}
		userKey = k
	}
	caller, _ := admin.CallerFrom(r.Context())
	ev := &audit.Event{Type: "auth.unlock", Actor: caller.Actor(), Action: "ldap.unlock", Outcome: audit.OutcomeSuccess,
		Source: "unix", Details: map[string]string{}}
	if req.User != "" {
		ev.Target = userKey
		ev.Details["user"] = userKey
	}
	if req.Source != "" {
		ev.Details["source"] = req.Source
	}
	if err := dir.d.record(r.Context(), ev); err != nil {
		admin.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the audit journal cannot be written")
		return
	}
	userHad, sourceHad := a.Unlock(userKey, req.Source)
	admin.WriteJSON(w, http.StatusOK, ldapUnlockReply{UserHad: userHad, SourceHad: sourceHad})
}

var unixUIDSourceRE = regexp.MustCompile(`^unix:uid=[0-9]+$`)

// cmdLDAPUnlock is `applianced ldap unlock [--user NAME] [--source ADDR]`.
func cmdLDAPUnlock(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("ldap unlock", "",
		"Clear the login failures the daemon counted against a user name or a client address,\n"+
			"so that the next login goes to the directory at once instead of waiting out the\n"+
			"backoff or failure_window. It does not unlock an account the directory itself\n"+
			"locked (AD's lockout): that is done in AD. Recorded in the audit trail.",
		"applianced ldap unlock --user alice",
		"applianced ldap unlock --source 10.20.0.7")
	user := fs.String("user", "", "the user `NAME` (as the user logs in)")
	source := fs.String("source", "", "the client `ADDRESS` (the chatbot backend, for one), or unix for logins over the agent socket")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	if *user == "" && *source == "" {
		fmt.Fprintln(e.stderr, "applianced ldap unlock: name --user, --source, or both")
		return exitUsage
	}
	var rep ldapUnlockReply
	if err := e.call(ctx, *cfgPath, http.MethodPost, adminLDAPUnlock, ldapUnlockRequest{User: *user, Source: *source}, &rep); err != nil {
		return e.fail("ldap unlock", err)
	}
	say := func(what, name string, had bool) {
		if had {
			fmt.Fprintf(e.stdout, "%s %s: failures cleared\n", what, name)
		} else {
			fmt.Fprintf(e.stdout, "%s %s: no failures were counted\n", what, name)
		}
	}
	if *user != "" {
		say("user", *user, rep.UserHad)
	}
	if *source != "" {
		say("source", *source, rep.SourceHad)
	}
	return exitOK
}

// cmdLDAPTest is `applianced ldap test USER`.
func cmdLDAPTest(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("ldap test", "USER",
		"Log USER in through the running daemon exactly as POST /v1/login does, and print the\n"+
			"user's DN, groups (nested), roles and the domain controller that answered, or the exact\n"+
			"reason for a denial (wrong password, disabled, locked, expired, not in allowed_groups…).\n"+
			"The password is read from the terminal without echo, or from stdin. The attempt is\n"+
			"audited and counts against the failure limits like any login. Exit 0 only on success.",
		"applianced ldap test alice",
		`applianced ldap test 'CORP\alice' < password.txt`)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 1) {
		return exitUsage
	}
	user := fs.Arg(0)
	pw, err := readPassword(e, user)
	if err != nil {
		return e.fail("ldap test", err)
	}
	var res ldapTestResult
	if err := e.call(ctx, *cfgPath, http.MethodPost, adminLDAPTest, ldapTestRequest{Username: user, Password: pw}, &res); err != nil {
		return e.fail("ldap test", err)
	}
	if *asJSON {
		e.printJSON(res)
	} else {
		printLDAPTest(e.stdout, res)
	}
	if !res.Outcome.OK {
		return exitFailure
	}
	return exitOK
}

func printLDAPTest(w io.Writer, res ldapTestResult) {
	if res.Identity == nil {
		fmt.Fprintf(w, "denied: %s\n", orDash(string(res.Outcome.Reason)))
		if res.Outcome.ADCode != "" {
			fmt.Fprintf(w, "AD code: %s\n", res.Outcome.ADCode)
		}
		if res.Outcome.DC != "" {
			fmt.Fprintf(w, "DC: %s\n", res.Outcome.DC)
		}
		if res.Error != "" {
			fmt.Fprintf(w, "error: %s\n", res.Error)
		}
		return
	}
	id := res.Identity
	fmt.Fprintf(w, "ok: %s\n", id.Username)
	fmt.Fprintf(w, "DN: %s\n", id.DN)
	fmt.Fprintf(w, "id: %s\n", id.ID)
	if id.DisplayName != "" {
		fmt.Fprintf(w, "name: %s\n", id.DisplayName)
	}
	fmt.Fprintf(w, "DC: %s\n", id.DC)
	fmt.Fprintf(w, "groups (%d, nested included):\n", len(id.Groups))
	for _, g := range id.Groups {
		fmt.Fprintf(w, "  %s  (%s)\n", g.Name, g.DN)
	}
	fmt.Fprintf(w, "roles: %s\n", orDash(strings.Join(id.Roles, ", ")))
}

// readPassword reads a password without echo from a terminal, or the whole
// of stdin (one trailing newline removed).
func readPassword(e *env, user string) (string, error) {
	if f, ok := e.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(e.stderr, "Password for %s: ", user)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(e.stderr)
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		return string(b), nil
	}
	b, err := io.ReadAll(io.LimitReader(e.stdin, ldapauth.MaxPasswordLen+2))
	if err != nil {
		return "", fmt.Errorf("reading the password from stdin: %w", err)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	return string(b), nil
}

// devLDAP starts the embedded demo directory and adds its [ldap] section.
// The roles of its groups come from an [ldap.group_roles] table, which the
// step that defines the demo roles adds.
func devLDAP(ctx context.Context, dv *devEnv) error {
	srv, err := devdir.Start(ctx, devdir.Options{Dir: dv.dir, AnonymousSearch: true})
	if err != nil {
		return err
	}
	dv.cleanup = append(dv.cleanup, func() { srv.Stop() })
	dv.sections = append(dv.sections, "# The embedded demo directory ("+srv.URL()+").\n"+srv.TOML())
	lines := []string{}
	dv.users = map[string]string{}
	for _, c := range srv.Credentials() {
		dv.users[c.Username] = c.Password
		lines = append(lines, fmt.Sprintf("printf '%%s' '%s' | %s ldap test %s    # %s", c.Password, dv.cli, c.Username, c.Note))
	}
	dv.addTry("log in with the demo directory's users (alice is in ai-users through a nested group)", lines...)
	return nil
}
