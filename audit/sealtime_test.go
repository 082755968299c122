package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Checkpoints carry the time they were made and the interval to the next,
// signed: a capture can then tell a cut tail from an appliance gone quiet.

func TestCheckpointSignatureCoversChainTimeAndInterval(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	at := time.Date(2026, 11, 26, 8, 0, 0, 123, time.UTC)
	for _, tc := range []struct {
		name    string
		mutate  func(*Event)
		wantErr error
	}{
		{"good", func(*Event) {}, nil},
		{"time moved on", func(e *Event) { e.Details[DetailCheckpointTime] = "2026-11-26T09:00:00.000000123Z" }, ErrBadSignature},
		{"interval stretched", func(e *Event) { e.Details[DetailCheckpointInterval] = "24h0m0s" }, ErrBadSignature},
		{"time taken away", func(e *Event) {
			delete(e.Details, DetailCheckpointTime)
			delete(e.Details, DetailCheckpointInterval)
			delete(e.Details, DetailCheckpointChain)
		}, ErrBadSignature},
		{"chain without time", func(e *Event) {
			delete(e.Details, DetailCheckpointTime)
			delete(e.Details, DetailCheckpointInterval)
		}, ErrBadCheckpoint},
		{"chain changed", func(e *Event) { e.Details[DetailCheckpointChain] = "ffffffffffffffffffffffffffffffff" }, ErrBadSignature},
		{"chain taken away", func(e *Event) { delete(e.Details, DetailCheckpointChain) }, ErrBadSignature},
		{"time unreadable", func(e *Event) { e.Details[DetailCheckpointTime] = "yesterday" }, ErrBadCheckpoint},
		{"interval without time", func(e *Event) { delete(e.Details, DetailCheckpointTime) }, ErrBadCheckpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := NewCheckpointEvent(key, Checkpoint{Chain: "0123456789abcdef0123456789abcdef", Seq: 7, Hash: [32]byte{7}, Time: at, Interval: time.Minute})
			tc.mutate(ev)
			cp, err := ParseCheckpoint(ev)
			if err == nil {
				err = cp.Verify(pub)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("got %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && (!cp.Time.Equal(at) || cp.Interval != time.Minute) {
				t.Errorf("got time %v interval %v, want %v and 1m", cp.Time, cp.Interval, at)
			}
		})
	}
}

// A checkpoint made before checkpoints carried time (message v1) still
// verifies, dated by the newest entry it covers (the chain hash it signs
// authenticates that entry's time): a capture taken then is ok, one that
// should reach later than its interval and margin is stale, as a capture
// cut back to it from later, timed seals is.
func TestCheckpointsWithoutTimeAreDatedByTheirEntries(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	var lines []string
	var prev [32]byte
	for i := 1; i <= 4; i++ {
		var e *Event
		if i == 4 {
			e = oldCheckpointEvent(key, 3, prev)
		} else {
			e = &Event{Type: "tool.call", Outcome: OutcomeSuccess}
		}
		e.Seq, e.Time = uint64(i), testTime
		c, _ := e.Canonical()
		h := ChainHash(prev, c)
		lines = append(lines, capBody(forgedEntry{uint64(i), h, prev, c}))
		prev = h
	}
	if strings.Contains(lines[3], DetailCheckpointTime) {
		t.Fatalf("the old-format checkpoint has a time: %s", lines[3])
	}
	for _, tc := range []struct {
		name      string
		until     time.Time
		wantStale bool
	}{
		{"taken when sealed", testTime, false},
		{"taken within the interval and margin", testTime.Add(DefaultCheckpointInterval + SealMargin), false},
		{"taken an hour later", testTime.Add(time.Hour), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub, Until: tc.until})
			if err := v.Read("cap.log", strings.NewReader(strings.Join(lines, "\n"))); err != nil {
				t.Fatal(err)
			}
			rep := v.Report()
			if rep.SealedUpTo != 3 || !rep.LastSealAt.IsZero() {
				t.Errorf("got sealed up to %d, last seal at %v; want sealed up to 3, no signed time", rep.SealedUpTo, rep.LastSealAt)
			}
			if n := strings.Join(rep.Notes, "\n"); !strings.Contains(n, "carry no time") {
				t.Errorf("got notes %q, want them to say the checkpoints carry no time", rep.Notes)
			}
			stale := len(rep.Problems) == 1 && rep.Problems[0].Kind == ProblemStale
			if stale != tc.wantStale || (!tc.wantStale && !rep.OK()) {
				t.Errorf("got problems %v, want stale=%v and nothing else", rep.Problems, tc.wantStale)
			}
		})
	}
}

