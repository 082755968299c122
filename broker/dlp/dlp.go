// Package dlp finds and redacts sensitive values in text and JSON: payment
// card numbers (Luhn-checked, known issuer prefixes), IBANs (ISO 13616
// length and mod-97 checked), JWTs, PEM private keys, well-known API key
// formats, AWS access key ids, bearer tokens and the values of password-like
// fields. A site adds its own detectors (RE2 regular expressions) in the
// [dlp] section and may turn built-in ones off. Scanner.Reload swaps the
// whole set at once on a config reload; an invalid section changes nothing.
//
// The tool proxy uses it on upstream responses before they reach an agent,
// and Appender uses it on audit events before they reach the journal.
//
// The package refuses to guess: a detector with a checksum only matches when
// the checksum holds, and numbers that merely look long (timestamps, ids) are
// left alone. A JSON document is rewritten only when something was found;
// otherwise the caller gets its own bytes back.
//
// Caveats: detection is pattern-based; a secret in an unknown format, split
// across fields or encoded (base64, hex) is not found.
package dlp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/applianced/applianced/internal/conf"
)

// Built-in detector names, usable in Config.Disable.
const (
	Card          = "card"
	IBAN          = "iban"
	JWT           = "jwt"
	PrivateKey    = "private_key"
	AWSAccessKey  = "aws_access_key"
	APIKey        = "api_key"
	BearerToken   = "bearer_token"
	PasswordField = "password_field"
)

// Config is the [dlp] section of applianced.toml.
//
//	[dlp]
//	disable = ["iban"]
//
//	[[dlp.detector]]
//	name = "employee_id"
//	pattern = "\\bEMP-[0-9]{6}\\b"
type Config struct {
	// Disable lists built-in detectors to turn off.
	Disable []string `toml:"disable"`
	// Detectors are the site's own, added to the built-in ones.
	Detectors []DetectorConfig `toml:"detector"`
}

// DetectorConfig is one [[dlp.detector]].
type DetectorConfig struct {
	// Name appears in the replacement ("[REDACTED:name]") and in audit
	// records. Lowercase letters, digits and '_'.
	Name string `toml:"name"`
	// Pattern is an RE2 regular expression; every match is redacted.
	Pattern string `toml:"pattern"`
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// MaxPatternBytes bounds a site pattern.
const MaxPatternBytes = 1024

// Validate checks the section; keys are relative to [dlp].
func (c *Config) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	for i, d := range c.Disable {
		if !isBuiltin(d) {
			errs = append(errs, conf.Errf(fmt.Sprintf("disable[%d]", i), "%q is not a built-in detector (%s)", d, strings.Join(builtinNames, ", ")))
		}
	}
	seen := map[string]bool{}
	for i, d := range c.Detectors {
		key := fmt.Sprintf("detector[%d]", i)
		if !nameRE.MatchString(d.Name) {
			errs = append(errs, conf.Errf(key+".name", "%q: use lowercase letters, digits and '_' (at most 32)", d.Name))
		} else if isBuiltin(d.Name) || seen[d.Name] {
			errs = append(errs, conf.Errf(key+".name", "%q is already a detector", d.Name))
		}
		seen[d.Name] = true
		if _, err := compileSite(d.Pattern); err != nil {
			errs = append(errs, conf.Errf(key+".pattern", "%v", err))
		}
	}
	return errs
}

func compileSite(p string) (*regexp.Regexp, error) {
	if p == "" {
		return nil, errors.New("empty pattern")
	}
	if len(p) > MaxPatternBytes {
		return nil, fmt.Errorf("longer than %d bytes", MaxPatternBytes)
	}
	re, err := regexp.Compile(p)
	if err != nil {
		return nil, fmt.Errorf("not an RE2 regular expression: %w", err)
	}
	if re.MatchString("") {
		return nil, errors.New("pattern matches the empty string")
	}
	return re, nil
}

// detector finds spans to redact in s.
type detector struct {
	name string
	find func(s, lower string) [][2]int // lower: s ASCII-lowercased, same length
}

