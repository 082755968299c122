package audit

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Forgeries a receiver's file may carry: another event under an entry's
// genuine hashes, as a second copy or a second part, and event text that
// decodes to the hashed event while saying something else to a reader.

type forgedEntry struct {
	seq        uint64
	hash, prev [32]byte
	canon      []byte
}

// chain builds n events (seq 3 is a denial) with a checkpoint after every
// 4th event (non-final) and returns the entries.
func forgeryChain(t *testing.T, key ed25519.PrivateKey, n int, finalAtEnd bool) []forgedEntry {
	t.Helper()
	var out []forgedEntry
	var prev [32]byte
	add := func(e *Event) {
		e.Seq = uint64(len(out) + 1)
		e.Time = testTime
		c, _ := e.Canonical()
		h := ChainHash(prev, c)
		out = append(out, forgedEntry{e.Seq, h, prev, c})
		prev = h
	}
	for i := 0; i < n; i++ {
		ev := &Event{Type: "tool.call", Outcome: OutcomeSuccess, Target: fmt.Sprint("tickets/", i), Actor: Actor{Agent: "bot"}}
		if len(out)+1 == 3 {
			ev.Type, ev.Outcome, ev.Reason = "tool.deny", OutcomeDenied, "scope"
		}
		add(ev)
		if (i+1)%4 == 0 {
			add(NewCheckpointEvent(key, Checkpoint{Seq: uint64(len(out)), Hash: prev, Time: testTime, Interval: time.Minute}))
		}
	}
	if finalAtEnd {
		add(NewCheckpointEvent(key, Checkpoint{Seq: uint64(len(out)), Hash: prev, Final: true, Time: testTime, Interval: time.Minute}))
	}
	return out
}

func capBody(e forgedEntry) string {
	return fmt.Sprintf(`<86>1 2026-11-25T23:00:00Z host applianced 1 x - {"audit_seq":%d,"audit_hash":"%x","audit_prev":"%x","event":%s}`, e.seq, e.hash, e.prev, e.canon)
}

func capBodyWith(e forgedEntry, event string) string {
	return fmt.Sprintf(`<86>1 2026-11-25T23:00:00Z host applianced 1 x - {"audit_seq":%d,"audit_hash":"%x","audit_prev":"%x","event":%s}`, e.seq, e.hash, e.prev, event)
}

func verifyCapLines(t *testing.T, pub ed25519.PublicKey, lines []string) *CaptureReport {
	t.Helper()
	v := NewCaptureVerifier(&CaptureOptions{PublicKey: pub})
	if err := v.Read("cap.log", strings.NewReader(strings.Join(lines, "\n")+"\n")); err != nil {
		t.Fatal(err)
	}
	return v.Report()
}

// A second copy of seq 3 with the same audit_hash/audit_prev but a
// different event is counted as an "identical repeated copy".
func TestCaptureRefusesADifferentCopyOfAnEvent(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	es := forgeryChain(t, key, 8, true)
	var lines []string
	for _, e := range es {
		lines = append(lines, capBody(e))
	}
	forged := strings.Replace(strings.Replace(string(es[2].canon), `"outcome":"denied"`, `"outcome":"success"`, 1), `"type":"tool.deny"`, `"type":"tool.call"`, 1)
	lines = append(lines, capBodyWith(es[2], forged))
	// and a "cut short" junk line for seq 5, absorbed as recovered
	lines = append(lines, `<86>1 - - - - - {"audit_seq":5,"audit_hash":"`+strings.Repeat("0", 64)+`","event":{"type":"secret.delete","target":"prod-db"`)
	rep := verifyCapLines(t, pub, lines)
	t.Logf("OK=%v duplicates=%d problems=%v notes=%v", rep.OK(), rep.Duplicates, rep.Problems, rep.Notes)
	if rep.OK() {
		t.Errorf("a different copy of seq 3 (denied -> success) and an invented seq-5 fragment passed as duplicates")
	}
}

