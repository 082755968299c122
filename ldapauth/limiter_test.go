package ldapauth

import (
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
