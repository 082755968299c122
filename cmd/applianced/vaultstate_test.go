package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/hardening"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

// The daemon notices a vault.db changed while it was down: these tests run
// the daemon (serve, as systemd does) on a real state dir several times and
// look at its journal, its log and doctor's report.

// startReady starts the daemon on cfg and waits until it is ready.
func startReady(t *testing.T, cfg *config.File) *running {
	t.Helper()
	msgs := notifySocket(t)
	r := startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")
	return r
}

// stopClean stops the daemon and fails the test unless it exits 0.
func stopClean(t *testing.T, r *running) {
	t.Helper()
	if code := r.stop(t); code != exitOK {
		t.Fatalf("daemon exit %d: %s", code, r.env.stderr)
	}
}

// cli runs one verb in-process against cfg's daemon, stdin given, and
// fails the test unless it succeeds.
func cli(t *testing.T, cfg *config.File, stdin string, args ...string) string {
	t.Helper()
	e := testEnv()
	e.stdin = strings.NewReader(stdin)
	if code := run(context.Background(), e, append(args, "--config", cfg.Path)); code != exitOK {
		t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), code, e.stderr)
	}
	return fmt.Sprint(e.stdout)
}

// eventsOf returns the journal's events of type typ (the daemon stopped).
func eventsOf(t *testing.T, cfg *config.File, typ string) []audit.Event {
	t.Helper()
	var out []audit.Event
	for _, ev := range journalEvents(t, cfg) {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// doctorVaultState runs `applianced doctor --json` and returns its vault
// state result.
func doctorVaultState(t *testing.T, cfg *config.File) hardening.Result {
	t.Helper()
	e := testEnv()
	run(context.Background(), e, []string{"doctor", "--json", "--config", cfg.Path})
	var rep hardening.Report
	if err := json.Unmarshal(e.stdout.(*syncBuffer).b.Bytes(), &rep); err != nil {
		t.Fatalf("doctor --json output: %v\n%s", err, e.stdout)
	}
	for _, r := range rep.Results {
		if r.Name == "vault state" {
			return r
		}
	}
	t.Fatalf("doctor reports no vault state:\n%s", e.stdout)
	return hardening.Result{}
}

// putBack runs the daemon three times on a new state dir: the first run
// ends with a copy of vault.db taken, the second stores a secret, and the
// copy is put back before the third, which is left running. It returns the
// config, the third run and the states the vault closed in after each of
// the first two runs.
func putBack(t *testing.T) (cfg *config.File, third *running, copied, replaced string) {
	t.Helper()
	dir := t.TempDir()
	cfg = testConfig(t, dir, "")
	vaultDB := filepath.Join(cfg.Server.StateDir, vault.DefaultFile)
	stopClean(t, startReady(t, cfg))
	copyFile(t, vaultDB, filepath.Join(dir, "vault-copy.db"))
	r := startReady(t, cfg)
	cli(t, cfg, "a-key-stored-after-the-copy\n", "secret", "put", "late-key", "--type", "api_key")
	stopClean(t, r)
	closes := eventsOf(t, cfg, "vault.close")
	if len(closes) != 2 {
		t.Fatalf("got %d vault.close events, want 2", len(closes))
	}
	copied, replaced = closes[0].Details[vault.DetailState], closes[1].Details[vault.DetailState]
	if copied == "" || copied == replaced {
		t.Fatalf("closed in %q then %q: want two states", copied, replaced)
	}
	copyFile(t, filepath.Join(dir, "vault-copy.db"), vaultDB)
	return cfg, startReady(t, cfg), copied, replaced
}

// TestServeRecordsAVaultPutBack: an older copy of vault.db put back while
// the daemon was down: at its next start the daemon records
// vault.state_changed, severity high, naming the state the vault closed in
// and the one it opened in, and logs a warning that says what to do. It
// keeps running.
func TestServeRecordsAVaultPutBack(t *testing.T) {
	cfg, r, copied, replaced := putBack(t)
	cli(t, cfg, "", "secret", "list") // still serving
	stopClean(t, r)
	changes := eventsOf(t, cfg, "vault.state_changed")
	if len(changes) != 1 {
		t.Fatalf("got %d vault.state_changed events, want 1", len(changes))
	}
	ch := changes[0]
	if ch.Severity != audit.SeverityHigh || ch.Details[vault.DetailClosedState] != replaced || ch.Details[vault.DetailState] != copied {
		t.Errorf("got %+v, want severity high, closed_state %s and vault_state %s", ch, replaced, copied)
	}
	logs := fmt.Sprint(r.env.stderr)
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "replaced") || !strings.Contains(logs, "tell the auditor") ||
		!strings.Contains(logs, replaced) || !strings.Contains(logs, copied) {
		t.Errorf("got log:\n%s\nwant a warning naming both states, saying the file was replaced and what to do", logs)
	}
}

// TestDoctorReportsAVaultPutBack: while the daemon runs on a vault put
// back, doctor fails its vault state check, naming both states; once the
// daemon stopped cleanly the file is as it closed it and doctor passes; a
// file put back while the daemon is stopped fails doctor before the start
// that would record it.
func TestDoctorReportsAVaultPutBack(t *testing.T) {
	cfg, r, copied, replaced := putBack(t)
	res := doctorVaultState(t, cfg)
	if res.Status != hardening.Fail || !strings.Contains(res.Detail, "running daemon opened the vault in another state") ||
		!strings.Contains(res.Detail, copied[:12]) || !strings.Contains(res.Detail, replaced[:12]) || !strings.Contains(res.Fix, "tell the auditor") {
		t.Errorf("daemon running: got %+v, want a failure naming both states and what to do", res)
	}
	stopClean(t, r)
	if res := doctorVaultState(t, cfg); res.Status != hardening.Pass || !strings.Contains(res.Detail, "in the state the daemon closed it in") {
		t.Errorf("daemon stopped cleanly: got %+v, want a pass", res)
	}

	vaultDB := filepath.Join(cfg.Server.StateDir, vault.DefaultFile)
	older := filepath.Join(t.TempDir(), "vault.db")
	copyFile(t, vaultDB, older)
	r = startReady(t, cfg)
	cli(t, cfg, "stored-after-the-second-copy\n", "secret", "put", "later-key", "--type", "api_key")
	stopClean(t, r)
	copyFile(t, older, vaultDB)
	if res := doctorVaultState(t, cfg); res.Status != hardening.Fail || !strings.Contains(res.Detail, "next start will record vault.state_changed") {
		t.Errorf("a copy put back while stopped: got %+v, want a failure saying the next start records it", res)
	}
}

// TestServeCleanRestartRecordsNoChange: stopped and started again with
// nothing done in between, the daemon records no change and doctor passes,
// having compared the opening with the close.
func TestServeCleanRestartRecordsNoChange(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	r := startReady(t, cfg)
	cli(t, cfg, "a-value\n", "secret", "put", "a-key", "--type", "api_key")
	stopClean(t, r)
	restartQuietly(t, cfg)
	unseals := eventsOf(t, cfg, "vault.unseal")
	if got := unseals[len(unseals)-1].Details[vault.DetailStateCheck]; got != vault.StateSame {
		t.Errorf("the opening's state_check is %q, want %q", got, vault.StateSame)
	}
	if res := doctorVaultState(t, cfg); res.Status != hardening.Pass || !strings.Contains(res.Detail, "in the state the daemon closed it in") {
		t.Errorf("daemon stopped: got %+v, want a pass saying vault.db is as the daemon closed it", res)
	}
}

// TestServeVaultChangedThroughTheDaemonRaisesNoAlarm: the verbs that change
// the vault all go through the daemon (put, rotate, rekey, restore, which
// replaces the whole file); the close records what they made, so the next
// start is quiet.
func TestServeVaultChangedThroughTheDaemonRaisesNoAlarm(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "")
	backup := filepath.Join(dir, "backup.db")
	r := startReady(t, cfg)
	cli(t, cfg, "first\n", "secret", "put", "a-key", "--type", "api_key")
	cli(t, cfg, "", "vault", "backup", backup)
	cli(t, cfg, "second\n", "secret", "rotate", "a-key")
	cli(t, cfg, "", "vault", "rekey")
	cli(t, cfg, "", "vault", "restore", backup)
	cli(t, cfg, "third\n", "secret", "put", "b-key", "--type", "api_key")
	stopClean(t, r)
	restartQuietly(t, cfg)
}

