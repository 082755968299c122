package syslog

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/applianced/applianced/audit"
)

// lineReceiver is a TCP receiver on a given address that reads everything
// into one buffer, from every connection.
type lineReceiver struct {
	mu  sync.Mutex
	got []*bytes.Buffer
}

func (r *lineReceiver) received() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []byte
	for _, b := range r.got {
		all = append(all, b.Bytes()...)
		all = append(all, '\n')
	}
	return all
}

func startLineReceiver(t *testing.T, addr string) *lineReceiver {
	t.Helper()
	var (
		l   net.Listener
		err error
	)
	// The port was just released by the test's own listener; a moment
	// may pass before it can be bound again.
	waitFor(t, "listening on "+addr, 10*time.Second, func() bool { l, err = net.Listen("tcp", addr); return err == nil })
	t.Cleanup(func() { l.Close() })
	r := &lineReceiver{}
	go acceptInto(t, l, &r.mu, &r.got, nil)
	return r
}

// fullBacklogListener listens with a backlog of 0 and never accepts; one
// connection fills its queue, so the kernel drops every later SYN: a dial
// to it hangs as to a black-holed address. The close function stops
// listening.
func fullBacklogListener(t *testing.T) (addr string, closeFn func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	closeFn = func() { once.Do(func() { unix.Close(fd) }) }
	t.Cleanup(closeFn)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*unix.SockaddrInet4).Port))
	filler, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("filling the backlog: %v", err)
	}
	t.Cleanup(func() { filler.Close() })
	// The proof it is a black hole: a further dial gets no answer.
	if c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("a dial to %s with its backlog full connected; want it to hang", addr)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("a dial to %s with its backlog full: got %v, want a timeout", addr, err)
	}
	return addr, closeFn
}

