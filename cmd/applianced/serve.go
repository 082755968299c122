package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/internal/procs"
	"github.com/applianced/applianced/netseg"
	"github.com/applianced/applianced/vault"
)

func cmdServe(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("serve", "", "Run the daemon: the API over HTTPS and the agent socket, the admin socket,\n"+
		"the audit journal and its forwarders. systemd starts it (Type=notify); READY=1 is sent\n"+
		"once every listener accepts connections. SIGHUP reloads the config; SIGTERM drains and stops.",
		"applianced serve --config /etc/applianced/applianced.toml")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	if err := hardenProcess(e, *cfgPath); err != nil {
		return e.fail("serve", err)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(e.stderr, "applianced serve: the config has errors; nothing was started:\n%v\n", err)
		return exitNeedsAdmin
	}
	if err := checkKeyFiles(cfg); err != nil {
		return e.fail("serve", err)
	}
	procs.Apply()
	return serve(ctx, e, cfg, serveOptions{adminGID: -1}) // [server] admin_group
}

// schedSlice says which scheduler slice the daemon's threads run with.
func schedSlice() string {
	d, err := procs.CurrentSlice()
	if err != nil || d == 0 {
		return "kernel default"
	}
	return d.String()
}

// serveOptions adjust serve for `applianced dev`.
type serveOptions struct {
	adminGID  int           // -1: look up [server] admin_group
	onReady   func(*daemon) // called once every listener is up
	setupHook func(context.Context, *daemon) error
}

func newLogger(w io.Writer, level string) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	lv.Set(parseLevel(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), lv
}

func parseLevel(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// serve runs the daemon for cfg until ctx ends (SIGTERM/SIGINT).
func serve(ctx context.Context, e *env, cfg *config.File, opts serveOptions) int {
	log, level := newLogger(e.stderr, cfg.Server.LogLevel)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	// The firewall first: nftables does not survive a reboot, and egress
	// must be filtered again before any later step can fail.
	restored, err := netseg.RestoreTable(cfg.Server.StateDir, 0)
	switch {
	case errors.Is(err, syscall.EPERM):
		// Without CAP_NET_ADMIN (the demo) there is no table to restore.
	case err != nil:
		// The drift repair keeps trying, and records each failure; the
		// daemon starts, so that `net down` or a fixed apply can reach it.
		log.Error("cannot restore the firewall table; drift repair will try again", "err", err)
	case len(restored) > 0:
		log.Warn("firewall table restored from the applied state", "changed", strings.Join(restored, "; "))
	}
	d, err := openDaemon(ctx, cfg, log, level, restored)
	if err != nil {
		log.Error("cannot start", "err", err)
		d0 := "applianced serve: " + err.Error() + sandboxHint(err)
		fmt.Fprintln(e.stderr, d0)
		if errors.Is(err, vault.ErrOldFormat) {
			return exitNeedsAdmin
		}
		return exitFailure
	}
	defer d.close()
	if opts.setupHook != nil {
		if err := opts.setupHook(ctx, d); err != nil {
			log.Error("cannot start", "err", err)
			return exitFailure
		}
	}

	l, err := bindListeners(cfg, opts)
	if err != nil {
		log.Error("cannot start", "err", err)
		fmt.Fprintln(e.stderr, "applianced serve: "+err.Error()+sandboxHint(err))
		return exitFailure
	}
	servers := d.servers(l)
	var wg sync.WaitGroup
	serveErr := make(chan error, len(servers))
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.serve(); err != nil {
				serveErr <- fmt.Errorf("%s: %w", s.name, err)
			}
		}()
	}
	_ = d.record(ctx, &audit.Event{Type: "daemon.start", Action: "serve", Outcome: audit.OutcomeSuccess,
		Details: map[string]string{"config": cfg.Path, "listen": l.api.Addr().String(), "version": version}})
	d.ready.Store(true)
	d.notify.Ready()
	d.notify.Status("serving: API %s, agent socket %s, admin socket %s", l.api.Addr(), cfg.Server.AgentSocket, cfg.Server.AdminSocket)
	log.Info("applianced ready", "api", l.api.Addr().String(), "agent_socket", cfg.Server.AgentSocket,
		"admin_socket", cfg.Server.AdminSocket, "version", version, "gomaxprocs", runtime.GOMAXPROCS(0), "sched_slice", schedSlice())
	if opts.onReady != nil {
		opts.onReady(d)
	}
	wdCtx, wdCancel := context.WithCancel(context.Background())
	defer wdCancel()
	go d.notify.Watchdog(wdCtx, d.alive)

	code := exitOK
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-serveErr:
			log.Error("listener failed", "err", err)
			code = exitFailure
			break loop
		case <-hup:
			_, _ = d.reloadFrom(ctx, cfg.Path, audit.Actor{})
		}
	}

	d.ready.Store(false)
	d.notify.Stopping()
	d.notify.Status("stopping: draining in-flight requests")
	log.Info("stopping: draining in-flight requests", "timeout", d.config().Server.ShutdownTimeout.D().String())
	drainCtx, cancel := context.WithTimeout(context.Background(), d.config().Server.ShutdownTimeout.D())
	defer cancel()
	for _, s := range servers {
		if err := s.shutdown(drainCtx); err != nil {
			log.Warn("drain did not finish in time; closing connections", "listener", s.name, "err", err)
		}
	}
	wg.Wait()
	_ = d.record(context.Background(), &audit.Event{Type: "daemon.stop", Action: "serve", Outcome: audit.OutcomeSuccess})
	_ = os.Remove(cfg.Server.AdminSocket)
	_ = os.Remove(cfg.Server.AgentSocket)
	return code
}

