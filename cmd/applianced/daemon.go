package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/systemd"
	"github.com/applianced/applianced/vault"
)

// daemon is the running appliance: its components, in the order they open,
// and the routes they serve.
type daemon struct {
	log    *slog.Logger
	level  *slog.LevelVar
	cfg    atomic.Pointer[config.File]
	notify *systemd.Notifier

	journal   *audit.Journal
	vault     *vault.Vault
	directory *directory     // user login ([ldap])
	broker    *broker.Broker // agent identities and tokens

	api     *http.ServeMux // HTTPS listener and agent socket
	admin   *http.ServeMux // admin socket
	metrics *prometheus.Registry

	// agentConnContext, when set, annotates agent-socket connections (the
	// broker puts the peer's kernel credentials there).
	agentConnContext func(context.Context, net.Conn) context.Context

	// bg runs the components' background loops until the daemon stops.
	bg       sync.WaitGroup
	bgCancel context.CancelFunc

	// netRestored is what serve's first step put back of the firewall
	// table (netseg.RestoreTable), for openNet to record.
	netRestored []string

	closers   []func() error                              // run in reverse order on stop
	reloaders []func(context.Context, *config.File) error // get a validated new config on SIGHUP
	reloadMu  sync.Mutex                                  // one reload at a time (SIGHUP, config reload)
	ready     atomic.Bool
	// vaultCheck is what the vault's opening compared its state with
	// (openVault), for the admin status.
	vaultCheck atomic.Pointer[vault.StateCheck]
	// deliverMu lets one audit delivery of a journal set aside run at a
	// time: an admin's, or the daemon's own at its start.
	deliverMu sync.Mutex
}

// openDaemon opens every component for cfg. On error, whatever was opened
// is closed again.
func openDaemon(ctx context.Context, cfg *config.File, log *slog.Logger, level *slog.LevelVar, netRestored []string) (*daemon, error) {
	d := &daemon{
		log: log, level: level, notify: &systemd.Notifier{Logger: log}, netRestored: netRestored,
		api: http.NewServeMux(), admin: http.NewServeMux(), metrics: prometheus.NewRegistry(),
	}
	d.cfg.Store(cfg)
	bgCtx, cancel := context.WithCancel(context.Background())
	d.bgCancel = cancel
	if err := d.open(ctx, bgCtx); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

// open is the order of the appliance's components. Each step may use the
// ones before it.
func (d *daemon) open(ctx, bg context.Context) error {
	steps := []struct {
		name string
		fn   func(ctx, bg context.Context) error
	}{
		{"audit journal", d.openJournal},
		{"vault", d.openVault},
		{"network", d.openNet},
		{"audit forwarding", d.openAuditForwarding},
		{"directory", func(ctx, bg context.Context) (err error) { d.directory, err = d.openLDAP(d.vault); return err }},
		{"broker", func(ctx, bg context.Context) (err error) {
			d.broker, err = d.openBroker(ctx, bg, d.vault, d.directory)
			return err
		}},
		{"tool proxy", func(ctx, bg context.Context) error { return d.mountToolProxy(d.broker, d.vault) }},
		{"routes", d.mountCore},
	}
	for _, s := range steps {
		d.notify.Status("opening %s", s.name)
		if err := s.fn(ctx, bg); err != nil {
			return fmt.Errorf("opening %s: %w", s.name, err)
		}
	}
	return nil
}

func (d *daemon) config() *config.File { return d.cfg.Load() }

// goBackground runs fn until the daemon stops.
func (d *daemon) goBackground(bg context.Context, fn func(context.Context)) {
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		fn(bg)
	}()
}

func (d *daemon) openJournal(ctx, bg context.Context) error {
	a := d.config().Audit
	j, err := audit.Open(filepath.Join(d.config().Server.StateDir, "audit"), &audit.Options{
		SegmentBytes: int64(a.SegmentBytes), MaxBytes: int64(a.MaxBytes), DiskFull: a.DiskFull, Logger: d.log,
	})
	if err != nil {
		return err
	}
	d.journal = j
	d.closers = append(d.closers, j.Close)
	return nil
}

