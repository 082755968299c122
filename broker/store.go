package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Store errors the broker branches on.
var (
	// ErrRefreshUnknown means no such refresh token was ever issued (or it was pruned).
	ErrRefreshUnknown = errors.New("broker: unknown refresh token")
	// ErrRefreshReused means a refresh token was presented a second time; the
	// whole family is now revoked.
	ErrRefreshReused = errors.New("broker: refresh token reused; its session is revoked")
	// ErrRefreshRevoked means the refresh token's session was revoked.
	ErrRefreshRevoked = errors.New("broker: refresh token's session is revoked")
	// ErrRefreshExpired means the refresh token's session ended.
	ErrRefreshExpired = errors.New("broker: refresh token's session expired")
)

// AgentState is an agent's runtime state, kept apart from the config file.
type AgentState struct {
	Disabled   bool      `json:"disabled,omitempty"`
	DisabledAt time.Time `json:"disabled_at,omitzero"`
	// DisabledUntil ends a temporary disable (a risk block); zero means
	// until an administrator enables the agent.
	DisabledUntil time.Time `json:"disabled_until,omitzero"`
	Reason        string    `json:"reason,omitempty"`
	LastSeen      time.Time `json:"last_seen,omitzero"`
}

// Revocation kinds.
const (
	RevokeJTI   = "jti"   // one token
	RevokeAgent = "agent" // every token of an agent issued until At
	RevokeUser  = "user"  // every token of (or for) a user issued until At
	// RevokeAccount is every token of (or for) the directory account with
	// the id Value issued until At, whatever name it carries.
	RevokeAccount = "account"
	// RevokeUserWithoutID records that the sessions of the user named
	// Value stored without an account id (by a version that kept none)
	// ended. Tokens without an account id are refused whatever their name
	// (revocations.check); tokens that carry one, whoever has the name,
	// are spared.
	RevokeUserWithoutID = "user_without_id"
	// RevokeAccountName is every token of (or for) the directory account
	// with the id before the first NUL of Value that carries the name
	// after it (lowercase), issued until At: the tokens of a renamed
	// account under its old name, not those under its name now.
	RevokeAccountName = "account_name"
)

// accountNameValue is the Value of a RevokeAccountName revocation.
func accountNameValue(acct Account) string {
	return strings.ToLower(acct.ID) + "\x00" + userKey(acct.Name)
}

// Revocation is one entry of the revocation list. It is pruned after
// Until, when every token it could match has expired.
type Revocation struct {
	Kind  string    `json:"kind"`
	Value string    `json:"value"`
	At    time.Time `json:"at"`
	Until time.Time `json:"until"`
}

// RefreshToken is the stored record of one refresh token, keyed by the
// SHA-256 of the token (the token itself is never stored).
type RefreshToken struct {
	Hash   string `json:"-"`
	Family string `json:"family"`
	User   string `json:"user"`
	// UserID is the user's account id in the directory (Identity.ID):
	// the session belongs to that account, whatever its name is later.
	// Empty in sessions stored before account ids were kept.
	UserID  string    `json:"user_id,omitempty"`
	Groups  []string  `json:"groups,omitempty"`
	Scopes  []string  `json:"scopes,omitempty"`
	Issued  time.Time `json:"issued"`
	Expires time.Time `json:"expires"` // the session's end
	Used    bool      `json:"used,omitempty"`
}

type family struct {
	User    string    `json:"user"`
	UserID  string    `json:"user_id,omitempty"`
	Expires time.Time `json:"expires"`
	Revoked bool      `json:"revoked,omitempty"`
}

