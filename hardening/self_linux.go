//go:build linux

package hardening

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// capIPCLock is CAP_IPC_LOCK's bit in the capability sets.
const capIPCLock = 14

// Options tune Apply. A nil *Options means the defaults.
type Options struct {
	// NoMemoryLock skips mlockall even when it is permitted (for a process
	// that must stay small, such as a short CLI verb).
	NoMemoryLock bool
}

// Applied says what Apply did.
type Applied struct {
	// PreviousUmask is the umask before Apply set 077.
	PreviousUmask int
	// MemoryLocked is true when all current and future pages are locked.
	MemoryLocked bool
	// MemoryLockSkipped says why memory was not locked, when it was not.
	MemoryLockSkipped string
}

// Apply hardens the calling process: RLIMIT_CORE 0 (soft and hard, so it
// cannot be raised again), not dumpable, umask 077, and all memory locked
// (on fault) when RLIMIT_MEMLOCK is unlimited or the process holds
// CAP_IPC_LOCK. An error means the process is not protected and must not
// go on to load secrets.
func Apply(opts *Options) (*Applied, error) {
	if opts == nil {
		opts = &Options{}
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return nil, fmt.Errorf("hardening: disable core dumps: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("hardening: make process not dumpable: %w", err)
	}
	a := &Applied{PreviousUmask: unix.Umask(0o077)}
	if opts.NoMemoryLock {
		a.MemoryLockSkipped = "memory locking turned off"
		return a, nil
	}
	ok, why := memoryLockPermitted()
	if !ok {
		a.MemoryLockSkipped = why
		return a, nil
	}
	// MCL_ONFAULT locks pages as they are touched rather than populating
	// every reserved heap arena at once.
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
		a.MemoryLockSkipped = fmt.Sprintf("mlockall: %v", err)
		return a, nil
	}
	a.MemoryLocked = true
	return a, nil
}

// memoryLockPermitted reports whether locking all memory can succeed without
// the kernel refusing future allocations: an unlimited RLIMIT_MEMLOCK or
// CAP_IPC_LOCK in the effective set.
func memoryLockPermitted() (bool, string) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		return false, fmt.Sprintf("getrlimit(RLIMIT_MEMLOCK): %v", err)
	}
	if rl.Cur == unix.RLIM_INFINITY {
		return true, ""
	}
	eff, err := effectiveCaps()
	if err != nil {
		return false, fmt.Sprintf("capget: %v", err)
	}
	if eff&(1<<capIPCLock) != 0 {
		return true, ""
	}
	return false, fmt.Sprintf("RLIMIT_MEMLOCK is %d bytes and CAP_IPC_LOCK is not held (set LimitMEMLOCK=infinity)", rl.Cur)
}

// effectiveCaps returns the effective capability set of the calling thread.
func effectiveCaps() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3, Pid: 0}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, err
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}

// Dumpable reports the process's PR_GET_DUMPABLE flag.
func Dumpable() (bool, error) {
	v, _, errno := unix.Syscall6(unix.SYS_PRCTL, unix.PR_GET_DUMPABLE, 0, 0, 0, 0, 0)
	if errno != 0 {
		return false, fmt.Errorf("hardening: prctl(PR_GET_DUMPABLE): %w", errno)
	}
	return v != 0, nil
}
