package toolproxy

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// ErrNotEnrolled means the user has no TOTP enrolment.
var ErrNotEnrolled = errors.New("toolproxy: user has no TOTP enrolment")

// ErrNoAccountID means a TOTP enrolment was asked without the directory
// account id it is to be bound to.
var ErrNoAccountID = errors.New("toolproxy: a TOTP enrolment needs the user's directory account id")

const (
	totpKeyPurpose = "toolproxy.totp"
	totpPeriod     = 30
)

var userRE = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,128}$`)

var totpOpts = totp.ValidateOpts{Period: totpPeriod, Skew: 0, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

func (p *Proxy) totpAEAD(ctx context.Context) (cipher.AEAD, error) {
	key, err := p.opts.Keys.Key(ctx, totpKeyPurpose)
	if err != nil {
		return nil, fmt.Errorf("toolproxy: TOTP sealing key: %w", err)
	}
	if len(key) != 32 {
		return nil, errors.New("toolproxy: TOTP sealing key must be 32 bytes")
	}
	blk, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// totpAD binds a sealed seed to the account it was enrolled for: a seed
// moved to another account's record does not open.
func totpAD(accountID string) []byte {
	return []byte("applianced toolproxy totp v2\x00" + accountID)
}

// EnrollTOTP creates (or replaces) the TOTP seed of the directory account
// accountID, which the directory knows as user, and returns the otpauth://
// URI for their authenticator. The seed is stored under the account id,
// sealed with AES-256-GCM under the key the KeySource gives for
// "toolproxy.totp" and bound to that id; the name is kept for display and
// audit. An enrolment that an older version stored under the name alone is
// removed. The URI holds the seed: show it to the user only.
func (p *Proxy) EnrollTOTP(ctx context.Context, user, accountID string) (string, error) {
	if !userRE.MatchString(user) {
		return "", fmt.Errorf("toolproxy: %q is not a user name", user)
	}
	if accountID == "" {
		return "", ErrNoAccountID
	}
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer: p.opts.Issuer, AccountName: user, Period: totpPeriod, SecretSize: 20,
		Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1, Rand: rand.Reader,
	})
	if err != nil {
		return "", fmt.Errorf("toolproxy: generating a TOTP seed: %w", err)
	}
	aead, err := p.totpAEAD(ctx)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return "", err
	}
	sealed := aead.Seal(nonce, nonce, []byte(key.Secret()), totpAD(accountID))
	p.totpMu.Lock()
	defer p.totpMu.Unlock()
	if err := p.store.putTOTP(accountID, &totpRecord{User: user, Sealed: sealed, Enrolled: p.now().UTC()}); err != nil {
		return "", fmt.Errorf("toolproxy: storing the TOTP enrolment: %w", err)
	}
	return key.URL(), nil
}

// totpResult is the outcome of a TOTP check.
type totpResult int

const (
	totpWrongCode    totpResult = iota // wrong, replayed or malformed code
	totpOK                             // the account's code for now
	totpNotEnrolled                    // the account has no enrolment
	totpOtherAccount                   // the name's only enrolment is another account's
	totpLegacy                         // the name's enrolment predates account ids
	totpLocked                         // the account's TOTP was already locked: no code tried
	totpLockedNow                      // a wrong code, and the one that locks the account's TOTP
)

// maxAccountTOTPFailures is how many wrong codes in a row, over all
// approvals, lock an account's TOTP until an administrator unlocks it
// (UnlockTOTP) or enrolls it again. Each approval allows maxTOTPFailures; without this limit whoever
// holds the user's token could ask for approval after approval and keep
// guessing.
const maxAccountTOTPFailures = 10

func totpLockedMessage(user string) string {
	return fmt.Sprintf("TOTP for %s is locked after %d wrong codes in a row; an administrator unlocks it (applianced user totp unlock %s), "+
		"or enrolls a new authenticator if the old one is lost (applianced user totp enroll %s)",
		user, maxAccountTOTPFailures, user, user)
}

// TOTPStatus is what an administrator is told of an account's TOTP
// enrolment. It never holds the seed.
type TOTPStatus struct {
	User      string `json:"user"`
	AccountID string `json:"account_id"` // the directory account the name resolves to now
	Enrolled  bool   `json:"enrolled"`
	// EnrolledAt is when the seed was made.
	EnrolledAt time.Time `json:"enrolled_at,omitzero"`
	// Failures counts the wrong codes in a row, over all approvals.
	Failures int `json:"failures"`
	// Locked is Failures at maxAccountTOTPFailures: no code is tried until
	// an administrator unlocks or enrolls the account.
	Locked bool `json:"locked"`
	// LockedAt is when it locked; zero if it was locked by a version that
	// did not keep the time.
	LockedAt time.Time `json:"locked_at,omitzero"`
	// ByNameOnly and OtherAccount explain a name without an enrolment for
	// its account: an enrolment stored by a version before account ids,
	// or one made for another account that had the name. Neither is
	// accepted; the user is to be enrolled again.
	ByNameOnly   bool `json:"enrolled_by_name_only,omitempty"`
	OtherAccount bool `json:"enrolled_for_another_account,omitempty"`
}

// TOTPUnlock is the outcome of UnlockTOTP: the enrolment as it is now, and
// how many wrong codes in a row the unlock cleared (0: it was not locked,
// and nothing changed).
type TOTPUnlock struct {
	TOTPStatus
	Cleared int `json:"failures_cleared"`
}

// errAuditUnlock is a TOTP unlock the journal would not take (so not done).
var errAuditUnlock = errors.New("toolproxy: recording a TOTP unlock")

func statusOf(user, accountID string, r *totpRecord) TOTPStatus {
	st := TOTPStatus{User: user, AccountID: accountID}
	if r == nil {
		return st
	}
	st.Enrolled, st.EnrolledAt, st.Failures, st.Locked = true, r.Enrolled, r.Failures, r.locked()
	if st.Locked {
		st.LockedAt = r.LockedAt
	}
	return st
}

// StatusTOTP says whether the directory account accountID, which the
// directory knows as user, is enrolled, and how many wrong codes in a row
// count against it, locked or not.
func (p *Proxy) StatusTOTP(_ context.Context, user, accountID string) (*TOTPStatus, error) {
	if accountID == "" {
		return nil, ErrNoAccountID
	}
	rec, err := p.store.getTOTP(accountID)
	if err != nil {
		return nil, fmt.Errorf("toolproxy: reading the TOTP enrolment: %w", err)
	}
	st := statusOf(user, accountID, rec)
	if rec == nil {
		if st.OtherAccount, st.ByNameOnly, err = p.store.totpByName(user); err != nil {
			return nil, fmt.Errorf("toolproxy: reading the TOTP enrolments: %w", err)
		}
	}
	return &st, nil
}

// UnlockTOTP clears the lock of the directory account accountID's TOTP
// (which the directory knows as user) and the wrong codes that caused it,
// on behalf of an administrator, by; the seed stays, so the user's
// authenticator goes on working. It is recorded before it takes effect: a
// journal that refuses leaves the enrolment as it was. An enrolment that
// is not locked is left as it is, its count included (only a right code
// starts that count anew), and the attempt is recorded all the same: an
// administrator acting on a user's second factor is what an auditor looks
// for, whatever it changed. ErrNotEnrolled: the account has no enrolment.
func (p *Proxy) UnlockTOTP(ctx context.Context, user, accountID string, by audit.Actor) (*TOTPUnlock, error) {
	if accountID == "" {
		return nil, ErrNoAccountID
	}
	// No wrong code is counted between the check and the unlock.
	p.totpMu.Lock()
	defer p.totpMu.Unlock()
	rec, err := p.store.getTOTP(accountID)
	switch {
	case err != nil:
		return nil, fmt.Errorf("toolproxy: reading the TOTP enrolment: %w", err)
	case rec == nil:
		return nil, ErrNotEnrolled
	}
	cleared := 0
	if rec.locked() {
		cleared = rec.Failures
	}
	ev := &audit.Event{
		Type: "auth.totp_unlock", Actor: by, Action: "totp.unlock", Target: user, Outcome: audit.OutcomeSuccess, Source: "unix",
		Details: map[string]string{"user": user, "account_id": accountID, "failures_cleared": strconv.Itoa(cleared)},
	}
	if cleared == 0 {
		ev.Reason = "not locked: nothing changed"
		ev.Details["failures"] = strconv.Itoa(rec.Failures)
	} else if !rec.LockedAt.IsZero() {
		ev.Details["locked_at"] = rec.LockedAt.UTC().Format(time.RFC3339)
	}
	if _, err := p.opts.Audit.Append(context.WithoutCancel(ctx), ev); err != nil {
		return nil, fmt.Errorf("%w: %w", errAuditUnlock, err)
	}
	if cleared > 0 {
		if _, err := p.store.unlockTOTP(accountID); err != nil {
			// The unlock recorded above did not happen: say so.
			_, _ = p.opts.Audit.Append(context.WithoutCancel(ctx), &audit.Event{
				Type: ev.Type, Actor: by, Action: ev.Action, Target: user, Outcome: audit.OutcomeFailure, Source: ev.Source,
				Reason:  "the unlock was not stored: " + err.Error(),
				Details: map[string]string{"user": user, "account_id": accountID, "failures_cleared": "0"},
			})
			return nil, fmt.Errorf("toolproxy: unlocking the TOTP enrolment: %w", err)
		}
	}
	now, err := p.store.getTOTP(accountID)
	if err != nil {
		return nil, fmt.Errorf("toolproxy: reading the TOTP enrolment: %w", err)
	}
	return &TOTPUnlock{TOTPStatus: statusOf(user, accountID, now), Cleared: cleared}, nil
}

// verifyTOTP checks code against the seed enrolled for the account
// accountID (user is its name) at now, with one step of clock skew either
// way, and accepts each time step once. Only that account's seed is tried:
// an enrolment under the same name for another account, or one stored by
// an older version under the name alone, never matches; the result says
// which, for the audit record. A wrong code counts against the account;
// beforeLock runs before the one that locks it counts, and its error
// leaves it uncounted. The caller holds totpMu.
func (p *Proxy) verifyTOTP(ctx context.Context, user, accountID, code string, now time.Time, beforeLock func() error) (totpResult, error) {
	rec, err := p.store.getTOTP(accountID)
	if err != nil {
		return totpWrongCode, err
	}
	if rec == nil {
		other, legacy, err := p.store.totpByName(user)
		switch {
		case err != nil:
			return totpWrongCode, err
		case legacy:
			return totpLegacy, nil
		case other:
			return totpOtherAccount, nil
		}
		return totpNotEnrolled, nil
	}
	if rec.locked() {
		return totpLocked, nil
	}
	aead, err := p.totpAEAD(ctx)
	if err != nil {
		return totpWrongCode, err
	}
	ns := aead.NonceSize()
	if len(rec.Sealed) < ns {
		return totpWrongCode, errors.New("toolproxy: sealed TOTP seed is corrupt")
	}
	seed, err := aead.Open(nil, rec.Sealed[:ns], rec.Sealed[ns:], totpAD(accountID))
	if err != nil {
		return totpWrongCode, fmt.Errorf("toolproxy: opening the TOTP seed: %w", err)
	}
	defer clear(seed)
	if len(code) == 6 {
		for _, skew := range []int64{0, -1, 1} {
			t := now.Add(time.Duration(skew*totpPeriod) * time.Second)
			want, err := totp.GenerateCodeCustom(string(seed), t, totpOpts)
			if err != nil {
				return totpWrongCode, err
			}
			if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
				ok, err := p.store.useTOTPStep(accountID, t.Unix()/totpPeriod)
				if err != nil {
					return totpWrongCode, err
				}
				if ok {
					return totpOK, nil
				}
				break // a replayed code is a wrong one
			}
		}
	}
	// The failure that locks is recorded before it takes effect.
	lock := rec.Failures+1 >= maxAccountTOTPFailures
	if lock && beforeLock != nil {
		if err := beforeLock(); err != nil {
			return totpWrongCode, err
		}
	}
	if _, err := p.store.totpFailed(accountID, now); err != nil {
		return totpWrongCode, err
	}
	if lock {
		return totpLockedNow, nil
	}
	return totpWrongCode, nil
}
