//go:build linux

package hardening

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkSysctlCheck reads the five sysctls from the real /proc.
func BenchmarkSysctlCheck(b *testing.B) {
	c := SysctlCheck("/proc")
	for b.Loop() {
		c.Run(context.Background())
	}
}

// BenchmarkListeningSockets parses the real /proc/net tables.
func BenchmarkListeningSockets(b *testing.B) {
	for b.Loop() {
		if _, err := ListeningSockets("/proc"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenKeyFile is the cost of opening a key with every check.
func BenchmarkOpenKeyFile(b *testing.B) {
	p := filepath.Join(b.TempDir(), "k")
	writeFileB(b, p)
	for b.Loop() {
		f, err := OpenKeyFile(p)
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}
