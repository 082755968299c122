package toolproxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketApprovals = []byte("approvals")
	// bucketTOTP holds enrolments keyed by user name, as stored by
	// versions before account ids: read only to say they must be redone.
	bucketTOTP = []byte("totp")
	// bucketTOTPAccounts holds enrolments keyed by directory account id.
	bucketTOTPAccounts = []byte("totp_accounts")
	bucketSources      = []byte("sources")
)

// Approval states.
const (
	StatusPending  = "pending"
	StatusApproved = "approved"
	StatusDenied   = "denied"
	StatusUsed     = "used"
	StatusExpired  = "expired"
)

// Sentinel errors of approvals.
var (
	ErrApprovalNotFound = errors.New("toolproxy: no such approval")
	ErrApprovalPending  = errors.New("toolproxy: approval not decided yet")
	ErrApprovalDenied   = errors.New("toolproxy: approval denied")
	ErrApprovalUsed     = errors.New("toolproxy: approval already used")
	ErrApprovalExpired  = errors.New("toolproxy: approval expired")
	ErrApprovalMismatch = errors.New("toolproxy: approval is for a different call")
	ErrApprovalDecided  = errors.New("toolproxy: approval already decided")
)

// Approval is a request for a human to allow one exact call.
type Approval struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Agent  string `json:"agent"`
	User   string `json:"user,omitempty"`
	// UserID is the directory account id of User (the token's oid); empty
	// when the agent acts for no user, and in approvals stored by versions
	// before account ids (which only an administrator can decide).
	UserID     string    `json:"user_id,omitempty"`
	Tool       string    `json:"tool"`
	Method     string    `json:"method"`
	Path       string    `json:"path"` // for display: query values redacted
	BodySHA256 string    `json:"body_sha256"`
	Reason     string    `json:"reason"`
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
	DecidedBy  string    `json:"decided_by,omitempty"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	UsedAt     time.Time `json:"used_at,omitzero"`
	// CallHash binds the approval to agent, user, tool, method, exact path
	// and query, and body hash.
	CallHash string `json:"call_hash"`
	// Failures counts wrong TOTP attempts; at maxTOTPFailures the approval
	// is denied.
	Failures int `json:"failures,omitempty"`
}

// effective returns the status as of now.
func (a *Approval) effective(now time.Time) string {
	if (a.Status == StatusPending || a.Status == StatusApproved) && !now.Before(a.Expires) {
		return StatusExpired
	}
	return a.Status
}

const maxTOTPFailures = 5

// store is the proxy's bbolt file.
type store struct{ db *bolt.DB }

func openStore(path string) (*store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("toolproxy: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketApprovals, bucketTOTP, bucketTOTPAccounts, bucketSources} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("toolproxy: preparing %s: %w", path, err)
	}
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

func getApproval(b *bolt.Bucket, id string) (*Approval, error) {
	v := b.Get([]byte(id))
	if v == nil {
		return nil, ErrApprovalNotFound
	}
	var a Approval
	if err := json.Unmarshal(v, &a); err != nil {
		return nil, fmt.Errorf("toolproxy: approval %s is corrupt: %w", id, err)
	}
	return &a, nil
}

func putApproval(b *bolt.Bucket, a *Approval) error {
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return b.Put([]byte(a.ID), v)
}

// maxPendingPerAgent bounds the approvals one agent may have waiting for
// one user (or for itself alone): an agent in a loop must not bury the one
// that matters under hundreds, and one user cannot use up the room of the
// agent's other users.
const maxPendingPerAgent = 20

// ErrTooManyPending means the agent has maxPendingPerAgent approvals
// waiting already for the same user.
var ErrTooManyPending = errors.New("toolproxy: too many approvals pending")

// TooManyPendingError is ErrTooManyPending with when the first of them
// expires.
type TooManyPendingError struct{ FirstExpiry time.Time }

func (e *TooManyPendingError) Error() string { return ErrTooManyPending.Error() }
func (e *TooManyPendingError) Unwrap() error { return ErrTooManyPending }

// createApproval stores a, unless an approval for the very same call
// (CallHash) is still pending: that one is returned instead, so that
// asking again does not queue a second one. It refuses with
// ErrTooManyPending when a's agent has maxPendingPerAgent pending for a's
// user (or for itself alone), and it
// drops approvals that ended over a day ago (not one whose expiry is still
// to be recorded by the sweep).
func (s *store) createApproval(a *Approval, now time.Time) (*Approval, error) {
	out := a
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketApprovals)
		var old [][]byte
		var same *Approval
		pending := 0
		var first time.Time
		_ = b.ForEach(func(k, v []byte) error {
			var x Approval
			if json.Unmarshal(v, &x) != nil {
				return nil
			}
			switch {
			case now.Sub(x.Expires) > 24*time.Hour && !dueToExpire(&x, now):
				old = append(old, append([]byte(nil), k...))
			case x.effective(now) == StatusPending && x.Agent == a.Agent && x.User == a.User:
				pending++
				if first.IsZero() || x.Expires.Before(first) {
					first = x.Expires
				}
				if x.CallHash == a.CallHash && same == nil {
					same = &x
				}
			}
			return nil
		})
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		switch {
		case same != nil:
			out = same
			return nil
		case pending >= maxPendingPerAgent:
			return &TooManyPendingError{FirstExpiry: first}
		}
		return putApproval(b, a)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *store) approval(id string) (*Approval, error) {
	var a *Approval
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		a, err = getApproval(tx.Bucket(bucketApprovals), id)
		return err
	})
	return a, err
}

// updateApproval runs fn on the approval inside one write transaction and
// stores the result when fn returns nil.
func (s *store) updateApproval(id string, fn func(a *Approval) error) (*Approval, error) {
	var out *Approval
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketApprovals)
		a, err := getApproval(b, id)
		if err != nil {
			return err
		}
		if err := fn(a); err != nil {
			out = a
			return err
		}
		out = a
		return putApproval(b, a)
	})
	return out, err
}

// updateApprovalKeep is updateApproval that stores a even when fn returns
// an error (to count a failed attempt), and returns fn's error.
func (s *store) updateApprovalKeep(id string, fn func(a *Approval) error) (*Approval, error) {
	var out *Approval
	var fnErr error
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketApprovals)
		a, err := getApproval(b, id)
		if err != nil {
			return err
		}
		fnErr = fn(a)
		out = a
		return putApproval(b, a)
	})
	if err != nil {
		return out, err
	}
	return out, fnErr
}

// consume marks an approved approval used if it binds this exact call.
func (s *store) consume(id, callHash, legacyHash string, now time.Time) (*Approval, error) {
	return s.updateApproval(id, func(a *Approval) error {
		switch a.effective(now) {
		case StatusPending:
			return ErrApprovalPending
		case StatusDenied:
			return ErrApprovalDenied
		case StatusUsed:
			return ErrApprovalUsed
		case StatusExpired:
			return ErrApprovalExpired
		}
		// An approval stored before account ids were kept names none, and
		// its hash covers the call without one.
		if a.CallHash != callHash && !(a.UserID == "" && legacyHash != "" && a.CallHash == legacyHash) {
			return ErrApprovalMismatch
		}
		a.Status = StatusUsed
		a.UsedAt = now
		return nil
	})
}

// decide approves or denies a pending approval.
func (s *store) decide(id string, approve bool, by string, now time.Time) (*Approval, error) {
	return s.updateApproval(id, func(a *Approval) error {
		switch a.effective(now) {
		case StatusExpired:
			return ErrApprovalExpired
		case StatusPending:
		default:
			return ErrApprovalDecided
		}
		a.Status = StatusDenied
		if approve {
			a.Status = StatusApproved
		}
		a.DecidedBy, a.DecidedAt = by, now
		return nil
	})
}

// listApprovals returns the stored approvals, newest first, with their
// status as of now.
func (s *store) listApprovals(now time.Time) ([]Approval, error) {
	var out []Approval
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApprovals).ForEach(func(k, v []byte) error {
			var a Approval
			if err := json.Unmarshal(v, &a); err != nil {
				return nil
			}
			a.Status = a.effective(now)
			out = append(out, a)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, err
}

func sourceKey(agent, addr string) []byte { return []byte(agent + "\x00" + addr) }

func (s *store) sourceSeen(agent, addr string) (bool, error) {
	var seen bool
	err := s.db.View(func(tx *bolt.Tx) error {
		seen = tx.Bucket(bucketSources).Get(sourceKey(agent, addr)) != nil
		return nil
	})
	return seen, err
}

func (s *store) markSource(agent, addr string, now time.Time) error {
	if seen, err := s.sourceSeen(agent, addr); err != nil || seen {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSources).Put(sourceKey(agent, addr), []byte(now.UTC().Format(time.RFC3339)))
	})
}

// totpRecord is an account's enrolment: the sealed seed, the last time
// step accepted (a code is good once), and the name the account had when
// it enrolled (for display and audit; records stored under a name by older
// versions have none).
type totpRecord struct {
	User string `json:"user,omitempty"`
	// Failures counts wrong codes in a row, over all approvals; at
	// maxAccountTOTPFailures the enrolment is locked until an administrator
	// unlocks or replaces it.
	Failures int       `json:"failures,omitempty"`
	Sealed   []byte    `json:"sealed"`
	LastStep int64     `json:"last_step"`
	Enrolled time.Time `json:"enrolled"`
	// LockedAt is when the wrong code that locked it was counted; zero
	// when not locked, and in a record locked by a version that did not
	// keep the time.
	LockedAt time.Time `json:"locked_at,omitzero"`
}

// locked says whether r's wrong codes in a row have locked it.
func (r *totpRecord) locked() bool { return r.Failures >= maxAccountTOTPFailures }

// putTOTP stores accountID's enrolment, replacing any it had, and removes
// an enrolment stored under the same name by an older version.
func (s *store) putTOTP(accountID string, r *totpRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketTOTP).Delete([]byte(r.User)); err != nil {
			return err
		}
		return tx.Bucket(bucketTOTPAccounts).Put([]byte(accountID), v)
	})
}

func (s *store) getTOTP(accountID string) (*totpRecord, error) {
	var r *totpRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTOTPAccounts).Get([]byte(accountID))
		if v == nil {
			return nil
		}
		r = &totpRecord{}
		return json.Unmarshal(v, r)
	})
	return r, err
}

// totpByName says whether user has an enrolment stored by an older version
// under the name alone (legacy), or one under another account's id that
// had the name when it enrolled (other).
func (s *store) totpByName(user string) (other, legacy bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		legacy = tx.Bucket(bucketTOTP).Get([]byte(user)) != nil
		return tx.Bucket(bucketTOTPAccounts).ForEach(func(_, v []byte) error {
			var r totpRecord
			if json.Unmarshal(v, &r) == nil && r.User == user {
				other = true
			}
			return nil
		})
	})
	return other, legacy, err
}

// updateTOTP runs fn on accountID's enrolment in one transaction and
// stores it when fn says it changed it; nothing when there is none.
func (s *store) updateTOTP(accountID string, fn func(r *totpRecord) (changed bool)) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTOTPAccounts)
		v := b.Get([]byte(accountID))
		if v == nil {
			return nil
		}
		var r totpRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		if !fn(&r) {
			return nil
		}
		nv, err := json.Marshal(&r)
		if err != nil {
			return err
		}
		return b.Put([]byte(accountID), nv)
	})
}

// useTOTPStep records step as used for accountID if it is newer than the
// last one; false means a replay.
func (s *store) useTOTPStep(accountID string, step int64) (ok bool, err error) {
	err = s.updateTOTP(accountID, func(r *totpRecord) bool {
		if step <= r.LastStep {
			return false
		}
		r.LastStep, r.Failures, ok = step, 0, true
		return true
	})
	return ok, err
}

// totpFailed counts a wrong code for accountID at now and returns its
// wrong codes in a row; 0 if it has no enrolment. The code that locks the
// enrolment sets its LockedAt.
func (s *store) totpFailed(accountID string, now time.Time) (n int, err error) {
	err = s.updateTOTP(accountID, func(r *totpRecord) bool {
		r.Failures++
		n = r.Failures
		if r.locked() && r.LockedAt.IsZero() {
			r.LockedAt = now.UTC()
		}
		return true
	})
	return n, err
}

// unlockTOTP clears the wrong codes counted against accountID's enrolment,
// and with them its lock, if it is locked; the seed and the last step used
// stay. It says whether it cleared anything: an enrolment that is not
// locked (or none) is left as it is.
func (s *store) unlockTOTP(accountID string) (cleared bool, err error) {
	err = s.updateTOTP(accountID, func(r *totpRecord) bool {
		if !r.locked() {
			return false
		}
		r.Failures, r.LockedAt, cleared = 0, time.Time{}, true
		return true
	})
	return cleared, err
}
