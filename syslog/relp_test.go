package syslog

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/rsyslog"
)

// Over RELP a message counts as delivered only once the receiving
// application answered it. A receiver whose process stops (SIGSTOP) still
// has its kernel acknowledge what is sent, which over plain TCP a handful
// of events never reveals; killed then, it loses what it held unread. Over
// RELP the cursor stays put, and after the restart every seq arrives.
func TestRELPLosesNothingWhenTheReceiverStopsReading(t *testing.T) {
	for _, tc := range []struct{ name, input, scheme string }{
		{"relp", rsyslog.InputRELP, "relp"},
		{"relp+tls", rsyslog.InputRELPTLS, "relp+tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := rsyslog.Start(t, rsyslog.Options{Input: tc.input})
			j := openJournal(t)
			target := Target{Address: tc.scheme + "://" + srv.Addr}
			if tc.scheme == "relp+tls" {
				target.CAFile, target.ServerName = srv.CAFile, "localhost"
				target.CertFile, target.KeyFile = srv.ClientCertFile, srv.ClientKeyFile
			}
			f := startForwarder(t, j, nil, target)
			if err := appendN(t, j, 200, 8); err != nil {
				t.Fatal(err)
			}
			base := j.LastSeq()
			waitFor(t, "the first events delivered", time.Minute, func() bool { return f.Status()[0].Delivered == base })

			if err := srv.Pause(); err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				if _, err := j.Append(context.Background(), testEvent(1000+i)); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "the 10 events sent", time.Minute, func() bool { return f.Status()[0].Sent == base+10 })
			time.Sleep(time.Second) // far beyond Settle: TCP alone would have confirmed them by now
			if st := f.Status()[0]; st.Delivered != base {
				t.Fatalf("got delivered %d while the receiver's process was stopped, want %d", st.Delivered, base)
			}
			if err := srv.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := f.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			// The target's down and up events come after the 10.
			waitFor(t, "the cursor at the end", time.Minute, func() bool {
				st := f.Status()[0]
				return st.Delivered >= base+12 && st.Delivered == j.LastSeq()
			})
			last := j.LastSeq()
			cnt := newSeqCounter(srv.File)
			waitFor(t, "every seq at the receiver", time.Minute, func() bool { cnt.poll(); return uint64(len(cnt.seen)) >= last })
			rep := verifyFile(t, srv.File, &audit.CaptureOptions{AllowOpenTail: true})
			if !rep.OK() || rep.FirstSeq != 1 || rep.LastSeq != last {
				t.Fatalf("got seq %d..%d, problems %v; want 1..%d and none", rep.FirstSeq, rep.LastSeq, rep.Problems, last)
			}
		})
	}
}

// relpServer is a RELP receiver in the test: it opens sessions and answers
// each syslog command with answer(n) for the n-th message.
func relpServer(t *testing.T, answer func(n int) string) (addr string, got func() []string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	msgs := make(chan string, 1000)
	go func() {
		n := 0
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					f, err := readRELPFrame(r)
					if err != nil {
						return
					}
					var data []byte
					switch f.cmd {
					case "open":
						data = []byte("200 OK\nrelp_version=0\nrelp_software=test\ncommands=syslog")
					case "syslog":
						n++
						msgs <- string(f.data)
						data = []byte(answer(n))
					case "close":
					}
					if _, err := c.Write(appendRELPFrame(nil, f.txnr, "rsp", data)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String(), func() []string {
		var out []string
		for {
			select {
			case m := <-msgs:
				out = append(out, m)
			default:
				return out
			}
		}
	}
}

// A RELP receiver that refuses a message (any status but 200) holds the
// cursor before it, and the status names the refusal.
func TestRELPRefusalHoldsTheCursor(t *testing.T) {
	addr, got := relpServer(t, func(n int) string {
		if n == 3 {
			return "500 queue full"
		}
		return "200 OK"
	})
	j := openJournal(t)
	for i := range 5 {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	f := startForwarder(t, j, nil, Target{Address: "relp://" + addr})
	// The third is refused once; the session ends and the next one sends
	// the third again, answered 200 this time.
	waitFor(t, "all delivered after the refusal", time.Minute, func() bool { return f.Status()[0].Delivered == j.LastSeq() })
	st := f.Status()[0]
	if !strings.Contains(st.LastError, "500 queue full") || st.Reconnects < 2 {
		t.Errorf("got status %+v, want the refusal named and a second session", st)
	}
	var thirds int
	for _, m := range got() {
		if strings.Contains(m, `{"audit_seq":3,`) {
			thirds++
		}
	}
	if thirds != 2 {
		t.Errorf("seq 3 sent %d times, want twice (refused, then resent)", thirds)
	}
}

// A receiver that does not speak RELP, or refuses the session, gets no
// message, and the status says why.
func TestRELPOpenRefused(t *testing.T) {
	for _, tc := range []struct{ name, reply, want string }{
		{"refused", "1 rsp 17 500 not accepting\n", "500 not accepting"},
		{"no syslog", "1 rsp 36 200 OK\nrelp_version=0\ncommands=other\n", "not syslog"},
		{"not RELP", "HTTP/1.1 400 Bad Request\r\n\r\n", "RELP frame"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						_, _ = readRELPFrame(bufio.NewReader(c))
						fmt.Fprint(c, tc.reply)
						time.Sleep(100 * time.Millisecond)
					}()
				}
			}()
			j := openJournal(t)
			if _, err := j.Append(context.Background(), testEvent(1)); err != nil {
				t.Fatal(err)
			}
			f := startForwarder(t, j, nil, Target{Address: "relp://" + l.Addr().String()})
			waitFor(t, "an error", time.Minute, func() bool { return f.Status()[0].LastError != "" })
			if st := f.Status()[0]; !strings.Contains(st.LastError, tc.want) || st.Delivered != 0 {
				t.Errorf("got status %+v, want an error naming %q and nothing delivered", st, tc.want)
			}
		})
	}
}

