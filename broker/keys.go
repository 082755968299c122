package broker

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/applianced/applianced/audit"
)

// KeyStore keeps the broker's signing keys. The vault implements it: keys
// are encrypted at rest and never leave the appliance.
type KeyStore interface {
	// SystemKey returns the value stored under name, first storing what
	// create returns when there is none (get-or-create).
	SystemKey(ctx context.Context, name string, create func() ([]byte, error)) ([]byte, error)
	// PutSystemKey stores a new version of name, on who's behalf.
	PutSystemKey(ctx context.Context, who audit.Actor, name string, value []byte) (uint64, error)
}

// signingKeysName is the KeyStore entry holding the keyring.
const signingKeysName = "broker-signing-keys"

// storedKey is one Ed25519 signing key as kept in the KeyStore.
type storedKey struct {
	KID     string    `json:"kid"`
	Created time.Time `json:"created"`
	Seed    []byte    `json:"seed"` // ed25519 seed, 32 bytes
}

type storedRing struct {
	Keys []storedKey `json:"keys"` // current first, then the previous one
}

// keyset is an immutable snapshot of the signing keys.
type keyset struct {
	kid     string
	created time.Time
	signer  jose.Signer
	pub     map[string]ed25519.PublicKey // current and previous, by kid
	jwks    []byte                       // the JWKS document
}

// keyring signs with the current key and verifies with current and previous.
type keyring struct {
	store KeyStore
	every time.Duration
	cur   atomic.Pointer[keyset]
	mu    sync.Mutex // serializes rotation
}

func newKey(now time.Time) (storedKey, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(rand.Reader, seed); err != nil {
		return storedKey{}, fmt.Errorf("broker: generating a signing key: %w", err)
	}
	pub := ed25519.NewKeyFromSeed(seed).Public()
	jwk := jose.JSONWebKey{Key: pub}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return storedKey{}, fmt.Errorf("broker: signing key thumbprint: %w", err)
	}
	return storedKey{KID: base64.RawURLEncoding.EncodeToString(tp), Created: now.UTC(), Seed: seed}, nil
}

func openKeyring(ctx context.Context, ks KeyStore, every time.Duration, now time.Time) (*keyring, error) {
	kr := &keyring{store: ks, every: every}
	raw, err := ks.SystemKey(ctx, signingKeysName, func() ([]byte, error) {
		k, err := newKey(now)
		if err != nil {
			return nil, err
		}
		return json.Marshal(storedRing{Keys: []storedKey{k}})
	})
	if err != nil {
		return nil, fmt.Errorf("broker: loading signing keys: %w", err)
	}
	if err := kr.load(raw); err != nil {
		return nil, err
	}
	return kr, nil
}

func (kr *keyring) load(raw []byte) error {
	var ring storedRing
	if err := json.Unmarshal(raw, &ring); err != nil {
		return fmt.Errorf("broker: decoding signing keys: %w", err)
	}
	if len(ring.Keys) == 0 {
		return errors.New("broker: the signing keyring is empty")
	}
	ks := &keyset{pub: map[string]ed25519.PublicKey{}}
	var set jose.JSONWebKeySet
	for i, k := range ring.Keys {
		if len(k.Seed) != ed25519.SeedSize || k.KID == "" {
			return fmt.Errorf("broker: signing key %d is malformed", i)
		}
		priv := ed25519.NewKeyFromSeed(k.Seed)
		pub := priv.Public().(ed25519.PublicKey)
		ks.pub[k.KID] = pub
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: pub, KeyID: k.KID, Algorithm: string(jose.EdDSA), Use: "sig"})
		if i == 0 {
			ks.kid, ks.created = k.KID, k.Created
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: priv, KeyID: k.KID}},
				(&jose.SignerOptions{}).WithType("at+jwt"))
			if err != nil {
				return fmt.Errorf("broker: signer: %w", err)
			}
			ks.signer = s
		}
	}
	b, err := json.Marshal(set)
	if err != nil {
		return fmt.Errorf("broker: encoding JWKS: %w", err)
	}
	ks.jwks = b
	kr.cur.Store(ks)
	return nil
}

// due reports whether the current key has signed long enough.
func (kr *keyring) due(now time.Time) bool {
	return now.Sub(kr.cur.Load().created) >= kr.every
}

// rotate makes a new current key and keeps the old current as previous.
func (kr *keyring) rotate(ctx context.Context, now time.Time) error {
	kr.mu.Lock()
	defer kr.mu.Unlock()
	old := kr.cur.Load()
	k, err := newKey(now)
	if err != nil {
		return err
	}
	// Re-read the stored ring so the previous key's seed is the stored one.
	raw, err := kr.store.SystemKey(ctx, signingKeysName, func() ([]byte, error) {
		return nil, errors.New("broker: signing keyring vanished")
	})
	if err != nil {
		return fmt.Errorf("broker: rotating signing key: %w", err)
	}
	var ring storedRing
	if err := json.Unmarshal(raw, &ring); err != nil || len(ring.Keys) == 0 {
		return fmt.Errorf("broker: rotating signing key: stored keyring unreadable")
	}
	if ring.Keys[0].KID != old.kid {
		// Another process rotated already; adopt its ring.
		return kr.load(raw)
	}
	next := storedRing{Keys: []storedKey{k, ring.Keys[0]}}
	b, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("broker: rotating signing key: %w", err)
	}
	if _, err := kr.store.PutSystemKey(ctx, audit.Actor{}, signingKeysName, b); err != nil {
		return fmt.Errorf("broker: storing rotated signing key: %w", err)
	}
	return kr.load(b)
}
