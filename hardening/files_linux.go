//go:build linux

package hardening

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sentinel errors for files the process refuses to trust.
var (
	// ErrNotRegular: the path is a symlink, directory, device or FIFO where a
	// regular file is expected (or not a directory where one is expected).
	ErrNotRegular = errors.New("hardening: not a regular file")
	// ErrUnsafeMode: group or other users may read a secret, or may write
	// the file or the directory holding it.
	ErrUnsafeMode = errors.New("hardening: unsafe file mode")
	// ErrUnsafeOwner: the file is owned by someone other than root or the
	// user the process runs as.
	ErrUnsafeOwner = errors.New("hardening: unsafe file owner")
)

// Kind is what a checked path holds, which decides the modes it may have.
type Kind int

const (
	// KeyFile holds secret material (master key, signing key, TLS key):
	// 0600 or 0400, no access at all for group or other.
	KeyFile Kind = iota
	// ConfigFile holds the configuration (no secret values, only names):
	// no write for group or other; group read is expected (0640).
	ConfigFile
	// StateDir is the state directory: 0700, no access for group or other.
	StateDir
)

func (k Kind) String() string {
	switch k {
	case KeyFile:
		return "key file"
	case ConfigFile:
		return "config file"
	case StateDir:
		return "state directory"
	}
	return "file"
}

// WantMode is the mode a freshly created file of kind k should have, used in
// fix hints.
func (k Kind) WantMode() fs.FileMode {
	switch k {
	case KeyFile:
		return 0o600
	case ConfigFile:
		return 0o640
	}
	return 0o700
}

// CheckKeyFile refuses a key file that is not a regular file (symlinks
// included), not owned by root or the current user, accessible to group or
// other, or inside a directory that group or other can write.
func CheckKeyFile(path string) error { return CheckPath(path, KeyFile) }

// CheckConfigFile refuses a config file that is not a regular file, not
// owned by root or the current user, or writable by group or other.
func CheckConfigFile(path string) error { return CheckPath(path, ConfigFile) }

// CheckPath checks path (without following a final symlink) against the
// rules for kind.
func CheckPath(path string, kind Kind) error {
	return checkPath(path, kind, []int{0, os.Geteuid()})
}

// checkPath is CheckPath with the owners allowed spelled out (doctor runs as
// root and checks files owned by the service user).
func checkPath(path string, kind Kind, owners []int) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("hardening: %s %s: %w", kind, path, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if err := checkInfo(path, kind, fi, st, owners); err != nil {
		return err
	}
	if kind == KeyFile {
		return checkParent(path, owners)
	}
	return nil
}

// OpenKeyFile opens a key file for reading without following symlinks and
// checks the opened file itself (not the name, which could be swapped after
// a check). The caller closes the file.
func OpenKeyFile(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%w: key file %s is a symlink", ErrNotRegular, path)
		}
		return nil, fmt.Errorf("hardening: key file %s: %w", path, &fs.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("hardening: key file %s: %w", path, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	owners := []int{0, os.Geteuid()}
	if err := checkInfo(path, KeyFile, fi, st, owners); err != nil {
		f.Close()
		return nil, err
	}
	if err := checkParent(path, owners); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// ownedBy fails closed: without an owner to look at, nobody owns it.
func ownedBy(st *syscall.Stat_t, owners []int) bool {
	if st == nil {
		return false
	}
	for _, u := range owners {
		if int(st.Uid) == u {
			return true
		}
	}
	return false
}

func checkInfo(path string, kind Kind, fi fs.FileInfo, st *syscall.Stat_t, owners []int) error {
	m := fi.Mode()
	switch kind {
	case StateDir:
		if !m.IsDir() {
			return fmt.Errorf("%w: %s %s is %s, want a directory", ErrNotRegular, kind, path, typeName(m))
		}
	default:
		if !m.IsRegular() {
			return fmt.Errorf("%w: %s %s is %s", ErrNotRegular, kind, path, typeName(m))
		}
	}
	if !ownedBy(st, owners) {
		return fmt.Errorf("%w: %s %s is owned by uid %d, want one of %v", ErrUnsafeOwner, kind, path, uidOf(st), owners)
	}
	perm := m.Perm()
	var bad fs.FileMode
	switch kind {
	case KeyFile, StateDir:
		bad = perm & 0o077
	case ConfigFile:
		bad = perm & 0o022
	}
	if m&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
		bad |= m & (fs.ModeSetuid | fs.ModeSetgid)
	}
	if bad != 0 {
		return fmt.Errorf("%w: %s %s has mode %04o, want %04o", ErrUnsafeMode, kind, path, perm, kind.WantMode())
	}
	return nil
}

// checkParent refuses a secret in a directory that group or other may
// write (they could replace the file), unless the directory is sticky and
// owned by root or us.
func checkParent(path string, owners []int) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("hardening: directory of %s: %w", path, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if !ownedBy(st, owners) {
		return fmt.Errorf("%w: directory %s holding a key is owned by uid %d", ErrUnsafeOwner, dir, uidOf(st))
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("%w: directory %s holding a key has mode %04o: others can replace the key", ErrUnsafeMode, dir, fi.Mode().Perm())
	}
	return nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "not a regular file"
}

func uidOf(st *syscall.Stat_t) int64 {
	if st == nil {
		return -1
	}
	return int64(st.Uid)
}
