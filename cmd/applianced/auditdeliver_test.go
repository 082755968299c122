package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/internal/testenv/fstree"
	"github.com/applianced/applianced/internal/testenv/rsyslog"
	"github.com/applianced/applianced/syslog"
)

// dirHashes maps every file under dir to its mode, time and SHA-256.
func dirHashes(t *testing.T, dir string) map[string]string {
	t.Helper()
	out, err := fstree.Snapshot(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// receivedSeqs returns how often each seq of chain is in a receiver's file.
func receivedSeqs(t *testing.T, path, chain string) map[uint64]int {
	t.Helper()
	b, _ := os.ReadFile(path)
	out := map[uint64]int{}
	for _, l := range strings.Split(string(b), "\n") {
		i := strings.Index(l, `{"audit_seq":`)
		if i < 0 || !strings.Contains(l, `"audit_chain":"`+chain+`"`) {
			continue
		}
		var seq uint64
		fmt.Sscanf(l[i:], `{"audit_seq":%d`, &seq)
		out[seq]++
	}
	return out
}

// checkDelivered checks what the receiver holds of chain after `audit
// deliver` reported sending seqs from..upTo. The delivery must start right
// after the cursor the forwarder recorded for the chain (its audit.tamper
// in the live journal), at or before the receiver's first missing seq.
// Each seq up to the cursor (confirmed before the outage: not sent again)
// arrived once, each seq after upTo never, and each seq between once, or
// twice when the receiver already had it: an entry sent as the receiver
// stopped is not confirmed, so it is sent again, an identical copy (at
// least once, never lost).
func checkDelivered(t *testing.T, cfg *config.File, chain string, before, got map[uint64]int, from, upTo, last uint64) {
	t.Helper()
	var had uint64
	for before[had+1] > 0 {
		had++
	}
	cursor := tamperCursor(t, cfg, chain)
	if from != cursor+1 || cursor > had {
		t.Errorf("delivered from seq %d; the forwarder's cursor in the old chain was %d and the receiver had 1..%d, want from %d", from, cursor, had, cursor+1)
	}
	for s := uint64(1); s <= last; s++ {
		want := 1
		switch {
		case s > upTo:
			want = 0
		case s >= from:
			want += before[s]
		}
		if got[s] != want {
			t.Errorf("seq %d of the old chain: received %d times (%d before the delivery), want %d (delivered %d..%d)", s, got[s], before[s], want, from, upTo)
		}
	}
}

// tamperCursor is the cursor in chain that the forwarder's audit.tamper in
// the live journal recorded when it met the new chain.
func tamperCursor(t *testing.T, cfg *config.File, chain string) uint64 {
	t.Helper()
	e := testEnv()
	if code := run(context.Background(), e, []string{"audit", "tail", "--config", cfg.Path, "-n", "500"}); code != exitOK {
		t.Fatalf("audit tail: exit %d: %s", code, e.stderr)
	}
	for _, l := range strings.Split(fmt.Sprint(e.stdout), "\n") {
		if !strings.Contains(l, `"type":"audit.tamper"`) || !strings.Contains(l, `"cursor_chain":"`+chain+`"`) {
			continue
		}
		i := strings.Index(l, `"cursor":"`)
		var c uint64
		if i < 0 {
			continue
		}
		if _, err := fmt.Sscanf(l[i:], `"cursor":"%d"`, &c); err != nil {
			t.Fatalf("audit.tamper: %v: %s", err, l)
		}
		return c
	}
	t.Fatalf("no audit.tamper naming chain %s in the live journal:\n%s", chain, e.stdout)
	return 0
}

// deliveredRange is the seqs `audit deliver` says it sent to target.
func deliveredRange(t *testing.T, out, target string) (from, upTo uint64) {
	t.Helper()
	i := strings.Index(out, target+": delivered seq ")
	if i < 0 {
		t.Fatalf("audit deliver says nothing delivered to %s:\n%s", target, out)
	}
	if _, err := fmt.Sscanf(out[i+len(target):], ": delivered seq %d..%d", &from, &upTo); err != nil {
		t.Fatalf("audit deliver to %s: %v\n%s", target, err, out)
	}
	return from, upTo
}

// outageThenSetAside runs the daemon with a real rsyslog target, stops the
// receiver, records a few events it never gets, stops the daemon, moves the
// journal aside (where aside puts it, which it returns; damaging the tail
// of its last segment from seq damageAt when damageAt > 0) and starts a new daemon with the receiver back. It
// returns the old directory, its chain, its last seq, and the checkpoint
// key.
func outageThenSetAside(t *testing.T, srv *rsyslog.Server, cfg *config.File, damageAt func(last uint64) uint64, aside func(t *testing.T, journal string) string) (old, chain string, last uint64, pub string, d *running) {
	t.Helper()
	ctx := context.Background()
	msgs := notifySocket(t)
	d = startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")
	e := testEnv()
	if code := run(ctx, e, []string{"audit", "pubkey", "--config", cfg.Path}); code != exitOK {
		t.Fatalf("audit pubkey: exit %d: %s", code, e.stderr)
	}
	pub = strings.TrimSpace(fmt.Sprint(e.stdout))
	var st struct {
		Seq uint64 `json:"audit_last_seq"`
	}
	if err := e.call(ctx, cfg.Path, http.MethodGet, "/admin/v1/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	// The forwarder confirmed the receiver has everything so far (its
	// cursor says so): only what follows goes missing.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ts struct {
			Targets []struct {
				Delivered uint64 `json:"delivered"`
			} `json:"targets"`
		}
		if err := e.call(ctx, cfg.Path, http.MethodGet, "/admin/v1/audit/targets", nil, &ts); err != nil {
			t.Fatal(err)
		}
		if len(ts.Targets) == 1 && ts.Targets[0].Delivered >= st.Seq {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("seq %d was never confirmed delivered", st.Seq)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The SIEM goes down; the appliance goes on recording.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		e := testEnv()
		e.stdin = strings.NewReader(fmt.Sprintf("value %d\n", i))
		if code := run(ctx, e, []string{"audit", "hash", "--config", cfg.Path, "-"}); code != exitOK {
			t.Fatalf("audit hash: exit %d: %s", code, e.stderr)
		}
	}
	if code := d.stop(t); code != exitOK {
		t.Fatalf("daemon exit %d: %s", code, d.env.stderr)
	}
	journal := filepath.Join(cfg.Server.StateDir, "audit")
	rep, err := audit.VerifyDir(journal)
	if err != nil || !rep.OK() {
		t.Fatalf("the journal before it is set aside: %v, %v", rep, err)
	}
	chain, last = rep.Chain, rep.Last
	old = aside(t, journal)
	if at := damageAt(last); at > 0 {
		damageSeq(t, old, at)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	msgs = notifySocket(t)
	d = startDaemon(t, cfg)
	waitFor(t, msgs, "READY=1")
	return old, chain, last, pub, d
}

// asideBeside moves the journal out of the state dir, beside it: only
// `audit deliver` delivers it from there.
func asideBeside(t *testing.T, journal string) string {
	old := filepath.Join(filepath.Dir(filepath.Dir(journal)), "audit.damaged")
	if err := os.Rename(journal, old); err != nil {
		t.Fatal(err)
	}
	return old
}

// asideInto moves the journal aside within the state dir, as the README's
// recovery does: the daemon delivers it on its own at the next start.
func asideInto(t *testing.T, journal string) string {
	old := journal + ".damaged"
	if err := os.Rename(journal, old); err != nil {
		t.Fatal(err)
	}
	return old
}

// damageSeq flips a byte inside the event text of seq at in the journal
// in dir (its last segment): its hash no longer matches.
func damageSeq(t *testing.T, dir string, at uint64) {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "journal-*.log"))
	seg := segs[len(segs)-1]
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(fmt.Sprintf(` {"seq":%d,`, at)))
	if i < 0 {
		t.Fatalf("seq %d is not in the last segment", at)
	}
	b[i+30] ^= 0x20
	if err := os.WriteFile(seg, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func deliverConfig(t *testing.T, srv *rsyslog.Server) *config.File {
	return testConfig(t, t.TempDir(), fmt.Sprintf(`
[audit]
checkpoint_every = 3

[[audit.syslog]]
address = "tcp://%s"
format = "rfc5424"
`, srv.Addr))
}

// TestAuditDeliverAfterAnOutageAndASetAside: the receiver was down for the
// journal's last entries when the journal was moved aside; after the new
// daemon started, `audit deliver` sends the old chain from where the
// receiver stopped (the forwarder's audit.tamper says where), the
// receiver's file then holds the old chain whole and verifies with both
// chains, and the old directory is unchanged. Sending it all again with
// --from 1 leaves identical copies, which verify.
func TestAuditDeliverAfterAnOutageAndASetAside(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	cfg := deliverConfig(t, srv)
	old, chain, last, pub, d := outageThenSetAside(t, srv, cfg, func(uint64) uint64 { return 0 }, asideBeside)
	before := dirHashes(t, old)
	got := receivedSeqs(t, srv.File, chain)
	var had uint64
	for had+1 <= last && got[had+1] > 0 {
		had++
	}
	if had == 0 || had >= last-5 {
		t.Fatalf("the receiver had seq 1..%d of %d before the set-aside, want the last ones missing", had, last)
	}

	// Moved out of the state dir: the daemon did not find it, and said so.
	if logs := fmt.Sprint(d.env.stderr); !strings.Contains(logs, "no journal set aside in the state dir holds it") || !strings.Contains(logs, "applianced audit deliver DIR") {
		t.Errorf("got log:\n%s\nwant a warning naming audit deliver", logs)
	}
	ctx := context.Background()
	e := testEnv()
	if code := run(ctx, e, []string{"audit", "deliver", "--config", cfg.Path, old}); code != exitOK {
		t.Fatalf("audit deliver: exit %d\n%s%s\ndaemon: %s", code, e.stdout, e.stderr, d.env.stderr)
	}
	out := fmt.Sprint(e.stdout)
	t.Logf("audit deliver:\n%s", out)
	// From where the forwarder stopped confirming: the receiver's first
	// missing seq, or an entry or two before it that were sent as the
	// receiver stopped and never confirmed.
	from, upTo := deliveredRange(t, out, "tcp://"+srv.Addr)
	if upTo != last || !strings.Contains(out, "(from audit.tamper at seq ") ||
		!strings.Contains(out, fmt.Sprintf("seq 1..%d readable", last)) || strings.Contains(out, "stops being readable") {
		t.Errorf("got output:\n%s\nwant seq %d..%d delivered (the receiver had 1..%d), from the forwarder's audit.tamper", out, had+1, last, had)
	}
	checkDelivered(t, cfg, chain, got, receivedSeqs(t, srv.File, chain), from, upTo, last)

	// Everything again, from the start: identical copies.
	e = testEnv()
	if code := run(ctx, e, []string{"audit", "deliver", "--config", cfg.Path, "--from", "1", "--target", "tcp://" + srv.Addr, "--json", old}); code != exitOK {
		t.Fatalf("audit deliver --from 1: exit %d\n%s%s", code, e.stdout, e.stderr)
	}
	var rep deliverReply
	if err := json.Unmarshal([]byte(fmt.Sprint(e.stdout)), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Targets) != 1 || rep.Targets[0].From != 1 || rep.Targets[0].Delivered != last || !rep.Targets[0].OK || rep.Targets[0].FromSource != "--from" {
		t.Errorf("got %+v, want 1..%d delivered from --from", rep.Targets, last)
	}
	if got := receivedSeqs(t, srv.File, chain); got[1] != 2 || got[last] != 2 {
		t.Errorf("got seq 1 %d times and seq %d %d times, want each twice", got[1], last, got[last])
	}

	after := dirHashes(t, old)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("the old journal changed:\nbefore %v\nafter  %v", before, after)
	}
	if _, err := os.Stat(old + ".last"); err == nil {
		t.Errorf("a record of the chain was written beside the old journal")
	}

	// Both deliveries are in the live journal: who, what, from where, and
	// the result.
	e = testEnv()
	if code := run(ctx, e, []string{"audit", "tail", "--config", cfg.Path, "-n", "200"}); code != exitOK {
		t.Fatal(e.stderr)
	}
	var starts, results int
	for _, l := range strings.Split(fmt.Sprint(e.stdout), "\n") {
		if !strings.Contains(l, `"type":"audit.deliver"`) {
			continue
		}
		switch {
		case strings.Contains(l, `"stage":"start"`) && strings.Contains(l, `"uid":`) && strings.Contains(l, chain):
			starts++
		case strings.Contains(l, `"stage":"result"`) && strings.Contains(l, fmt.Sprintf("delivered up to %d", last)) && strings.Contains(l, `"outcome":"success"`):
			results++
		}
	}
	if starts != 2 || results != 2 {
		t.Errorf("got %d start and %d result audit.deliver events, want 2 each:\n%s", starts, results, e.stdout)
	}
	stopAndVerify(t, d, srv, pub, chain, last, true)
}

// stopAndVerify stops the daemon (its final checkpoint seals the new
// chain at the receiver) and checks the receiver's file with `audit
// verify`: ok, the old chain from seq 1 to last, sealed, then the new
// chain continuing it.
func stopAndVerify(t *testing.T, d *running, srv *rsyslog.Server, pub, chain string, last uint64, wantDuplicates bool) {
	t.Helper()
	if code := d.stop(t); code != exitOK {
		t.Fatalf("daemon exit %d: %s", code, d.env.stderr)
	}
	var (
		e    *env
		code int
		rep  audit.CaptureReport
	)
	deadline := time.Now().Add(30 * time.Second)
	for {
		e = testEnv()
		code = run(context.Background(), e, []string{"audit", "verify", "--json", "--pubkey", pub, srv.File})
		rep = audit.CaptureReport{}
		if err := json.Unmarshal([]byte(fmt.Sprint(e.stdout)), &rep); err != nil {
			t.Fatalf("audit verify: exit %d: %v\n%s%s", code, err, e.stdout, e.stderr)
		}
		if code == exitOK || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code != exitOK || len(rep.Chains) != 2 || rep.Chains[0].ID != chain || rep.Chains[0].FirstSeq != 1 || rep.Chains[0].LastSeq != last ||
		rep.Chains[0].SealedUpTo+1 != last || rep.Chains[1].Link.Chain != chain || (rep.Duplicates > 0) != wantDuplicates {
		t.Errorf("audit verify: exit %d, chains %+v, %d duplicates, problems %v; want ok, chain %s 1..%d sealed, then the new one continuing it",
			code, rep.Chains, rep.Duplicates, rep.Problems, chain, last)
	}
}

// TestAuditDeliverStopsAtTheDamage: the old journal's last segment is
// damaged near its end; `audit deliver` sends what the receiver missed up
// to the entry before the damage, says where and why the journal stops
// being readable, and leaves the directory unchanged.
func TestAuditDeliverStopsAtTheDamage(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	cfg := deliverConfig(t, srv)
	var bad uint64
	old, chain, last, pub, d := outageThenSetAside(t, srv, cfg, func(last uint64) uint64 { bad = last - 2; return bad }, asideBeside)
	before := dirHashes(t, old)
	had := receivedSeqs(t, srv.File, chain)
	ctx := context.Background()
	e := testEnv()
	if code := run(ctx, e, []string{"audit", "deliver", "--config", cfg.Path, old}); code != exitOK {
		t.Fatalf("audit deliver: exit %d\n%s%s", code, e.stdout, e.stderr)
	}
	out := fmt.Sprint(e.stdout)
	t.Logf("audit deliver:\n%s", out)
	if !strings.Contains(out, fmt.Sprintf("seq 1..%d readable", bad-1)) ||
		!strings.Contains(out, fmt.Sprintf("the journal stops being readable at seq %d", bad)) || !strings.Contains(out, "hash does not match") ||
		!strings.Contains(out, fmt.Sprintf("..%d (from audit.tamper at seq ", bad-1)) {
		t.Errorf("got output:\n%s\nwant seq 1..%d delivered and the stop at %d named", out, bad-1, bad)
	}
	from, upTo := deliveredRange(t, out, "tcp://"+srv.Addr)
	checkDelivered(t, cfg, chain, had, receivedSeqs(t, srv.File, chain), from, upTo, last)
	if after := dirHashes(t, old); fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("the old journal changed:\nbefore %v\nafter  %v", before, after)
	}
	if code := d.stop(t); code != exitOK {
		t.Fatalf("daemon exit %d: %s", code, d.env.stderr)
	}
	// What the receiver holds verifies up to the damage (sealed up to the
	// last checkpoint before it; the entries after that one are open, as
	// in a stream still running); the new chain's first entry names the
	// old chain's real last seq, which no one can deliver now, and verify
	// says so.
	var code int
	var rep audit.CaptureReport
	deadline := time.Now().Add(30 * time.Second)
	for {
		e = testEnv()
		code = run(ctx, e, []string{"audit", "verify", "--json", "--pubkey", pub, "--open-tail", srv.File})
		rep = audit.CaptureReport{}
		if err := json.Unmarshal([]byte(fmt.Sprint(e.stdout)), &rep); err != nil {
			t.Fatalf("audit verify: exit %d: %v\n%s%s", code, err, e.stdout, e.stderr)
		}
		if len(rep.Chains) == 2 && rep.Chains[1].LastSealFinal || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("audit verify: %+v", rep)
	if len(rep.Chains) != 2 || rep.Chains[0].ID != chain || rep.Chains[0].LastSeq != bad-1 {
		t.Errorf("got chains %+v, want %s 1..%d then the new one", rep.Chains, chain, bad-1)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != audit.ProblemLink || rep.Chains[0].SealedUpTo == 0 || code != exitFailure {
		t.Errorf("got exit %d, problems %v, the old chain sealed up to %d; want one problem: the new chain's link to the undeliverable tail",
			code, rep.Problems, rep.Chains[0].SealedUpTo)
	}
}

// TestAuditDeliverRefusesBadInput: each refusal is clear, records nothing
// and sends nothing.
func TestAuditDeliverRefusesBadInput(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	cfg := deliverConfig(t, srv)
	old, _, last, _, d := outageThenSetAside(t, srv, cfg, func(uint64) uint64 { return 0 }, asideBeside)
	live := filepath.Join(cfg.Server.StateDir, "audit")
	copyOfLive := filepath.Join(t.TempDir(), "copy")
	if err := os.CopyFS(copyOfLive, os.DirFS(live)); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("x"), 0o600)
	empty := t.TempDir()
	ctx := context.Background()
	received := func() int { b, _ := os.ReadFile(srv.File); return len(b) }
	time.Sleep(time.Second) // the new chain's start reaches the receiver
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"not a directory", []string{file}, exitUsage, "is not a directory"},
		{"no such directory", []string{filepath.Join(empty, "nothing")}, exitFailure, "no such file or directory"},
		{"no segment", []string{empty}, exitFailure, "no journal segment"},
		{"the live journal", []string{live}, exitFailure, "the live journal"},
		{"a journal of the current chain", []string{copyOfLive}, exitFailure, "the live journal"},
		{"unknown target", []string{"--target", "tcp://127.0.0.1:9", old}, exitFailure, `target "tcp://127.0.0.1:9" is not configured`},
		{"from beyond the end", []string{"--from", fmt.Sprint(last + 1), old}, exitFailure, fmt.Sprintf("holds seq 1..%d readable", last)},
		{"no directory", []string{}, exitUsage, "want 1 argument"},
		{"timeout out of range", []string{"--timeout", "0s", old}, exitUsage, "--timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := received()
			e := testEnv()
			code := run(ctx, e, append([]string{"audit", "deliver", "--config", cfg.Path}, tc.args...))
			if code != tc.wantCode || !strings.Contains(fmt.Sprint(e.stderr), tc.wantErr) {
				t.Errorf("got exit %d, stderr %q; want exit %d and %q", code, e.stderr, tc.wantCode, tc.wantErr)
			}
			if received() != before {
				t.Errorf("the receiver got something")
			}
		})
	}
	e := testEnv()
	if code := run(ctx, e, []string{"audit", "tail", "--config", cfg.Path, "-n", "200"}); code != exitOK {
		t.Fatal(e.stderr)
	}
	if strings.Contains(fmt.Sprint(e.stdout), `"audit.deliver"`) {
		t.Errorf("a refused audit deliver was recorded as a delivery:\n%s", e.stdout)
	}
	if code := d.stop(t); code != exitOK {
		t.Fatalf("daemon exit %d: %s", code, d.env.stderr)
	}
}

