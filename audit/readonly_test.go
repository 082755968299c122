package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/fstree"
)

// setAsideJournal writes n entries to a journal of small segments in
// dir/audit, closes it and returns its directory.
func setAsideJournal(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "audit.damaged")
	j := openTest(t, dir, &Options{SegmentBytes: 2048})
	appendN(t, j, n)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if segs, _ := listSegments(dir); len(segs) < 3 {
		t.Fatalf("got %d segments, want several", len(segs))
	}
	return dir
}

// editEntry rewrites the line of seq in dir's segments with edit; the
// segment is cut after the edited line when cut is true.
func editEntry(t *testing.T, dir string, seq uint64, cut bool, edit func(line []byte) []byte) {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte(fmt.Sprintf(` {"seq":%d,`, seq))
	for _, s := range segs {
		b, err := os.ReadFile(s.path)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.SplitAfter(b, []byte("\n"))
		for i, l := range lines {
			if bytes.Contains(l, want) {
				lines[i] = edit(append([]byte(nil), l...))
				if cut {
					lines = lines[:i+1]
				}
				if err := os.WriteFile(s.path, bytes.Join(lines, nil), 0o600); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
	}
	t.Fatalf("seq %d not found in %s", seq, dir)
}

// treeHashes maps every file under root (and root's siblings named like it)
// to its mode, time and SHA-256.
func treeHashes(t *testing.T, root string) map[string]string {
	t.Helper()
	parent := filepath.Dir(root)
	out, err := fstree.Snapshot(parent, func(path string) bool { return path == parent || strings.HasPrefix(path, root) })
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func readAll(t *testing.T, v *ReadOnlyJournal, from uint64) []Entry {
	t.Helper()
	r, err := v.Reader(from)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []Entry
	for r.Pos() <= v.LastSeq() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		e, err := r.Next(ctx)
		cancel()
		if err != nil {
			t.Fatalf("reading seq %d: %v", r.Pos(), err)
		}
		out = append(out, e)
	}
	// Past the last good entry it waits, as a live journal's reader does.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if e, err := r.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("after the last good entry: got seq %d, err %v; want it to wait", e.Seq, err)
	}
	return out
}

func TestReadOnlyJournalStopsAtTheFirstBadEntry(t *testing.T) {
	const n = 60
	for _, tc := range []struct {
		name       string
		seq        uint64 // the entry damaged
		cut        bool
		edit       func(line []byte) []byte
		wantLast   uint64
		wantReason string
	}{
		{"intact", 0, false, nil, n, ""},
		{"one byte flipped", 23, false, func(l []byte) []byte { l[len(l)-5] ^= 1; return l }, 22, "hash does not match"},
		{"entry removed", 31, false, func([]byte) []byte { return nil }, 30, "found seq 32 where 31 belongs"},
		{"garbage line", 12, false, func([]byte) []byte { return []byte("not an entry\n") }, 11, "entry damaged"},
		{"torn tail", n, true, func(l []byte) []byte { return l[:len(l)/2] }, n - 1, "cut short"},
		{"damaged tail of the last segment", n - 2, true, func(l []byte) []byte { return append(l[:len(l)/3], 'x', 'y', '\n') }, n - 3, "entry damaged"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := setAsideJournal(t, n)
			if tc.edit != nil {
				editEntry(t, dir, tc.seq, tc.cut, tc.edit)
			}
			live := openTest(t, filepath.Join(t.TempDir(), "audit"), nil)
			v, err := OpenReadOnly(dir, &ReadOnlyOptions{Appender: live})
			if err != nil {
				t.Fatal(err)
			}
			if v.FirstSeq() != 1 || v.LastSeq() != tc.wantLast {
				t.Errorf("got seq %d..%d, want 1..%d", v.FirstSeq(), v.LastSeq(), tc.wantLast)
			}
			switch st := v.Stop(); {
			case tc.wantReason == "" && st != nil:
				t.Errorf("got stop %v, want none", st)
			case tc.wantReason != "" && (st == nil || st.Seq != tc.wantLast+1 || !strings.Contains(st.Reason, tc.wantReason)):
				t.Errorf("got stop %v, want seq %d: %q", st, tc.wantLast+1, tc.wantReason)
			}
			es := readAll(t, v, 0)
			if uint64(len(es)) != tc.wantLast {
				t.Fatalf("read %d entries, want %d", len(es), tc.wantLast)
			}
			var prev [32]byte
			for i, e := range es {
				if e.Seq != uint64(i+1) || e.Prev != prev || ChainHash(prev, e.Canonical) != e.Hash || e.Chain != v.ChainID() || e.Chain == "" {
					t.Fatalf("entry %d: got seq %d chain %q, not chained to the one before", i+1, e.Seq, e.Chain)
				}
				prev = e.Hash
			}
			from := tc.wantLast/2 + 1
			if mid := readAll(t, v, from); uint64(len(mid)) != tc.wantLast-from+1 || mid[0].Seq != from {
				t.Errorf("reading from %d: got %d entries, want %d", from, len(mid), tc.wantLast-from+1)
			}
			segs := v.Segments()
			if len(segs) == 0 || segs[0].First != 1 || segs[len(segs)-1].Last != v.LastSeq() {
				t.Errorf("got segments %+v, want 1..%d", segs, v.LastSeq())
			}
		})
	}
}

