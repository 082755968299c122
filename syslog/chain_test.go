package syslog

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/rsyslog"
)

// run is one daemon run as far as the audit trail goes: a journal in dir,
// its checkpointer and a forwarder whose cursors live in cursors.
type run struct {
	j      *audit.Journal
	cp     *audit.Checkpointer
	f      *Forwarder
	cancel context.CancelFunc
	done   chan struct{}
}

func startRun(t *testing.T, dir, cursors string, key ed25519.PrivateKey, target Target, before int) *run {
	t.Helper()
	j, err := audit.Open(dir, &audit.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	// Entries appended before the forwarder starts: a new chain may
	// already be past the old chain's cursor.
	if err := appendN(t, j, before, 1); err != nil {
		t.Fatal(err)
	}
	r := &run{j: j, done: make(chan struct{})}
	r.cp = audit.NewCheckpointer(j, key, &audit.CheckpointOptions{Every: 5, Interval: time.Hour, Logger: quietLogger()})
	if r.f, err = New(j, []Target{target}, &Options{Dir: cursors, Logger: quietLogger(), BackoffMax: time.Second}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	cpDone := make(chan struct{})
	go func() { r.f.Run(ctx); close(r.done) }()
	go func() { r.cp.Run(ctx); close(cpDone) }()
	t.Cleanup(func() { cancel(); <-r.done; <-cpDone; j.Close() })
	return r
}

// stop seals the journal, delivers the seal and closes the journal.
func (r *run) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.cp.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.cancel()
	<-r.done
	if err := r.j.Close(); err != nil {
		t.Fatal(err)
	}
}

// setAside runs a journal, moves it aside as the recovery from a damaged
// journal says, and runs its successor in the same place, with the same
// syslog cursors and receiver. before entries go into the successor before
// its forwarder starts.
func setAside(t *testing.T, srv *rsyslog.Server, key ed25519.PrivateKey, before int) (oldID, newID string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "audit")
	cursors := t.TempDir()
	target := Target{Address: "tcp://" + srv.Addr, Format: FormatRFC5424}
	r := startRun(t, dir, cursors, key, target, 0)
	if err := appendN(t, r.j, 12, 1); err != nil {
		t.Fatal(err)
	}
	oldID = r.j.ChainID()
	r.stop(t)
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	r = startRun(t, dir, cursors, key, target, before)
	if err := appendN(t, r.j, 8, 1); err != nil {
		t.Fatal(err)
	}
	newID = r.j.ChainID()
	last := r.j.LastSeq()
	r.stop(t)
	cnt := newSeqCounter(srv.File)
	waitFor(t, "the new chain's final checkpoint at the receiver", time.Minute, func() bool {
		cnt.poll()
		b, _ := os.ReadFile(srv.File)
		return cnt.seen[last+1] > 0 && strings.Count(string(b), `"final":"true"`) >= 2
	})
	return oldID, newID
}

// TestSetAsideJournalAndSuccessorVerifyAtTheReceiver: a receiver's file
// holding a journal set aside and its successor, both from seq 1, verifies
// chain by chain, through the real forwarder and rsyslog.
func TestSetAsideJournalAndSuccessorVerifyAtTheReceiver(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	oldID, newID := setAside(t, srv, key, 0)
	rep := verifyFile(t, srv.File, &audit.CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey), Until: time.Now()})
	if !rep.OK() {
		t.Fatalf("got problems %v, want none", rep.Problems)
	}
	if len(rep.Chains) != 2 || rep.Chains[0].ID != oldID || rep.Chains[1].ID != newID {
		t.Fatalf("got chains %+v, want %s then %s", rep.Chains, oldID, newID)
	}
	for _, c := range rep.Chains {
		if c.FirstSeq != 1 || c.SealedUpTo+1 != c.LastSeq {
			t.Errorf("got chain %+v, want it from seq 1, sealed up to its final checkpoint", c)
		}
	}
}

// TestCursorOfASetAsideJournalDoesNotSkipTheNewChain: the new chain is
// already past the old chain's cursor when its forwarder starts; a cursor
// is a position in one chain, so the new chain still goes from seq 1.
func TestCursorOfASetAsideJournalDoesNotSkipTheNewChain(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	_, newID := setAside(t, srv, key, 30)
	rep := verifyFile(t, srv.File, &audit.CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey), Until: time.Now()})
	var got *audit.ChainReport
	for i := range rep.Chains {
		if rep.Chains[i].ID == newID {
			got = &rep.Chains[i]
		}
	}
	if got == nil || got.FirstSeq != 1 || !rep.OK() {
		t.Fatalf("got chains %+v, problems %v; want the new chain from seq 1 and no problem", rep.Chains, rep.Problems)
	}
}

