//go:build linux

// Package qemuvm runs a Go test binary as PID 1 of Debian's own kernel
// under qemu (TCG), for tests that need kernel features the host lacks
// (802.1Q VLANs). The host side fetches exactly the kernel package that
// linux-image-amd64 depends on, extracts it once into a cache directory,
// packs an initramfs holding the test binary and the modules asked for (with
// their dependencies from modules.dep), boots it and returns what the guest
// printed on the serial console. The guest side (GuestMain, called from
// TestMain) mounts /proc, /sys and /dev, loads the modules with
// finit_module, runs the tests and powers the machine off.
package qemuvm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultCacheDir keeps extracted kernels between runs.
const DefaultCacheDir = "/var/cache/applianced-test"

const (
	guestDir   = "/qemuvm"
	exitMarker = "QEMUVM-EXIT "
)

// Kernel is an extracted Debian kernel package.
type Kernel struct {
	Version string // e.g. 6.1.0-56-amd64
	Vmlinuz string
	Root    string // holds lib/modules/<Version>, with modules.dep
}

// Available reports why a guest cannot be booted here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root to fetch and extract the kernel package")
	}
	for _, tool := range []string{"qemu-system-x86_64", "apt-cache", "apt-get", "dpkg-deb", "depmod"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not installed (Debian packages qemu-system-x86, apt, dpkg, kmod)", tool)
		}
	}
	return nil
}