// TestSetAsideJournalIsDeliveredAtStart: the journal moved aside within the
// state dir, as the README's recovery does; at the next start the daemon
// sends each target what it missed of the old chain on its own, from just
// after the cursor the forwarder recorded, records the delivery
// (audit.deliver, trigger "daemon start", start and result), and the
// receiver's file then verifies with both chains. The old directory is
// unchanged.
func TestSetAsideJournalIsDeliveredAtStart(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	cfg := deliverConfig(t, srv)
	old, chain, last, pub, d := outageThenSetAside(t, srv, cfg, func(uint64) uint64 { return 0 }, asideInto)
	hashes := dirHashes(t, old)
	var results []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		results = deliverEvents(t, cfg, "result")
		if len(results) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(results) != 1 || !strings.Contains(results[0], `"trigger":"daemon start"`) || !strings.Contains(results[0], `"outcome":"success"`) ||
		!strings.Contains(results[0], fmt.Sprintf("delivered up to %d", last)) {
		t.Fatalf("got audit.deliver results %v, want one by the daemon's start, delivered up to %d\ndaemon: %s", results, last, d.env.stderr)
	}
	starts := deliverEvents(t, cfg, "start")
	if len(starts) != 1 || !strings.Contains(starts[0], `"trigger":"daemon start"`) || !strings.Contains(starts[0], chain) {
		t.Fatalf("got audit.deliver starts %v, want one by the daemon's start naming chain %s", starts, chain)
	}
	var from uint64
	if i := strings.Index(starts[0], "tcp://"+srv.Addr+" from "); i < 0 {
		t.Fatalf("the start names no start for the target: %s", starts[0])
	} else if _, err := fmt.Sscanf(starts[0][i+len("tcp://"+srv.Addr+" from "):], "%d", &from); err != nil {
		t.Fatalf("the start names no start for the target: %v: %s", err, starts[0])
	}
	// What the receiver had before the delivery cannot be read now (the
	// delivery ran as the daemon started): it had each seq up to the
	// cursor, and may have had an entry or two after it, sent as it
	// stopped, which then arrive twice.
	got := receivedSeqs(t, srv.File, chain)
	cursor := tamperCursor(t, cfg, chain)
	before, dups := map[uint64]int{}, false
	for s := uint64(1); s <= last; s++ {
		switch {
		case s <= cursor:
			before[s] = 1
		case got[s] > 1 && s <= cursor+3:
			// In flight as the receiver stopped: a few entries at most,
			// right after the cursor. Any other copy is a second delivery.
			before[s], dups = got[s]-1, true
		}
	}
	checkDelivered(t, cfg, chain, before, got, from, last, last)
	if fmt.Sprint(hashes) != fmt.Sprint(dirHashes(t, old)) {
		t.Errorf("the old journal changed")
	}
	if logs := fmt.Sprint(d.env.stderr); !strings.Contains(logs, "delivered what a target missed of a journal set aside") {
		t.Errorf("got log:\n%s\nwant the delivery said", logs)
	}
	stopAndVerify(t, d, srv, pub, chain, last, dups)
}

