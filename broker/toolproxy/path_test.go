package toolproxy

import (
	"net/url"
	"path"
	"slices"
	"strings"
	"testing"
)

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		pat, path string
		want      bool
	}{
		{"/tickets/*", "/tickets/1", true},
		{"/tickets/*", "/tickets/1/comments", false},
		{"/tickets/*", "/tickets", false},
		{"/tickets/*", "/tickets/", false},
		{"/tickets/**", "/tickets", true},
		{"/tickets/**", "/tickets/1/comments", true},
		{"/tickets", "/tickets", true},
		{"/tickets", "/tickets/", false},
		{"/tickets/", "/tickets/", true},
		{"/", "/", true},
		{"/**", "/anything/at/all", true},
		{"/a/*/c", "/a/b/c", true},
		{"/a/*/c", "/a/b/d", false},
	}
	for _, tt := range tests {
		t.Run(tt.pat+" "+tt.path, func(t *testing.T) {
			pt, err := compilePattern(tt.pat)
			if err != nil {
				t.Fatal(err)
			}
			tp, err := parseToolPath("tool" + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := pt.match(tp.segments); got != tt.want {
				t.Errorf("got %v, want %v (segments %q)", got, tt.want, tp.segments)
			}
		})
	}
}

// FuzzParseToolPath checks the normaliser's promise: whatever it accepts
// stays under the tool's prefix however the upstream reads it, and reads
// back the same.
func FuzzParseToolPath(f *testing.F) {
	for _, s := range []string{
		"tickets/a/b", "tickets/../x", "tickets/%2e%2e/x", "tickets/a%2fb", "tickets//x", "tickets/a/",
		"tickets/%252e%252e", "tickets/..;/x", "tickets/caf%C3%A9", "tickets/a%00b", "tickets/.%2E", "tickets/a%5cb",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		tp, err := parseToolPath(in)
		if err != nil {
			return
		}
		for _, s := range tp.segments {
			if s == "." || s == ".." || strings.ContainsAny(s, "/\\\x00\r\n") {
				t.Fatalf("accepted segment %q from %q", s, in)
			}
		}
		esc := tp.escaped()
		// Decoded once or twice, cleaned, it stays under /api.
		for _, p := range []string{esc, mustUnescape(esc), mustUnescape(mustUnescape(esc))} {
			if c := path.Clean("/api" + p); c != "/api" && !strings.HasPrefix(c, "/api/") {
				t.Fatalf("%q leaves the prefix as %q", in, c)
			}
		}
		again, err := parseToolPath(tp.tool + esc)
		if err != nil || !slices.Equal(again.segments, tp.segments) {
			t.Fatalf("%q: re-parsing %q gave %q, %v", in, esc, again.segments, err)
		}
	})
}

func mustUnescape(s string) string {
	u, err := url.PathUnescape(s)
	if err != nil {
		return s
	}
	return u
}

func TestIsToolNameMatchesRE(t *testing.T) {
	alphabet := []string{"a", "z", "0", "9", "_", "-", "A", ".", "/", " ", "\n", "é", "\x00", "{", "`", "@", ":"}
	check := func(s string) {
		if got, want := isToolName(s), toolNameRE.MatchString(s); got != want {
			t.Fatalf("isToolName(%q) = %v, toolNameRE says %v", s, got, want)
		}
	}
	for _, s := range []string{"", "tickets", "t", "-t", "_t", "t-", "t_", "Tickets", "tickets\n",
		strings.Repeat("a", 62), strings.Repeat("a", 63), strings.Repeat("a", 64), "a" + strings.Repeat("-", 62)} {
		check(s)
	}
	var rec func(prefix string, depth int)
	rec = func(prefix string, depth int) {
		check(prefix)
		if depth == 0 {
			return
		}
		for _, a := range alphabet {
			rec(prefix+a, depth-1)
		}
	}
	rec("", 3)
}
