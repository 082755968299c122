package syslog

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/pki"
	"github.com/applianced/applianced/internal/testenv/rsyslog"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openJournal(t testing.TB) *audit.Journal {
	t.Helper()
	j, err := audit.Open(t.TempDir(), &audit.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

func testEvent(i int) *audit.Event {
	return &audit.Event{Type: "tool.call", Outcome: audit.OutcomeSuccess, Actor: audit.Actor{Agent: "ticket-bot", User: "alice"},
		Action: "GET", Target: "tickets", RequestID: strconv.Itoa(i), Details: map[string]string{"path": "/tickets/" + strconv.Itoa(i)}}
}

// appendN appends n events from workers goroutines (group commit).
func appendN(t testing.TB, j *audit.Journal, n, workers int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i > n {
					return
				}
				if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func startForwarder(t testing.TB, j *audit.Journal, o *Options, targets ...Target) *Forwarder {
	t.Helper()
	if o == nil {
		o = &Options{}
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	o.Logger = quietLogger()
	if o.BackoffMax == 0 {
		o.BackoffMax = time.Second
	}
	f, err := New(j, targets, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func startCheckpointer(t testing.TB, j *audit.Journal, every int) (*audit.Checkpointer, ed25519.PublicKey) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := audit.NewCheckpointer(j, key, &audit.CheckpointOptions{Every: every, Interval: time.Second, Logger: quietLogger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, key.Public().(ed25519.PublicKey)
}

// seqCounter follows a receiver's file and counts the seqs in it.
type seqCounter struct {
	path   string
	off    int64
	rest   []byte
	seen   map[uint64]int
	copies int
}

func newSeqCounter(path string) *seqCounter { return &seqCounter{path: path, seen: map[uint64]int{}} }

var seqKey = []byte(`{"audit_seq":`)

func (c *seqCounter) poll() {
	f, err := os.Open(c.path)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(c.off, io.SeekStart); err != nil {
		return
	}
	b, _ := io.ReadAll(f)
	c.off += int64(len(b))
	b = append(c.rest, b...)
	last := bytes.LastIndexByte(b, '\n')
	if last < 0 {
		c.rest = b
		return
	}
	c.rest = append([]byte(nil), b[last+1:]...)
	for _, line := range bytes.Split(b[:last], []byte("\n")) {
		i := bytes.Index(line, seqKey)
		if i < 0 {
			continue
		}
		rest := line[i+len(seqKey):]
		j := bytes.IndexByte(rest, ',')
		if j < 0 {
			continue
		}
		if s, err := strconv.ParseUint(string(rest[:j]), 10, 64); err == nil && !bytes.Contains(line, []byte(`"audit_part":`)) ||
			bytes.Contains(line, []byte(`"audit_part":1,`)) {
			c.seen[s]++
			c.copies++
		}
	}
}

// waitFor polls until cond holds; the deadline only guards against a hang.
func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting (%v) for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func verifyFile(t testing.TB, path string, o *audit.CaptureOptions) *audit.CaptureReport {
	t.Helper()
	rep, err := audit.VerifyCaptureFiles([]string{path}, o)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestOutageLosesNothing sends 100,000 events while the receiver is stopped
// for a while and restarted: every seq arrives, duplicates are counted.
func TestOutageLosesNothing(t *testing.T) {
	const n = 100000
	outage := 30 * time.Second
	if testing.Short() {
		outage = 3 * time.Second
	}
	for _, tc := range []struct{ name, input, scheme string }{
		{"tcp", rsyslog.InputTCP, "tcp"},
		{"tls", rsyslog.InputTLS, "tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := rsyslog.Start(t, rsyslog.Options{Input: tc.input})
			j := openJournal(t)
			cp, pub := startCheckpointer(t, j, 5000)
			target := Target{Address: tc.scheme + "://" + srv.Addr, CAFile: srv.CAFile}
			if tc.scheme == "tls" {
				target.ServerName = "localhost"
			}
			f := startForwarder(t, j, nil, target)
			appended := make(chan error, 1)
			appendDone := make(chan struct{})
			go func() { appended <- appendN(t, j, n, 128); close(appendDone) }()
			t.Cleanup(func() { <-appendDone }) // before the journal closes

			cnt := newSeqCounter(srv.File)
			waitFor(t, "the first 20,000 events at the receiver", 5*time.Minute, func() bool { cnt.poll(); return len(cnt.seen) >= 20000 })
			if err := srv.Stop(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(outage)
			st := f.Status()[0]
			if st.LastError == "" || st.Connected {
				t.Errorf("got status %+v during the outage, want an error and not connected", st)
			}
			if err := srv.Start(); err != nil {
				t.Fatal(err)
			}
			if err := <-appended; err != nil {
				t.Fatal(err)
			}
			// Once the target is back (its audit.target_up recorded and
			// everything delivered), seal the journal and deliver the seal.
			waitFor(t, "the target to catch up", 5*time.Minute, func() bool { st := f.Status()[0]; return st.Connected && st.Lag == 0 })
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := cp.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if err := f.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			last := j.LastSeq()
			waitFor(t, "every seq at the receiver", time.Minute, func() bool { cnt.poll(); return uint64(len(cnt.seen)) >= last })
			rep := verifyFile(t, srv.File, &audit.CaptureOptions{PublicKey: pub})
			if !rep.OK() {
				t.Fatalf("got problems %v", rep.Problems)
			}
			for s := uint64(1); s <= n; s++ {
				if cnt.seen[s] == 0 {
					t.Fatalf("seq %d missing at the receiver", s)
				}
			}
			if rep.Entries != int(last) || rep.Checkpoints == 0 || rep.SealedUpTo+1 != last {
				t.Errorf("got %d entries, %d checkpoints, sealed up to %d; want %d entries, sealed up to %d", rep.Entries, rep.Checkpoints, rep.SealedUpTo, last, last-1)
			}
			st = f.Status()[0]
			if st.Lag != 0 || st.Delivered != last || st.Reconnects < 2 {
				t.Errorf("got status %+v, want no lag and a reconnect", st)
			}
			t.Logf("%s: %d entries, %d duplicates resent after the outage, %d reconnects", tc.name, rep.Entries, rep.Duplicates, st.Reconnects)
		})
	}
}

// TestCaptureVerification sends through rsyslog in several formats and
// checks that `audit verify` passes on the file, and fails naming the seq
// when a line is removed, a byte edited or the tail dropped.
func TestCaptureVerification(t *testing.T) {
	big := strings.Repeat("é\"x", 24<<10) // 70 KiB
	for _, tc := range []struct {
		name     string
		target   Target
		template string
		input    string
		big      bool
		wantKind string // a problem expected in the untouched capture
	}{
		{"rfc5424 octet-counting", Target{Format: FormatRFC5424}, rsyslog.TemplateRFC5424, rsyslog.InputTCP, false, ""},
		{"rfc5424 newline ptcp", Target{Format: FormatRFC5424, Framing: FramingNewline}, rsyslog.TemplateRFC5424, rsyslog.InputPTCP, false, ""},
		{"rfc3164 traditional file", Target{Format: FormatRFC3164}, rsyslog.TemplateTraditional, rsyslog.InputTCP, false, ""},
		{"wazuh newline", Target{Format: FormatWazuh, Framing: FramingNewline}, rsyslog.TemplateTraditional, rsyslog.InputTCP, false, ""},
		{"wazuh 70KiB split", Target{Format: FormatWazuh, Framing: FramingNewline}, rsyslog.TemplateTraditional, rsyslog.InputTCP, true, ""},
		{"rfc5424 70KiB refused", Target{Format: FormatRFC5424, Oversize: OversizeRefuse}, rsyslog.TemplateRFC5424, rsyslog.InputTCP, true, audit.ProblemWithheld},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := rsyslog.Start(t, rsyslog.Options{Input: tc.input, Template: tc.template})
			j := openJournal(t)
			cp, pub := startCheckpointer(t, j, 100)
			tc.target.Address = "tcp://" + srv.Addr
			f := startForwarder(t, j, nil, tc.target)
			// 300 entries; each 100 sealed before the next come, so that
			// checkpoints stand between them whatever the scheduler does
			// (the tail-dropped case below needs some before the cut).
			for k := uint64(1); k <= 3; k++ {
				if err := appendN(t, j, 100, 8); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "a checkpoint", time.Minute, func() bool { return j.LastSeq() >= 101*k })
			}
			if tc.big {
				e := testEvent(0)
				e.Details["body"] = big
				if _, err := j.Append(context.Background(), e); err != nil {
					t.Fatal(err)
				}
				if err := appendN(t, j, 10, 1); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := cp.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if err := f.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			last := j.LastSeq()
			cnt := newSeqCounter(srv.File)
			waitFor(t, "every seq at the receiver", time.Minute, func() bool { cnt.poll(); return uint64(len(cnt.seen)) >= last })
			opts := &audit.CaptureOptions{PublicKey: pub}
			rep := verifyFile(t, srv.File, opts)
			if tc.wantKind == "" && !rep.OK() {
				t.Fatalf("got problems %v, want none", rep.Problems)
			}
			if tc.wantKind != "" && (len(rep.Problems) != 1 || rep.Problems[0].Kind != tc.wantKind) {
				t.Fatalf("got problems %v, want one %s", rep.Problems, tc.wantKind)
			}
			if rep.SealedUpTo+1 != last {
				t.Errorf("got sealed up to %d, want %d", rep.SealedUpTo, last-1)
			}
			lines := readLines(t, srv.File)
			at := func(seq uint64) int {
				for i, l := range lines {
					if strings.Contains(l, fmt.Sprintf(`{"audit_seq":%d,`, seq)) {
						return i
					}
				}
				t.Fatalf("seq %d not in the capture", seq)
				return -1
			}
			for _, m := range []struct {
				name    string
				seq     uint64
				kind    string
				mutate  func([]string) []string
				wantSeq uint64
			}{
				{"line deleted", 150, audit.ProblemGap, func(ls []string) []string { i := at(150); return append(ls[:i:i], ls[i+1:]...) }, 150},
				{"byte edited", 42, audit.ProblemAltered, func(ls []string) []string {
					i := at(42)
					ls[i] = strings.Replace(ls[i], `"target":"tickets"`, `"target":"tickeTs"`, 1)
					return ls
				}, 42},
				{"tail dropped", last - 3, audit.ProblemTail, func(ls []string) []string { return ls[:at(last-3)] }, 0},
			} {
				t.Run(m.name, func(t *testing.T) {
					path := filepath.Join(t.TempDir(), "capture.log")
					mut := m.mutate(append([]string(nil), lines...))
					if err := os.WriteFile(path, []byte(strings.Join(mut, "\n")+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
					rep := verifyFile(t, path, opts)
					var found bool
					for _, p := range rep.Problems {
						if p.Kind == m.kind && (m.wantSeq == 0 || p.Seq == m.wantSeq) {
							found = true
						}
					}
					if !found {
						t.Errorf("got problems %v, want a %s problem naming seq %d", rep.Problems, m.kind, m.wantSeq)
					}
				})
			}
		})
	}
}

func readLines(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUDPFormat checks only what arrives over UDP (UDP is lossy by design).
func TestUDPFormat(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{Input: rsyslog.InputUDP})
	j := openJournal(t)
	f := startForwarder(t, j, nil, Target{Address: "udp://" + srv.Addr})
	if err := appendN(t, j, 50, 1); err != nil {
		t.Fatal(err)
	}
	cnt := newSeqCounter(srv.File)
	waitFor(t, "messages at the receiver", time.Minute, func() bool { cnt.poll(); return len(cnt.seen) >= 50 })
	rep := verifyFile(t, srv.File, &audit.CaptureOptions{AllowOpenTail: true})
	for _, p := range rep.Problems {
		if p.Kind != audit.ProblemGap {
			t.Errorf("got problem %v", p)
		}
	}
	if rep.Entries == 0 {
		t.Error("got no entry")
	}
	if st := f.Status()[0]; st.Delivered != j.LastSeq() {
		t.Errorf("got delivered %d, want %d", st.Delivered, j.LastSeq())
	}
}

// TestTLSWrongCertificateLosesNothing: a receiver whose certificate the CA
// does not sign gets nothing, the error says why, and everything is
// delivered once the right CA is configured.
func TestTLSWrongCertificateLosesNothing(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{Input: rsyslog.InputTLS})
	_, otherDER, err := rsyslog.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(other, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	j := openJournal(t)
	if err := appendN(t, j, 500, 4); err != nil {
		t.Fatal(err)
	}
	f := startForwarder(t, j, nil, Target{Address: "tls://" + srv.Addr, CAFile: other, ServerName: "localhost"})
	waitFor(t, "a TLS error in the status", time.Minute, func() bool { return f.Status()[0].LastError != "" })
	st := f.Status()[0]
	if !strings.Contains(st.LastError, "tls handshake") || !strings.Contains(st.LastError, "certificate") {
		t.Errorf("got error %q, want a TLS certificate error", st.LastError)
	}
	if st.Delivered != 0 {
		t.Errorf("got delivered %d, want 0", st.Delivered)
	}
	// With the right CA, everything the journal kept is delivered.
	f2 := startForwarder(t, j, &Options{Dir: t.TempDir()}, Target{Address: "tls://" + srv.Addr, CAFile: srv.CAFile, ServerName: "localhost"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	cnt := newSeqCounter(srv.File)
	waitFor(t, "every seq", time.Minute, func() bool { cnt.poll(); return uint64(len(cnt.seen)) >= j.LastSeq() })
}

// stallListener accepts connections and reads nothing until released; then
// it reads everything into got.
type stallListener struct {
	l       net.Listener
	release chan struct{}
	mu      sync.Mutex
	got     []*bytes.Buffer // per connection
}

// received returns what every connection got, each ending a line.
func (s *stallListener) received() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []byte
	for _, b := range s.got {
		all = append(all, b.Bytes()...)
		all = append(all, '\n')
	}
	return all
}

func newStallListener(t *testing.T) *stallListener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &stallListener{l: l, release: make(chan struct{})}
	t.Cleanup(func() { l.Close() })
	go acceptInto(t, l, &s.mu, &s.got, s.release)
	return s
}

// acceptInto accepts connections on l until it is closed and reads each
// into a buffer of its own, appended to *got under mu. With wait not nil,
// reading starts only once wait is closed.
func acceptInto(t *testing.T, l net.Listener, mu *sync.Mutex, got *[]*bytes.Buffer, wait <-chan struct{}) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { c.Close() })
		buf := new(bytes.Buffer)
		mu.Lock()
		*got = append(*got, buf)
		mu.Unlock()
		go func() {
			if wait != nil {
				<-wait
			}
			readInto(c, mu, buf)
		}()
	}
}

// TestReceiverThatNeverReads: the write times out with a clear error, the
// cursor does not move past what the receiver did not read, and everything
// arrives once it reads.
func TestReceiverThatNeverReads(t *testing.T) {
	s := newStallListener(t)
	j := openJournal(t)
	pad := strings.Repeat("p", 900)
	for i := 0; i < 20000; i += 1000 {
		var wg sync.WaitGroup
		for k := 0; k < 1000; k++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e := testEvent(i + k)
				e.Details["pad"] = pad
				if _, err := j.Append(context.Background(), e); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	f := startForwarder(t, j, &Options{WriteTimeout: time.Second}, Target{Address: "tcp://" + s.l.Addr().String(), Framing: FramingNewline})
	waitFor(t, "a stall error", time.Minute, func() bool { return strings.Contains(f.Status()[0].LastError, "not reading") })
	if d := f.Status()[0].Delivered; d != 0 {
		t.Errorf("got delivered %d while the receiver read nothing, want 0", d)
	}
	close(s.release)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every seq", time.Minute, func() bool { return bytes.Count(s.received(), []byte("\n")) >= 20000 })
	v := audit.NewCaptureVerifier(&audit.CaptureOptions{AllowOpenTail: true})
	v.Read("stall", bytes.NewReader(s.received()))
	if rep := v.Report(); !rep.OK() || rep.FirstSeq != 1 || rep.LastSeq < 20000 {
		t.Errorf("got %d entries (seq %d..%d), problems %v; want seq 1..20000 and none", rep.Entries, rep.FirstSeq, rep.LastSeq, rep.Problems)
	}
}

func TestNewRefusesBadTargets(t *testing.T) {
	j := openJournal(t)
	_, caDER, err := rsyslog.NewCA("a CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca, notPEM := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "not.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		t    Target
		key  string
	}{
		{"no scheme", Target{Address: "siem.example:514"}, "address"},
		{"bad port", Target{Address: "tcp://siem.example:99999"}, "address"},
		{"unix relative", Target{Address: "unix://dev/log"}, "address"},
		{"path on tcp", Target{Address: "tcp://h:514/x"}, "address"},
		{"format", Target{Address: "tcp://h:514", Format: "cef"}, "format"},
		{"framing on udp", Target{Address: "udp://h:514", Framing: FramingNewline}, "framing"},
		{"ca on tcp", Target{Address: "tcp://h:514", CAFile: "/etc/ca.pem"}, "address"},
		{"cert without key", Target{Address: "tls://h:6514", CertFile: "/etc/c.pem"}, "cert_file"},
		{"relative ca", Target{Address: "tls://h:6514", CAFile: "ca.pem"}, "ca_file"},
		{"missing ca", Target{Address: "tls://h:6514", CAFile: filepath.Join(dir, "nosuch.pem")}, "ca_file"},
		{"ca not PEM", Target{Address: "tls://h:6514", CAFile: notPEM}, "ca_file"},
		{"cert not PEM", Target{Address: "tls://h:6514", CAFile: ca, CertFile: notPEM, KeyFile: notPEM}, "cert_file"},
		{"missing key", Target{Address: "tls://h:6514", CAFile: ca, CertFile: ca, KeyFile: filepath.Join(dir, "nosuch.key")}, "key_file"},
		{"facility", Target{Address: "tcp://h:514", Facility: "local9"}, "facility"},
		{"wazuh too big", Target{Address: "tcp://h:514", Format: FormatWazuh, MaxMessageBytes: 70000}, "max_message_bytes"},
		// Wazuh cuts a line longer than 65,536 bytes with its own prefix.
		{"wazuh at 65536", Target{Address: "tcp://h:514", Format: FormatWazuh, MaxMessageBytes: 65536}, "max_message_bytes"},
		{"wazuh octet-counting", Target{Address: "tcp://h:514", Format: FormatWazuh, Framing: FramingOctetCounting}, "framing"},
		{"too small", Target{Address: "tcp://h:514", MaxMessageBytes: 100}, "max_message_bytes"},
		{"oversize", Target{Address: "tcp://h:514", Oversize: "truncate"}, "oversize"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.t.Validate()
			if len(errs) == 0 || errs[0].Key != tc.key {
				t.Fatalf("got %v, want an error on %s", errs, tc.key)
			}
			if _, err := New(j, []Target{tc.t}, &Options{Dir: t.TempDir()}); err == nil {
				t.Error("got New ok, want an error")
			}
		})
	}
	errs := ValidateTargets([]Target{{Address: "tcp://h:1"}, {Address: "tcp://h:1"}})
	if len(errs) != 1 || errs[0].Key != "[1].address" {
		t.Errorf("got %v, want a duplicate address error on [1].address", errs)
	}
	if errs := (Target{Address: "tls://siem.example:6514", CAFile: ca, Format: FormatWazuh, Framing: FramingNewline}).Validate(); len(errs) != 0 {
		t.Errorf("got %v for a good target", errs)
	}
}

// A wazuh target that names no framing sends one message per line, which
// is all Wazuh's syslog input reads: with octet-counting it would find no
// message in the stream while the cursor moved past every event.
func TestWazuhTargetSendsLines(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	lines := make(chan string, 100)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		sc := bufio.NewScanner(c)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	j := openJournal(t)
	for i := range 5 {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	startForwarder(t, j, nil, Target{Address: "tcp://" + l.Addr().String(), Format: FormatWazuh})
	for i := range 5 {
		select {
		case line := <-lines:
			if !strings.Contains(line, " applianced: {") {
				t.Errorf("line %d: %q, want a wazuh message", i, line)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d lines, want 5", i)
		}
	}
}

// TestCursorSurvivesRestart: a new forwarder continues from the durable
// cursor instead of resending everything.
func TestCursorSurvivesRestart(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	j := openJournal(t)
	dir := t.TempDir()
	target := Target{Address: "tcp://" + srv.Addr}
	if err := appendN(t, j, 1000, 8); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := New(j, []Target{target}, &Options{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { f.Run(rctx); close(done) }()
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	stop()
	<-done
	first := j.LastSeq()
	if err := appendN(t, j, 100, 1); err != nil {
		t.Fatal(err)
	}
	f2 := startForwarder(t, j, &Options{Dir: dir}, target)
	if err := f2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	cnt := newSeqCounter(srv.File)
	waitFor(t, "every seq", time.Minute, func() bool { cnt.poll(); return uint64(len(cnt.seen)) >= j.LastSeq() })
	if cnt.copies-len(cnt.seen) > 0 {
		t.Errorf("got %d duplicates after a clean restart at seq %d, want 0", cnt.copies-len(cnt.seen), first)
	}
}

// TestRetentionWaitsForEveryTarget: delivered segments go, undelivered ones
// stay while a target is down.
func TestRetentionWaitsForEveryTarget(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	j, err := audit.Open(t.TempDir(), &audit.Options{SegmentBytes: 16 << 10, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	if err := appendN(t, j, 2000, 8); err != nil {
		t.Fatal(err)
	}
	segs := len(j.Segments())
	o := &Options{KeepBytes: 1, PruneEvery: time.Hour}
	f := startForwarder(t, j, o, Target{Address: "tcp://" + srv.Addr}, Target{Address: "tcp://" + deadAddr})
	waitFor(t, "delivery to the live target", time.Minute, func() bool { return f.Status()[0].Delivered >= 2000 })
	if n, err := f.Prune(); err != nil || n != 0 {
		t.Errorf("got %d segments pruned (%v) while a target has nothing, want 0", n, err)
	}
	if got := len(j.Segments()); got < segs {
		t.Errorf("got %d segments, want %d kept", got, segs)
	}
	if f.Status()[1].LastError == "" {
		t.Errorf("got status %+v, want the dead target's error", f.Status()[1])
	}
	f2 := startForwarder(t, j, &Options{KeepBytes: 1, PruneEvery: time.Hour}, Target{Address: "tcp://" + srv.Addr})
	waitFor(t, "delivery", time.Minute, func() bool { return f2.Status()[0].Lag == 0 })
	n, err := f2.Prune()
	if err != nil || n == 0 {
		t.Errorf("got %d pruned (%v), want delivered segments removed", n, err)
	}
}

// TestUnixDatagram delivers to a local datagram socket, as to /dev/log.
func TestUnixDatagram(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	j := openJournal(t)
	startForwarder(t, j, nil, Target{Address: "unix://" + path, Format: FormatRFC3164})
	if err := appendN(t, j, 20, 1); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	buf := make([]byte, 1<<16)
	for i := 0; i < 20; i++ {
		_ = pc.SetReadDeadline(time.Now().Add(time.Minute))
		n, err := pc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(buf[:n], []byte("<")) || !bytes.Contains(buf[:n], []byte(" applianced[")) {
			t.Errorf("got datagram %q, want an RFC 3164 message from applianced[pid]", buf[:n])
		}
		got.Write(buf[:n])
		got.WriteByte('\n')
	}
	v := audit.NewCaptureVerifier(&audit.CaptureOptions{AllowOpenTail: true})
	v.Read("dgram", &got)
	if rep := v.Report(); !rep.OK() || rep.Entries != 20 {
		t.Errorf("got %d entries, problems %v; want 20 and none", rep.Entries, rep.Problems)
	}
}

// TestTLSClientCertificate: a receiver that requires a client certificate
// refuses a target without one, and receives everything from one with it.
func TestTLSClientCertificate(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{Input: rsyslog.InputTLS, RequireClientCert: true})
	j := openJournal(t)
	if err := appendN(t, j, 200, 4); err != nil {
		t.Fatal(err)
	}
	without := startForwarder(t, j, nil, Target{Address: "tls://" + srv.Addr, CAFile: srv.CAFile, ServerName: "localhost"})
	with := startForwarder(t, j, nil, Target{Address: "tls://" + srv.Addr, CAFile: srv.CAFile, ServerName: "localhost",
		CertFile: srv.ClientCertFile, KeyFile: srv.ClientKeyFile})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := with.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "an error for the target without a certificate", time.Minute, func() bool { return without.Status()[0].LastError != "" })
	if e := without.Status()[0].LastError; !strings.Contains(e, "certificate") {
		t.Errorf("got error %q, want it to mention the client certificate", e)
	}
	if st := without.Status()[0]; st.Delivered != 0 {
		t.Errorf("got %d delivered without a client certificate, want 0 (%s)", st.Delivered, st.LastError)
	}
	cnt := newSeqCounter(srv.File)
	waitFor(t, "every seq", time.Minute, func() bool { cnt.poll(); return len(cnt.seen) >= 200 })
}

// TestDropOldestSkipsToTheOldestKept: under the drop_oldest policy a target
// that was down when segments were dropped continues with the oldest entry
// kept and says why entries are missing.
func TestDropOldestSkipsToTheOldestKept(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	j, err := audit.Open(t.TempDir(), &audit.Options{SegmentBytes: 8 << 10, MaxBytes: 32 << 10, DiskFull: audit.DiskFullDropOldest, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	if err := appendN(t, j, 1000, 1); err != nil {
		t.Fatal(err)
	}
	first := j.Segments()[0].First
	if first == 1 {
		t.Fatal("no segment was dropped; the test needs a smaller MaxBytes")
	}
	f := startForwarder(t, j, nil, Target{Address: "tcp://" + srv.Addr})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st := f.Status()[0]; !strings.Contains(st.LastError, "removed by retention") {
		t.Errorf("got last error %q, want it to say entries were removed", st.LastError)
	}
	cnt := newSeqCounter(srv.File)
	waitFor(t, "delivery", time.Minute, func() bool { cnt.poll(); return uint64(len(cnt.seen)) >= j.LastSeq()-first })
	if cnt.seen[first] == 0 || cnt.seen[first-1] != 0 {
		t.Errorf("got seq %d: %d copies, seq %d: %d; want delivery to start at the oldest kept, %d", first, cnt.seen[first], first-1, cnt.seen[first-1], first)
	}
	// The receiver did nothing wrong: no alert says it is down.
	for _, ev := range eventsFrom(t, j, j.Segments()[0].First) {
		if ev.Type == "audit.target_down" {
			t.Errorf("got %s (%s) for entries retention removed", ev.Type, ev.Reason)
		}
	}
}

// eventsFrom reads the journal's events from seq first to its end.
func eventsFrom(t *testing.T, j *audit.Journal, first uint64) []audit.Event {
	t.Helper()
	r, err := j.Reader(first)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []audit.Event
	for seq := first; seq <= j.LastSeq(); seq++ {
		e, err := r.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e.Event)
	}
	return out
}

// A cursor ahead of the journal (the journal was moved aside, or restored
// from an older copy) sends everything again and raises audit.tamper.
func TestCursorAheadOfTheJournalIsRecorded(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	dir := t.TempDir()
	target := Target{Address: "tcp://" + srv.Addr}
	j1 := openJournal(t)
	if err := appendN(t, j1, 50, 4); err != nil {
		t.Fatal(err)
	}
	f1, err := New(j1, []Target{target}, &Options{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { f1.Run(rctx); close(done) }()
	if err := f1.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	stop() // the cursor is stored as Run ends
	<-done
	j2 := openJournal(t) // a new chain, behind the cursor
	if err := appendN(t, j2, 5, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := New(j2, []Target{target}, &Options{Dir: dir, Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	evs := eventsFrom(t, j2, 1)
	ev := evs[len(evs)-1]
	if ev.Type != "audit.tamper" || ev.Severity != audit.SeverityHigh || ev.Details["cursor"] != "50" || ev.Details["journal_seq"] != "5" {
		t.Fatalf("got %+v, want audit.tamper naming cursor 50 and journal seq 5", ev)
	}
}

// An entry that no longer parses stops delivery there, and audit.tamper
// says so once, however often the target retries.
func TestDamagedEntryIsRecordedOnce(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	dir := t.TempDir()
	// Small segments: Open checks the last one whole, and refuses a
	// damaged entry there; one in an earlier segment is met by readers.
	opts := &audit.Options{SegmentBytes: 4 << 10, Logger: quietLogger()}
	j, err := audit.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := appendN(t, j, 100, 1); err != nil {
		t.Fatal(err)
	}
	j.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "journal-*.log"))
	if len(segs) < 2 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`{"seq":5,`)) {
		t.Fatal("seq 5 not found in the segment")
	}
	b = bytes.Replace(b, []byte(`{"seq":5,`), []byte(`{"seq":5;`), 1)
	if err := os.WriteFile(segs[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	j, err = audit.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	f := startForwarder(t, j, &Options{BackoffMin: 20 * time.Millisecond, BackoffMax: 50 * time.Millisecond}, Target{Address: "tcp://" + srv.Addr})
	waitFor(t, "several failed attempts", time.Minute, func() bool {
		st := f.Status()[0]
		return st.Reconnects >= 4 && strings.Contains(st.LastError, "damaged")
	})
	if d := f.Status()[0].Delivered; d != 4 {
		t.Errorf("got delivered %d, want 4 (stuck before the damaged entry)", d)
	}
	n := 0
	for _, ev := range eventsFrom(t, j, 101) {
		if ev.Type == "audit.tamper" {
			n++
			if ev.Details["seq"] != "5" {
				t.Errorf("audit.tamper names seq %q, want 5", ev.Details["seq"])
			}
		}
	}
	if n != 1 {
		t.Errorf("got %d audit.tamper events, want 1", n)
	}
}

// readInto copies what c receives into buf, under mu, until c fails.
func readInto(c net.Conn, mu *sync.Mutex, buf *bytes.Buffer) {
	var b [64 << 10]byte
	for {
		n, err := c.Read(b[:])
		mu.Lock()
		buf.Write(b[:n])
		mu.Unlock()
		if err != nil {
			return
		}
	}
}

// A cursor that cannot be saved (here its temporary file's name is taken
// by a directory, as a full disk would fail it) does not stop delivery or
// churn the connection: it costs duplicates after a restart, no more.
func TestCursorThatCannotBeSavedDoesNotStopDelivery(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	dir := t.TempDir()
	target := Target{Address: "tcp://" + srv.Addr}
	if err := os.Mkdir(newCursor(dir, target.Address, "").path+".tmp", 0o700); err != nil {
		t.Fatal(err)
	}
	j := openJournal(t)
	f := startForwarder(t, j, &Options{Dir: dir}, target)
	for range 5 {
		if err := appendN(t, j, 50, 4); err != nil {
			t.Fatal(err)
		}
		time.Sleep(250 * time.Millisecond) // past storeEvery: each round tries a save
	}
	waitFor(t, "everything delivered", time.Minute, func() bool { return f.Status()[0].Delivered == j.LastSeq() })
	st := f.Status()[0]
	if !strings.Contains(st.LastError, "saving the cursor") || st.Reconnects != 1 {
		t.Errorf("got status %+v, want the failed save named and the one connection kept", st)
	}
}

// A client certificate renewed in place (same paths) is what the next
// connection presents: no restart, and no reload needed.
func TestRenewedClientCertificateIsUsedAtTheNextConnection(t *testing.T) {
	ca, err := pki.NewCA("test CA", time.Now().Add(time.Hour), x509.KeyUsageCertSign)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(caFile, pki.CertPEM(ca.DER), 0o600); err != nil {
		t.Fatal(err)
	}
	issue := func(cn string, ku x509.ExtKeyUsage, ips ...net.IP) *pki.Cert {
		t.Helper()
		c, err := ca.Issue(pki.Leaf{CommonName: cn, IPAddresses: ips, ExtKeyUsage: ku, NotAfter: time.Now().Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	server := issue("127.0.0.1", x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	if err := issue("client one", x509.ExtKeyUsageClientAuth).WriteFiles(certFile, 0o600, keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	skey, _ := server.KeyPEM()
	scert, err := tls.X509KeyPair(server.CertPEM(), skey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{scert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	names := make(chan string, 10)
	conns := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				c.Close()
				continue
			}
			names <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
			conns <- c
			go io.Copy(io.Discard, c)
		}
	}()
	j := openJournal(t)
	if _, err := j.Append(context.Background(), testEvent(1)); err != nil {
		t.Fatal(err)
	}
	startForwarder(t, j, &Options{BackoffMin: 20 * time.Millisecond, BackoffMax: 50 * time.Millisecond},
		Target{Address: "tls://" + l.Addr().String(), CAFile: caFile, CertFile: certFile, KeyFile: keyFile})
	next := func() string {
		t.Helper()
		select {
		case n := <-names:
			return n
		case <-time.After(time.Minute):
			t.Fatal("no connection")
			return ""
		}
	}
	if n := next(); n != "client one" {
		t.Fatalf("first connection presented %q", n)
	}
	if err := issue("client two", x509.ExtKeyUsageClientAuth).WriteFiles(certFile, 0o600, keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	(<-conns).Close() // the receiver drops the connection; the forwarder reconnects
	if n := next(); n != "client two" {
		t.Errorf("after renewal the next connection presented %q, want the renewed certificate", n)
	}
}

// start = "now": a target that has never received anything begins with
// the next entry, not with everything the journal keeps; once it has a
// cursor, the cursor decides (a restart loses nothing).
func TestStartNowSkipsTheHistoryOnce(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	j := openJournal(t)
	if err := appendN(t, j, 100, 4); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	target := Target{Address: "tcp://" + srv.Addr, Start: StartNow}
	f, err := New(j, []Target{target}, &Options{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if d := f.Status()[0].Delivered; d != 100 {
		t.Fatalf("a new start = now target begins after %d, want 100", d)
	}
	if _, err := j.Append(context.Background(), testEvent(101)); err != nil {
		t.Fatal(err)
	}
	f2, err := New(j, []Target{target}, &Options{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if d := f2.Status()[0].Delivered; d != 100 {
		t.Errorf("restarted with a cursor at 100 and seq 101 undelivered: begins after %d, want 100 still", d)
	}
	if errs := (Target{Address: "tcp://h:514", Start: "yesterday"}).Validate(); len(errs) != 1 || errs[0].Key != "start" {
		t.Errorf("an unknown start: got %v", errs)
	}
}
