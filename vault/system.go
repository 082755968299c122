package vault

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
)

// System keys are keys the appliance makes for itself (JWT signing keys,
// the audit HMAC key, the audit checkpoint key). They live in their own
// bucket under the same barrier, are never listed as secrets and no verb
// exports them.

// systemKeepVersions is how many versions of a system key are kept, so a
// verifier can still find the previous signing key after a rotation.
const systemKeepVersions = 3

// SystemKeyVersion is one kept version of a system key.
type SystemKeyVersion struct {
	Version uint64
	Created time.Time
	Key     []byte // the caller clears it when done
}

// SystemKey returns the current version of the system key name. When it
// does not exist and create is not nil, create makes one, which is stored
// (and its creation audited) and returned; two concurrent callers get the
// same key. With a nil create a missing key is ErrNotFound. Reads are not
// audited: only the daemon's own components call this, at start.
func (v *Vault) SystemKey(ctx context.Context, name string, create func() ([]byte, error)) ([]byte, error) {
	val, err := v.current(ctx, nsSystem, bucketSystem, name, nil)
	if err == nil {
		return val.b, nil
	}
	if !errors.Is(err, ErrNotFound) || create == nil {
		return nil, err
	}
	key, err := create()
	if err != nil {
		return nil, fmt.Errorf("vault: creating system key %q: %w", name, err)
	}
	if _, err := v.putSystem(ctx, audit.Actor{}, "system_key.create", name, key, true); err != nil {
		clear(key)
		if errors.Is(err, errExists) { // another caller created it first: use theirs
			return v.SystemKey(ctx, name, nil)
		}
		return nil, err
	}
	return key, nil
}

// PutSystemKey stores key as a new version of the system key name (a
// rotation), keeping the previous versions for SystemKeyVersions. It returns
// the new version number.
func (v *Vault) PutSystemKey(ctx context.Context, who audit.Actor, name string, key []byte) (uint64, error) {
	return v.putSystem(ctx, who, "system_key.put", name, key, false)
}

// errExists means a system key appeared while it was being created.
var errExists = errors.New("vault: system key already exists")

func (v *Vault) putSystem(ctx context.Context, who audit.Actor, action, name string, key []byte, onlyNew bool) (uint64, error) {
	ev := &audit.Event{Type: "secret.put", Actor: who, Action: action, Target: name, Details: map[string]string{"kind": "system_key"}}
	if err := checkName(name); err != nil {
		return 0, v.refuse(ctx, ev, fmt.Errorf("vault: %w: %w", ErrInvalid, err))
	}
	if len(key) == 0 || len(key) > MaxValueSize {
		return 0, v.refuse(ctx, ev, fmt.Errorf("vault: %w: a system key must be 1 to %d bytes, got %d", ErrInvalid, MaxValueSize, len(key)))
	}
	want := anyRecord
	if onlyNew {
		want = mustBeNew
	}
	m, err := v.addVersion(ctx, ev, nsSystem, bucketSystem, name, typeSystem, key, nil, want)
	if err != nil {
		return 0, err
	}
	return m.Version, nil
}

// SystemKeyVersions returns every kept version of the system key name,
// newest first.
func (v *Vault) SystemKeyVersions(ctx context.Context, name string) ([]SystemKeyVersion, error) {
	if err := checkName(name); err != nil {
		return nil, fmt.Errorf("vault: %w: %w", ErrInvalid, err)
	}
	if err := v.rlock(); err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	defer v.mu.RUnlock()
	var out []SystemKeyVersion
	err := v.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketSystem).Get([]byte(name))
		if raw == nil {
			return fmt.Errorf("vault: %w: system key %q", ErrNotFound, name)
		}
		r, err := checkedRecord(v.kr, nsSystem, name, raw)
		if err != nil {
			return err
		}
		for i := len(r.versions) - 1; i >= 0; i-- {
			ver := &r.versions[i]
			plain, err := openVersion(v.kr, nsSystem, name, r.typ, ver)
			if err != nil {
				for _, o := range out {
					clear(o.Key)
				}
				return err
			}
			out = append(out, SystemKeyVersion{Version: ver.n, Created: time.Unix(0, ver.created).UTC(), Key: plain})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// The audit package takes its HMAC and checkpoint keys from the vault.
var _ audit.KeySource = (*Vault)(nil)

// Key returns the 32-byte system key for purpose, creating it from
// crypto/rand the first time: a get-or-create for components that only
// need a key of their own (such as the tool proxy's TOTP sealing key).
func (v *Vault) Key(ctx context.Context, purpose string) ([]byte, error) {
	key, err := v.SystemKey(ctx, purpose, func() ([]byte, error) {
		k := make([]byte, 32)
		if _, err := io.ReadFull(rand.Reader, k); err != nil {
			return nil, err
		}
		return k, nil
	})
	if err != nil {
		return nil, err
	}
	if len(key) != 32 {
		clear(key)
		return nil, fmt.Errorf("vault: %w: system key %q is %d bytes, want 32", ErrCorrupt, purpose, len(key))
	}
	return key, nil
}
