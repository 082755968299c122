//go:build linux

package hardening

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func statusOf(rs []Result, name string) (Result, bool) {
	for _, r := range rs {
		if r.Name == name {
			return r, true
		}
	}
	return Result{}, false
}

// fakeProc writes sysctl values under a directory shaped like /proc.
func fakeProc(t *testing.T, vals map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for k, v := range vals {
		p := filepath.Join(root, "sys", strings.ReplaceAll(k, ".", "/"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestSysctlVerdicts(t *testing.T) {
	for _, tc := range []struct {
		key, val string
		want     Status
	}{
		{"net.ipv4.ip_forward", "0", Pass},
		{"net.ipv4.ip_forward", "1", Warn},
		{"kernel.kptr_restrict", "0", Warn},
		{"kernel.kptr_restrict", "2", Pass},
		{"kernel.dmesg_restrict", "0", Warn},
		{"kernel.dmesg_restrict", "1", Pass},
		{"kernel.unprivileged_bpf_disabled", "0", Fail},
		{"kernel.unprivileged_bpf_disabled", "2", Pass},
		{"net.ipv4.conf.all.rp_filter", "0", Fail},
		{"net.ipv4.conf.all.rp_filter", "1", Pass},
		{"net.ipv4.conf.all.rp_filter", "2", Warn},
		{"net.ipv4.conf.all.rp_filter", "garbage", Warn},
	} {
		t.Run(tc.key+"="+tc.val, func(t *testing.T) {
			root := fakeProc(t, map[string]string{tc.key: tc.val})
			r, ok := statusOf(SysctlCheck(root).Run(context.Background()), "sysctl "+tc.key)
			if !ok {
				t.Fatal("no result")
			}
			if r.Status != tc.want {
				t.Errorf("got %s (%s), want %s", r.Status, r.Detail, tc.want)
			}
			if r.Status != Pass && !strings.Contains(r.Fix, "sysctl -w "+tc.key+"=") {
				t.Errorf("fix got %q, want a sysctl -w line", r.Fix)
			}
		})
	}
}

type sysctlOut struct {
	Results []Result
	Err     string
}

func init() {
	// Runs in a fresh network namespace: sets the per-namespace sysctls
	// from HARDENING_SET (k=v,k=v) in the real /proc, then checks.
	children["sysctl"] = func() any {
		for _, kv := range strings.Split(os.Getenv("HARDENING_SET"), ",") {
			k, v, _ := strings.Cut(kv, "=")
			p := filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/"))
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return sysctlOut{Err: err.Error()}
			}
		}
		return sysctlOut{Results: SysctlCheck("/proc").Run(context.Background())}
	}
}

// TestSysctlCheckRealProc sets net.ipv4.ip_forward and rp_filter in a
// network namespace of the test's own (they are per namespace) and reads
// them back through the real /proc.
func TestSysctlCheckRealProc(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		set      string
		fwd, rpf Status
	}{
		{"net.ipv4.ip_forward=1,net.ipv4.conf.all.rp_filter=0", Warn, Fail},
		{"net.ipv4.ip_forward=0,net.ipv4.conf.all.rp_filter=1", Pass, Pass},
	} {
		t.Run(tc.set, func(t *testing.T) {
			t.Setenv("HARDENING_SET", tc.set)
			var out sysctlOut
			startChild(t, "sysctl", &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}, &out)
			if out.Err != "" {
				t.Fatal(out.Err)
			}
			for key, want := range map[string]Status{"net.ipv4.ip_forward": tc.fwd, "net.ipv4.conf.all.rp_filter": tc.rpf} {
				r, ok := statusOf(out.Results, "sysctl "+key)
				if !ok || r.Status != want {
					t.Errorf("%s got %+v, want %s", key, r, want)
				}
			}
		})
	}
	// The host's own values, read independently with procps sysctl(8).
	if _, err := exec.LookPath("sysctl"); err != nil {
		t.Skip("skipped: sysctl(8) (procps) not installed, cannot cross-check the host")
	}
	rs := SysctlCheck("/proc").Run(context.Background())
	for _, key := range []string{"kernel.kptr_restrict", "kernel.dmesg_restrict"} {
		b, err := exec.Command("sysctl", "-n", key).Output()
		if err != nil {
			t.Fatal(err)
		}
		r, _ := statusOf(rs, "sysctl "+key)
		if want := fmt.Sprintf("%s = %s", key, strings.TrimSpace(string(b))); !strings.HasPrefix(r.Detail, want) {
			t.Errorf("%s detail got %q, want prefix %q", key, r.Detail, want)
		}
	}
}

// TestFileModesCheck looks at real files with good and bad modes.
func TestFileModesCheck(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, filepath.Join(dir, "master.key"), 0o600)
	bad := writeFile(t, filepath.Join(dir, "signing.key"), 0o644)
	cfg := writeFile(t, filepath.Join(dir, "applianced.toml"), 0o666)
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	rs := FileModesCheck([]FileSpec{
		{Path: good, Kind: KeyFile},
		{Path: bad, Kind: KeyFile},
		{Path: cfg, Kind: ConfigFile},
		{Path: state, Kind: StateDir},
		{Path: filepath.Join(dir, "absent.key"), Kind: KeyFile, Optional: true},
		{Path: filepath.Join(dir, "needed.key"), Kind: KeyFile},
	}, -1).Run(context.Background())
	for _, tc := range []struct {
		path    string
		want    Status
		wantFix string
	}{
		{good, Pass, ""},
		{bad, Fail, "chmod 0600 " + bad},
		{cfg, Fail, "chmod 0640 " + cfg},
		{state, Fail, "chmod 0700 " + state},
		{filepath.Join(dir, "absent.key"), Skip, ""},
		{filepath.Join(dir, "needed.key"), Fail, "applianced init"},
	} {
		r, ok := statusOf(rs, "mode "+tc.path)
		if !ok || r.Status != tc.want || !strings.Contains(r.Fix, tc.wantFix) {
			t.Errorf("%s got %+v, want %s with fix containing %q", tc.path, r, tc.want, tc.wantFix)
		}
	}
}

