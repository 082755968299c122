package ldapauth

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/go-ldap/ldap/v3"
)

// MaxNameLen is the longest login name accepted, in bytes.
const MaxNameLen = 256

// MaxPasswordLen is the longest password sent to the directory, in bytes.
const MaxPasswordLen = 1024

var errBadName = errors.New("ldapauth: invalid login name")

// loginName is a parsed login name.
type loginName struct {
	// value is what the login attributes are compared with: the name as
	// typed, without a "DOMAIN\" prefix. Not escaped.
	value string
	// domain is the NetBIOS prefix of "DOMAIN\user", or "".
	domain string
	// key is the rate-limiting key: the lowercased account part (before any
	// "@"), so that "alice", "CORP\alice" and "alice@corp.example" share
	// one failure counter.
	key string
}

// parseLoginName accepts "alice", "alice@corp.example" and "CORP\alice".
// It refuses empty, overlong, non-UTF-8 names, control characters, leading or
// trailing space, and characters AD forbids in account names where the form
// makes them meaningless. It never escapes: filters are escaped once, in
// userFilter.
func parseLoginName(s string, netbios string) (loginName, error) {
	if s == "" {
		return loginName{}, fmt.Errorf("%w: empty", errBadName)
	}
	if len(s) > MaxNameLen {
		return loginName{}, fmt.Errorf("%w: longer than %d bytes", errBadName, MaxNameLen)
	}
	if !utf8.ValidString(s) {
		return loginName{}, fmt.Errorf("%w: not UTF-8", errBadName)
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return loginName{}, fmt.Errorf("%w: control character", errBadName)
		}
	}
	if strings.TrimSpace(s) != s {
		return loginName{}, fmt.Errorf("%w: leading or trailing space", errBadName)
	}
	n := loginName{value: s}
	if dom, user, ok := strings.Cut(s, `\`); ok {
		if dom == "" || user == "" {
			return loginName{}, fmt.Errorf("%w: want DOMAIN\\user", errBadName)
		}
		for _, r := range dom {
			if !(r < utf8.RuneSelf && (r == '-' || r == '.' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r))) {
				return loginName{}, fmt.Errorf("%w: domain %q", errBadName, dom)
			}
		}
		if netbios != "" && !strings.EqualFold(dom, netbios) {
			return loginName{}, fmt.Errorf("%w: domain %q is not %s", errBadName, dom, netbios)
		}
		if strings.ContainsAny(user, `\@`) {
			return loginName{}, fmt.Errorf("%w: want DOMAIN\\user", errBadName)
		}
		n.value, n.domain = user, dom
	} else if at := strings.LastIndexByte(s, '@'); at >= 0 {
		if at == 0 || at == len(s)-1 || strings.Count(s, "@") != 1 {
			return loginName{}, fmt.Errorf("%w: want user@domain", errBadName)
		}
	}
	local, _, _ := strings.Cut(n.value, "@")
	n.key = strings.ToLower(local)
	return n, nil
}

// userFilter builds the user search filter: the configured clause AND any
// login attribute equal to the name. This is the one place the name is
// escaped.
func userFilter(extra string, attrs []string, n loginName) string {
	v := ldap.EscapeFilter(n.value)
	var b strings.Builder
	b.WriteString("(&")
	b.WriteString(extra)
	if len(attrs) > 1 {
		b.WriteString("(|")
	}
	for _, a := range attrs {
		b.WriteString("(" + a + "=" + v + ")")
	}
	if len(attrs) > 1 {
		b.WriteString(")")
	}
	b.WriteString(")")
	return b.String()
}

// escapeBytes hex-escapes every byte of a binary value (a SID) for a filter.
func escapeBytes(b []byte) string {
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 3*len(b))
	for _, c := range b {
		out = append(out, '\\', hex[c>>4], hex[c&0xf])
	}
	return string(out)
}
