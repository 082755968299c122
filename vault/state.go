package vault

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"runtime/debug"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/applianced/applianced/audit"
)

// The vault's state digest: SHA-256 over every bucket, key and value of
// the database, in bbolt's order, each length-prefixed. vault.unseal
// carries the digest the vault opened with and vault.close the one it
// closed with (DetailState), so that a file put back while the appliance
// was down (an older genuine copy, which the record MACs accept) shows in
// the audit trail: the vault then opens in a state other than the one it
// closed in, which `audit verify` of the receiver's copy reports. The
// appliance notices it itself at the opening: given the journal's newest
// mark (Options.Recorded), Open records vault.state_changed when the vault
// closed in another state, and vault.unseal's state_check says what the
// opening compared with (StateCheck).
//
// Open does not refuse such a vault. Its records still carry their MACs, so
// it is a genuine earlier state of this appliance's own vault, and it is
// often one an administrator put in place on purpose (a backup restored by
// hand); refusing it would stop every agent and tool at once and leave no
// way to accept it short of editing the journal. The event (a high alert
// in Wazuh), the warning and doctor make it loud instead.

// DetailState is the detail of vault.unseal and vault.close that holds the
// state digest, hex.
const DetailState = "vault_state"

// stateDigest returns the digest of db's committed state.
func stateDigest(db *bolt.DB) (string, error) {
	h := sha256.New()
	err := db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			writeField(h, name)
			return digestBucket(h, b)
		})
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func digestBucket(h hash.Hash, b *bolt.Bucket) error {
	return b.ForEach(func(k, v []byte) error {
		writeField(h, k)
		if v == nil { // a nested bucket
			nb := b.Bucket(k)
			if nb == nil {
				return errors.New("vault: state digest: a key without a value or bucket")
			}
			h.Write([]byte{1})
			return digestBucket(h, nb)
		}
		h.Write([]byte{0})
		writeField(h, v)
		return nil
	})
}

func writeField(h hash.Hash, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	h.Write(n[:])
	h.Write(b)
}

// DetailClosedState is the detail of vault.state_changed that holds the
// digest of the state the vault last closed in (DetailState holds the one
// it opened in).
const DetailClosedState = "closed_state"

// DetailStateCheck is the detail of vault.unseal that says what the
// opening was compared with: one of the StateCheck results.
const DetailStateCheck = "state_check"

// The results of the comparison at the opening (StateCheck.Result).
const (
	// StateSame: the vault opens in the state its last recorded close
	// left.
	StateSame = "same"
	// StateChanged: it closed in another state; vault.state_changed is
	// recorded.
	StateChanged = "changed"
	// StateUnverified: the journal's newest mark is an opening with no
	// close after it (a crash, a kill, or a stop whose close the journal
	// did not take): whether vault.db changed since cannot be told.
	StateUnverified = "unverified"
	// StateUnknown: the journal holds no earlier mark to compare with (a
	// first start, or a new chain after a journal was set aside, when the
	// daemon could not read the one set aside). A
	// journal with older segments than the start reads and no mark among
	// them is StateUnverified instead (the daemon passes an opening).
	StateUnknown = "unknown"
)

// StateCheck is what the opening compared the vault's state with, and
// what it found.
type StateCheck struct {
	Result string `json:"result"` // StateSame, StateChanged, StateUnverified or StateUnknown
	State  string `json:"vault_state"`
	// MarkSeq and MarkState are the journal's newest mark the opening was
	// compared with (zero and empty when StateUnknown): the close for
	// StateSame and StateChanged, the opening for StateUnverified (zero
	// and empty when it lies further back than the start reads).
	MarkSeq   uint64 `json:"mark_seq,omitempty"`
	MarkState string `json:"mark_state,omitempty"`
}

// StateCheck returns what the opening of v compared its state with.
func (v *Vault) StateCheck() StateCheck { return v.stateCheck }

// checkState compares the state the vault opens in with rec, the journal's
// newest mark, sets v.stateCheck, and records vault.state_changed when the
// vault closed in another state. Its error (ErrAudit) fails the opening.
func (v *Vault) checkState(ctx context.Context, rec *audit.VaultMark, state string) error {
	c := StateCheck{Result: StateUnknown, State: state}
	if rec != nil {
		c.MarkSeq, c.MarkState = rec.Seq, rec.State
		switch {
		case rec.Type != "vault.close":
			c.Result = StateUnverified
		case rec.State == state:
			c.Result = StateSame
		default:
			c.Result = StateChanged
		}
	}
	v.stateCheck = c
	switch c.Result {
	case StateUnverified:
		opened := "an opening further back than the start reads"
		if rec.Seq > 0 {
			opened = "seq " + strconv.FormatUint(rec.Seq, 10)
		}
		v.log.Warn("vault: the journal records no close of the vault after its last opening (a crash, a kill, or a stop whose close "+
			"was not recorded), so whether vault.db was changed meanwhile cannot be told. If the daemon did not crash and no one "+
			"stopped it with a kill, find out who did (journalctl -u applianced) and check `applianced secret list`",
			"path", v.path, "opened", opened)
		return nil
	case StateChanged:
	default:
		return nil
	}
	closedSeq := strconv.FormatUint(rec.Seq, 10)
	if err := v.appendEvent(ctx, &audit.Event{Type: "vault.state_changed", Severity: audit.SeverityHigh, Target: v.path,
		Outcome: audit.OutcomeSuccess,
		Reason:  "the vault opened in another state than it closed in (seq " + closedSeq + "): vault.db was replaced or edited while the appliance was down",
		Details: map[string]string{DetailState: state, DetailClosedState: rec.State, "closed_seq": closedSeq}}); err != nil {
		return err
	}
	v.log.Warn("vault: vault.db is not the file the vault closed: it opened in another state than it closed in, so the file was replaced "+
		"(an older copy put back) or edited while the appliance was down; secrets, versions or allowed_tools revoked or rotated since that "+
		"copy may be back. If an administrator restored a backup by hand, tell the auditor (the audit trail records this opening as "+
		"vault.state_changed). Otherwise investigate: find who replaced the file, check `applianced secret list`, and rotate what it brought back",
		"path", v.path, "closed_seq", rec.Seq, DetailClosedState, rec.State, DetailState, state)
	return nil
}

// ErrLocked means another process (the daemon) has the database open.
var ErrLocked = errors.New("vault: database locked by another process")

// FileState returns the state digest of the closed database at path, as
// Open would compute it, without the master key and without writing:
// doctor compares it with the journal's last close while the daemon is
// stopped, to say whether the next start will find vault.db changed. A
// damaged file is an ErrCorrupt error, as at Open, not a panic.
func FileState(path string) (state string, err error) {
	if err := preflight(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("vault: database %s: %w: %v", path, ErrCorrupt, err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	var db *bolt.DB
	defer func() {
		// bbolt panics on some damaged pages; a damaged file is an error.
		if p := recover(); p != nil {
			if db != nil {
				_ = db.Close()
			}
			state, err = "", fmt.Errorf("vault: database %s: %w: %v", path, ErrCorrupt, p)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return "", fmt.Errorf("%w: %s (is applianced running?)", ErrLocked, path)
		}
		return "", fmt.Errorf("vault: %w", err)
	}
	defer db.Close()
	if err := checkDB(db); err != nil {
		return "", fmt.Errorf("vault: database %s: %w: %v", path, ErrCorrupt, err)
	}
	return stateDigest(db)
}
