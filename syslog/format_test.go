package syslog

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/leodido/go-syslog/v4/rfc5424"
)

// testChain is the chain id of the records chain makes.
const testChain = "0123456789abcdef0123456789abcdef"

// chain builds records for events, hashed as the journal does.
func chain(t testing.TB, evs ...*audit.Event) []record {
	t.Helper()
	var prev [32]byte
	out := make([]record, len(evs))
	for i, e := range evs {
		e.Seq = uint64(i + 1)
		if e.Time.IsZero() {
			e.Time = time.Date(2026, 11, 25, 23, 0, 0, 123456789, time.UTC)
		}
		c, err := e.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		h := audit.ChainHash(prev, c)
		out[i] = record{Chain: testChain, Seq: e.Seq, Prev: prev, Hash: h, Canonical: c, Event: e}
		prev = h
	}
	return out
}

// unframe splits an octet-counted stream into messages.
func unframe(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		sp := bytes.IndexByte(b, ' ')
		n, err := strconv.Atoi(string(b[:sp]))
		if sp < 0 || err != nil || sp+1+n > len(b) {
			t.Fatalf("bad octet-counting frame at %q", b[:min(len(b), 40)])
		}
		out = append(out, b[sp+1:sp+1+n])
		b = b[sp+1+n:]
	}
	return out
}

// validUTF8 replaces every invalid byte with U+FFFD, as the writer does.
func validUTF8(s string) string {
	var sb strings.Builder
	for _, r := range s {
		sb.WriteRune(r)
	}
	return sb.String()
}

var hostile = []struct{ name, v string }{
	{"quote", `a"b`},
	{"backslash", `a\b\`},
	{"bracket", `a]b]`},
	{"all three", `"\]`},
	{"newline", "line1\nline2\r\n"},
	{"nul", "a\x00b"},
	{"invalid utf8", "a\xff\xfeb\xc3"},
	{"del", "a\x7fb"},
	{"utf8", "Grüße 日本 \u2028"},
	{"100KB", strings.Repeat("x\"]\\", 25<<10)},
}