// The capture verifier re-canonicalises an event whose bytes do not hash:
// unknown keys and earlier duplicate keys vanish in json.Unmarshal, so text
// that means something else to a reader (or a first-wins parser) verifies.
// A duplicate "event" key in the wire body needs not even that path.
func TestCaptureRefusesNonCanonicalEventText(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	es := forgeryChain(t, key, 8, true)
	var lines []string
	for _, e := range es {
		lines = append(lines, capBody(e))
	}
	real := string(es[2].canon)
	// unknown key + case-variant + earlier duplicate of outcome
	ed := strings.Replace(real, `"type":"tool.deny"`, `"approved_by":"ciso","Outcome":"success","outcome":"success","type":"tool.deny"`, 1)
	lines[2] = capBodyWith(es[2], ed)
	// duplicate "event" key in the wire body of seq 4: a fake first, the real last
	e4 := es[3]
	lines[3] = fmt.Sprintf(`<86>1 - - - - - {"audit_seq":%d,"audit_hash":"%x","audit_prev":"%x","event":{"seq":4,"type":"secret.delete","target":"prod-db","outcome":"success"},"event":%s}`, e4.seq, e4.hash, e4.prev, e4.canon)
	rep := verifyCapLines(t, pub, lines)
	t.Logf("seq 3 line now: %s", lines[2])
	var m map[string]any
	json.Unmarshal([]byte(ed), &m)
	t.Logf("OK=%v problems=%v", rep.OK(), rep.Problems)
	if rep.OK() {
		t.Errorf("non-canonical event text (extra/duplicate keys) and a duplicated wire key verify OK")
	}
}

// A split event: a forged extra copy of a part, after the real one, is a
// "duplicate" and not compared.
func TestCaptureRefusesADifferentCopyOfAPart(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	es := forgeryChain(t, key, 4, true)
	var lines []string
	for i, e := range es {
		if i == 2 {
			c := string(e.canon)
			half := len(c) / 2
			for k, ch := range []string{c[:half], c[half:]} {
				q, _ := json.Marshal(ch)
				lines = append(lines, fmt.Sprintf(`<86>1 - - - - - {"audit_seq":%d,"audit_hash":"%x","audit_prev":"%x","audit_part":%d,"audit_parts":2,"event_chunk":%s}`, e.seq, e.hash, e.prev, k+1, q))
			}
			fake, _ := json.Marshal(strings.Replace(c[half:], "denied", "success", 1))
			lines = append(lines, fmt.Sprintf(`<86>1 - - - - - {"audit_seq":%d,"audit_hash":"%x","audit_prev":"%x","audit_part":2,"audit_parts":2,"event_chunk":%s}`, e.seq, e.hash, e.prev, fake))
			continue
		}
		lines = append(lines, capBody(e))
	}
	rep := verifyCapLines(t, pub, lines)
	t.Logf("OK=%v duplicates=%d problems=%v", rep.OK(), rep.Duplicates, rep.Problems)
	if rep.OK() {
		t.Errorf("a different copy of part 2 of seq 3 passes as a duplicate")
	}
}

// An added key, or a key spelt in another case, decodes to the hashed
// event (encoding/json drops the one and folds the other) but is an edit.
func TestCaptureRefusesAddedOrRecasedKeys(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	for _, edit := range []func(string) string{
		func(c string) string {
			return strings.Replace(c, `"type":"tool.deny"`, `"approved_by":"ciso","type":"tool.deny"`, 1)
		},
		func(c string) string { return strings.Replace(c, `"outcome":"denied"`, `"Outcome":"denied"`, 1) },
	} {
		es := forgeryChain(t, key, 8, true)
		var lines []string
		for _, e := range es {
			lines = append(lines, capBody(e))
		}
		lines[2] = capBodyWith(es[2], edit(string(es[2].canon)))
		if rep := verifyCapLines(t, pub, lines); rep.OK() || !strings.Contains(fmt.Sprint(rep.Problems), "does not match its hash") {
			t.Errorf("edited seq 3 %s: got %v, want it reported altered", lines[2], rep.Problems)
		}
	}
	// What receivers do change, the escapes of a string, still verifies.
	es := forgeryChain(t, key, 8, true)
	var lines []string
	for _, e := range es {
		lines = append(lines, capBody(e))
	}
	lines[2] = capBodyWith(es[2], strings.Replace(string(es[2].canon), `"bot"`, `"\u0062ot"`, 1))
	if rep := verifyCapLines(t, pub, lines); !rep.OK() {
		t.Errorf("an escape re-encoded by the receiver: got %v, want ok", rep.Problems)
	}
}
