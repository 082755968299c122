package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestCaptureFormats reads the same entries as rsyslog, Wazuh archives.log
// and archives.json store them.
func TestCaptureFormats(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	bodies := testBodies(t, key, 5)
	var rsys, alog, ajson bytes.Buffer
	for _, b := range bodies {
		fmt.Fprintf(&rsys, "<86>1 2026-11-25T23:00:00.000000Z host applianced 1 tool.call [applianced@32473 seq=\"1\"] %s\n", b)
		fmt.Fprintf(&alog, "2026 Nov 25 23:00:00 manager->10.0.0.5 Nov 25 23:00:00 host applianced: %s\n", b)
		fmt.Fprintf(&ajson, `{"timestamp":"2026-11-25T23:00:00.000+0000","agent":{"id":"000","name":"manager"},"full_log":%q,"decoder":{"name":"applianced"},"location":"10.0.0.5"}`+"\n", "Nov 25 23:00:00 host applianced: "+b)
	}
	pub := key.Public().(ed25519.PublicKey)
	for name, in := range map[string]*bytes.Buffer{"rsyslog": &rsys, "archives.log": &alog, "archives.json": &ajson} {
		t.Run(name, func(t *testing.T) {
			v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub})
			if err := v.Read(name, bytes.NewReader(in.Bytes())); err != nil {
				t.Fatal(err)
			}
			rep := v.Report()
			if !rep.OK() || rep.Entries != 6 || rep.SealedUpTo != 5 {
				t.Errorf("got %+v, want 6 entries sealed up to 5", rep)
			}
		})
	}
	t.Run("duplicates and conflicts", func(t *testing.T) {
		v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub})
		all := strings.Join(bodies, "\n") + "\n"
		v.Read("a", strings.NewReader(all))
		v.Read("b", strings.NewReader(all))
		b := bodies[2]
		i := strings.Index(b, `"audit_hash":"`) + len(`"audit_hash":"`)
		c := "0"
		if b[i] == '0' {
			c = "1"
		}
		v.Read("c", strings.NewReader(b[:i]+c+b[i+1:]+"\n"))
		rep := v.Report()
		if rep.Duplicates != 6 {
			t.Errorf("got %d duplicates, want 6", rep.Duplicates)
		}
		if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemConflict || rep.Problems[0].Seq != 3 {
			t.Errorf("got %v, want one conflict at seq 3", rep.Problems)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		_, k2, _ := ed25519.GenerateKey(rand.Reader)
		v := NewCaptureVerifier(&CaptureOptions{PublicKey: k2.Public().(ed25519.PublicKey)})
		v.Read("a", strings.NewReader(strings.Join(bodies, "\n")))
		rep := v.Report()
		if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemSignature || rep.Problems[0].Seq != 6 {
			t.Errorf("got %v, want a signature problem at seq 6", rep.Problems)
		}
	})
	t.Run("no key", func(t *testing.T) {
		v := NewCaptureVerifier(nil)
		v.Read("a", strings.NewReader(strings.Join(bodies, "\n")))
		rep := v.Report()
		if !rep.OK() || len(rep.Notes) == 0 {
			t.Errorf("got %+v, want OK with a note that signatures were not checked", rep)
		}
	})
	t.Run("truncated line sent again whole", func(t *testing.T) {
		v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub})
		v.Read("a", strings.NewReader(bodies[1][:50]+"\n"+strings.Join(bodies, "\n")+"\n"))
		rep := v.Report()
		if !rep.OK() || len(rep.Notes) != 1 {
			t.Errorf("got problems %v, notes %v; want OK with a note on the cut message", rep.Problems, rep.Notes)
		}
	})
	t.Run("truncated line", func(t *testing.T) {
		v := NewCaptureVerifier(nil)
		v.Read("a", strings.NewReader(bodies[0]+"\n"+bodies[1][:50]+"\n"))
		rep := v.Report()
		var found bool
		for _, p := range rep.Problems {
			found = found || (p.Kind == ProblemMalformed && p.Seq == 2)
		}
		if !found {
			t.Errorf("got %v, want a malformed message at seq 2", rep.Problems)
		}
	})
}

