package ldapauth

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/conf"
)

// blackhole is a TCP proxy to the DC whose existing connections can be
// frozen: bytes stop flowing both ways and nothing is closed, as when a
// stateful firewall or NAT between the appliance and the DC forgets an idle
// connection. New connections keep working.
type blackhole struct {
	ln     net.Listener
	mu     sync.Mutex
	frozen map[net.Conn]*bool
}

func newBlackhole(t *testing.T, target string) *blackhole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, frozen: map[net.Conn]*bool{}}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			f := new(bool)
			b.mu.Lock()
			b.frozen[c] = f
			b.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					b.mu.Lock()
					fr := *f
					b.mu.Unlock()
					if fr {
						io.Copy(io.Discard, src) // swallow, never close
						return
					}
					if n > 0 {
						dst.Write(buf[:n])
					}
					if err != nil {
						dst.Close()
						return
					}
				}
			}
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return b
}

func (b *blackhole) freezeAll() {
	b.mu.Lock()
	for _, f := range b.frozen {
		*f = true
	}
	b.mu.Unlock()
}

// F9: pooled bind connections are never health-checked; one that died
// silently while idle eats the login (request_timeout) and the DC is held
// down, although the DC is fine.
func TestSilentlyDroppedBindConnectionIsNotReused(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	bh := newBlackhole(t, dc.Addr())
	clk := &fakeClock{t: time.Now()}
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.URLs = []string{"ldaps://" + bh.ln.Addr().String()}
		c.DialTimeout = conf.Duration(time.Second)
		c.RequestTimeout = conf.Duration(3 * time.Second)
	}), clk.Now)
	if _, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")}); err != nil || !out.OK {
		t.Fatalf("first login: %v %+v", err, out)
	}
	bh.freezeAll()
	clk.Add(10 * time.Minute) // idle
	start := time.Now()
	_, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")})
	t.Logf("login after the idle pooled connections died silently: ok=%v reason=%q took=%v err=%v", out.OK, out.Reason, time.Since(start).Round(100*time.Millisecond), err)
	t.Logf("health: %+v", a.Health())
	if !out.OK {
		t.Errorf("a healthy DC refused the login because of a dead pooled bind connection: %+v, %v", out, err)
	}
}
