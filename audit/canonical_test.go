package audit

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// checkCanonical fails t unless e.Canonical() returns exactly what
// json.Marshal returns for e: the same bytes, or the same error.
func checkCanonical(t *testing.T, e *Event) {
	t.Helper()
	want, werr := json.Marshal(e)
	got, gerr := e.Canonical()
	if (werr == nil) != (gerr == nil) || werr != nil && werr.Error() != gerr.Error() {
		t.Fatalf("error: got %v, json.Marshal %v\nevent: %#v", gerr, werr, e)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("bytes differ\n got %q\nwant %q\nevent: %#v", got, want, e)
	}
}

// awkward are pieces of strings json.Marshal escapes or rewrites.
var awkward = []string{
	"", "a", "tool.call", "<", ">", "&", `"`, `\`, "/", "\b", "\f", "\n", "\r", "\t",
	"\x00", "\x01", "\x1f", " ", "\x7f", "é", "€", "😀", "\u2028", "\u2029", "\u2027", "\u202a",
	"\ufffd", "\xff", "\xc3", "\xe2\x80", "\xe2\x80\xa8", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	"\xc0\xaf", "[REDACTED:jwt]", "</script>", "a&b", "\u00a0", "\U0010ffff",
}

func randString(r *rand.Rand) string {
	var b strings.Builder
	for n := r.IntN(6); n > 0; n-- {
		if r.IntN(3) == 0 {
			b.WriteByte(byte(r.IntN(256)))
		} else {
			b.WriteString(awkward[r.IntN(len(awkward))])
		}
	}
	return b.String()
}

func randTime(r *rand.Rand) time.Time {
	var sec int64
	switch r.IntN(4) {
	case 0:
		sec = r.Int64N(400*365*86400) + time.Date(1800, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	case 1: // around the years json.Marshal refuses
		edges := []time.Time{
			time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		}
		sec = edges[r.IntN(len(edges))].Unix() + r.Int64N(3*86400) - 86400*3/2
	case 2:
		sec = r.Int64() >> r.IntN(64)
		if r.IntN(2) == 0 {
			sec = -sec
		}
	default:
		return time.Time{}
	}
	nsec := []int64{0, 1, 100, 123456789, 999999999, 500000000, 10}[r.IntN(7)]
	if r.IntN(2) == 0 {
		nsec = r.Int64N(1e9)
	}
	t := time.Unix(sec, nsec)
	switch r.IntN(5) {
	case 0:
		return t.UTC()
	case 1:
		return t.Local()
	case 2:
		return t.In(time.FixedZone("", (r.IntN(2*30*3600)-30*3600)/60*60))
	case 3:
		return t.In(time.FixedZone("X", []int{-24 * 3600, 24 * 3600, 23*3600 + 59*60, -(23*3600 + 59*60), 100 * 3600, 30, -90}[r.IntN(7)]))
	}
	return t
}

func randEvent(r *rand.Rand) *Event {
	e := &Event{
		Type: randString(r), Severity: randString(r), Action: randString(r), Target: randString(r),
		Outcome: randString(r), Reason: randString(r), RequestID: randString(r), Source: randString(r),
		Actor: Actor{Agent: randString(r), User: randString(r)},
		Time:  randTime(r),
	}
	switch r.IntN(3) {
	case 0:
		e.Seq = r.Uint64()
	case 1:
		e.Seq = uint64(r.IntN(3))
	}
	if r.IntN(2) == 0 {
		uid := []int{0, -1, 1000, math.MaxInt, math.MinInt}[r.IntN(5)]
		e.Actor.UID = &uid
	}
	if r.IntN(2) == 0 {
		e.Actor.PID = []int{0, 1, -1, math.MaxInt, math.MinInt, r.Int()}[r.IntN(6)]
	}
	switch r.IntN(4) {
	case 0:
	case 1:
		e.Details = map[string]string{}
	default:
		e.Details = map[string]string{}
		for n := r.IntN(40); n > 0; n-- {
			e.Details[randString(r)] = randString(r)
		}
	}
	return e
}

func TestCanonicalMatchesJSON(t *testing.T) {
	uid := 0
	fixed := []*Event{
		nil,
		{},
		{Seq: 7, Time: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), Type: "tool.call", Outcome: OutcomeSuccess,
			Actor:  Actor{Agent: "bot", User: "alice", UID: &uid, PID: 42},
			Action: "GET", Target: "tickets", RequestID: "0123456789abcdef", Source: "127.0.0.1",
			Details: map[string]string{"method": "GET", "path": "/tickets/1?q=REDACTED", "route": "GET /tickets/*", "decision": "allow"}},
		{Time: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.FixedZone("", -(23*3600+59*60)))},
		{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Time: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600))},
		{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", -24*3600))},
		{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 100*3600))},
		{Time: time.Date(2026, 1, 1, 0, 0, 0, 1, time.FixedZone("", 30))},
		{Reason: "<script>&\u2028\u2029\xff\x00", Details: map[string]string{"<": ">", "b": "", "a": "&", "\xff": "\u2029"}},
	}
	for _, e := range fixed {
		checkCanonical(t, e)
	}
	// With the journal's own clock: now, in UTC.
	checkCanonical(t, &Event{Time: time.Now().UTC(), Type: "x", Outcome: "success"})
	r := rand.New(rand.NewPCG(1, 2))
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for range n {
		checkCanonical(t, randEvent(r))
	}
}

// FuzzCanonicalMatchesJSON checks Canonical against json.Marshal. details
// is a list of keys and values separated by its first byte.
func FuzzCanonicalMatchesJSON(f *testing.F) {
	f.Add(uint64(1), int64(1764064800), int64(0), int32(0), "tool.call", "", "bot", "alice", false, int64(0), int64(0),
		"GET", "tickets", "success", "", "0123456789abcdef", "127.0.0.1", "|method|GET|path|/tickets/1")
	f.Fuzz(func(t *testing.T, seq uint64, sec, nsec int64, offset int32, typ, severity, agent, user string,
		hasUID bool, uid, pid int64, action, target, outcome, reason, requestID, source, details string) {
		e := &Event{
			Seq: seq, Time: time.Unix(sec, nsec).In(time.FixedZone("", int(offset))), Type: typ, Severity: severity,
			Actor:  Actor{Agent: agent, User: user, PID: int(pid)},
			Action: action, Target: target, Outcome: outcome, Reason: reason, RequestID: requestID, Source: source,
		}
		if offset == 0 && sec%2 == 0 {
			e.Time = e.Time.UTC()
		}
		if hasUID {
			u := int(uid)
			e.Actor.UID = &u
		}
		if details != "" {
			e.Details = map[string]string{}
			kv := strings.Split(details[1:], details[:1])
			for i := 0; i+1 < len(kv); i += 2 {
				e.Details[kv[i]] = kv[i+1]
			}
		}
		checkCanonical(t, e)
	})
}

func BenchmarkCanonical(b *testing.B) {
	uid := 1000
	e := &Event{Seq: 0, Time: time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.UTC), Type: "tool.result", Outcome: OutcomeSuccess,
		Actor:  Actor{Agent: "bot", User: "alice", UID: &uid},
		Action: "GET", Target: "tickets", RequestID: "0123456789abcdef", Source: "127.0.0.1",
		Details: map[string]string{"method": "GET", "path": "/tickets/1", "route": "GET /tickets/*", "decision": "allow",
			"jti": "jti-1", "credential": "header:tickets-key", "upstream_status": "200", "bytes": "123", "duration_ms": "0"}}
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = json.Marshal(e)
		}
	})
	b.Run("Canonical", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = e.Canonical()
		}
	})
}

// TestCanonicalKnowsEveryField: the encoder writes the fields of Event and
// Actor by hand. A field added to either must be added to it too (and to
// the generator of TestCanonicalMatchesJSON), or the chain would silently
// leave it out: this test names the fields it was written for.
func TestCanonicalKnowsEveryField(t *testing.T) {
	for _, tc := range []struct {
		typ  reflect.Type
		want []string
	}{
		{reflect.TypeFor[Event](), []string{"seq", "time", "type", "severity", "actor", "action", "target", "outcome", "reason", "request_id", "source", "details"}},
		{reflect.TypeFor[Actor](), []string{"agent", "user", "uid", "pid"}},
	} {
		var got []string
		for i := range tc.typ.NumField() {
			got = append(got, strings.Split(tc.typ.Field(i).Tag.Get("json"), ",")[0])
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s has the JSON fields %v; canonical.go encodes %v: teach it the change", tc.typ, got, tc.want)
		}
	}
}