// testBodies makes n entries and a final checkpoint, as message bodies.
func testBodies(t *testing.T, key ed25519.PrivateKey, n int) []string {
	t.Helper()
	var prev [32]byte
	var out []string
	add := func(e *Event) {
		e.Seq = uint64(len(out) + 1)
		e.Time = testTime
		c, err := e.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		h := ChainHash(prev, c)
		out = append(out, fmt.Sprintf(`{"audit_seq":%d,"audit_hash":"%x","audit_prev":"%x","event":%s}`, e.Seq, h, prev, c))
		prev = h
	}
	for i := 0; i < n; i++ {
		add(&Event{Type: "tool.call", Outcome: OutcomeSuccess, Target: fmt.Sprint(i)})
	}
	add(NewCheckpointEvent(key, Checkpoint{Seq: uint64(n), Hash: prev, Final: true, Time: testTime, Interval: time.Minute}))
	return out
}

// testTime is the time of the test entries.
var testTime = time.Date(2026, 11, 25, 23, 0, 0, 0, time.UTC)

// fuzzKey signs the fuzz targets' checkpoints: fixed, so that a corpus
// entry means the same on every run.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

// fuzzChainB is the id of the newer chain of fuzzCapture.
const fuzzChainB = "0123456789abcdef0123456789abcdef"

// fuzzCapture is a valid signed capture of two chains: the legacy chain,
// with a seal of the release before sealed times and then timed ones and
// a heartbeat, and a chain that succeeded it half a minute after that
// heartbeat, starting with the chain start that names the legacy chain's
// last entry, with seals five minutes apart. fuzzUntil is when it was
// taken: at its newest seal.
func fuzzCapture() (lines []string, fuzzUntil time.Time) {
	var prev [32]byte
	seq := uint64(0)
	chain := ""
	add := func(e *Event, at time.Time) {
		seq++
		e.Seq, e.Time = seq, at
		c, _ := e.Canonical()
		h := ChainHash(prev, c)
		ch := ""
		if chain != "" {
			ch = `"audit_chain":"` + chain + `",`
		}
		lines = append(lines, fmt.Sprintf(`<86>1 2026-11-25T23:00:00Z host applianced 1 x - {"audit_seq":%d,%s"audit_hash":"%x","audit_prev":"%x","event":%s}`, seq, ch, h, prev, c))
		prev = h
	}
	seal := func(at time.Time, timed bool) {
		cp := Checkpoint{Chain: chain, Seq: seq, Hash: prev}
		if timed {
			cp.Time, cp.Interval = at, time.Minute
		}
		add(NewCheckpointEvent(fuzzKey, cp), at)
	}
	event := func(i int, at time.Time) {
		add(&Event{Type: "tool.call", Outcome: OutcomeSuccess, Target: fmt.Sprint("tickets/", i)}, at)
	}
	t := testTime
	for i := range 3 {
		event(i, t)
	}
	seal(t, false)
	t = t.Add(5 * time.Minute)
	event(3, t)
	event(4, t)
	seal(t, true)
	seal(t.Add(5*time.Minute), true)

	last, lastSeq := prev, seq
	prev, seq, chain = [32]byte{}, 0, fuzzChainB
	t = t.Add(5*time.Minute + 30*time.Second)
	add(&Event{Type: TypeChainStart, Outcome: OutcomeSuccess, Details: map[string]string{
		DetailPreviousChain: "", DetailPreviousSeq: fmt.Sprint(lastSeq), DetailPreviousHash: fmt.Sprintf("%x", last)}}, t)
	for i := range 3 {
		event(i, t)
	}
	seal(t, true)
	seal(t.Add(5*time.Minute), true)
	seal(t.Add(10*time.Minute), true)
	return lines, t.Add(10 * time.Minute)
}

