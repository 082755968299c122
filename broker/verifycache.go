package broker

import (
	"crypto/sha256"
	"sync"
	"time"
)

// verifiedMax bounds the verified-token cache. An agent calling a tool
// presents the same token on every call for its few minutes of life; the
// cache holds the tokens in use, not every token ever issued. A user token
// carries the user's groups, so an entry can reach a few KiB: 4,096 of them
// stay within tens of MiB.
const verifiedMax = 4096

// verifiedCache remembers access tokens whose signature, header and shape
// have been checked, so that a token presented again (every tool call of
// an agent carries the same one) skips the Ed25519 verification, the most
// expensive step of Verify.
//
// It is keyed by the SHA-256 of the exact token text: any change to the
// token is a miss and gets the full check. A hit still re-checks, on every
// call, what can change after the first check: that the signing key is
// still trusted (a retired key's tokens fail at once), iss, exp, nbf and
// iat against the clock, the audience, then revocations and the agent's
// state (checkState).
type verifiedCache struct {
	mu  sync.RWMutex
	m   map[[sha256.Size]byte]verifiedEntry
	off bool // set only by the benchmark that measures the full check
}

type verifiedEntry struct {
	c   *claims // never modified once cached
	kid string
}

func newVerifiedCache() *verifiedCache {
	return &verifiedCache{m: make(map[[sha256.Size]byte]verifiedEntry)}
}

func (vc *verifiedCache) get(key [sha256.Size]byte) (verifiedEntry, bool) {
	if vc.off {
		return verifiedEntry{}, false
	}
	vc.mu.RLock()
	e, ok := vc.m[key]
	vc.mu.RUnlock()
	return e, ok
}

// put adds a checked token. When the cache is full it first drops expired
// tokens; if that leaves it over three quarters full, it drops arbitrary
// ones (Go's map order) down to half. A dropped token is only verified in
// full again.
func (vc *verifiedCache) put(key [sha256.Size]byte, e verifiedEntry, now time.Time) {
	if vc.off {
		return
	}
	vc.mu.Lock()
	defer vc.mu.Unlock()
	if len(vc.m) >= verifiedMax {
		for k, v := range vc.m {
			if v.c.Expiry.Time().Add(leeway).Before(now) {
				delete(vc.m, k)
			}
		}
		if len(vc.m) > verifiedMax*3/4 {
			for k := range vc.m {
				if len(vc.m) <= verifiedMax/2 {
					break
				}
				delete(vc.m, k)
			}
		}
	}
	vc.m[key] = e
}

func (vc *verifiedCache) len() int {
	vc.mu.RLock()
	defer vc.mu.RUnlock()
	return len(vc.m)
}
