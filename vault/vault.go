package vault

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/applianced/applianced/audit"
)

// Sentinel errors. Callers branch on these with errors.Is.
var (
	// ErrSealed means the master key does not open the keyring.
	ErrSealed = errors.New("vault is sealed: master key does not open the keyring")
	// ErrNotFound means no secret (or system key) has that name.
	ErrNotFound = errors.New("no such secret")
	// ErrInvalid means the caller's input was refused (name, type, value).
	ErrInvalid = errors.New("invalid input")
	// ErrDenied means the tool is not in the secret's allowed_tools.
	ErrDenied = errors.New("tool not allowed to use this secret")
	// ErrCorrupt means the database or a record in it is damaged.
	ErrCorrupt = errors.New("vault database is corrupted")
	// ErrClosed means the vault was closed.
	ErrClosed = errors.New("vault is closed")
	// ErrAudit means the audit journal refused the event, so the operation
	// was not done.
	ErrAudit = errors.New("audit journal unavailable")
	// ErrOldFormat means the database (or backup) was written before
	// records carried a MAC: Open refuses it, and only Upgrade, run on
	// purpose, turns it into a database Open accepts.
	ErrOldFormat = errors.New("written before records carried a MAC")
)

// Options are the dependencies of Open. Audit is required.
type Options struct {
	// Audit records every operation before it answers; a failed Append
	// fails the operation.
	Audit audit.Appender
	// Logger gets operational messages (never a value). Nil means
	// slog.Default().
	Logger *slog.Logger
	// KeySource says where the master key came from, for Status (the
	// source returned by LoadMasterKey).
	KeySource string
	// Recorded is the newest state of the vault the audit journal holds
	// (audit.LastVaultMarks, read before Open). When it is a vault.close
	// and the vault opens in another state, vault.db was changed while the
	// vault was closed: Open records vault.state_changed, with severity
	// high and both digests, and logs a warning; it opens the vault all the
	// same. A vault.unseal (no close after it: a crash or a kill, after
	// which any state is possible) compares nothing and is logged as such;
	// nil (no mark in what the journal read) compares nothing. The
	// opening's vault.unseal says which (state_check). See state.go.
	Recorded *audit.VaultMark
}

// Bucket names.
var (
	bucketMeta    = []byte("meta")
	bucketSecrets = []byte("secrets")
	bucketSystem  = []byte("system")

	keyFormat   = []byte("format")
	keyKeyring  = []byte("keyring")
	keyKeyCheck = []byte("key_check")
	// formatV2 is a database whose records carry a MAC; the authoritative
	// marker is the sealed keyring's format (2), which this one must match.
	formatV2 = []byte("applianced-vault-2")
	// formatV1 is a database written before records were authenticated;
	// Open refuses it and Upgrade upgrades it.
	formatV1 = []byte("applianced-vault-1")
)

// Namespaces bound into the additional data.
const (
	nsSecret = 's'
	nsSystem = 'k'
)

// Vault is an open secrets database. It is safe for concurrent use.
type Vault struct {
	path      string
	cfg       Config
	log       *slog.Logger
	audit     audit.Appender
	keySource string
	writes    chan *writeReq // to the committer; see commit.go
	quit      chan struct{}  // closed by Close: the committer stops

	names [256]sync.Mutex // serializes writers of one name (by hash)

	mu     sync.RWMutex // guards the fields below; held shared by every operation
	db     *bolt.DB
	kr     *keyring
	master []byte
	closed bool

	stateCheck StateCheck // set by Open, read-only after
}

