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
	"time"

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
// approvals, lock an account's TOTP until an administrator enrolls it
// again. Each approval allows maxTOTPFailures; without this limit whoever
// holds the user's token could ask for approval after approval and keep
// guessing.
const maxAccountTOTPFailures = 10

func totpLockedMessage(user string) string {
	return fmt.Sprintf("TOTP for %s is locked after %d wrong codes in a row; an administrator enrolls them again (applianced user totp enroll %s)",
		user, maxAccountTOTPFailures, user)
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
