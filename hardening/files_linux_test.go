//go:build linux

package hardening

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

type fileCase struct {
	name    string
	setup   func(t *testing.T, dir string) string // returns the path to check
	wantErr error
}

func writeFile(t *testing.T, path string, mode fs.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func mode(m fs.FileMode) func(*testing.T, string) string {
	return func(t *testing.T, dir string) string { return writeFile(t, filepath.Join(dir, "f"), m) }
}

func keyCases() []fileCase {
	return []fileCase{
		{"0600 accepted", mode(0o600), nil},
		{"0400 accepted", mode(0o400), nil},
		{"0644 refused", mode(0o644), ErrUnsafeMode},
		{"0640 refused", mode(0o640), ErrUnsafeMode},
		{"0604 refused", mode(0o604), ErrUnsafeMode},
		{"setuid refused", mode(0o600 | fs.ModeSetuid), ErrUnsafeMode},
		{"symlink refused", func(t *testing.T, dir string) string {
			target := writeFile(t, filepath.Join(dir, "real"), 0o600)
			link := filepath.Join(dir, "link")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, ErrNotRegular},
		{"directory refused", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "d")
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
			return p
		}, ErrNotRegular},
		{"fifo refused", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "fifo")
			if err := mkfifo(p); err != nil {
				t.Fatal(err)
			}
			return p
		}, ErrNotRegular},
		{"world-writable directory refused", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "open")
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, 0o777); err != nil {
				t.Fatal(err)
			}
			return writeFile(t, filepath.Join(d, "k"), 0o600)
		}, ErrUnsafeMode},
		{"sticky world-writable directory accepted", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "sticky")
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, 0o777|fs.ModeSticky); err != nil {
				t.Fatal(err)
			}
			return writeFile(t, filepath.Join(d, "k"), 0o600)
		}, nil},
		{"foreign owner refused", func(t *testing.T, dir string) string {
			if os.Geteuid() != 0 {
				t.Skip("skipped: needs root to chown a file to another user")
			}
			p := writeFile(t, filepath.Join(dir, "f"), 0o600)
			if err := os.Chown(p, 4242, 4242); err != nil {
				t.Fatal(err)
			}
			return p
		}, ErrUnsafeOwner},
		{"missing file refused", func(t *testing.T, dir string) string { return filepath.Join(dir, "absent") }, fs.ErrNotExist},
	}
}

// TestCheckKeyFile: a key readable by anyone but its owner, a key behind a
// symlink, in a directory others can write, or owned by someone else is
// refused.
func TestCheckKeyFile(t *testing.T) {
	for _, tc := range keyCases() {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.setup(t, t.TempDir())
			err := CheckKeyFile(p)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("CheckKeyFile got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestOpenKeyFile applies the same rules to the opened file, and returns
// its content only when they hold.
func TestOpenKeyFile(t *testing.T) {
	for _, tc := range keyCases() {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.setup(t, t.TempDir())
			f, err := OpenKeyFile(p)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("OpenKeyFile got %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				if f != nil {
					t.Error("OpenKeyFile returned a file with an error")
				}
				return
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			if err != nil || string(b) != "k" {
				t.Errorf("read got %q, %v, want \"k\"", b, err)
			}
		})
	}
}

// TestCheckConfigFile: the config may be group-readable (0640, group
// applianced) or even world-readable, never writable by group or other.
func TestCheckConfigFile(t *testing.T) {
	for _, tc := range []fileCase{
		{"0640 accepted", mode(0o640), nil},
		{"0600 accepted", mode(0o600), nil},
		{"0644 accepted", mode(0o644), nil},
		{"0660 refused", mode(0o660), ErrUnsafeMode},
		{"0666 refused", mode(0o666), ErrUnsafeMode},
		{"0642 refused", mode(0o642), ErrUnsafeMode},
		{"symlink refused", func(t *testing.T, dir string) string {
			target := writeFile(t, filepath.Join(dir, "real"), 0o640)
			link := filepath.Join(dir, "link")
			if err := os.Symlink(target, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, ErrNotRegular},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.setup(t, t.TempDir())
			err := CheckConfigFile(p)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("CheckConfigFile got %v, want %v", err, tc.wantErr)
			}
		})
	}
}
