package audit

import (
	"encoding/json"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// appendCanonical appends the JSON encoding of e to b, byte for byte what
// encoding/json's Marshal writes for it: fields in struct order, omitempty
// as declared on Event and Actor, Details keys sorted, strings escaped as
// Marshal escapes them (<, > and & as \u003c, \u003e and \u0026, invalid
// UTF-8 as \ufffd, U+2028 and U+2029 escaped) and Time as its MarshalJSON
// writes it. ok is false for an event Marshal would refuse (a Time that
// RFC 3339 cannot hold); the caller then asks Marshal for its error.
func appendCanonical(b []byte, e *Event) (_ []byte, ok bool) {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"time":`...)
	if b, ok = appendJSONTime(b, e.Time); !ok {
		return b, false
	}
	b = append(b, `,"type":`...)
	b = appendJSONString(b, e.Type)
	if e.Severity != "" {
		b = append(b, `,"severity":`...)
		b = appendJSONString(b, e.Severity)
	}
	b = append(b, `,"actor":{`...)
	sep := false
	if e.Actor.Agent != "" {
		b = append(b, `"agent":`...)
		b = appendJSONString(b, e.Actor.Agent)
		sep = true
	}
	if e.Actor.User != "" {
		if sep {
			b = append(b, ',')
		}
		b = append(b, `"user":`...)
		b = appendJSONString(b, e.Actor.User)
		sep = true
	}
	if e.Actor.UID != nil {
		if sep {
			b = append(b, ',')
		}
		b = append(b, `"uid":`...)
		b = strconv.AppendInt(b, int64(*e.Actor.UID), 10)
		sep = true
	}
	if e.Actor.PID != 0 {
		if sep {
			b = append(b, ',')
		}
		b = append(b, `"pid":`...)
		b = strconv.AppendInt(b, int64(e.Actor.PID), 10)
	}
	b = append(b, '}')
	if e.Action != "" {
		b = append(b, `,"action":`...)
		b = appendJSONString(b, e.Action)
	}
	if e.Target != "" {
		b = append(b, `,"target":`...)
		b = appendJSONString(b, e.Target)
	}
	b = append(b, `,"outcome":`...)
	b = appendJSONString(b, e.Outcome)
	if e.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendJSONString(b, e.Reason)
	}
	if e.RequestID != "" {
		b = append(b, `,"request_id":`...)
		b = appendJSONString(b, e.RequestID)
	}
	if e.Source != "" {
		b = append(b, `,"source":`...)
		b = appendJSONString(b, e.Source)
	}
	if len(e.Details) > 0 {
		b = append(b, `,"details":{`...)
		var buf [24]string
		keys := buf[:0]
		for k := range e.Details {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, e.Details[k])
		}
		b = append(b, '}')
	}
	return append(b, '}'), true
}

// canonicalSize estimates the encoded length of e, escapes aside.
func canonicalSize(e *Event) int {
	n := 256 + len(e.Type) + len(e.Severity) + len(e.Actor.Agent) + len(e.Actor.User) +
		len(e.Action) + len(e.Target) + len(e.Outcome) + len(e.Reason) + len(e.RequestID) + len(e.Source)
	for k, v := range e.Details {
		n += len(k) + len(v) + 6
	}
	return n
}

// appendJSONTime appends t as time.Time's MarshalJSON writes it (RFC 3339
// with nanoseconds, trailing zeros trimmed), or reports false where
// MarshalJSON fails: a year outside 0..9999 or a zone offset of 24 hours or
// more.
func appendJSONTime(b []byte, t time.Time) ([]byte, bool) {
	b = append(b, '"')
	n0 := len(b)
	b = t.AppendFormat(b, time.RFC3339Nano)
	// The checks of time.Time.appendStrictRFC3339, on the same bytes.
	if b[n0+len("9999")] != '-' {
		return b, false
	}
	if b[len(b)-1] != 'Z' {
		c := b[len(b)-len("Z07:00")]
		h := 10*(b[len(b)-len("07:00")]-'0') + (b[len(b)-len("7:00")] - '0')
		if ('0' <= c && c <= '9') || h >= 24 {
			return b, false
		}
	}
	return append(b, '"'), true
}

// jsonSafe marks the ASCII bytes encoding/json copies unescaped when it
// escapes HTML: printable ones other than '"', '\\', '<', '>' and '&'.
var jsonSafe = func() (s [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		s[c] = true
	}
	for _, c := range `"\<>&` {
		s[c] = false
	}
	return s
}()

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted and escaped as encoding/json's Marshal
// (with HTML escaping, its default) writes a string.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// marshalCanonical is Canonical: the encoder above, or json.Marshal for an
// event it refuses, so that such an event gets Marshal's own error.
func marshalCanonical(e *Event) ([]byte, error) {
	if e == nil {
		return json.Marshal(e)
	}
	if b, ok := appendCanonical(make([]byte, 0, canonicalSize(e)), e); ok {
		return b, nil
	}
	return json.Marshal(e)
}
