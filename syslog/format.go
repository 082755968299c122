package syslog

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/applianced/applianced/audit"
)

// SDID is the structured-data ID of every RFC 5424 message. 32473 is the
// enterprise number reserved for documentation (RFC 5612); the ID names the
// element, receivers never resolve it.
const SDID = "applianced@32473"

// AppName is the APP-NAME / program name of every message.
const AppName = "applianced"

// ErrTooLarge is returned when a message cannot be made to fit
// max_message_bytes at all (not even a part or a stub).
var ErrTooLarge = errors.New("syslog: message does not fit max_message_bytes")

// record is one journal entry as the formatter sees it.
type record struct {
	Chain     string // the journal's chain id; "" for a legacy journal
	Seq       uint64
	Prev      [32]byte
	Hash      [32]byte
	Canonical []byte
	Event     *audit.Event
}

// formatter turns journal entries into framed syslog messages for one
// target. It is not safe for concurrent use (it reuses scratch buffers).
type formatter struct {
	format  string
	framing string // octet-counting, newline, relp, or "" for datagrams
	// tx counts the RELP commands of the session so far (the open is 1);
	// the connection sets it, each message frame takes the next.
	tx       uint64
	max      int
	split    bool
	facility int
	hostname string
	pid      string

	body []byte // scratch
	msg  []byte // scratch
}

func newFormatter(t Target, ep endpoint) *formatter {
	t = t.withDefaults()
	f := &formatter{
		format:   t.Format,
		max:      t.MaxMessageBytes,
		split:    t.Oversize == OversizeSplit,
		facility: facilities[t.Facility],
		hostname: t.Hostname,
		pid:      strconv.Itoa(os.Getpid()),
	}
	switch {
	case ep.relp():
		f.framing = framingRELP
	case ep.stream():
		f.framing = t.Framing
	}
	if f.hostname == "" {
		f.hostname, _ = os.Hostname()
	}
	f.hostname = sanitizeHeader(f.hostname, 255)
	return f
}

// severity maps an event to a syslog severity (RFC 5424 §6.2.1).
func severity(e *audit.Event) int {
	switch {
	case e.Severity == audit.SeverityHigh:
		return 2 // critical
	case e.Severity == audit.SeverityWarn:
		return 4 // warning
	case e.Outcome == audit.OutcomeDenied || e.Outcome == audit.OutcomeFailure:
		return 5 // notice
	default:
		return 6 // informational
	}
}

// appendMessages appends r's framed message(s) to dst and the end offset of
// each message to ends. An event larger than the limit becomes parts (split)
// or a stub (refuse).
func (f *formatter) appendMessages(dst []byte, ends []int, r *record) ([]byte, []int, error) {
	f.body = appendBody(f.body[:0], r)
	f.msg = f.appendHeader(f.msg[:0], r, 0, 0)
	if len(f.msg)+len(f.body) <= f.max {
		f.msg = append(f.msg, f.body...)
		dst = f.frame(dst, f.msg)
		return dst, append(ends, len(dst)), nil
	}
	if !f.split {
		f.msg = f.appendHeader(f.msg[:0], r, -1, 0)
		f.msg = appendStub(f.msg, r, len(f.body))
		if len(f.msg) > f.max {
			return dst, ends, fmt.Errorf("%w: stub for seq %d is %d bytes, limit %d", ErrTooLarge, r.Seq, len(f.msg), f.max)
		}
		dst = f.frame(dst, f.msg)
		return dst, append(ends, len(dst)), nil
	}
	// Budget per part: the limit less the largest header and envelope.
	const wide = 9999999
	over := len(f.appendHeader(f.msg[:0], r, wide, wide)) + len(appendPartBody(nil, r, wide, wide, nil))
	budget := f.max - over
	if budget < audit.MinPartBytes {
		return dst, ends, fmt.Errorf("%w: a part of seq %d leaves %d bytes for the event", ErrTooLarge, r.Seq, budget)
	}
	chunks := chunkJSONString(r.Canonical, budget)
	for i, c := range chunks {
		f.msg = f.appendHeader(f.msg[:0], r, i+1, len(chunks))
		f.msg = appendPartBody(f.msg, r, i+1, len(chunks), c)
		dst = f.frame(dst, f.msg)
		ends = append(ends, len(dst))
	}
	return dst, ends, nil
}

func (f *formatter) frame(dst, msg []byte) []byte {
	switch f.framing {
	case FramingOctetCounting:
		dst = strconv.AppendInt(dst, int64(len(msg)), 10)
		dst = append(dst, ' ')
		return append(dst, msg...)
	case FramingNewline:
		dst = append(dst, msg...)
		return append(dst, '\n')
	case framingRELP:
		f.tx++
		return appendRELPFrame(dst, relpTxnr(f.tx), "syslog", msg)
	default:
		return append(dst, msg...)
	}
}

