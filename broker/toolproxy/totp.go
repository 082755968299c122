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

func totpAD(user string) []byte { return []byte("applianced toolproxy totp v1\x00" + user) }

// EnrollTOTP creates (or replaces) user's TOTP seed and returns the
// otpauth:// URI for their authenticator. The seed is stored sealed with
// AES-256-GCM under the key the KeySource gives for "toolproxy.totp", bound
// to the user's name. The URI holds the seed: show it to the user only.
func (p *Proxy) EnrollTOTP(ctx context.Context, user string) (string, error) {
	if !userRE.MatchString(user) {
		return "", fmt.Errorf("toolproxy: %q is not a user name", user)
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
	sealed := aead.Seal(nonce, nonce, []byte(key.Secret()), totpAD(user))
	if err := p.store.putTOTP(user, &totpRecord{Sealed: sealed, Enrolled: p.now().UTC()}); err != nil {
		return "", fmt.Errorf("toolproxy: storing the TOTP enrolment: %w", err)
	}
	return key.URL(), nil
}

// verifyTOTP checks code against user's seed at now (one step of clock skew
// either way) and accepts each time step once.
func (p *Proxy) verifyTOTP(ctx context.Context, user, code string, now time.Time) (bool, error) {
	rec, err := p.store.getTOTP(user)
	if err != nil {
		return false, err
	}
	if rec == nil {
		return false, nil
	}
	aead, err := p.totpAEAD(ctx)
	if err != nil {
		return false, err
	}
	ns := aead.NonceSize()
	if len(rec.Sealed) < ns {
		return false, errors.New("toolproxy: sealed TOTP seed is corrupt")
	}
	seed, err := aead.Open(nil, rec.Sealed[:ns], rec.Sealed[ns:], totpAD(user))
	if err != nil {
		return false, fmt.Errorf("toolproxy: opening the TOTP seed: %w", err)
	}
	defer clear(seed)
	if len(code) != 6 {
		return false, nil
	}
	for _, skew := range []int64{0, -1, 1} {
		t := now.Add(time.Duration(skew*totpPeriod) * time.Second)
		want, err := totp.GenerateCodeCustom(string(seed), t, totpOpts)
		if err != nil {
			return false, err
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			return p.store.useTOTPStep(user, t.Unix()/totpPeriod)
		}
	}
	return false, nil
}
