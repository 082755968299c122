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
	"io"
	"slices"
	"time"
)

// The barrier: the master key seals the keyring; each term of the keyring is
// an AES-256 data key; every stored value is sealed under one term with
// additional data that names its place, so a ciphertext copied elsewhere
// does not open.

const (
	nonceSize = 12
	tagSize   = 16
	keySize   = 32

	keyringMagic   = 0xA6
	keyringFormat  = 1
	maxTerms       = 1 << 16
	keyringAADText = "applianced-vault-v1\x00keyring"
	keyCheckText   = "applianced-vault-v1\x00master key check"
)

// term is one data key of the keyring.
type term struct {
	id      uint32
	created int64 // unix nanoseconds
	key     []byte
	aead    cipher.AEAD
}

// keyring holds every term ever installed; the active one seals new writes,
// all of them open what they sealed.
type keyring struct {
	active uint32
	terms  map[uint32]*term
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

// newKeyring returns a keyring with one fresh term, 1.
func newKeyring(now time.Time) (*keyring, error) {
	t, err := newTerm(1, now)
	if err != nil {
		return nil, err
	}
	return &keyring{active: 1, terms: map[uint32]*term{1: t}}, nil
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
	out := &keyring{active: next, terms: make(map[uint32]*term, len(kr.terms)+1)}
	for id, old := range kr.terms {
		out.terms[id] = old
	}
	out.terms[next] = t
	return out, nil
}

// wipe clears every data key of kr.
func (kr *keyring) wipe() {
	if kr == nil {
		return
	}
	for _, t := range kr.terms {
		clear(t.key)
	}
}

// encode returns the keyring's plaintext form:
//
//	magic(1) format(1) active(4) count(4) { term(4) created(8) key(32) }*
func (kr *keyring) encode() []byte {
	ids := kr.ids()
	b := make([]byte, 0, 10+len(ids)*(4+8+keySize))
	b = append(b, keyringMagic, keyringFormat)
	b = binary.BigEndian.AppendUint32(b, kr.active)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for _, id := range ids {
		t := kr.terms[id]
		b = binary.BigEndian.AppendUint32(b, t.id)
		b = binary.BigEndian.AppendUint64(b, uint64(t.created))
		b = append(b, t.key...)
	}
	return b
}

// decodeKeyring parses the plaintext form. It copies the keys out of b.
func decodeKeyring(b []byte) (*keyring, error) {
	const entry = 4 + 8 + keySize
	if len(b) < 10 || b[0] != keyringMagic || b[1] != keyringFormat {
		return nil, errors.New("unknown keyring format")
	}
	active := binary.BigEndian.Uint32(b[2:])
	n := binary.BigEndian.Uint32(b[6:])
	rest := b[10:]
	if n == 0 || n > maxTerms || uint64(len(rest)) != uint64(n)*entry {
		return nil, errors.New("keyring length does not match its term count")
	}
	kr := &keyring{active: active, terms: make(map[uint32]*term, n)}
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
func sealKeyring(master []byte, kr *keyring) ([]byte, error) {
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
