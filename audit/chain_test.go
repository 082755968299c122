package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A journal's chain id: made with its seq 1, kept in every segment header,
// named in every checkpoint, so that a journal set aside and its successor
// (both starting at seq 1) are told apart wherever their entries go.

// segmentHeaders returns the header line of every segment in dir.
func segmentHeaders(t *testing.T, dir string) []string {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range segs {
		b, err := os.ReadFile(s.path)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b[:bytes.IndexByte(b, '\n')]))
	}
	return out
}

func TestJournalChainIDIsInEverySegmentAndOutlivesReopen(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir, &Options{Logger: quiet(), SegmentBytes: 2048})
	if err != nil {
		t.Fatal(err)
	}
	id := j.ChainID()
	if !validChainID(id) {
		t.Fatalf("got chain id %q, want %d random bytes in hex", id, chainIDBytes)
	}
	for i := 0; i < 40; i++ {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	hdrs := segmentHeaders(t, dir)
	if len(hdrs) < 3 {
		t.Fatalf("got %d segments, want several", len(hdrs))
	}
	for _, h := range hdrs {
		if !strings.HasSuffix(h, " chain="+id) {
			t.Errorf("got segment header %q, want it to end with chain=%s", h, id)
		}
	}
	j, err = Open(dir, &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.ChainID() != id {
		t.Errorf("got chain id %q after reopening, want %q", j.ChainID(), id)
	}
	r, _ := j.Reader(1)
	defer r.Close()
	e, err := r.Next(context.Background())
	if err != nil || e.Chain != id {
		t.Errorf("got entry chain %q (%v), want %q", e.Chain, err, id)
	}
	other, err := Open(t.TempDir(), &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if other.ChainID() == id {
		t.Error("got the same chain id for another journal")
	}
}

// startChild runs this test binary as a child that does what the
// environment variable env (set to dir) asks, and returns it with a
// scanner of its output.
func startChild(t *testing.T, env, dir string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(stdout)
}

// TestChainIDSurvivesSIGKILL kills a process appending to a journal (and
// rotating its segments) several times, the first time as soon as it
// started: the journal keeps one chain id, in every segment, and verifies.
func TestChainIDSurvivesSIGKILL(t *testing.T) {
	dir := t.TempDir()
	for round := 0; round < 6; round++ {
		cmd, sc := startChild(t, crashChildEnv, dir)
		if round > 0 {
			// Past seq 1, and some way into the journal.
			for i := 0; i < 2000 && sc.Scan(); i++ {
			}
		}
		cmd.Process.Signal(syscall.SIGKILL)
		for sc.Scan() {
		}
		cmd.Wait()
	}
	hdrs := segmentHeaders(t, dir)
	if len(hdrs) < 2 {
		t.Fatalf("got %d segments, want the child to have rotated", len(hdrs))
	}
	j := openTest(t, dir, nil)
	id := j.ChainID()
	for _, h := range hdrs {
		if !validChainID(id) || !strings.HasSuffix(h, " chain="+id) {
			t.Errorf("got segment header %q, journal chain id %q; want every segment in that chain", h, id)
		}
	}
	rep := mustVerify(t, dir)
	if !rep.OK() || rep.Chain != id {
		t.Errorf("got chain %q, problems %v; want %q and none", rep.Chain, rep.Problems, id)
	}
}

// TestJournalOfAnOlderVersionKeepsTheLegacyChain opens a journal whose
// segment was written before chain ids: it keeps none, in new segments
// too, its checkpoints name none, and it verifies.
func TestJournalOfAnOlderVersionKeepsTheLegacyChain(t *testing.T) {
	dir := t.TempDir()
	var prev [32]byte
	seg := fmt.Sprintf("%s first=1 prev=%x\n", headerMagic, prev)
	for i := 1; i <= 3; i++ {
		e := testEvent(i)
		e.Seq, e.Time = uint64(i), testTime
		c, _ := e.Canonical()
		h := ChainHash(prev, c)
		seg += fmt.Sprintf("%x %s\n", h, c)
		prev = h
	}
	if err := os.WriteFile(filepath.Join(dir, segName(1)), []byte(seg), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := Open(dir, &Options{Logger: quiet(), SegmentBytes: 2048})
	if err != nil {
		t.Fatal(err)
	}
	if j.ChainID() != "" {
		t.Errorf("got chain id %q for a journal of an older version, want none", j.ChainID())
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	c := NewCheckpointer(j, key, &CheckpointOptions{Every: 10, Interval: time.Hour, Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for i := 0; i < 40; i++ {
		if _, err := j.Append(ctx, testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
	j.Close()
	for _, h := range segmentHeaders(t, dir) {
		if strings.Contains(h, "chain=") {
			t.Errorf("got segment header %q in a legacy journal, want no chain id", h)
		}
	}
	rep, err := VerifyDirWith(dir, &VerifyOptions{PublicKey: c.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Chain != "" || rep.SealedUpTo != rep.Last-1 || rep.LastSealAt.IsZero() {
		t.Errorf("got %+v, want ok, no chain id, sealed up to the last entry at a known time", rep)
	}
}

// chainBody is the wire body of e in chain id, as the forwarder sends it.
func chainBody(id string, e forgedEntry) string {
	return fmt.Sprintf(`<86>1 2026-11-25T23:00:00Z host applianced 1 x - {"audit_seq":%d,"audit_chain":"%s","audit_hash":"%x","audit_prev":"%x","event":%s}`, e.seq, id, e.hash, e.prev, e.canon)
}

// journalEntries reads a journal's entries.
func journalEntries(t *testing.T, j *Journal) []forgedEntry {
	t.Helper()
	var out []forgedEntry
	for _, e := range entriesOf(t, j) {
		if e.Chain != j.ChainID() {
			t.Fatalf("seq %d: got chain %q from the reader, want %q", e.Seq, e.Chain, j.ChainID())
		}
		out = append(out, forgedEntry{e.Seq, e.Hash, e.Prev, bytes.Clone(e.Canonical)})
	}
	return out
}

// chainBodies are the wire bodies of entries of chain id.
func chainBodies(id string, es []forgedEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, chainBody(id, e))
	}
	return out
}

// sealedJournal opens a journal in dir, appends n events and the final
// checkpoint, and returns its bodies and chain id.
func sealedJournal(t *testing.T, dir string, key ed25519.PrivateKey, n int) ([]string, string) {
	t.Helper()
	es, id := sealedEntries(t, dir, key, n)
	return chainBodies(id, es), id
}

// sealedEntries is sealedJournal returning the entries.
func sealedEntries(t *testing.T, dir string, key ed25519.PrivateKey, n int) ([]forgedEntry, string) {
	t.Helper()
	j, err := Open(dir, &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	c := NewCheckpointer(j, key, &CheckpointOptions{Every: 4, Interval: time.Hour, Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for i := 0; i < n; i++ {
		if _, err := j.Append(ctx, testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return journalEntries(t, j), j.ChainID()
}

// TestCaptureOfASetAsideJournalAndItsSuccessorVerifies takes the
// documented recovery: the journal is moved aside and a new one starts at
// seq 1, delivered to the same receiver's file. Each chain verifies on its
// own; no seq is a conflict.
func TestCaptureOfASetAsideJournalAndItsSuccessorVerifies(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := filepath.Join(t.TempDir(), "audit")
	old, oldID := sealedJournal(t, dir, key, 10)
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	cur, curID := sealedJournal(t, dir, key, 6)
	rep := verifyLinesWith(t, &CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey)}, append(old, cur...))
	if !rep.OK() {
		t.Fatalf("got problems %v, want none", rep.Problems)
	}
	if len(rep.Chains) != 2 || rep.Chains[0].ID != oldID || rep.Chains[1].ID != curID {
		t.Fatalf("got chains %+v, want %s then %s", rep.Chains, oldID, curID)
	}
	for i, c := range rep.Chains {
		if c.FirstSeq != 1 || c.SealedUpTo+1 != c.LastSeq || !c.LastSealFinal {
			t.Errorf("chain %d: got %+v, want seq 1 onwards sealed by its final checkpoint", i, c)
		}
	}
	if rep.FirstSeq != 1 || rep.LastSeq != rep.Chains[1].LastSeq {
		t.Errorf("got seq %d..%d, want the newest chain's", rep.FirstSeq, rep.LastSeq)
	}
}

// Entries of one chain relabelled as another's (to pass an old capture for
// the current chain), the chain named in its checkpoints too and the hashes
// computed again, are refused: each checkpoint's signature covers its chain.
func TestCaptureRefusesEntriesMovedToAnotherChain(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	old, oldID := sealedEntries(t, t.TempDir(), key, 10)
	_, curID := sealedJournal(t, t.TempDir(), key, 1)
	var prev [32]byte
	for i, e := range old {
		c := bytes.ReplaceAll(e.canon, []byte(oldID), []byte(curID))
		h := ChainHash(prev, c)
		old[i] = forgedEntry{e.seq, h, prev, c}
		prev = h
	}
	rep := verifyLinesWith(t, &CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey)}, chainBodies(curID, old))
	if !hasProblem(rep, ProblemSignature) || rep.SealedUpTo != 0 {
		t.Errorf("got sealed up to %d, problems %v; want signature problems and nothing sealed", rep.SealedUpTo, rep.Problems)
	}
}

// A chain no checkpoint names, beside a sealed one, is refused even for a
// stream declared open: its chain id is in no hash, so it could be
// invented entries given an id of their own.
func TestCaptureRefusesAnUnsealedChainBesideASealedOne(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	sealed, _ := sealedJournal(t, t.TempDir(), key, 6)
	var invented []forgedEntry
	var prev [32]byte
	for i := 1; i <= 3; i++ {
		e := &Event{Seq: uint64(i), Time: time.Now().UTC(), Type: "secret.delete", Outcome: OutcomeSuccess, Target: "prod-db"}
		c, _ := e.Canonical()
		h := ChainHash(prev, c)
		invented = append(invented, forgedEntry{uint64(i), h, prev, c})
		prev = h
	}
	lines := append(sealed, chainBodies("ffffffffffffffffffffffffffffffff", invented)...)
	rep := verifyLinesWith(t, &CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey), AllowOpenTail: true}, lines)
	if !hasProblem(rep, ProblemCheckpoint) {
		t.Errorf("got problems %v, notes %v; want the unsealed chain refused", rep.Problems, rep.Notes)
	}
}
