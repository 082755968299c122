package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/hardening"
)

// TestDoctorVerb runs `applianced doctor --json` in-process against files
// the test lays out: a valid config, a key readable by others, a missing
// TLS key, a private state dir.
func TestDoctorVerb(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "master.key")
	if err := os.WriteFile(key, make([]byte, 32), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "applianced.toml")
	cfg := fmt.Sprintf("[server]\nstate_dir = %q\nadmin_socket = %q\ntls_cert = %q\ntls_key = %q\n[vault]\nmaster_key_file = %q\n",
		state, filepath.Join(dir, "admin.sock"), filepath.Join(dir, "api.pem"), filepath.Join(dir, "api.key"), key)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o640); err != nil {
		t.Fatal(err)
	}
	e := testEnv()
	code := run(context.Background(), e, []string{"doctor", "--json", "--config", cfgPath})
	if code != exitFailure {
		t.Errorf("exit code got %d, want %d (a check fails)", code, exitFailure)
	}
	var rep hardening.Report
	if err := json.Unmarshal(e.stdout.(*syncBuffer).b.Bytes(), &rep); err != nil {
		t.Fatalf("doctor --json output: %v\n%s", err, e.stdout.(*syncBuffer).b.String())
	}
	want := map[string]hardening.Status{
		"config " + cfgPath:                     hardening.Pass,
		"mode " + key:                           hardening.Fail,
		"mode " + filepath.Join(dir, "api.key"): hardening.Fail,
		"mode " + state:                         hardening.Pass,
		"master key source":                     hardening.Warn,
		"syslog":                                hardening.Skip, // no daemon on the socket
	}
	got := map[string]hardening.Status{}
	for _, r := range rep.Results {
		got[r.Name] = r.Status
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s got %q, want %q", name, got[name], w)
		}
	}
	if _, ok := got["sysctl kernel.kptr_restrict"]; !ok || len(rep.Results) < 10 {
		t.Errorf("got %d results, want every host check", len(rep.Results))
	}
}

// TestDoctorVerbBadConfig: a config with errors fails its line and still
// gets the host checks.
func TestDoctorVerbBadConfig(t *testing.T) {
	cfgPath := filepath.Join(t.TempDir(), "applianced.toml")
	if err := os.WriteFile(cfgPath, []byte("[server]\nlisten = 5\nbogus = 1\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	e := testEnv()
	if code := run(context.Background(), e, []string{"doctor", "--config", cfgPath}); code != exitFailure {
		t.Errorf("exit code got %d, want %d", code, exitFailure)
	}
	out := e.stdout.(*syncBuffer).b.String()
	for _, want := range []string{"FAIL  config " + cfgPath, "fix: run `applianced config check`", "sysctl kernel.dmesg_restrict", "clock synchronized"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestServeRefusesReadableTLSKey: serve stops before opening anything when
// the API's private key is readable by others.
func TestServeRefusesReadableTLSKey(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "api.key")
	if err := os.WriteFile(key, []byte("not a key"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "applianced.toml")
	cfg := fmt.Sprintf("[server]\nstate_dir = %q\ntls_cert = %q\ntls_key = %q\n", filepath.Join(dir, "state"), filepath.Join(dir, "api.pem"), key)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o640); err != nil {
		t.Fatal(err)
	}
	e := testEnv()
	// hardening.Apply (inside serve) changes this process: put back what
	// the package's other tests could notice (the core limit stays 0).
	old := unix.Umask(0o022)
	unix.Umask(old)
	t.Cleanup(func() {
		unix.Umask(old)
		_ = unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
		_ = unix.Munlockall()
	})
	if code := run(context.Background(), e, []string{"serve", "--config", cfgPath}); code != exitFailure {
		t.Fatalf("serve exit code got %d, want %d", code, exitFailure)
	}
	if out := e.stderr.(*syncBuffer).b.String(); !strings.Contains(out, "unsafe file mode") || !strings.Contains(out, key) {
		t.Errorf("serve output got %q, want the key refused for its mode", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Error("serve created the state dir before refusing the key")
	}
}

// TestDoctorAuditChain: doctor says whether the record beside the journal
// names its chain, and names each journal set aside with the command that
// delivers what its targets may lack.
func TestDoctorAuditChain(t *testing.T) {
	state := t.TempDir()
	dir := filepath.Join(state, "audit")
	run := func() []hardening.Result {
		t.Helper()
		return auditChainCheck(state).Run(context.Background())
	}
	if res := run(); len(res) != 1 || res[0].Status != hardening.Skip {
		t.Fatalf("no journal: got %+v, want one skip", res)
	}
	j, err := audit.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(context.Background(), &audit.Event{Type: "auth.login", Outcome: audit.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	if res := run(); len(res) != 1 || res[0].Status != hardening.Pass || !strings.Contains(res[0].Detail, j.ChainID()) {
		t.Errorf("a journal with its first entry: got %+v, want a pass naming chain %s", res, j.ChainID())
	}
	// The record lost (or never written: a full state dir).
	if err := os.Remove(dir + ".last"); err != nil {
		t.Fatal(err)
	}
	if res := run(); len(res) != 1 || res[0].Status != hardening.Warn || !strings.Contains(res[0].Detail, "no record") {
		t.Errorf("a journal without its record: got %+v, want a warning", res)
	}
	first := j.ChainID()
	if _, err := j.Append(context.Background(), &audit.Event{Type: "auth.login", Outcome: audit.OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	j.Close() // records the chain as far as it goes
	if res := run(); len(res) != 1 || res[0].Status != hardening.Pass || !strings.Contains(res[0].Detail, first) {
		t.Errorf("a recorded journal: got %+v, want a pass naming chain %s", res, first)
	}

	// The documented recovery: the journal is moved aside, a new one
	// starts, and its chain start records the new chain at once.
	aside := filepath.Join(state, "audit.damaged")
	if err := os.Rename(dir, aside); err != nil {
		t.Fatal(err)
	}
	if j, err = audit.Open(dir, nil); err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	res := run()
	var sawAside bool
	for _, r := range res {
		if strings.Contains(r.Detail, "applianced audit deliver "+aside) {
			sawAside = true
		}
	}
	if !sawAside || res[0].Status != hardening.Pass || !strings.Contains(res[0].Detail, j.ChainID()) {
		t.Errorf("after the recovery: got %+v, want the new chain recorded and %s named with audit deliver", res, aside)
	}
}