// TestReadOnlyJournalNeverWrites reads a set-aside journal with a torn tail
// (which Open would cut) through every method of the view: not a byte, a
// mode or a time changes in it or beside it, and what is appended goes to
// the live journal.
func TestReadOnlyJournalNeverWrites(t *testing.T) {
	dir := setAsideJournal(t, 40)
	editEntry(t, dir, 40, true, func(l []byte) []byte { return l[:len(l)-7] })
	before := treeHashes(t, dir)
	time.Sleep(10 * time.Millisecond) // a write would show in a time

	live := openTest(t, filepath.Join(t.TempDir(), "audit"), nil)
	liveLast := live.LastSeq()
	v, err := OpenReadOnly(dir, &ReadOnlyOptions{Appender: live})
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, v, 1)
	if n, err := v.Prune(v.LastSeq(), nil); n != 0 || err != nil {
		t.Errorf("Prune: got %d, %v; want 0, nil", n, err)
	}
	v.Segments()
	seq, err := v.Append(context.Background(), testEvent(1000))
	if err != nil || seq != liveLast+1 || live.LastSeq() != liveLast+1 {
		t.Errorf("Append: got seq %d, %v; want the live journal's next, %d", seq, err, liveLast+1)
	}
	if v.LastSeq() != 39 {
		t.Errorf("got last seq %d, want 39", v.LastSeq())
	}
	after := treeHashes(t, dir)
	for p, h := range before {
		if after[p] != h {
			t.Errorf("%s changed: %q, then %q", p, h, after[p])
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s was created", p)
		}
	}
}

func TestReadOnlyJournalRefuses(t *testing.T) {
	liveDir := filepath.Join(t.TempDir(), "audit")
	live := openTest(t, liveDir, nil)
	appendN(t, live, 3)
	copyDir := filepath.Join(t.TempDir(), "copy")
	if err := os.CopyFS(copyDir, os.DirFS(liveDir)); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	file := filepath.Join(empty, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := setAsideJournal(t, 40)
	for _, tc := range []struct {
		name    string
		dir     string
		opts    *ReadOnlyOptions
		wantErr error
		wantMsg string
	}{
		{"the live journal", liveDir, &ReadOnlyOptions{Appender: live}, ErrLiveJournal, ""},
		{"the live journal, by another path", liveDir + "/.", &ReadOnlyOptions{Appender: live}, ErrLiveJournal, ""},
		{"a copy of the live journal", copyDir, &ReadOnlyOptions{Appender: live}, ErrLiveJournal, ""},
		{"no segment", empty, &ReadOnlyOptions{Appender: live}, ErrNoSegments, ""},
		{"a file", file, &ReadOnlyOptions{Appender: live}, nil, "not a directory"},
		{"missing", filepath.Join(empty, "nothing"), &ReadOnlyOptions{Appender: live}, fs.ErrNotExist, ""},
		{"no appender", old, &ReadOnlyOptions{}, nil, "Appender is required"},
		{"no options", old, nil, nil, "Appender is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := OpenReadOnly(tc.dir, tc.opts)
			if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("got %v, %v; want an error (%v, %q)", v, err, tc.wantErr, tc.wantMsg)
			}
		})
	}
}

