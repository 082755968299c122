package vault

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
)

// Every stored record carries a MAC over its metadata (type, times,
// allowed_tools, and each version's number, term, time and nonce) under the
// keyring's record key; see keyring.recordMAC. Without it, someone who can
// write vault.db but does not have the master key could add a tool to a
// secret's allowed_tools, or drop its newest versions so that a rotated
// value became current again. A database written before records carried a
// MAC is refused by Open and upgraded only by Upgrade (upgrade.go).

// kind names what namespace ns holds, for messages.
func kind(ns byte) string {
	if ns == nsSystem {
		return "system key"
	}
	return "secret"
}

// checkedRecord decodes raw, the stored record of name in namespace ns, and
// checks its MAC with kr. Every path that uses a record (to hand out a
// value, to describe it, or to write a new version over it) reads it
// through here, so a record whose metadata was changed without the master
// key is refused, naming it, before anything in it is trusted.
func checkedRecord(kr *keyring, ns byte, name string, raw []byte) (*record, error) {
	r, err := decodeRecord(raw)
	if err != nil {
		return nil, fmt.Errorf("vault: %w: %s %q: %w", ErrCorrupt, kind(ns), name, err)
	}
	if err := kr.checkRecord(ns, name, r); err != nil {
		way := "restore a backup, or delete the secret and put it again"
		if ns == nsSystem {
			way = "restore a backup"
		}
		return nil, fmt.Errorf("vault: %w: %s %q is refused: %w; %s", ErrCorrupt, kind(ns), name, err, way)
	}
	return r, nil
}

// upgradeReport is what an upgrade did.
type upgradeReport struct {
	term     uint32   // the new active term
	records  int      // records upgraded
	versions int      // versions re-encrypted
	skipped  []string // "secret:NAME" or "system key:NAME" of records left as they were (they do not decode or decrypt)
}

// maxSkippedNamed bounds the names of skipped records in the audit event.
const maxSkippedNamed = 20

// upgradeIfOld upgrades db, whose keyring kr was just opened, when it was
// written before records carried a MAC, and returns the keyring to use (kr
// itself when there was nothing to do). The upgrade is one bbolt
// transaction, audited before it commits:
//
//   - a fresh record key and a new term, made active, join the keyring;
//   - every version of every record is re-encrypted under the new term and
//     every record gets its MAC;
//   - the keyring is sealed again in format 2 and the marker set.
//
// The upgrade trusts the records as it finds them, once: that is the moment
// their metadata becomes authenticated. The new term means that a keyring
// from before the upgrade, put back later, does not open what was written
// after it. A record that does not decode or whose versions do not decrypt
// is left as it was, and is refused when used (it has no MAC).
//
// source is the event's (cli or unix) and of says what is upgraded: the
// database itself, or a backup on its way in.
func (v *Vault) upgradeIfOld(ctx context.Context, who audit.Actor, source, of string, db *bolt.DB, kr *keyring) (*keyring, upgradeReport, error) {
	if kr.format == keyringFormat {
		return kr, upgradeReport{}, nil
	}
	ev := &audit.Event{Type: "vault.unseal", Actor: who, Action: "vault.upgrade", Target: v.path, Source: source,
		Severity: audit.SeverityHigh, Outcome: audit.OutcomeSuccess}
	appended := false
	next, rep, err := upgradeDB(db, kr, v.master, time.Now(), func(rep upgradeReport) error {
		ev.Details = map[string]string{
			"from_format": string(formatV1), "to_format": string(formatV2),
			"term": strconv.FormatUint(uint64(rep.term), 10), "records": strconv.Itoa(rep.records),
			"versions": strconv.Itoa(rep.versions), "not_upgraded": strconv.Itoa(len(rep.skipped)), "of": of,
		}
		if len(rep.skipped) > 0 {
			named := rep.skipped[:min(len(rep.skipped), maxSkippedNamed)]
			ev.Details["not_upgraded_names"] = strings.Join(named, ",")
		}
		if err := v.appendEvent(ctx, ev); err != nil {
			return err
		}
		appended = true
		return nil
	})
	if err != nil {
		err = fmt.Errorf("vault: upgrading %s to authenticated records: %w", v.path, err)
		if appended {
			v.recordFailure(ctx, ev, err)
		}
		return nil, upgradeReport{}, err
	}
	v.log.Warn("vault: upgraded: every record now carries a MAC; its metadata was trusted as found",
		"path", v.path, "of", of, "records", rep.records, "versions", rep.versions, "term", rep.term)
	for _, s := range rep.skipped {
		v.log.Warn("vault: record not upgraded (it does not decode or decrypt); it is refused until deleted", "record", s)
	}
	return next, rep, nil
}

