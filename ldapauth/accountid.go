package ldapauth

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/go-ldap/ldap/v3"
)

// ErrNoAccountID means the directory returned no immutable id for a user
// entry (objectGUID in AD, entryUUID elsewhere): the account could not be
// told apart from a later one given the same name, so it is not logged in.
var ErrNoAccountID = errors.New("ldapauth: the directory returned no immutable id for the account")

// idAttrs are the attributes that may hold an account's immutable id,
// requested in every user search whatever the group mode: objectGUID in AD
// (16 bytes), entryUUID in OpenLDAP and 389-DS (RFC 4530, an operational
// attribute returned only when asked for by name). The directory decides
// which one an entry has, not the group mode: AD with group_mode memberof
// or posix still has only objectGUID. A directory ignores the one it does
// not know.
var idAttrs = []string{"objectGUID", "entryUUID"}

// accountID reads e's immutable id in its canonical form: the lowercase
// 8-4-4-4-12 string of a UUID. An objectGUID is preferred when the entry
// has one; it is read in the byte order Windows shows it in (the first
// three fields little-endian), so the id matches what AD's own tools print.
func accountID(e *ldap.Entry) (string, error) {
	if raw := e.GetRawAttributeValue("objectGUID"); len(raw) != 0 {
		if len(raw) != 16 {
			return "", fmt.Errorf("ldapauth: objectGUID of %s is %d bytes, want 16", e.DN, len(raw))
		}
		return guidString(raw), nil
	}
	v := e.GetAttributeValue("entryUUID")
	if v == "" {
		return "", fmt.Errorf("%w (neither objectGUID nor entryUUID of %s)", ErrNoAccountID, e.DN)
	}
	b, err := parseUUID(v)
	if err != nil {
		return "", fmt.Errorf("ldapauth: entryUUID of %s: %w", e.DN, err)
	}
	return uuidString(b), nil
}

// guidString formats an objectGUID as Windows does.
func guidString(raw []byte) string {
	var b [16]byte
	binary.BigEndian.PutUint32(b[0:], binary.LittleEndian.Uint32(raw[0:]))
	binary.BigEndian.PutUint16(b[4:], binary.LittleEndian.Uint16(raw[4:]))
	binary.BigEndian.PutUint16(b[6:], binary.LittleEndian.Uint16(raw[6:]))
	copy(b[8:], raw[8:16])
	return uuidString(b)
}

// guidBytes is guidString's inverse: the objectGUID bytes of a canonical id.
func guidBytes(b [16]byte) []byte {
	raw := make([]byte, 16)
	binary.LittleEndian.PutUint32(raw[0:], binary.BigEndian.Uint32(b[0:]))
	binary.LittleEndian.PutUint16(raw[4:], binary.BigEndian.Uint16(b[4:]))
	binary.LittleEndian.PutUint16(raw[6:], binary.BigEndian.Uint16(b[6:]))
	copy(raw[8:], b[8:])
	return raw
}

func uuidString(b [16]byte) string {
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// parseUUID reads the 8-4-4-4-12 hex form of a UUID, in either case.
func parseUUID(s string) ([16]byte, error) {
	var b [16]byte
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return b, fmt.Errorf("account id %q: want the form 01234567-89ab-cdef-0123-456789abcdef", s)
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(b[:], []byte(h)); err != nil {
		return b, fmt.Errorf("account id %q: want hexadecimal digits in the form 01234567-89ab-cdef-0123-456789abcdef", s)
	}
	return b, nil
}

// idFilter is the filter clause that matches the account whose canonical
// id is id, in either attribute: every byte of the objectGUID hex-escaped,
// or the entryUUID as its string. A directory evaluates the attribute it
// does not know as undefined, so the clause matches by the one it has. A
// malformed id is an error, never a filter.
func idFilter(id string) (string, error) {
	b, err := parseUUID(id)
	if err != nil {
		return "", fmt.Errorf("ldapauth: %w", err)
	}
	return "(|(objectGUID=" + escapeBytes(guidBytes(b)) + ")(entryUUID=" + ldap.EscapeFilter(uuidString(b)) + "))", nil
}
