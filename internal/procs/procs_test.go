package procs

import (
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
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

// TestSetSliceReachesEveryThread checks that the slice is set on the
// threads running now and inherited by one the runtime starts afterwards.
func TestSetSliceReachesEveryThread(t *testing.T) {
	if err := SetSlice(Slice); err != nil {
		t.Fatalf("SetSlice: %v", err)
	}
	t.Cleanup(func() { SetSlice(0) })
	// A goroutine locked to its thread while others are too forces the
	// runtime to start new threads.
	var ready, release sync.WaitGroup
	release.Add(1)
	for range 4 {
		ready.Add(1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			ready.Done()
			release.Wait()
		}()
	}
	ready.Wait()
	defer release.Done()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) < 5 {
		t.Fatalf("got %d threads, want the runtime to have started more", len(tasks))
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		a, err := getattr(tid)
		if err != nil {
			t.Fatal(err)
		}
		if time.Duration(a.runtime) != Slice {
			t.Errorf("thread %d runs with slice %v, want %v", tid, time.Duration(a.runtime), Slice)
		}
	}
	if err := SetSlice(0); err != nil {
		t.Fatal(err)
	}
	if d, err := CurrentSlice(); err != nil || d == Slice {
		t.Errorf("after SetSlice(0): slice %v err %v, want the kernel's default back", d, err)
	}
}
