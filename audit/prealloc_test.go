package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitAhead waits until the segment being written has zeros after its
// entries, and returns the offset where the entries end.
func waitAhead(t *testing.T, j *Journal) (path string, dataEnd int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		segs := j.Segments()
		last := segs[len(segs)-1]
		st, err := os.Stat(last.Path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > last.Bytes {
			return last.Path, last.Bytes
		}
	}
	t.Fatal("no zeros were written ahead of the entries")
	return "", 0
}

// crashImage copies the journal's files as they are while it runs: what a
// power cut leaves (every acknowledged entry is in them).
func crashImage(t *testing.T, dir string) string {
	t.Helper()
	img := t.TempDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(img, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func appendN(t *testing.T, j *Journal, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestZerosAheadAreOnlyZerosAndTrimmedOnClose(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{SegmentBytes: 1 << 20})
	appendN(t, j, 20)
	path, end := waitAhead(t, j)
	if zero, err := onlyZeros(path, end); err != nil || !zero {
		t.Fatalf("after the entries: only zeros %v (err %v), want only zeros", zero, err)
	}
	// Readers and Verify see exactly the entries while zeros follow them.
	if rep := mustVerify(t, dir); !rep.OK() || rep.Last != 20 {
		t.Fatalf("verify of the running journal: last %d problems %v, want 20 and none", rep.Last, rep.Problems)
	}
	r, _ := j.Reader(1)
	defer r.Close()
	for want := uint64(1); want <= 20; want++ {
		if e, err := r.Next(context.Background()); err != nil || e.Seq != want {
			t.Fatalf("reader: seq %d err %v, want %d", e.Seq, err, want)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) != end || data[len(data)-1] != '\n' {
		t.Fatalf("after Close the segment is %d bytes ending %q, want exactly its %d bytes of entries", len(data), data[len(data)-1], end)
	}
}

func TestCrashImageWithZerosAheadOpensWithoutRepair(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, nil)
	appendN(t, j, 20)
	waitAhead(t, j)
	img := crashImage(t, dir)
	var logs bytes.Buffer
	j2, err := Open(img, &Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if seq, err := j2.Append(context.Background(), testEvent(0)); err != nil || seq != 21 {
		t.Fatalf("append after the crash: seq %d err %v, want 21", seq, err)
	}
	j2.Close()
	if logs.Len() > 0 {
		t.Errorf("reopening a journal with zeros ahead logged %q, want nothing (it is not damage)", logs.String())
	}
	if rep := mustVerify(t, img); !rep.OK() || rep.Last != 21 {
		t.Fatalf("verify: last %d problems %v, want 21 and none", rep.Last, rep.Problems)
	}
}

func TestTornEntryAmongZerosIsCut(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, nil)
	appendN(t, j, 20)
	path, end := waitAhead(t, j)
	img := crashImage(t, dir)
	seg := filepath.Join(img, filepath.Base(path))
	f, err := os.OpenFile(seg, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A crash mid-batch: the start of an entry over the zeros, and a later
	// sector of the same batch that reached the disk before it.
	f.WriteAt([]byte(`0123abcd {"seq":21,"ti`), end)
	f.WriteAt([]byte("me\":\"2026\"}\n"), end+5000)
	f.Close()
	var logs bytes.Buffer
	j2, err := Open(img, &Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if seq, err := j2.Append(context.Background(), testEvent(0)); err != nil || seq != 21 {
		t.Fatalf("append after the repair: seq %d err %v, want 21", seq, err)
	}
	j2.Close()
	if !strings.Contains(logs.String(), "torn final line") {
		t.Errorf("the repair was not logged: %q", logs.String())
	}
	if rep := mustVerify(t, img); !rep.OK() || rep.Last != 21 {
		t.Fatalf("verify after the repair: last %d problems %v, want 21 and none", rep.Last, rep.Problems)
	}
}

func TestUntrimmedSegmentEndsAtItsZeros(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{SegmentBytes: 4096})
	appendN(t, j, 100)
	j.Close()
	segs, err := listSegments(dir)
	if err != nil || len(segs) < 3 {
		t.Fatalf("got %d segments (err %v), want several", len(segs), err)
	}
	// A crash between starting a segment and trimming the one before it.
	f, err := os.OpenFile(segs[0].path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 10000))
	f.Close()
	if rep := mustVerify(t, dir); !rep.OK() || rep.Last != 100 {
		t.Fatalf("verify: last %d problems %v, want 100 and none", rep.Last, rep.Problems)
	}
	j2 := openTest(t, dir, &Options{SegmentBytes: 4096})
	appendN(t, j2, 10)
	r, _ := j2.Reader(1)
	defer r.Close()
	for want := uint64(1); want <= 110; want++ {
		if e, err := r.Next(context.Background()); err != nil || e.Seq != want {
			t.Fatalf("reader: seq %d err %v, want %d", e.Seq, err, want)
		}
	}
}

// TestAppendsRaceTheZerosAhead makes the zeros come in tiny steps, so
// batches keep overtaking them while they are written: no entry may be
// overwritten by zeros, and none lost.
func TestAppendsRaceTheZerosAhead(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{SegmentBytes: 256 << 10, aheadChunk: 300})
	const workers, per = 16, 1500
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
					t.Errorf("Append: %v", err)
					return
				}
			}
		}()
	}
	// Verify while it runs, as an auditor may.
	for range 3 {
		if rep := mustVerify(t, dir); !rep.OK() {
			t.Fatalf("verify of the running journal: %v", rep.Problems)
		}
	}
	wg.Wait()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if rep := mustVerify(t, dir); !rep.OK() || rep.Last != workers*per {
		t.Fatalf("verify: last %d problems %v, want %d and none", rep.Last, rep.Problems, workers*per)
	}
}

