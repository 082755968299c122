package vault

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"sync"
	"time"
)

// The barrier: the master key seals the keyring; each term of the keyring is
// an AES-256 data key; every stored value is sealed under one term with
// additional data that names its place, so a ciphertext copied elsewhere
// does not open. The keyring also holds the record key, which authenticates
// each stored record's metadata (see recordMAC).

const (
	nonceSize = 12
	tagSize   = 16
	keySize   = 32

	keyringMagic = 0xA6
	// keyringFormat 2 holds the record key; its presence in the sealed
	// keyring is the marker that every record carries a MAC. Format 1 (no
	// record key) is read only to upgrade a database written before.
	keyringFormat   = 2
	keyringFormatV1 = 1
	maxTerms        = 1 << 16
	keyringAADText  = "applianced-vault-v1\x00keyring"
	keyCheckText    = "applianced-vault-v1\x00master key check"
)

// term is one data key of the keyring.
type term struct {
	id      uint32
	created int64 // unix nanoseconds
	key     []byte
	aead    cipher.AEAD
}

// keyring holds every term ever installed; the active one seals new writes,
// all of them open what they sealed. recordKey (format 2) authenticates
// the records' metadata; it is used for nothing else.
type keyring struct {
	format    byte
	active    uint32
	terms     map[uint32]*term
	recordKey []byte
	macs      *sync.Pool // of *macState under recordKey, shared by copies of the keyring
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func newTerm(id uint32, now time.Time) (*term, error) {
	key := make([]byte, keySize)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return nil, fmt.Errorf("vault: generating a data key: %w", err)
	}
	aead, err := newAEAD(key)
	if err != nil {
		clear(key)
		return nil, fmt.Errorf("vault: %w", err)
	}
	return &term{id: id, created: now.UnixNano(), key: key, aead: aead}, nil
}

// newKeyring returns a keyring with one fresh term, 1, and a fresh record
// key.
func newKeyring(now time.Time) (*keyring, error) {
	t, err := newTerm(1, now)
	if err != nil {
		return nil, err
	}
	kr := &keyring{format: keyringFormat, active: 1, terms: map[uint32]*term{1: t}}
	if err := kr.newRecordKey(); err != nil {
		kr.wipe()
		return nil, err
	}
	return kr, nil
}

// newRecordKey gives kr a fresh random record key.
func (kr *keyring) newRecordKey() error {
	key := make([]byte, keySize)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return fmt.Errorf("vault: generating the record key: %w", err)
	}
	kr.setRecordKey(key)
	return nil
}

// setRecordKey installs key (kept, not copied) as the record key.
func (kr *keyring) setRecordKey(key []byte) {
	kr.format = keyringFormat
	kr.recordKey = key
	kr.macs = &sync.Pool{New: func() any { return &macState{h: hmac.New(sha256.New, key)} }}
}

// activeTerm returns the term new writes are sealed under.
func (kr *keyring) activeTerm() *term { return kr.terms[kr.active] }