// Open opens (or creates) the vault database at path with the master key.
// A new database gets a keyring with one term, sealed by masterKey. An
// existing one is unsealed: a key that does not open it gives ErrSealed and
// nothing is written. A damaged file gives an error wrapping ErrCorrupt that
// names it. A database written before records carried a MAC gives an error
// wrapping ErrOldFormat, audited, and is left as it is: Open never upgrades
// (see Upgrade). Open copies masterKey; the caller may clear its own copy.
func Open(ctx context.Context, path string, masterKey []byte, cfg Config, opts *Options) (*Vault, error) {
	if opts == nil || opts.Audit == nil {
		return nil, errors.New("vault: Options.Audit is required: every operation is audited")
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("vault: config: %w", errs[0])
	}
	if len(masterKey) != MasterKeySize {
		return nil, fmt.Errorf("vault: master key is %d bytes: want %d", len(masterKey), MasterKeySize)
	}
	v := &Vault{
		path:      path,
		cfg:       cfg,
		log:       opts.Logger,
		audit:     opts.Audit,
		keySource: opts.KeySource,
		writes:    make(chan *writeReq, 256),
		quit:      make(chan struct{}),
		master:    bytes.Clone(masterKey),
	}
	if v.log == nil {
		v.log = slog.Default()
	}
	db, kr, err := openDB(path, v.master, openCreate)
	if err == nil && kr.format == keyringFormatV1 {
		// Never upgraded here: a format 1 file that shows up after the
		// upgrade is an older copy put back, whose records anyone who
		// could write the file may have edited. Upgrade is run on purpose.
		kr.wipe()
		_ = db.Close()
		err = oldFormatError(path)
	}
	if err != nil {
		clear(v.master)
		reason := ""
		switch {
		case errors.Is(err, ErrSealed):
			reason = ErrSealed.Error()
		case errors.Is(err, ErrOldFormat):
			reason = "the database was " + ErrOldFormat.Error() + ": refused, not upgraded (`applianced vault upgrade` not run yet, or an older copy put back)"
		}
		if reason != "" {
			v.appendEvent(ctx, &audit.Event{Type: "vault.unseal", Severity: audit.SeverityHigh,
				Target: path, Outcome: audit.OutcomeFailure, Reason: reason,
				Details: map[string]string{"key_source": v.keySource}})
		}
		return nil, err
	}
	state, err := stateDigest(db)
	if err != nil {
		kr.wipe()
		_ = db.Close()
		clear(v.master)
		return nil, fmt.Errorf("vault: reading %s: %w", path, err)
	}
	v.db, v.kr = db, kr
	go v.committer()
	// The change is recorded before the opening, so that an opening the
	// journal then refuses still leaves it (the next start compares with
	// the same close again).
	if err := v.checkState(ctx, opts.Recorded, state); err != nil {
		v.closeQuietly()
		return nil, err
	}
	if err := v.appendEvent(ctx, &audit.Event{Type: "vault.unseal", Target: path, Outcome: audit.OutcomeSuccess,
		Details: map[string]string{"key_source": v.keySource, "term": fmt.Sprint(kr.active), DetailState: state,
			DetailStateCheck: v.stateCheck.Result}}); err != nil {
		v.closeQuietly()
		return nil, err
	}
	v.log.Info("vault: unsealed", "path", path, "key_source", v.keySource, "term", kr.active)
	return v, nil
}

// oldFormatError is Open's refusal of a format 1 database at path.
func oldFormatError(path string) error {
	return fmt.Errorf("vault: database %s was %w (format %q), so it is not opened; it is not upgraded on its own either. "+
		"If this release was just installed over an earlier one, stop the daemon and run `applianced vault upgrade` once: "+
		"it trusts the file as it is now. If that was done already, this file is an older copy put back by someone who "+
		"can write it: do not upgrade it; put a backup taken since the upgrade in its place (mode 0600, owned by the "+
		"service user) and start again", path, ErrOldFormat, formatV1)
}

// openMode says how openDB opens a file.
type openMode int

const (
	openCreate openMode = iota // read-write; a missing or empty file becomes a new vault
	openWrite                  // read-write; the file must be a vault
	openRead                   // read-only; the file must be a vault
)

