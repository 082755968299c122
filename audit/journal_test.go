package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func openTest(t *testing.T, dir string, o *Options) *Journal {
	t.Helper()
	j, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func testEvent(i int) *Event {
	return &Event{Type: "test.event", Action: "append", Outcome: OutcomeSuccess,
		Details: map[string]string{"i": strconv.Itoa(i)}}
}

func mustVerify(t *testing.T, dir string) *Report {
	t.Helper()
	rep, err := VerifyDir(dir)
	if err != nil {
		t.Fatalf("VerifyDir: %v", err)
	}
	return rep
}

func TestConcurrentAppendsAreContiguousAndVerify(t *testing.T) {
	dir := t.TempDir()
	// Small segments so the chain is checked across many rotations.
	j := openTest(t, dir, &Options{SegmentBytes: 512 << 10})
	const workers, per = 16, 10000
	seen := make([][]uint64, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < per; i++ {
				seq, err := j.Append(context.Background(), testEvent(i))
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				seen[w] = append(seen[w], seq)
			}
		}(w)
	}
	wg.Wait()
	got := make([]bool, workers*per+1)
	for _, s := range seen {
		for _, seq := range s {
			if seq == 0 || seq > workers*per || got[seq] {
				t.Fatalf("seq %d returned twice or out of range", seq)
			}
			got[seq] = true
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, dir)
	if !rep.OK() || rep.Last != workers*per || rep.Entries != workers*per {
		t.Fatalf("verify: got last=%d entries=%d problems=%v, want last=entries=%d and no problems", rep.Last, rep.Entries, rep.Problems, workers*per)
	}
	if segs, _ := listSegments(dir); len(segs) < 3 {
		t.Fatalf("got %d segments, want rotation to have made several", len(segs))
	}
}

func TestReopenContinuesChain(t *testing.T) {
	dir := t.TempDir()
	for round := 0; round < 3; round++ {
		j, err := Open(dir, &Options{SegmentBytes: 4096})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
				t.Fatal(err)
			}
		}
		j.Close()
	}
	rep := mustVerify(t, dir)
	if !rep.OK() || rep.Last != 150 {
		t.Fatalf("got last=%d problems=%v, want 150 and none", rep.Last, rep.Problems)
	}
}

func TestReaderSeesEntriesInOrderAndWaits(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{SegmentBytes: 2048})
	for i := 0; i < 30; i++ {
		j.Append(context.Background(), testEvent(i))
	}
	r, err := j.Reader(10)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		for i := 30; i < 40; i++ {
			j.Append(context.Background(), testEvent(i))
		}
	}()
	var prev [32]byte
	for want := uint64(10); want <= 40; want++ {
		e, err := r.Next(ctx)
		if err != nil {
			t.Fatalf("Next at %d: %v", want, err)
		}
		if e.Seq != want || e.Event.Seq != want {
			t.Fatalf("got seq %d, want %d", e.Seq, want)
		}
		if ChainHash(e.Prev, e.Canonical) != e.Hash {
			t.Fatalf("seq %d: entry hash does not match its prev and bytes", e.Seq)
		}
		if want > 10 && e.Prev != prev {
			t.Fatalf("seq %d: prev is not the hash of the entry before", e.Seq)
		}
		prev = e.Hash
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := r.Next(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next past the end: got %v, want the context's deadline", err)
	}
}

func TestPruneKeepsUndeliveredSegments(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{SegmentBytes: 2048})
	for i := 0; i < 100; i++ {
		j.Append(context.Background(), testEvent(i))
	}
	segs := j.Segments()
	if len(segs) < 4 {
		t.Fatalf("want several segments, got %d", len(segs))
	}
	upTo := segs[2].Last
	n, err := j.Prune(upTo, nil)
	if err != nil || n != 3 {
		t.Fatalf("Prune(%d): removed %d, err %v; want 3", upTo, n, err)
	}
	if got := j.Segments()[0].First; got != upTo+1 {
		t.Fatalf("oldest kept starts at %d, want %d", got, upTo+1)
	}
	if _, err := j.Reader(1); err != nil {
		t.Fatal(err)
	}
	r, _ := j.Reader(1)
	if _, err := r.Next(context.Background()); !errors.Is(err, ErrPruned) {
		t.Fatalf("reading a pruned seq: got %v, want ErrPruned", err)
	}
	j.Close()
	rep := mustVerify(t, dir)
	if !rep.OK() || rep.First != upTo+1 || rep.Last != 100 {
		t.Fatalf("after prune: first=%d last=%d problems=%v", rep.First, rep.Last, rep.Problems)
	}
}

