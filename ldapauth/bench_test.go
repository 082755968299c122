package ldapauth

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/internal/conf"
)

// benchWorkers is the number of concurrent logins, as in the anchor
// measurement (16 workers).
const benchWorkers = 16

// latencies collects per-login durations from parallel workers.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d...)
	l.mu.Unlock()
}

func (l *latencies) report(b *testing.B, elapsed time.Duration, ops int64) {
	b.Helper()
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	n := len(l.d)
	if n == 0 {
		return
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "logins/s")
	b.ReportMetric(float64(l.d[n/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(l.d[min(n-1, n*99/100)].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(ops)/float64(n), "ldap-ops/login")
	b.ReportMetric(0, "ns/op") // wall time per op is meaningless in parallel; see logins/s
}

// worker is one benchmark goroutine's login function and its cleanup.
type worker struct {
	login func(user string) error
	done  func()
}

// runParallel runs logins benchWorkers-wide on workers made (and connected)
// before the timer starts, and reports the metrics.
func runParallel(b *testing.B, newWorker func() worker, ops func() int64) {
	b.Helper()
	procs := runtime.GOMAXPROCS(0)
	par := (benchWorkers + procs - 1) / procs
	ready := make(chan worker, par*procs)
	for i := 0; i < par*procs; i++ {
		w := newWorker()
		defer w.done()
		ready <- w
	}
	var lat latencies
	var failed atomic.Int64
	b.SetParallelism(par)
	ops0 := ops()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		w := <-ready
		var mine []time.Duration
		i := 0
		for pb.Next() {
			user := []string{"alice", "bob"}[i%2]
			i++
			t0 := time.Now()
			if err := w.login(user); err != nil {
				failed.Add(1)
				continue
			}
			mine = append(mine, time.Since(t0))
		}
		lat.add(mine)
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d logins failed", n)
	}
	lat.report(b, elapsed, ops()-ops0)
}

// BenchmarkLogin compares ldapauth with a raw go-ldap baseline doing the
// same work on already open LDAPS connections (user search as the service
// account, bind as the user on a second connection, group search), against
// the shared Samba DC, 16 workers.
func BenchmarkLogin(b *testing.B) {
	if dc == nil {
		b.Skipf("no Samba AD DC: %v", sambaSkip)
	}
	for _, group := range []string{"in_chain", "token_groups"} {
		b.Run("baseline_raw_"+group, func(b *testing.B) {
			var ops atomic.Int64
			runParallel(b, func() worker { return rawWorker(b, group, &ops) }, ops.Load)
		})
	}
	cases := []struct {
		name string
		mode string
		ttl  time.Duration
	}{
		{"ldapauth_in_chain_cold_cache", GroupModeADInChain, time.Nanosecond},
		{"ldapauth_token_groups_cold_cache", GroupModeAD, time.Nanosecond},
		{"ldapauth_token_groups_warm_cache", GroupModeAD, time.Hour},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			j := newJournal(b)
			a, err := New(adConfig(func(cfg *Config) {
				cfg.GroupMode = c.mode
				cfg.GroupCacheTTL = conf.Duration(c.ttl)
				cfg.MaxConnections = benchWorkers
			}), Options{Audit: j, BindPassword: secrets})
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			// Fill the pools (and, for the warm case, the cache) with the
			// same concurrency first, as the baseline opens its connections
			// before the timer starts.
			var wg sync.WaitGroup
			var warmErr atomic.Value
			for i := 0; i < benchWorkers; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					for k := 0; k < 3; k++ {
						u := []string{"alice", "bob"}[(i+k)%2]
						if _, out, err := a.Login(context.Background(), Request{Username: u, Password: pw(u)}); err != nil || !out.OK {
							warmErr.Store(fmt.Sprintf("warm-up: %v %+v", err, out))
						}
					}
				}(i)
			}
			wg.Wait()
			if e := warmErr.Load(); e != nil {
				b.Fatal(e)
			}
			runParallel(b, func() worker {
				return worker{login: func(user string) error {
					_, out, err := a.Login(context.Background(), Request{Username: user, Password: pw(user), Source: "192.0.2.10"})
					if err == nil && !out.OK {
						err = errString(out.Reason)
					}
					return err
				}, done: func() {}}
			}, func() int64 { return a.Stats().Operations })
		})
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// rawWorker is the baseline: plain go-ldap on two open LDAPS connections
// per worker, no pooling, caching, limits or audit.
func rawWorker(b *testing.B, group string, ops *atomic.Int64) worker {
	dial := func() *ldap.Conn {
		c, err := ldap.DialURL(dc.LDAPSURL(), ldap.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}),
			ldap.DialWithTLSConfig(dc.TLSConfig()))
		if err != nil {
			b.Error(err)
			return nil
		}
		c.SetTimeout(30 * time.Second)
		return c
	}
	search, bind := dial(), dial()
	if search == nil || bind == nil {
		b.Fatal("no connection")
	}
	if err := search.Bind(dc.UserDN(svcName), pw(svcName)); err != nil {
		b.Error(err)
	}
	login := func(user string) error {
		ops.Add(1)
		res, err := search.Search(ldap.NewSearchRequest(dc.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 2, 0, false,
			"(&(objectClass=user)(|(sAMAccountName="+ldap.EscapeFilter(user)+")(userPrincipalName="+ldap.EscapeFilter(user)+")))",
			[]string{"sAMAccountName", "displayName"}, nil))
		if err != nil {
			return err
		}
		if len(res.Entries) != 1 {
			return fmt.Errorf("found %d", len(res.Entries))
		}
		dn := res.Entries[0].DN
		ops.Add(1)
		if err := bind.Bind(dn, pw(user)); err != nil {
			return err
		}
		switch group {
		case "in_chain":
			ops.Add(1)
			_, err = search.Search(ldap.NewSearchRequest(dc.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
				"(&(objectClass=group)(member:1.2.840.113556.1.4.1941:="+ldap.EscapeFilter(dn)+"))", []string{"sAMAccountName"}, nil))
		default:
			ops.Add(1)
			tg, err := search.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 0, false,
				"(objectClass=*)", []string{"tokenGroups"}, nil))
			if err != nil {
				return err
			}
			f := "(|"
			for _, sid := range tg.Entries[0].GetRawAttributeValues("tokenGroups") {
				f += "(objectSid=" + escapeBytes(sid) + ")"
			}
			ops.Add(1)
			_, err = search.Search(ldap.NewSearchRequest(dc.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
				f+")", []string{"sAMAccountName"}, nil))
			return err
		}
		return err
	}
	return worker{login: login, done: func() { search.Close(); bind.Close() }}
}