// TestOlderChainCutAfterAHeartbeatIsStale runs a journal with heartbeats
// that stops without a final seal (damaged, then set aside) and its
// successor in the same place, both forwarded to one real rsyslog. The
// older chain was sealed up to when the newer began; the same file with
// the older chain cut after an early heartbeat is stale for that chain
// (and short of the entry the newer chain continues from).
func TestOlderChainCutAfterAHeartbeatIsStale(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	target := Target{Address: "tcp://" + srv.Addr, Format: FormatRFC5424}
	const interval = 200 * time.Millisecond
	heartbeats := func(j *audit.Journal, n int) {
		t.Helper()
		want := j.LastSeq() + uint64(n)
		body := fmt.Sprintf(`{"audit_seq":%d,"audit_chain":"%s"`, want, j.ChainID())
		waitFor(t, "heartbeats at the receiver", time.Minute, func() bool {
			b, _ := os.ReadFile(srv.File)
			return strings.Contains(string(b), body)
		})
	}
	dir := filepath.Join(t.TempDir(), "audit")
	runChain := func(events [][2]int) *audit.Journal {
		t.Helper()
		j, err := audit.Open(dir, &audit.Options{Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		c := audit.NewCheckpointer(j, key, &audit.CheckpointOptions{Every: 1000, Interval: interval, Logger: quietLogger()})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { c.Run(ctx); close(done) }()
		startForwarder(t, j, nil, target)
		for _, e := range events {
			if err := appendN(t, j, e[0], 1); err != nil {
				t.Fatal(err)
			}
			heartbeats(j, e[1])
		}
		// Stopped without a final seal, as a damaged journal is.
		cancel()
		<-done
		return j
	}
	a := runChain([][2]int{{5, 15}, {5, 3}})
	aID, aLast := a.ChainID(), a.LastSeq()
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	b := runChain([][2]int{{3, 3}})
	rep := verifyFile(t, srv.File, &audit.CaptureOptions{PublicKey: pub})
	if !rep.OK() || len(rep.Chains) != 2 || rep.Chains[0].ID != aID || rep.Chains[1].ID != b.ChainID() {
		t.Fatalf("the whole capture: got chains %+v, problems %v; want %s then %s, ok", rep.Chains, rep.Problems, aID, b.ChainID())
	}
	opts := &audit.CaptureOptions{PublicKey: pub, Until: rep.LastSealAt.Add(interval), Margin: 2 * time.Second}
	if rep := verifyFile(t, srv.File, opts); !rep.OK() {
		t.Fatalf("the whole capture, taken then: got problems %v, want none", rep.Problems)
	}

	// Cut the older chain after its first heartbeat (seq 6).
	var kept []string
	for _, l := range readLines(t, srv.File) {
		if i := strings.Index(l, `{"audit_seq":`); i >= 0 && strings.Contains(l, aID) {
			var seq uint64
			fmt.Sscanf(l[i:], `{"audit_seq":%d`, &seq)
			if seq > 6 {
				continue
			}
		}
		kept = append(kept, l)
	}
	cut := filepath.Join(t.TempDir(), "cut.log")
	if err := os.WriteFile(cut, []byte(strings.Join(kept, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep = verifyFile(t, cut, opts)
	var stale, link int
	for _, p := range rep.Problems {
		switch {
		case p.Kind == audit.ProblemStale && p.Chain == aID:
			stale++
		case p.Kind == audit.ProblemLink && p.Chain == b.ChainID():
			link++
		}
	}
	if stale != 1 || link != 1 || len(rep.Problems) != 2 {
		t.Errorf("the older chain cut at seq 6 of %d: got problems %v, want one %s in chain %s and the %s of the newer chain to it",
			aLast, rep.Problems, audit.ProblemStale, aID, audit.ProblemLink)
	}
}

// TestReceiverFileWithoutTheSetAsideChainFails: through the real forwarder
// and rsyslog, the new chain's first entry names the chain set aside; the
// receiver's file with every line of that chain removed fails, naming it.
func TestReceiverFileWithoutTheSetAsideChainFails(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	oldID, newID := setAside(t, srv, key, 0)
	opts := &audit.CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey), Until: time.Now()}
	rep := verifyFile(t, srv.File, opts)
	if n := len(rep.Chains); !rep.OK() || n != 2 || rep.Chains[1].Link.State != audit.LinkContinues || rep.Chains[1].Link.Chain != oldID {
		t.Fatalf("the whole file: got chains %+v, problems %v; want %s continuing %s, ok", rep.Chains, rep.Problems, newID, oldID)
	}
	var kept []string
	for _, l := range readLines(t, srv.File) {
		if !strings.Contains(l, `"audit_chain":"`+oldID+`"`) {
			kept = append(kept, l)
		}
	}
	dropped := filepath.Join(t.TempDir(), "dropped.log")
	if err := os.WriteFile(dropped, []byte(strings.Join(kept, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep = verifyFile(t, dropped, opts)
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != audit.ProblemLink || !strings.Contains(rep.Problems[0].Message, oldID) {
		t.Errorf("the file without chain %s: got problems %v, want one %s naming it", oldID, rep.Problems, audit.ProblemLink)
	}
}

// TestLeftChainsNamesWhereEachTargetStood: a target whose cursor is in
// another chain than the journal's is a left chain (its address, the
// chain and the cursor), which the daemon delivers from; a target whose
// cursor is in the journal's chain, and a new target, are not.
func TestLeftChainsNamesWhereEachTargetStood(t *testing.T) {
	base := t.TempDir()
	cursors := filepath.Join(base, "cursors")
	if err := os.Mkdir(cursors, 0o700); err != nil {
		t.Fatal(err)
	}
	open := func(dir string) *audit.Journal {
		j, err := audit.Open(filepath.Join(base, dir), &audit.Options{Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { j.Close() })
		if err := appendN(t, j, 3, 1); err != nil {
			t.Fatal(err)
		}
		return j
	}
	old, live := open("old"), open("live")
	left, stayed, fresh := "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"
	if err := newCursor(cursors, left, old.ChainID()).store(2); err != nil {
		t.Fatal(err)
	}
	if err := newCursor(cursors, stayed, live.ChainID()).store(1); err != nil {
		t.Fatal(err)
	}
	f, err := New(live, []Target{{Address: left}, {Address: stayed}, {Address: fresh}}, &Options{Dir: cursors, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	want := []LeftChain{{Target: left, Chain: old.ChainID(), Cursor: 2}}
	if got := f.LeftChains(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}
