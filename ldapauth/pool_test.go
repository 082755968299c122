package ldapauth

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/conf"
)

// cutProxy forwards loopback connections to the DC and can cut them all,
// as a DC restart or a firewall idle timeout would.
type cutProxy struct {
	addr  string
	mu    sync.Mutex
	conns []net.Conn
}

func newCutProxy(t *testing.T) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{addr: ln.Addr().String()}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", dc.Addr(), 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = copyConn(up, c) }()
			go func() { _, _ = copyConn(c, up) }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestPooledConnectionsHealth: idle pooled connections are checked before
// use, and connections the network dropped are replaced without failing a
// login or counting a password twice.
func TestPooledConnectionsHealth(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	p := newCutProxy(t)
	clk := &fakeClock{t: time.Now()}
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.URLs = []string{"ldaps://" + p.addr}
		c.GroupCacheTTL = conf.Duration(time.Hour)
	}), clk.Now)
	login := func() {
		t.Helper()
		if _, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")}); err != nil || !out.OK {
			t.Fatalf("login: %v %+v", err, out)
		}
	}
	login()
	s0 := a.Stats()
	login()
	s1 := a.Stats()
	if got := s1.Operations - s0.Operations; got != 2 || s1.Dials != s0.Dials {
		t.Errorf("warm login: got %d operations and %d dials, want 2 and 0", got, s1.Dials-s0.Dials)
	}
	// Idle past the health interval: the search connection is checked
	// first (one root DSE read), then reused; the bind connection is
	// dialled afresh (a password is not sent on one that may be dead).
	clk.Add(healthIdle + time.Second)
	login()
	s2 := a.Stats()
	if got := s2.Operations - s1.Operations; got != 3 || s2.Dials != s1.Dials+1 {
		t.Errorf("login after idle: got %d operations and %d dials, want 3 and 1", got, s2.Dials-s1.Dials)
	}
	// The network drops every connection: the next login dials afresh and
	// succeeds.
	p.cut()
	login()
	s3 := a.Stats()
	if s3.Dials-s2.Dials != 2 {
		t.Errorf("dials after a cut: got %d, want 2 (search and bind connections)", s3.Dials-s2.Dials)
	}
	if h := a.Health(); !h[0].Up {
		t.Errorf("DC held down after a recovered cut: %+v", h[0])
	}
}
