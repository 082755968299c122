package vault

import (
	"os"
	"testing"

	"github.com/applianced/applianced/audit"
)

// TestOpenAndCloseRecordTheState: vault.unseal carries the state the vault
// opened in and vault.close the one it closed in; reopened untouched, it
// opens in the state it closed in; a write changes it; an older copy of
// the file put back opens in the older state.
func TestOpenAndCloseRecordTheState(t *testing.T) {
	e := newEnv(t, Config{})
	states := func(typ string) []string {
		t.Helper()
		var out []string
		for _, ev := range e.events(t) {
			if ev.Type == typ && ev.Outcome == audit.OutcomeSuccess {
				if ev.Details[DetailState] == "" {
					t.Fatalf("%s without %s: %+v", typ, DetailState, ev)
				}
				out = append(out, ev.Details[DetailState])
			}
		}
		return out
	}
	e.reopen(t, Config{})
	if o, c := states("vault.unseal"), states("vault.close"); len(o) != 2 || len(c) != 1 || o[0] != c[0] || o[1] != c[0] {
		t.Fatalf("untouched: opened %v, closed %v; want the same state throughout", o, c)
	}
	copyOf, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	e.put(t, "late-key", TypeAPIKey, "a-key-stored-after-the-copy")
	e.reopen(t, Config{})
	o, c := states("vault.unseal"), states("vault.close")
	if len(c) != 2 || c[1] == c[0] || o[2] != c[1] {
		t.Fatalf("after a write: opened %v, closed %v; want a new state, opened as closed", o, c)
	}
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.path, copyOf, 0o600); err != nil {
		t.Fatal(err)
	}
	e.reopen(t, Config{})
	o, c = states("vault.unseal"), states("vault.close")
	if last := o[len(o)-1]; last != c[0] || last == c[len(c)-1] {
		t.Errorf("the older copy put back: opened in %s, want the older state %s (not the last closed %s)", last, c[0], c[len(c)-1])
	}
}