// mountCore mounts the routes the daemon itself answers.
func (d *daemon) mountCore(ctx, bg context.Context) error {
	d.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "applianced_audit_last_seq", Help: "Sequence number of the last durable audit entry.",
	}, func() float64 { return float64(d.journal.LastSeq()) }))
	d.api.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	d.api.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !d.ready.Load() {
			admin.WriteError(w, http.StatusServiceUnavailable, "not_ready", "the daemon is starting or stopping")
			return
		}
		admin.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	d.api.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		admin.WriteError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.URL.Path)
	})
	d.admin.Handle("GET /metrics", promhttp.HandlerFor(d.metrics, promhttp.HandlerOpts{}))
	d.admin.HandleFunc("GET /admin/v1/audit/tail", d.handleAuditTail)
	d.admin.HandleFunc("GET /admin/v1/status", func(w http.ResponseWriter, r *http.Request) {
		st := map[string]any{"config": d.config().Path, "audit_last_seq": d.journal.LastSeq(), "ready": d.ready.Load()}
		if c := d.vaultCheck.Load(); c != nil {
			st["vault_state_check"] = c
		}
		admin.WriteJSON(w, http.StatusOK, st)
	})
	d.mountReload()
	d.admin.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		admin.WriteError(w, http.StatusNotFound, "not_found", "no such admin verb: "+r.Method+" "+r.URL.Path+" (is the daemon older than this CLI?)")
	})
	return nil
}

// reload swaps in a validated new config, component by component. A
// component that refuses it keeps the daemon on the old config for that
// component and the error is returned.
func (d *daemon) reload(ctx context.Context, cfg *config.File) error {
	var errs []error
	if err := keepServerKeys(&cfg.Server, d.config().Server); err != nil {
		errs = append(errs, err)
	}
	for _, r := range d.reloaders {
		if err := r(ctx, cfg); err != nil {
			errs = append(errs, err)
		}
	}
	d.cfg.Store(cfg)
	d.level.Set(parseLevel(cfg.Server.LogLevel))
	return errors.Join(errs...)
}

// keepServerKeys puts the running values of the [server] keys bound at start
// (listeners, sockets, state dir, TLS pair) back into next, and names those
// that changed: they take effect at the next restart. The stored config
// then says what is in effect, and the watchdog keeps dialling the socket
// the daemon really serves.
func keepServerKeys(next *config.Server, cur config.Server) error {
	var later []string
	for _, k := range []struct {
		name      string
		next, cur *string
	}{
		{"listen", &next.Listen, &cur.Listen},
		{"state_dir", &next.StateDir, &cur.StateDir},
		{"admin_socket", &next.AdminSocket, &cur.AdminSocket},
		{"admin_group", &next.AdminGroup, &cur.AdminGroup},
		{"agent_socket", &next.AgentSocket, &cur.AgentSocket},
		{"tls_cert", &next.TLSCert, &cur.TLSCert},
		{"tls_key", &next.TLSKey, &cur.TLSKey},
	} {
		if *k.next != *k.cur {
			later = append(later, k.name)
			*k.next = *k.cur
		}
	}
	if len(later) == 0 {
		return nil
	}
	return fmt.Errorf("server: %s: changes take effect at the next restart (systemctl restart applianced)", strings.Join(later, ", "))
}

// close stops background loops and closes components in reverse order.
func (d *daemon) close() {
	if d.bgCancel != nil {
		d.bgCancel()
	}
	d.bg.Wait()
	for i := len(d.closers) - 1; i >= 0; i-- {
		if err := d.closers[i](); err != nil {
			d.log.Error("closing", "err", err)
		}
	}
	d.closers = nil
}

// record appends a daemon-level event, logging when it cannot.
func (d *daemon) record(ctx context.Context, ev *audit.Event) error {
	if _, err := d.journal.Append(ctx, ev); err != nil {
		d.log.Error("audit append failed", "type", ev.Type, "err", err)
		return err
	}
	return nil
}

// rawPathPrefixes are API paths whose handler sees the path exactly as the
// client sent it. http.ServeMux answers a path with "..", "." or "//" with a
// redirect to its cleaned form, which would turn /v1/tools/t/a/../b into a
// call to /v1/tools/t/b; the tool proxy refuses such paths itself instead.
var rawPathPrefixes = []string{"/v1/tools/"}

// apiRoot is the handler of the HTTPS listener and the agent socket: d.api,
// except that paths under rawPathPrefixes go to their handler uncleaned.
func (d *daemon) apiRoot() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, p := range rawPathPrefixes {
			if strings.HasPrefix(r.URL.Path, p) {
				probe := r.Clone(r.Context())
				probe.URL.Path, probe.URL.RawPath = p, ""
				h, _ := d.api.Handler(probe)
				h.ServeHTTP(w, r)
				return
			}
		}
		// Anywhere else a path that is not in canonical form gets a clear
		// error, not ServeMux's redirect to the cleaned path (with an HTML
		// body an API client cannot read).
		if p := r.URL.Path; p != "/" && path.Clean(p) != strings.TrimSuffix(p, "/") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"invalid_request","error_description":"the path must be in canonical form: no \".\" or \"..\" segments and no \"//\""}`+"\n")
			return
		}
		d.api.ServeHTTP(w, r)
	})
}