// tamperCase changes a closed journal of 20 entries and names the seq that
// verification must report.
func TestVerifyNamesTheFirstBadSeq(t *testing.T) {
	cases := []struct {
		name    string
		tamper  func(t *testing.T, lines [][]byte) [][]byte
		wantSeq uint64
	}{
		{"flip one byte", func(t *testing.T, l [][]byte) [][]byte {
			i := bytes.Index(l[7], []byte(`"append"`))
			l[7][i+1] = 'A'
			return l
		}, 7},
		{"delete one entry", func(t *testing.T, l [][]byte) [][]byte { return append(l[:12], l[13:]...) }, 12},
		{"swap two entries", func(t *testing.T, l [][]byte) [][]byte { l[5], l[6] = l[6], l[5]; return l }, 5},
		{"truncate the tail", func(t *testing.T, l [][]byte) [][]byte { return l[:18] }, 18},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			j := openTest(t, dir, nil)
			for i := 0; i < 20; i++ {
				if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
					t.Fatal(err)
				}
			}
			j.Close()
			if rep := mustVerify(t, dir); !rep.OK() {
				t.Fatalf("untouched journal: %v", rep.Problems)
			}
			seg := filepath.Join(dir, segName(1))
			data, err := os.ReadFile(seg)
			if err != nil {
				t.Fatal(err)
			}
			// lines[0] is the header, lines[i] is seq i.
			lines := bytes.SplitAfter(data, []byte("\n"))
			lines = lines[:len(lines)-1]
			lines = tc.tamper(t, lines)
			if err := os.WriteFile(seg, bytes.Join(lines, nil), 0o600); err != nil {
				t.Fatal(err)
			}
			rep := mustVerify(t, dir)
			if rep.OK() {
				t.Fatal("verify passed a tampered journal")
			}
			if got := rep.Problems[0].Seq; got != tc.wantSeq {
				t.Fatalf("got first bad seq %d (%s), want %d", got, rep.Problems[0].Reason, tc.wantSeq)
			}
		})
	}
}

func TestOpenRefusesACutTail(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, nil)
	for i := 0; i < 10; i++ {
		j.Append(context.Background(), testEvent(i))
	}
	j.Close()
	seg := filepath.Join(dir, segName(1))
	data, _ := os.ReadFile(seg)
	lines := bytes.SplitAfter(data, []byte("\n"))
	os.WriteFile(seg, bytes.Join(lines[:8], nil), 0o600) // header + seq 1..7
	if _, err := Open(dir, nil); !errors.Is(err, ErrTruncated) {
		t.Fatalf("Open of a journal cut after its marker: got %v, want ErrTruncated", err)
	}
}

// A journal whose every segment was deleted is not a new journal: its
// marker says what was durable, and Open refuses rather than start a new
// chain over it (which would rewrite the marker and leave no trace).
func TestOpenRefusesAJournalWithEverySegmentDeleted(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, nil)
	for i := range 10 {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, segPrefix+"*"))
	if len(segs) == 0 {
		t.Fatal("no segment written")
	}
	for _, s := range segs {
		if err := os.Remove(s); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Open(dir, nil)
	if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "seq 10 was recorded as durable") {
		t.Fatalf("Open of a journal with every segment deleted: got %v, want ErrTruncated naming seq 10", err)
	}
	if _, err := Open(dir, nil); !errors.Is(err, ErrTruncated) {
		t.Fatalf("a second Open: got %v, want ErrTruncated still (nothing was overwritten)", err)
	}
}

func TestTornFinalLineIsRepairedOnOpen(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, nil)
	for i := 0; i < 5; i++ {
		j.Append(context.Background(), testEvent(i))
	}
	j.Close()
	seg := filepath.Join(dir, segName(1))
	f, _ := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`0123abcd {"seq":6,"ti`) // a crash mid-write: never acknowledged
	f.Close()
	j2 := openTest(t, dir, nil)
	seq, err := j2.Append(context.Background(), testEvent(6))
	if err != nil || seq != 6 {
		t.Fatalf("append after repair: seq %d err %v, want 6", seq, err)
	}
	j2.Close()
	if rep := mustVerify(t, dir); !rep.OK() || rep.Last != 6 {
		t.Fatalf("after repair: last %d problems %v", rep.Last, rep.Problems)
	}
}

