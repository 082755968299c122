package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// reopenAsTheDaemon closes the vault of e if open, runs between (the
// appliance is down) and opens it again as the daemon does: with the
// journal's newest vault mark.
func (e *env) reopenAsTheDaemon(t *testing.T, between func()) {
	t.Helper()
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	if between != nil {
		between()
	}
	marks, err := audit.LastVaultMarks(context.Background(), e.journal, 1)
	if err != nil || len(marks) != 1 {
		t.Fatalf("the journal's newest vault mark: %v, %v", marks, err)
	}
	opts := e.options()
	opts.Recorded = &marks[0]
	v, err := Open(context.Background(), e.path, e.key, Config{}, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	e.v = v
	t.Cleanup(func() { v.Close() })
}

func (e *env) stateChanges(t *testing.T) []audit.Event {
	t.Helper()
	var out []audit.Event
	for _, ev := range e.events(t) {
		if ev.Type == "vault.state_changed" {
			out = append(out, ev)
		}
	}
	return out
}

// TestOpenRecordsAFilePutBack: an older copy of vault.db put back while
// the vault was closed opens (its records are genuine), and Open records
// vault.state_changed, severity high, naming the state it closed in and
// the one it opened in, before the opening, and warns saying what to do;
// no value is in either.
func TestOpenRecordsAFilePutBack(t *testing.T) {
	e := newEnv(t, Config{})
	var older []byte
	e.reopenAsTheDaemon(t, func() {
		var err error
		if older, err = os.ReadFile(e.path); err != nil {
			t.Fatal(err)
		}
	})
	const value = "a-key-stored-after-the-copy"
	e.put(t, "late-key", TypeAPIKey, value)
	e.reopenAsTheDaemon(t, func() {
		if err := os.WriteFile(e.path, older, 0o600); err != nil {
			t.Fatal(err)
		}
	})
	evs := e.events(t)
	var closed, opened string
	for _, ev := range evs {
		switch {
		case ev.Type == "vault.close":
			closed = ev.Details[DetailState]
		case ev.Type == "vault.unseal" && ev.Outcome == audit.OutcomeSuccess:
			opened = ev.Details[DetailState]
		}
	}
	changes := e.stateChanges(t)
	if len(changes) != 1 {
		t.Fatalf("got %d vault.state_changed events, want 1", len(changes))
	}
	ch := changes[0]
	if ch.Severity != audit.SeverityHigh || ch.Outcome != audit.OutcomeSuccess || ch.Target != e.path ||
		ch.Details[DetailClosedState] != closed || ch.Details[DetailState] != opened || closed == opened {
		t.Errorf("got %+v, want severity high naming the state closed in (%s) and the one opened in (%s)", ch, closed, opened)
	}
	if last := evs[len(evs)-1]; last.Type != "vault.unseal" || last.Outcome != audit.OutcomeSuccess {
		t.Errorf("got %s last, want the change recorded before the opening", last.Type)
	}
	logs := e.logs.Bytes()
	if !bytes.Contains(logs, []byte(`"level":"WARN"`)) || !bytes.Contains(logs, []byte("tell the auditor")) || !bytes.Contains(logs, []byte(closed)) {
		t.Errorf("got logs:\n%s\nwant a warning naming the state closed in and saying what to do", logs)
	}
	for _, b := range [][]byte{logs, []byte(fmt.Sprint(evs))} {
		if bytes.Contains(b, []byte(value)) {
			t.Errorf("a stored value appears in the logs or the journal")
		}
	}
	if _, err := e.v.Describe(context.Background(), "late-key"); !errors.Is(err, ErrNotFound) {
		t.Errorf("got %v, want the older copy opened as it is (no late-key)", err)
	}
}

// TestOpenAsClosedRecordsNoChange: a vault written through the vault,
// closed, and opened untouched records no change.
func TestOpenAsClosedRecordsNoChange(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "a-key", TypeAPIKey, "a-value")
	e.reopenAsTheDaemon(t, nil)
	e.put(t, "another-key", TypeAPIKey, "another-value")
	e.reopenAsTheDaemon(t, nil)
	if changes := e.stateChanges(t); len(changes) != 0 {
		t.Errorf("got %+v, want no vault.state_changed", changes)
	}
	if bytes.Contains(e.logs.Bytes(), []byte(`"level":"WARN"`)) {
		t.Errorf("got logs:\n%s\nwant no warning", e.logs.Bytes())
	}
}

