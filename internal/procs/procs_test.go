package procs

import (
	"runtime"
	"testing"
)

func TestTuneAddsSyncPs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	restore := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(restore) })
	runtime.GOMAXPROCS(2)
	before, after := Tune()
	if before != 2 || after != 2+SyncGoroutines || runtime.GOMAXPROCS(0) != after {
		t.Errorf("Tune() = %d, %d (GOMAXPROCS now %d), want 2, %d", before, after, runtime.GOMAXPROCS(0), 2+SyncGoroutines)
	}
}

func TestTuneLeavesOperatorValue(t *testing.T) {
	t.Setenv("GOMAXPROCS", "1")
	restore := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(restore) })
	runtime.GOMAXPROCS(1)
	if before, after := Tune(); before != 1 || after != 1 || runtime.GOMAXPROCS(0) != 1 {
		t.Errorf("Tune() with GOMAXPROCS=1 set = %d, %d (now %d), want 1, 1", before, after, runtime.GOMAXPROCS(0))
	}
}

func TestForBenchmarkRestores(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	restore := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(restore) })
	runtime.GOMAXPROCS(3)
	undo := ForBenchmark()
	if got := runtime.GOMAXPROCS(0); got != 3+SyncGoroutines {
		t.Errorf("during: GOMAXPROCS = %d, want %d", got, 3+SyncGoroutines)
	}
	undo()
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("after: GOMAXPROCS = %d, want 3", got)
	}
}
