package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// What a capture verifier makes of the links between chains: a chain
// start names the chain before it, which the capture must then hold.

// linkedCapture sets a sealed journal aside and seals its successor, and
// returns both chains' entries and ids, oldest first.
func linkedCapture(t *testing.T, key ed25519.PrivateKey) (old, cur []forgedEntry, oldID, curID string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "audit")
	old, oldID = sealedEntries(t, dir, key, 10)
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	cur, curID = sealedEntries(t, dir, key, 6)
	return old, cur, oldID, curID
}

// TestCaptureMustHoldTheChainANewOneContinues: a capture of a journal set
// aside and its successor verifies, the successor continuing the old
// chain from its last entry; without the old chain, or with the old chain
// cut before that entry, it fails naming the old chain.
func TestCaptureMustHoldTheChainANewOneContinues(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	old, cur, oldID, curID := linkedCapture(t, key)
	last := old[len(old)-1].seq
	for _, tc := range []struct {
		name     string
		old      []forgedEntry
		wantLink string // a word the link problem says; "" for none
	}{
		{"both chains", old, ""},
		{"the old chain dropped", nil, "not in the capture"},
		{"the old chain cut before the entry named", old[:len(old)-3], fmt.Sprintf("to %d of it are missing", last)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines := append(chainBodies(oldID, tc.old), chainBodies(curID, cur)...)
			rep := verifyLinesWith(t, &CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey)}, lines)
			var links []CaptureProblem
			for _, p := range rep.Problems {
				if p.Kind == ProblemLink {
					links = append(links, p)
				}
			}
			if tc.wantLink == "" {
				n := rep.Chains[len(rep.Chains)-1]
				if !rep.OK() || n.Link != (ChainLink{State: LinkContinues, Chain: oldID, Seq: last, Hash: fmt.Sprintf("%x", old[len(old)-1].hash)}) || rep.Chains[0].Link.State != LinkFirst {
					t.Errorf("got problems %v, chains %+v; want none, the newest continuing %s from seq %d", rep.Problems, rep.Chains, oldID, last)
				}
				return
			}
			if len(links) != 1 || links[0].Chain != curID || !strings.Contains(links[0].Message, "chain "+oldID+" from seq "+fmt.Sprint(last)) || !strings.Contains(links[0].Message, tc.wantLink) {
				t.Errorf("got problems %v, want one %s problem of chain %s naming chain %s, seq %d and %q", rep.Problems, ProblemLink, curID, oldID, last, tc.wantLink)
			}
		})
	}
}

// TestCaptureOfAKilledChainNotesEntriesAfterTheOneContinued: a journal
// killed with SIGKILL holds entries after its last checkpoint, which the
// record (and so its successor's chain start) does not name. A capture of
// both chains verifies without --open-tail (the successor's sealed chain
// start says how far the killed chain was recorded), and notes the rest.
func TestCaptureOfAKilledChainNotesEntriesAfterTheOneContinued(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	killedChain(t, dir, 1500)
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	old := openTest(t, dir+".old", &Options{Logger: quiet()})
	oldEntries := journalEntries(t, old)
	cur, curID := sealedEntries(t, dir, fuzzKey, 3)
	lines := append(chainBodies(old.ChainID(), oldEntries), chainBodies(curID, cur)...)
	rep := verifyLinesWith(t, &CaptureOptions{PublicKey: fuzzKey.Public().(ed25519.PublicKey)}, lines)
	l := rep.Chains[len(rep.Chains)-1].Link
	if !rep.OK() || l.State != LinkContinues || l.Chain != old.ChainID() || l.Seq >= old.LastSeq() {
		t.Fatalf("got problems %v, chains %+v; want none, the newest continuing %s before its last seq %d", rep.Problems, rep.Chains, old.ChainID(), old.LastSeq())
	}
	want := fmt.Sprintf("goes on to seq %d", old.LastSeq())
	if !strings.Contains(strings.Join(rep.Notes, "\n"), want) {
		t.Errorf("got notes %q, want one that says the old chain %s", rep.Notes, want)
	}
}

// TestForgedChainStartIsRefused: a chain start edited to name another
// entry is in the hash chain its checkpoints seal; edited in place it
// does not match its hash, and with the chain's hashes computed again the
// checkpoints do not match it.
func TestForgedChainStartIsRefused(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	old, cur, oldID, curID := linkedCapture(t, key)
	last := old[len(old)-1].seq
	forged := bytes.Replace(cur[0].canon, []byte(fmt.Sprintf(`"previous_seq":"%d"`, last)), []byte(fmt.Sprintf(`"previous_seq":"%d"`, last-4)), 1)
	if bytes.Equal(forged, cur[0].canon) {
		t.Fatalf("seq 1 %s does not name seq %d", cur[0].canon, last)
	}
	inPlace := append([]forgedEntry{{1, cur[0].hash, cur[0].prev, forged}}, cur[1:]...)
	var rehashed []forgedEntry
	var prev [32]byte
	for i, e := range cur {
		c := e.canon
		if i == 0 {
			c = forged
		}
		h := ChainHash(prev, c)
		rehashed = append(rehashed, forgedEntry{e.seq, h, prev, c})
		prev = h
	}
	for _, tc := range []struct {
		name string
		cur  []forgedEntry
		want string
	}{
		{"edited in place", inPlace, ProblemAltered},
		{"edited and the chain hashed again", rehashed, ProblemSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The old chain cut back to the forged seq: the cut would
			// pass if the chain start could be changed to name it.
			lines := append(chainBodies(oldID, old[:last-4]), chainBodies(curID, tc.cur)...)
			rep := verifyLinesWith(t, &CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey)}, lines)
			if rep.OK() || !hasProblem(rep, tc.want) {
				t.Errorf("got problems %v, want %s", rep.Problems, tc.want)
			}
		})
	}
}