// Store is the broker's shared runtime state: agents' status, the
// revocation list, refresh-token families and used client assertions. The
// bbolt file is one backend; the interface is what a replicated backend
// implements.
type Store interface {
	AgentStates(ctx context.Context) (map[string]AgentState, error)
	PutAgentState(ctx context.Context, name string, st AgentState) error
	Revocations(ctx context.Context) ([]Revocation, error)
	PutRevocation(ctx context.Context, r Revocation) error
	// UseAssertion records a client assertion's id until exp; false means
	// it was already used.
	UseAssertion(ctx context.Context, id string, exp time.Time) (fresh bool, err error)
	// PutRefresh stores a refresh token starting a new family.
	PutRefresh(ctx context.Context, rt RefreshToken) error
	// GetRefresh returns the record of the token with hash, changing
	// nothing: ErrRefreshUnknown when there is none, ErrRefreshRevoked or
	// ErrRefreshExpired when its session ended. A used token is returned
	// with Used set.
	GetRefresh(ctx context.Context, hash string, now time.Time) (RefreshToken, error)
	// RotateRefresh atomically marks the token with oldHash used and stores
	// next in the same family, returning the old record. A reused token
	// revokes the family and returns ErrRefreshReused.
	RotateRefresh(ctx context.Context, oldHash string, now time.Time, next RefreshToken) (RefreshToken, error)
	// UndoRotate undoes a RotateRefresh whose new token was never handed
	// out: the token with oldHash is unused again and nextHash is gone.
	UndoRotate(ctx context.Context, oldHash, nextHash string) error
	// RevokeRefresh revokes the family of the token with hash.
	RevokeRefresh(ctx context.Context, hash string) (RefreshToken, error)
	// RevokeUserFamilies revokes every session of user, whose name it
	// matches without regard to case.
	RevokeUserFamilies(ctx context.Context, user string) (int, error)
	// RevokeAccountFamilies revokes every session of the account with
	// acct.ID; with no ID, every session of acct.Name (without regard to
	// case) that has no account id either (stored before account ids were
	// kept), and none of another account that has the name now.
	RevokeAccountFamilies(ctx context.Context, acct Account) (int, error)
	// RevokeAccountNameFamilies revokes every session of the account with
	// acct.ID that carries the name acct.Name (without regard to case),
	// and none of its sessions under another name.
	RevokeAccountNameFamilies(ctx context.Context, acct Account) (int, error)
	// SessionUsers lists the accounts with a session (refresh family)
	// neither revoked nor expired at now.
	SessionUsers(ctx context.Context, now time.Time) ([]Account, error)
	// PutHolder records that acct (its id and the name its tokens carry)
	// holds a token until until; an earlier until never replaces a later
	// one. Prune drops it after until.
	PutHolder(ctx context.Context, acct Account, until time.Time) error
	// DropHolder forgets acct's record (its tokens were revoked).
	DropHolder(ctx context.Context, acct Account) error
	// Holders lists the recorded holders whose until is not before now.
	Holders(ctx context.Context, now time.Time) ([]Holder, error)
	// Prune drops what expired before now.
	Prune(ctx context.Context, now time.Time) error
	Close() error
}

var (
	bucketAgents      = []byte("agents")
	bucketRevocations = []byte("revocations")
	bucketAssertions  = []byte("assertions")
	bucketRefresh     = []byte("refresh")
	bucketFamilies    = []byte("families")
	bucketHolders     = []byte("holders")
)

// Holder is a stored record of an account that holds tokens: every
// (account id, name) pair tokens were issued to, so that a restart still
// checks them against the directory (Broker.RecheckHolders), whether or
// not a session (refresh family) is left.
type Holder struct {
	Name  string    `json:"name"`
	ID    string    `json:"id,omitempty"`
	Until time.Time `json:"until"`
}

type boltStore struct {
	db *bolt.DB
}

// OpenStore opens (creating 0600) the bbolt file at path.
func OpenStore(path string) (Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("broker: state dir: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("broker: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketAgents, bucketRevocations, bucketAssertions, bucketRefresh, bucketFamilies, bucketHolders} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("broker: initializing %s: %w", path, err)
	}
	// Client assertions arrive concurrently: commit them in groups, soon.
	db.MaxBatchDelay = 2 * time.Millisecond
	db.MaxBatchSize = 256
	return &boltStore{db: db}, nil
}

