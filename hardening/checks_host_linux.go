//go:build linux

package hardening

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// sysctlRule is what doctor expects of one kernel setting.
type sysctlRule struct {
	key  string
	want string           // the value to suggest in the fix
	eval func(int) Status // verdict for a read value
	why  string           // said when it is not a pass
}

var sysctlRules = []sysctlRule{
	{"net.ipv4.ip_forward", "0", func(v int) Status { return pick(v == 0, Pass, Warn) },
		"the host routes packets between its networks; the firewall's forward chain is then the only barrier"},
	{"kernel.kptr_restrict", "1", func(v int) Status { return pick(v >= 1, Pass, Warn) },
		"kernel addresses are visible to local users, which helps exploits"},
	{"kernel.dmesg_restrict", "1", func(v int) Status { return pick(v == 1, Pass, Warn) },
		"any local user can read the kernel log"},
	{"kernel.unprivileged_bpf_disabled", "1", func(v int) Status { return pick(v >= 1, Pass, Fail) },
		"unprivileged users can load BPF programs, a frequent kernel exploit path"},
	{"net.ipv4.conf.all.rp_filter", "1", func(v int) Status {
		switch v {
		case 1:
			return Pass
		case 2:
			return Warn
		}
		return Fail
	}, "packets with spoofed source addresses are accepted"},
}

func pick(ok bool, yes, no Status) Status {
	if ok {
		return yes
	}
	return no
}

// SysctlCheck reads the kernel settings doctor cares about under procRoot
// ("/proc" on a host) and judges each.
func SysctlCheck(procRoot string) Check {
	return Check{Name: "sysctl", Run: func(ctx context.Context) []Result {
		var out []Result
		for _, r := range sysctlRules {
			name := "sysctl " + r.key
			fix := fmt.Sprintf("sysctl -w %s=%s && echo '%s = %s' >> /etc/sysctl.d/60-applianced.conf", r.key, r.want, r.key, r.want)
			raw, err := os.ReadFile(filepath.Join(procRoot, "sys", strings.ReplaceAll(r.key, ".", "/")))
			if err != nil {
				out = append(out, Result{Name: name, Status: Warn, Detail: "cannot read: " + err.Error(), Fix: fix})
				continue
			}
			s := strings.TrimSpace(string(raw))
			v, err := strconv.Atoi(s)
			if err != nil {
				out = append(out, Result{Name: name, Status: Warn, Detail: fmt.Sprintf("unexpected value %q", s), Fix: fix})
				continue
			}
			st := r.eval(v)
			res := Result{Name: name, Status: st, Detail: fmt.Sprintf("%s = %d", r.key, v)}
			if st != Pass {
				res.Detail += ": " + r.why
				res.Fix = fix
			}
			out = append(out, res)
		}
		return out
	}}
}

// FileSpec is one path FileModesCheck looks at.
type FileSpec struct {
	Path string
	Kind Kind
	// Optional: a missing file is a skip rather than a fail.
	Optional bool
}

// FileModesCheck checks each file's type, owner and mode. Owners allowed are
// root, the caller and serviceUID (the service user; -1 if unknown).
func FileModesCheck(files []FileSpec, serviceUID int) Check {
	owners := []int{0, os.Geteuid()}
	if serviceUID >= 0 {
		owners = append(owners, serviceUID)
	}
	return Check{Name: "file modes", Run: func(ctx context.Context) []Result {
		var out []Result
		for _, f := range files {
			name := "mode " + f.Path
			err := checkPath(f.Path, f.Kind, owners)
			if err == nil && serviceUID >= 0 && (f.Kind == KeyFile || f.Kind == StateDir) {
				// Owner-only modes: the service reads it only as its owner.
				if fi, serr := os.Lstat(f.Path); serr == nil {
					if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != serviceUID {
						err = fmt.Errorf("owned by uid %d, but the service runs as applianced (uid %d) and cannot read it", st.Uid, serviceUID)
					}
				}
			}
			switch {
			case err == nil:
				fi, _ := os.Lstat(f.Path)
				out = append(out, Result{Name: name, Status: Pass, Detail: fmt.Sprintf("%s, mode %04o", f.Kind, fi.Mode().Perm())})
			case errors.Is(err, fs.ErrNotExist) && f.Optional:
				out = append(out, Result{Name: name, Status: Skip, Detail: "absent"})
			case errors.Is(err, fs.ErrNotExist):
				out = append(out, Result{Name: name, Status: Fail, Detail: "absent", Fix: "run `applianced init` to create the missing files"})
			default:
				out = append(out, Result{Name: name, Status: Fail, Detail: strings.TrimPrefix(err.Error(), "hardening: "), Fix: fileFix(f)})
			}
		}
		return out
	}}
}

func fileFix(f FileSpec) string {
	owner := "applianced:applianced"
	if f.Kind == ConfigFile {
		owner = "root:applianced"
	}
	return fmt.Sprintf("chown %s %s && chmod %04o %s", owner, f.Path, f.Kind.WantMode(), f.Path)
}