// TestReadOnlyJournalRefusesOddSegments: what stands where a segment
// belongs is read only if it is a regular file, with a sane header, in
// order, and with lines no longer than any entry: a FIFO does not block
// the view, a symlink is not followed, a header saying seq 0 is damage,
// overlapping segments are named as such, and a huge line is not read
// whole.
func TestReadOnlyJournalRefusesOddSegments(t *testing.T) {
	live := openTest(t, filepath.Join(t.TempDir(), "audit"), nil)
	opts := &ReadOnlyOptions{Appender: live}
	chain := strings.Repeat("a", 32)
	header := func(first uint64) string {
		return fmt.Sprintf("%s first=%d prev=%s chain=%s\n", headerMagic, first, strings.Repeat("0", 64), chain)
	}
	t.Run("a FIFO", func(t *testing.T) {
		dir := t.TempDir()
		if err := syscall.Mkfifo(filepath.Join(dir, segName(1)), 0o600); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := OpenReadOnly(dir, opts); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("got %v, want a refusal naming a file that is not regular", err)
			}
		case <-time.After(5 * time.Second):
			if f, _ := os.OpenFile(filepath.Join(dir, segName(1)), os.O_WRONLY, 0); f != nil {
				f.Close()
			}
			t.Fatal("the view blocked on a FIFO")
		}
	})
	t.Run("a symlink", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(t.TempDir(), "elsewhere")
		if err := os.WriteFile(target, []byte(header(1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, segName(1))); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenReadOnly(dir, opts); err == nil {
			t.Error("a segment that is a symlink was read")
		}
	})
	t.Run("first=0", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segName(0)), []byte(header(0)), 0o600); err != nil {
			t.Fatal(err)
		}
		if v, err := OpenReadOnly(dir, opts); err == nil && v.LastSeq() >= v.FirstSeq() {
			t.Errorf("a segment saying seq 0 gives seq %d..%d readable", v.FirstSeq(), v.LastSeq())
		}
	})
	t.Run("overlapping segments", func(t *testing.T) {
		dir := setAsideJournal(t, 60)
		segs, _ := listSegments(dir)
		b, err := os.ReadFile(segs[2].path)
		if err != nil {
			t.Fatal(err)
		}
		at := segs[1].first + 1
		end := bytes.IndexByte(b, '\n')
		hdr := strings.Replace(string(b[:end]), fmt.Sprintf("first=%d ", segs[2].first), fmt.Sprintf("first=%d ", at), 1)
		if err := os.Remove(segs[2].path); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, segName(at)), append([]byte(hdr), b[end:]...), 0o600); err != nil {
			t.Fatal(err)
		}
		v, err := OpenReadOnly(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		if st := v.Stop(); st == nil || !strings.Contains(st.Reason, "overlap") || st.Seq != at {
			t.Errorf("got stop %+v, want one at seq %d saying the segments overlap", st, at)
		}
	})
	t.Run("a huge line", func(t *testing.T) {
		dir := t.TempDir()
		body := append([]byte(header(1)), bytes.Repeat([]byte("x"), 3*MaxEventBytes)...)
		if err := os.WriteFile(filepath.Join(dir, segName(1)), body, 0o600); err != nil {
			t.Fatal(err)
		}
		v, err := OpenReadOnly(dir, opts)
		if err == nil && (v.LastSeq() >= v.FirstSeq() || v.Stop() == nil || !strings.Contains(v.Stop().Reason, "longer than any entry")) {
			t.Errorf("got seq %d..%d, stop %+v; want nothing readable, stopped at an overlong line", v.FirstSeq(), v.LastSeq(), v.Stop())
		}
	})
}