// FuzzSegment feeds arbitrary bytes after a valid header to the two readers
// of a segment that a crash may have left: the repair on Open (scanTail)
// and Verify. Whatever Verify accepts, the repair must accept up to the
// same entry; a line never contains a zero byte.
func FuzzSegment(f *testing.F) {
	dir := f.TempDir()
	j, err := Open(dir, &Options{noAhead: true})
	if err != nil {
		f.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		j.Append(context.Background(), testEvent(i))
	}
	j.Close()
	data, err := os.ReadFile(filepath.Join(dir, segName(1)))
	if err != nil {
		f.Fatal(err)
	}
	hdr := data[:bytes.IndexByte(data, '\n')+1]
	body := data[len(hdr):]
	f.Add(body)
	f.Add(append(bytes.Clone(body), make([]byte, 100)...))
	f.Add(append(append(bytes.Clone(body[:len(body)/2]), 0, 0, 0), body[len(body)/2:]...))
	f.Add(append(append(bytes.Clone(body), 0, 0), []byte("x\n")...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, tail []byte) {
		d := t.TempDir()
		seg := filepath.Join(d, segName(1))
		if err := os.WriteFile(seg, append(bytes.Clone(hdr), tail...), 0o600); err != nil {
			t.Fatal(err)
		}
		rep, err := VerifyDir(d)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(seg)
		last, _, good, _, serr := scanTail(segment{first: 1, path: seg, size: st.Size()})
		if rep.OK() {
			if serr != nil || last != rep.Last {
				t.Fatalf("verify accepts up to seq %d; the repair on Open got seq %d, err %v", rep.Last, last, serr)
			}
		}
		if serr == nil && good > st.Size() {
			t.Fatalf("repair keeps %d bytes of a %d-byte file", good, st.Size())
		}
		br := bufio.NewReaderSize(bytes.NewReader(tail), 16)
		for {
			line, err := readLine(br)
			if bytes.IndexByte(line, 0) >= 0 {
				t.Fatalf("readLine returned a line with a zero byte: %q", line)
			}
			if err != nil {
				if err != io.EOF && err != errPadding {
					t.Fatal(err)
				}
				break
			}
		}
	})
}