// appendHeader writes the syslog header up to the body. part > 0 marks a
// part of n; part < 0 a stub; 0 a whole event.
func (f *formatter) appendHeader(b []byte, r *record, part, n int) []byte {
	e := r.Event
	b = append(b, '<')
	b = strconv.AppendInt(b, int64(f.facility*8+severity(e)), 10)
	b = append(b, '>')
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	if f.format != FormatRFC5424 {
		b = t.Local().AppendFormat(b, time.Stamp)
		b = append(b, ' ')
		b = append(b, f.hostname...)
		b = append(b, ' ')
		b = append(b, AppName...)
		if f.format == FormatRFC3164 {
			b = append(b, '[')
			b = append(b, f.pid...)
			b = append(b, ']')
		}
		return append(b, ": "...)
	}
	b = append(b, "1 "...)
	b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, ' ')
	b = append(b, f.hostname...)
	b = append(b, ' ')
	b = append(b, AppName...)
	b = append(b, ' ')
	b = append(b, f.pid...)
	b = append(b, ' ')
	b = append(b, sanitizeHeader(e.Type, 32)...)
	b = append(b, " ["...)
	b = append(b, SDID...)
	b = f.appendParam(b, "seq", strconv.FormatUint(r.Seq, 10))
	switch {
	case part > 0:
		b = f.appendParam(b, "part", strconv.Itoa(part))
		b = f.appendParam(b, "parts", strconv.Itoa(n))
	case part < 0:
		b = f.appendParam(b, "withheld", "oversize")
	default:
		b = f.appendParam(b, "type", e.Type)
		b = f.appendParam(b, "outcome", e.Outcome)
		b = f.appendParam(b, "severity", e.Severity)
		b = f.appendParam(b, "agent", e.Actor.Agent)
		b = f.appendParam(b, "user", e.Actor.User)
		b = f.appendParam(b, "action", e.Action)
		b = f.appendParam(b, "target", e.Target)
	}
	return append(b, "] "...)
}

// appendParam writes ` name="value"` with the value escaped per RFC 5424
// §6.3.3 (`"`, `\` and `]` take a backslash), invalid UTF-8 replaced by
// U+FFFD, and, under newline framing, control characters written as #ooo so
// that no message contains a line feed. Empty values are left out.
func (f *formatter) appendParam(b []byte, name, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ' ')
	b = append(b, name...)
	b = append(b, '=', '"')
	return appendSDValue(b, v, f.framing == FramingNewline)
}

func appendSDValue(b []byte, v string, escapeControls bool) []byte {
	for i := 0; i < len(v); {
		c := v[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\' || c == ']':
				b = append(b, '\\', c)
			case escapeControls && (c < 0x20 || c == 0x7f):
				b = append(b, '#', '0'+c>>6, '0'+(c>>3)&7, '0'+c&7)
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(v[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, "\uFFFD"...)
		} else {
			b = append(b, v[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// sanitizeHeader makes s a header field: printable ASCII without spaces, at
// most max bytes, "-" when empty.
func sanitizeHeader(s string, max int) string {
	ok := len(s) > 0 && len(s) <= max
	for i := 0; ok && i < len(s); i++ {
		ok = s[i] > ' ' && s[i] < 0x7f
	}
	if ok {
		return s
	}
	var sb strings.Builder
	for i := 0; i < len(s) && sb.Len() < max; i++ {
		if s[i] > ' ' && s[i] < 0x7f {
			sb.WriteByte(s[i])
		} else {
			sb.WriteByte('_')
		}
	}
	if sb.Len() == 0 {
		return "-"
	}
	return sb.String()
}

// Body keys. A body is one line of JSON; `audit verify` finds it in a
// capture by its leading `{"audit_seq":`.
const bodyPrefix = `{"audit_seq":`

// appendEnvelope writes the keys every body starts with: the seq, the
// chain id (left out for a journal made before chain ids, whose bodies
// stay as they were), the chain hash and the previous hash.
func appendEnvelope(b []byte, r *record) []byte {
	b = append(b, bodyPrefix...)
	b = strconv.AppendUint(b, r.Seq, 10)
	if r.Chain != "" {
		// A chain id is lowercase hex (the journal checks its headers).
		b = append(b, `,"audit_chain":"`...)
		b = append(b, r.Chain...)
		b = append(b, '"')
	}
	b = append(b, `,"audit_hash":"`...)
	b = hex.AppendEncode(b, r.Hash[:])
	b = append(b, `","audit_prev":"`...)
	b = hex.AppendEncode(b, r.Prev[:])
	return append(b, '"')
}

// appendBody writes the whole-event body: the envelope and the canonical
// event JSON, byte for byte (it holds no control character: JSON escapes
// them).
func appendBody(b []byte, r *record) []byte {
	b = appendEnvelope(b, r)
	b = append(b, `,"event":`...)
	b = append(b, r.Canonical...)
	return append(b, '}')
}

func appendPartBody(b []byte, r *record, part, n int, chunk []byte) []byte {
	b = appendEnvelope(b, r)
	b = append(b, `,"audit_part":`...)
	b = strconv.AppendInt(b, int64(part), 10)
	b = append(b, `,"audit_parts":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `,"event_chunk":"`...)
	b = append(b, chunk...)
	return append(b, `"}`...)
}

func appendStub(b []byte, r *record, size int) []byte {
	b = appendEnvelope(b, r)
	b = append(b, `,"audit_withheld":"oversize","audit_size":`...)
	b = strconv.AppendInt(b, int64(size), 10)
	b = append(b, `,"event_type":"`...)
	b = appendJSONStringContent(b, []byte(sanitizeHeader(r.Event.Type, 64)))
	return append(b, `"}`...)
}

// chunkJSONString escapes s as the content of a JSON string and cuts the
// result into pieces of at most budget bytes, never inside an escape or a
// UTF-8 sequence.
func chunkJSONString(s []byte, budget int) [][]byte {
	var out [][]byte
	var cur []byte
	var tmp [8]byte
	for i := 0; i < len(s); {
		_, size := utf8.DecodeRune(s[i:])
		piece := appendJSONStringContent(tmp[:0], s[i:i+size])
		if len(cur)+len(piece) > budget {
			out = append(out, cur)
			cur = nil
		}
		cur = append(cur, piece...)
		i += size
	}
	if len(cur) > 0 || len(out) == 0 {
		out = append(out, cur)
	}
	return out
}

// appendJSONStringContent escapes s for the inside of a JSON string,
// leaving no control character, DEL or invalid UTF-8 in the output.
func appendJSONStringContent(b, s []byte) []byte {
	const hexd = "0123456789abcdef"
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexd[c>>4], hexd[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}
