//go:build linux

package hardening

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Some tests need a process of their own (a changed umask, a non-dumpable
// process, a fresh network namespace): they re-run this test binary with
// childEnv naming a function of children, which prints JSON and exits.
const childEnv = "HARDENING_TEST_CHILD"

var children = map[string]func() any{}

func TestMain(m *testing.M) {
	if name := os.Getenv(childEnv); name != "" {
		f, ok := children[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown child %q\n", name)
			os.Exit(3)
		}
		if err := json.NewEncoder(os.Stdout).Encode(f()); err != nil {
			os.Exit(4)
		}
		// Wait for the parent to look at /proc/PID before exiting.
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is a running re-executed test binary.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startChild runs children[name] in a new process (configured by attr) and
// decodes its JSON output into out. The process stays alive until the
// test ends so /proc/PID can be inspected.
func startChild(t *testing.T, name string, attr *syscall.SysProcAttr, out any) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if attr != nil && attr.Credential != nil {
		exe = copyWorldExecutable(t, exe)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+name)
	cmd.SysProcAttr = attr
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child %s: %v", name, err)
	}
	c := &child{cmd: cmd, stdin: stdin}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		t.Fatalf("child %s: no output: %v", name, err)
	}
	if err := json.Unmarshal(line, out); err != nil {
		t.Fatalf("child %s: output %q: %v", name, line, err)
	}
	return c
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// copyWorldExecutable copies the test binary where an unprivileged user can
// run it.
func copyWorldExecutable(t *testing.T, exe string) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "hardening.test")
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (CAP_SYS_ADMIN for namespaces, setuid for an unprivileged child)")
	}
}

// procField returns the value of "Key:" in /proc/PID/status.
func procField(t *testing.T, pid int, key string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}
