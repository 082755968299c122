package main

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/systemd"
	"github.com/applianced/applianced/vault"
)

// writeDevConfig writes the dev base config (dv's listen address and dir)
// followed by sections to dv.cfgPath and returns the text written.
func writeDevConfig(t testing.TB, dv *devEnv, sections []string) string {
	t.Helper()
	var b strings.Builder
	template.Must(template.New("dev").Parse(devBaseConfig)).Execute(&b, map[string]string{"Listen": dv.listen, "Dir": dv.dir})
	for _, s := range sections {
		b.WriteString("\n" + s + "\n")
	}
	if err := os.WriteFile(dv.cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// newTestDaemon makes a daemon on cfg with its real audit journal open, as
// (*daemon).open starts; it returns the daemon and its background context.
// The daemon is closed when the test ends.
func newTestDaemon(t testing.TB, ctx context.Context, cfg *config.File) (*daemon, context.Context) {
	t.Helper()
	d := &daemon{log: slog.New(slog.DiscardHandler), notify: &systemd.Notifier{Logger: slog.New(slog.DiscardHandler)},
		api: http.NewServeMux(), admin: http.NewServeMux(), metrics: prometheus.NewRegistry()}
	d.cfg.Store(cfg)
	bg, cancel := context.WithCancel(context.Background())
	d.bgCancel = cancel
	t.Cleanup(d.close)
	if err := d.openJournal(ctx, bg); err != nil {
		t.Fatal(err)
	}
	return d, bg
}

// brokerTestDaemon creates cfg's state dir and opens the journal and a
// vault with a fresh master key, the components the broker needs.
func brokerTestDaemon(t testing.TB, ctx context.Context, cfg *config.File) (*daemon, context.Context, *vault.Vault) {
	t.Helper()
	if err := os.MkdirAll(cfg.Server.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	d, bg := newTestDaemon(t, ctx, cfg)
	mk := make([]byte, vault.MasterKeySize)
	_, _ = rand.Read(mk)
	v, err := vault.Open(ctx, filepath.Join(cfg.Server.StateDir, "vault.db"), mk, cfg.Vault, &vault.Options{Audit: d.journal, Logger: d.log})
	if err != nil {
		t.Fatal(err)
	}
	d.closers = append(d.closers, v.Close)
	return d, bg, v
}

// serveAdmin serves d's admin mux on the socket at sock, callers in this
// process's group being administrators, until the test ends.
func serveAdmin(t testing.TB, d *daemon, sock string) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	as := admin.NewServer(admin.ServerConfig{AdminGID: os.Getgid(), Handler: d.admin, Audit: d.journal})
	go func() { _ = as.Serve(l) }()
	t.Cleanup(func() { as.Shutdown(context.Background()) })
}

// serveAgentSocket serves d's API on an agent socket at sock, the caller's
// identity from the kernel, until the test ends, and returns a client
// that dials it.
func serveAgentSocket(t testing.TB, d *daemon, sock string) *http.Client {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: d.api, ConnContext: broker.ConnContext}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", sock)
	}}}
}
