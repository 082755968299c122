package audit

import (
	"context"
	"errors"
	"testing"
	"time"
)

// An Append that found the journal open and a Close that runs before the
// Append's entry is queued: the Append ends with its entry recorded or with
// ErrClosed, never a panic (a send on the closed queue) or a hang, and Close
// returns.
func TestAppendRacingCloseEndsCleanly(t *testing.T) {
	j, err := Open(t.TempDir(), &Options{noAhead: true})
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	hook := func() {
		testHookBeforeSend.Store(nil)
		go func() { closed <- j.Close() }()
		time.Sleep(50 * time.Millisecond) // time for Close to run, if it can
	}
	testHookBeforeSend.Store(&hook)
	t.Cleanup(func() { testHookBeforeSend.Store(nil) })
	seq, err := j.Append(context.Background(), testEvent(0))
	if err != nil && !errors.Is(err, ErrClosed) {
		t.Fatalf("append racing Close: %v, want an entry or ErrClosed", err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	if err == nil {
		// The entry it acknowledged is in the journal.
		if rep := mustVerify(t, j.Dir()); !rep.OK() || rep.Last != seq {
			t.Fatalf("after Close: last %d problems %v, want %d and none", rep.Last, rep.Problems, seq)
		}
	}
}