// TestOpenAfterACrashComparesNothing: when the journal's newest mark is an
// opening (the vault was never closed: a crash), the state it opens in is
// not compared with it, since writes after that opening changed it.
func TestOpenAfterACrashComparesNothing(t *testing.T) {
	e := newEnv(t, Config{})
	marks, err := audit.LastVaultMarks(context.Background(), e.journal, 1)
	if err != nil || len(marks) != 1 || marks[0].Type != "vault.unseal" {
		t.Fatalf("got %v, %v; want the opening", marks, err)
	}
	e.put(t, "a-key", TypeAPIKey, "a-value")
	e.v.mu.Lock()
	err = e.v.closeLocked() // no vault.close, as after SIGKILL
	e.v.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	opts := e.options()
	opts.Recorded = &marks[0]
	v, err := Open(context.Background(), e.path, e.key, Config{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if changes := e.stateChanges(t); len(changes) != 0 {
		t.Errorf("got %+v, want no vault.state_changed after a crash", changes)
	}
	if c := v.StateCheck(); c.Result != StateUnverified || c.MarkSeq != marks[0].Seq {
		t.Errorf("got state check %+v, want unverified against the opening at seq %d", c, marks[0].Seq)
	}
	// The same opening compared with a close in that older state is one.
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Recorded = &audit.VaultMark{Seq: marks[0].Seq, Type: "vault.close", State: marks[0].State}
	v, err = Open(context.Background(), e.path, e.key, Config{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if changes := e.stateChanges(t); len(changes) != 1 {
		t.Errorf("got %d vault.state_changed, want 1 when the mark is a close", len(changes))
	}
	if c := v.StateCheck(); c.Result != StateChanged || c.MarkState != marks[0].State || c.State == c.MarkState {
		t.Errorf("got state check %+v, want changed from the close's state", c)
	}
}

// TestOpenWithoutAMarkComparesNothing: a journal whose newest segments
// hold no mark (a first start, a new chain) leaves nothing to compare
// with: the opening records state_check unknown, and no change.
func TestOpenWithoutAMarkComparesNothing(t *testing.T) {
	e := newEnv(t, Config{})
	if c := e.v.StateCheck(); c.Result != StateUnknown || c.MarkSeq != 0 || c.State == "" {
		t.Errorf("got state check %+v, want unknown with the state opened", c)
	}
	var evs []audit.Event
	for _, ev := range e.events(t) {
		if ev.Type == "vault.unseal" {
			evs = append(evs, ev)
		}
	}
	if len(evs) != 1 || evs[0].Details[DetailStateCheck] != StateUnknown {
		t.Errorf("got openings %+v, want one with state_check %q", evs, StateUnknown)
	}
}

// TestUpgradeOfAnUpgradedVaultKeepsItsState: `vault upgrade` is the one
// verb that writes the vault with the daemon down; run on a vault already
// upgraded it only compacts it, which leaves the state as it closed in, so
// the next opening is no change.
func TestUpgradeOfAnUpgradedVaultKeepsItsState(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "a-key", TypeAPIKey, "a-value")
	e.put(t, "b-key", TypeAPIKey, "b-value")
	if err := e.v.Delete(context.Background(), operator, "a-key"); err != nil {
		t.Fatal(err)
	}
	e.reopenAsTheDaemon(t, func() {
		before, err := os.Stat(e.path)
		if err != nil {
			t.Fatal(err)
		}
		res, err := Upgrade(context.Background(), e.path, e.key, operator, e.options())
		if err != nil || res.Upgraded {
			t.Fatalf("Upgrade: %+v, %v; want a compaction only", res, err)
		}
		if after, err := os.Stat(e.path); err != nil || os.SameFile(before, after) {
			t.Fatalf("got the same file (%v): want the compaction to have rewritten it", err)
		}
	})
	var closed, opened string
	for _, ev := range e.events(t) {
		switch {
		case ev.Type == "vault.close":
			closed = ev.Details[DetailState]
		case ev.Type == "vault.unseal" && ev.Outcome == audit.OutcomeSuccess:
			opened = ev.Details[DetailState]
		}
	}
	if opened != closed || len(e.stateChanges(t)) != 0 {
		t.Errorf("closed in %s, opened in %s after the compaction, changes %+v: want the same state and no vault.state_changed", closed, opened, e.stateChanges(t))
	}
}

// TestFileStateOfADamagedFileIsAnError: FileState (doctor's read of a
// stopped appliance's vault.db) reports a truncated or garbled file as
// ErrCorrupt, never a panic, and gives an intact closed file the state
// its close recorded.
func TestFileStateOfADamagedFileIsAnError(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "a-key", TypeAPIKey, "a-value")
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	var closed string
	for _, ev := range e.events(t) {
		if ev.Type == "vault.close" {
			closed = ev.Details[DetailState]
		}
	}
	if got, err := FileState(e.path); err != nil || got != closed || closed == "" {
		t.Fatalf("FileState of the closed vault: %q, %v; want %q, the state its close recorded", got, err, closed)
	}
	b, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	for name, damaged := range map[string][]byte{
		"truncated": b[:len(b)/3],
		"garbled":   append(append([]byte{}, b[:4096]...), bytes.Repeat([]byte{0xa5}, len(b)-4096)...),
	} {
		path := filepath.Join(t.TempDir(), "vault.db")
		if err := os.WriteFile(path, damaged, 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := FileState(path); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %q, %v; want ErrCorrupt", name, got, err)
		}
	}
}
