package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/internal/testenv/rsyslog"
)

// TestAuditTrailReachesRsyslogAndVerifies runs the daemon with a real
// rsyslog target and its real vault: the trail arrives sealed by a final
// checkpoint signed with the vault's audit key,
// `audit verify FILE` passes with `audit pubkey`'s key, and fails naming the
// seq once a line is removed.
func TestAuditTrailReachesRsyslogAndVerifies(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})

	dir := t.TempDir()
	cfg := testConfig(t, dir, fmt.Sprintf(`
[audit]
checkpoint_every = 3

[[audit.syslog]]
address = "tcp://%s"
format = "rfc5424"
`, srv.Addr))
	msgs := notifySocket(t)
	d := startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")

	ctx := context.Background()
	e := testEnv()
	if code := run(ctx, e, []string{"audit", "pubkey", "--config", cfg.Path}); code != exitOK {
		t.Fatalf("audit pubkey: exit %d: %s", code, e.stderr)
	}
	pub := strings.TrimSpace(fmt.Sprint(e.stdout))
	if !strings.HasPrefix(pub, "ed25519:") {
		t.Fatalf("got public key %q", pub)
	}
	e = testEnv()
	e.stdin = strings.NewReader("hunter2\n")
	if code := run(ctx, e, []string{"audit", "hash", "--config", cfg.Path, "-"}); code != exitOK {
		t.Fatalf("audit hash: exit %d: %s", code, e.stderr)
	}
	if h := fmt.Sprint(e.stdout); !strings.HasPrefix(h, "hmac-sha256:") || strings.Contains(h, "hunter2") {
		t.Errorf("got %q, want an HMAC", h)
	}
	// Changing the targets waits for a restart, and the reload says so.
	good, _ := os.ReadFile(cfg.Path)
	changed := strings.Replace(string(good), srv.Addr, "127.0.0.1:9", 1)
	if err := os.WriteFile(cfg.Path, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, msgs, "RELOADING=1")
	waitFor(t, msgs, "READY=1")
	if !strings.Contains(d.env.stderr.(*syncBuffer).String(), "next restart") {
		t.Errorf("the reload did not say the target change waits for a restart; stderr: %s", d.env.stderr)
	}
	if code := d.stop(t); code != exitOK {
		t.Fatalf("daemon exit %d: %s", code, d.env.stderr)
	}

	// The daemon flushed the final checkpoint before it stopped.
	var lines []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(srv.File)
		lines = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		if strings.Contains(string(b), `\"final\":\"true\"`) || strings.Contains(string(b), `"final":"true"`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	e = testEnv()
	if code := run(ctx, e, []string{"audit", "verify", "--pubkey", pub, srv.File}); code != exitOK {
		t.Fatalf("audit verify on the rsyslog file: exit %d\n%s%s", code, e.stdout, e.stderr)
	}
	if out := fmt.Sprint(e.stdout); !strings.Contains(out, "ok: ") {
		t.Errorf("got %q, want ok", out)
	}
	// Without the key (the daemon is stopped) nothing is "ok": whoever
	// rewrites a capture can recompute its chain.
	e = testEnv()
	if code := run(ctx, e, []string{"audit", "verify", "--config", cfg.Path, srv.File}); code != exitUsage || !strings.Contains(fmt.Sprint(e.stderr), "--pubkey") {
		t.Errorf("audit verify FILE without a key: exit %d, stderr %q; want a usage error asking for --pubkey", code, e.stderr)
	}
	e = testEnv()
	if code := run(ctx, e, []string{"audit", "verify", "--config", cfg.Path, "--no-signatures", srv.File}); code != exitFailure || !strings.Contains(fmt.Sprint(e.stdout), "NOT VERIFIED") {
		t.Errorf("audit verify --no-signatures: exit %d, stdout %q; want a failure saying it is not verified", code, e.stdout)
	}

	var kept []string
	removed := ""
	for _, l := range lines {
		if removed == "" && strings.Contains(l, `{"audit_seq":2,`) {
			removed = l
			continue
		}
		kept = append(kept, l)
	}
	if removed == "" {
		t.Fatalf("seq 2 is not in the capture: %q", lines)
	}
	cut := filepath.Join(t.TempDir(), "cut.log")
	if err := os.WriteFile(cut, []byte(strings.Join(kept, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e = testEnv()
	if code := run(ctx, e, []string{"audit", "verify", "--pubkey", pub, cut}); code != exitFailure {
		t.Fatalf("audit verify on a cut file: exit %d, want %d", code, exitFailure)
	}
	if out := fmt.Sprint(e.stdout); !strings.Contains(out, "seq 2 is missing") {
		t.Errorf("got %q, want the missing seq named", out)
	}
}

// TestStopDoesNotWaitForAnUnreachableTarget stops the daemon while its
// syslog target refuses connections: the stop gives up on the target
// instead of running into the flush bound, the final checkpoint still goes
// into the journal, and once the receiver is back on the same address the
// next start delivers the whole trail, from seq 1 without a gap, sealed by
// the first run's final checkpoint.
func TestStopDoesNotWaitForAnUnreachableTarget(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	if err := srv.Stop(); err != nil { // the address now refuses connections
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := testConfig(t, dir, fmt.Sprintf(`
[[audit.syslog]]
address = "tcp://%s"
format = "rfc5424"
`, srv.Addr))
	msgs := notifySocket(t)
	d := startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")
	stopped := make(chan int, 1)
	go func() { d.cancel(); <-d.done; stopped <- d.code }()
	select {
	case code := <-stopped:
		if code != exitOK {
			t.Fatalf("daemon exit %d: %s", code, d.env.stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the daemon did not stop within 10s with its target unreachable")
	}
	logs := d.env.stderr.(*syncBuffer).String()
	if !strings.Contains(logs, "target not connected") || strings.Contains(logs, "deadline exceeded") {
		t.Errorf("the stop did not give up on the unreachable target at once; stderr:\n%s", logs)
	}

	// The receiver is back; the next start sends what the first run kept.
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	msgs = notifySocket(t)
	d = startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")
	e := testEnv()
	if code := run(context.Background(), e, []string{"audit", "pubkey", "--config", cfg.Path}); code != exitOK {
		t.Fatalf("audit pubkey: exit %d: %s\ndaemon: %s", code, e.stderr, d.env.stderr)
	}
	pub := strings.TrimSpace(fmt.Sprint(e.stdout))
	if code := d.stop(t); code != exitOK {
		t.Fatalf("daemon exit %d: %s", code, d.env.stderr)
	}
	finals := 0
	deadline := time.Now().Add(30 * time.Second)
	for finals < 2 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(srv.File)
		finals = strings.Count(string(b), `final\":\"true\"`) + strings.Count(string(b), `"final":"true"`)
		time.Sleep(20 * time.Millisecond)
	}
	if finals < 2 {
		t.Fatalf("got %d final checkpoints at the receiver, want both runs'", finals)
	}
	e = testEnv()
	if code := run(context.Background(), e, []string{"audit", "verify", "--json", "--pubkey", pub, srv.File}); code != exitOK {
		t.Fatalf("audit verify: exit %d\n%s%s", code, e.stdout, e.stderr)
	}
	var rep audit.CaptureReport
	if err := json.Unmarshal([]byte(fmt.Sprint(e.stdout)), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.FirstSeq != 1 || rep.SealedUpTo+1 != rep.LastSeq || len(rep.Problems) > 0 {
		t.Errorf("got seq %d..%d sealed up to %d, problems %v; want from 1, sealed up to the final checkpoint, none",
			rep.FirstSeq, rep.LastSeq, rep.SealedUpTo, rep.Problems)
	}
}

// sealedCapture writes a capture of three entries and two heartbeat
// checkpoints a minute apart (the last at t0+2m), signed by key, and
// returns its path; skip leaves out that many lines from the start.
func sealedCapture(t *testing.T, key ed25519.PrivateKey, t0 time.Time, skip int) string {
	t.Helper()
	var lines []string
	var prev [32]byte
	add := func(e *audit.Event) {
		e.Seq = uint64(len(lines) + 1)
		c, err := e.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		h := audit.ChainHash(prev, c)
		lines = append(lines, fmt.Sprintf(`<86>1 - host applianced 1 x - {"audit_seq":%d,"audit_hash":"%x","audit_prev":"%x","event":%s}`, e.Seq, h, prev, c))
		prev = h
	}
	for i := 0; i < 3; i++ {
		add(&audit.Event{Time: t0, Type: "tool.call", Outcome: audit.OutcomeSuccess})
	}
	for i := 1; i <= 2; i++ {
		add(audit.NewCheckpointEvent(key, audit.Checkpoint{Seq: uint64(len(lines)), Hash: prev, Time: t0.Add(time.Duration(i) * time.Minute), Interval: time.Minute}))
	}
	path := filepath.Join(t.TempDir(), "capture.log")
	if err := os.WriteFile(path, []byte(strings.Join(lines[skip:], "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAuditVerifyCaptureUntilAndFrom runs `audit verify FILE` with --until
// and --from: the headline names the sealed range and the last seal's
// time; a newest seal older than --until, or a capture starting after
// --from, fails.
func TestAuditVerifyCaptureUntilAndFrom(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := audit.FormatPublicKey(key.Public().(ed25519.PublicKey))
	t0 := time.Date(2026, 11, 25, 23, 0, 0, 0, time.UTC)
	whole := sealedCapture(t, key, t0, 0)
	headless := sealedCapture(t, key, t0, 1)
	soon := t0.Add(2*time.Minute + 30*time.Second).Format(time.RFC3339)
	later := t0.Add(time.Hour).Format(time.RFC3339)
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"taken right after the last seal", []string{"--until", soon, whole}, exitOK, "sealed seq 1..4 by key " + audit.KeyID(key.Public().(ed25519.PublicKey)) + "; last seal at 2026-11-25T23:02:00Z; first chain\n"},
		{"taken an hour later", []string{"--until", later, whole}, exitFailure, "FAIL the newest seal (seq 5) was made at 2026-11-25T23:02:00Z"},
		{"taken an hour later, stream open", []string{"--until", later, "--open-tail", whole}, exitOK, "ok: "},
		{"until now by default", []string{whole}, exitFailure, "seals checked up to now ("},
		{"until now by default, the way out", []string{whole}, exitFailure, "give --until with when it was (the receiver's rotation time, say), or --open-tail"},
		{"head cut", []string{"--until", soon, headless}, exitFailure, "FAIL the capture starts at seq 2"},
		{"head where the auditor says it starts", []string{"--until", soon, "--from", "2", headless}, exitOK, "ok: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testEnv()
			code := run(context.Background(), e, append([]string{"audit", "verify", "--pubkey", pub}, tc.args...))
			out := fmt.Sprint(e.stdout)
			if code != tc.wantCode || !strings.Contains(out, tc.wantOut) {
				t.Errorf("got exit %d, output:\n%s%s\nwant exit %d and %q", code, out, e.stderr, tc.wantCode, tc.wantOut)
			}
			if first, _, _ := strings.Cut(out, "\n"); !strings.HasPrefix(first, "sealed seq 1..4 by key ") && !strings.HasPrefix(first, "sealed seq 2..4 by key ") {
				t.Errorf("got first line %q, want the sealed range", first)
			}
		})
	}
	e := testEnv()
	if code := run(context.Background(), e, []string{"audit", "verify", "--pubkey", pub, "--until", "yesterday", whole}); code != exitUsage {
		t.Errorf("--until yesterday: got exit %d, want %d", code, exitUsage)
	}
	for _, from := range []string{"x", ":2", "abc:x"} {
		if code := run(context.Background(), testEnv(), []string{"audit", "verify", "--pubkey", pub, "--until", soon, "--from", from, whole}); code != exitUsage {
			t.Errorf("--from %q: got exit %d, want %d", from, code, exitUsage)
		}
	}
}

// TestAuditVerifyAfterTheJournalIsSetAside follows the documented
// recovery: the daemon's journal is moved aside and the next run starts a
// new one from seq 1, to the same rsyslog file. `audit verify FILE`
// passes, naming both chains, instead of calling every seq a conflict.
func TestAuditVerifyAfterTheJournalIsSetAside(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	dir := t.TempDir()
	cfg := testConfig(t, dir, fmt.Sprintf(`
[[audit.syslog]]
address = "tcp://%s"
format = "rfc5424"
`, srv.Addr))
	var pub string
	for n := 1; n <= 2; n++ {
		pub = daemonRun(t, cfg, n, nil)
		if n == 1 {
			journal := filepath.Join(cfg.Server.StateDir, "audit")
			if err := os.Rename(journal, journal+".old"); err != nil {
				t.Fatal(err)
			}
		}
	}
	var e *env
	deadline := time.Now().Add(30 * time.Second)
	for {
		e = testEnv()
		code := run(context.Background(), e, []string{"audit", "verify", "--pubkey", pub, srv.File})
		if code == exitOK || time.Now().After(deadline) {
			if code != exitOK {
				t.Fatalf("audit verify: exit %d\n%s%s", code, e.stdout, e.stderr)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := fmt.Sprint(e.stdout)
	t.Logf("audit verify:\n%s", out)
	if !strings.Contains(out, "note: 2 chains in the capture") || !strings.HasPrefix(out, "chain ") || strings.Count(out, "\nchain ") != 1 {
		t.Errorf("got output:\n%s\nwant both chains named, each sealed", out)
	}
	if first, _, _ := strings.Cut(out, "\n"); strings.Count(out, "--from 1 applies to this chain") != 1 || !strings.Contains(first, "--from 1 applies to this chain") {
		t.Errorf("got output:\n%s\nwant the oldest chain's headline, alone, to say --from applies to it", out)
	}
	lines := strings.Split(out, "\n")
	oldID := strings.TrimPrefix(strings.SplitN(lines[0], ":", 2)[0], "chain ")
	if !strings.HasSuffix(lines[0], "; first chain") || !strings.Contains(lines[1], "; continues chain "+oldID+" from seq ") {
		t.Errorf("got output:\n%s\nwant the oldest chain named the first, the newer continuing chain %s", out, oldID)
	}
	// The journal in place says the same of itself.
	e = testEnv()
	if code := run(context.Background(), e, []string{"audit", "verify", "--pubkey", pub, "--dir", filepath.Join(cfg.Server.StateDir, "audit")}); code != exitOK ||
		!strings.Contains(fmt.Sprint(e.stdout), "; continues chain "+oldID+" from seq ") {
		t.Errorf("audit verify --dir: got exit %d, output:\n%s%s\nwant ok, continuing chain %s", code, e.stdout, e.stderr, oldID)
	}
}

// TestAuditVerifyFindsAVaultPutBack: vault.db copied while the appliance
// was down, a secret stored after, then the copy put back while it was
// down again. The record MACs accept the older genuine copy; the audit
// trail does not: the vault opened in another state than it closed in,
// and `audit verify` of the receiver's file says so. Without the put back
// the same file verifies.
func TestAuditVerifyFindsAVaultPutBack(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	dir := t.TempDir()
	cfg := testConfig(t, dir, fmt.Sprintf(`
[[audit.syslog]]
address = "tcp://%s"
format = "rfc5424"
`, srv.Addr))
	vaultDB := filepath.Join(cfg.Server.StateDir, "vault.db")
	backup := filepath.Join(dir, "vault-copy.db")
	var pub string
	verify := func() (int, string) {
		t.Helper()
		e := testEnv()
		code := run(context.Background(), e, []string{"audit", "verify", "--pubkey", pub, srv.File})
		return code, fmt.Sprint(e.stdout) + fmt.Sprint(e.stderr)
	}
	storeASecret := func() {
		e := testEnv()
		e.stdin = strings.NewReader("a-key-stored-after-the-copy\n")
		if code := run(context.Background(), e, []string{"secret", "put", "late-key", "--type", "api_key", "--config", cfg.Path}); code != exitOK {
			t.Fatalf("secret put: exit %d: %s", code, e.stderr)
		}
	}
	for n := 1; n <= 3; n++ {
		var while func()
		if n == 2 {
			while = storeASecret
		}
		pub = daemonRun(t, cfg, n, while)
		switch n {
		case 1:
			copyFile(t, vaultDB, backup)
		case 2:
			deadline := time.Now().Add(30 * time.Second)
			for {
				code, out := verify()
				if code == exitOK {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("before the put back: audit verify exit %d\n%s", code, out)
				}
				time.Sleep(50 * time.Millisecond)
			}
			copyFile(t, backup, vaultDB)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out := verify()
		if code != exitOK && strings.Contains(out, "vault.db was changed while the appliance was down") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the put back: audit verify exit %d\n%s\nwant a failure saying the vault opened in another state", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// daemonRun starts the daemon on cfg, waits until it is ready, runs while
// (if any) and stops it; it returns the audit public key the daemon gave.
func daemonRun(t *testing.T, cfg *config.File, n int, while func()) (pub string) {
	t.Helper()
	msgs := notifySocket(t)
	d := startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")
	e := testEnv()
	if code := run(context.Background(), e, []string{"audit", "pubkey", "--config", cfg.Path}); code != exitOK {
		t.Fatalf("run %d: audit pubkey: exit %d: %s", n, code, e.stderr)
	}
	if while != nil {
		while()
	}
	if code := d.stop(t); code != exitOK {
		t.Fatalf("run %d: daemon exit %d: %s", n, code, d.env.stderr)
	}
	return strings.TrimSpace(fmt.Sprint(e.stdout))
}

// copyFile copies src over dst, keeping dst's mode (0600).
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".tmp", dst); err != nil {
		t.Fatal(err)
	}
}