type listeners struct {
	api, agent, admin net.Listener
	adminGID          int
	tlsConfig         *tls.Config
}

// bindListeners binds all three listeners, so that READY=1 is only sent
// when each of them accepts connections.
func bindListeners(cfg *config.File, opts serveOptions) (*listeners, error) {
	cert, err := loadTLS(cfg.Server.TLSCert, cfg.Server.TLSKey)
	if err != nil {
		return nil, err
	}
	l := &listeners{adminGID: opts.adminGID, tlsConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
	}}
	if l.adminGID < 0 {
		g, err := user.LookupGroup(cfg.Server.AdminGroup)
		if err != nil {
			l.adminGID = -1 // only root; the group is created by the package
		} else {
			l.adminGID, _ = strconv.Atoi(g.Gid)
		}
	}
	api, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return nil, fmt.Errorf("listening on %s ([server] listen): %w", cfg.Server.Listen, err)
	}
	l.api = api
	agent, err := listenUnix(cfg.Server.AgentSocket, 0o666)
	if err != nil {
		api.Close()
		return nil, fmt.Errorf("agent socket ([server] agent_socket): %w", err)
	}
	l.agent = agent
	// Any local user may connect, as to the agent socket: the admin
	// server serves only uid 0 and members of [server] admin_group, by
	// the kernel's peer credentials (SO_PEERCRED, SO_PEERGROUPS), and
	// records every refusal. A 0660 socket of that group would need the
	// daemon to join the group or hold CAP_CHOWN, which it does not.
	adm, err := listenUnix(cfg.Server.AdminSocket, 0o666)
	if err != nil {
		api.Close()
		agent.Close()
		return nil, fmt.Errorf("admin socket ([server] admin_socket): %w", err)
	}
	l.admin = adm
	return l, nil
}

// listenUnix binds a Unix socket at path, replacing a stale socket file
// left by a crash but refusing to take over one a live process serves.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: remove it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by another running daemon", path)
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

type server struct {
	name     string
	serve    func() error
	shutdown func(context.Context) error
}

// servers builds the three servers over the bound listeners.
func (d *daemon) servers(l *listeners) []server {
	httpSrv := func(h http.Handler) *http.Server {
		return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
			MaxHeaderBytes: 64 << 10, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)}
	}
	api := httpSrv(d.apiRoot())
	api.TLSConfig = l.tlsConfig
	agent := httpSrv(d.apiRoot())
	agent.ConnContext = d.agentConnContext
	adm := admin.NewServer(admin.ServerConfig{AdminGID: l.adminGID, ServiceUID: os.Getuid(), ServiceVerbs: []string{"POST " + adminConfigReload}, Handler: d.admin, Audit: d.journal, Logger: d.log})
	ignoreClosed := func(err error) error {
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
	return []server{
		{"api", func() error { return ignoreClosed(api.ServeTLS(l.api, "", "")) }, api.Shutdown},
		{"agent socket", func() error { return ignoreClosed(agent.Serve(l.agent)) }, agent.Shutdown},
		{"admin socket", func() error { return adm.Serve(l.admin) }, adm.Shutdown},
	}
}

// sandboxHint explains a read-only file system: under the shipped unit
// (ProtectSystem=strict) the service may write only /var/lib/applianced
// and /run/applianced, so a state_dir or socket elsewhere fails so.
func sandboxHint(err error) string {
	if !errors.Is(err, syscall.EROFS) {
		return ""
	}
	return " (the service's sandbox lets it write only /var/lib/applianced and /run/applianced: keep [server] state_dir and the sockets there, " +
		"or allow the path with `systemctl edit applianced` and the lines [Service] ReadWritePaths=DIR)"
}

// alive is the watchdog's check that the daemon does its work: the audit
// journal, which every action waits on, is not stuck in a write, and the
// admin socket answers.
func (d *daemon) alive(ctx context.Context) error {
	if d.journal.Stalled(10 * time.Second) {
		return errors.New("the audit journal has been writing one batch for over 10s (the disk does not answer)")
	}
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "unix", d.config().Server.AdminSocket)
	if err != nil {
		return fmt.Errorf("the admin socket does not accept: %w", err)
	}
	return c.Close()
}
