package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code = run(context.Background(), e, args)
	return code, out.String(), errb.String()
}

// Every verb answers -h with its usage and exit 0, as a sysadmin expects.
func TestEveryVerbHasHelp(t *testing.T) {
	for _, v := range verbs {
		t.Run(v.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, append(strings.Fields(v.name), "-h")...)
			if code != exitOK {
				t.Fatalf("applianced %s -h: exit %d, want 0", v.name, code)
			}
			if !strings.Contains(stderr, "Usage: applianced "+v.name) {
				t.Fatalf("applianced %s -h printed no usage line:\n%s", v.name, stderr)
			}
			if !strings.Contains(stderr, "Examples:") {
				t.Fatalf("applianced %s -h printed no examples:\n%s", v.name, stderr)
			}
		})
	}
}

func TestUnknownVerbAndBadFlagsAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {}, {"version", "--bogus"}, {"version", "extra"}, {"config", "check", "extra-arg"}, {"audit", "tail", "-n", "-5"}} {
		if code, _, _ := runCLI(t, args...); code != exitUsage {
			t.Errorf("applianced %v: exit %d, want 2", args, code)
		}
	}
}

func TestVersionNamesVersionCommitAndGo(t *testing.T) {
	code, out, _ := runCLI(t, "version")
	if code != exitOK || !strings.Contains(out, "applianced "+version) || !strings.Contains(out, "commit ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: exit %d, output %q", code, out)
	}
}

// init is idempotent and never overwrites a key or certificate.
func TestInitNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "") // runs init once
	files := []string{cfg.Vault.MasterKeyFile, cfg.Server.TLSCert, cfg.Server.TLSKey}
	before := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("init did not create %s: %v", f, err)
		}
		before[f] = b
	}
	for f, want := range map[string]os.FileMode{cfg.Vault.MasterKeyFile: 0o400, cfg.Server.TLSKey: 0o600, cfg.Server.StateDir: 0o700} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v (err %v), want %04o", f, fi.Mode().Perm(), err, want)
		}
	}
	code, out, stderr := runCLI(t, "init", "--config", cfg.Path)
	if code != exitOK {
		t.Fatalf("second init: exit %d: %s", code, stderr)
	}
	if strings.Count(out, "left unchanged") != 2 {
		t.Fatalf("second init should say the key and certificate were left unchanged:\n%s", out)
	}
	for _, f := range files {
		if b, _ := os.ReadFile(f); !bytes.Equal(b, before[f]) {
			t.Fatalf("second init changed %s", f)
		}
	}
}

func TestConfigCheckPrintsEveryProblemWithItsLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "applianced.toml")
	os.WriteFile(path, []byte("[server]\nlisten = 1\nlog_level = \"loud\"\n"), 0o600)
	code, _, stderr := runCLI(t, "config", "check", "--config", path)
	if code != exitFailure {
		t.Fatalf("config check of a broken file: exit %d, want 1", code)
	}
	for _, want := range []string{path + ":2: server.listen", path + ":3: server.log_level", "2 error(s)"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("output lacks %q:\n%s", want, stderr)
		}
	}
}