// restartQuietly starts the daemon again after a clean stop: doctor, while
// it runs, says the vault opened in the state it closed in; stopped, it has
// recorded no vault.state_changed.
func restartQuietly(t *testing.T, cfg *config.File) {
	t.Helper()
	r := startReady(t, cfg)
	if res := doctorVaultState(t, cfg); res.Status != hardening.Pass || !strings.Contains(res.Detail, "running daemon opened the vault in the state it closed in") {
		t.Errorf("daemon running: got %+v, want a pass saying the vault opened as it closed", res)
	}
	stopClean(t, r)
	if changes := eventsOf(t, cfg, "vault.state_changed"); len(changes) != 0 {
		t.Errorf("got %+v, want no vault.state_changed", changes)
	}
}

const vaultStateChildEnv = "APPLIANCED_VAULT_STATE_CHILD"

// TestVaultStateDaemonChild is the daemon TestServeAfterAKillRaisesNoAlarm
// kills; on its own it does nothing. It serves the config named by the
// environment until it is killed.
func TestVaultStateDaemonChild(t *testing.T) {
	path := os.Getenv(vaultStateChildEnv)
	if path == "" {
		return // only a helper process; not a skipped test
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	serve(context.Background(), testEnv(), cfg, serveOptions{adminGID: -1})
}

// TestServeAfterAKillRaisesNoAlarm: the daemon killed with SIGKILL after a
// write leaves no close; the vault then opens in another state than its
// last opening, which is no alarm: nothing can tell a crash's writes from
// a change. The opening says it could not compare (state_check
// unverified), and doctor warns, stopped and running, until a clean stop.
func TestServeAfterAKillRaisesNoAlarm(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	stopClean(t, startReady(t, cfg)) // a close to compare with, before the crashed run
	killedRun(t, cfg, func() { cli(t, cfg, "a-value\n", "secret", "put", "a-key", "--type", "api_key") })
	if n := len(eventsOf(t, cfg, "vault.close")); n != 1 {
		t.Fatalf("got %d vault.close events, want the first run's only", n)
	}
	if res := doctorVaultState(t, cfg); res.Status != hardening.Warn || !strings.Contains(res.Detail, "last run recorded no close") {
		t.Errorf("stopped after the kill: got %+v, want a warning that there is no close to compare with", res)
	}
	r := startReady(t, cfg)
	if res := doctorVaultState(t, cfg); res.Status != hardening.Warn || !strings.Contains(res.Detail, "run before this one recorded no close") {
		t.Errorf("running after the kill: got %+v, want a warning that the opening compared nothing", res)
	}
	stopClean(t, r)
	if changes := eventsOf(t, cfg, "vault.state_changed"); len(changes) != 0 {
		t.Errorf("got %+v, want no vault.state_changed after a crash", changes)
	}
	unseals := eventsOf(t, cfg, "vault.unseal")
	if n := len(unseals); n != 3 || unseals[1].Details[vault.DetailState] == unseals[2].Details[vault.DetailState] {
		t.Fatalf("got %d openings %+v, want 3, the last in another state than the crashed run's", n, unseals)
	}
	if got := unseals[2].Details[vault.DetailStateCheck]; got != vault.StateUnverified {
		t.Errorf("the opening after the kill has state_check %q, want %q", got, vault.StateUnverified)
	}
	if res := doctorVaultState(t, cfg); res.Status != hardening.Pass {
		t.Errorf("after a clean stop: got %+v, want a pass", res)
	}
}

// killedRun runs the daemon on cfg in a child process, runs during once it
// is ready, and kills it with SIGKILL: the run leaves no vault.close.
func killedRun(t *testing.T, cfg *config.File, during func()) {
	t.Helper()
	msgs := notifySocket(t)
	child := exec.Command(os.Args[0], "-test.run=^TestVaultStateDaemonChild$", "-test.count=1")
	child.Env = append(os.Environ(), vaultStateChildEnv+"="+cfg.Path)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	waitFor(t, msgs, "READY=1")
	during()
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
}

// TestServeAfterAKillOfALongRunIsUnverified: the killed run lasted long
// enough that its opening lies further back than the start reads of the
// journal (two segments); no close among them means the run ended without
// one, and the next opening is unverified, not unknown; doctor warns,
// stopped and running.
func TestServeAfterAKillOfALongRunIsUnverified(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "\n[audit]\nsegment_bytes = \"64KiB\"\n")
	stopClean(t, startReady(t, cfg))
	journal := filepath.Join(cfg.Server.StateDir, "audit")
	killedRun(t, cfg, func() {
		for i := 0; ; i++ {
			if _, segs, err := audit.DirChain(journal); err != nil || segs > startMarkSegments+1 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			e := testEnv()
			e.stdin = strings.NewReader(fmt.Sprintf("value %d\n", i))
			if code := run(context.Background(), e, []string{"audit", "hash", "--config", cfg.Path, "-"}); code != exitOK {
				t.Fatalf("audit hash: exit %d: %s", code, e.stderr)
			}
		}
	})
	if res := doctorVaultState(t, cfg); res.Status != hardening.Warn || !strings.Contains(res.Detail, "last run recorded no close") {
		t.Errorf("stopped after the kill: got %+v, want a warning that there is no close to compare with", res)
	}
	r := startReady(t, cfg)
	if res := doctorVaultState(t, cfg); res.Status != hardening.Warn || !strings.Contains(res.Detail, "further back than the journal's newest segments") {
		t.Errorf("running after the kill: got %+v, want a warning that the opening compared nothing", res)
	}
	stopClean(t, r)
	unseals := eventsOf(t, cfg, "vault.unseal")
	if got := unseals[len(unseals)-1].Details[vault.DetailStateCheck]; got != vault.StateUnverified {
		t.Errorf("the opening after the kill has state_check %q, want %q", got, vault.StateUnverified)
	}
}

