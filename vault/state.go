package vault

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash"

	bolt "go.etcd.io/bbolt"
)

// The vault's state digest: SHA-256 over every bucket, key and value of
// the database, in bbolt's order, each length-prefixed. vault.unseal
// carries the digest the vault opened with and vault.close the one it
// closed with (DetailState), so that a file put back while the appliance
// was down (an older genuine copy, which the record MACs accept) shows in
// the audit trail: the vault then opens in a state other than the one it
// closed in, which `audit verify` of the receiver's copy reports.

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