// oldCheckpointEvent is a final checkpoint as versions before sealed times
// made it: the signature covers this exact message.
func oldCheckpointEvent(key ed25519.PrivateKey, seq uint64, hash [32]byte) *Event {
	msg := fmt.Sprintf("applianced audit checkpoint v1\nseq=%d\nhash=%x\nfinal=true\n", seq, hash)
	return &Event{Type: TypeCheckpoint, Outcome: OutcomeSuccess, Target: "journal", Details: map[string]string{
		DetailCheckpointSeq: strconv.FormatUint(seq, 10), DetailCheckpointHash: hex.EncodeToString(hash[:]), DetailCheckpointFinal: "true",
		DetailCheckpointKeyID: KeyID(key.Public().(ed25519.PublicKey)), DetailCheckpointSig: base64.StdEncoding.EncodeToString(ed25519.Sign(key, []byte(msg))),
	}}
}

// TestCheckpointerWritesHeartbeatsWhileIdle runs a Checkpointer on a real
// journal that gets one entry and then nothing: it still writes a signed,
// timed checkpoint every interval, each sealing the one before.
func TestCheckpointerWritesHeartbeatsWhileIdle(t *testing.T) {
	j, err := Open(t.TempDir(), &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := j.Append(ctx, &Event{Type: "daemon.start", Outcome: OutcomeSuccess}); err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	const interval = 50 * time.Millisecond
	c := NewCheckpointer(j, key, &CheckpointOptions{Every: 1000, Interval: interval, Logger: quiet()})
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitSeq(t, j, 5) // the entry and at least four heartbeats
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	r, _ := j.Reader(1)
	defer r.Close()
	var last *Checkpoint
	hashes := map[uint64][32]byte{}
	for s := uint64(1); s <= j.LastSeq(); s++ {
		e, err := r.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		hashes[e.Seq] = e.Hash
		if s == 1 {
			continue
		}
		cp, err := ParseCheckpoint(&e.Event)
		if err != nil {
			t.Fatalf("seq %d: got %v, want a checkpoint (nothing else was appended)", s, err)
		}
		if err := cp.Verify(c.PublicKey()); err != nil {
			t.Fatal(err)
		}
		if !cp.Timed() || cp.Interval != interval || !cp.Time.Equal(e.Event.Time) {
			t.Errorf("seq %d: got time %v interval %v (event time %v), want the event's time and %v", s, cp.Time, cp.Interval, e.Event.Time, interval)
		}
		if hashes[cp.Seq] != cp.Hash || cp.Seq >= s {
			t.Errorf("seq %d: seals seq %d with a hash that is not its", s, cp.Seq)
		}
		if last != nil && (cp.Time.Before(last.Time) || cp.Seq < last.Seq) {
			t.Errorf("seq %d: sealed at %v seq %d, after a seal at %v seq %d", s, cp.Time, cp.Seq, last.Time, last.Seq)
		}
		last = cp
	}
	if last == nil || last.Seq < 3 {
		t.Errorf("got the last heartbeat sealing %+v, want it to seal an earlier heartbeat", last)
	}
}

// heartbeatChain is one tool call at testTime, then a heartbeat checkpoint
// each minute for n minutes (the last one final when final is set).
func heartbeatChain(t *testing.T, key ed25519.PrivateKey, n int, final bool) []forgedEntry {
	t.Helper()
	var out []forgedEntry
	var prev [32]byte
	add := func(e *Event, at time.Time) {
		e.Seq, e.Time = uint64(len(out)+1), at
		c, _ := e.Canonical()
		h := ChainHash(prev, c)
		out = append(out, forgedEntry{e.Seq, h, prev, c})
		prev = h
	}
	add(&Event{Type: "tool.call", Outcome: OutcomeSuccess, Target: "t"}, testTime)
	for i := 1; i <= n; i++ {
		at := testTime.Add(time.Duration(i) * time.Minute)
		add(NewCheckpointEvent(key, Checkpoint{Seq: uint64(len(out)), Hash: prev, Final: final && i == n, Time: at, Interval: time.Minute}), at)
	}
	return out
}

func capLines(es []forgedEntry) []string {
	var lines []string
	for _, e := range es {
		lines = append(lines, capBody(e))
	}
	return lines
}

func verifyLinesWith(t *testing.T, o *CaptureOptions, lines []string) *CaptureReport {
	t.Helper()
	v := NewCaptureVerifier(o)
	if err := v.Read("cap.log", strings.NewReader(strings.Join(lines, "\n")+"\n")); err != nil {
		t.Fatal(err)
	}
	return v.Report()
}

func hasProblem(rep *CaptureReport, kind string) bool {
	for _, p := range rep.Problems {
		if p.Kind == kind {
			return true
		}
	}
	return false
}

// A capture cut right after a heartbeat ends at a valid checkpoint: only
// its age against when the capture was taken tells it was cut.
func TestCaptureCutAfterAHeartbeatIsStale(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	taken := testTime.Add(10*time.Minute + 30*time.Second) // the heartbeat of minute 10 arrived
	for _, tc := range []struct {
		name      string
		final     bool
		keep      int // entries kept from the start
		openTail  bool
		wantStale bool
	}{
		{"whole", false, 11, false, false},
		{"cut after minute 5", false, 6, false, true},
		{"cut after minute 9, within interval and margin", false, 10, false, false},
		{"cut after minute 5, stream declared open", false, 6, true, false},
		{"whole, final at minute 10", true, 11, false, false},
		{"final at minute 5, capture taken later", true, 6, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 10
			if tc.final {
				n = tc.keep - 1
			}
			lines := capLines(heartbeatChain(t, key, n, tc.final))[:tc.keep]
			rep := verifyLinesWith(t, &CaptureOptions{PublicKey: pub, Until: taken, AllowOpenTail: tc.openTail}, lines)
			if got := hasProblem(rep, ProblemStale); got != tc.wantStale {
				t.Errorf("got stale=%v (problems %v), want %v", got, rep.Problems, tc.wantStale)
			}
			if !tc.wantStale && !rep.OK() {
				t.Errorf("got problems %v, want none", rep.Problems)
			}
			if want := testTime.Add(time.Duration(tc.keep-1) * time.Minute); !rep.LastSealAt.Equal(want) {
				t.Errorf("got last seal at %v, want %v", rep.LastSealAt, want)
			}
		})
	}
}