// TestStopWithUnreachableTarget stops a forwarder whose target is down in
// each of the ways a SIEM can be, with dial and write timeouts and retry
// waits of a minute:
// the stop sequence of the daemon (final checkpoint, FlushConnected, cancel)
// returns well before the watchdog, so it waited on no dial, write or
// backoff; the final checkpoint is in the journal; and after a restart
// against a reachable receiver on the same address, every entry arrives.
func TestStopWithUnreachableTarget(t *testing.T) {
	const (
		n        = 3000
		watchdog = 10 * time.Second
		long     = time.Minute // dial and write timeouts: a stop must not wait for them
	)
	type setup struct {
		addr  string
		tls   bool
		ready func(f *Forwarder) bool // the target is in the state under test
		// restart makes the address reachable and returns what it
		// received; nil skips the restart.
		restart func(t *testing.T) func() []byte
	}
	for _, tc := range []struct {
		name string
		make func(t *testing.T) setup
		// gaveUp: FlushConnected must give up at once (not connected),
		// not run into its bound.
		gaveUp bool
	}{
		{"nothing listens", func(t *testing.T) setup {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := l.Addr().String()
			l.Close()
			return setup{addr: addr,
				ready: func(f *Forwarder) bool { return strings.Contains(f.Status()[0].LastError, "refused") },
				restart: func(t *testing.T) func() []byte {
					return startLineReceiver(t, addr).received
				}}
		}, true},
		{"accepts and never reads", func(t *testing.T) setup {
			s := newStallListener(t)
			return setup{addr: s.l.Addr().String(),
				ready: func(f *Forwarder) bool { st := f.Status()[0]; return st.Connected && st.Sent > 0 },
				restart: func(t *testing.T) func() []byte {
					close(s.release)
					return s.received
				}}
		}, false},
		{"TLS handshake never answered", func(t *testing.T) setup {
			s := newStallListener(t)
			return setup{addr: s.l.Addr().String(), tls: true,
				ready: func(f *Forwarder) bool { time.Sleep(200 * time.Millisecond); return true }} // handshaking
		}, true},
		{"black hole", func(t *testing.T) setup {
			addr, closeFn := fullBacklogListener(t)
			return setup{addr: addr,
				ready: func(f *Forwarder) bool { time.Sleep(200 * time.Millisecond); return true }, // dialing
				restart: func(t *testing.T) func() []byte {
					closeFn()
					return startLineReceiver(t, addr).received
				}}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			su := tc.make(t)
			dir, cursors := t.TempDir(), t.TempDir()
			j, err := audit.Open(dir, &audit.Options{Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { j.Close() })
			_, key, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			pad := strings.Repeat("p", 900) // enough to fill a stalled receiver's buffers
			for i := 1; i <= n; i++ {
				e := testEvent(i)
				e.Details["pad"] = pad
				if _, err := j.Append(context.Background(), e); err != nil {
					t.Fatal(err)
				}
			}
			target := Target{Address: "tcp://" + su.addr, Framing: FramingNewline}
			if su.tls {
				target.Address = "tls://" + su.addr
			}
			opts := &Options{Dir: cursors, Logger: quietLogger(), DialTimeout: long, WriteTimeout: long, BackoffMin: long, BackoffMax: long}
			f, err := New(j, []Target{target}, opts)
			if err != nil {
				t.Fatal(err)
			}
			ck := audit.NewCheckpointer(j, key, &audit.CheckpointOptions{Every: 1000, Interval: time.Hour, Logger: quietLogger()})
			runCtx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); f.Run(runCtx) }()
			go func() { defer wg.Done(); ck.Run(runCtx) }()
			t.Cleanup(func() { cancel(); wg.Wait() })
			waitFor(t, "the target in the state under test", time.Minute, func() bool { return su.ready(f) })

			// The daemon's stop sequence, under a watchdog.
			var flushErr, closeErr error
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				f.Stopping()
				cctx, stop := context.WithTimeout(context.Background(), watchdog)
				closeErr = ck.Close(cctx)
				stop()
				fctx, stop := context.WithTimeout(context.Background(), StopFlushTimeout)
				flushErr = f.FlushConnected(fctx)
				stop()
				cancel()
				wg.Wait()
			}()
			select {
			case <-stopped:
			case <-time.After(watchdog):
				t.Fatalf("the stop did not return within %v: it waited on the target (dial/write timeout %v)", watchdog, long)
			}
			if closeErr != nil {
				t.Fatalf("final checkpoint: %v", closeErr)
			}
			if flushErr == nil {
				t.Fatalf("FlushConnected: got nil with the target down, want an error")
			}
			if got := errors.Is(flushErr, ErrTargetUnavailable); got != tc.gaveUp {
				t.Errorf("FlushConnected: got %v, ErrTargetUnavailable %v, want %v", flushErr, got, tc.gaveUp)
			}
			last := j.LastSeq()
			if got := lastEntry(t, j); got.Event.Type != audit.TypeCheckpoint || got.Event.Details[audit.DetailCheckpointFinal] != "true" {
				t.Fatalf("got last journal entry %q (details %v), want the final checkpoint", got.Event.Type, got.Event.Details)
			}
			if d := f.Status()[0].Delivered; d >= last {
				t.Fatalf("got delivered %d of %d to a target that took nothing, want less", d, last)
			}
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}
			if su.restart == nil {
				return
			}

			// Restart: the same journal and cursors, a receiver on the
			// same address that reads.
			received := su.restart(t)
			j2, err := audit.Open(dir, &audit.Options{Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { j2.Close() })
			f2 := startForwarder(t, j2, &Options{Dir: cursors}, target)
			ctx, stop := context.WithTimeout(context.Background(), time.Minute)
			defer stop()
			if err := f2.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			// Flush means written to the socket; the receiver may still be
			// reading the last of it.
			var rep *audit.CaptureReport
			for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
				v := audit.NewCaptureVerifier(&audit.CaptureOptions{PublicKey: key.Public().(ed25519.PublicKey), AllowOpenTail: true})
				v.Read("receiver", bytes.NewReader(received()))
				rep = v.Report()
				if rep.OK() && rep.LastSeq >= last && rep.SealedUpTo >= last-1 || time.Now().After(deadline) {
					break
				}
			}
			if !rep.OK() || rep.FirstSeq != 1 || rep.LastSeq < last || rep.SealedUpTo < last-1 {
				t.Errorf("after the restart got seq %d..%d sealed up to %d, problems %v; want 1..%d (at least), sealed up to %d, none",
					rep.FirstSeq, rep.LastSeq, rep.SealedUpTo, rep.Problems, last, last-1)
			}
		})
	}
}

// lastEntry returns the journal's last entry.
func lastEntry(t *testing.T, j *audit.Journal) audit.Entry {
	t.Helper()
	r, err := j.Reader(j.LastSeq())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := r.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
