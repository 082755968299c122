package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/applianced/applianced/audit"
)

// UpgradeResult is what Upgrade did.
type UpgradeResult struct {
	Path string `json:"path"`
	// Upgraded is false when the database was in format 2 already; it was
	// then only compacted.
	Upgraded    bool     `json:"upgraded"`
	Term        uint32   `json:"term"`     // the active keyring term after it
	Records     int      `json:"records"`  // records upgraded
	Versions    int      `json:"versions"` // versions re-encrypted
	NotUpgraded []string `json:"not_upgraded,omitempty"`
	BytesBefore int64    `json:"bytes_before"`
	BytesAfter  int64    `json:"bytes_after"`
}

// compactSuffix names the file a compaction writes before it renames it
// over the database.
const compactSuffix = ".compact-tmp"

// Upgrade upgrades the database at path, written before records carried a
// MAC (format 1), to format 2, which Open accepts, and then compacts it. It
// is the only way a format 1 database becomes usable: Open refuses one,
// because a format 1 file that shows up after the upgrade is an older copy
// put back, and whoever put it back could have edited its records.
//
// The database must not be in use: Upgrade holds the file's lock for the
// whole run (another process holding it makes Upgrade fail). The upgrade is
// one bbolt transaction, audited before it commits (a vault.unseal event
// with action vault.upgrade, by who, source cli); it trusts the records as
// it finds them, once. The file is then rewritten by bbolt's Compact into
// path+".compact-tmp", which is fsynced, given the database's owner and mode
// 0600, renamed over path, and the directory fsynced: the pages bbolt freed,
// which still held the format 1 keyring and records, do not survive. A
// database already in format 2 is only compacted, so running Upgrade again
// after it was interrupted finishes the job.
func Upgrade(ctx context.Context, path string, masterKey []byte, who audit.Actor, opts *Options) (UpgradeResult, error) {
	res := UpgradeResult{Path: path}
	if opts == nil || opts.Audit == nil {
		return res, errors.New("vault: Options.Audit is required: the upgrade is audited")
	}
	if len(masterKey) != MasterKeySize {
		return res, fmt.Errorf("vault: master key is %d bytes: want %d", len(masterKey), MasterKeySize)
	}
	v := &Vault{path: path, log: opts.Logger, audit: opts.Audit, keySource: opts.KeySource, master: bytes.Clone(masterKey)}
	defer clear(v.master)
	if v.log == nil {
		v.log = slog.Default()
	}
	if st, err := os.Stat(path); err == nil {
		res.BytesBefore = st.Size()
	}
	db, kr, err := openDB(path, v.master, openWrite)
	if err != nil {
		return res, err
	}
	defer func() { _ = db.Close() }()
	old := kr.format == keyringFormatV1
	next, rep, err := v.upgradeIfOld(ctx, who, "cli", "database", db, kr)
	if err != nil {
		kr.wipe()
		return res, err
	}
	// next shares kr's terms: wiping it clears them all.
	next.wipe()
	res.Upgraded, res.Term = old, next.active
	res.Records, res.Versions, res.NotUpgraded = rep.records, rep.versions, rep.skipped
	if err := compactInto(db, path); err != nil {
		if old {
			return res, fmt.Errorf("vault: %s is upgraded, but compacting it failed (run the upgrade again to compact it): %w", path, err)
		}
		return res, err
	}
	if st, err := os.Stat(path); err == nil {
		res.BytesAfter = st.Size()
	}
	v.log.Info("vault: compacted", "path", path, "bytes_before", res.BytesBefore, "bytes_after", res.BytesAfter)
	return res, nil
}

// OldFormat reports whether the closed database at path is marked as
// written before records carried a MAC, which Upgrade would upgrade. It
// reads only the marker (no key is needed, nothing is written); Open and
// Upgrade still check it against the keyring.
func OldFormat(path string) (bool, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return false, fmt.Errorf("vault: database %s is locked by another process (is applianced already running?)", path)
		}
		return false, fmt.Errorf("vault: %w", err)
	}
	defer db.Close()
	var old bool
	err = db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketMeta); meta != nil {
			old = bytes.Equal(meta.Get(keyFormat), formatV1)
		}
		return nil
	})
	return old, err
}

// compactInto rewrites the database src, open at path, into a new file
// holding only its live pages and renames that over path: what bbolt freed
// (older records, an older keyring) is gone from the file. A crash leaves
// path as it was or compacted, never half of it; the temporary file a crash
// leaves is removed by the next compaction.
func compactInto(src *bolt.DB, path string) (err error) {
	tmp := path + compactSuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("vault: compacting: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("vault: compacting into %s: %w", tmp, err)
	}
	if err := bolt.Compact(dst, src, 0); err != nil {
		_ = dst.Close()
		return fmt.Errorf("vault: compacting into %s: %w", tmp, err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("vault: compacting into %s: %w", tmp, err)
	}
	if err := syncOwnerMode(tmp, path); err != nil {
		return fmt.Errorf("vault: compacting into %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("vault: compacting: %w", err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("vault: compacting: %w", err)
	}
	return nil
}

// syncOwnerMode gives tmp the owner of path and mode 0600, and fsyncs it.
func syncOwnerMode(tmp, path string) error {
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := os.Stat(path); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			if mine, _ := f.Stat(); mine != nil {
				if m, ok := mine.Sys().(*syscall.Stat_t); ok && (m.Uid != sys.Uid || m.Gid != sys.Gid) {
					if err := f.Chown(int(sys.Uid), int(sys.Gid)); err != nil {
						return err
					}
				}
			}
		}
	}
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	return f.Sync()
}
