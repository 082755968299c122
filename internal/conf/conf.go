// Package conf holds the small value types and the error shape shared by every
// section of applianced.toml: durations and byte sizes written as strings, and
// field errors that name the key they are about so the config loader can add
// the file and line.
//
// It owns no section of the file; each domain package declares its own
// section struct (with `toml` tags) and a Validate method returning
// []*conf.FieldError. The loader in internal/config composes them.
package conf

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// FieldError is a problem with one key of the config file. Key is the dotted
// path from the section's root as written in the file, with array-of-table
// indices in brackets: "ldap.urls", "agent[2].roles", "tool[0].route[1].path".
type FieldError struct {
	Key string
	Msg string
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Msg }

// Errf builds a FieldError for key.
func Errf(key, format string, args ...any) *FieldError {
	return &FieldError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Join prefixes each error's key with prefix (as "prefix.key"), for a section
// validating a nested struct.
func Join(prefix string, errs []*FieldError) []*FieldError {
	for _, e := range errs {
		if e.Key == "" {
			e.Key = prefix
		} else {
			e.Key = prefix + "." + e.Key
		}
	}
	return errs
}

// ValueError is a value that does not parse as its type. Value is the text
// the parser was given.
type ValueError struct {
	Value string
	Msg   string
}

func (e *ValueError) Error() string { return e.Msg }

func valueErr(v, format string, args ...any) error {
	return &ValueError{Value: v, Msg: fmt.Sprintf(format, args...)}
}

// Duration is a time.Duration written as a Go duration string ("5m", "720h")
// in the config file. Days are accepted as a convenience: "90d".
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalText parses "5m", "1h30m" or "90d".
func (d *Duration) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseUint(n, 10, 16)
		if err != nil {
			return valueErr(string(b), "invalid duration %q: want a number of days like \"90d\"", s)
		}
		*d = Duration(time.Duration(days) * 24 * time.Hour)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return valueErr(string(b), "invalid duration %q: want a value like \"30s\", \"5m\", \"720h\" or \"90d\"", s)
	}
	if v < 0 {
		return valueErr(string(b), "invalid duration %q: must not be negative", s)
	}
	*d = Duration(v)
	return nil
}

// UnmarshalTOML, called when the decoder's unmarshaler interface is on,
// refuses a bare number (ttl = 5 has no unit, and would read as 5 ns) and
// parses a quoted string as UnmarshalText does.
func (d *Duration) UnmarshalTOML(data []byte) error {
	raw := strings.TrimSpace(string(data))
	if n := len(raw); n >= 2 && (raw[0] == '"' && raw[n-1] == '"' || raw[0] == '\'' && raw[n-1] == '\'') {
		err := d.UnmarshalText([]byte(raw[1 : n-1]))
		var ve *ValueError
		if errors.As(err, &ve) {
			ve.Value = raw // as written, for finding its line
		}
		return err
	}
	return valueErr(raw, "invalid duration %s: want it in quotes, with its unit, like \"30s\", \"5m\", \"720h\" or \"90d\"", raw)
}

// MarshalText writes the duration back as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// ByteSize is a size in bytes written as "64MB", "512KiB", "1GB" or a bare
// number in the config file. KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024.
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	{"B", 1},
}

// UnmarshalText parses a size such as "64MB".
func (s *ByteSize) UnmarshalText(b []byte) error {
	v, err := ParseByteSize(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText writes the size as a plain number of bytes.
func (s ByteSize) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(int64(s), 10)), nil }

// ParseByteSize parses "64MB", "512KiB" or "1048576".
func ParseByteSize(in string) (ByteSize, error) {
	str := strings.TrimSpace(in)
	mult := int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(str, u.suffix); ok {
			str, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(str, 10, 64)
	if err != nil || n < 0 {
		return 0, valueErr(in, "invalid size %q: want a value like \"64MB\", \"512KiB\" or a number of bytes", in)
	}
	if n > (1<<62)/mult {
		return 0, valueErr(in, "invalid size %q: too large", in)
	}
	return ByteSize(n * mult), nil
}