func FuzzCaptureVerifier(f *testing.F) {
	var seed []string
	var prev [32]byte
	for i := 1; i <= 3; i++ {
		e := &Event{Seq: uint64(i), Type: "auth.login", Outcome: OutcomeDenied}
		c, _ := e.Canonical()
		h := ChainHash(prev, c)
		seed = append(seed, fmt.Sprintf(`x {"audit_seq":%d,"audit_hash":"%x","audit_prev":"%x","event":%s}`, i, h, prev, c))
		prev = h
	}
	f.Add(strings.Join(seed, "\n"))
	// Two chains, each from seq 1, as after a journal is set aside.
	f.Add(strings.Join(seed, "\n") + "\n" + strings.ReplaceAll(strings.Join(seed, "\n"), `x {"audit_seq":`, `y {"audit_chain":"0123456789abcdef0123456789abcdef","audit_seq":`))
	f.Add(strings.ReplaceAll(strings.Join(seed, "\n"), `,"audit_hash"`, `,"audit_chain":"0123456789abcdef0123456789abcdef","audit_hash"`))
	f.Add(`{"full_log":"{\"audit_seq\":1,\"audit_part\":1,\"audit_parts\":2,\"event_chunk\":\"{\"}"}`)
	f.Add(`{"audit_seq":1,"audit_hash":"` + strings.Repeat("a", 64) + `","audit_prev":"` + strings.Repeat("0", 64) + `","audit_part":2,"audit_parts":2,"event_chunk":"x"}`)
	f.Add(`{"audit_seq":18446744073709551615,"audit_withheld":"oversize"}`)
	// Signed: checkpoints, an untimed seal, heartbeats and two chains,
	// the newer continuing the older.
	capture, until := fuzzCapture()
	f.Add(strings.Join(capture, "\n"))
	f.Add(strings.Join(capture[:len(capture)-1], "\n"))
	f.Add(strings.Join(capture[8:], "\n"))
	// Chain starts whose details are parsed: unknown, malformed, naming
	// a chain not in the capture, naming itself.
	for _, d := range []map[string]string{
		{DetailPrevious: PreviousUnknown},
		{DetailPrevious: "x", DetailPreviousSeq: "1"},
		{DetailPreviousChain: "", DetailPreviousSeq: "18446744073709551616", DetailPreviousHash: "zz"},
		{DetailPreviousChain: "ffffffffffffffffffffffffffffffff", DetailPreviousSeq: "3", DetailPreviousHash: strings.Repeat("0", 64)},
		{DetailPreviousChain: fuzzChainB, DetailPreviousSeq: "1", DetailPreviousHash: strings.Repeat("a", 64)},
	} {
		e := &Event{Seq: 1, Type: TypeChainStart, Outcome: OutcomeSuccess, Details: d}
		c, _ := e.Canonical()
		f.Add(fmt.Sprintf(`{"audit_seq":1,"audit_chain":"%s","audit_hash":"%x","audit_prev":"%x","event":%s}`, fuzzChainB, ChainHash([32]byte{}, c), [32]byte{}, c) +
			"\n" + strings.Join(seed, "\n"))
	}
	pub := fuzzKey.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, capture string) {
		v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub, Until: until})
		if err := v.Read("fuzz", strings.NewReader(capture)); err != nil {
			return
		}
		rep := v.Report()
		if rep.OK() && rep.Entries == 0 {
			t.Fatal("an empty capture verified")
		}
		if len(rep.Problems) > maxProblems+1 {
			t.Fatalf("got %d problems, want at most %d listed", len(rep.Problems), maxProblems+1)
		}
	})
}