func TestRFC5424RoundTripsHostileValues(t *testing.T) {
	p := rfc5424.NewParser()
	for _, tc := range hostile {
		t.Run(tc.name, func(t *testing.T) {
			ev := &audit.Event{Type: "auth.login", Outcome: audit.OutcomeDenied, Actor: audit.Actor{User: tc.v, Agent: "bot"},
				Target: tc.v, Reason: tc.v, Details: map[string]string{"k": tc.v}}
			r := chain(t, ev)[0]
			f := newFormatter(Target{Address: "tcp://127.0.0.1:1", MaxMessageBytes: MaxMaxMessageBytes, Hostname: "host"}, endpoint{scheme: "tcp"})
			out, ends, err := f.appendMessages(nil, nil, &r)
			if err != nil {
				t.Fatal(err)
			}
			if len(ends) != 1 {
				t.Fatalf("got %d messages, want 1", len(ends))
			}
			msgs := unframe(t, out)
			m, err := p.Parse(msgs[0])
			if err != nil {
				t.Fatalf("go-syslog: %v", err)
			}
			sm := m.(*rfc5424.SyslogMessage)
			sd := (*sm.StructuredData)[SDID]
			want := validUTF8(tc.v)
			for _, k := range []string{"user", "target"} {
				if sd[k] != want {
					t.Errorf("got %s=%q, want %q", k, trunc(sd[k]), trunc(want))
				}
			}
			if sd["seq"] != "1" || sd["type"] != "auth.login" || sd["agent"] != "bot" {
				t.Errorf("got sd %v", sd)
			}
			if *sm.Appname != AppName || *sm.MsgID != "auth.login" || *sm.Hostname != "host" {
				t.Errorf("got app %q msgid %q host %q", *sm.Appname, *sm.MsgID, *sm.Hostname)
			}
			var body struct {
				Seq   uint64          `json:"audit_seq"`
				Event json.RawMessage `json:"event"`
			}
			if err := json.Unmarshal([]byte(*sm.Message), &body); err != nil {
				t.Fatalf("body: %v", err)
			}
			// The body holds the canonical bytes exactly.
			wantEv := r.Canonical
			if !bytes.Equal(body.Event, wantEv) {
				t.Errorf("got event %s, want %s", trunc(string(body.Event)), trunc(string(wantEv)))
			}
			var got audit.Event
			if err := json.Unmarshal(body.Event, &got); err != nil {
				t.Fatal(err)
			}
			if got.Actor.User != validUTF8(tc.v) {
				t.Errorf("got user %q, want %q", trunc(got.Actor.User), trunc(validUTF8(tc.v)))
			}
		})
	}
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

func TestNewlineFramingNeverSplitsAMessage(t *testing.T) {
	for _, format := range []string{FormatRFC5424, FormatRFC3164, FormatWazuh} {
		for _, tc := range hostile {
			t.Run(format+"/"+tc.name, func(t *testing.T) {
				ev := &audit.Event{Type: "tool.call\n", Outcome: audit.OutcomeSuccess, Actor: audit.Actor{User: tc.v}, Target: tc.v}
				r := chain(t, ev)[0]
				f := newFormatter(Target{Address: "tcp://x:1", Format: format, Framing: FramingNewline, MaxMessageBytes: WazuhMaxMessageBytes}, endpoint{scheme: "tcp"})
				out, ends, err := f.appendMessages(nil, nil, &r)
				if err != nil {
					t.Fatal(err)
				}
				if got := bytes.Count(out, []byte("\n")); got != len(ends) {
					t.Errorf("got %d line feeds, want one per message (%d)", got, len(ends))
				}
				start := 0
				for _, end := range ends {
					if end-start-1 > WazuhMaxMessageBytes {
						t.Errorf("got a message of %d bytes, limit %d", end-start-1, WazuhMaxMessageBytes)
					}
					start = end
				}
				v := audit.NewCaptureVerifier(&audit.CaptureOptions{AllowOpenTail: true})
				if err := v.Read("out", bytes.NewReader(out)); err != nil {
					t.Fatal(err)
				}
				if rep := v.Report(); !rep.OK() || rep.Entries != 1 {
					t.Errorf("got %+v, want one verified entry", rep)
				}
			})
		}
	}
}

func TestOversizeEventIsSplitOrRefused(t *testing.T) {
	big := strings.Repeat("é\"", 35<<10) // 70 KiB of value, more when escaped
	for _, tc := range []struct {
		name, oversize string
		wantParts      bool
		wantProblem    string
	}{
		{"split", OversizeSplit, true, ""},
		{"refuse", OversizeRefuse, false, audit.ProblemWithheld},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := chain(t,
				&audit.Event{Type: "auth.login", Outcome: audit.OutcomeSuccess},
				&audit.Event{Type: "tool.call", Outcome: audit.OutcomeSuccess, Details: map[string]string{"big": big}},
				&audit.Event{Type: "auth.login", Outcome: audit.OutcomeSuccess})
			f := newFormatter(Target{Address: "tcp://x:1", Format: FormatWazuh, Framing: FramingNewline, Oversize: tc.oversize}, endpoint{scheme: "tcp"})
			var out []byte
			var ends []int
			for i := range rs {
				var err error
				out, ends, err = f.appendMessages(out, ends, &rs[i])
				if err != nil {
					t.Fatal(err)
				}
			}
			start := 0
			for _, end := range ends {
				if n := end - start - 1; n > WazuhMaxMessageBytes {
					t.Errorf("got a message of %d bytes, want at most %d", n, WazuhMaxMessageBytes)
				}
				start = end
			}
			if got := len(ends) > 3; got != tc.wantParts {
				t.Errorf("got %d messages, want parts: %v", len(ends), tc.wantParts)
			}
			v := audit.NewCaptureVerifier(&audit.CaptureOptions{AllowOpenTail: true})
			if err := v.Read("out", bytes.NewReader(out)); err != nil {
				t.Fatal(err)
			}
			rep := v.Report()
			if tc.wantProblem == "" && !rep.OK() {
				t.Errorf("got problems %v, want none", rep.Problems)
			}
			if tc.wantProblem != "" && (len(rep.Problems) != 1 || rep.Problems[0].Kind != tc.wantProblem || rep.Problems[0].Seq != 2) {
				t.Errorf("got problems %v, want one %s at seq 2", rep.Problems, tc.wantProblem)
			}
		})
	}
}

