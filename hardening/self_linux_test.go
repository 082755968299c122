//go:build linux

package hardening

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

type applyOut struct {
	Applied  *Applied
	Err      string
	Dumpable bool
}

func init() {
	children["apply"] = func() any {
		a, err := Apply(nil)
		o := applyOut{Applied: a}
		if err != nil {
			o.Err = err.Error()
		}
		o.Dumpable, _ = Dumpable()
		return o
	}
	children["idle"] = func() any { return applyOut{} }
}

// coreLimit reads "Max core file size" (soft, hard) from /proc/PID/limits.
func coreLimit(t *testing.T, pid int) (string, string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max core file size"); ok {
			f := strings.Fields(rest)
			return f[0], f[1]
		}
	}
	t.Fatal("no core limit line")
	return "", ""
}

func nobody() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
}

// TestApplyDisablesCoreDumps: after Apply the kernel reports a core size
// limit of 0 that cannot be raised again (hard limit 0 too).
func TestApplyDisablesCoreDumps(t *testing.T) {
	requireRoot(t) // to raise the hard core limit for the child
	core := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	var idle applyOut
	before := startChildWithLimit(t, "idle", nil, 4 /* RLIMIT_CORE */, core, &idle)
	if soft, _ := coreLimit(t, before.pid()); soft == "0" {
		t.Fatalf("before Apply: core limit got 0, want %d", core.Cur)
	}
	var out applyOut
	c := startChildWithLimit(t, "apply", nil, 4, core, &out)
	if out.Err != "" {
		t.Fatalf("Apply: %s", out.Err)
	}
	soft, hard := coreLimit(t, c.pid())
	if soft != "0" || hard != "0" {
		t.Errorf("core limit got soft %s hard %s, want 0 0", soft, hard)
	}
}

// TestApplyMakesProcessNotDumpable: an unprivileged process that is not
// dumpable has its /proc/PID files owned by root, so nothing running as the
// same user can read its memory or environment.
func TestApplyMakesProcessNotDumpable(t *testing.T) {
	requireRoot(t)
	var idle applyOut
	before := startChild(t, "idle", nobody(), &idle)
	if got := ownerOf(t, fmt.Sprintf("/proc/%d/environ", before.pid())); got != 65534 {
		t.Fatalf("before Apply: /proc/PID/environ owner got %d, want 65534", got)
	}
	var out applyOut
	c := startChild(t, "apply", nobody(), &out)
	if out.Err != "" {
		t.Fatalf("Apply: %s", out.Err)
	}
	if out.Dumpable {
		t.Error("PR_GET_DUMPABLE got 1, want 0")
	}
	if got := ownerOf(t, fmt.Sprintf("/proc/%d/environ", c.pid())); got != 0 {
		t.Errorf("after Apply: /proc/PID/environ owner got %d, want 0 (not dumpable)", got)
	}
}

func ownerOf(t *testing.T, path string) uint32 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Uid
}

// TestApplySetsUmask077: files the process creates are private.
func TestApplySetsUmask077(t *testing.T) {
	var out applyOut
	c := startChild(t, "apply", nil, &out)
	if out.Err != "" {
		t.Fatalf("Apply: %s", out.Err)
	}
	if got := procField(t, c.pid(), "Umask"); got != "0077" {
		t.Errorf("umask got %s, want 0077", got)
	}
}

// TestApplyLocksMemoryWhenPermitted: root holds CAP_IPC_LOCK, so memory is
// locked (VmLck above zero); an unprivileged process with a small
// RLIMIT_MEMLOCK is not locked and says why.
func TestApplyLocksMemoryWhenPermitted(t *testing.T) {
	requireRoot(t)
	var out applyOut
	c := startChild(t, "apply", nil, &out)
	if out.Err != "" || !out.Applied.MemoryLocked {
		t.Fatalf("root: MemoryLocked got false (%q, %q), want true", out.Err, out.Applied.MemoryLockSkipped)
	}
	if got := procField(t, c.pid(), "VmLck"); got == "0 kB" {
		t.Errorf("root: VmLck got %s, want locked pages", got)
	}

	var limited applyOut
	attr := nobody()
	old := getLimit(t, 8)
	c2 := startChildWithLimit(t, "apply", attr, 8 /* RLIMIT_MEMLOCK */, syscall.Rlimit{Cur: 64 << 10, Max: old.Max}, &limited)
	if limited.Err != "" {
		t.Fatalf("Apply: %s", limited.Err)
	}
	if limited.Applied.MemoryLocked || limited.Applied.MemoryLockSkipped == "" {
		t.Errorf("unprivileged: got locked=%v reason=%q, want not locked with a reason", limited.Applied.MemoryLocked, limited.Applied.MemoryLockSkipped)
	}
	if got := procField(t, c2.pid(), "VmLck"); got != "0 kB" {
		t.Errorf("unprivileged: VmLck got %s, want 0 kB", got)
	}
}

func getLimit(t *testing.T, resource int) syscall.Rlimit {
	t.Helper()
	var l syscall.Rlimit
	if err := syscall.Getrlimit(resource, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

// startChildWithLimit starts a child with resource set to lim (limits are
// inherited across fork and exec); the test process's own limit is put back.
func startChildWithLimit(t *testing.T, name string, attr *syscall.SysProcAttr, resource int, lim syscall.Rlimit, out *applyOut) *child {
	t.Helper()
	old := getLimit(t, resource)
	if err := syscall.Setrlimit(resource, &lim); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(resource, &old)
	return startChild(t, name, attr, out)
}
