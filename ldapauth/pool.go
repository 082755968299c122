package ldapauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Hold-down backoff of a DC after a connection, TLS or timeout error.
const (
	holdDownMin = time.Second
	holdDownMax = time.Minute
	// serviceHoldDown is how long a refused service account is not tried
	// again, so a wrong bind_password_secret does not lock it out in AD.
	serviceHoldDown = 30 * time.Second
	// healthIdle is how long a pooled search connection may sit idle before
	// it is checked with a root DSE read.
	healthIdle = 30 * time.Second
)

// DCHealth is the state of one domain controller, for doctor and metrics.
type DCHealth struct {
	URL       string    `json:"url"`
	Up        bool      `json:"up"`                   // not held down
	DownUntil time.Time `json:"down_until,omitzero"`  // end of the hold-down
	Failures  int       `json:"consecutive_failures"` // since the last success
	LastError string    `json:"last_error,omitempty"`
	LastOK    time.Time `json:"last_ok,omitzero"`
	IdleConns int       `json:"idle_conns"` // pooled search + bind connections
}

// server is one domain controller and its connection pools.
type server struct {
	url      string
	addr     string // host:port
	ldaps    bool
	starttls bool
	tls      *tls.Config

	mu        sync.Mutex
	downUntil time.Time
	failures  int
	lastErr   string
	lastOK    time.Time
	search    []*pooled // idle service connections, bound as bind_dn
	binds     []*pooled // idle connections used only for users' password binds
}

type pooled struct {
	c    *ldap.Conn
	used time.Time
}

func newDC(raw string, startTLS bool, roots *x509.CertPool, serverName string) (*server, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("ldapauth: url %q: %w", raw, err)
	}
	d := &server{url: raw, ldaps: u.Scheme == "ldaps", starttls: u.Scheme == "ldap" && startTLS}
	port := u.Port()
	if port == "" {
		port = "389"
		if d.ldaps {
			port = "636"
		}
	}
	d.addr = net.JoinHostPort(u.Hostname(), port)
	name := serverName
	if name == "" {
		name = u.Hostname()
	}
	d.tls = &tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12}
	return d, nil
}

func (d *server) health(now time.Time) DCHealth {
	d.mu.Lock()
	defer d.mu.Unlock()
	return DCHealth{
		URL: d.url, Up: !now.Before(d.downUntil), DownUntil: d.downUntil,
		Failures: d.failures, LastError: d.lastErr, LastOK: d.lastOK,
		IdleConns: len(d.search) + len(d.binds),
	}
}

func (d *server) markDown(now time.Time, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures++
	back := holdDownMin << min(d.failures-1, 6)
	if back > holdDownMax {
		back = holdDownMax
	}
	d.downUntil = now.Add(back)
	d.lastErr = err.Error()
	for _, p := range append(d.search, d.binds...) {
		go p.c.Close()
	}
	d.search, d.binds = nil, nil
}

func (d *server) markUp(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures, d.downUntil, d.lastErr, d.lastOK = 0, time.Time{}, "", now
}

func (d *server) isDown(now time.Time) (bool, time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return now.Before(d.downUntil), d.downUntil
}

// take pops an idle connection from a pool, newest first.
func (d *server) take(binds bool) *pooled {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := &d.search
	if binds {
		p = &d.binds
	}
	for len(*p) > 0 {
		c := (*p)[len(*p)-1]
		*p = (*p)[:len(*p)-1]
		if !c.c.IsClosing() {
			return c
		}
	}
	return nil
}

// put returns a healthy connection to a pool, or closes it when full.
func (d *server) put(binds bool, c *ldap.Conn, max int, now time.Time) {
	d.mu.Lock()
	p := &d.search
	if binds {
		p = &d.binds
	}
	if c.IsClosing() || len(*p) >= max {
		d.mu.Unlock()
		c.Close()
		return
	}
	*p = append(*p, &pooled{c: c, used: now})
	d.mu.Unlock()
}

func (d *server) closeAll() {
	d.mu.Lock()
	conns := append(d.search, d.binds...)
	d.search, d.binds = nil, nil
	d.mu.Unlock()
	for _, p := range conns {
		p.c.Close()
	}
}

// ErrTLS wraps a failure to establish TLS with a DC: an unknown CA, a name
// mismatch, an expired certificate or a failed handshake.
var ErrTLS = errors.New("ldapauth: TLS to the directory failed")

// ErrUnavailable means no DC could be used; it wraps the last DC's error.
var ErrUnavailable = errors.New("ldapauth: no directory server available")

