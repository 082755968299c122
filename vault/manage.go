package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
)

// MaxRestoreBytes bounds a backup that Restore accepts.
const MaxRestoreBytes = 1 << 30

// Status describes the open vault.
type Status struct {
	Sealed          bool      `json:"sealed"` // always false for an open vault; the daemon reports a vault it could not unseal
	KeySource       string    `json:"key_source"`
	Path            string    `json:"path"`
	Term            uint32    `json:"term"`  // the keyring term new writes use
	Terms           int       `json:"terms"` // terms in the keyring (older ones still decrypt)
	TermCreated     time.Time `json:"term_created"`
	Secrets         int       `json:"secrets"`
	Versions        int       `json:"versions"`          // kept versions of all secrets
	OldTermVersions int       `json:"old_term_versions"` // versions (secrets and system keys) under an older term
	SystemKeys      int       `json:"system_keys"`
	KeepVersions    int       `json:"keep_versions"`
	SizeBytes       int64     `json:"size_bytes"`
	// Refused counts the records (secrets and system keys) that are
	// refused; they are not in the counts above. RefusedRecords names the
	// first maxRefusedNamed of them ("secret:NAME: why", "system key:NAME:
	// why").
	Refused        int      `json:"refused"`
	RefusedRecords []string `json:"refused_records,omitempty"`
}

// maxRefusedNamed bounds the refused records Status names.
const maxRefusedNamed = 100

