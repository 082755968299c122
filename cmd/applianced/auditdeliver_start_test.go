package main

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/applianced/applianced/audit"
)

// TestDeliverStartIgnoresATamperOfTheLiveChain: the forwarder's "cursor
// is ahead of the journal" audit.tamper names no cursor_chain; its cursor
// is a position in the live chain. Taken for a position in a legacy
// journal set aside (chain ""), it would skip every entry below it.
func TestDeliverStartIgnoresATamperOfTheLiveChain(t *testing.T) {
	j, err := audit.Open(filepath.Join(t.TempDir(), "audit"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	ev := &audit.Event{Type: "audit.tamper", Severity: audit.SeverityHigh, Action: "audit.forward", Target: "tcp://siem:514",
		Outcome: audit.OutcomeFailure, Reason: "the journal ends before what this target already received: it was replaced or cut",
		Details: map[string]string{"cursor": "500", "journal_seq": "10", "delivered": "0"}}
	if _, err := j.Append(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	d := &daemon{journal: j}
	left, err := d.leftChain(context.Background(), "") // a legacy journal set aside
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := left["tcp://siem:514"]; ok {
		t.Errorf("a cursor-ahead tamper of the live chain was taken as the target's position in the legacy chain: start at %d", m.cursor+1)
	}
}
