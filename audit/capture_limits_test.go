package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// Lines anyone can get into a receiver's file (plain syslog) cost the
// verifier what they weigh, not what they claim: a forged part count
// sizes nothing, and the report stays small however many problems the
// capture holds.

func TestForgedPartCountsAllocateLittle(t *testing.T) {
	const lines = 20
	var b strings.Builder
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&b, `<86>1 2026-11-25T23:00:00Z host applianced 1 x - {"audit_seq":%d,"audit_hash":"%s","audit_prev":"%s","audit_part":1,"audit_parts":%d,"event_chunk":"x"}`+"\n",
			i, strings.Repeat("a", 64), strings.Repeat("0", 64), 1<<20)
	}
	in := b.String()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	v := NewCaptureVerifier(nil)
	if err := v.Read("cap.log", strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	rep := v.Report()
	runtime.ReadMemStats(&after)
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(8<<20); got > limit {
		t.Errorf("got %d bytes allocated for %d input bytes, want at most %d", got, len(in), limit)
	}
	if rep.OK() {
		t.Fatal("got ok for parts that never arrived")
	}
	for _, p := range rep.Problems {
		if len(p.Message) > maxProblemMessage {
			t.Errorf("got a problem message of %d bytes, want at most %d", len(p.Message), maxProblemMessage)
		}
	}
}

func TestPartCountOverMaxPartsIsMalformed(t *testing.T) {
	for _, tc := range []struct {
		parts int
		want  string
	}{
		{MaxParts, ProblemParts},
		{MaxParts + 1, ProblemMalformed},
		{1 << 20, ProblemMalformed},
	} {
		t.Run(fmt.Sprint(tc.parts), func(t *testing.T) {
			line := fmt.Sprintf(`{"audit_seq":1,"audit_hash":"%s","audit_prev":"%s","audit_part":2,"audit_parts":%d,"event_chunk":"x"}`,
				strings.Repeat("a", 64), strings.Repeat("0", 64), tc.parts)
			v := NewCaptureVerifier(nil)
			if err := v.Read("cap.log", strings.NewReader(line)); err != nil {
				t.Fatal(err)
			}
			rep := v.Report()
			if !containsKind(rep.Problems, tc.want) {
				t.Errorf("got problems %v, want a %s", rep.Problems, tc.want)
			}
			if tc.want == ProblemParts && !strings.Contains(rep.Problems[0].Message, fmt.Sprintf("1, 3-%d of %d", tc.parts, tc.parts)) {
				t.Errorf("got %q, want the missing parts as ranges", rep.Problems[0].Message)
			}
		})
	}
}

func TestProblemsAreCounted(t *testing.T) {
	var b strings.Builder
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	for _, e := range forgeryChain(t, key, 1, false) {
		fmt.Fprintln(&b, capBody(e))
	}
	for i := 1; i <= 3*maxProblems; i++ {
		fmt.Fprintf(&b, `{"audit_seq":%d,"audit_hash":"%s"}`+"\n", i, strings.Repeat("z", 10000))
	}
	v := NewCaptureVerifier(nil)
	if err := v.Read("cap.log", strings.NewReader(b.String())); err != nil {
		t.Fatal(err)
	}
	rep := v.Report()
	if len(rep.Problems) != maxProblems+1 || !strings.Contains(rep.Problems[maxProblems].Message, "more problem(s) not listed") {
		t.Fatalf("got %d problems, the last %v; want %d and a count of the rest", len(rep.Problems), rep.Problems[len(rep.Problems)-1], maxProblems+1)
	}
	for _, p := range rep.Problems {
		if len(p.Message) > maxProblemMessage {
			t.Fatalf("got a problem message of %d bytes, want at most %d", len(p.Message), maxProblemMessage)
		}
	}
}

// TestAppendRefusesAnEventOverMaxEventBytes: the bound the verifier's
// MaxParts rests on holds at the journal.
func TestAppendRefusesAnEventOverMaxEventBytes(t *testing.T) {
	j, err := Open(t.TempDir(), &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	ctx := context.Background()
	big := &Event{Type: "tool.call", Outcome: OutcomeSuccess, Details: map[string]string{"d": strings.Repeat("<", MaxEventBytes/7)}}
	if _, err := j.Append(ctx, big); err != nil {
		t.Fatalf("got %v for an event under the limit, want it recorded", err)
	}
	big.Details["d"] = strings.Repeat("x", MaxEventBytes)
	if _, err := j.Append(ctx, big); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("got %v, want %v", err, ErrEventTooLarge)
	}
	if j.LastSeq() != 1 {
		t.Errorf("got last seq %d, want 1", j.LastSeq())
	}
}

func containsKind(ps []CaptureProblem, kind string) bool {
	for _, p := range ps {
		if p.Kind == kind {
			return true
		}
	}
	return false
}