// A key file the service's user does not own cannot be read by the service
// (its mode is owner-only): doctor fails it, with the chown that fixes it,
// rather than pass what root may read.
func TestFileModesCheckWantsTheServiceToOwnItsKeys(t *testing.T) {
	dir := t.TempDir()
	key := writeFile(t, filepath.Join(dir, "master.key"), 0o400) // root's, as a hand-run init made it
	service := 65534
	rs := FileModesCheck([]FileSpec{{Path: key, Kind: KeyFile}}, service).Run(context.Background())
	r, ok := statusOf(rs, "mode "+key)
	if !ok || r.Status != Fail || !strings.Contains(r.Detail, "cannot read it") || !strings.Contains(r.Fix, "chown applianced:applianced "+key) {
		t.Fatalf("a root-owned key with the service running as uid %d: got %+v, want a fail with the chown", service, r)
	}
	if err := os.Chown(key, service, service); err != nil {
		t.Fatal(err)
	}
	if r, _ := statusOf(FileModesCheck([]FileSpec{{Path: key, Kind: KeyFile}}, service).Run(context.Background()), "mode "+key); r.Status != Pass {
		t.Errorf("the service's own key: got %+v, want pass", r)
	}
}

func TestMasterKeyCheck(t *testing.T) {
	dir := t.TempDir()
	key := writeFile(t, filepath.Join(dir, "master.key"), 0o600)
	absent := filepath.Join(dir, "none.key")
	sealed := "[Service]\nLoadCredentialEncrypted=master.key:/etc/credstore.encrypted/applianced.master.key\n"
	for _, tc := range []struct {
		name, file, unit string
		want             Status
	}{
		{"sealed credential only", absent, sealed, Pass},
		{"sealed credential and plain copy", key, sealed, Warn},
		{"plain credential", absent, "LoadCredential=master.key:/root/k\n", Warn},
		{"plain file", key, "# LoadCredentialEncrypted=master.key:/x (a comment)\n", Warn},
		{"nothing", absent, "", Fail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := MasterKeyCheck(tc.file, tc.unit).Run(context.Background())[0]
			if r.Status != tc.want || (r.Status != Pass && r.Fix == "") {
				t.Errorf("got %+v, want %s with a fix", r, tc.want)
			}
		})
	}
}