// ids returns the term numbers in ascending order.
func (kr *keyring) ids() []uint32 {
	ids := make([]uint32, 0, len(kr.terms))
	for id := range kr.terms {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// withNewTerm returns a copy of kr with one more term, made active. kr is not
// changed, so readers holding it keep working.
func (kr *keyring) withNewTerm(now time.Time) (*keyring, error) {
	ids := kr.ids()
	next := ids[len(ids)-1] + 1
	if len(ids) >= maxTerms || next == 0 {
		return nil, errors.New("vault: the keyring has no room for another term")
	}
	t, err := newTerm(next, now)
	if err != nil {
		return nil, err
	}
	out := &keyring{format: kr.format, active: next, terms: make(map[uint32]*term, len(kr.terms)+1),
		recordKey: kr.recordKey, macs: kr.macs}
	for id, old := range kr.terms {
		out.terms[id] = old
	}
	out.terms[next] = t
	return out, nil
}

// wipe clears every data key of kr and its record key.
func (kr *keyring) wipe() {
	if kr == nil {
		return
	}
	for _, t := range kr.terms {
		clear(t.key)
	}
	clear(kr.recordKey)
	kr.macs = nil
}

// encode returns the keyring's plaintext form (format 2):
//
//	magic(1) format(1) active(4) count(4) record_key(32) { term(4) created(8) key(32) }*
//
// Format 1 had no record key; a keyring read in format 1 encodes as it was,
// but sealKeyring seals only format 2.
func (kr *keyring) encode() []byte {
	ids := kr.ids()
	b := make([]byte, 0, 10+keySize+len(ids)*(4+8+keySize))
	b = append(b, keyringMagic, kr.format)
	b = binary.BigEndian.AppendUint32(b, kr.active)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	if kr.format == keyringFormat {
		b = append(b, kr.recordKey...)
	}
	for _, id := range ids {
		t := kr.terms[id]
		b = binary.BigEndian.AppendUint32(b, t.id)
		b = binary.BigEndian.AppendUint64(b, uint64(t.created))
		b = append(b, t.key...)
	}
	return b
}

// decodeKeyring parses the plaintext form, format 2 or 1 (format 1 has no
// record key). It copies the keys out of b.
func decodeKeyring(b []byte) (*keyring, error) {
	const entry = 4 + 8 + keySize
	if len(b) < 10 || b[0] != keyringMagic || (b[1] != keyringFormat && b[1] != keyringFormatV1) {
		return nil, errors.New("unknown keyring format")
	}
	format := b[1]
	active := binary.BigEndian.Uint32(b[2:])
	n := binary.BigEndian.Uint32(b[6:])
	rest := b[10:]
	var recordKey []byte
	if format == keyringFormat {
		if len(rest) < keySize {
			return nil, errors.New("keyring is too short for its record key")
		}
		recordKey, rest = slices.Clone(rest[:keySize]), rest[keySize:]
	}
	if n == 0 || n > maxTerms || uint64(len(rest)) != uint64(n)*entry {
		clear(recordKey)
		return nil, errors.New("keyring length does not match its term count")
	}
	kr := &keyring{format: keyringFormatV1, active: active, terms: make(map[uint32]*term, n)}
	if recordKey != nil {
		kr.setRecordKey(recordKey)
	}
	for i := uint32(0); i < n; i++ {
		e := rest[i*entry : (i+1)*entry]
		id := binary.BigEndian.Uint32(e)
		if _, dup := kr.terms[id]; dup || id == 0 {
			kr.wipe()
			return nil, fmt.Errorf("keyring has a bad or repeated term %d", id)
		}
		key := slices.Clone(e[12:entry])
		aead, err := newAEAD(key)
		if err != nil {
			kr.wipe()
			return nil, err
		}
		kr.terms[id] = &term{id: id, created: int64(binary.BigEndian.Uint64(e[4:])), key: key, aead: aead}
	}
	if kr.terms[active] == nil {
		kr.wipe()
		return nil, fmt.Errorf("keyring's active term %d is missing", active)
	}
	return kr, nil
}

// sealKeyring encrypts the keyring under the master key: nonce || ciphertext.
// It refuses a keyring without its record key: the sealed keyring's format
// is what says the records carry a MAC.
func sealKeyring(master []byte, kr *keyring) ([]byte, error) {
	if kr.format != keyringFormat || len(kr.recordKey) != keySize {
		return nil, errors.New("vault: refusing to seal a keyring without its record key")
	}
	aead, err := newAEAD(master)
	if err != nil {
		return nil, fmt.Errorf("vault: master key: %w", err)
	}
	plain := kr.encode()
	defer clear(plain)
	out := make([]byte, nonceSize, nonceSize+len(plain)+tagSize)
	if _, err := io.ReadFull(rand.Reader, out); err != nil {
		return nil, fmt.Errorf("vault: generating a nonce: %w", err)
	}
	return aead.Seal(out, out[:nonceSize], plain, []byte(keyringAADText)), nil
}

// errKeyringOpen means the master key did not authenticate the sealed
// keyring: a wrong key or a damaged keyring.
var errKeyringOpen = errors.New("keyring does not open")

// openKeyring decrypts a sealed keyring with the master key.
func openKeyring(master, sealed []byte) (*keyring, error) {
	aead, err := newAEAD(master)
	if err != nil {
		return nil, fmt.Errorf("vault: master key: %w", err)
	}
	if len(sealed) < nonceSize+tagSize {
		return nil, errKeyringOpen
	}
	plain, err := aead.Open(nil, sealed[:nonceSize], sealed[nonceSize:], []byte(keyringAADText))
	if err != nil {
		return nil, errKeyringOpen
	}
	defer clear(plain)
	return decodeKeyring(plain)
}

// keyCheck is a verifier of the master key stored beside the keyring, so a
// wrong key (sealed) can be told from a damaged keyring (corrupted). It is an
// HMAC under the key and reveals nothing about it.
func keyCheck(master []byte) []byte {
	m := hmac.New(sha256.New, master)
	m.Write([]byte(keyCheckText))
	return m.Sum(nil)
}

// secretAAD is the additional data binding a ciphertext to its place: the
// namespace (secret or system key), the name, the type, the version and the
// term. Moving a ciphertext to another name, version or term makes it fail.
func secretAAD(dst []byte, ns byte, name string, typ Type, version uint64, termID uint32) []byte {
	dst = append(dst, "applianced-vault-v1\x00"...)
	dst = append(dst, ns, 0)
	dst = append(dst, name...)
	dst = append(dst, 0, byte(typ))
	dst = binary.BigEndian.AppendUint64(dst, version)
	dst = binary.BigEndian.AppendUint32(dst, termID)
	return dst
}

// recordMACText separates the record MAC from any other use of SHA-256.
const recordMACText = "applianced-vault-v2\x00record metadata"

// macState is one HMAC under the record key with its scratch buffer, pooled
// so that checking a record allocates nothing.
type macState struct {
	h   hash.Hash
	buf []byte
	sum [sha256.Size]byte
}

// recordMAC returns the MAC that authenticates the metadata of the record r
// stored as name in namespace ns: its type, times, allowed_tools and every
// version's number, term, time, nonce and ciphertext length. Together with
// each version's GCM tag (which binds its ciphertext to its nonce, version
// and term) it authenticates the whole record. kr must have a record key.
func (kr *keyring) recordMAC(ns byte, name string, r *record) [sha256.Size]byte {
	st := kr.macs.Get().(*macState)
	m := append(st.buf[:0], recordMACText...)
	m = append(m, 0, ns)
	m = binary.AppendUvarint(m, uint64(len(name)))
	m = append(m, name...)
	m = r.appendMetadata(m)
	st.h.Reset()
	st.h.Write(m)
	st.h.Sum(st.sum[:0])
	out := st.sum
	st.buf = m
	kr.macs.Put(st)
	return out
}

// Errors of the record check, wrapped with the record's name.
var (
	errNoMAC  = errors.New("the record has no MAC (written before records were authenticated, or its MAC was stripped)")
	errBadMAC = errors.New("the record's metadata does not authenticate (allowed_tools, versions or times were changed outside the vault)")
)

// checkRecord verifies that r, stored as name in namespace ns, carries the
// MAC kr's record key gives its metadata.
func (kr *keyring) checkRecord(ns byte, name string, r *record) error {
	if r.format != recordFormat {
		return errNoMAC
	}
	if kr.macs == nil {
		return errors.New("the keyring has no record key")
	}
	want := kr.recordMAC(ns, name, r)
	if !hmac.Equal(want[:], r.mac[:]) {
		return errBadMAC
	}
	return nil
}

// sealRecord sets r's format and MAC for storing it as name in ns.
func (kr *keyring) sealRecord(ns byte, name string, r *record) {
	r.format = recordFormat
	r.mac = kr.recordMAC(ns, name, r)
}