// TestDoctorVaultStateWhenTheDaemonDoesNotAnswer: something listens on the
// admin socket but refuses the status (a daemon starting, or doctor run
// without the rights): doctor warns that it could not ask, and does not
// read the journal as if the daemon were stopped (which would blame a
// crash for the running daemon's own opening).
func TestDoctorVaultStateWhenTheDaemonDoesNotAnswer(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	stopClean(t, startReady(t, cfg))
	ln, err := net.Listen("unix", cfg.Server.AdminSocket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"error":"forbidden","error_description":"not an admin"}`)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	res := doctorVaultState(t, cfg)
	if res.Status != hardening.Warn || !strings.Contains(res.Detail, "could not ask the daemon") {
		t.Errorf("got %+v, want a warning that the daemon could not be asked", res)
	}
}

// TestServeVaultPutBackAcrossASetAside: the journal set aside (in the state
// dir) and an older copy of vault.db put back while the daemon was down;
// the new chain holds no vault event yet, so the start compares with the
// last close of the journal the new chain continues, and records the
// change there.
func TestServeVaultPutBackAcrossASetAside(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "")
	vaultDB := filepath.Join(cfg.Server.StateDir, vault.DefaultFile)
	stopClean(t, startReady(t, cfg))
	copyFile(t, vaultDB, filepath.Join(dir, "vault-copy.db"))
	r := startReady(t, cfg)
	cli(t, cfg, "a-key-stored-after-the-copy\n", "secret", "put", "late-key", "--type", "api_key")
	stopClean(t, r)
	closes := eventsOf(t, cfg, "vault.close")
	replaced := closes[len(closes)-1].Details[vault.DetailState]
	journal := filepath.Join(cfg.Server.StateDir, "audit")
	if err := os.Rename(journal, journal+".damaged"); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(dir, "vault-copy.db"), vaultDB)
	r = startReady(t, cfg)
	if res := doctorVaultState(t, cfg); res.Status != hardening.Fail || !strings.Contains(res.Detail, replaced[:12]) {
		t.Errorf("got %+v, want a failure naming the state the set-aside journal recorded", res)
	}
	stopClean(t, r)
	changes := eventsOf(t, cfg, "vault.state_changed")
	if len(changes) != 1 || changes[0].Details[vault.DetailClosedState] != replaced {
		t.Fatalf("got %+v, want one vault.state_changed from the state %s the set-aside journal closed in", changes, replaced)
	}
}

// TestDoctorVaultStateWhileTheDaemonStarts: no admin socket yet, but
// vault.db is held open (as a starting or stopping daemon holds it):
// doctor says the daemon is starting or stopping instead of reading the
// journal as a stopped one's, whose newest mark would be that run's own
// opening, blamed on a crash.
func TestDoctorVaultStateWhileTheDaemonStarts(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	stopClean(t, startReady(t, cfg))
	db, err := bolt.Open(filepath.Join(cfg.Server.StateDir, vault.DefaultFile), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res := doctorVaultState(t, cfg)
	if res.Status != hardening.Warn || !strings.Contains(res.Detail, "starting or stopping") {
		t.Errorf("got %+v, want a warning that the daemon is starting or stopping", res)
	}
}
