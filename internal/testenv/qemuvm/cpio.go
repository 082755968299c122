//go:build linux

package qemuvm

import (
	"fmt"
	"io"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// cpioWriter writes the "newc" format the kernel unpacks into its initramfs.
type cpioWriter struct {
	w    io.Writer
	ino  int
	dirs map[string]bool
	err  error
}

func newCpio(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1, dirs: map[string]bool{}} }

func (c *cpioWriter) entry(name string, mode uint32, data []byte, rmaj, rmin uint32) {
	if c.err != nil {
		return
	}
	nlink := 1
	if mode&unix.S_IFMT == unix.S_IFDIR {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.ino++
	buf := []byte(hdr + name + "\x00")
	buf = pad4(buf)
	buf = append(buf, data...)
	buf = pad4(buf)
	_, c.err = c.w.Write(buf)
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func (c *cpioWriter) dir(name string) {
	if c.dirs[name] {
		return
	}
	c.dirs[name] = true
	c.entry(name, unix.S_IFDIR|0o755, nil, 0, 0)
}

func (c *cpioWriter) mkdirAll(p string) {
	parts := strings.Split(path.Clean(p), "/")
	for i := range parts {
		c.dir(strings.Join(parts[:i+1], "/"))
	}
}

func (c *cpioWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, unix.S_IFREG|perm, data, 0, 0)
}

func (c *cpioWriter) node(name string, mode uint32, major, minor uint32) {
	c.entry(name, mode, nil, major, minor)
}

func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	return c.err
}
