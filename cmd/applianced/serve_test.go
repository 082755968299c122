package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

// testConfig writes a minimal config for a daemon in dir and initialises
// its state (master key, TLS pair).
func testConfig(t *testing.T, dir string, extra string) *config.File {
	t.Helper()
	body := fmt.Sprintf(`[server]
listen = "%s"
state_dir = "%s/state"
admin_socket = "%s/admin.sock"
agent_socket = "%s/agent.sock"
tls_cert = "%s/tls/api.pem"
tls_key = "%s/tls/api.key"
shutdown_timeout = "3s"

[vault]
master_key_file = "%s/master.key"
%s`, pickPort(t), dir, dir, dir, dir, dir, dir, extra)
	path := filepath.Join(dir, "applianced.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("test config: %v", err)
	}
	if err := initState(testEnv(), cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// pickPort returns a loopback address with a port that was free a moment ago.
func pickPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func testEnv() *env {
	var out, errb syncBuffer
	return &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// notifySocket listens where the daemon's sd_notify messages go, as systemd
// does, and returns every message received.
func notifySocket(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return msgs
}

func waitFor(t *testing.T, msgs <-chan string, prefix string) string {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notify socket closed before %q", prefix)
			}
			if strings.HasPrefix(m, prefix) {
				return m
			}
		case <-timeout:
			t.Fatalf("no %q from the daemon", prefix)
		}
	}
}

type running struct {
	cfg    *config.File
	cancel context.CancelFunc
	done   chan struct{}
	code   int
	env    *env
}

// stop ends the daemon as SIGTERM does and returns its exit code.
func (r *running) stop(t *testing.T) int {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not stop")
	}
	return r.code
}

func startDaemon(t *testing.T, cfg *config.File) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cfg: cfg, cancel: cancel, done: make(chan struct{}), env: testEnv()}
	go func() {
		r.code = serve(ctx, r.env, cfg, serveOptions{adminGID: -1})
		close(r.done)
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func TestReadyIsSentOnlyWhenListenersAccept(t *testing.T) {
	msgs := notifySocket(t)
	dir := t.TempDir()
	cfg := testConfig(t, dir, "")
	r := startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")
	// At the moment READY arrives, every listener must accept.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Get("https://" + cfg.Server.Listen + "/healthz")
	if err != nil {
		t.Fatalf("API not answering at READY: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz: got %d, want 200", resp.StatusCode)
	}
	for _, sock := range []string{cfg.Server.AgentSocket, cfg.Server.AdminSocket} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("%s not accepting at READY: %v", sock, err)
		}
		c.Close()
	}
	if code := r.stop(t); code != exitOK {
		t.Fatalf("serve exited %d after SIGTERM, want 0; stderr: %s", code, r.env.stderr)
	}
	waitFor(t, msgs, "STOPPING=1")
}