var dependsRE = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-[0-9][^\s]*)`)

// EnsureKernel returns the kernel linux-image-amd64 depends on, fetching
// and extracting it into cacheDir when it is not there yet.
func EnsureKernel(ctx context.Context, cacheDir string) (*Kernel, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").Output()
	m := dependsRE.FindSubmatch(out)
	if err != nil || m == nil {
		// A fresh machine's package lists can be empty.
		if uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").Run(); uerr != nil {
			return nil, fmt.Errorf("qemuvm: apt-get update: %w", uerr)
		}
		out, err = exec.CommandContext(ctx, "apt-cache", "depends", "linux-image-amd64").Output()
		if err != nil {
			return nil, fmt.Errorf("qemuvm: apt-cache depends linux-image-amd64: %w", err)
		}
		if m = dependsRE.FindSubmatch(out); m == nil {
			return nil, fmt.Errorf("qemuvm: linux-image-amd64 names no kernel package:\n%s", out)
		}
	}
	pkg := string(m[1])
	version := strings.TrimPrefix(pkg, "linux-image-")
	dir := filepath.Join(cacheDir, pkg)
	k := &Kernel{Version: version, Vmlinuz: filepath.Join(dir, "boot", "vmlinuz-"+version), Root: dir}
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return k, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("qemuvm: %w", err)
	}
	tmp, err := os.MkdirTemp(cacheDir, pkg+".tmp")
	if err != nil {
		return nil, fmt.Errorf("qemuvm: %w", err)
	}
	defer os.RemoveAll(tmp)
	run := func(dir string, name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("qemuvm: %s %s: %w\n%s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run(tmp, "apt-get", "download", pkg); err != nil {
		return nil, err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("qemuvm: apt-get download %s left %d .deb files", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if err := run(tmp, "dpkg-deb", "-x", debs[0], root); err != nil {
		return nil, err
	}
	if err := run(tmp, "depmod", "-b", root, version); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(root, ".complete"), []byte(pkg+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("qemuvm: %w", err)
	}
	os.RemoveAll(dir) // a half-made one from an interrupted run
	if err := os.Rename(root, dir); err != nil {
		return nil, fmt.Errorf("qemuvm: %w", err)
	}
	return k, nil
}

// modulePaths resolves names (e.g. "8021q") to module files in load order,
// dependencies first, from modules.dep.
func (k *Kernel) modulePaths(names []string) ([]string, error) {
	modDir := filepath.Join(k.Root, "lib", "modules", k.Version)
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("qemuvm: %w", err)
	}
	defer f.Close()
	deps := map[string][]string{} // path → deps
	byName := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		base := strings.TrimSuffix(filepath.Base(mod), filepath.Ext(mod))
		base = strings.TrimSuffix(base, ".ko")
		byName[strings.ReplaceAll(base, "-", "_")] = mod
	}
	var order []string
	seen := map[string]bool{}
	var visit func(p string)
	visit = func(p string) {
		if seen[p] {
			return
		}
		seen[p] = true
		ds := deps[p]
		for i := len(ds) - 1; i >= 0; i-- { // modules.dep lists the deepest last
			visit(ds[i])
		}
		order = append(order, p)
	}
	for _, n := range names {
		p, ok := byName[strings.ReplaceAll(n, "-", "_")]
		if !ok {
			return nil, fmt.Errorf("qemuvm: module %s not in %s", n, k.Version)
		}
		visit(p)
	}
	return order, nil
}

// Config is one boot.
type Config struct {
	// Binary is a statically linked program run as /init (a test binary
	// built with CGO_ENABLED=0).
	Binary string
	// Args are its arguments.
	Args []string
	// Modules are loaded, with their dependencies, before Binary runs.
	Modules []string
	// Memory for the guest; default "512M".
	Memory string
	// Timeout for the whole boot; default 2 minutes.
	Timeout time.Duration
	// WorkDir receives the initramfs.
	WorkDir string
}

// Run boots k with cfg and returns the console output and the exit code the
// guest's program reported (-1 when it reported none).
func Run(ctx context.Context, k *Kernel, cfg Config) ([]byte, int, error) {
	if cfg.Memory == "" {
		cfg.Memory = "512M"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Minute
	}
	mods, err := k.modulePaths(cfg.Modules)
	if err != nil {
		return nil, -1, err
	}
	initrd := filepath.Join(cfg.WorkDir, "initrd.cpio")
	if err := writeInitramfs(initrd, k, cfg, mods); err != nil {
		return nil, -1, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-m", cfg.Memory, "-smp", "1",
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-display", "none",
		"-kernel", k.Vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 rdinit=/init",
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	code := -1
	if i := bytes.LastIndex(out.Bytes(), []byte(exitMarker)); i >= 0 {
		line, _, _ := bytes.Cut(out.Bytes()[i+len(exitMarker):], []byte("\n"))
		if n, perr := strconv.Atoi(strings.TrimSpace(string(line))); perr == nil {
			code = n
		}
	}
	if ctx.Err() != nil {
		return out.Bytes(), code, fmt.Errorf("qemuvm: guest did not finish within %s", cfg.Timeout)
	}
	if err != nil && code < 0 {
		return out.Bytes(), code, fmt.Errorf("qemuvm: qemu: %w", err)
	}
	return out.Bytes(), code, nil
}

func writeInitramfs(path string, k *Kernel, cfg Config, mods []string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("qemuvm: %w", err)
	}
	defer f.Close()
	w := newCpio(f)
	for _, d := range []string{"dev", "proc", "sys", "tmp", strings.TrimPrefix(guestDir, "/")} {
		w.dir(d)
	}
	w.node("dev/console", unix.S_IFCHR|0o600, 5, 1)
	bin, err := os.ReadFile(cfg.Binary)
	if err != nil {
		return fmt.Errorf("qemuvm: %w", err)
	}
	w.file("init", 0o755, bin)
	modBase := filepath.Join("lib", "modules", k.Version)
	var list []string
	for _, m := range mods {
		b, err := os.ReadFile(filepath.Join(k.Root, modBase, m))
		if err != nil {
			return fmt.Errorf("qemuvm: %w", err)
		}
		p := filepath.Join(modBase, m)
		w.mkdirAll(filepath.Dir(p))
		w.file(p, 0o644, b)
		list = append(list, "/"+p)
	}
	w.file(strings.TrimPrefix(guestDir, "/")+"/modules", 0o644, []byte(strings.Join(list, "\n")))
	w.file(strings.TrimPrefix(guestDir, "/")+"/args", 0o644, []byte(strings.Join(cfg.Args, "\n")))
	if err := w.close(); err != nil {
		return fmt.Errorf("qemuvm: initramfs: %w", err)
	}
	return f.Close()
}

// IsGuest reports whether this process is the /init of a qemuvm guest.
func IsGuest() bool {
	if os.Getpid() != 1 {
		return false
	}
	_, err := os.Stat(guestDir + "/args")
	return err == nil
}

// GuestMain prepares the guest, replaces os.Args with the boot's Args,
// calls run and powers off, printing run's exit code on the console. It
// does not return.
func GuestMain(run func() int) {
	code := 1
	defer func() {
		fmt.Printf("\n%s%d\n", exitMarker, code)
		unix.Sync()
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		os.Exit(code)
	}()
	if err := guestSetup(); err != nil {
		fmt.Println("qemuvm guest setup:", err)
		return
	}
	args, _ := os.ReadFile(guestDir + "/args")
	os.Args = []string{"/init"}
	for _, a := range strings.Split(string(args), "\n") {
		if a != "" {
			os.Args = append(os.Args, a)
		}
	}
	code = run()
}

func guestSetup() error {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}, {"tmpfs", "/tmp", "tmpfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	os.Setenv("TMPDIR", "/tmp")
	os.Setenv("PATH", "/")
	list, err := os.ReadFile(guestDir + "/modules")
	if err != nil {
		return err
	}
	for _, p := range strings.Split(string(list), "\n") {
		if p == "" {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load %s: %w", filepath.Base(p), err)
		}
	}
	// Loopback up: tests may listen on it.
	return nil
}
