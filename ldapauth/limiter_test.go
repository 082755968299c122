package ldapauth

import (
	"context"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	type step struct {
		at   time.Duration
		op   string // "allow", "fail", "reset"
		want bool   // allow's answer, or fail's "tripped"
	}
	tests := []struct {
		name    string
		backoff bool
		steps   []step
	}{
		{"user: backoff then refusal then window reset", true, []step{
			{0, "fail", false}, {0, "allow", true},
			{time.Second, "fail", false}, {time.Second, "allow", false}, // backoff 1s after 2 failures
			{2 * time.Second, "allow", true},
			{2 * time.Second, "fail", true}, // third failure trips max=3
			{time.Hour / 2, "allow", true},  // window 10m since last failure has passed
		}},
		{"user: refused inside the window", true, []step{
			{0, "fail", false}, {5 * time.Second, "fail", false}, {10 * time.Second, "fail", true},
			{10*time.Second + 9*time.Minute, "allow", false},
			{10*time.Second + 10*time.Minute, "allow", true},
		}},
		{"reset clears", true, []step{
			{0, "fail", false}, {5 * time.Second, "fail", false}, {6 * time.Second, "reset", false},
			{6 * time.Second, "allow", true},
		}},
		{"source: no backoff, only the count", false, []step{
			{0, "fail", false}, {0, "fail", false}, {0, "allow", true}, {0, "fail", true}, {0, "allow", false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLimiter(3, 10*time.Minute, tt.backoff)
			for i, s := range tt.steps {
				now := t0.Add(s.at)
				var got bool
				switch s.op {
				case "allow":
					got = l.allow("k", now)
				case "fail":
					got = l.fail("k", now)
				case "reset":
					l.reset("k")
					continue
				}
				if got != s.want {
					t.Fatalf("step %d (%s at %v): got %v, want %v", i, s.op, s.at, got, s.want)
				}
			}
		})
	}
	if l := newLimiter(1, time.Minute, true); !l.allow("", t0) || l.fail("", t0) {
		t.Error("the empty key (no source) must never be limited")
	}
}

func TestLimiterBounded(t *testing.T) {
	l := newLimiter(3, time.Minute, true)
	t0 := time.Unix(1_700_000_000, 0)
	for i := 0; i < limiterMaxKeys+10; i++ {
		l.fail(string(rune(i))+"k", t0.Add(time.Duration(i)*time.Millisecond))
	}
	if n := len(l.keys); n > limiterMaxKeys {
		t.Errorf("keys: got %d, want at most %d", n, limiterMaxKeys)
	}
}

// An Authenticator that replaces another (a reload) takes over the
// failures it counted, per user, account and source, and judges them by
// its own limits: lowered, the user is refused at once; raised, one more
// attempt reaches the DC and is counted on top.
func TestFailuresCarryOverToTheReplacement(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	u := freshUser(t, "ro")
	clk := &fakeClock{t: time.Now()}
	limit := func(n int) Config {
		return adConfig(func(c *Config) { c.MaxFailuresPerUser, c.MaxFailuresPerSource = n, 2*n })
	}
	j := newJournal(t)
	open := func(cfg Config, prev *Authenticator) *Authenticator {
		t.Helper()
		a, err := New(cfg, Options{Audit: j, BindPassword: secrets, Now: clk.Now, Replaces: prev})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	try := func(a *Authenticator, pass string, want Reason, badPwd string) {
		t.Helper()
		clk.Add(10 * time.Second) // past any backoff
		_, out, err := a.Login(ctx, Request{Username: u, Password: pass, Source: "198.51.100.9"})
		if err != nil || out.Reason != want {
			t.Fatalf("got %+v %v, want %q", out, err, want)
		}
		if got, err := dc.Attr(ctx, u, "badPwdCount"); err != nil || len(got) != 1 || got[0] != badPwd {
			t.Fatalf("badPwdCount: got %v %v, want [%s]", got, err, badPwd)
		}
	}
	first := open(limit(3), nil)
	try(first, "Wrong-1x!", ReasonInvalidCredentials, "1")
	try(first, "Wrong-2x!", ReasonInvalidCredentials, "2")

	// Each trip of the user's limit is audited once, whether a failure
	// or a lowered limit tripped it.
	trips := func(want int) {
		t.Helper()
		n := 0
		for _, e := range events(t, j) {
			if e.Event.Reason == "rate_limit_tripped" && e.Event.Target == "user:"+u {
				n++
			}
		}
		if n != want {
			t.Errorf("rate_limit_tripped events for %s: got %d, want %d", u, n, want)
		}
	}
	trips(0)
	lowered := open(limit(2), first)
	try(lowered, "Wrong-3x!", ReasonRateLimited, "2")
	try(lowered, pw(u), ReasonRateLimited, "2")
	trips(1)

	raised := open(limit(4), lowered)
	try(raised, "Wrong-3x!", ReasonInvalidCredentials, "3")
	try(raised, "Wrong-4x!", ReasonInvalidCredentials, "4")
	try(raised, pw(u), ReasonRateLimited, "4")
	trips(2)
	if had, _ := raised.Unlock(u, ""); !had {
		t.Errorf("Unlock on the replacement: no failures were counted")
	}
	try(raised, pw(u), "", "0")
}
