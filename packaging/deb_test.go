package packaging

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/applianced/applianced/internal/config"
)

const testVersion = "0.0.1~test"

var (
	debOnce sync.Once
	debDir  string // removed by TestMain, even when the build failed
	debPath string
	debErr  error
)

// deb builds the package once per test binary with packaging/build (the
// same path as `make deb`).
func deb(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("skipped: dpkg-deb (Debian dpkg) not installed")
	}
	debOnce.Do(func() {
		var err error
		if debDir, err = os.MkdirTemp("", "applianced-deb-"); err != nil {
			debErr = err
			return
		}
		cmd := exec.Command("go", "run", "./packaging/build", "-version", testVersion, "-out", debDir)
		cmd.Dir = ".."
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			debErr = fmt.Errorf("packaging/build: %v\n%s", err, stderr.String())
			return
		}
		debPath = strings.TrimSpace(string(out))
	})
	if debErr != nil {
		t.Fatal(debErr)
	}
	return debPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if debDir != "" {
		os.RemoveAll(debDir)
	}
	os.Exit(code)
}

func dpkgDeb(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("dpkg-deb", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDebContents: every file the package ships, with its mode and owner.
func TestDebContents(t *testing.T) {
	listing := dpkgDeb(t, "-c", deb(t))
	got := map[string]string{} // path -> "mode owner/group"
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		got[strings.TrimPrefix(f[len(f)-1], ".")] = f[0] + " " + f[1]
	}
	for _, tc := range []struct{ path, want string }{
		{"/usr/bin/applianced", "-rwxr-xr-x root/root"},
		{"/lib/systemd/system/applianced.service", "-rw-r--r-- root/root"},
		{"/usr/lib/modules-load.d/applianced.conf", "-rw-r--r-- root/root"},
		{"/etc/applianced/", "drwxr-x--- root/applianced"},
		{"/etc/applianced/applianced.toml", "-rw-r----- root/applianced"},
		{"/usr/share/man/man8/applianced.8.gz", "-rw-r--r-- root/root"},
		{"/usr/share/bash-completion/completions/applianced", "-rw-r--r-- root/root"},
		{"/usr/share/doc/applianced/copyright", "-rw-r--r-- root/root"},
		{"/usr/share/doc/applianced/changelog.gz", "-rw-r--r-- root/root"},
		{"/usr/share/lintian/overrides/applianced", "-rw-r--r-- root/root"},
		{"/usr/share/applianced/wazuh/", "drwxr-xr-x root/root"},
	} {
		if got[tc.path] != tc.want {
			t.Errorf("%s got %q, want %q", tc.path, got[tc.path], tc.want)
		}
	}
	// Wazuh decoders and rules from packaging/wazuh, each one shipped.
	xmls, _ := filepath.Glob("wazuh/*.xml")
	if len(xmls) == 0 {
		t.Error("no packaging/wazuh/*.xml to ship")
	}
	for _, x := range xmls {
		p := "/usr/share/applianced/wazuh/" + filepath.Base(x)
		if got[p] != "-rw-r--r-- root/root" {
			t.Errorf("%s got %q, want shipped 0644", p, got[p])
		}
	}
	// Nothing private to the build or the repository.
	for p := range got {
		if strings.HasSuffix(p, ".deb") || strings.Contains(p, "_test") || strings.HasSuffix(p, ".key") || strings.Contains(p, "/var/lib/applianced") {
			t.Errorf("package ships %s", p)
		}
	}
}

// TestDebControl: the control fields and the one conffile.
func TestDebControl(t *testing.T) {
	d := deb(t)
	for field, want := range map[string]string{
		"Package": "applianced", "Version": testVersion, "Architecture": "amd64", "Section": "admin",
	} {
		if got := strings.TrimSpace(dpkgDeb(t, "-f", d, field)); got != want {
			t.Errorf("%s got %q, want %q", field, got, want)
		}
	}
	if deps := strings.TrimSpace(dpkgDeb(t, "-f", d, "Pre-Depends")); deps != "passwd" {
		t.Errorf("Pre-Depends got %q, want passwd (preinst runs useradd)", deps)
	}
	if got := strings.TrimSpace(dpkgDeb(t, "-I", d, "conffiles")); got != "/etc/applianced/applianced.toml" {
		t.Errorf("conffiles got %q, want only /etc/applianced/applianced.toml", got)
	}
	info := dpkgDeb(t, "-I", d)
	for _, s := range []string{"preinst", "postinst", "prerm", "postrm"} {
		if !regexp.MustCompile(`(?m)^\s+\d+ bytes,\s+\d+ lines\s+\*\s+` + s + `\s`).MatchString(info) {
			t.Errorf("maintainer script %s missing or not executable:\n%s", s, info)
		}
	}
}

// TestShippedConfigIsTheDefault: the conffile is packaging/applianced.toml,
// and the strict loader accepts it as shipped.
func TestShippedConfigIsTheDefault(t *testing.T) {
	dir := t.TempDir()
	dpkgDeb(t, "-x", deb(t), dir)
	shipped, err := os.ReadFile(filepath.Join(dir, "etc/applianced/applianced.toml"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("applianced.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(shipped, src) {
		t.Error("shipped config differs from packaging/applianced.toml")
	}
	if _, err := config.Parse("applianced.toml", shipped); err != nil {
		t.Errorf("the default config is rejected:\n%v", err)
	}
}

// TestDefaultConfigNamesNoSecret: secrets are named, never written.
func TestDefaultConfigNamesNoSecret(t *testing.T) {
	b, err := os.ReadFile("applianced.toml")
	if err != nil {
		t.Fatal(err)
	}
	bad := regexp.MustCompile(`(?im)^\s*#?\s*(password|bind_password|secret_value|client_secret|token)\s*=`)
	if m := bad.FindAllString(string(b), -1); len(m) > 0 {
		t.Errorf("default config carries secret values: %q", m)
	}
}

// TestMaintainerScripts: POSIX sh syntax, and the upgrade path never stops
// the service (so the firewall has no gap) while remove does.
func TestMaintainerScripts(t *testing.T) {
	for _, s := range []string{"preinst", "postinst", "prerm", "postrm"} {
		if out, err := exec.Command("sh", "-n", filepath.Join("scripts", s)).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", s, err, out)
		}
	}
	prerm, err := os.ReadFile("scripts/prerm")
	if err != nil {
		t.Fatal(err)
	}
	cases := caseArms(string(prerm))
	if arm := cases["upgrade|failed-upgrade"]; strings.Contains(arm, "stop") || strings.Contains(arm, "net down") {
		t.Errorf("prerm stops or takes the network down on upgrade:\n%s", arm)
	}
	if arm := cases["remove|deconfigure"]; !strings.Contains(arm, "applianced net down") || !strings.Contains(arm, "stop") {
		t.Errorf("prerm remove does not run net down and stop:\n%s", arm)
	}
	postinst, _ := os.ReadFile("scripts/postinst")
	for _, want := range []string{"applianced init", "applianced config check", "try-restart", "deb-systemd-helper enable"} {
		if !strings.Contains(string(postinst), want) {
			t.Errorf("postinst lacks %q", want)
		}
	}
	postrm, _ := os.ReadFile("scripts/postrm")
	purge := caseArms(string(postrm))["purge"]
	for _, want := range []string{"/var/lib/applianced", "/etc/applianced", "userdel applianced", "nft delete table inet applianced"} {
		if !strings.Contains(purge, want) {
			t.Errorf("postrm purge lacks %q", want)
		}
	}
}

// caseArms splits a maintainer script's `case "$1"` into its arms.
func caseArms(script string) map[string]string {
	arms := map[string]string{}
	re := regexp.MustCompile(`(?m)^([a-z|-]+)\)\n((?:.*\n)*?)\t;;`)
	for _, m := range re.FindAllStringSubmatch(script, -1) {
		arms[m[1]] = m[2]
	}
	return arms
}

// TestLintian: no error and no warning; each override explains itself.
func TestLintian(t *testing.T) {
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Skip("skipped: lintian not installed")
	}
	out, _ := exec.Command("lintian", "--tag-display-limit", "0", deb(t)).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "W: ") {
			t.Errorf("lintian: %s", line)
		}
	}
	ov, err := os.ReadFile("lintian-overrides")
	if err != nil {
		t.Fatal(err)
	}
	prevComment := false
	for _, line := range strings.Split(string(ov), "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
			prevComment = true
		case strings.TrimSpace(line) == "":
			// a blank line ends a comment's reach
			prevComment = false
		default:
			if !prevComment {
				t.Errorf("lintian override without a comment: %s", line)
			}
		}
	}
}

