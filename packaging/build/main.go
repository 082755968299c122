// Command build makes the applianced .deb: it compiles the binary, generates
// what the package ships beside it (man page and bash completion from the
// CLI's own help, copyright, changelog), stages the Wazuh files, and runs a
// pinned nfpm with packaging/nfpm.yaml.
//
//	go run ./packaging/build -version 0.1.0 -out dist
//
// Everything comes from this repository and the Go module proxy; nothing
// else is downloaded.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// nfpmModule is the pinned nfpm; `go run` fetches it through the module
// proxy once and caches it.
const nfpmModule = "github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.0"

// versionRE is what dpkg accepts for an upstream version without a Debian
// revision (the package is native).
var versionRE = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)

func main() {
	version := flag.String("version", "", "package version, e.g. 0.1.0 or 0.1.0~git20261125.abc1234")
	out := flag.String("out", "dist", "output directory for the .deb")
	bin := flag.String("bin", "", "use this applianced binary instead of building one")
	flag.Parse()
	if !versionRE.MatchString(*version) {
		fmt.Fprintf(os.Stderr, "build: -version %q: want digits first, then letters, digits, . + ~\n", *version)
		os.Exit(2)
	}
	deb, err := build(*version, *out, *bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		os.Exit(1)
	}
	fmt.Println(deb)
}

func build(version, out, bin string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	if out, err = filepath.Abs(out); err != nil {
		return "", err
	}
	stage := filepath.Join(out, "stage-"+version)
	if err := os.RemoveAll(stage); err != nil {
		return "", err
	}
	if err := os.MkdirAll(stage, 0o755); err != nil {
		return "", err
	}
	exe := filepath.Join(stage, "applianced")
	if bin != "" {
		if err := copyFile(bin, exe, 0o755); err != nil {
			return "", err
		}
	} else {
		cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
			"-ldflags", "-s -w -X main.version="+version, "-o", exe, "./cmd/applianced")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if err := run(cmd); err != nil {
			return "", err
		}
	}
	help, err := readHelp(exe)
	if err != nil {
		return "", err
	}
	date := buildDate()
	if err := writeGz(filepath.Join(stage, "applianced.8.gz"), manPage(help, version, date)); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(stage, "applianced.bash"), completion(help), 0o644); err != nil {
		return "", err
	}
	cl, err := changelog(root, version, date)
	if err != nil {
		return "", err
	}
	if err := writeGz(filepath.Join(stage, "changelog.gz"), cl); err != nil {
		return "", err
	}
	cp, err := copyright(exe)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(stage, "copyright"), cp, 0o644); err != nil {
		return "", err
	}
	if err := stageWazuh(root, filepath.Join(stage, "wazuh")); err != nil {
		return "", err
	}
	deb := filepath.Join(out, fmt.Sprintf("applianced_%s_amd64.deb", version))
	cmd := exec.Command("go", "run", nfpmModule, "pkg", "--packager", "deb",
		"--config", "packaging/nfpm.yaml", "--target", deb)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "VERSION="+version, "APPLIANCED_STAGE="+stage)
	if err := run(cmd); err != nil {
		return "", err
	}
	return deb, nil
}

func run(cmd *exec.Cmd) error {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, out.String())
	}
	return nil
}

// repoRoot is the directory of the module's go.mod.
func repoRoot() (string, error) {
	b, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(b))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run inside the applianced module")
	}
	return filepath.Dir(mod), nil
}

// buildDate is SOURCE_DATE_EPOCH when set (reproducible builds), else now.
func buildDate() time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var sec int64
		if _, err := fmt.Sscan(s, &sec); err == nil {
			return time.Unix(sec, 0).UTC()
		}
	}
	return time.Now().UTC()
}

// writeGz writes data gzip-compressed with no name or time in the header,
// as dh_compress does (gzip -9n).
func writeGz(path string, data []byte) error {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func copyFile(src, dst string, mode fs.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// changelog puts an entry for this build's version on top of
// packaging/changelog, unless that file already starts with it.
func changelog(root, version string, date time.Time) ([]byte, error) {
	base, err := os.ReadFile(filepath.Join(root, "packaging", "changelog"))
	if err != nil {
		return nil, err
	}
	if bytes.HasPrefix(base, []byte("applianced ("+version+")")) {
		return base, nil
	}
	head := fmt.Sprintf("applianced (%s) unstable; urgency=medium\n\n  * Build %s.\n\n -- applianced maintainers <maintainers@applianced.example>  %s\n\n",
		version, version, date.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
	return append([]byte(head), base...), nil
}

// stageWazuh copies the Wazuh decoders and rules from packaging/wazuh, and
// its README as documentation.
func stageWazuh(root, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	readme := filepath.Join(filepath.Dir(dst), "README.wazuh.md")
	if err := os.WriteFile(readme, []byte("Wazuh decoders and rules for applianced: /usr/share/applianced/wazuh/\n"), 0o644); err != nil {
		return err
	}
	src := filepath.Join(root, "packaging", "wazuh")
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == src {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if rel == "README.md" {
			// How to install the decoders and rules: documentation, so
			// it goes to /usr/share/doc/applianced/README.wazuh.md.
			return copyFile(p, filepath.Join(filepath.Dir(dst), "README.wazuh.md"), 0o644)
		}
		if !strings.HasSuffix(p, ".xml") {
			return nil // tests and tools stay in the repository
		}
		return copyFile(p, filepath.Join(dst, rel), 0o644)
	})
}