// A capture whose first lines were deleted starts after seq 1: a problem,
// unless the auditor says where the receiver's record starts.
func TestCaptureStartingAfterSeqOneNeedsFrom(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	lines := capLines(forgeryChain(t, key, 8, true))[3:] // seq 4 onwards
	for _, tc := range []struct {
		from     uint64
		wantHead bool
	}{{0, true}, {1, true}, {3, true}, {4, false}, {5, false}} {
		rep := verifyLinesWith(t, &CaptureOptions{PublicKey: pub, From: tc.from}, lines)
		if got := hasProblem(rep, ProblemHead); got != tc.wantHead {
			t.Errorf("from %d: got head problem %v (problems %v), want %v", tc.from, got, rep.Problems, tc.wantHead)
		}
		if !tc.wantHead && !rep.OK() {
			t.Errorf("from %d: got problems %v, want none", tc.from, rep.Problems)
		}
	}
}

// TestStaleMessageSaysHowToVerifyAnArchivedCapture: a stale seal says to
// give --until with when the file was taken, or --open-tail, and never
// suggests the seal's own time, which would turn the check off.
func TestStaleMessageSaysHowToVerifyAnArchivedCapture(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	sealAt := testTime.Add(2 * time.Minute)
	for _, tc := range []struct {
		name string
		cp   Checkpoint
	}{
		{"heartbeat", Checkpoint{Time: sealAt, Interval: time.Minute}},
		{"final", Checkpoint{Time: sealAt, Interval: time.Minute, Final: true}},
		{"untimed", Checkpoint{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var lines []string
			var prev [32]byte
			add := func(e *Event, at time.Time) {
				e.Seq, e.Time = uint64(len(lines)+1), at
				c, _ := e.Canonical()
				h := ChainHash(prev, c)
				lines = append(lines, capBody(forgedEntry{e.Seq, h, prev, c}))
				prev = h
			}
			add(&Event{Type: "tool.call", Outcome: OutcomeSuccess}, sealAt)
			cp := tc.cp
			cp.Seq, cp.Hash = 1, prev
			add(NewCheckpointEvent(key, cp), sealAt)
			v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub, Until: testTime.Add(time.Hour)})
			if err := v.Read("cap.log", strings.NewReader(strings.Join(lines, "\n"))); err != nil {
				t.Fatal(err)
			}
			rep := v.Report()
			if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemStale {
				t.Fatalf("got problems %v, want one %s", rep.Problems, ProblemStale)
			}
			msg := rep.Problems[0].Message
			if !strings.Contains(msg, "give --until with when it was") || !strings.Contains(msg, "--open-tail") {
				t.Errorf("got %q, want it to say how to verify a file taken earlier", msg)
			}
			if strings.Contains(msg, "--until "+sealAt.Format(time.RFC3339)) {
				t.Errorf("got %q, want no --until at the seal's own time", msg)
			}
		})
	}
}
