package vault

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash"
	"strconv"

	bolt "go.etcd.io/bbolt"

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
// closed in another state.
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

// checkState compares the state the vault opens in with rec, the journal's
// newest mark, and records vault.state_changed when the vault closed in
// another one. Its error (ErrAudit) fails the opening.
func (v *Vault) checkState(ctx context.Context, rec *audit.VaultMark, state string) error {
	if rec == nil || rec.Type != "vault.close" || rec.State == state {
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
