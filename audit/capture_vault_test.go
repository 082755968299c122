package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sealedWith writes evs to a new journal in dir, sealed, and returns the
// capture lines of its chain.
func sealedWith(t *testing.T, dir string, key ed25519.PrivateKey, evs []*Event) []string {
	t.Helper()
	j, err := Open(dir, &Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	c := NewCheckpointer(j, key, &CheckpointOptions{Every: 3, Interval: time.Hour, Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for _, ev := range evs {
		if _, err := j.Append(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return chainBodies(j.ChainID(), journalEntries(t, j))
}

func vaultEvent(typ, state string) *Event {
	return &Event{Type: typ, Target: "/var/lib/applianced/vault.db", Outcome: OutcomeSuccess, Details: map[string]string{detailVaultState: state}}
}

// TestCaptureFindsAVaultOpenedInAnotherState: the vault must open in the
// state it closed in; an opening after a crash (no close) is a note; a
// failed opening and events of versions before the state digest count
// for nothing.
func TestCaptureFindsAVaultOpenedInAnotherState(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	failed := vaultEvent("vault.unseal", b)
	failed.Outcome = OutcomeFailure
	for _, tc := range []struct {
		name     string
		evs      []*Event
		problem  bool
		wantNote string
	}{
		{"closed and opened alike", []*Event{vaultEvent("vault.unseal", a), vaultEvent("vault.close", b), vaultEvent("vault.unseal", b), vaultEvent("vault.close", b)}, false, ""},
		{"opened in another state", []*Event{vaultEvent("vault.unseal", a), vaultEvent("vault.close", a), vaultEvent("vault.unseal", b)}, true, ""},
		{"a crash, then another state", []*Event{vaultEvent("vault.unseal", a), vaultEvent("vault.unseal", b)}, false, "no close between"},
		{"a failed opening between", []*Event{vaultEvent("vault.close", a), failed, vaultEvent("vault.unseal", a)}, false, ""},
		{"a close without a state", []*Event{{Type: "vault.close", Outcome: OutcomeSuccess}, vaultEvent("vault.unseal", b)}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lines := sealedWith(t, filepath.Join(t.TempDir(), "audit"), key, tc.evs)
			rep := verifyLinesWith(t, &CaptureOptions{PublicKey: pub}, lines)
			if got := hasProblem(rep, ProblemVault); got != tc.problem {
				t.Errorf("got problems %v, want a %s problem: %v", rep.Problems, ProblemVault, tc.problem)
			}
			if tc.wantNote != "" && !strings.Contains(strings.Join(rep.Notes, "\n"), tc.wantNote) {
				t.Errorf("got notes %q, want one saying %q", rep.Notes, tc.wantNote)
			}
		})
	}
}