func TestClock(t *testing.T) {
	for _, tc := range []struct {
		name   string
		state  int
		status int32
		want   Status
	}{
		{"synchronized", 0, 0, Pass},
		{"unsync flag", 0, 0x40, Warn},
		{"time error", 5, 0, Warn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := clockResult(tc.state, tc.status, 1000).Status; got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
	// The real kernel answers without an error (either verdict is honest).
	r := ClockCheck().Run(context.Background())[0]
	if strings.HasPrefix(r.Detail, "adjtimex") {
		t.Errorf("real adjtimex failed: %+v", r)
	}
}

func TestParseHexAddrPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		err  bool
	}{
		{"0100007F:1F90", "127.0.0.1:8080", false},
		{"00000000:0016", "0.0.0.0:22", false},
		{"00000000000000000000000000000000:01BB", "[::]:443", false},
		{"00000000000000000000000001000000:0050", "[::1]:80", false},
		{"0000000000000000FFFF00000100007F:0050", "127.0.0.1:80", false},
		{"0100007F", "", true},
		{"zz00007F:0050", "", true},
		{"0100007F:XYZ", "", true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			a, p, err := parseHexAddrPort(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("err got %v, want error %v", err, tc.err)
			}
			if err == nil {
				if got := netip.AddrPortFrom(a, p).String(); got != tc.want {
					t.Errorf("got %s, want %s", got, tc.want)
				}
			}
		})
	}
}

func FuzzParseProcNetLine(f *testing.F) {
	f.Add("   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0")
	f.Add("  1: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  0 0 99 2")
	f.Fuzz(func(t *testing.T, line string) {
		for _, p := range []string{"tcp", "udp"} {
			l, ok, err := parseProcNetLine(line, p, "0A")
			if err == nil && ok && !l.Addr.IsValid() {
				t.Errorf("accepted %q with an invalid address", line)
			}
		}
	})
}

type listenOut struct {
	Results []Result
	Port    int
	Err     string
}

func init() {
	// In a fresh network namespace: listen on 0.0.0.0 (TCP and UDP) and on
	// loopback, then check against an allow list opening only the TCP port.
	children["listen"] = func() any {
		if err := exec.Command("ip", "link", "set", "lo", "up").Run(); err != nil {
			return listenOut{Err: "ip link set lo up: " + err.Error()}
		}
		ln, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			return listenOut{Err: err.Error()}
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp4", "0.0.0.0:"+strconv.Itoa(port))
		if err != nil {
			return listenOut{Err: err.Error()}
		}
		lo, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return listenOut{Err: err.Error()}
		}
		rs := ListeningCheck("/proc", []PortRule{{Proto: "TCP", Port: port}}).Run(context.Background())
		ln.Close()
		pc.Close()
		lo.Close()
		return listenOut{Results: rs, Port: port}
	}
}

// TestListeningCheck opens real sockets in a namespace of the test's own.
func TestListeningCheck(t *testing.T) {
	requireRoot(t)
	var out listenOut
	startChild(t, "listen", &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}, &out)
	if out.Err != "" {
		t.Fatal(out.Err)
	}
	tcp, ok := statusOf(out.Results, fmt.Sprintf("listening tcp 0.0.0.0:%d", out.Port))
	if !ok || tcp.Status != Pass {
		t.Errorf("allowed tcp listener got %+v, want pass", tcp)
	}
	udp, ok := statusOf(out.Results, fmt.Sprintf("listening udp 0.0.0.0:%d", out.Port))
	if !ok || udp.Status != Warn || udp.Fix == "" {
		t.Errorf("udp listener outside the allow list got %+v, want warn with a fix", udp)
	}
	if !strings.Contains(udp.Detail, "(hardening.test)") {
		t.Errorf("udp detail got %q, want the owning process name", udp.Detail)
	}
	if len(out.Results) != 2 {
		t.Errorf("got %d results, want 2 (loopback ignored): %+v", len(out.Results), out.Results)
	}
}

func TestExposureResult(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want Status
	}{{1.7, Pass}, {2.5, Pass}, {2.6, Warn}, {9.6, Fail}} {
		if got := exposureResult("u", tc.v, "x").Status; got != tc.want {
			t.Errorf("exposure %.1f got %s, want %s", tc.v, got, tc.want)
		}
	}
	if _, err := ParseExposure([]byte("nothing here")); err == nil {
		t.Error("ParseExposure accepted output without a score")
	}
}

// TestUnitExposureOffline scores real unit files with the real
// systemd-analyze: an unprotected unit fails, the shipped one passes.
func TestUnitExposureOffline(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("skipped: systemd-analyze (package systemd) not installed")
	}
	bare := filepath.Join(t.TempDir(), "bare.service")
	if err := os.WriteFile(bare, []byte("[Service]\nExecStart=/bin/true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file string
		want Status
	}{{bare, Fail}, {"../systemd/applianced.service", Pass}} {
		rs := UnitExposureCheck("applianced-doctor-test-absent.service", tc.file).Run(context.Background())
		if rs[0].Status != tc.want {
			t.Errorf("%s got %+v, want %s", tc.file, rs[0], tc.want)
		}
	}
}
