package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A new chain names the one it replaced: the record beside the journal's
// directory, and the audit.chain_start event it becomes at seq 1.

// firstEntry returns the journal's seq 1.
func firstEntry(t *testing.T, j *Journal) Entry {
	t.Helper()
	r, err := j.Reader(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	e, err := r.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// chainStartOf parses the journal's seq 1 as a chain start.
func chainStartOf(t *testing.T, j *Journal) *ChainStart {
	t.Helper()
	e := firstEntry(t, j)
	if e.Seq != 1 || e.Event.Type != TypeChainStart {
		t.Fatalf("got seq %d of type %q first, want seq 1 %s", e.Seq, e.Event.Type, TypeChainStart)
	}
	s, err := ParseChainStart(&e.Event)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestNewChainNamesTheClosedChainItReplaces sets a closed journal aside
// as the recovery says: the next Open starts a chain whose seq 1 names the
// old chain's last entry and its hash, which the record (0600, beside the
// directory) kept.
func TestNewChainNamesTheClosedChainItReplaces(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := filepath.Join(t.TempDir(), "audit")
	old, oldID := sealedEntries(t, dir, key, 10)
	fi, err := os.Stat(dir + ".last")
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("got record %v (%v), want a file of mode 0600 beside the journal", fi, err)
	}
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	j := openTest(t, dir, &Options{Logger: quiet()})
	s := chainStartOf(t, j)
	last := old[len(old)-1]
	if !s.Known || s.Chain != oldID || s.Seq != last.seq || s.Hash != last.hash {
		t.Errorf("got chain start %+v, want chain %s seq %d hash %x", s, oldID, last.seq, last.hash)
	}
	if seq, err := j.Append(context.Background(), testEvent(0)); err != nil || seq != 2 {
		t.Errorf("got the first append at seq %d (%v), want 2", seq, err)
	}
}

const linkChildEnv = "APPLIANCED_AUDIT_LINK_CHILD"

// linkChild appends to the journal in dir with a Checkpointer running,
// printing each acknowledged seq, until it is killed.
func linkChild(dir string) {
	j, err := Open(dir, &Options{Logger: quiet()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	c := NewCheckpointer(j, fuzzKey, &CheckpointOptions{Every: 100, Interval: time.Hour, Logger: quiet()})
	go c.Run(context.Background())
	out := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		seq, err := j.Append(context.Background(), testEvent(i))
		if err != nil {
			os.Exit(4)
		}
		fmt.Fprintln(out, seq)
		out.Flush()
	}
}

// killedChain runs linkChild on dir and kills it with SIGKILL once the
// record beside the journal exists and at least n entries were appended.
func killedChain(t *testing.T, dir string, n int) {
	t.Helper()
	cmd, sc := startChild(t, linkChildEnv, dir)
	deadline := time.Now().Add(time.Minute)
	for i := 0; sc.Scan(); i++ {
		if i >= n {
			if _, err := os.Stat(lastPath(dir)); err == nil || time.Now().After(deadline) {
				break
			}
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	for sc.Scan() {
	}
	cmd.Wait()
	if _, err := os.Stat(lastPath(dir)); err != nil {
		t.Fatalf("no record beside the killed journal: %v", err)
	}
}

// TestNewChainNamesTheLastCheckpointOfAKilledChain kills a process
// appending to a journal (with checkpoints) with SIGKILL, sets the journal
// aside and opens a new one: its chain start names an entry the old
// journal holds, with that entry's hash, at or after a checkpoint.
func TestNewChainNamesTheLastCheckpointOfAKilledChain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	killedChain(t, dir, 1500)
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	j := openTest(t, dir, &Options{Logger: quiet()})
	s := chainStartOf(t, j)
	old := openTest(t, dir+".old", &Options{Logger: quiet()})
	if !s.Known || s.Chain != old.ChainID() {
		t.Fatalf("got chain start %+v, want it to name chain %s", s, old.ChainID())
	}
	var cp uint64 // the seq of the first checkpoint
	for _, e := range journalEntries(t, old) {
		if cp == 0 && bytes.Contains(e.canon, []byte(`"type":"`+TypeCheckpoint+`"`)) {
			cp = e.seq
		}
		if e.seq == s.Seq && e.hash != s.Hash {
			t.Errorf("got hash %x for seq %d in the chain start, the old journal has %x", s.Hash, s.Seq, e.hash)
		}
	}
	if cp == 0 || s.Seq < cp || s.Seq > old.LastSeq() {
		t.Errorf("got the chain start at seq %d, want one between the first checkpoint (seq %d) and the old journal's last entry (seq %d)", s.Seq, cp, old.LastSeq())
	}
}

// TestFirstStartWritesNoChainStart: with no record beside it, a new
// journal's seq 1 is the first event appended; the record names the chain
// from that entry on, and then follows checkpoints and Close only.
func TestFirstStartWritesNoChainStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	j, err := Open(dir, &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if seq, err := j.Append(context.Background(), testEvent(0)); err != nil || seq != 1 {
		t.Fatalf("got the first append at seq %d (%v), want 1", seq, err)
	}
	if e := firstEntry(t, j); e.Event.Type != "test.event" {
		t.Errorf("got seq 1 of type %q, want the appended event", e.Event.Type)
	}
	// The first entry, durable, is recorded at once: a journal killed
	// before its first checkpoint is still named by its successor.
	if l, err := readLast(lastPath(dir)); err != nil || l.chain != j.ChainID() || l.seq != 1 {
		t.Errorf("got record %+v (%v) once seq 1 was durable, want chain %s at seq 1", l, err, j.ChainID())
	}
	for i := range 5 {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	if l, _ := readLast(lastPath(dir)); l.seq != 1 {
		t.Errorf("got the record at seq %d after more appends, want it left at seq 1 until a checkpoint or close", l.seq)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := readLast(lastPath(dir))
	if err != nil || l.chain != j.ChainID() || l.seq != 6 {
		t.Errorf("got record %+v (%v) after close, want chain %s at seq 6", l, err, j.ChainID())
	}
}

// TestChainRecordIsNotWrittenOnAppend: appends without a checkpoint leave
// the record as it was (content, inode, time); Close then writes it.
func TestChainRecordIsNotWrittenOnAppend(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	j := openTest(t, dir, &Options{Logger: quiet()})
	if _, err := j.Append(context.Background(), testEvent(0)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	before, err := os.ReadFile(lastPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	fiBefore, _ := os.Stat(lastPath(dir))
	j = openTest(t, dir, &Options{Logger: quiet()})
	for i := 0; i < 200; i++ {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := os.ReadFile(lastPath(dir))
	fiAfter, _ := os.Stat(lastPath(dir))
	if !bytes.Equal(before, after) || !fiAfter.ModTime().Equal(fiBefore.ModTime()) || !os.SameFile(fiBefore, fiAfter) {
		t.Errorf("got the record rewritten by appends (%q, then %q), want it untouched", before, after)
	}
	j.Close()
	if l, err := readLast(lastPath(dir)); err != nil || l.seq != 201 {
		t.Errorf("got record %+v (%v) after close, want seq 201", l, err)
	}
}

// TestUnreadableChainRecordStartsAChainThatSaysSo: a record that exists
// but cannot be read does not stop the journal: the new chain's seq 1 says
// that the chain before it is unknown, and why, and a warning is logged.
func TestUnreadableChainRecordStartsAChainThatSaysSo(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(path string) error
	}{
		{"garbage", func(p string) error { return os.WriteFile(p, []byte("not a record\n"), 0o600) }},
		{"empty", func(p string) error { return os.WriteFile(p, nil, 0o600) }},
		{"cut", func(p string) error {
			return os.WriteFile(p, []byte(lastMagic+"\nchain="+strings.Repeat("a", 32)+"\nseq=7\nhash=00"), 0o600)
		}},
		{"bad seq", func(p string) error {
			return os.WriteFile(p, []byte(lastMagic+"\nchain=\nseq=0\nhash="+strings.Repeat("0", 64)+"\n"), 0o600)
		}},
		{"a directory", func(p string) error { return os.Mkdir(p, 0o700) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "audit")
			if err := tc.write(lastPath(dir)); err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			j := openTest(t, dir, &Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
			s := chainStartOf(t, j)
			e := firstEntry(t, j)
			if s.Known || e.Event.Details[DetailPrevious] != PreviousUnknown || !strings.Contains(e.Event.Reason, "cannot be read") {
				t.Errorf("got chain start %+v, details %v, reason %q; want previous unknown and the reason", s, e.Event.Details, e.Event.Reason)
			}
			if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "cannot be read") {
				t.Errorf("got log %q, want a warning", log.String())
			}
		})
	}
}

// TestVerifyDirSaysWhatTheJournalContinues: the local journal's report
// names the chain it continues, or says it is the first.
func TestVerifyDirSaysWhatTheJournalContinues(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := filepath.Join(t.TempDir(), "audit")
	old, oldID := sealedEntries(t, dir, key, 3)
	if rep := mustVerify(t, dir); rep.Link == nil || rep.Link.State != LinkFirst {
		t.Errorf("the first journal: got link %+v, want %s", rep.Link, LinkFirst)
	}
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	sealedEntries(t, dir, key, 3)
	rep := mustVerify(t, dir)
	last := old[len(old)-1]
	if want := (ChainLink{State: LinkContinues, Chain: oldID, Seq: last.seq, Hash: fmt.Sprintf("%x", last.hash)}); !rep.OK() || rep.Link == nil || *rep.Link != want {
		t.Errorf("the successor: got link %+v, problems %v; want %+v", rep.Link, rep.Problems, want)
	}
}

// TestChainStartAfterAFailedOpenStillNamesThePredecessor: an Open whose
// chain start could not be written (a full disk, or a crash right after
// the new chain's first segment) leaves a chain with no entry; the next
// Open starts it as it should have been, naming the chain the record
// holds, instead of letting the first event take seq 1 and the next
// checkpoint overwrite the record.
func TestChainStartAfterAFailedOpenStillNamesThePredecessor(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := filepath.Join(t.TempDir(), "audit")
	_, oldID := sealedEntries(t, dir, key, 10)
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	if j, err := Open(dir, &Options{Logger: quiet(), MaxBytes: 200}); err == nil {
		j.Close()
		t.Fatal("Open with room for no entry started the chain")
	}
	j := openTest(t, dir, &Options{Logger: quiet()})
	if _, err := j.Append(context.Background(), testEvent(0)); err != nil {
		t.Fatal(err)
	}
	if cs := chainStartOf(t, j); !cs.Known || cs.Chain != oldID || cs.Seq == 0 {
		t.Errorf("the chain start names %+v, want chain %s", cs, oldID)
	}
}

// TestChainRecordFailureIsRecordedOnce: while the record beside the
// journal cannot be written (here a directory stands where its temporary
// file goes), each checkpoint tries again, and the journal says so once,
// with severity high; once the record can be written it names the chain
// again.
func TestChainRecordFailureIsRecordedOnce(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := filepath.Join(t.TempDir(), "audit")
	block := lastPath(dir) + tmpSuffix
	if err := os.MkdirAll(filepath.Join(block, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	j := openTest(t, dir, &Options{Logger: quiet()})
	c := NewCheckpointer(j, key, &CheckpointOptions{Every: 2, Interval: time.Hour, Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	appendSome := func(n int) {
		t.Helper()
		for i := range n {
			if _, err := j.Append(ctx, testEvent(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	failures := func() (n int) {
		for _, e := range entriesOf(t, j) {
			if e.Event.Type == TypeChainRecord {
				if e.Event.Severity != SeverityHigh {
					t.Errorf("got %+v, want severity high", e.Event)
				}
				n++
			}
		}
		return n
	}
	checkpoints := func() (n int) {
		for _, e := range entriesOf(t, j) {
			if e.Event.Type == "audit.checkpoint" {
				n++
			}
		}
		return n
	}
	appendSome(20)
	waitUntil(t, func() bool { return checkpoints() >= 3 })
	if n := failures(); n != 1 {
		t.Fatalf("got %d %s events after several failed checkpoints, want 1", n, TypeChainRecord)
	}
	if _, err := os.Stat(lastPath(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the record exists: %v", err)
	}
	if err := os.RemoveAll(block); err != nil {
		t.Fatal(err)
	}
	appendSome(6)
	// The record follows the next checkpoint (written just after it).
	waitUntil(t, func() bool {
		l, err := readLast(lastPath(dir))
		return err == nil && l.chain == j.ChainID() && l.seq > 0
	})
	if n := failures(); n != 1 {
		t.Errorf("got %d %s events, want still 1", n, TypeChainRecord)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// entriesOf returns the journal's entries, with their events.
func entriesOf(t *testing.T, j *Journal) []Entry {
	t.Helper()
	r, err := j.Reader(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []Entry
	for r.Pos() <= j.LastSeq() {
		e, err := r.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// waitUntil polls cond for up to ten seconds.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
