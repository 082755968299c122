package audit

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// KeySource keeps the appliance's own keys; the vault implements it. The
// audit package asks it for the checkpoint signing key and the HMAC key and
// never stores either itself.
type KeySource interface {
	// SystemKey returns the value stored under name, first storing what
	// create returns when there is none (get-or-create).
	SystemKey(ctx context.Context, name string, create func() ([]byte, error)) ([]byte, error)
}

// HMACKeyName is the KeySource entry of the HMAC key.
const HMACKeyName = "audit-hmac"

// HMACPrefix starts every value Hasher.Sum returns.
const HMACPrefix = "hmac-sha256:"

// ErrBadKey is returned when a stored key has the wrong size.
var ErrBadKey = errors.New("audit: stored key has the wrong size")

// Hasher turns a secret value into the string an event may carry instead:
// HMAC-SHA256 under a key kept in the vault. The same value always gives the
// same string, so an auditor who knows a value can search for it
// (`applianced audit hash VALUE`), and nobody who reads the trail learns it.
type Hasher struct {
	key []byte
}

// NewHasher loads the HMAC key from ks, creating 32 random bytes the first
// time.
func NewHasher(ctx context.Context, ks KeySource) (*Hasher, error) {
	key, err := ks.SystemKey(ctx, HMACKeyName, func() ([]byte, error) {
		k := make([]byte, 32)
		if _, err := io.ReadFull(rand.Reader, k); err != nil {
			return nil, err
		}
		return k, nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: load hmac key: %w", err)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: %s is %d bytes, want 32", ErrBadKey, HMACKeyName, len(key))
	}
	return &Hasher{key: append([]byte(nil), key...)}, nil
}

// Sum returns "hmac-sha256:" and the hex HMAC of value.
func (h *Hasher) Sum(value string) string {
	m := hmac.New(sha256.New, h.key)
	io.WriteString(m, value)
	return HMACPrefix + hex.EncodeToString(m.Sum(nil))
}
