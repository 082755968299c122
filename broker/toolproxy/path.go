package toolproxy

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Limits on what an agent may send.
const (
	MaxPathBytes    = 2048 // escaped path below /v1/tools/
	MaxPathSegments = 64
	MaxQueryBytes   = 4096
	MaxHeaderCount  = 64
)

// ErrBadPath is returned for a path the proxy refuses to forward.
var ErrBadPath = errors.New("toolproxy: path refused")

// toolPath is a request path split into the tool's name and the clean,
// decoded segments below it.
type toolPath struct {
	tool     string
	segments []string // decoded; none empty except a trailing "" for a trailing slash
}

// escaped returns the segments re-escaped and joined, starting with "/".
func (p toolPath) escaped() string {
	var b strings.Builder
	for _, s := range p.segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	if b.Len() == 0 {
		return "/"
	}
	return b.String()
}

// decoded returns the segments joined, starting with "/", for audit and
// approval binding.
func (p toolPath) decoded() string {
	if len(p.segments) == 0 {
		return "/"
	}
	return "/" + strings.Join(p.segments, "/")
}

func badPath(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadPath, fmt.Sprintf(format, args...))
}

// parseToolPath takes the escaped path after the "/v1/tools/" prefix
// ("tickets/t/1") and returns the tool and its segments, refusing anything
// that could address something outside the route's prefix or be read
// differently by the upstream: dot segments (plain or encoded), encoded
// slashes and backslashes, empty segments ("//"), control characters,
// double-encoded dots or slashes, and overlong input.
func parseToolPath(escaped string) (toolPath, error) {
	if len(escaped) > MaxPathBytes {
		return toolPath{}, badPath("longer than %d bytes", MaxPathBytes)
	}
	for i := 0; i < len(escaped); i++ {
		if c := escaped[i]; c <= 0x20 || c >= 0x7f {
			return toolPath{}, badPath("unescaped space, control or non-ASCII byte")
		}
	}
	raw := strings.Split(escaped, "/")
	if len(raw) > MaxPathSegments+1 {
		return toolPath{}, badPath("more than %d segments", MaxPathSegments)
	}
	p := toolPath{tool: raw[0]}
	if !isToolName(p.tool) {
		return toolPath{}, badPath("no valid tool name")
	}
	rest := raw[1:]
	for i, s := range rest {
		if s == "" {
			if i == len(rest)-1 && i > 0 {
				p.segments = append(p.segments, "")
				continue
			}
			if i == 0 && len(rest) == 1 {
				continue // "tickets/" is the tool's root
			}
			return toolPath{}, badPath("empty segment (\"//\")")
		}
		d, err := url.PathUnescape(s)
		if err != nil {
			return toolPath{}, badPath("bad escape in segment %d", i)
		}
		if err := checkSegment(d); err != nil {
			return toolPath{}, err
		}
		p.segments = append(p.segments, d)
	}
	if len(p.tool)+len(p.escaped()) > MaxPathBytes {
		return toolPath{}, badPath("longer than %d bytes once escaped", MaxPathBytes)
	}
	return p, nil
}

// isToolName reports whether s matches toolNameRE, without the regexp
// engine: a lowercase letter or digit, then at most 62 of those, '_' or '-'.
func isToolName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '_' || c == '-') {
			continue
		}
		return false
	}
	return true
}

func checkSegment(d string) error {
	for i := 0; i < len(d); i++ {
		c := d[i]
		if c < 0x20 || c == 0x7f {
			return badPath("control character in segment")
		}
		if c == '/' || c == '\\' {
			return badPath("encoded slash or backslash in segment")
		}
	}
	// "..", ".", "...", and "..;x" (servlet path parameters) are dot segments
	// to some upstream.
	head, _, _ := strings.Cut(d, ";")
	if strings.Trim(head, ".") == "" {
		return badPath("dot segment")
	}
	// A second decoding by a careless upstream must not yield one either.
	l := strings.ToLower(d)
	for _, enc := range []string{"%2e", "%2f", "%5c", "%00", "%25"} {
		if strings.Contains(l, enc) {
			return badPath("double-encoded character in segment")
		}
	}
	return nil
}

// pattern is a compiled route path.
type pattern struct {
	segs []string // "*" one segment, "**" (last only) the rest
}

func compilePattern(s string) (pattern, error) {
	if !strings.HasPrefix(s, "/") {
		return pattern{}, fmt.Errorf("%q must start with \"/\"", s)
	}
	if len(s) > MaxPathBytes {
		return pattern{}, fmt.Errorf("longer than %d bytes", MaxPathBytes)
	}
	if s == "/" {
		return pattern{}, nil
	}
	parts := strings.Split(s[1:], "/")
	for i, seg := range parts {
		switch {
		case seg == "**":
			if i != len(parts)-1 {
				return pattern{}, fmt.Errorf("%q: \"**\" may only be the last segment", s)
			}
		case seg == "":
			if i != len(parts)-1 {
				return pattern{}, fmt.Errorf("%q has an empty segment", s)
			}
		case seg == "*":
		case strings.Contains(seg, "*"):
			return pattern{}, fmt.Errorf("%q: \"*\" must be a whole segment", s)
		default:
			if err := checkSegment(seg); err != nil {
				return pattern{}, fmt.Errorf("%q: %v", s, err)
			}
		}
	}
	return pattern{segs: parts}, nil
}

func (pt pattern) match(segs []string) bool {
	for i, ps := range pt.segs {
		if ps == "**" {
			return true
		}
		if i >= len(segs) {
			return false
		}
		if ps == "*" {
			if segs[i] == "" {
				return false
			}
			continue
		}
		if ps != segs[i] {
			return false
		}
	}
	return len(segs) == len(pt.segs)
}

// redactQuery keeps a query's parameter names and replaces every value, for
// audit records.
func redactQuery(q url.Values) string {
	if len(q) == 0 {
		return ""
	}
	r := url.Values{}
	for k, vs := range q {
		for range vs {
			r.Add(k, "REDACTED")
		}
	}
	return r.Encode()
}
