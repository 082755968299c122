package vault

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Type is the kind of a secret, which fixes the shape of its value: what
// `secret put` accepts and what ForTool hands out.
type Type uint8

// The secret types. Structured types (basic, oauth2_client, tls_client) are
// written as a JSON object; the others are the raw value.
const (
	TypePassword     Type = 1 // a password: printable text, no control characters
	TypeAPIKey       Type = 2 // an API key or token: printable text, no control characters
	TypeBasic        Type = 3 // {"user": ..., "password": ...}; handed out as "user:password"
	TypeOAuth2Client Type = 4 // {"client_id", "client_secret", "token_url", "scopes": [...], "audience"}; handed out as that JSON
	TypeTLSClient    Type = 5 // {"cert": PEM, "key": PEM}; handed out as the certificate PEM then the key PEM
	TypeOpaque       Type = 6 // any bytes

	typeSystem Type = 0x80 // a system key; never accepted from a caller
)

var typeNames = map[Type]string{
	TypePassword:     "password",
	TypeAPIKey:       "api_key",
	TypeBasic:        "basic",
	TypeOAuth2Client: "oauth2_client",
	TypeTLSClient:    "tls_client",
	TypeOpaque:       "opaque",
	typeSystem:       "system",
}

// String returns the type's name as the CLI and the config write it.
func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// valid reports whether t is a type a caller may store.
func (t Type) valid() bool { return t >= TypePassword && t <= TypeOpaque }

// ParseType returns the type named s ("password", "api_key", "basic",
// "oauth2_client", "tls_client", "opaque").
func ParseType(s string) (Type, error) {
	for t, n := range typeNames {
		if n == s && t.valid() {
			return t, nil
		}
	}
	return 0, fmt.Errorf("vault: %w: unknown secret type %q: want password, api_key, basic, oauth2_client, tls_client or opaque", ErrInvalid, s)
}

