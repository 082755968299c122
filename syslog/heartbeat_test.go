package syslog

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/rsyslog"
)

// TestCaptureCutAtAHeartbeatFails lets an appliance go idle after a few
// entries while its checkpointer and forwarder run against a real rsyslog:
// the heartbeats keep the receiver's file sealed up to the time it is read,
// and the same file cut at an earlier heartbeat (a valid checkpoint) fails
// as stale.
func TestCaptureCutAtAHeartbeatFails(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	j := openJournal(t)
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const interval = 200 * time.Millisecond
	c := audit.NewCheckpointer(j, key, &audit.CheckpointOptions{Every: 1000, Interval: interval, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	startForwarder(t, j, nil, Target{Address: "tcp://" + srv.Addr, Format: FormatRFC5424})
	if err := appendN(t, j, 5, 1); err != nil {
		t.Fatal(err)
	}
	// Idle from here: only heartbeats, 20 of them over about 4 s.
	cnt := newSeqCounter(srv.File)
	waitFor(t, "20 heartbeats at the receiver", time.Minute, func() bool { cnt.poll(); return len(cnt.seen) >= 25 })

	// The capture is taken as its newest heartbeat arrives; however late
	// a loaded machine delivers it, what counts is the appliance's clock.
	pub := key.Public().(ed25519.PublicKey)
	rep := verifyFile(t, srv.File, &audit.CaptureOptions{PublicKey: pub})
	if !rep.OK() || rep.SealedUpTo < 24 || rep.LastSealAt.IsZero() {
		t.Fatalf("the whole capture: got sealed up to %d at %v, problems %v; want ok, sealed up to 24 or more", rep.SealedUpTo, rep.LastSealAt, rep.Problems)
	}
	opts := &audit.CaptureOptions{PublicKey: pub, Until: rep.LastSealAt.Add(interval), Margin: 2 * time.Second}
	if rep := verifyFile(t, srv.File, opts); !rep.OK() {
		t.Fatalf("the whole capture, taken then: got problems %v, want none", rep.Problems)
	}

	lines := readLines(t, srv.File)
	cutAt := -1
	for i, l := range lines {
		if strings.Contains(l, `"type":"audit.checkpoint"`) {
			cutAt = i
			break
		}
	}
	if cutAt < 0 {
		t.Fatal("no checkpoint in the capture")
	}
	cut := filepath.Join(t.TempDir(), "cut.log")
	if err := os.WriteFile(cut, []byte(strings.Join(lines[:cutAt+1], "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep = verifyFile(t, cut, opts)
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != audit.ProblemStale {
		t.Errorf("the capture cut at the first heartbeat: got problems %v, want one %s", rep.Problems, audit.ProblemStale)
	}
}