// deliverEvents returns the live journal's audit.deliver events of stage
// (start or result), as `audit tail` prints them.
func deliverEvents(t *testing.T, cfg *config.File, stage string) []string {
	t.Helper()
	e := testEnv()
	if code := run(context.Background(), e, []string{"audit", "tail", "--config", cfg.Path, "-n", "500"}); code != exitOK {
		t.Fatalf("audit tail: exit %d: %s", code, e.stderr)
	}
	var out []string
	for _, l := range strings.Split(fmt.Sprint(e.stdout), "\n") {
		if strings.Contains(l, `"type":"audit.deliver"`) && strings.Contains(l, `"stage":"`+stage+`"`) {
			out = append(out, l)
		}
	}
	return out
}

// TestSetAsideDeliveredAtStartOnlyWhenAnchored: a second directory in the
// state dir carries the old chain's id (any message names it) and a whole
// hash chain, but one entry was changed and every hash after it made
// again: the entry the live chain's first entry names has another hash,
// and no checkpoint signature holds. The daemon does not deliver it, says
// so with the command to run, and delivers the real one. A target
// added to the config after the set-aside was never in the old chain: it
// gets none of it.
func TestSetAsideDeliveredAtStartOnlyWhenAnchored(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	added := rsyslog.Start(t, rsyslog.Options{})
	cfg := deliverConfig(t, srv)
	var decoy string
	old, chain, last, _, d := outageThenSetAside(t, srv, cfg, func(uint64) uint64 { return 0 }, func(t *testing.T, journal string) string {
		old := asideInto(t, journal)
		decoy = journal + ".0" // listed before audit.damaged
		madeUpCopy(t, old, decoy)
		cfg.Audit.Syslog = append(cfg.Audit.Syslog, syslog.Target{Address: "tcp://" + added.Addr, Format: syslog.FormatRFC5424})
		return old
	})
	deadline := time.Now().Add(60 * time.Second)
	for len(deliverEvents(t, cfg, "result")) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	starts := deliverEvents(t, cfg, "start")
	if len(starts) != 1 || !strings.Contains(starts[0], old) || strings.Contains(starts[0], added.Addr) {
		t.Fatalf("got audit.deliver starts %v, want one, of %s, for the target that was left only", starts, old)
	}
	logs := fmt.Sprint(d.env.stderr)
	if !strings.Contains(logs, "was not delivered on its own") || !strings.Contains(logs, decoy) || !strings.Contains(logs, "has another hash than the live chain's first entry names") {
		t.Errorf("got log:\n%s\nwant the decoy %s refused, with why", logs, decoy)
	}
	got := receivedSeqs(t, srv.File, chain)
	for s := uint64(1); s <= last; s++ {
		if got[s] == 0 {
			t.Errorf("seq %d of the old chain never reached the target that missed it", s)
		}
	}
	if n := len(receivedSeqs(t, added.File, chain)); n != 0 {
		t.Errorf("the target added after the set-aside got %d entries of the old chain, want none", n)
	}
}

