// Package procs sizes the Go scheduler for the daemon's workload.
//
// Every decision the daemon makes waits for an fdatasync of the audit
// journal, and the journal's writer goroutine spends most of its time in
// that system call (the journal's marker and bbolt's commits do too). A
// goroutine in a blocking system call keeps its P (the scheduler's right to
// run Go code) until the runtime's monitor notices and hands the P on,
// which can take far longer than the fsync itself. With GOMAXPROCS equal
// to the number of CPUs, one of two cores then sits idle while requests
// wait to be signed. Giving the scheduler as many extra Ps as there are
// goroutines that live in fdatasync keeps every core running Go code.
//
// An operator's GOMAXPROCS in the environment always wins.
//
// It also asks the kernel for short scheduler slices (Slice), so that a
// thread that wakes on a busy machine gets a core sooner.
package procs

import (
	"os"
	"runtime"
)

// SyncGoroutines is the number of extra Ps: the journal's writer, the
// journal's marker, and bbolt's batch commit.
const SyncGoroutines = 2

// Tune raises GOMAXPROCS by SyncGoroutines over the runtime's default (the
// CPUs the process may use, cgroup quota included) unless GOMAXPROCS is set
// in the environment. It returns the value before and after.
func Tune() (before, after int) {
	before = runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") != "" {
		return before, before
	}
	after = before + SyncGoroutines
	runtime.GOMAXPROCS(after)
	return before, after
}

// Apply is what the daemon does at start: Tune, then SetSlice(Slice). A
// kernel that cannot keep a slice per thread only costs the latency gain.
func Apply() {
	Tune()
	_ = SetSlice(Slice)
}

// ForBenchmark applies Tune and SetSlice(Slice) for one benchmark, as the
// daemon does at start, and returns the function that restores the
// previous values.
func ForBenchmark() (restore func()) {
	before, _ := Tune()
	_ = SetSlice(Slice)
	return func() {
		runtime.GOMAXPROCS(before)
		_ = SetSlice(0)
	}
}
