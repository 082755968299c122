package vault

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// MasterKeySize is the length of the master key in bytes (AES-256).
const MasterKeySize = 32

// CredentialName is the name of the systemd credential that holds the master
// key (LoadCredential=master.key:... or LoadCredentialEncrypted=).
const CredentialName = "master.key"

// maxKeyFileBytes bounds what LoadMasterKey reads from a key file.
const maxKeyFileBytes = 4096

// CreateMasterKeyFile writes a new random master key to path with mode 0400,
// creating the parent directory with mode 0700 when it is missing. It never
// overwrites: when path exists it returns created=false and no error, and the
// existing file is left untouched.
func CreateMasterKeyFile(path string) (created bool, err error) {
	if path == "" {
		return false, errors.New("vault: creating the master key: no file name")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, fmt.Errorf("vault: creating the master key's directory: %w", err)
	}
	key := make([]byte, MasterKeySize)
	defer clear(key)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return false, fmt.Errorf("vault: generating the master key: %w", err)
	}
	// O_EXCL makes "never overwrite" atomic: a concurrent init loses cleanly.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("vault: creating the master key: %w", err)
	}
	_, werr := f.Write(key)
	if werr == nil {
		werr = f.Sync()
	}
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		// The umask may have taken bits away, never added; make it exact.
		werr = os.Chmod(path, 0o400)
	}
	if werr != nil {
		_ = os.Remove(path)
		return false, fmt.Errorf("vault: writing the master key %s: %w", path, werr)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return true, fmt.Errorf("vault: writing the master key %s: %w", path, err)
	}
	return true, nil
}

// LoadMasterKey returns the master key and where it came from. Sources, in
// order: the systemd credential $CREDENTIALS_DIRECTORY/master.key (so a site
// can use LoadCredentialEncrypted= with the TPM2 or the host key), then
// cfg.MasterKeyFile (DefaultMasterKeyFile when empty).
//
// A key file must be exactly 32 bytes (or 64 hex digits, optionally followed
// by a newline) and must not be readable or writable by group or others:
// LoadMasterKey refuses such a file rather than using a key that may have
// leaked. The caller should clear the key when done with it.
func LoadMasterKey(cfg Config) (key []byte, source string, err error) {
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		p := filepath.Join(dir, CredentialName)
		key, err := readKeyFile(p)
		switch {
		case err == nil:
			return key, "systemd-credential:" + p, nil
		case !errors.Is(err, fs.ErrNotExist):
			return nil, "", err
		}
	}
	p := cfg.masterKeyFile()
	key, err = readKeyFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", fmt.Errorf("vault: no master key: neither the systemd credential %q nor the file %s exists (run `applianced init`): %w",
			CredentialName, p, err)
	}
	if err != nil {
		return nil, "", err
	}
	return key, "file:" + p, nil
}

// readKeyFile reads and checks one key file.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("vault: reading the master key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("vault: reading the master key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("vault: master key %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("vault: master key %s has mode %04o, which lets group or others read or write it: want 0400 (or 0600); run `chmod 0400 %s` and consider the key leaked",
			path, perm, path)
	}
	buf := make([]byte, maxKeyFileBytes+1)
	defer clear(buf)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("vault: reading the master key %s: %w", path, err)
	}
	key, err := parseKey(buf[:n])
	if err != nil {
		return nil, fmt.Errorf("vault: master key %s: %w", path, err)
	}
	return key, nil
}

// parseKey accepts 32 raw bytes, or 64 hex digits with an optional trailing
// newline. It never echoes the content.
func parseKey(b []byte) ([]byte, error) {
	if len(b) == MasterKeySize {
		return bytes.Clone(b), nil
	}
	t := bytes.TrimRight(b, "\r\n")
	if len(t) == 2*MasterKeySize {
		key := make([]byte, MasterKeySize)
		if _, err := hex.Decode(key, t); err == nil {
			return key, nil
		}
		clear(key)
	}
	if len(b) > maxKeyFileBytes {
		return nil, fmt.Errorf("more than %d bytes: want exactly %d random bytes (or %d hex digits)", maxKeyFileBytes, MasterKeySize, 2*MasterKeySize)
	}
	return nil, fmt.Errorf("is %d bytes long: want exactly %d random bytes (or %d hex digits)", len(b), MasterKeySize, 2*MasterKeySize)
}

// syncDir fsyncs a directory so a new or renamed entry in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