// TestManPageAndCompletion: generated from the binary's own help, they know
// every command it has.
func TestManPageAndCompletion(t *testing.T) {
	dir := t.TempDir()
	dpkgDeb(t, "-x", deb(t), dir)
	help, _ := exec.Command(filepath.Join(dir, "usr/bin/applianced"), "--help").CombinedOutput()
	var verbs []string
	for _, line := range strings.Split(string(help), "\n") {
		if m := regexp.MustCompile(`^  (\S+(?: \S+)*?)\s{2,}\S`).FindStringSubmatch(line); m != nil {
			verbs = append(verbs, m[1])
		}
	}
	if len(verbs) < 5 {
		t.Fatalf("got %d commands from --help, want the whole list:\n%s", len(verbs), help)
	}
	f, err := os.Open(filepath.Join(dir, "usr/share/man/man8/applianced.8.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	man, _ := io.ReadAll(zr)
	for _, v := range verbs {
		if !strings.Contains(string(man), "\n.B "+strings.ReplaceAll(v, "-", `\-`)+"\n") {
			t.Errorf("man page lacks command %q", v)
		}
	}
	if !strings.HasPrefix(string(man), ".TH APPLIANCED 8 ") || !strings.Contains(string(man), "\n.SH NAME\napplianced \\- ") {
		t.Error("man page header or NAME section malformed")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("skipped: bash not installed")
	}
	comp := filepath.Join(dir, "usr/share/bash-completion/completions/applianced")
	for _, tc := range []struct {
		words []string
		want  []string
	}{
		{[]string{"applianced", ""}, []string{"doctor", "net", "serve"}},
		{[]string{"applianced", "net", ""}, []string{"apply", "down", "plan"}},
		{[]string{"applianced", "doctor", "--"}, []string{"--config", "--json"}},
	} {
		script := fmt.Sprintf(`source %q; COMP_WORDS=(%s); COMP_CWORD=%d; _applianced; printf '%%s\n' "${COMPREPLY[@]}"`,
			comp, quoteWords(tc.words), len(tc.words)-1)
		out, err := exec.Command("bash", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("bash completion: %v\n%s", err, out)
		}
		for _, w := range tc.want {
			if !strings.Contains("\n"+string(out), "\n"+w+"\n") {
				t.Errorf("completing %q: got %q, want %s among them", tc.words, out, w)
			}
		}
	}
}

func quoteWords(ws []string) string {
	q := make([]string, len(ws))
	for i, w := range ws {
		q[i] = fmt.Sprintf("%q", w)
	}
	return strings.Join(q, " ")
}
