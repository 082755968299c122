package dlp

import (
	"regexp"
	"strings"
)

var builtins = []detector{
	{name: PrivateKey, find: reFinder(regexp.MustCompile(
		`-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\z)`), 0)},
	{name: JWT, find: triggered(false, []string{"eyJ"}, false, regexp.MustCompile(
		`^eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*`), 0)},
	{name: AWSAccessKey, find: triggered(false, []string{"AKIA", "ASIA", "ABIA", "ACCA", "AIDA", "AROA", "AGPA", "ANPA", "ANVA", "APKA", "AIPA"}, false,
		regexp.MustCompile(`^[A-Z]{4}[0-9A-Z]{16}\b`), 0)},
	{name: APIKey, find: triggered(false, []string{"ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "AIza", "sk-", "hf_", "npm_"}, false,
		regexp.MustCompile(`^(?:`+
			`gh[pousr]_[A-Za-z0-9]{36,255}|`+ // GitHub
			`github_pat_[A-Za-z0-9_]{22,255}|`+
			`glpat-[A-Za-z0-9_-]{20,}|`+ // GitLab
			`xox[abposr]-[A-Za-z0-9-]{10,}|`+ // Slack
			`(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|`+ // Stripe
			`AIza[0-9A-Za-z_-]{35}|`+ // Google
			`sk-(?:proj-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{20,}|`+ // OpenAI, Anthropic
			`hf_[A-Za-z0-9]{30,}|`+ // Hugging Face
			`npm_[A-Za-z0-9]{36}`+ // npm
			`)`), 0)},
	{name: BearerToken, find: triggered(true, []string{"bearer"}, false, regexp.MustCompile(
		`^(?i)bearer\s+([A-Za-z0-9._~+/-]{20,}=*)`), 1)},
	{name: PasswordField, find: triggered(true, []string{"pass", "pwd", "secret", "key", "token"}, true, regexp.MustCompile(
		`^(?i)["']?(?:[a-z0-9]+[_-])*(?:password|passwd|pwd|passphrase|secret|client_secret|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token|session[_-]?token|private[_-]?key|secret[_-]?key|secret[_-]?access[_-]?key)["']?\s*[:=]\s*`+
			`("(?:[^"\\]|\\.)+"|'[^']+'|[^\s,;&"'}<]+)`), 1)},
	{name: Card, find: findCards},
	{name: IBAN, find: findIBANs},
}
var builtinNames = func() []string {
	n := make([]string, len(builtins))
	for i, d := range builtins {
		n[i] = d.name
	}
	return n
}()

func isBuiltin(name string) bool {
	for _, n := range builtinNames {
		if n == name {
			return true
		}
	}
	return false
}

// reFinder redacts submatch group of every match (0: the whole match).
func reFinder(re *regexp.Regexp, group int) func(s, lower string) [][2]int {
	return func(s, _ string) [][2]int {
		var out [][2]int
		for _, m := range re.FindAllStringSubmatchIndex(s, -1) {
			a, b := m[2*group], m[2*group+1]
			if a >= 0 && b > a {
				out = append(out, [2]int{a, b})
			}
		}
		return out
	}
}

// triggered finds the literal triggers (in the ASCII-lowered text when
// fold) and runs the anchored regexp re at each one that starts a word, or,
// with back, at the start of the identifier the trigger is part of. It keeps
// the regexp engine off the bulk of a body, which holds no trigger.
func triggered(fold bool, triggers []string, back bool, re *regexp.Regexp, group int) func(s, lower string) [][2]int {
	return func(s, lower string) [][2]int {
		hay := s
		if fold {
			hay = lower
		}
		var out [][2]int
		next := 0 // matches may not overlap
		for _, tr := range triggers {
			for off := 0; ; {
				i := strings.Index(hay[off:], tr)
				if i < 0 {
					break
				}
				at := off + i
				off = at + len(tr)
				start := at
				if back {
					for start > 0 && (isWordByte(s[start-1]) || s[start-1] == '-') {
						start--
					}
					if start > 0 && (s[start-1] == '"' || s[start-1] == '\'') {
						start--
					}
				} else if start > 0 && isWordByte(s[start-1]) {
					continue
				}
				if start < next && len(triggers) == 1 {
					continue
				}
				m := re.FindStringSubmatchIndex(s[start:])
				if m == nil || m[2*group] < 0 || m[2*group+1] <= m[2*group] {
					continue
				}
				out = append(out, [2]int{start + m[2*group], start + m[2*group+1]})
				next = start + m[1]
				if back && next > off {
					off = next
				}
			}
		}
		return out
	}
}

// passwordKeyRE matches JSON keys whose value is a credential.
var passwordKeyRE = regexp.MustCompile(`(?i)^(?:[a-z0-9]+[_-])*(?:password|passwd|pwd|passphrase|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token|session[_-]?token|bearer[_-]?token|private[_-]?key|secret[_-]?key|secret[_-]?access[_-]?key|credentials?)$`)

func passwordKey(k string) bool { return len(k) <= 64 && passwordKeyRE.MatchString(k) }

// --- payment cards ---

func isWordByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// findCards finds runs of 13–19 digits, optionally grouped by single spaces
// or dashes, that stand alone (no letter, digit or decimal point glued to
// them) and pass isCardNumber.
func findCards(s, _ string) [][2]int {
	var out [][2]int
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			continue
		}
		a := i
		n := 0
		j := i
		for j < len(s) {
			if isDigit(s[j]) {
				n++
				j++
				continue
			}
			if (s[j] == ' ' || s[j] == '-') && j+1 < len(s) && isDigit(s[j+1]) && n < 19 {
				j++
				continue
			}
			break
		}
		i = j // the run is consumed either way
		if n < 13 || n > 19 {
			continue
		}
		if a > 0 && (isWordByte(s[a-1]) || s[a-1] == '.' || s[a-1] == '-') {
			continue
		}
		if j < len(s) && (isWordByte(s[j]) || (s[j] == '.' || s[j] == ',') && j+1 < len(s) && isDigit(s[j+1])) {
			continue
		}
		if isCardNumber(s[a:j]) {
			out = append(out, [2]int{a, j})
		}
	}
	return out
}