// Status reports the keyring and the counts. A refused record is counted
// in Refused, and named, rather than failing the status.
func (v *Vault) Status(ctx context.Context, who audit.Actor) (Status, error) {
	ev := &audit.Event{Type: "admin.call", Actor: who, Action: "vault.status", Source: "unix"}
	if err := v.rlock(); err != nil {
		return Status{}, v.refuse(ctx, ev, fmt.Errorf("vault: %w", err))
	}
	st := Status{
		KeySource:    v.keySource,
		Path:         v.path,
		Term:         v.kr.active,
		Terms:        len(v.kr.terms),
		TermCreated:  time.Unix(0, v.kr.activeTerm().created).UTC(),
		KeepVersions: v.cfg.keepVersions(),
	}
	err := v.db.View(func(tx *bolt.Tx) error {
		st.SizeBytes = tx.Size()
		for _, b := range []struct {
			ns     byte
			bucket []byte
		}{{nsSecret, bucketSecrets}, {nsSystem, bucketSystem}} {
			err := tx.Bucket(b.bucket).ForEach(func(k, raw []byte) error {
				r, err := checkedRecord(v.kr, b.ns, string(k), raw)
				if err != nil {
					st.Refused++
					if len(st.RefusedRecords) < maxRefusedNamed {
						st.RefusedRecords = append(st.RefusedRecords, kind(b.ns)+":"+string(k)+": "+refusal(err))
					}
					return nil
				}
				if b.ns == nsSecret {
					st.Secrets++
					st.Versions += len(r.versions)
				} else {
					st.SystemKeys++
				}
				for _, ver := range r.versions {
					if ver.term != st.Term {
						st.OldTermVersions++
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	v.mu.RUnlock()
	if err != nil {
		return Status{}, v.refuse(ctx, ev, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	ev.Details = map[string]string{"term": strconv.FormatUint(uint64(st.Term), 10), "secrets": strconv.Itoa(st.Secrets)}
	if st.Refused > 0 {
		ev.Details["refused"] = strconv.Itoa(st.Refused)
	}
	if err := v.appendEvent(ctx, ev); err != nil {
		return Status{}, err
	}
	return st, nil
}

// RekeyResult is what Rekey did.
type RekeyResult struct {
	Term        uint32 `json:"term"`        // the new active term
	Reencrypted int    `json:"reencrypted"` // versions moved to the new term
}

// Rekey adds a new term to the keyring and makes it the one new writes use;
// older terms keep decrypting what they sealed. With reencrypt, every
// version of every secret and system key under an older term is then
// re-encrypted under the new one, online, one secret at a time (the old
// terms stay in the keyring, so backups taken before still open).
func (v *Vault) Rekey(ctx context.Context, who audit.Actor, reencrypt bool) (RekeyResult, error) {
	ev := &audit.Event{Type: "vault.rekey", Actor: who, Action: "vault.rekey", Source: "unix", Severity: audit.SeverityWarn,
		Details: map[string]string{"reencrypt": strconv.FormatBool(reencrypt)}}
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return RekeyResult{}, v.refuse(ctx, ev, fmt.Errorf("vault: %w", ErrClosed))
	}
	next, err := v.kr.withNewTerm(time.Now())
	var sealed []byte
	if err == nil {
		sealed, err = sealKeyring(v.master, next)
	}
	if err != nil {
		v.mu.Unlock()
		return RekeyResult{}, v.refuse(ctx, ev, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	ev.Details["term"] = strconv.FormatUint(uint64(next.active), 10)
	if err := v.appendEvent(ctx, ev); err != nil {
		clear(next.activeTerm().key)
		v.mu.Unlock()
		return RekeyResult{}, err
	}
	err = v.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyKeyring, sealed) })
	if err != nil {
		clear(next.activeTerm().key)
		v.mu.Unlock()
		err = fmt.Errorf("vault: writing the new keyring: %w", err)
		v.recordFailure(ctx, ev, err)
		return RekeyResult{}, err
	}
	// The old keyring shares its terms with next: drop it, do not wipe it.
	v.kr = next
	v.mu.Unlock()
	v.log.Info("vault: rekeyed", "term", next.active)

	res := RekeyResult{Term: next.active}
	if !reencrypt {
		return res, nil
	}
	n, err := v.reencryptAll(ctx)
	res.Reencrypted = n
	rev := &audit.Event{Type: "vault.rekey", Actor: who, Action: "vault.reencrypt", Source: "unix", Outcome: audit.OutcomeSuccess,
		Details: map[string]string{"term": strconv.FormatUint(uint64(next.active), 10), "versions": strconv.Itoa(n)}}
	if err != nil {
		rev.Outcome, rev.Reason = audit.OutcomeFailure, err.Error()
	}
	if aerr := v.appendEvent(ctx, rev); aerr != nil && err == nil {
		err = aerr
	}
	return res, err
}

// reencryptAll moves every version under an older term to the active term.
func (v *Vault) reencryptAll(ctx context.Context) (int, error) {
	total := 0
	for _, ns := range []struct {
		ns     byte
		bucket []byte
	}{{nsSecret, bucketSecrets}, {nsSystem, bucketSystem}} {
		var names []string
		if err := v.rlock(); err != nil {
			return total, fmt.Errorf("vault: %w", err)
		}
		err := v.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(ns.bucket).ForEach(func(k, _ []byte) error {
				names = append(names, string(k))
				return nil
			})
		})
		v.mu.RUnlock()
		if err != nil {
			return total, err
		}
		for _, name := range names {
			if err := ctx.Err(); err != nil {
				return total, fmt.Errorf("vault: re-encryption stopped: %w", err)
			}
			n, err := v.reencryptOne(ns.ns, ns.bucket, name)
			total += n
			if err != nil {
				return total, err
			}
		}
	}
	return total, nil
}

// reencryptOne re-encrypts the old-term versions of one record.
func (v *Vault) reencryptOne(ns byte, bucket []byte, name string) (int, error) {
	l := v.nameLock(ns, name)
	l.Lock()
	defer l.Unlock()
	if err := v.rlock(); err != nil {
		return 0, fmt.Errorf("vault: %w", err)
	}
	defer v.mu.RUnlock()
	var old []byte
	err := v.db.View(func(tx *bolt.Tx) error {
		old = bytes.Clone(tx.Bucket(bucket).Get([]byte(name)))
		return nil
	})
	if err != nil || old == nil { // deleted meanwhile
		return 0, err
	}
	rec, err := checkedRecord(v.kr, ns, name, old)
	if err != nil {
		return 0, err
	}
	active := v.kr.activeTerm()
	n := 0
	for i := range rec.versions {
		ver := &rec.versions[i]
		if ver.term == active.id {
			continue
		}
		plain, err := openVersion(v.kr, ns, name, rec.typ, ver)
		if err != nil {
			return 0, err
		}
		nv, err := seal(active, ns, name, rec.typ, ver.n, plain, time.Unix(0, ver.created))
		clear(plain)
		if err != nil {
			return 0, err
		}
		*ver = nv
		n++
	}
	if n == 0 {
		return 0, nil
	}
	v.kr.sealRecord(ns, name, rec)
	enc := rec.encode()
	err = v.write(v.db, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if !bytes.Equal(b.Get([]byte(name)), old) {
			return errConflict
		}
		return b.Put([]byte(name), enc)
	})
	if err != nil {
		return 0, fmt.Errorf("vault: re-encrypting %q: %w", name, err)
	}
	return n, nil
}

// Backup writes a consistent snapshot of the database to w while the vault
// keeps serving. The snapshot is as encrypted as the database: it opens only
// with the master key. It returns the bytes written.
func (v *Vault) Backup(ctx context.Context, who audit.Actor, w io.Writer) (int64, error) {
	ev := &audit.Event{Type: "vault.backup", Actor: who, Action: "vault.backup", Source: "unix"}
	if err := v.rlock(); err != nil {
		return 0, v.refuse(ctx, ev, fmt.Errorf("vault: %w", err))
	}
	defer v.mu.RUnlock()
	tx, err := v.db.Begin(false)
	if err != nil {
		return 0, v.refuse(ctx, ev, fmt.Errorf("vault: backup: %w", err))
	}
	defer func() { _ = tx.Rollback() }()
	ev.Outcome = audit.OutcomeSuccess
	ev.Details = map[string]string{"bytes": strconv.FormatInt(tx.Size(), 10), "term": strconv.FormatUint(uint64(v.kr.active), 10)}
	if err := v.appendEvent(ctx, ev); err != nil {
		return 0, err
	}
	n, err := tx.WriteTo(w)
	if err != nil {
		err = fmt.Errorf("vault: writing the backup: %w", err)
		v.recordFailure(ctx, ev, err)
		return n, err
	}
	return n, nil
}

// RestoreResult describes a restored database.
type RestoreResult struct {
	Bytes      int64  `json:"bytes"`
	Secrets    int    `json:"secrets"`
	SystemKeys int    `json:"system_keys"`
	Term       uint32 `json:"term"`
	Previous   string `json:"previous"` // where the replaced database was kept
	// Upgraded says the backup was written before records carried a MAC
	// (restored only with RestoreOptions.UpgradeOldFormat): its records
	// were trusted as found, once, and now carry one, re-encrypted under a
	// new term (Term).
	Upgraded bool `json:"upgraded,omitempty"`
	// NotUpgraded names the records of such a backup that did not decode
	// or decrypt: they were left as they were and are refused until
	// deleted ("secret:NAME", "system key:NAME").
	NotUpgraded []string `json:"not_upgraded,omitempty"`
}

// RestoreOptions are the choices of Restore. Nil means the defaults.
type RestoreOptions struct {
	// UpgradeOldFormat accepts a backup written before records carried a
	// MAC (format 1). Its allowed_tools and versions cannot be checked:
	// whoever could write the backup could have edited them, and they are
	// trusted as found. Without it such a backup is refused with
	// ErrOldFormat.
	UpgradeOldFormat bool
}

// Restore replaces the database with a backup read from r. The backup must
// pass bbolt's consistency check and open with the current master key, and
// every version in it must decrypt; otherwise nothing changes (ErrSealed for
// another master key, ErrCorrupt for a damaged file). A backup written
// before records carried a MAC is refused (ErrOldFormat) unless
// opts.UpgradeOldFormat is set; it is then upgraded (audited as
// vault.upgrade) and compacted before it replaces the database. The
// replaced database is kept beside it as vault.db.before-restore. System
// keys come back as they were in the backup too; components that loaded
// theirs at start keep using them until the daemon restarts.
func (v *Vault) Restore(ctx context.Context, who audit.Actor, r io.Reader, opts *RestoreOptions) (RestoreResult, error) {
	ev := &audit.Event{Type: "vault.restore", Actor: who, Action: "vault.restore", Source: "unix", Severity: audit.SeverityHigh}
	if opts == nil {
		opts = &RestoreOptions{}
	}
	tmp, res, err := v.stageRestore(ctx, who, r, opts)
	if tmp != "" {
		defer os.Remove(tmp)
	}
	if err != nil {
		return res, v.refuse(ctx, ev, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	ev.Details = map[string]string{"bytes": strconv.FormatInt(res.Bytes, 10), "secrets": strconv.Itoa(res.Secrets),
		"system_keys": strconv.Itoa(res.SystemKeys), "term": strconv.FormatUint(uint64(res.Term), 10)}
	if res.Upgraded {
		ev.Details["upgraded"] = "true"
	}
	if err := v.appendEvent(ctx, ev); err != nil {
		return RestoreResult{}, err
	}
	term, err := v.swap(tmp, res.Previous)
	if err != nil {
		v.recordFailure(ctx, ev, err)
		return RestoreResult{}, err
	}
	res.Term = term
	v.log.Warn("vault: restored from a backup", "path", v.path, "secrets", res.Secrets, "previous", res.Previous)
	return res, nil
}

// stageRestore copies the backup next to the database and checks it fully;
// a format 1 backup, when opts allow it, is then upgraded and compacted
// where it stands.
func (v *Vault) stageRestore(ctx context.Context, who audit.Actor, r io.Reader, opts *RestoreOptions) (string, RestoreResult, error) {
	res := RestoreResult{Previous: v.path + ".before-restore"}
	if err := v.rlock(); err != nil {
		return "", res, fmt.Errorf("vault: %w", err)
	}
	master := bytes.Clone(v.master)
	v.mu.RUnlock()
	defer clear(master)

	f, err := os.CreateTemp(filepath.Dir(v.path), filepath.Base(v.path)+".restore-*")
	if err != nil {
		return "", res, fmt.Errorf("vault: restore: %w", err)
	}
	tmp := f.Name()
	n, err := io.Copy(f, io.LimitReader(r, MaxRestoreBytes+1))
	if err == nil && n > MaxRestoreBytes {
		err = fmt.Errorf("%w: backup is larger than %d bytes", ErrInvalid, MaxRestoreBytes)
	}
	if err == nil && n == 0 {
		err = fmt.Errorf("%w: backup is empty", ErrInvalid)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return tmp, res, fmt.Errorf("vault: restore: %w", err)
	}
	res.Bytes = n
	if err := v.checkBackup(tmp, master, &res, opts); err != nil {
		return tmp, res, err
	}
	if !res.Upgraded {
		return tmp, res, nil
	}
	db, kr, err := openDB(tmp, master, openWrite)
	if err != nil {
		return tmp, res, fmt.Errorf("vault: restore: %w", err)
	}
	defer db.Close()
	next, rep, err := v.upgradeIfOld(ctx, who, "unix", "backup", db, kr)
	if err != nil {
		kr.wipe()
		return tmp, res, err
	}
	next.wipe()
	res.Term, res.NotUpgraded = next.active, rep.skipped
	if err := compactInto(db, tmp); err != nil {
		return tmp, res, err
	}
	return tmp, res, nil
}

// checkBackup opens the staged backup tmp read-only and checks every record
// and every version in it, counting them into res.
func (v *Vault) checkBackup(tmp string, master []byte, res *RestoreResult, opts *RestoreOptions) error {
	db, kr, err := openDB(tmp, master, openRead)
	if err != nil {
		if errors.Is(err, ErrSealed) {
			return fmt.Errorf("vault: restore refused: the backup %w", ErrSealed)
		}
		return fmt.Errorf("vault: %w: restore refused: the backup is not a usable vault: %w", ErrInvalid, err)
	}
	defer kr.wipe()
	defer db.Close()
	res.Term = kr.active
	res.Upgraded = kr.format == keyringFormatV1
	if res.Upgraded && !opts.UpgradeOldFormat {
		return fmt.Errorf("vault: %w: restore refused: the backup was %w (format %q): its allowed_tools and versions "+
			"carry no MAC, so whoever could write the backup could have changed them. Restore it only if you know where "+
			"it has been since it was taken, with --upgrade-old-format: it is then upgraded, trusting it as found, once",
			ErrInvalid, ErrOldFormat, formatV1)
	}
	err = db.View(func(tx *bolt.Tx) error {
		for _, b := range []struct {
			ns     byte
			bucket []byte
			count  *int
		}{{nsSecret, bucketSecrets, &res.Secrets}, {nsSystem, bucketSystem, &res.SystemKeys}} {
			err := tx.Bucket(b.bucket).ForEach(func(k, raw []byte) error {
				var rec *record
				var err error
				if kr.format == keyringFormatV1 {
					// A backup from before records carried a MAC: it is
					// upgraded, trusting its records as found.
					if rec, err = decodeRecord(raw); err == nil && rec.format != recordFormatV1 {
						err = fmt.Errorf("%w: a format 1 backup holds a format %d record", errRecord, rec.format)
					}
					if err != nil {
						err = fmt.Errorf("vault: %w: %s %q: %w", ErrCorrupt, kind(b.ns), k, err)
					}
				} else {
					rec, err = checkedRecord(kr, b.ns, string(k), raw)
				}
				if err != nil {
					return err
				}
				for i := range rec.versions {
					plain, err := openVersion(kr, b.ns, string(k), rec.typ, &rec.versions[i])
					if err != nil {
						return err
					}
					clear(plain)
				}
				*b.count++
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("vault: %w: restore refused: %w", ErrInvalid, err)
	}
	return nil
}

// swap puts the staged file (in format 2: stageRestore upgraded it if it
// had to) in place of the database and reopens it. On failure it puts the
// previous database back. It returns the active term.
func (v *Vault) swap(tmp, prev string) (uint32, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return 0, fmt.Errorf("vault: %w", ErrClosed)
	}
	if err := v.db.Close(); err != nil {
		v.log.Warn("vault: closing the database before a restore", "err", err)
	}
	reopen := func() error {
		db, kr, err := openDB(v.path, v.master, openCreate)
		if err != nil {
			return err
		}
		if kr.format == keyringFormatV1 {
			kr.wipe()
			_ = db.Close()
			return oldFormatError(v.path)
		}
		v.kr.wipe()
		v.db, v.kr = db, kr
		return nil
	}
	err := os.Rename(v.path, prev)
	if err == nil {
		if err = os.Rename(tmp, v.path); err != nil {
			_ = os.Rename(prev, v.path)
		}
	}
	if err == nil {
		err = syncDir(filepath.Dir(v.path))
	}
	if err == nil {
		if err = reopen(); err != nil {
			_ = os.Rename(prev, v.path)
		}
	}
	if err != nil {
		if rerr := reopen(); rerr != nil {
			v.closed = true
			v.kr.wipe()
			clear(v.master)
			return 0, fmt.Errorf("vault: restore failed (%w) and the previous database did not reopen: %w", err, rerr)
		}
		return 0, fmt.Errorf("vault: restore failed, previous database kept: %w", err)
	}
	return v.kr.active, nil
}