// upgradeDB does the upgrade's work in one transaction and returns the new
// keyring. record is called inside the transaction, after everything is
// written and before the commit; its error cancels the upgrade.
func upgradeDB(db *bolt.DB, kr *keyring, master []byte, now time.Time, record func(upgradeReport) error) (*keyring, upgradeReport, error) {
	var rep upgradeReport
	next, err := kr.withNewTerm(now)
	if err != nil {
		return nil, rep, err
	}
	if err := next.newRecordKey(); err != nil {
		clear(next.activeTerm().key)
		return nil, rep, err
	}
	// next shares kr's older terms: on failure clear only what is its own.
	discard := func() {
		clear(next.activeTerm().key)
		clear(next.recordKey)
	}
	sealed, err := sealKeyring(master, next)
	if err != nil {
		discard()
		return nil, rep, err
	}
	rep.term = next.active
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []struct {
			ns     byte
			bucket []byte
		}{{nsSecret, bucketSecrets}, {nsSystem, bucketSystem}} {
			bucket := tx.Bucket(b.bucket)
			type put struct{ k, v []byte }
			var puts []put
			c := bucket.Cursor()
			for k, raw := c.First(); k != nil; k, raw = c.Next() {
				enc, n, ok, err := upgradeRecord(kr, next, b.ns, string(k), raw)
				if err != nil {
					return err
				}
				if !ok {
					rep.skipped = append(rep.skipped, kind(b.ns)+":"+string(k))
					continue
				}
				puts = append(puts, put{bytes.Clone(k), enc})
				rep.records++
				rep.versions += n
			}
			// bbolt does not allow changing a bucket while a cursor walks it.
			for _, p := range puts {
				if err := bucket.Put(p.k, p.v); err != nil {
					return err
				}
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyKeyring, sealed); err != nil {
			return err
		}
		if err := meta.Put(keyFormat, formatV2); err != nil {
			return err
		}
		return record(rep)
	})
	if err != nil {
		discard()
		return nil, upgradeReport{}, err
	}
	return next, rep, nil
}

// upgradeRecord re-encrypts every version of one format 1 record under
// next's active term and returns it in format 2 with its MAC, and the
// number of versions. ok is false when the record does not decode, already
// has a MAC (no format 1 database held one), or a version does not decrypt.
func upgradeRecord(kr, next *keyring, ns byte, name string, raw []byte) (enc []byte, n int, ok bool, err error) {
	r, err := decodeRecord(raw)
	if err != nil || r.format != recordFormatV1 {
		return nil, 0, false, nil
	}
	versions := make([]version, len(r.versions))
	for i := range r.versions {
		ver := &r.versions[i]
		plain, err := openVersion(kr, ns, name, r.typ, ver)
		if err != nil {
			return nil, 0, false, nil
		}
		versions[i], err = seal(next.activeTerm(), ns, name, r.typ, ver.n, plain, time.Unix(0, ver.created))
		clear(plain)
		if err != nil {
			return nil, 0, false, err
		}
	}
	r.versions = versions
	next.sealRecord(ns, name, r)
	return r.encode(), len(versions), true, nil
}