// isCardNumber reports whether s (digits, optionally separated by single
// spaces or dashes) is 13–19 digits with a known issuer prefix and a valid
// Luhn check digit.
func isCardNumber(s string) bool {
	d := make([]byte, 0, 19)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			d = append(d, c)
		case c == ' ' || c == '-':
		default:
			return false
		}
		if len(d) > 19 {
			return false
		}
	}
	if len(d) < 13 || !cardPrefix(d) {
		return false
	}
	return luhn(d)
}

func cardPrefix(d []byte) bool {
	n := len(d)
	p := func(k int) int { // first k digits as a number
		v := 0
		for _, c := range d[:k] {
			v = v*10 + int(c-'0')
		}
		return v
	}
	switch {
	case d[0] == '4': // Visa
		return n == 13 || n == 16 || n == 19
	case p(2) >= 51 && p(2) <= 55, p(4) >= 2221 && p(4) <= 2720: // Mastercard
		return n == 16
	case p(2) == 34 || p(2) == 37: // American Express
		return n == 15
	case p(4) == 6011, p(2) == 65, p(3) >= 644 && p(3) <= 649: // Discover
		return n >= 16
	case p(4) >= 3528 && p(4) <= 3589: // JCB
		return n >= 16
	case p(3) >= 300 && p(3) <= 305, p(2) == 36, p(2) == 38, p(2) == 39: // Diners
		return n >= 14
	case p(2) == 62: // UnionPay
		return n >= 16
	case p(2) == 50, p(2) >= 56 && p(2) <= 58, p(2) == 67: // Maestro
		return n >= 13
	}
	return false
}

func luhn(d []byte) bool {
	sum := 0
	double := false
	for i := len(d) - 1; i >= 0; i-- {
		v := int(d[i] - '0')
		if double {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
		double = !double
	}
	return sum%10 == 0
}

// --- IBAN ---

// ibanLengths is the IBAN length per country (ISO 13616 registry).
var ibanLengths = map[string]int{
	"AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
	"BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
	"ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
	"HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
	"LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
	"MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
	"RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
	"TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}

func isAlnumUpper(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' }

func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }

func findIBANs(s, _ string) [][2]int {
	var out [][2]int
	for a := 0; a+4 <= len(s); a++ {
		if !isUpper(s[a]) || !isUpper(s[a+1]) || !isDigit(s[a+2]) || !isDigit(s[a+3]) {
			continue
		}
		if a > 0 && isWordByte(s[a-1]) {
			continue
		}
		want, ok := ibanLengths[s[a:a+2]]
		if !ok {
			continue
		}
		// Collect want characters, allowing single spaces between groups.
		buf := make([]byte, 0, want)
		i := a
		for i < len(s) && len(buf) < want {
			c := s[i]
			if isAlnumUpper(c) {
				buf = append(buf, c)
				i++
				continue
			}
			if c == ' ' && i+1 < len(s) && isAlnumUpper(s[i+1]) && len(buf) > 0 {
				i++
				continue
			}
			break
		}
		if len(buf) != want || (i < len(s) && isWordByte(s[i])) {
			continue
		}
		if ibanMod97(buf) {
			out = append(out, [2]int{a, i})
			a = i - 1
		}
	}
	return out
}

// ibanMod97 checks an IBAN (no spaces): move the first four characters to
// the end, letters become 10..35, and the number mod 97 must be 1.
func ibanMod97(iban []byte) bool {
	r := 0
	add := func(c byte) {
		if c >= 'A' && c <= 'Z' {
			v := int(c-'A') + 10
			r = (r*100 + v) % 97
			return
		}
		r = (r*10 + int(c-'0')) % 97
	}
	for _, c := range iban[4:] {
		add(c)
	}
	for _, c := range iban[:4] {
		add(c)
	}
	return r == 1
}