// openDB opens the bbolt file, checks it, and unseals (or, with openCreate
// and a new file, initializes) the keyring.
func openDB(path string, master []byte, mode openMode) (db *bolt.DB, kr *keyring, err error) {
	create := mode == openCreate
	if create {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, nil, fmt.Errorf("vault: creating the state directory: %w", err)
		}
	}
	st, err := os.Stat(path)
	switch {
	case err == nil:
		if !st.Mode().IsRegular() {
			return nil, nil, fmt.Errorf("vault: %s is not a regular file", path)
		}
		if perm := st.Mode().Perm(); perm&0o077 != 0 {
			return nil, nil, fmt.Errorf("vault: database %s has mode %04o: want 0600 (run `chmod 0600 %s`)", path, perm, path)
		}
	case errors.Is(err, fs.ErrNotExist) && create:
	default:
		return nil, nil, fmt.Errorf("vault: %w", err)
	}
	if err := preflight(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("vault: database %s: %w: %v", path, ErrCorrupt, err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	var file *os.File // bbolt's, so a panic inside bolt.Open cannot leak it (and its lock)
	defer func() {
		// bbolt panics on some damaged pages; a damaged file is an error.
		if p := recover(); p != nil {
			if db != nil {
				_ = db.Close()
			} else if file != nil {
				// bbolt's mapping of the file outlives the descriptor and
				// keeps its lock: drop the lock explicitly.
				_ = syscall.Flock(int(file.Fd()), syscall.LOCK_UN)
				_ = file.Close()
			}
			db, kr, err = nil, nil, fmt.Errorf("vault: database %s: %w: %v", path, ErrCorrupt, p)
		}
	}()
	bopts := &bolt.Options{Timeout: 2 * time.Second, ReadOnly: mode == openRead,
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, mode)
			file = f
			return f, err
		}}
	db, err = bolt.Open(path, 0o600, bopts)
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, nil, fmt.Errorf("vault: database %s is locked by another process (is applianced already running?)", path)
		}
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return nil, nil, fmt.Errorf("vault: %w", err)
		}
		return nil, nil, fmt.Errorf("vault: database %s: %w: %v", path, ErrCorrupt, err)
	}
	fail := func(e error) (*bolt.DB, *keyring, error) {
		_ = db.Close()
		return nil, nil, e
	}
	if err := checkDB(db); err != nil {
		return fail(fmt.Errorf("vault: database %s: %w: %v", path, ErrCorrupt, err))
	}
	var sealed, check, format []byte
	var fresh bool
	err = db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty {
				return errors.New("it has no vault metadata (not a vault database?)")
			}
			fresh = true
			return nil
		}
		format = bytes.Clone(meta.Get(keyFormat))
		if !bytes.Equal(format, formatV2) && !bytes.Equal(format, formatV1) {
			return fmt.Errorf("unknown format %q", format)
		}
		if tx.Bucket(bucketSecrets) == nil || tx.Bucket(bucketSystem) == nil {
			return errors.New("a bucket is missing")
		}
		sealed = bytes.Clone(meta.Get(keyKeyring))
		check = bytes.Clone(meta.Get(keyKeyCheck))
		return nil
	})
	if err != nil {
		return fail(fmt.Errorf("vault: database %s: %w: %v", path, ErrCorrupt, err))
	}
	if fresh {
		if !create {
			return fail(fmt.Errorf("vault: database %s: %w: it is empty", path, ErrCorrupt))
		}
		kr, err = initDB(db, master)
		if err != nil {
			return fail(fmt.Errorf("vault: initializing %s: %w", path, err))
		}
		return db, kr, nil
	}
	kr, err = openKeyring(master, sealed)
	if err != nil {
		if !hmac.Equal(check, keyCheck(master)) {
			return fail(fmt.Errorf("vault: %s: %w", path, ErrSealed))
		}
		return fail(fmt.Errorf("vault: database %s: %w: the master key is right but the keyring does not open: %v", path, ErrCorrupt, err))
	}
	// The keyring's format is authenticated; the marker beside it is not,
	// but must agree: once a database is upgraded, it cannot be made to look
	// like one that still needs upgrading (which would trust its records).
	if old := bytes.Equal(format, formatV1); old != (kr.format == keyringFormatV1) {
		kr.wipe()
		return fail(fmt.Errorf("vault: database %s: %w: its format marker %q does not match its keyring (format %d): refused",
			path, ErrCorrupt, format, kr.format))
	}
	return db, kr, nil
}