// TestCaptureWithALaterChainNamingNoneFails: two chains, the later naming
// no chain before it (journals in places that share no record, as a
// version before chain links made them): the capture cannot show that no
// chain between them was dropped.
func TestCaptureWithALaterChainNamingNoneFails(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	old, oldID := sealedJournal(t, filepath.Join(t.TempDir(), "a"), key, 4)
	cur, curID := sealedJournal(t, filepath.Join(t.TempDir(), "b"), key, 4)
	rep := verifyLinesWith(t, &CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey)}, append(old, cur...))
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemLink || !strings.Contains(rep.Problems[0].Message, "names no chain before it") {
		t.Errorf("got problems %v, want one %s problem: the later chain names none", rep.Problems, ProblemLink)
	}
	if len(rep.Chains) != 2 || rep.Chains[0].ID != oldID || rep.Chains[0].Link.State != LinkFirst || rep.Chains[1].ID != curID || rep.Chains[1].Link.State != LinkNone {
		t.Errorf("got chains %+v, want %s first, then %s naming none", rep.Chains, oldID, curID)
	}
}

// TestFromNamingTheNewerChainAcceptsItsMissingPredecessor: an auditor
// whose receiver's record starts with the newer chain says so with
// --from CHAIN:1; the chain it continues is then a note, not a problem.
func TestFromNamingTheNewerChainAcceptsItsMissingPredecessor(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	_, cur, oldID, curID := linkedCapture(t, key)
	rep := verifyLinesWith(t, &CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey), From: 1, FromChain: curID}, chainBodies(curID, cur))
	if !rep.OK() || !strings.Contains(strings.Join(rep.Notes, "\n"), "continues chain "+oldID) {
		t.Errorf("got problems %v, notes %q; want none, and a note naming chain %s", rep.Problems, rep.Notes, oldID)
	}
}

// TestFromSeqWithoutAChainCannotHideADroppedChain: --from SEQ applies to
// the oldest chain left in the capture. Dropping the older chain whole and
// the newer's first entries (its chain start with them) leaves one chain
// that starts at SEQ, as an honest archive would: a chain with an id that
// starts after seq 1 needs --from CHAIN:SEQ, which says the record starts
// there.
func TestFromSeqWithoutAChainCannotHideADroppedChain(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	old, cur, oldID, curID := linkedCapture(t, key)
	pub := key.Public().(ed25519.PublicKey)
	honest := append(chainBodies(oldID, old[4:]), chainBodies(curID, cur)...)
	if rep := verifyLinesWith(t, &CaptureOptions{PublicKey: pub, From: 5, FromChain: oldID}, honest); !rep.OK() {
		t.Fatalf("an archive starting at seq 5 of %s, with --from %s:5: %v", oldID, oldID, rep.Problems)
	}
	forged := chainBodies(curID, cur[4:]) // the older chain and the newer's seqs 1..4 dropped
	for _, o := range []CaptureOptions{{From: 5}, {From: 5, FromChain: oldID}} {
		o.PublicKey = pub
		if rep := verifyLinesWith(t, &o, forged); rep.OK() {
			t.Errorf("--from %s:%d: a capture without chain %s and the head of %s verifies", o.FromChain, o.From, oldID, curID)
		}
	}
	rep := verifyLinesWith(t, &CaptureOptions{PublicKey: pub, From: 5}, honest)
	if rep.OK() || !hasProblem(rep, ProblemLink) || !strings.Contains(strings.Join(problemMessages(rep), "\n"), "--from "+oldID+":5") {
		t.Errorf("--from 5 without a chain: got %v, want a %s problem naming --from %s:5", rep.Problems, ProblemLink, oldID)
	}
}

func problemMessages(rep *CaptureReport) []string {
	var out []string
	for _, p := range rep.Problems {
		out = append(out, p.Message)
	}
	return out
}

// TestChainSetAsideLongAfterItsLastSealVerifies: the recovery takes time;
// the successor begins hours after the killed chain's last seal. Its
// chain start, found in the capture, says how far the older chain was
// recorded, so the older is not judged cut for want of a later seal.
func TestChainSetAsideLongAfterItsLastSealVerifies(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	killedChain(t, dir, 500)
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	old := openTest(t, dir+".old", &Options{Logger: quiet()})
	oldEntries := journalEntries(t, old)
	later := func() time.Time { return time.Now().Add(3 * time.Hour) }
	j, err := Open(dir, &Options{Logger: quiet(), Now: later})
	if err != nil {
		t.Fatal(err)
	}
	c := NewCheckpointer(j, fuzzKey, &CheckpointOptions{Every: 2, Interval: time.Hour, Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for i := range 3 {
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
	cur := journalEntries(t, j)
	j.Close()
	lines := append(chainBodies(old.ChainID(), oldEntries), chainBodies(j.ChainID(), cur)...)
	pub := fuzzKey.Public().(ed25519.PublicKey)
	if rep := verifyLinesWith(t, &CaptureOptions{PublicKey: pub, Until: later()}, lines); !rep.OK() {
		t.Errorf("got problems %v, want none", rep.Problems)
	}
	// Without the successor's chain start the older chain's last seal is
	// judged as usual: the capture cannot show where it was recorded to.
	if rep := verifyLinesWith(t, &CaptureOptions{PublicKey: pub, Until: later()}, append(chainBodies(old.ChainID(), oldEntries), chainBodies(j.ChainID(), cur[1:])...)); rep.OK() {
		t.Errorf("a capture without the successor's chain start verifies")
	}
}
