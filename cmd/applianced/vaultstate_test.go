package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

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

// TestDoctorReportsAVaultPutBack: doctor fails its vault state check while
// the daemon runs on a vault put back, and after it stopped, until a start
// opens the vault as it closed.
func TestDoctorReportsAVaultPutBack(t *testing.T) {
	cfg, r, copied, replaced := putBack(t)
	res := doctorVaultState(t, cfg)
	if res.Status != hardening.Fail || !strings.Contains(res.Detail, copied[:12]) || !strings.Contains(res.Detail, replaced[:12]) ||
		!strings.Contains(res.Fix, "tell the auditor") {
		t.Errorf("daemon running: got %+v, want a failure naming both states and what to do", res)
	}
	stopClean(t, r)
	if res := doctorVaultState(t, cfg); res.Status != hardening.Fail {
		t.Errorf("daemon stopped: got %+v, want the failure still", res)
	}
	stopClean(t, startReady(t, cfg))
	if res := doctorVaultState(t, cfg); res.Status != hardening.Pass {
		t.Errorf("after a start that opened the vault as it closed: got %+v, want a pass", res)
	}
}