func FuzzFormat(f *testing.F) {
	for _, h := range hostile[:9] {
		f.Add(h.v, h.v, uint16(1024))
	}
	f.Add(strings.Repeat("ab\"", 1000), "t", uint16(1100))
	p := rfc5424.NewParser()
	f.Fuzz(func(t *testing.T, user, details string, max uint16) {
		limit := MinMaxMessageBytes + int(max)%8192
		rs := chain(t, &audit.Event{Type: "auth.login", Outcome: audit.OutcomeDenied, Actor: audit.Actor{User: user}, Target: user,
			Details: map[string]string{"d": details}})
		for _, framing := range []string{FramingOctetCounting, FramingNewline} {
			fm := newFormatter(Target{Address: "tcp://x:1", Framing: framing, MaxMessageBytes: limit}, endpoint{scheme: "tcp"})
			out, ends, err := fm.appendMessages(nil, nil, &rs[0])
			if err != nil {
				t.Fatal(err)
			}
			var msgs [][]byte
			if framing == FramingOctetCounting {
				msgs = unframe(t, out)
			} else {
				msgs = bytes.SplitAfter(out, []byte("\n"))
				msgs = msgs[:len(msgs)-1]
				if len(msgs) != len(ends) {
					t.Fatalf("got %d lines, want %d messages", len(msgs), len(ends))
				}
				for i := range msgs {
					msgs[i] = bytes.TrimSuffix(msgs[i], []byte("\n"))
				}
			}
			for _, m := range msgs {
				if len(m) > limit {
					t.Fatalf("got a message of %d bytes, limit %d", len(m), limit)
				}
				if _, err := p.Parse(m); err != nil {
					t.Fatalf("go-syslog cannot parse %q: %v", m, err)
				}
			}
			v := audit.NewCaptureVerifier(&audit.CaptureOptions{AllowOpenTail: true})
			if err := v.Read("x", bytes.NewReader(bytes.Join(msgs, []byte("\n")))); err != nil {
				t.Fatal(err)
			}
			if rep := v.Report(); !rep.OK() {
				t.Fatalf("got problems %v", rep.Problems)
			}
		}
	})
}

// TestSplitEventsStayWithinMaxParts splits the largest event the journal
// takes, of the characters that escape widest, at the smallest room a part
// may leave: a capture verifier refuses more than audit.MaxParts parts.
func TestSplitEventsStayWithinMaxParts(t *testing.T) {
	ev := &audit.Event{Type: "tool.call", Outcome: audit.OutcomeSuccess, Details: map[string]string{"d": ""}}
	rs := chain(t, ev)
	ev.Details["d"] = strings.Repeat("\x7f", audit.MaxEventBytes-len(rs[0].Canonical))
	rs = chain(t, ev)
	if n := len(rs[0].Canonical); n != audit.MaxEventBytes {
		t.Fatalf("got an event of %d bytes, want %d", n, audit.MaxEventBytes)
	}
	fm := newFormatter(Target{Address: "tcp://x:1", MaxMessageBytes: 4096, Hostname: "host"}, endpoint{scheme: "tcp"})
	over := len(fm.appendHeader(nil, &rs[0], 9999999, 9999999)) + len(appendPartBody(nil, &rs[0], 9999999, 9999999, nil))
	for _, limit := range []int{over + audit.MinPartBytes, over + audit.MinPartBytes - 1} {
		fm.max = limit
		_, ends, err := fm.appendMessages(nil, nil, &rs[0])
		switch {
		case limit-over < audit.MinPartBytes:
			if !errors.Is(err, ErrTooLarge) {
				t.Errorf("limit %d leaves %d bytes a part: got %v, want %v", limit, limit-over, err, ErrTooLarge)
			}
		case err != nil:
			t.Fatal(err)
		case len(ends) > audit.MaxParts:
			t.Errorf("got %d parts, want at most %d", len(ends), audit.MaxParts)
		}
	}
}