func TestReloadKeepsOldConfigWhenNewOneIsBroken(t *testing.T) {
	msgs := notifySocket(t)
	dir := t.TempDir()
	cfg := testConfig(t, dir, "")
	r := startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")

	good, _ := os.ReadFile(cfg.Path)
	os.WriteFile(cfg.Path, append(good, []byte("\n[server2]\nbogus = 1\n")...), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	m := waitFor(t, msgs, "RELOADING=1")
	if !strings.Contains(m, "MONOTONIC_USEC=") {
		t.Fatalf("reload notification %q lacks MONOTONIC_USEC", m)
	}
	waitFor(t, msgs, "READY=1")
	if !strings.Contains(r.env.stderr.(*syncBuffer).String(), "server2.bogus") {
		t.Fatalf("the refused reload did not log the problem; stderr: %s", r.env.stderr)
	}
	// Still serving.
	if c, err := net.Dial("unix", cfg.Server.AdminSocket); err != nil {
		t.Fatalf("daemon stopped serving after a refused reload: %v", err)
	} else {
		c.Close()
	}
	// A valid change is taken.
	os.WriteFile(cfg.Path, bytes.Replace(good, []byte("[server]\n"), []byte("[server]\nlog_level = \"debug\"\n"), 1), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, msgs, "RELOADING=1")
	waitFor(t, msgs, "READY=1")
	r.stop(t)

	outcomes := reloadOutcomes(t, filepath.Join(cfg.Server.StateDir, "audit"))
	if len(outcomes) != 2 || outcomes[0] != audit.OutcomeDenied || outcomes[1] != audit.OutcomeSuccess {
		t.Fatalf("config.reload outcomes: got %v, want [denied success]", outcomes)
	}
}

// A reload applies [audit] max_bytes and disk_full to the running journal
// (raising max_bytes is how a journal blocked at its limit takes actions
// again; audit's TestSetLimitsAppliesToTheRunningJournal has a limit below
// what the journal holds refused); a key that needs a restart makes the
// reload partly refused, recorded as such.
func TestReloadAppliesJournalLimits(t *testing.T) {
	x := startDevDaemon(t, "info")
	path := x.d.config().Path
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	reload := func(auditKeys string) *audit.Event {
		t.Helper()
		body := bytes.Replace(good, []byte("[audit]\n"), []byte("[audit]\n"+auditKeys+"\n"), 1)
		if err := os.WriteFile(path, body, 0o600); err != nil {
			t.Fatal(err)
		}
		x.d.reloadFrom(x.ctx, path, audit.Actor{})
		ev := x.lastEvent("config.reload")
		return &ev
	}
	if max, policy := x.d.journal.Limits(); max != 0 || policy != audit.DiskFullBlock {
		t.Fatalf("at start: got %d %s, want 0 block", max, policy)
	}
	if ev := reload("max_bytes = \"1GB\"\ndisk_full = \"drop_oldest\""); ev.Outcome != audit.OutcomeSuccess {
		t.Errorf("a limit the journal is under: got %s %q, want success", ev.Outcome, ev.Reason)
	}
	if max, policy := x.d.journal.Limits(); max != 1e9 || policy != audit.DiskFullDropOldest {
		t.Errorf("after the reload: got %d %s, want 1 GB drop_oldest", max, policy)
	}
	if ev := reload("max_bytes = \"1GB\"\ndisk_full = \"drop_oldest\"\ncheckpoint_every = 7"); ev.Outcome != audit.OutcomeFailure || !strings.Contains(ev.Reason, "checkpoint_every: changes take effect at the next restart") {
		t.Errorf("checkpoint_every changed: got %s %q, want failure naming the key", ev.Outcome, ev.Reason)
	}
}

func reloadOutcomes(t *testing.T, dir string) []string {
	t.Helper()
	j, err := audit.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	r, _ := j.Reader(1)
	defer r.Close()
	var out []string
	for i := uint64(1); i <= j.LastSeq(); i++ {
		e, err := r.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if e.Event.Type == "config.reload" {
			out = append(out, e.Event.Outcome)
		}
	}
	return out
}

func TestServeRefusesAnOpenKeyFile(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "")
	os.Chmod(cfg.Server.TLSKey, 0o644)
	e := testEnv()
	code := serve(context.Background(), e, cfg, serveOptions{adminGID: -1})
	if code != exitFailure {
		t.Fatalf("serve with a 0644 key: exit %d, want 1", code)
	}
	if !strings.Contains(e.stderr.(*syncBuffer).String(), "mode 0644") || !strings.Contains(e.stderr.(*syncBuffer).String(), cfg.Server.TLSKey) {
		t.Fatalf("error does not name the file and its mode: %s", e.stderr)
	}
}

func TestWatchdogIsPingedWhenEnabled(t *testing.T) {
	msgs := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "200000") // 200 ms: pings every 100 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	cfg := testConfig(t, t.TempDir(), "")
	startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")
	for i := 0; i < 3; i++ {
		waitFor(t, msgs, "WATCHDOG=1")
	}
}