func (s *boltStore) Close() error { return s.db.Close() }

func (s *boltStore) AgentStates(ctx context.Context) (map[string]AgentState, error) {
	out := map[string]AgentState{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAgents).ForEach(func(k, v []byte) error {
			var st AgentState
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("agent %q: %w", k, err)
			}
			out[string(k)] = st
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("broker: reading agent states: %w", err)
	}
	return out, nil
}

func (s *boltStore) PutAgentState(ctx context.Context, name string, st AgentState) error {
	return s.put(bucketAgents, []byte(name), st)
}

func (s *boltStore) put(bucket, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("broker: encoding: %w", err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(key, b) }); err != nil {
		return fmt.Errorf("broker: writing %s: %w", bucket, err)
	}
	return nil
}

func revKey(kind, value string) []byte { return []byte(kind + "\x00" + value) }

func (s *boltStore) Revocations(ctx context.Context) ([]Revocation, error) {
	var out []Revocation
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRevocations).ForEach(func(k, v []byte) error {
			var r Revocation
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("broker: reading revocations: %w", err)
	}
	return out, nil
}

func (s *boltStore) PutRevocation(ctx context.Context, r Revocation) error {
	return s.put(bucketRevocations, revKey(r.Kind, r.Value), r)
}

func (s *boltStore) UseAssertion(ctx context.Context, id string, exp time.Time) (bool, error) {
	var fresh bool
	val := []byte(exp.UTC().Format(time.RFC3339))
	// Batch coalesces concurrent assertions into one fsync.
	err := s.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAssertions)
		if b.Get([]byte(id)) != nil {
			fresh = false
			return nil
		}
		fresh = true
		return b.Put([]byte(id), val)
	})
	if err != nil {
		return false, fmt.Errorf("broker: recording client assertion: %w", err)
	}
	return fresh, nil
}

func (s *boltStore) PutRefresh(ctx context.Context, rt RefreshToken) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := putJSON(tx.Bucket(bucketFamilies), rt.Family, family{User: rt.User, UserID: rt.UserID, Expires: rt.Expires}); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bucketRefresh), rt.Hash, rt)
	})
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("broker: encoding: %w", err)
	}
	return b.Put([]byte(key), data)
}

func getJSON(b *bolt.Bucket, key string, v any) (bool, error) {
	data := b.Get([]byte(key))
	if data == nil {
		return false, nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("broker: decoding %q: %w", key, err)
	}
	return true, nil
}

func (s *boltStore) GetRefresh(ctx context.Context, hash string, now time.Time) (RefreshToken, error) {
	var rt RefreshToken
	var outcome error
	err := s.db.View(func(tx *bolt.Tx) error {
		outcome = nil
		ok, err := getJSON(tx.Bucket(bucketRefresh), hash, &rt)
		if err != nil {
			return err
		}
		var fam family
		if ok {
			ok, err = getJSON(tx.Bucket(bucketFamilies), rt.Family, &fam)
		}
		switch {
		case err != nil:
			return err
		case !ok:
			outcome = ErrRefreshUnknown
		case fam.Revoked:
			outcome = ErrRefreshRevoked
		case !now.Before(fam.Expires):
			outcome = ErrRefreshExpired
		}
		return nil
	})
	if err != nil {
		return RefreshToken{}, fmt.Errorf("broker: reading refresh token: %w", err)
	}
	if outcome != nil {
		return RefreshToken{}, outcome
	}
	rt.Hash = hash
	return rt, nil
}

