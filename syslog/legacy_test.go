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

// writeLegacyJournal writes, in dir, a journal as the release before chain
// ids and sealed times wrote it: no chain id in the segment header, n
// events made at at, and a final checkpoint without time (message v1)
// sealing them at seq n+1.
func writeLegacyJournal(t *testing.T, dir string, key ed25519.PrivateKey, n int, at time.Time) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var prev [32]byte
	seg := fmt.Sprintf("applianced-journal v1 first=1 prev=%x\n", prev)
	add := func(e *audit.Event) {
		c, err := e.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		h := audit.ChainHash(prev, c)
		seg += fmt.Sprintf("%x %s\n", h, c)
		prev = h
	}
	for i := 1; i <= n; i++ {
		e := testEvent(i)
		e.Seq, e.Time = uint64(i), at
		add(e)
	}
	cp := audit.NewCheckpointEvent(key, audit.Checkpoint{Seq: uint64(n), Hash: prev, Final: true})
	cp.Seq, cp.Time = uint64(n+1), at
	if strings.Contains(fmt.Sprint(cp.Details), audit.DetailCheckpointTime) {
		t.Fatal("the legacy checkpoint carries a time")
	}
	add(cp)
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("journal-%020d.log", 1)), []byte(seg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLegacyChainCutBackToUntimedSealIsStale upgrades a journal of the
// release before sealed times in place: its chain then holds the old
// release's untimed seal followed by this release's timed ones and
// heartbeats, forwarded to a real rsyslog. The receiver's file cut back to
// the untimed seal is stale: that seal is dated by the entries it covers.
func TestLegacyChainCutBackToUntimedSealIsStale(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	dir := filepath.Join(t.TempDir(), "audit")
	// The old release ran until an hour ago.
	writeLegacyJournal(t, dir, key, 3, time.Now().Add(-time.Hour).UTC())

	j, err := audit.Open(dir, &audit.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	if j.ChainID() != "" || j.LastSeq() != 4 {
		t.Fatalf("got chain %q, last seq %d; want the legacy chain, last seq 4", j.ChainID(), j.LastSeq())
	}
	const interval = 200 * time.Millisecond
	c := audit.NewCheckpointer(j, key, &audit.CheckpointOptions{Every: 1000, Interval: interval, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	startForwarder(t, j, nil, Target{Address: "tcp://" + srv.Addr, Format: FormatRFC5424})
	if err := appendN(t, j, 10, 1); err != nil {
		t.Fatal(err)
	}
	cnt := newSeqCounter(srv.File)
	waitFor(t, "heartbeats at the receiver", time.Minute, func() bool { cnt.poll(); return len(cnt.seen) >= 20 })

	rep := verifyFile(t, srv.File, &audit.CaptureOptions{PublicKey: pub})
	if !rep.OK() || rep.LastSealAt.IsZero() {
		t.Fatalf("the whole capture: got problems %v, last seal at %v; want ok, sealed at a known time", rep.Problems, rep.LastSealAt)
	}
	opts := &audit.CaptureOptions{PublicKey: pub, Until: rep.LastSealAt.Add(interval), Margin: 2 * time.Second}
	if rep := verifyFile(t, srv.File, opts); !rep.OK() {
		t.Fatalf("the whole capture, taken then: got problems %v, want none", rep.Problems)
	}

	// Cut back to the old release's seal (seq 4).
	var kept []string
	for _, l := range readLines(t, srv.File) {
		if i := strings.Index(l, `{"audit_seq":`); i >= 0 {
			var seq uint64
			fmt.Sscanf(l[i:], `{"audit_seq":%d`, &seq)
			if seq > 4 {
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
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != audit.ProblemStale || rep.SealedUpTo != 3 {
		t.Errorf("the capture cut back to the untimed seal: got sealed up to %d, problems %v; want sealed up to 3 and one %s", rep.SealedUpTo, rep.Problems, audit.ProblemStale)
	}
}