// On SIGTERM a request in flight is finished, not cut.
func TestStopDrainsInFlightRequests(t *testing.T) {
	msgs := notifySocket(t)
	cfg := testConfig(t, t.TempDir(), "")
	entered, release := make(chan struct{}), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- serve(ctx, testEnv(), cfg, serveOptions{adminGID: -1, setupHook: func(_ context.Context, d *daemon) error {
			d.api.HandleFunc("GET /test/slow", func(w http.ResponseWriter, r *http.Request) {
				close(entered)
				<-release
				w.Write([]byte("finished"))
			})
			return nil
		}})
	}()
	waitFor(t, msgs, "READY=1")
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := hc.Get("https://" + cfg.Server.Listen + "/test/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{string(b), err}
	}()
	<-entered
	cancel() // SIGTERM
	waitFor(t, msgs, "STOPPING=1")
	close(release)
	r := <-res
	if r.err != nil || r.body != "finished" {
		t.Fatalf("in-flight request: got %q, %v; want it finished", r.body, r.err)
	}
	if code := <-done; code != exitOK {
		t.Fatalf("serve exited %d, want 0", code)
	}
}

func TestSandboxHint(t *testing.T) {
	err := fmt.Errorf("opening audit journal: %w", &os.PathError{Op: "mkdir", Path: "/srv/applianced/audit", Err: syscall.EROFS})
	if h := sandboxHint(err); !strings.Contains(h, "ReadWritePaths") {
		t.Errorf("EROFS: got %q, want the drop-in that fixes it", h)
	}
	if h := sandboxHint(errors.New("something else")); h != "" {
		t.Errorf("another error: got %q, want no hint", h)
	}
}

// `applianced config reload` (the unit's ExecReload) returns once the new
// config is in effect, and a broken file fails it with the problem named
// while the daemon keeps the config it had. Both are recorded with the
// admin's uid.
func TestConfigReloadWaitsForTheDaemon(t *testing.T) {
	x := startDevDaemon(t, "info")
	path := x.d.config().Path
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	debug := bytes.Replace(good, []byte(`log_level = "info"`), []byte(`log_level = "debug"`), 1)
	if bytes.Equal(debug, good) {
		t.Fatal("the dev config has no log_level to change")
	}
	if err := os.WriteFile(path, debug, 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "config", "reload", "--config", path)
	if code != exitOK {
		t.Fatalf("config reload: exit %d\n%s", code, stderr)
	}
	// In effect when the verb returns: no waiting, no polling.
	if got := x.d.level.Level(); got != slog.LevelDebug {
		t.Errorf("log level right after config reload: %v, want debug", got)
	}
	sum := sha256.Sum256(debug)
	if !strings.Contains(stdout, hex.EncodeToString(sum[:])) {
		t.Errorf("config reload printed %q, want the SHA-256 of the file applied", stdout)
	}
	ev := x.lastEvent("config.reload")
	if ev.Outcome != audit.OutcomeSuccess || ev.Actor.UID == nil || *ev.Actor.UID != os.Getuid() {
		t.Errorf("config.reload event: outcome %s actor %+v, want success by uid %d", ev.Outcome, ev.Actor, os.Getuid())
	}

	broken := append(bytes.Replace(debug, []byte(`log_level = "debug"`), []byte(`log_level = "info"`), 1), []byte("\nbogus_key = 1\n")...)
	if err := os.WriteFile(path, broken, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "config", "reload", "--config", path)
	if code != exitFailure || !strings.Contains(stderr, "bogus_key") || !strings.Contains(stderr, "previous config") {
		t.Errorf("config reload of a broken file: exit %d, stderr %q; want 1 naming bogus_key and saying the previous config stays", code, stderr)
	}
	if got := x.d.level.Level(); got != slog.LevelDebug {
		t.Errorf("log level after a refused reload: %v, want debug (unchanged)", got)
	}
	if ev := x.lastEvent("config.reload"); ev.Outcome != audit.OutcomeDenied {
		t.Errorf("config.reload event of the broken file: %s, want denied", ev.Outcome)
	}
}

