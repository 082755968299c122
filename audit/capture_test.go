package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
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

func FuzzCaptureVerifier(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
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
	_ = key
	f.Fuzz(func(t *testing.T, capture string) {
		v := NewCaptureVerifier(nil)
		if err := v.Read("fuzz", strings.NewReader(capture)); err != nil {
			return
		}
		rep := v.Report()
		if rep.OK() && rep.Entries == 0 {
			t.Fatal("an empty capture verified")
		}
	})
}