// ErrServiceBind means the service account (bind_dn) was refused.
var ErrServiceBind = errors.New("ldapauth: service account bind refused")

// dial opens a connection to d, with TLS (LDAPS or StartTLS) unless the
// config allows plaintext, all within the dial timeout. For a search
// connection it binds as the service account before the deadline too.
func (a *Authenticator) dial(ctx context.Context, d *server, service bool) (*ldap.Conn, error) {
	parent := ctx
	timeout := a.cfg.DialTimeout.D()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	a.stats.dials.Add(1)
	nd := net.Dialer{Timeout: timeout}
	raw, err := nd.DialContext(ctx, "tcp", d.addr)
	if err != nil {
		return nil, fmt.Errorf("ldapauth: dial %s: %w", d.url, err)
	}
	// One deadline covers the handshake, StartTLS and the service bind, so a
	// DC that accepts TCP and never answers cannot hold us past the timeout.
	_ = raw.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	var c *ldap.Conn
	if d.ldaps {
		tc := tls.Client(raw, d.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			if cerr := ctxErr(parent); cerr != nil {
				return nil, fmt.Errorf("ldapauth: TLS handshake with %s: %w", d.url, cerr)
			}
			var ne net.Error
			if !isTLSErr(err) && errors.As(err, &ne) {
				return nil, fmt.Errorf("ldapauth: TLS handshake with %s: %w", d.url, err)
			}
			return nil, fmt.Errorf("%w: %s: %w", ErrTLS, d.url, err)
		}
		c = ldap.NewConn(tc, true)
	} else {
		c = ldap.NewConn(raw, false)
	}
	c.Start()
	c.SetTimeout(min(a.cfg.RequestTimeout.D(), time.Until(deadline)))
	fail := func(err error) (*ldap.Conn, error) {
		c.Close()
		return nil, err
	}
	if d.starttls {
		a.stats.ops.Add(1)
		cfg, verr := capturingTLS(d.tls)
		if err := c.StartTLS(cfg); err != nil {
			if *verr != nil {
				return fail(fmt.Errorf("%w: %s: %w", ErrTLS, d.url, *verr))
			}
			var le *ldap.Error
			if errors.As(err, &le) && le.ResultCode != ldap.ErrorNetwork {
				return fail(fmt.Errorf("ldapauth: StartTLS refused by %s: %w", d.url, err))
			}
			if cerr := ctxErr(parent); cerr != nil {
				err = cerr
			}
			return fail(connError{fmt.Errorf("ldapauth: StartTLS with %s: %w", d.url, err)})
		}
	}
	if service && a.cfg.BindDN != "" {
		if until := a.svcHold.Load(); until != nil && a.now().Before(*until) {
			return fail(fmt.Errorf("%w: %s was refused recently; not retried before %s (protects its lockout counter)",
				ErrServiceBind, a.cfg.BindDN, until.Format(time.RFC3339)))
		}
		pw, err := a.opts.BindPassword(ctx, a.cfg.BindPasswordSecret)
		if err != nil {
			return fail(fmt.Errorf("ldapauth: bind password secret %q: %w", a.cfg.BindPasswordSecret, err))
		}
		a.stats.ops.Add(1)
		err = c.Bind(a.cfg.BindDN, string(pw))
		clear(pw)
		if err != nil {
			if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
				until := a.now().Add(serviceHoldDown)
				a.svcHold.Store(&until)
				return fail(fmt.Errorf("%w: %s on %s: %w", ErrServiceBind, a.cfg.BindDN, d.url, err))
			}
			return fail(connError{fmt.Errorf("ldapauth: service bind on %s: %w", d.url, err)})
		}
	}
	if ctx.Err() != nil {
		return fail(connError{fmt.Errorf("ldapauth: dial %s: %w", d.url, ctx.Err())})
	}
	_ = raw.SetDeadline(time.Time{})
	c.SetTimeout(a.cfg.RequestTimeout.D())
	return c, nil
}

// ctxErr is ctx's error, or DeadlineExceeded once its deadline has passed
// even if its timer has not fired yet.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// capturingTLS returns a copy of base that verifies the peer exactly as
// crypto/tls would (roots, name, server-auth usage, intermediates) but keeps
// the typed verification error, which go-ldap's StartTLS flattens to text.
func capturingTLS(base *tls.Config) (*tls.Config, *error) {
	var verr error
	cfg := base.Clone()
	cfg.InsecureSkipVerify = true // replaced by VerifyConnection below, never skipped
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			verr = errors.New("ldapauth: the server sent no certificate")
			return verr
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			Roots:         base.RootCAs,
			DNSName:       base.ServerName,
			Intermediates: inter,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			verr = err
		}
		return err
	}
	return cfg, &verr
}