// [server] keys bound at start (listeners, sockets, state dir, TLS pair)
// cannot change on a reload: it says so, exit 1, and the running values stay
// what the daemon reports and what its watchdog checks.
func TestReloadKeepsServerKeysBoundAtStart(t *testing.T) {
	x := startDevDaemon(t, "info")
	path := x.d.config().Path
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cur := x.d.config().Server
	set := func(key, from, to string) []byte {
		t.Helper()
		old := []byte(key + ` = "` + from + `"`)
		if !bytes.Contains(good, old) {
			t.Fatalf("the dev config has no %s", old)
		}
		return bytes.Replace(good, old, []byte(key+` = "`+to+`"`), 1)
	}

	if err := os.WriteFile(path, set("listen", cur.Listen, "127.0.0.1:1"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "config", "reload", "--config", path)
	if code != exitFailure || !strings.Contains(stderr, "listen") || !strings.Contains(stderr, "next restart") {
		t.Errorf("listen changed: exit %d, stderr %q; want 1 saying listen takes effect at the next restart", code, stderr)
	}
	if got := x.d.config().Server.Listen; got != cur.Listen {
		t.Errorf("listen after the reload: %s, want the one in effect, %s", got, cur.Listen)
	}

	// A changed admin socket, reloaded by SIGHUP (the CLI would dial the
	// new path): the watchdog must keep finding the socket the daemon serves.
	if err := os.WriteFile(path, set("admin_socket", cur.AdminSocket, cur.AdminSocket+".new"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = x.d.reloadFrom(x.ctx, path, audit.Actor{})
	if err == nil || !strings.Contains(err.Error(), "admin_socket") {
		t.Errorf("admin_socket changed: reload error %v, want one naming admin_socket", err)
	}
	if got := x.d.config().Server.AdminSocket; got != cur.AdminSocket {
		t.Errorf("admin_socket after the reload: %s, want %s", got, cur.AdminSocket)
	}
	if err := x.d.alive(x.ctx); err != nil {
		t.Errorf("watchdog check after the reload: %v", err)
	}
	if ev := x.lastEvent("config.reload"); ev.Outcome != audit.OutcomeFailure || !strings.Contains(ev.Reason, "admin_socket") {
		t.Errorf("config.reload event: %s %q, want failure naming admin_socket", ev.Outcome, ev.Reason)
	}
}

// A daemon that cannot start until an admin acts exits 78, which the unit
// does not restart (RestartPreventExitStatus=78): a config with errors, and
// a vault to upgrade. Restarting would only repeat the refusal, every 2 s.
func TestServeNeedingAnAdminExits78(t *testing.T) {
	t.Run("config with errors", func(t *testing.T) {
		dir := t.TempDir()
		cfgPath := filepath.Join(dir, "applianced.toml")
		if err := os.WriteFile(cfgPath, []byte("[server]\nbogus_key = 1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		e := testEnv()
		// hardening.Apply (inside serve) changes this process: put back
		// what the package's other tests could notice.
		old := unix.Umask(0o022)
		unix.Umask(old)
		t.Cleanup(func() {
			unix.Umask(old)
			_ = unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
			_ = unix.Munlockall()
		})
		if code := run(context.Background(), e, []string{"serve", "--config", cfgPath}); code != exitNeedsAdmin {
			t.Errorf("serve with a broken config: exit %d, want %d\n%s", code, exitNeedsAdmin, e.stderr.(*syncBuffer).String())
		}
	})
	t.Run("vault to upgrade", func(t *testing.T) {
		dir := t.TempDir()
		cfgPath := vaultConfig(t, dir, readGolden(t, goldenVault.key))
		cfg, err := config.Load(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfg.Server.StateDir, vault.DefaultFile), readGolden(t, goldenVault.db), 0o600); err != nil {
			t.Fatal(err)
		}
		e := testEnv()
		code := serve(context.Background(), e, cfg, serveOptions{adminGID: -1})
		if out := e.stderr.(*syncBuffer).String(); code != exitNeedsAdmin || !strings.Contains(out, "applianced vault upgrade") {
			t.Errorf("serve with a vault from before record MACs: exit %d, want %d naming `applianced vault upgrade`\n%s", code, exitNeedsAdmin, out)
		}
	})
}