// TestSegmentWithZerosIsTrimmedAtRotation: a segment that a crash left
// with zeros after its entries, reopened with smaller segments, is cut
// back to its entries when the journal moves on from it.
func TestSegmentWithZerosIsTrimmedAtRotation(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{SegmentBytes: 1 << 20})
	appendN(t, j, 30)
	path, end := waitAhead(t, j)
	img := crashImage(t, dir)
	seg := filepath.Join(img, filepath.Base(path))
	j2 := openTest(t, img, &Options{SegmentBytes: 4096})
	appendN(t, j2, 1) // over 4096 bytes: the next batch goes to a new segment
	appendN(t, j2, 1)
	if n := len(j2.Segments()); n != 2 {
		t.Fatalf("got %d segments, want the journal to have moved on to a second", n)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		st, err := os.Stat(seg)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() == end+int64(len(mustLastLine(t, j2, 31))) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the finished segment is %d bytes, want its entries only", st.Size())
		}
	}
	if rep := mustVerify(t, img); !rep.OK() || rep.Last != 32 {
		t.Fatalf("verify: last %d problems %v, want 32 and none", rep.Last, rep.Problems)
	}
}

// mustLastLine returns the journal line of entry seq.
func mustLastLine(t *testing.T, j *Journal, seq uint64) []byte {
	t.Helper()
	r, _ := j.Reader(seq)
	defer r.Close()
	e, err := r.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return []byte(fmt.Sprintf("%x %s\n", e.Hash, e.Canonical))
}

// dirBytes is what the journal's files take, zeros included.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "journal-") {
			continue
		}
		st, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		n += st.Size()
	}
	return n
}

// settled waits until the journal's files stop growing: the maintenance
// goroutine has written all the zeros it will.
func settled(t *testing.T, dir string) int64 {
	t.Helper()
	n := dirBytes(t, dir)
	for same := 0; same < 20; {
		time.Sleep(5 * time.Millisecond)
		if m := dirBytes(t, dir); m != n {
			n, same = m, 0
		} else {
			same++
		}
	}
	return n
}

// max_bytes bounds what the journal takes on disk, the zeros ahead of its
// entries included. With a limit of two and a half segments, the third
// segment's zeros would otherwise run to a full segment.
func TestZerosAheadStayWithinMaxBytes(t *testing.T) {
	for _, policy := range []string{DiskFullBlock, DiskFullDropOldest} {
		t.Run(policy, func(t *testing.T) {
			dir := t.TempDir()
			const seg, limit = 64 << 10, 160 << 10
			j := openTest(t, dir, &Options{SegmentBytes: seg, MaxBytes: limit, DiskFull: policy, aheadChunk: 4096})
			full := false
			for i := 0; i < 1500 && !full; i++ {
				_, err := j.Append(context.Background(), testEvent(i))
				if errors.Is(err, ErrDiskLimit) && policy == DiskFullBlock {
					full = true
					break
				}
				if err != nil {
					t.Fatalf("append %d: %v", i, err)
				}
				if i%100 == 0 {
					if n := settled(t, dir); n > limit {
						t.Fatalf("after %d entries the journal takes %d bytes on disk, over max_bytes %d", i+1, n, limit)
					}
				}
			}
			if n := settled(t, dir); n > limit {
				t.Fatalf("the journal takes %d bytes on disk, over max_bytes %d", n, limit)
			}
			if segs := j.Segments(); !full && segs[0].First == 1 {
				t.Fatal("the journal never reached max_bytes; the test must append more")
			}
		})
	}
}

// Under drop_oldest, concurrent appends (batches of many entries) are never
// refused for the limit, even when only the segment being written is left
// to drop; and the files stay within max_bytes.
func TestDropOldestNeverRefusesABatch(t *testing.T) {
	dir := t.TempDir()
	const seg, limit = 64 << 10, 128 << 10
	j := openTest(t, dir, &Options{SegmentBytes: seg, MaxBytes: limit, DiskFull: DiskFullDropOldest, aheadChunk: 4096})
	big := strings.Repeat("x", 300)
	var wg sync.WaitGroup
	errs := make(chan error, 2000)
	for i := range 2000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := testEvent(i)
			e.Details["pad"] = big
			if _, err := j.Append(context.Background(), e); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n == 0 {
			t.Errorf("append refused under drop_oldest: %v", err)
		}
		n++
	}
	if n > 0 {
		t.Fatalf("%d of 2000 appends refused, want none", n)
	}
	if got := settled(t, dir); got > limit {
		t.Errorf("the journal takes %d bytes on disk, over max_bytes %d", got, limit)
	}
	if rep := mustVerify(t, dir); !rep.OK() {
		t.Errorf("verify after drops: %v", rep.Problems)
	}
}
