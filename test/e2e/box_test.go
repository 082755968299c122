//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The root file system: Debian 12 minbase plus what a real AI server has
// and the test drives (curl for the API over the agent socket, nftables to
// look at the firewall).
const (
	suite    = "bookworm"
	cacheDir = "/var/cache/applianced-e2e"
)

var rootfsPackages = []string{
	"systemd", "systemd-sysv", "dbus", "adduser", "passwd", "procps", "iproute2",
	"kmod", "ca-certificates", "nftables", "curl", "libcap2-bin",
}

// mirror is the Debian archive debootstrap fetches from: $E2E_MIRROR, else
// the one this machine's apt is configured with (an air-gapped site points
// apt at its own mirror, and so does this test).
func mirror() string {
	if m := os.Getenv("E2E_MIRROR"); m != "" {
		return m
	}
	return aptMirror()
}

// aptMirror reads the Debian archive URI for the suite from apt's sources,
// in deb822 (sources.list.d/*.sources) or one-line (sources.list) format.
func aptMirror() string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, stanza := range strings.Split(string(data), "\n\n") {
			var uri string
			suiteOK := false
			for _, line := range strings.Split(stanza, "\n") {
				if v, ok := strings.CutPrefix(line, "URIs:"); ok {
					if f := strings.Fields(v); len(f) > 0 {
						uri = f[0]
					}
				}
				if v, ok := strings.CutPrefix(line, "Suites:"); ok && slices.Contains(strings.Fields(v), suite) {
					suiteOK = true
				}
			}
			if uri != "" && suiteOK {
				return uri
			}
		}
	}
	data, err := os.ReadFile("/etc/apt/sources.list")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "deb" && f[2] == suite {
			return f[1]
		}
	}
	return ""
}

// cachedRootfs returns a pristine Debian root file system, made with
// debootstrap once per machine and package list (about 40 s) and reused.
func cachedRootfs(t *testing.T) string {
	t.Helper()
	sum := sha256.Sum256([]byte(suite + " " + strings.Join(rootfsPackages, ",")))
	dir := filepath.Join(cacheDir, suite+"-"+hex.EncodeToString(sum[:6]))
	if _, err := os.Stat(filepath.Join(dir, "usr/lib/systemd/systemd")); err == nil {
		return dir
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(cacheDir, "debootstrap-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	// MkdirTemp makes 0700; the container's / must be 0755 or its
	// unprivileged services (dbus) cannot read anything.
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	m := mirror()
	if m == "" {
		t.Fatalf("no Debian mirror for %s in apt's sources: set E2E_MIRROR to the archive URL", suite)
	}
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(rootfsPackages, ","), suite, tmp, m)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, tail(out, 30))
	}
	// Quiet the container's boot: no getty on a console nobody reads.
	for _, u := range []string{"console-getty.service", "getty@tty1.service", "systemd-timesyncd.service"} {
		os.Symlink("/dev/null", filepath.Join(tmp, "etc/systemd/system", u))
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("debootstrap %s: %s, cached at %s", suite, time.Since(start).Round(time.Second), dir)
	return dir
}

// box is a booted container: systemd as PID 1 in its own namespaces, with
// a private network (so the firewall it loads touches only itself).
type box struct {
	root   string
	nspawn *exec.Cmd
	leader int
	log    *bytes.Buffer
}

// boot copies the cached root file system and boots it with systemd-nspawn,
// binding debDir read-only at /debs.
func boot(t *testing.T, debDir string) *box {
	t.Helper()
	for _, bin := range []string{"debootstrap", "systemd-nspawn", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipped: %s not installed (Debian debootstrap, systemd-container, util-linux)", bin)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: booting a container needs root")
	}
	pristine := cachedRootfs(t)
	root := filepath.Join(t.TempDir(), "rootfs")
	if out, err := exec.Command("cp", "-a", "--reflink=auto", pristine, root).CombinedOutput(); err != nil {
		t.Fatalf("copy rootfs: %v: %s", err, out)
	}
	b := &box{root: root, log: &bytes.Buffer{}}
	b.nspawn = exec.Command("systemd-nspawn", "-q", "-D", root, "--register=no", "--keep-unit", "-b",
		"--private-network", "--link-journal=no", "--console=pipe", "--timezone=off", "--resolv-conf=off",
		"--bind-ro="+debDir+":/debs", "--machine=applianced-e2e-"+strconv.Itoa(os.Getpid()))
	b.nspawn.Stdout, b.nspawn.Stderr = b.log, b.log
	b.nspawn.Stdin = nil
	b.nspawn.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.nspawn.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { b.nspawn.Wait(); close(done) }()
	t.Cleanup(func() {
		// SIGTERM asks nspawn to power the container off cleanly.
		b.nspawn.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			syscall.Kill(-b.nspawn.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("container console:\n%s", tail(b.log.Bytes(), 40))
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for b.leader == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("container did not start:\n%s", b.log)
		}
		select {
		case <-done:
			t.Fatalf("systemd-nspawn exited:\n%s", b.log)
		case <-time.After(100 * time.Millisecond):
		}
		b.leader = childNamed(b.nspawn.Process.Pid, "systemd")
	}
	for {
		out, _ := b.sh("systemctl is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			if state == "degraded" {
				failed, _ := b.sh("systemctl --failed --no-legend --plain")
				t.Logf("container booted degraded: %s", failed)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container not booted (state %q):\n%s", state, b.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return b
}

// childNamed finds a child process of ppid with the given command name.
func childNamed(ppid int, comm string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(st)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.HasPrefix(s[strings.IndexByte(s, '(')+1:], comm+")") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			return pid
		}
	}
	return 0
}

// sh runs a shell script inside the container (all its namespaces) and
// returns stdout and stderr together.
func (b *box) sh(script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(b.leader), "-m", "-u", "-i", "-n", "-p", "-C",
		"--", "/bin/sh", "-c", script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", "HOME=/root", "SYSTEMD_PAGER="}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs script and fails t when it exits non-zero.
func (b *box) must(t *testing.T, script string) string {
	t.Helper()
	out, err := b.sh(script)
	if err != nil {
		t.Fatalf("in the container: %s: %v\n%s", script, err, out)
	}
	return out
}

func tail(b []byte, lines int) string {
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// buildDebs builds one package per version into a fresh directory.
func buildDebs(t *testing.T, versions ...string) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var debs []string
	for _, v := range versions {
		cmd := exec.Command("go", "run", "./packaging/build", "-version", v, "-out", dir)
		cmd.Dir = "../.."
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				out = append(out, ee.Stderr...)
			}
			t.Fatalf("build %s: %v\n%s", v, err, out)
		}
		debs = append(debs, filepath.Base(strings.TrimSpace(string(out))))
	}
	return dir, debs
}

func fmtDur(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