func TestRELPFrames(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    relpFrame
		wantErr bool
	}{
		{in: "2 rsp 6 200 OK\n", want: relpFrame{2, "rsp", []byte("200 OK")}},
		{in: "0 serverclose 0\n", want: relpFrame{0, "serverclose", nil}},
		{in: "999999999 rsp 3 200\n", want: relpFrame{999999999, "rsp", []byte("200")}},
		{in: "1000000000 rsp 6 200 OK\n", wantErr: true},
		{in: "2 rsp 6 200 OK", wantErr: true},   // no trailer
		{in: "2 rsp 7 200 OK\n", wantErr: true}, // short data
		{in: "2 RSP 6 200 OK\n", wantErr: true},
		{in: "2 rsp 5 200 OK\n", wantErr: true},
		{in: "2 rsp 99999999 x\n", wantErr: true}, // over the answer limit
		{in: " 2 rsp 6 200 OK\n", wantErr: true},
		{in: "2  rsp 6 200 OK\n", wantErr: true},
		{in: "2 rsp 6\n", wantErr: true},
	} {
		got, err := readRELPFrame(bufio.NewReader(strings.NewReader(tc.in)))
		if tc.wantErr {
			if err == nil {
				t.Errorf("%q: got %+v, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got.txnr != tc.want.txnr || got.cmd != tc.want.cmd || !bytes.Equal(got.data, tc.want.data) {
			t.Errorf("%q: got %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	if got := string(appendRELPFrame(nil, 7, "syslog", []byte("<14>x"))); got != "7 syslog 5 <14>x\n" {
		t.Errorf("frame: got %q", got)
	}
	if got := string(appendRELPFrame(nil, 8, "close", nil)); got != "8 close 0\n" {
		t.Errorf("frame without data: got %q", got)
	}
	if relpTxnr(1) != 1 || relpTxnr(relpMaxTxnr) != relpMaxTxnr || relpTxnr(relpMaxTxnr+1) != 1 {
		t.Error("TXNR does not wrap from 999,999,999 to 1")
	}
}

// FuzzRELPFrame: whatever a receiver sends, reading it never panics, never
// holds more than an answer's limit, and a frame read back writes the same
// bytes.
func FuzzRELPFrame(f *testing.F) {
	for _, s := range []string{"2 rsp 6 200 OK\n", "0 serverclose 0\n", "1 rsp 92 200 OK\nrelp_version=0\nrelp_software=librelp,1.0.0,http://librelp.adiscon.com\ncommands=syslog\n", "3 rsp 17 500 not accepting\n", "x", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for {
			fr, err := readRELPFrame(r)
			if err != nil {
				if errors.Is(err, ErrReceiverClosed) || strings.HasPrefix(err.Error(), "syslog: RELP frame") {
					return
				}
				t.Fatalf("unexpected error kind: %v", err)
			}
			if len(fr.data) > relpMaxAnswer {
				t.Fatalf("%d bytes of data", len(fr.data))
			}
			out := appendRELPFrame(nil, fr.txnr, fr.cmd, fr.data)
			again, err := readRELPFrame(bufio.NewReader(bytes.NewReader(out)))
			if err != nil || again.txnr != fr.txnr || again.cmd != fr.cmd || !bytes.Equal(again.data, fr.data) {
				t.Fatalf("%q read back as %+v, %v", out, again, err)
			}
			_, _ = fr.status()
			_ = checkRELPOpen(fr)
		}
	})
}
