package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"
)

func vaultMarkEvent(typ, outcome, state string) *Event {
	ev := &Event{Type: typ, Outcome: outcome}
	if state != "" {
		ev.Details = map[string]string{detailVaultState: state}
	}
	return ev
}

// appendVaultRun appends what one run of the appliance leaves around the
// vault: other events, the opening, more events, and the close unless
// crashed.
func appendVaultRun(t *testing.T, j *Journal, opened, closed string, filler int) {
	t.Helper()
	ctx := context.Background()
	evs := []*Event{vaultMarkEvent("vault.unseal", OutcomeSuccess, opened)}
	for i := range filler {
		evs = append(evs, testEvent(i))
	}
	if closed != "" {
		evs = append(evs, vaultMarkEvent("vault.close", OutcomeSuccess, closed))
	}
	for _, ev := range evs {
		if _, err := j.Append(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLastVaultMarksNewestFirst: the newest successful vault.close and
// vault.unseal events that carry a state, newest first, across segments;
// a failed opening and one without a state are not marks.
func TestLastVaultMarksNewestFirst(t *testing.T) {
	j := openTest(t, t.TempDir(), &Options{Logger: quiet(), SegmentBytes: 2048})
	appendVaultRun(t, j, "s1", "s1", 30)
	appendVaultRun(t, j, "s1", "s2", 30)
	ctx := context.Background()
	for _, ev := range []*Event{
		vaultMarkEvent("vault.unseal", OutcomeFailure, "s9"),
		vaultMarkEvent("vault.unseal", OutcomeSuccess, ""),
		vaultMarkEvent("vault.close", OutcomeSuccess, ""),
	} {
		if _, err := j.Append(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	appendVaultRun(t, j, "s3", "", 30) // a crash: no close
	if n := len(j.Segments()); n < 3 {
		t.Fatalf("got %d segments, want the marks spread over several", n)
	}
	got, err := LastVaultMarks(ctx, j, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"vault.unseal s3", "vault.close s2", "vault.unseal s1"}
	if len(got) != len(want) {
		t.Fatalf("got %d marks %+v, want %v", len(got), got, want)
	}
	for i, m := range got {
		if s := m.Type + " " + m.State; s != want[i] {
			t.Errorf("mark %d: got %s, want %s", i, s, want[i])
		}
		if i > 0 && m.Seq >= got[i-1].Seq {
			t.Errorf("mark %d: seq %d after seq %d, want newest first", i, m.Seq, got[i-1].Seq)
		}
	}
	all, err := LastVaultMarks(ctx, j, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 {
		t.Errorf("asked for more than there are: got %d marks, want the 5 the journal holds", len(all))
	}
}

// TestLastVaultMarksReadsTheTail: the segments older than the one holding
// the newest mark are not read (here they are gone from the disk, which a
// read of them would fail on).
func TestLastVaultMarksReadsTheTail(t *testing.T) {
	j := openTest(t, t.TempDir(), &Options{Logger: quiet(), SegmentBytes: 2048})
	for i := range 3 {
		appendVaultRun(t, j, fmt.Sprint("s", i), fmt.Sprint("s", i), 30)
	}
	segs := j.Segments()
	if len(segs) < 3 {
		t.Fatalf("got %d segments, want several", len(segs))
	}
	for _, s := range segs[:len(segs)-2] {
		if err := os.Remove(s.Path); err != nil {
			t.Fatal(err)
		}
	}
	got, err := LastVaultMarks(context.Background(), j, 1)
	if err != nil {
		t.Fatalf("the tail only: %v", err)
	}
	if len(got) != 1 || got[0].Type != "vault.close" || got[0].State != "s2" {
		t.Errorf("got %+v, want the last close, of s2", got)
	}
}

// TestDirLastVaultMarksReadsOnlyTheTail: read from its directory, a journal
// is read from its newest segment back, as many segments as the marks
// need. The oldest segment is damaged here: a read of the whole journal
// stops there and finds nothing after it, the read of the tail finds the
// newest marks, and a mark in an older segment than the newest is found
// by reading further back.
func TestDirLastVaultMarksReadsOnlyTheTail(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{Logger: quiet(), SegmentBytes: 2048})
	for i := range 3 {
		appendVaultRun(t, j, fmt.Sprint("s", i), fmt.Sprint("s", i), 30)
	}
	appendVaultRun(t, j, "s3", "", 40) // the running daemon's opening, segments back
	segs := j.Segments()
	if len(segs) < 5 {
		t.Fatalf("got %d segments, want several", len(segs))
	}
	damageByte(t, segs[0].Path)
	whole, err := OpenReadOnly(dir, &ReadOnlyOptions{Appender: appendsNothing{}})
	if err != nil {
		t.Fatal(err)
	}
	if whole.Stop() == nil || whole.LastSeq() >= segs[1].First {
		t.Fatalf("the whole journal read on past the damaged first segment (last seq %d)", whole.LastSeq())
	}
	got, err := DirLastVaultMarks(context.Background(), dir, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"vault.unseal s3", "vault.close s2", "vault.unseal s2"}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %v", got, want)
	}
	for i, m := range got {
		if s := m.Type + " " + m.State; s != want[i] {
			t.Errorf("mark %d: got %s, want %s", i, s, want[i])
		}
	}
	if got[0].Seq >= segs[len(segs)-1].First {
		t.Fatalf("the newest mark is in the newest segment: the test does not read back")
	}
}

// damageByte flips a byte in the middle of the file at path.
func damageByte(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDirLastVaultMarksPastATornNewestEntry: a newest entry cut short (a
// crash, or an append being written while doctor reads) ends the view
// there; the marks before it, segments back, are still found.
func TestDirLastVaultMarksPastATornNewestEntry(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{Logger: quiet(), SegmentBytes: 2048})
	appendVaultRun(t, j, "s0", "s0", 30)
	appendVaultRun(t, j, "s1", "", 60)
	segs := j.Segments()
	newest := segs[len(segs)-1]
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(newest.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(`{"hash":"torn`), newest.Bytes); err != nil {
		t.Fatal(err)
	}
	f.Close()
	v, err := OpenReadOnly(dir, &ReadOnlyOptions{Appender: appendsNothing{}})
	if err != nil || v.Stop() == nil || v.Stop().Seq != newest.Last+1 {
		t.Fatalf("the journal does not end in a torn entry after seq %d: %v, %+v", newest.Last, err, v)
	}
	got, err := DirLastVaultMarks(context.Background(), dir, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"vault.unseal s1", "vault.close s0", "vault.unseal s0"}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %v", got, want)
	}
	for i, m := range got {
		if s := m.Type + " " + m.State; s != want[i] {
			t.Errorf("mark %d: got %s, want %s", i, s, want[i])
		}
	}
	if got[0].Seq >= newest.First {
		t.Fatalf("the newest mark is in the newest segment: the test does not read back")
	}
}

// TestLastVaultMarksWithinReadsNoFurther: bounded to the newest segments,
// the look for marks does not read its way back to a mark older than
// them, which the unbounded look finds.
func TestLastVaultMarksWithinReadsNoFurther(t *testing.T) {
	j := openTest(t, t.TempDir(), &Options{Logger: quiet(), SegmentBytes: 2048})
	appendVaultRun(t, j, "s0", "", 60) // an opening, then many entries
	if n := len(j.Segments()); n < 4 {
		t.Fatalf("got %d segments, want the opening several back", n)
	}
	ctx := context.Background()
	if got, err := LastVaultMarksWithin(ctx, j, 1, 2); err != nil || len(got) != 0 {
		t.Errorf("within 2 segments: got %+v, %v; want none", got, err)
	}
	if got, err := LastVaultMarks(ctx, j, 1); err != nil || len(got) != 1 || got[0].State != "s0" {
		t.Errorf("unbounded: got %+v, %v; want the opening of s0", got, err)
	}
}

// TestLastSealedNeedsTheKeyAndTheHash: the newest checkpoint signed with
// the key and sealing an entry the journal holds with that hash counts;
// another key, or a journal whose sealed entry was changed, has none.
func TestLastSealedNeedsTheKeyAndTheHash(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{Logger: quiet()})
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	c := NewCheckpointer(j, key, &CheckpointOptions{Every: 1000, Interval: time.Hour, Logger: quiet()})
	ctx := context.Background()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = c.Run(runCtx) }()
	for i := range 5 {
		if _, err := j.Append(ctx, testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil { // the final checkpoint seals seq 5
		t.Fatal(err)
	}
	if _, err := j.Append(ctx, testEvent(5)); err != nil {
		t.Fatal(err)
	}
	if seq, ok, err := LastSealed(ctx, j, key.Public().(ed25519.PublicKey)); err != nil || !ok || seq != 5 {
		t.Errorf("with the key: got %d, %t, %v; want sealed up to 5", seq, ok, err)
	}
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	if seq, ok, err := LastSealed(ctx, j, other); err != nil || ok {
		t.Errorf("with another key: got %d, %t, %v; want none", seq, ok, err)
	}
	// The sealed entry changed and every hash after it made again: the
	// chain reads whole, the seal no longer holds.
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	seg := j.Segments()[0].Path
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	end := bytes.IndexByte(b, 0)
	if end < 0 {
		end = len(b)
	}
	lines := bytes.SplitAfter(b[:end], []byte("\n"))
	_, prev, err := parseHeader(bytes.TrimSuffix(lines[0], []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(lines) && bytes.HasSuffix(lines[i], []byte("\n")); i++ {
		canon := bytes.TrimSuffix(lines[i][65:], []byte("\n"))
		if i == 3 {
			canon = bytes.Replace(canon, []byte(`"append"`), []byte(`"appenD"`), 1)
		}
		h := ChainHash(prev, canon)
		lines[i] = append([]byte(hex.EncodeToString(h[:])+" "), append(canon, '\n')...)
		prev = h
	}
	if err := os.WriteFile(seg, append(bytes.Join(lines, nil), b[end:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := OpenReadOnly(dir, &ReadOnlyOptions{Appender: appendsNothing{}})
	if err != nil || v.Stop() != nil || v.LastSeq() != 7 {
		t.Fatalf("the changed journal: %v, %+v; want it whole to seq 7", err, v)
	}
	if seq, ok, err := LastSealed(ctx, v, key.Public().(ed25519.PublicKey)); err != nil || ok {
		t.Errorf("a sealed entry changed: got %d, %t, %v; want none", seq, ok, err)
	}
}