// madeUpCopy copies the journal directory src to dst with the outcome of
// its second entry changed and every hash after it made again, so that
// dst reads as a whole chain with src's chain id, which only the hashes
// src's chain start and checkpoints name tell apart.
func madeUpCopy(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dst, "journal-*.log"))
	if len(segs) != 1 {
		t.Fatalf("got %d segments, want one", len(segs))
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	end := bytes.IndexByte(b, 0)
	if end < 0 {
		end = len(b)
	}
	lines := strings.SplitAfter(string(b[:end]), "\n")
	var prev [32]byte
	if _, err := hex.Decode(prev[:], []byte(lines[0][strings.Index(lines[0], "prev=")+5:][:64])); err != nil {
		t.Fatal(err)
	}
	changed := false
	for i := 1; i < len(lines) && strings.HasSuffix(lines[i], "\n"); i++ {
		canon := strings.TrimSuffix(lines[i][65:], "\n")
		if i == 2 && strings.Contains(canon, `"outcome":"success"`) {
			canon, changed = strings.Replace(canon, `"outcome":"success"`, `"outcome":"failure"`, 1), true
		}
		h := audit.ChainHash(prev, []byte(canon))
		lines[i] = hex.EncodeToString(h[:]) + " " + canon + "\n"
		prev = h
	}
	if !changed {
		t.Fatalf("the second entry has no outcome success to change: %s", lines[2])
	}
	out := append([]byte(strings.Join(lines, "")), b[end:]...)
	if err := os.WriteFile(segs[0], out, 0o600); err != nil {
		t.Fatal(err)
	}
	if rep, err := audit.VerifyDir(dst); err != nil || rep.Chain != mustChain(t, src) {
		t.Fatalf("the made-up copy: %+v, %v", rep, err)
	}
}

