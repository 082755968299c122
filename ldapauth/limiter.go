package ldapauth

import (
	"context"
	"sync"
	"time"
)

// limiter counts failed logins per key (a user name or a source address)
// and refuses attempts before the directory is asked: after two failures the
// next attempt must wait a doubling backoff (1s, 2s, 4s, …), and after max
// failures within the window every attempt is refused until the window has
// passed since the last failure. A success clears the key.
type limiter struct {
	max     int
	window  time.Duration
	backoff bool // per-user keys back off; per-source keys (a chatbot backend serves many users) only count

	mu   sync.Mutex
	keys map[string]*failures
	busy map[string]int // attempts at the directory now, per key
}

type failures struct {
	n       int
	last    time.Time
	tripped bool // the trip was reported (by fail or checkTrip)
}

const (
	limiterBackoffAfter = 2
	limiterBackoffBase  = time.Second
	limiterMaxKeys      = 100000
)

func newLimiter(max int, window time.Duration, backoff bool) *limiter {
	return &limiter{max: max, window: window, backoff: backoff, keys: map[string]*failures{}, busy: map[string]int{}}
}

// configure sets new limits (a reload); the failures counted stay and are
// judged by them from now on.
func (l *limiter) configure(max int, window time.Duration) {
	l.mu.Lock()
	l.max, l.window = max, window
	l.mu.Unlock()
}

// allow says whether an attempt for key may go to the directory now.
func (l *limiter) allow(key string, now time.Time) bool {
	ok, _ := l.check(key, now)
	return ok
}

// check is allow, and when the attempt is refused, how long until the
// next one would be allowed.
func (l *limiter) check(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if key == "" {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.keys[key]
	if f == nil {
		return true, 0
	}
	since := now.Sub(f.last)
	if since >= l.window {
		delete(l.keys, key)
		return true, 0
	}
	if f.n >= l.max {
		return false, l.window - since
	}
	if l.backoff && f.n >= limiterBackoffAfter {
		wait := limiterBackoffBase << min(f.n-limiterBackoffAfter, 10)
		return since >= wait, wait - since
	}
	return true, 0
}

// checkTrip is check for a login attempt, and reports tripped once per
// limited key when no failure reported it: a reload that lowers max below
// the failures counted limits the key without a failure to trip it.
func (l *limiter) checkTrip(key string, now time.Time) (ok bool, retryAfter time.Duration, tripped bool) {
	ok, retryAfter = l.check(key, now)
	if ok {
		return ok, retryAfter, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.keys[key]; f != nil && f.n >= l.max && !f.tripped {
		f.tripped = true
		return ok, retryAfter, true
	}
	return ok, retryAfter, false
}

// begin takes one of key's attempts at the directory, waiting (until ctx
// ends, at most beginWait) while the attempts out plus the failures
// counted reach max: a failure is counted only when its bind comes back,
// so without this a burst of parallel wrong passwords would all pass
// check and reach the directory together, past the limit and into AD's
// lockout. It refuses, like check, once the key is limited. Every begin
// that returns true is followed by end.
func (l *limiter) begin(ctx context.Context, key string, now func() time.Time) (ok bool, retryAfter time.Duration) {
	if key == "" {
		return true, 0
	}
	ctx, cancel := context.WithTimeout(ctx, beginWait)
	defer cancel()
	for {
		if ok, wait := l.check(key, now()); !ok {
			return false, wait
		}
		l.mu.Lock()
		n := 0
		if f := l.keys[key]; f != nil {
			n = f.n
		}
		if l.busy[key]+n < l.max {
			l.busy[key]++
			l.mu.Unlock()
			return true, 0
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return false, time.Second
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// beginWait bounds how long an attempt waits for one of its user's to come
// back from the directory.
const beginWait = 5 * time.Second

// end gives back what begin took.
func (l *limiter) end(key string) {
	if key == "" {
		return
	}
	l.mu.Lock()
	if l.busy[key]--; l.busy[key] <= 0 {
		delete(l.busy, key)
	}
	l.mu.Unlock()
}

// fail records a failure; it returns true when this failure trips the
// limit (the key is now refused) and nothing reported the trip before, so
// the caller can audit that once.
func (l *limiter) fail(key string, now time.Time) bool {
	if key == "" {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.keys[key]
	if f == nil || now.Sub(f.last) >= l.window {
		if len(l.keys) >= limiterMaxKeys {
			l.prune(now)
		}
		f = &failures{}
		l.keys[key] = f
	}
	f.n++
	f.last = now
	// Exactly at max is a trip under the limits now (also after a raise);
	// past it, only if nothing reported it (a lowered limit, attempts in
	// flight).
	if f.n == l.max || (f.n > l.max && !f.tripped) {
		f.tripped = true
		return true
	}
	return false
}

// reset clears key after a successful login; it reports whether key had
// failures counted.
func (l *limiter) reset(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, had := l.keys[key]
	delete(l.keys, key)
	return had
}

// prune drops expired keys, and if none expired, the oldest half (memory
// bound against a spray of random names).
func (l *limiter) prune(now time.Time) {
	for k, f := range l.keys {
		if now.Sub(f.last) >= l.window {
			delete(l.keys, k)
		}
	}
	if len(l.keys) < limiterMaxKeys {
		return
	}
	cut := now.Add(-l.window / 2)
	for k, f := range l.keys {
		if f.last.Before(cut) {
			delete(l.keys, k)
		}
	}
}