func TestUnfinishedSegmentIsRemovedOnOpen(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, nil)
	for i := 0; i < 3; i++ {
		j.Append(context.Background(), testEvent(i))
	}
	j.Close()
	// A crash while the next segment was being created: its header only
	// half written, under the temporary name.
	tmp := filepath.Join(dir, segName(4)+tmpSuffix)
	if err := os.WriteFile(tmp, []byte(headerMagic+" fir"), 0o600); err != nil {
		t.Fatal(err)
	}
	j2 := openTest(t, dir, nil)
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the unfinished segment is still there after Open (stat: %v)", err)
	}
	seq, err := j2.Append(context.Background(), testEvent(4))
	if err != nil || seq != 4 {
		t.Fatalf("append after Open: seq %d err %v, want 4", seq, err)
	}
	j2.Close()
	if rep := mustVerify(t, dir); !rep.OK() || rep.Last != 4 {
		t.Fatalf("verify: last %d problems %v", rep.Last, rep.Problems)
	}
}

// The crash test re-executes the test binary as a child that appends as fast
// as it can and prints each acknowledged seq; the parent kills it with
// SIGKILL at random points.
const crashChildEnv = "APPLIANCED_AUDIT_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	if dir := os.Getenv(linkChildEnv); dir != "" {
		linkChild(dir)
		return
	}
	os.Exit(m.Run())
}

func crashChild(dir string) {
	j, err := Open(dir, &Options{SegmentBytes: 256 << 10})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				seq, err := j.Append(context.Background(), testEvent(0))
				if err != nil {
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintln(out, seq)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func TestAcknowledgedAppendsSurviveSIGKILL(t *testing.T) {
	dir := t.TempDir()
	acked := map[uint64]bool{}
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	for round := 0; round < 20; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan uint64, 1<<16)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if n, err := strconv.ParseUint(strings.TrimSpace(sc.Text()), 10, 64); err == nil {
					lines <- n
				}
			}
			close(lines)
		}()
		// Let it write for a random while, at least until it has acknowledged something.
		first, ok := <-lines
		if !ok {
			cmd.Wait()
			t.Fatalf("round %d: child acknowledged nothing: %s", round, stderr.String())
		}
		acked[first] = true
		time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		for n := range lines {
			acked[n] = true
		}
		cmd.Wait()
	}
	rep := mustVerify(t, dir)
	if !rep.OK() {
		t.Fatalf("verify after 20 kills: %v", rep.Problems)
	}
	for seq := range acked {
		if seq > rep.Last {
			t.Fatalf("seq %d was acknowledged but the journal ends at %d", seq, rep.Last)
		}
	}
	j := openTest(t, dir, nil)
	if _, err := j.Append(context.Background(), testEvent(0)); err != nil {
		t.Fatalf("append after the crashes: %v", err)
	}
	t.Logf("%d acknowledged appends across 20 kills; journal holds %d", len(acked), rep.Last)
}

func TestFullDiskFailsClosedAndLeavesNothingHalfWritten(t *testing.T) {
	dir := smallFS(t, "64k")
	j := openTest(t, dir, nil)
	big := strings.Repeat("x", 2000)
	var lastOK uint64
	var appendErr error
	for i := 0; i < 1000; i++ {
		ev := testEvent(i)
		ev.Details["pad"] = big
		seq, err := j.Append(context.Background(), ev)
		if err != nil {
			appendErr = err
			break
		}
		lastOK = seq
	}
	if !errors.Is(appendErr, ErrUnwritable) || !errors.Is(appendErr, syscall.ENOSPC) {
		t.Fatalf("append on a full disk: got %v, want ErrUnwritable wrapping ENOSPC", appendErr)
	}
	// While the disk stays full, a large append keeps failing rather than
	// being half-written.
	ev := testEvent(0)
	ev.Details["pad"] = strings.Repeat("y", 60000)
	if _, err := j.Append(context.Background(), ev); !errors.Is(err, ErrUnwritable) {
		t.Fatalf("second append on a full disk: got %v, want ErrUnwritable", err)
	}
	j.Close()
	rep := mustVerify(t, dir)
	if !rep.OK() {
		t.Fatalf("verify after disk full: %v", rep.Problems)
	}
	if rep.Last < lastOK {
		t.Fatalf("journal ends at %d, but %d was acknowledged", rep.Last, lastOK)
	}
	data, _ := os.ReadFile(filepath.Join(dir, segName(1)))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		t.Fatal("a partial entry remained after the failed append")
	}
}