// Scanner finds and redacts. It is safe for concurrent use, also with
// Reload: each call sees one detector set, the old or the new.
type Scanner struct {
	set atomic.Pointer[detectorSet]
}

// detectorSet is one compiled [dlp] section.
type detectorSet struct {
	dets     []detector
	password bool // password-like JSON keys
	card     bool // JSON numbers that are card numbers

	// clean remembers short strings these detectors found nothing in: the
	// same few values (a tool's name, a method, "allow", a status) recur
	// in every audit event, and in many answers. It lives and dies with the
	// set, so a reload with new detectors starts with none.
	clean cleanMemory
}

const (
	cleanMaxLen     = 128  // longer strings are always scanned
	cleanMaxEntries = 4096 // slots of the memory (a power of two)
)

// cleanMemory is a direct-mapped table of strings: a string has one slot,
// picked by its hash, and a newer string for that slot replaces the older
// one, so memory is bounded and a lookup is one hash and one comparison.
// A slot holds the string itself, and a string is clean only if it is
// equal to the one in its slot, so a collision costs a rescan, never a
// wrong answer. The zero value remembers nothing.
type cleanMemory struct {
	seed  maphash.Seed
	slots []atomic.Pointer[string] // cleanMaxEntries, or nil
}

func newCleanMemory() cleanMemory {
	return cleanMemory{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[string], cleanMaxEntries)}
}

func (m *cleanMemory) slot(s string) *atomic.Pointer[string] {
	return &m.slots[maphash.String(m.seed, s)%cleanMaxEntries]
}

func (m *cleanMemory) has(s string) bool {
	if m.slots == nil {
		return false
	}
	p := m.slot(s).Load()
	return p != nil && *p == s
}

func (m *cleanMemory) add(s string) {
	if m.slots == nil {
		return
	}
	// A copy: s may be a slice of a large answer, which must not be kept.
	c := strings.Clone(s)
	m.slot(s).Store(&c)
}

// len is the number of strings remembered.
func (m *cleanMemory) len() int {
	n := 0
	for i := range m.slots {
		if m.slots[i].Load() != nil {
			n++
		}
	}
	return n
}

// isClean reports whether s was found clean before.
func (ds *detectorSet) isClean(s string) bool {
	if len(s) > cleanMaxLen {
		return false
	}
	return ds.clean.has(s)
}

// rememberClean records that s holds nothing these detectors find.
func (ds *detectorSet) rememberClean(s string) {
	if len(s) > cleanMaxLen {
		return
	}
	ds.clean.add(s)
}

var emptySet = &detectorSet{}

// New returns a scanner with the built-in detectors, minus cfg.Disable, plus
// cfg.Detectors.
func New(cfg Config) (*Scanner, error) {
	ds, err := compileSet(cfg)
	if err != nil {
		return nil, err
	}
	s := &Scanner{}
	s.set.Store(ds)
	return s, nil
}

// Reload swaps in the detector set of cfg (SIGHUP). Redactions in flight
// finish on the old set. An invalid cfg is refused and changes nothing.
func (s *Scanner) Reload(cfg Config) error {
	ds, err := compileSet(cfg)
	if err != nil {
		return err
	}
	s.set.Store(ds)
	return nil
}

// Detectors returns the names of the detectors in use, in scan order.
func (s *Scanner) Detectors() []string {
	ds := s.load()
	n := make([]string, len(ds.dets))
	for i, d := range ds.dets {
		n[i] = d.name
	}
	return n
}

func (s *Scanner) load() *detectorSet {
	if ds := s.set.Load(); ds != nil {
		return ds
	}
	return emptySet
}