// connError marks a failure to set up a connection that go-ldap reports as
// a plain error (a read timeout during StartTLS, a connection lost during the
// service bind): the DC, not the request, failed.
type connError struct{ err error }

func (e connError) Error() string { return e.err.Error() }
func (e connError) Unwrap() error { return e.err }

func isTLSErr(err error) bool {
	var (
		ue  x509.UnknownAuthorityError
		he  x509.HostnameError
		ci  x509.CertificateInvalidError
		re  tls.RecordHeaderError
		ae  tls.AlertError
		cve *tls.CertificateVerificationError
	)
	return errors.As(err, &ue) || errors.As(err, &he) || errors.As(err, &ci) ||
		errors.As(err, &re) || errors.As(err, &ae) || errors.As(err, &cve)
}

// searchConn returns a service connection to d, pooled or new, and whether
// it came from the pool. An idle one is checked with a root DSE read first.
func (a *Authenticator) searchConn(ctx context.Context, d *server) (*ldap.Conn, bool, error) {
	for {
		p := d.take(false)
		if p == nil {
			break
		}
		if a.now().Sub(p.used) < healthIdle {
			return p.c, true, nil
		}
		a.stats.ops.Add(1)
		err := withCtx(ctx, p.c, a.cfg.DialTimeout.D(), func() error {
			_, err := p.c.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases,
				0, 0, false, "(objectClass=*)", []string{"1.1"}, nil))
			return err
		})
		if err == nil {
			return p.c, true, nil
		}
		p.c.Close()
	}
	c, err := a.dial(ctx, d, true)
	return c, false, err
}

// bindConn returns a connection to d used only for users' binds, and whether
// it came from the pool.
//
// A connection idle longer than healthIdle is not reused: a firewall or NAT
// between here and the DC may have dropped it without a word, and a bind
// sent on it would wait out the request timeout and then count as the DC
// failing (a bind that went out is never retried). A fresh one costs a TLS
// handshake; it does not carry a password into the unknown.
func (a *Authenticator) bindConn(ctx context.Context, d *server) (*ldap.Conn, bool, error) {
	for {
		p := d.take(true)
		if p == nil {
			break
		}
		if a.now().Sub(p.used) < healthIdle {
			return p.c, true, nil
		}
		p.c.Close()
	}
	c, err := a.dial(ctx, d, false)
	return c, false, err
}

// withCtx runs f on c with the request timeout cut to ctx's deadline; if ctx
// ends first the connection is closed (and must then be dropped).
func withCtx(ctx context.Context, c *ldap.Conn, reqTimeout time.Duration, f func() error) error {
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < reqTimeout {
			if left <= 0 {
				return ctx.Err()
			}
			reqTimeout = left
		}
	}
	c.SetTimeout(reqTimeout)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err := f()
	if !stop() {
		return fmt.Errorf("ldapauth: %w", ctx.Err())
	}
	return err
}

// isConnErr says whether err means the DC (not the request) failed: network
// errors, timeouts and TLS errors. Those trigger failover.
func isConnErr(err error) bool {
	if err == nil {
		return false
	}
	var ce connError
	if errors.Is(err, ErrTLS) || isTLSErr(err) || errors.As(err, &ce) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var le *ldap.Error
	if errors.As(err, &le) {
		switch le.ResultCode {
		case ldap.ErrorNetwork, ldap.LDAPResultTimeout, ldap.LDAPResultBusy,
			ldap.LDAPResultUnavailable, ldap.LDAPResultServerDown, ldap.LDAPResultTimeLimitExceeded:
			return true
		}
		return false
	}
	return false
}

// connFailed says whether a request on c failed because the connection did
// (go-ldap reports a lost connection with a plain error and closes c).
func connFailed(c *ldap.Conn, err error) bool {
	return err != nil && (isConnErr(err) || c.IsClosing())
}

// stats counts LDAP work, for benchmarks and metrics.
type stats struct {
	dials    atomic.Int64
	ops      atomic.Int64 // requests sent: binds, searches, StartTLS
	logins   atomic.Int64
	cacheHit atomic.Int64
}

// Stats are counters since New.
type Stats struct {
	Logins         int64 // Login calls that reached the directory or the cache
	Dials          int64 // TCP connections opened
	Operations     int64 // LDAP requests sent (binds, searches, StartTLS)
	GroupCacheHits int64
}