// MasterKeyCheck says where the vault's master key comes from. unitText is
// the service unit with its drop-ins (`systemctl cat applianced`), keyFile
// the [vault] master_key_file. An encrypted systemd credential with no plain
// copy left on disk passes; a plain file warns; neither fails.
func MasterKeyCheck(keyFile, unitText string) Check {
	return Check{Name: "master key", Run: func(ctx context.Context) []Result {
		name := "master key source"
		sealed, plainCred := false, false
		for _, line := range strings.Split(unitText, "\n") {
			line = strings.TrimSpace(line)
			switch {
			case strings.HasPrefix(line, "LoadCredentialEncrypted=master.key:"),
				strings.HasPrefix(line, "SetCredentialEncrypted=master.key:"):
				sealed = true
			case strings.HasPrefix(line, "LoadCredential=master.key:"):
				plainCred = true
			}
		}
		_, ferr := os.Lstat(keyFile)
		fileThere := keyFile != "" && ferr == nil
		switch {
		case sealed && fileThere:
			return []Result{{Name: name, Status: Warn, Detail: "encrypted systemd credential, but a plain copy is still at " + keyFile,
				Fix: "shred -u " + keyFile}}
		case sealed:
			return []Result{{Name: name, Status: Pass, Detail: "encrypted systemd credential (LoadCredentialEncrypted=master.key)"}}
		case plainCred:
			return []Result{{Name: name, Status: Warn, Detail: "plain systemd credential (LoadCredential=master.key): readable on disk by root",
				Fix: "seal it with systemd-creds encrypt and use LoadCredentialEncrypted= (see the comments in applianced.service)"}}
		case fileThere:
			return []Result{{Name: name, Status: Warn, Detail: "plain key file " + keyFile,
				Fix: "seal it with systemd-creds encrypt and use LoadCredentialEncrypted= (see the comments in applianced.service)"}}
		}
		return []Result{{Name: name, Status: Fail, Detail: "no master key: neither a systemd credential nor " + keyFile,
			Fix: "run `applianced init`"}}
	}}
}

// ClockCheck reads the kernel's clock discipline (adjtimex, the source of
// timedatectl's "System clock synchronized"). Tokens carry exp and nbf, so
// an unsynchronized clock makes them expire early or start late.
func ClockCheck() Check {
	return Check{Name: "clock", Run: func(ctx context.Context) []Result {
		var tx unix.Timex // modes 0: read only
		state, err := unix.Adjtimex(&tx)
		if err != nil {
			return []Result{{Name: "clock synchronized", Status: Warn, Detail: "adjtimex: " + err.Error(),
				Fix: "check the clock with `timedatectl`"}}
		}
		return []Result{clockResult(state, tx.Status, tx.Maxerror)}
	}}
}

func clockResult(state int, status int32, maxErrorUS int64) Result {
	name := "clock synchronized"
	if state == unix.TIME_ERROR || status&unix.STA_UNSYNC != 0 {
		return Result{Name: name, Status: Warn,
			Detail: "the kernel clock is not synchronized to a time source; token lifetimes (exp, nbf) drift with it",
			Fix:    "point systemd-timesyncd or chrony at the site's NTP server (`timedatectl set-ntp true`)"}
	}
	return Result{Name: name, Status: Pass, Detail: fmt.Sprintf("synchronized, maximum error %d ms", maxErrorUS/1000)}
}

// exposureRE matches systemd-analyze security's last line.
var exposureRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9]+(?:\.[0-9]+)?)`)

// ParseExposure extracts the overall exposure score from the output of
// `systemd-analyze security`.
func ParseExposure(out []byte) (float64, error) {
	m := exposureRE.FindSubmatch(out)
	if m == nil {
		return 0, errors.New("hardening: no exposure level in systemd-analyze output")
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// UnitExposure runs `systemd-analyze security` on unit (a unit name for the
// running system manager, or with offline set, a unit file path) and
// returns its exposure score: 0 is fully locked down, 10 is unprotected.
func UnitExposure(ctx context.Context, unit string, offline bool) (float64, error) {
	args := []string{"security", "--no-pager"}
	if offline {
		args = append(args, "--offline=true")
	}
	args = append(args, unit)
	cmd := exec.CommandContext(ctx, "systemd-analyze", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	// systemd-analyze exits non-zero when the score is above its
	// threshold; the score is still printed.
	if v, perr := ParseExposure(out.Bytes()); perr == nil {
		return v, nil
	}
	if err != nil {
		return 0, fmt.Errorf("hardening: systemd-analyze security %s: %w: %s", unit, err, firstLine(out.String()))
	}
	return 0, errors.New("hardening: no exposure level in systemd-analyze output")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// MaxExposure is the highest unit exposure score that passes.
const MaxExposure = 2.5

// UnitExposureCheck scores the unit as the running systemd sees it (drop-ins
// included), falling back to the unit file offline when systemd is not
// running.
func UnitExposureCheck(unitName, unitFile string) Check {
	return Check{Name: "unit hardening", Run: func(ctx context.Context) []Result {
		name := "unit hardening " + unitName
		v, err := UnitExposure(ctx, unitName, false)
		how := "running system"
		if err != nil && unitFile != "" {
			v, err = UnitExposure(ctx, unitFile, true)
			how = "unit file " + unitFile
		}
		if err != nil {
			return []Result{{Name: name, Status: Skip, Detail: err.Error(),
				Fix: "score it by hand: systemd-analyze security " + unitName + " (packages systemd and applianced installed)"}}
		}
		return []Result{exposureResult(name, v, how)}
	}}
}

func exposureResult(name string, v float64, how string) Result {
	d := fmt.Sprintf("exposure %.1f (%s; at most %.1f expected)", v, how, MaxExposure)
	fix := "remove the drop-in that weakens the sandbox (`systemctl cat applianced` lists them)"
	switch {
	case v <= MaxExposure:
		return Result{Name: name, Status: Pass, Detail: d}
	case v <= 5:
		return Result{Name: name, Status: Warn, Detail: d, Fix: fix}
	}
	return Result{Name: name, Status: Fail, Detail: d, Fix: fix}
}

// scanner helper shared by /proc readers.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}