// MarshalText writes the type's name.
func (t Type) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText parses a type's name.
func (t *Type) UnmarshalText(b []byte) error {
	v, err := ParseType(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// MaxValueSize bounds a secret's value (and a system key) in bytes.
const MaxValueSize = 64 << 10

// maxNameLen bounds a secret's, a system key's or a tool's name.
const maxNameLen = 128

// CheckName says why s cannot name a secret, or nil: the CLI checks a name
// before it reads the value.
func CheckName(s string) error { return checkName(s) }

// checkName accepts 1 to 128 of [A-Za-z0-9._:@-], starting with a letter
// or a digit. Slashes, spaces and control characters are refused.
func checkName(s string) error {
	if s == "" {
		return errors.New("empty name")
	}
	if len(s) > maxNameLen {
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-' || c == ':' || c == '@'):
		default:
			return fmt.Errorf("name %q has %q at byte %d: use letters, digits and . _ - : @ (starting with a letter or digit)",
				strings.ToValidUTF8(s, "?"), rune(c), i)
		}
	}
	return nil
}

// Basic is the value of a basic secret.
type Basic struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

// OAuth2Client is the value of an oauth2_client secret: client credentials
// for an upstream token endpoint.
type OAuth2Client struct {
	ClientID     string   `json:"client_id"`
	ClientSecret string   `json:"client_secret"`
	TokenURL     string   `json:"token_url"`
	Scopes       []string `json:"scopes,omitempty"`
	Audience     string   `json:"audience,omitempty"` // sent as the "audience" parameter when set
}

// TLSClient is the value of a tls_client secret: PEM certificate (chain)
// and PEM private key.
type TLSClient struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// normalize checks a value for typ and returns the bytes to store, which
// are the form ForTool hands out: the raw value for password, api_key and
// opaque; "user:password" for basic; canonical JSON for oauth2_client; the
// certificate PEM, a newline and the key PEM for tls_client. The returned
// slice is always new memory, which the caller clears.
func normalize(typ Type, in []byte) ([]byte, error) {
	if len(in) == 0 {
		return nil, fmt.Errorf("vault: %w: empty value", ErrInvalid)
	}
	if len(in) > MaxValueSize {
		return nil, fmt.Errorf("vault: %w: value of %d bytes is over the limit of %d", ErrInvalid, len(in), MaxValueSize)
	}
	switch typ {
	case TypePassword, TypeAPIKey:
		if i := bytes.IndexFunc(in, func(r rune) bool { return r < 0x20 || r == 0x7f }); i >= 0 {
			return nil, fmt.Errorf("vault: %w: a %s must not contain control characters (byte %d; a trailing newline?)", ErrInvalid, typ, i)
		}
		return bytes.Clone(in), nil
	case TypeOpaque:
		return bytes.Clone(in), nil
	case TypeBasic:
		var v Basic
		if err := strictJSON(in, &v); err != nil {
			return nil, fmt.Errorf("vault: %w: basic value: %v", ErrInvalid, err)
		}
		if err := missing("user", v.User, "password", v.Password); err != nil {
			return nil, fmt.Errorf("vault: %w: basic value: %v", ErrInvalid, err)
		}
		if strings.ContainsRune(v.User, ':') || hasControl(v.User) || hasControl(v.Password) {
			return nil, fmt.Errorf("vault: %w: basic value: user must not contain a colon, and neither field control characters", ErrInvalid)
		}
		out := make([]byte, 0, len(v.User)+1+len(v.Password))
		return append(append(append(out, v.User...), ':'), v.Password...), nil
	case TypeOAuth2Client:
		var v OAuth2Client
		if err := strictJSON(in, &v); err != nil {
			return nil, fmt.Errorf("vault: %w: oauth2_client value: %v", ErrInvalid, err)
		}
		if err := missing("client_id", v.ClientID, "client_secret", v.ClientSecret, "token_url", v.TokenURL); err != nil {
			return nil, fmt.Errorf("vault: %w: oauth2_client value: %v", ErrInvalid, err)
		}
		u, err := url.Parse(v.TokenURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("vault: %w: oauth2_client value: token_url must be an absolute http(s) URL", ErrInvalid)
		}
		for i, s := range v.Scopes {
			if s == "" || strings.ContainsAny(s, " \t\r\n\"\\") {
				return nil, fmt.Errorf("vault: %w: oauth2_client value: scopes[%d] is empty or has a space, quote or backslash", ErrInvalid, i)
			}
		}
		return json.Marshal(v)
	case TypeTLSClient:
		var v TLSClient
		if err := strictJSON(in, &v); err != nil {
			return nil, fmt.Errorf("vault: %w: tls_client value: %v", ErrInvalid, err)
		}
		if err := missing("cert", v.Cert, "key", v.Key); err != nil {
			return nil, fmt.Errorf("vault: %w: tls_client value: %v", ErrInvalid, err)
		}
		out := make([]byte, 0, len(v.Cert)+1+len(v.Key))
		out = append(append(append(out, strings.TrimRight(v.Cert, "\n")...), '\n'), v.Key...)
		if _, err := tls.X509KeyPair(out, out); err != nil {
			clear(out)
			return nil, fmt.Errorf("vault: %w: tls_client value: cert and key do not make a key pair: %v", ErrInvalid, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("vault: %w: unknown secret type %s", ErrInvalid, typ)
}

// strictJSON decodes exactly one JSON object with no unknown fields. Its
// errors never quote the input.
func strictJSON(in []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var ute *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &ute):
			return fmt.Errorf("field %q has the wrong JSON type", ute.Field)
		case errors.As(err, &se):
			return fmt.Errorf("not a JSON object (syntax error at byte %d)", se.Offset)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return errors.New(strings.TrimPrefix(err.Error(), "json: "))
		}
		return errors.New("not a JSON object")
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// missing names the first empty required field of name/value pairs.
func missing(kv ...string) error {
	var names []string
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			names = append(names, kv[i])
		}
	}
	if len(names) > 0 {
		return fmt.Errorf("missing or empty field(s): %s", strings.Join(names, ", "))
	}
	return nil
}

// value is a decrypted secret, only inside the package.
type value struct {
	Name    string
	Type    Type
	Version uint64
	b       []byte
}

// zero overwrites the plaintext.
func (v value) zero() { clear(v.b) }

// hasControl reports whether s has an ASCII control character.
func hasControl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0
}