func (s *boltStore) RotateRefresh(ctx context.Context, oldHash string, now time.Time, next RefreshToken) (RefreshToken, error) {
	var old RefreshToken
	var outcome error
	err := s.db.Update(func(tx *bolt.Tx) error {
		outcome = nil
		rb, fb := tx.Bucket(bucketRefresh), tx.Bucket(bucketFamilies)
		ok, err := getJSON(rb, oldHash, &old)
		if err != nil {
			return err
		}
		if !ok {
			outcome = ErrRefreshUnknown
			return nil
		}
		old.Hash = oldHash
		var fam family
		if ok, err := getJSON(fb, old.Family, &fam); err != nil || !ok {
			outcome = ErrRefreshUnknown
			return err
		}
		switch {
		case fam.Revoked:
			outcome = ErrRefreshRevoked
			return nil
		case !now.Before(fam.Expires):
			outcome = ErrRefreshExpired
			return nil
		case old.Used:
			fam.Revoked = true
			outcome = ErrRefreshReused
			return putJSON(fb, old.Family, fam)
		}
		old.Used = true
		if err := putJSON(rb, oldHash, old); err != nil {
			return err
		}
		next.Family, next.Expires = old.Family, fam.Expires
		return putJSON(rb, next.Hash, next)
	})
	if err != nil {
		return RefreshToken{}, fmt.Errorf("broker: rotating refresh token: %w", err)
	}
	return old, outcome
}

func (s *boltStore) UndoRotate(ctx context.Context, oldHash, nextHash string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRefresh)
		var old RefreshToken
		ok, err := getJSON(rb, oldHash, &old)
		if err != nil || !ok {
			return err
		}
		old.Used = false
		if err := putJSON(rb, oldHash, old); err != nil {
			return err
		}
		return rb.Delete([]byte(nextHash))
	})
	if err != nil {
		return fmt.Errorf("broker: undoing a refresh token's rotation: %w", err)
	}
	return nil
}

func (s *boltStore) RevokeRefresh(ctx context.Context, hash string) (RefreshToken, error) {
	var rt RefreshToken
	var outcome error
	err := s.db.Update(func(tx *bolt.Tx) error {
		outcome = nil
		ok, err := getJSON(tx.Bucket(bucketRefresh), hash, &rt)
		if err != nil {
			return err
		}
		if !ok {
			outcome = ErrRefreshUnknown
			return nil
		}
		fb := tx.Bucket(bucketFamilies)
		var fam family
		if ok, err := getJSON(fb, rt.Family, &fam); err != nil || !ok {
			return err
		}
		fam.Revoked = true
		return putJSON(fb, rt.Family, fam)
	})
	if err != nil {
		return RefreshToken{}, fmt.Errorf("broker: revoking refresh token: %w", err)
	}
	return rt, outcome
}

func (s *boltStore) RevokeUserFamilies(ctx context.Context, user string) (int, error) {
	return s.revokeFamilies(user, func(f family) bool { return strings.EqualFold(f.User, user) })
}

func (s *boltStore) RevokeAccountFamilies(ctx context.Context, acct Account) (int, error) {
	if acct.ID != "" {
		return s.revokeFamilies(acct.Name, func(f family) bool { return f.UserID == acct.ID })
	}
	return s.revokeFamilies(acct.Name, func(f family) bool { return f.UserID == "" && strings.EqualFold(f.User, acct.Name) })
}

func (s *boltStore) RevokeAccountNameFamilies(ctx context.Context, acct Account) (int, error) {
	if acct.ID == "" {
		return 0, errors.New("broker: revoking the sessions of an account under one name: no account id")
	}
	return s.revokeFamilies(acct.Name, func(f family) bool {
		return f.UserID == acct.ID && strings.EqualFold(f.User, acct.Name)
	})
}

