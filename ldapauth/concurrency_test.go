package ldapauth

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
)

// A burst of wrong passwords for one user, sent at once, reaches the DC no
// more often than max_failures_per_user allows: the failure is counted only
// when its bind returns, so without a guard all of them would pass the
// check together and lock the account in AD (here at 6 bad passwords).
func TestConcurrentLoginsStayWithinTheUserLimit(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	u := freshUser(t, "cc")
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.MaxFailuresPerUser = 3
		c.MaxConnections = 16
	}), nil)
	const n = 12
	var wg sync.WaitGroup
	reasons := make([]Reason, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, out, err := a.Login(ctx, Request{Username: u, Password: fmt.Sprintf("Wrong-%dx!", i), Source: fmt.Sprintf("198.51.100.%d", i+1)})
			if err != nil {
				t.Error(err)
				return
			}
			reasons[i] = out.Reason
		}()
	}
	close(start)
	wg.Wait()
	reached := 0
	for _, r := range reasons {
		if r != ReasonRateLimited {
			reached++
		}
	}
	bad, err := dc.Attr(ctx, u, "badPwdCount")
	if err != nil {
		t.Fatal(err)
	}
	if reached > 3 || len(bad) != 1 {
		t.Fatalf("%d of %d parallel wrong passwords reached the DC (badPwdCount %v), want at most 3", reached, n, bad)
	}
	if c, _ := strconv.Atoi(bad[0]); c > 3 {
		t.Errorf("DC badPwdCount %d, want at most max_failures_per_user (3)", c)
	}
}