// FuzzCaptureEdits edits a valid signed capture (fuzzCapture) as whoever
// can write the receiver's file could: drop, repeat, swap or cut lines,
// move a line to the other chain. Each edit is three bytes of ops: the
// kind and two line numbers. Whatever verifies must still hold every entry
// of both chains, as it was sent: the newest up to its newest seal, the
// older (which the newest names, from its last entry) whole.
//
// Go's fuzzer spends up to -fuzzminimizetime (60 s by default) minimizing
// each new input before it goes on, showing 0 execs/s meanwhile; run
// these targets with -fuzzminimizetime 10x to keep them fuzzing.
func FuzzCaptureEdits(f *testing.F) {
	orig, until := fuzzCapture()
	f.Add([]byte{})
	for k := range byte(5) {
		for _, n := range []byte{0, 3, 8, 12, 13} {
			f.Add([]byte{k, n, 3})
		}
	}
	f.Add([]byte{0, 14, 0, 0, 13, 0})                                                     // cut the newest chain back to its first seal
	f.Add([]byte{0, 7, 0, 0, 7, 0, 0, 7, 0, 0, 7, 0, 0, 7, 0, 0, 7, 0})                   // cut the older chain and most of the newer
	f.Add([]byte{0, 7, 0})                                                                // cut the older chain after its first timed seal
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // drop the older chain
	pub := fuzzKey.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, ops []byte) {
		lines := slices.Clone(orig)
		for k := 0; k+2 < len(ops) && k < 3*64; k += 3 {
			if len(lines) == 0 {
				break
			}
			i, j := int(ops[k+1])%len(lines), int(ops[k+2])%len(lines)
			switch ops[k] % 5 {
			case 0:
				lines = slices.Delete(lines, i, i+1)
			case 1:
				lines = slices.Insert(lines, j, lines[i])
			case 2:
				lines[i], lines[j] = lines[j], lines[i]
			case 3:
				if strings.Contains(lines[i], `"audit_chain":`) {
					lines[i] = strings.Replace(lines[i], `"audit_chain":"`+fuzzChainB+`",`, "", 1)
				} else {
					lines[i] = strings.Replace(lines[i], `{"audit_seq":`, `{"audit_chain":"`+fuzzChainB+`","audit_seq":`, 1)
				}
			case 4:
				lines[i] = lines[i][:len(lines[i])*int(ops[k+2])/256]
			}
		}
		// An odd number of ops also says the receiver's record starts at
		// seq 3 of the oldest chain (--from 3): its lines 0 and 1 may go.
		from := uint64(1)
		if len(ops)%2 == 1 {
			from = 3
		}
		v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub, Until: until, From: from})
		if err := v.Read("fuzz", strings.NewReader(strings.Join(lines, "\n"))); err != nil {
			t.Fatal(err)
		}
		rep := v.Report()
		if !rep.OK() {
			return
		}
		have := map[string]bool{}
		for _, l := range lines {
			have[l] = true
		}
		// The older chain is whole too: the newer names its last entry,
		// and it was sealed up to when the newer began.
		for i, l := range orig {
			if i < int(from)-1 {
				continue
			}
			if !have[l] {
				t.Fatalf("verified ok without %s\nreport: %+v\ncapture:\n%s", l, rep, strings.Join(lines, "\n"))
			}
		}
	})
}

// TestFromAppliesToOneChain: --from says where the oldest chain's part of
// a capture starts (an archive begins mid-chain); a chain that began
// later starts at seq 1, so its head cut is found whatever --from says.
func TestFromAppliesToOneChain(t *testing.T) {
	lines, until := fuzzCapture()
	pub := fuzzKey.Public().(ed25519.PublicKey)
	// Lines 0-7 are the legacy chain (seqs 1-8), 8-14 the newer (seqs 1-7,
	// the first its chain start).
	drop := func(idx ...int) string {
		var out []string
		for i, l := range lines {
			if !slices.Contains(idx, i) {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	for _, tc := range []struct {
		name      string
		capture   string
		from      uint64
		fromChain string
		wantHead  string // the chain with a head problem; "-" for none
	}{
		{"archive starts mid-chain", drop(0, 1), 3, "", "-"},
		{"archive starts mid-chain, newer chain's head cut", drop(0, 1, 8), 3, "", fuzzChainB},
		{"no --from, the oldest chain's head cut", drop(0, 1), 0, "", ""},
		{"--from names the newer chain", drop(8), 2, fuzzChainB, "-"},
		{"--from names the newer chain, the oldest starts at 1", drop(0, 8), 2, fuzzChainB, ""},
		{"--from names a chain not in the capture", drop(), 1, "ffffffffffffffffffffffffffffffff", "ffffffffffffffffffffffffffffffff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub, Until: until, From: tc.from, FromChain: tc.fromChain})
			if err := v.Read("cap.log", strings.NewReader(tc.capture)); err != nil {
				t.Fatal(err)
			}
			rep := v.Report()
			var heads []CaptureProblem
			for _, p := range rep.Problems {
				if p.Kind == ProblemHead {
					heads = append(heads, p)
				}
			}
			if tc.wantHead == "-" {
				if !rep.OK() {
					t.Errorf("got problems %v, want none", rep.Problems)
				}
			} else if len(heads) != 1 || heads[0].Chain != tc.wantHead || len(rep.Problems) != 1 {
				t.Errorf("got problems %v, want one %s, in chain %q", rep.Problems, ProblemHead, tc.wantHead)
			}
			want := tc.fromChain
			if rep.FromChain != want {
				t.Errorf("got --from applied to %q, want %q", rep.FromChain, want)
			}
		})
	}
}