func mustChain(t *testing.T, dir string) string {
	t.Helper()
	c, _, err := audit.DirChain(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDamagedJournalSetAsideIsDeliveredAtStart: the recovery the README
// describes, for a journal damaged before its last entry (so before the
// entry the new chain's first entry names): the readable part holds
// checkpoints signed with this appliance's key, which anchor it, and the
// daemon delivers what the target missed up to the damage on its own.
func TestDamagedJournalSetAsideIsDeliveredAtStart(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	cfg := deliverConfig(t, srv)
	var bad uint64
	_, chain, last, _, d := outageThenSetAside(t, srv, cfg, func(last uint64) uint64 { bad = last - 2; return bad }, asideInto)
	var results []string
	deadline := time.Now().Add(60 * time.Second)
	for len(results) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		results = deliverEvents(t, cfg, "result")
	}
	if len(results) != 1 || !strings.Contains(results[0], fmt.Sprintf("delivered up to %d", bad-1)) || !strings.Contains(results[0], `"stop_seq":"`+fmt.Sprint(bad)+`"`) {
		t.Fatalf("got audit.deliver results %v, want one delivered up to %d, stopping at the damage at %d\ndaemon: %s", results, bad-1, bad, d.env.stderr)
	}
	got := receivedSeqs(t, srv.File, chain)
	for s := uint64(1); s < bad; s++ {
		if got[s] == 0 {
			t.Errorf("seq %d of the old chain never reached the target", s)
		}
	}
	for s := bad; s <= last; s++ {
		if got[s] != 0 {
			t.Errorf("seq %d (damaged or after it) was received", s)
		}
	}
}
