//go:build linux

package hardening

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func mkfifo(path string) error { return unix.Mkfifo(path, 0o600) }

func writeFileB(b *testing.B, path string) {
	b.Helper()
	if err := os.WriteFile(path, []byte("k"), 0o600); err != nil {
		b.Fatal(err)
	}
}
