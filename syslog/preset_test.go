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

// bodiesOf maps each seq of chain in a receiver's file to its message
// body (from `{"audit_seq":` on).
func bodiesOf(t *testing.T, path, chain string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range readLines(t, path) {
		i := strings.Index(l, bodyPrefix)
		if i < 0 || !strings.Contains(l, `"audit_chain":"`+chain+`"`) {
			continue
		}
		seq, _, _ := strings.Cut(l[i+len(bodyPrefix):], ",")
		out[seq] = l[i:]
	}
	return out
}

// TestForwarderOverASetAsideJournal delivers a journal set aside, through
// its read-only view, to a second real receiver from a preset cursor: the
// receiver gets every entry after the cursor, each with exactly the body
// the forwarder sent to the first receiver while the journal was live,
// and its file verifies from there; what the forwarder appends goes to the
// live journal.
func TestForwarderOverASetAsideJournal(t *testing.T) {
	first := rsyslog.Start(t, rsyslog.Options{})
	second := rsyslog.Start(t, rsyslog.Options{})
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	dir := filepath.Join(t.TempDir(), "audit")
	r := startRun(t, dir, t.TempDir(), key, Target{Address: "tcp://" + first.Addr, Format: FormatRFC5424}, 0)
	if err := appendN(t, r.j, 30, 1); err != nil {
		t.Fatal(err)
	}
	r.stop(t)
	chain, last := r.j.ChainID(), r.j.LastSeq() // the final checkpoint's
	if err := os.Rename(dir, dir+".damaged"); err != nil {
		t.Fatal(err)
	}
	live, err := audit.Open(dir, &audit.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { live.Close() })
	v, err := audit.OpenReadOnly(dir+".damaged", &audit.ReadOnlyOptions{Appender: live})
	if err != nil {
		t.Fatal(err)
	}
	if v.LastSeq() != last || v.Stop() != nil {
		t.Fatalf("got the view up to %d (stop %v), want %d", v.LastSeq(), v.Stop(), last)
	}

	const from = 11
	target := Target{Address: "tcp://" + second.Addr, Format: FormatRFC5424}
	cursors := t.TempDir()
	if err := PresetCursor(cursors, target.Address, chain, from-1); err != nil {
		t.Fatal(err)
	}
	f, err := New(v, []Target{target}, &Options{Dir: cursors, Logger: quietLogger(), BackoffMax: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	fctx, stop := context.WithTimeout(ctx, time.Minute)
	err = f.Flush(fctx)
	stop()
	cancel()
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if st := f.Status()[0]; st.Delivered != last {
		t.Errorf("got delivered %d, want %d", st.Delivered, last)
	}

	var want map[string]string
	waitFor(t, "the set-aside entries at the second receiver", time.Minute, func() bool {
		want = bodiesOf(t, first.File, chain)
		return len(bodiesOf(t, second.File, chain)) == int(last-from+1) && len(want) == int(last)
	})
	got := bodiesOf(t, second.File, chain)
	for seq, b := range got {
		if want[seq] != b {
			t.Errorf("seq %s: got body\n%s\nwant what the live forwarder sent\n%s", seq, b, want[seq])
		}
	}
	rep := verifyFile(t, second.File, &audit.CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey), FromChain: chain, From: from, Until: time.Now()})
	if !rep.OK() || rep.FirstSeq != from || rep.LastSeq != last {
		t.Errorf("got seq %d..%d, problems %v; want %d..%d, none", rep.FirstSeq, rep.LastSeq, rep.Problems, from, last)
	}
	if segs, _ := filepath.Glob(filepath.Join(dir+".damaged", "*")); len(segs) == 0 {
		t.Fatal("the set-aside journal is gone")
	}
}