// checkDB runs bbolt's consistency check over the whole file and reports
// the first five problems. The check's channel is drained to its end: the
// checker goroutine reads the transaction until then, so leaving early
// would close the transaction under it (a race, and a goroutine blocked on
// the channel for good).
func checkDB(db *bolt.DB) error {
	return db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			if len(errs) < 5 {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// initDB writes the buckets and a new sealed keyring into an empty database.
func initDB(db *bolt.DB, master []byte) (*keyring, error) {
	kr, err := newKeyring(time.Now())
	if err != nil {
		return nil, err
	}
	sealed, err := sealKeyring(master, kr)
	if err != nil {
		kr.wipe()
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		for _, b := range [][]byte{bucketSecrets, bucketSystem} {
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		if err := meta.Put(keyFormat, formatV2); err != nil {
			return err
		}
		if err := meta.Put(keyKeyCheck, keyCheck(master)); err != nil {
			return err
		}
		return meta.Put(keyKeyring, sealed)
	})
	if err != nil {
		kr.wipe()
		return nil, err
	}
	return kr, nil
}

// Close closes the database and clears the keys held in memory.
func (v *Vault) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	// The state it closes in: the next Open's must be the same, unless
	// someone changed the file meanwhile. No write runs under v.mu held
	// exclusively. A journal that refuses it only costs that comparison.
	if state, err := stateDigest(v.db); err != nil {
		v.log.Error("vault: reading the state to record at close", "err", err)
	} else if _, err := v.audit.Append(context.Background(), &audit.Event{Type: "vault.close", Target: v.path, Outcome: audit.OutcomeSuccess,
		Details: map[string]string{DetailState: state}}); err != nil {
		v.log.Error("vault: recording the state it closes in", "err", err)
	}
	return v.closeLocked()
}

// closeQuietly closes a vault whose opening is refused: nothing to record.
func (v *Vault) closeQuietly() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.closed {
		_ = v.closeLocked()
	}
}

// closeLocked closes the vault; the caller holds v.mu.
func (v *Vault) closeLocked() error {
	v.closed = true
	close(v.quit)
	v.kr.wipe()
	v.kr = nil
	clear(v.master)
	err := v.db.Close()
	if err != nil {
		return fmt.Errorf("vault: closing %s: %w", v.path, err)
	}
	return nil
}

// Path returns the database's file name.
func (v *Vault) Path() string { return v.path }

// rlock takes the shared lock and fails when the vault is closed.
func (v *Vault) rlock() error {
	v.mu.RLock()
	if v.closed {
		v.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// nameLock returns the writer lock of a name.
func (v *Vault) nameLock(ns byte, name string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte{ns})
	h.Write([]byte(name))
	return &v.names[h.Sum32()%uint32(len(v.names))]
}

// appendEvent records e; its error (wrapping ErrAudit) fails the operation.
func (v *Vault) appendEvent(ctx context.Context, e *audit.Event) error {
	if _, err := v.audit.Append(ctx, e); err != nil {
		v.log.Error("vault: audit append failed; operation refused", "event", e.Type, "target", e.Target, "err", err)
		return fmt.Errorf("vault: %w: %w", ErrAudit, err)
	}
	return nil
}

// Reconfigure applies a reloaded [vault] section: keep_versions counts from
// the next write on. master_key_file is read only at Open, so a new one
// takes effect at the next start.
func (v *Vault) Reconfigure(cfg Config) error {
	if errs := cfg.Validate(); len(errs) > 0 {
		return fmt.Errorf("vault: config: %w", errs[0])
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.cfg.KeepVersions = cfg.KeepVersions
	return nil
}