func TestDropOldestPolicyMakesRoom(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, &Options{SegmentBytes: 4096, MaxBytes: 16384, DiskFull: DiskFullDropOldest})
	for i := 0; i < 300; i++ {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatalf("append %d under drop_oldest: %v", i, err)
		}
	}
	segs := j.Segments()
	if segs[0].First == 1 {
		t.Fatal("oldest segment was not dropped")
	}
	blockDir := t.TempDir()
	jb := openTest(t, blockDir, &Options{SegmentBytes: 4096, MaxBytes: 16384})
	var err error
	for i := 0; i < 300 && err == nil; i++ {
		_, err = jb.Append(context.Background(), testEvent(i))
	}
	if !errors.Is(err, ErrDiskLimit) {
		t.Fatalf("block policy at the limit: got %v, want ErrDiskLimit", err)
	}
}

// A reload changes the size limit and the policy of the running journal:
// raising max_bytes lets a journal blocked at its limit take appends again;
// a limit below what it holds under block is refused and changes nothing;
// drop_oldest then makes room.
func TestSetLimitsAppliesToTheRunningJournal(t *testing.T) {
	j := openTest(t, t.TempDir(), &Options{SegmentBytes: 4096, MaxBytes: 16384})
	var err error
	for i := 0; i < 300 && err == nil; i++ {
		_, err = j.Append(context.Background(), testEvent(i))
	}
	if !errors.Is(err, ErrDiskLimit) {
		t.Fatalf("at the limit: got %v, want ErrDiskLimit", err)
	}
	if err := j.SetLimits(8192, DiskFullBlock); err == nil || !strings.Contains(err.Error(), "below") {
		t.Fatalf("a limit below what the journal holds, under block: got %v, want a refusal", err)
	}
	if _, err := j.Append(context.Background(), testEvent(0)); !errors.Is(err, ErrDiskLimit) {
		t.Fatalf("after the refused change: got %v, want the old limit still (ErrDiskLimit)", err)
	}
	if err := j.SetLimits(1<<20, DiskFullBlock); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(context.Background(), testEvent(0)); err != nil {
		t.Fatalf("after raising max_bytes: %v", err)
	}
	if err := j.SetLimits(16384, DiskFullDropOldest); err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatalf("append %d under drop_oldest: %v", i, err)
		}
	}
	if j.Segments()[0].First == 1 {
		t.Error("drop_oldest set by SetLimits dropped nothing")
	}
	if err := j.SetLimits(0, "shred"); err == nil {
		t.Error("an unknown policy was accepted")
	}
}

// Under drop_oldest, a full file system makes the journal drop its oldest
// segment and write the batch again: every append succeeds, and the entries
// written on the retry are intact (their seq put in once, the chain whole).
func TestDropOldestOnAFullDiskRetriesIntactEntries(t *testing.T) {
	dir := smallFS(t, "256k")
	j := openTest(t, dir, &Options{SegmentBytes: 64 << 10, DiskFull: DiskFullDropOldest, noAhead: true})
	big := strings.Repeat("x", 2000)
	for i := 0; i < 400; i++ {
		ev := testEvent(i)
		ev.Details["pad"] = big
		if _, err := j.Append(context.Background(), ev); err != nil {
			t.Fatalf("append %d under drop_oldest on a full disk: %v", i, err)
		}
	}
	if segs := j.Segments(); segs[0].First == 1 {
		t.Fatal("nothing was dropped: the disk never filled, the test proves nothing")
	}
	// 400 entries, and one audit.dropped for each segment dropped.
	if rep := mustVerify(t, dir); !rep.OK() || rep.Last < 400 {
		t.Fatalf("verify: last %d problems %v, want at least 400 and none", rep.Last, rep.Problems)
	}
}

// smallFS mounts a tmpfs of size on a temporary directory: a file system
// that fills up.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs (capability CAP_SYS_ADMIN absent)")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v)", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// Stalled says a batch has been in writing too long (a disk that stopped
// answering), and only then: the watchdog stops pinging on it.
func TestStalled(t *testing.T) {
	j := openTest(t, t.TempDir(), nil)
	if _, err := j.Append(context.Background(), testEvent(1)); err != nil {
		t.Fatal(err)
	}
	if j.Stalled(time.Second) {
		t.Error("an idle journal is stalled")
	}
	j.commitStart.Store(time.Now().Add(-time.Minute).UnixNano()) // a write begun a minute ago
	if !j.Stalled(10 * time.Second) {
		t.Error("a batch in writing for a minute is not stalled")
	}
	if j.Stalled(2 * time.Minute) {
		t.Error("stalled before its limit")
	}
	j.commitStart.Store(0)
}
