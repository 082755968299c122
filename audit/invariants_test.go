package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const fsyncChildEnv = "AUDIT_FSYNC_CHILD_DIR"

// TestFsyncChild is the process TestAppendFailsWhenFsyncFails runs under
// strace; on its own it does nothing.
func TestFsyncChild(t *testing.T) {
	dir := os.Getenv(fsyncChildEnv)
	if dir == "" {
		return // only a helper process; not a skipped test
	}
	j, err := Open(dir, nil)
	if err != nil {
		fmt.Println("OPEN_ERR", err)
		return
	}
	defer j.Close()
	if os.Getenv(fsyncChildEnv+"_OPEN_ONLY") != "" {
		fmt.Println("OPENED")
		return
	}
	for i := range 2 {
		_, err := j.Append(context.Background(), testEvent(i))
		fmt.Printf("APPEND %d unwritable=%v err=%v\n", i, errors.Is(err, ErrUnwritable), err)
	}
}

// TestAppendFailsWhenFsyncFails: an entry is acknowledged only after its
// fdatasync succeeds. Under strace, every fdatasync after the journal is
// open fails with EIO: the Append returns ErrUnwritable instead of a sequence
// number, and the journal refuses every later Append. Without the fsync the
// Append would succeed and this test would fail.
func TestAppendFailsWhenFsyncFails(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("skipped: strace (Debian strace) not installed; it injects the fsync failure")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	run := func(env []string, inject string) (stdout string, syncs int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		trace := filepath.Join(t.TempDir(), "strace.out")
		args := []string{"-f", "-qq", "-o", trace, "-e", "trace=fsync,fdatasync"}
		if inject != "" {
			args = append(args, "-e", inject)
		}
		args = append(args, exe, "-test.run=^TestFsyncChild$", "-test.count=1")
		cmd := exec.CommandContext(ctx, strace, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "PTRACE") || strings.Contains(string(out), "ptrace") {
				t.Skipf("skipped: ptrace is not permitted here: %s", out)
			}
			t.Fatalf("child: %v\n%s", err, out)
		}
		tb, err := os.ReadFile(trace)
		if err != nil {
			t.Fatal(err)
		}
		syncs = strings.Count(string(tb), "fdatasync(")
		return string(out), syncs
	}

	// How many fdatasyncs does opening a fresh journal take? (strace counts
	// each syscall on its own, so the entries' fdatasyncs are counted apart
	// from the fsyncs that create a segment.)
	_, opening := run([]string{fsyncChildEnv + "=" + t.TempDir(), fsyncChildEnv + "_OPEN_ONLY=1"}, "")
	// Every fdatasync after those fails.
	dir := t.TempDir()
	out, injected := run([]string{fsyncChildEnv + "=" + dir},
		"inject=fdatasync:error=EIO:when="+strconv.Itoa(opening+1)+"+")
	if injected == opening {
		t.Fatalf("no fdatasync after the journal opened: the entries are not synced\n%s", out)
	}
	if strings.Contains(out, "OPEN_ERR") {
		t.Fatalf("the journal did not open (the fsync count of an open changed?):\n%s", out)
	}
	for _, want := range []string{"APPEND 0 unwritable=true", "APPEND 1 unwritable=true"} {
		if !strings.Contains(out, want) {
			t.Errorf("child output lacks %q: an Append was acknowledged although its fsync failed:\n%s", want, out)
		}
	}
}