func compileSet(cfg Config) (*detectorSet, error) {
	if errs := cfg.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("dlp: %w", errs[0])
	}
	off := map[string]bool{}
	for _, d := range cfg.Disable {
		off[d] = true
	}
	ds := &detectorSet{password: !off[PasswordField], card: !off[Card], clean: newCleanMemory()}
	for _, d := range builtins {
		if !off[d.name] {
			ds.dets = append(ds.dets, d)
		}
	}
	for _, dc := range cfg.Detectors {
		re, _ := compileSite(dc.Pattern)
		ds.dets = append(ds.dets, detector{name: dc.Name, find: reFinder(re, 0)})
	}
	return ds, nil
}

// Result says what a redaction found: detector name → number of matches.
// It never holds the matched values.
type Result map[string]int

// Found reports whether anything was found.
func (r Result) Found() bool { return len(r) > 0 }

// Names returns the detectors that matched, sorted.
func (r Result) Names() []string {
	n := make([]string, 0, len(r))
	for k := range r {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func replacement(name string) string { return "[REDACTED:" + name + "]" }

// RedactString returns s with every match replaced by "[REDACTED:name]".
func (s *Scanner) RedactString(in string) (string, Result) { return s.load().redactString(in) }

func (ds *detectorSet) redactString(in string) (string, Result) {
	if ds.isClean(in) {
		return in, nil
	}
	var spans []span
	lower := asciiLower(in)
	for _, d := range ds.dets {
		for _, m := range d.find(in, lower) {
			spans = append(spans, span{m[0], m[1], d.name})
		}
	}
	if len(spans) == 0 {
		ds.rememberClean(in)
		return in, nil
	}
	spans = mergeSpans(spans)
	res := Result{}
	var b strings.Builder
	last := 0
	for _, sp := range spans {
		b.WriteString(in[last:sp.start])
		b.WriteString(replacement(sp.name))
		res[sp.name]++
		last = sp.end
	}
	b.WriteString(in[last:])
	return b.String(), res
}

// RedactText redacts b as plain text. With nothing found it returns b itself.
func (s *Scanner) RedactText(b []byte) ([]byte, Result) { return s.load().redactText(b) }

func (ds *detectorSet) redactText(b []byte) ([]byte, Result) {
	out, res := ds.redactString(string(b))
	if !res.Found() {
		return b, nil
	}
	return []byte(out), res
}

// Redact redacts b according to its media type: JSON documents structurally
// (string values, numbers and password-like keys), anything else as text. A
// body that claims to be JSON but does not parse is treated as text. With
// nothing found it returns b itself.
func (s *Scanner) Redact(contentType string, b []byte) ([]byte, Result) {
	ds := s.load()
	if IsJSON(contentType) {
		if out, res, err := ds.redactJSON(b); err == nil {
			return out, res
		}
	}
	return ds.redactText(b)
}

// IsJSON reports whether the media type is JSON (application/json or
// anything +json).
func IsJSON(contentType string) bool {
	mt, _, _ := strings.Cut(strings.ToLower(contentType), ";")
	mt = strings.TrimSpace(mt)
	return mt == "application/json" || strings.HasSuffix(mt, "+json") || mt == "application/x-ndjson"
}

// IsText reports whether a response of this media type is scanned: text/*,
// JSON, XML, form data, or no type at all.
func IsText(contentType string) bool {
	mt, _, _ := strings.Cut(strings.ToLower(contentType), ";")
	mt = strings.TrimSpace(mt)
	switch {
	case mt == "", strings.HasPrefix(mt, "text/"), IsJSON(mt),
		mt == "application/xml", strings.HasSuffix(mt, "+xml"),
		mt == "application/x-www-form-urlencoded", mt == "application/javascript",
		mt == "application/yaml", mt == "application/x-yaml":
		return true
	}
	return false
}

// RedactJSON rewrites a JSON document (or a sequence of them) with every
// sensitive string or number replaced by a "[REDACTED:name]" string and the
// value of every password-like key replaced whole. Key order is kept; when
// something is found the output is compact. With nothing found it returns b
// itself. An error means b is not JSON.
func (s *Scanner) RedactJSON(b []byte) ([]byte, Result, error) { return s.load().redactJSON(b) }

func (ds *detectorSet) redactJSON(b []byte) ([]byte, Result, error) {
	// Fast path: a document without \u or \/ escapes in which a plain text
	// scan finds nothing has nothing a structural scan would find either
	// (every string, number and "key": value pair is visible as text).
	if !bytes.Contains(b, []byte(`\u`)) && !bytes.Contains(b, []byte(`\/`)) {
		if _, res := ds.redactText(b); !res.Found() {
			if !json.Valid(b) && !validJSONSeq(b) {
				return nil, nil, errors.New("dlp: not JSON")
			}
			return b, nil, nil
		}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	type frame struct {
		obj     bool
		n       int
		wantKey bool
	}
	var (
		out       bytes.Buffer
		stack     []frame
		res       = Result{}
		sensitive bool
		topCount  int
	)
	out.Grow(len(b))
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	writeString := func(v string) {
		_ = enc.Encode(v)
		out.Truncate(out.Len() - 1) // Encode appends '\n'
	}
	beforeValue := func() {
		if len(stack) == 0 {
			if topCount > 0 {
				out.WriteByte('\n')
			}
			topCount++
			return
		}
		f := &stack[len(stack)-1]
		if !f.obj {
			if f.n > 0 {
				out.WriteByte(',')
			}
			f.n++
		}
	}
	afterValue := func() {
		sensitive = false
		if len(stack) > 0 && stack[len(stack)-1].obj {
			stack[len(stack)-1].wantKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("dlp: not JSON: %w", err)
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			out.WriteByte(byte(d))
			stack = stack[:len(stack)-1]
			afterValue()
			continue
		}
		if str, ok := tok.(string); ok && len(stack) > 0 && stack[len(stack)-1].obj && stack[len(stack)-1].wantKey {
			f := &stack[len(stack)-1]
			if f.n > 0 {
				out.WriteByte(',')
			}
			f.n++
			f.wantKey = false
			writeString(str)
			out.WriteByte(':')
			sensitive = ds.password && passwordKey(str)
			continue
		}
		beforeValue()
		switch t := tok.(type) {
		case json.Delim:
			out.WriteByte(byte(t))
			stack = append(stack, frame{obj: t == '{', wantKey: t == '{'})
			sensitive = false
			continue
		case string:
			if sensitive && t != "" {
				writeString(replacement(PasswordField))
				res[PasswordField]++
			} else {
				r, found := ds.redactString(t)
				for k, v := range found {
					res[k] += v
				}
				writeString(r)
			}
		case json.Number:
			switch {
			case sensitive:
				writeString(replacement(PasswordField))
				res[PasswordField]++
			case ds.card && isCardNumber(string(t)):
				writeString(replacement(Card))
				res[Card]++
			default:
				out.WriteString(string(t))
			}
		case bool:
			if t {
				out.WriteString("true")
			} else {
				out.WriteString("false")
			}
		case nil:
			out.WriteString("null")
		}
		afterValue()
	}
	if !res.Found() {
		return b, nil, nil
	}
	return out.Bytes(), res, nil
}

type span struct {
	start, end int
	name       string
}

// mergeSpans sorts spans and merges overlapping ones; the first (longest
// at a start) detector names the merged span.
func mergeSpans(sp []span) []span {
	sort.Slice(sp, func(i, j int) bool {
		if sp[i].start != sp[j].start {
			return sp[i].start < sp[j].start
		}
		return sp[i].end > sp[j].end
	})
	out := sp[:1]
	for _, x := range sp[1:] {
		last := &out[len(out)-1]
		if x.start < last.end {
			if x.end > last.end {
				last.end = x.end
			}
			continue
		}
		out = append(out, x)
	}
	return out
}

// asciiLower lowercases ASCII letters only, so offsets stay valid.
func asciiLower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// validJSONSeq reports whether b is a sequence of JSON values (NDJSON).
func validJSONSeq(b []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	for {
		var v json.RawMessage
		err := dec.Decode(&v)
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
}