// revokeFamilies revokes every live family that match selects; user names
// them in an error.
func (s *boltStore) revokeFamilies(user string, match func(family) bool) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = 0
		fb := tx.Bucket(bucketFamilies)
		var updates = map[string]family{}
		err := fb.ForEach(func(k, v []byte) error {
			var fam family
			if err := json.Unmarshal(v, &fam); err != nil {
				return err
			}
			if match(fam) && !fam.Revoked {
				fam.Revoked = true
				updates[string(k)] = fam
			}
			return nil
		})
		if err != nil {
			return err
		}
		for k, fam := range updates {
			if err := putJSON(fb, k, fam); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("broker: revoking sessions of %q: %w", user, err)
	}
	return n, nil
}

func (s *boltStore) SessionUsers(ctx context.Context, now time.Time) ([]Account, error) {
	seen := map[Account]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFamilies).ForEach(func(k, v []byte) error {
			var fam family
			if err := json.Unmarshal(v, &fam); err != nil {
				return err
			}
			if !fam.Revoked && now.Before(fam.Expires) && fam.User != "" {
				seen[Account{Name: fam.User, ID: fam.UserID}] = true
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("broker: listing sessions: %w", err)
	}
	return slices.SortedFunc(maps.Keys(seen), func(a, b Account) int {
		return strings.Compare(a.Name+"\x00"+a.ID, b.Name+"\x00"+b.ID)
	}), nil
}

func (s *boltStore) PutHolder(ctx context.Context, acct Account, until time.Time) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, k := tx.Bucket(bucketHolders), holderKey(acct)
		var h Holder
		if ok, err := getJSON(b, k, &h); err != nil {
			return err
		} else if ok && !until.After(h.Until) {
			return nil
		}
		return putJSON(b, k, Holder{Name: acct.Name, ID: acct.ID, Until: until})
	})
	if err != nil {
		return fmt.Errorf("broker: recording a token holder: %w", err)
	}
	return nil
}

func (s *boltStore) DropHolder(ctx context.Context, acct Account) error {
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketHolders).Delete([]byte(holderKey(acct))) })
	if err != nil {
		return fmt.Errorf("broker: forgetting a token holder: %w", err)
	}
	return nil
}

func (s *boltStore) Holders(ctx context.Context, now time.Time) ([]Holder, error) {
	var out []Holder
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHolders).ForEach(func(k, v []byte) error {
			var h Holder
			if err := json.Unmarshal(v, &h); err != nil {
				return err
			}
			if !h.Until.Before(now) && h.Name != "" {
				out = append(out, h)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("broker: listing token holders: %w", err)
	}
	return out, nil
}

func (s *boltStore) Prune(ctx context.Context, now time.Time) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		del := func(bucket []byte, expired func(v []byte) bool) error {
			b := tx.Bucket(bucket)
			var keys [][]byte
			if err := b.ForEach(func(k, v []byte) error {
				if expired(v) {
					keys = append(keys, append([]byte(nil), k...))
				}
				return nil
			}); err != nil {
				return err
			}
			for _, k := range keys {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			return nil
		}
		if err := del(bucketAssertions, func(v []byte) bool {
			t, err := time.Parse(time.RFC3339, string(v))
			return err != nil || now.After(t)
		}); err != nil {
			return err
		}
		if err := del(bucketRevocations, func(v []byte) bool {
			var r Revocation
			return json.Unmarshal(v, &r) == nil && now.After(r.Until)
		}); err != nil {
			return err
		}
		if err := del(bucketRefresh, func(v []byte) bool {
			var r RefreshToken
			return json.Unmarshal(v, &r) == nil && now.After(r.Expires)
		}); err != nil {
			return err
		}
		if err := del(bucketHolders, func(v []byte) bool {
			var h Holder
			return json.Unmarshal(v, &h) == nil && now.After(h.Until)
		}); err != nil {
			return err
		}
		return del(bucketFamilies, func(v []byte) bool {
			var f family
			return json.Unmarshal(v, &f) == nil && now.After(f.Expires)
		})
	})
	if err != nil {
		return fmt.Errorf("broker: pruning state: %w", err)
	}
	return nil
}