// BenchmarkLookup measures the password-less re-check of refresh and token
// exchange against the shared Samba DC, 16 workers: warm_cache is the
// exchange path (account state read, groups cached), fresh_groups the
// refresh path (groups resolved again).
func BenchmarkLookup(b *testing.B) {
	if dc == nil {
		b.Skipf("no Samba AD DC: %v", sambaSkip)
	}
	for _, fresh := range []bool{false, true} {
		name := "warm_cache"
		if fresh {
			name = "fresh_groups"
		}
		b.Run(name, func(b *testing.B) {
			j := newJournal(b)
			a, err := New(adConfig(func(cfg *Config) {
				cfg.GroupCacheTTL = conf.Duration(time.Hour)
				cfg.MaxConnections = benchWorkers
			}), Options{Audit: j, BindPassword: secrets})
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			for _, u := range []string{"alice", "bob"} {
				if _, out, err := a.Lookup(context.Background(), LookupRequest{Username: u}); err != nil || !out.OK {
					b.Fatalf("warm-up: %v %+v", err, out)
				}
			}
			runParallel(b, func() worker {
				return worker{login: func(user string) error {
					_, out, err := a.Lookup(context.Background(), LookupRequest{Username: user, Source: "192.0.2.10", FreshGroups: fresh})
					if err == nil && !out.OK {
						err = errString(out.Reason)
					}
					return err
				}, done: func() {}}
			}, func() int64 { return int64(a.Stats().Operations) })
		})
	}
}
