package vault

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// A stored record is one secret (or system key) with all the versions kept.
// The name is the bbolt key, not part of the record; it is bound into each
// version's additional data instead.
//
//	magic(1)=0xA5 format(1)=2 type(1) created(8) rotated(8)
//	tools: count(uvarint) { len(uvarint) bytes }*
//	versions: count(uvarint) { version(uvarint) term(4) created(8) nonce(12) len(uvarint) ciphertext }*
//	mac(32)
//
// Versions are in ascending order; the last is the current one. Integers
// are big-endian. The decoder rejects anything else, trailing bytes included.
// mac is the record MAC (keyring.recordMAC) under the keyring's record key;
// a record is used only after it is checked (checkedRecord). Format 1 is the
// same without the mac: the decoder reads it so that a database written
// before can be upgraded, and the check refuses it.

const (
	recordMagic    = 0xA5
	recordFormat   = 2
	recordFormatV1 = 1

	// maxTools bounds allowed_tools of one secret.
	maxTools = 64
	// maxCiphertext bounds one stored version: the largest value plus the
	// GCM tag.
	maxCiphertext = MaxValueSize + tagSize
)

// version is one stored version of a value.
type version struct {
	n       uint64
	term    uint32
	created int64 // unix nanoseconds
	nonce   [nonceSize]byte
	ct      []byte // ciphertext and tag
}

// record is a decoded stored record.
type record struct {
	format   byte // recordFormat, or recordFormatV1 (no mac) as read from an old database
	typ      Type
	created  int64 // unix nanoseconds
	rotated  int64 // unix nanoseconds: when the current version was written
	tools    []string
	versions []version
	mac      [sha256.Size]byte
}

// current returns the newest version.
func (r *record) current() *version { return &r.versions[len(r.versions)-1] }

// allows reports whether tool is in allowed_tools.
func (r *record) allows(tool string) bool {
	for _, t := range r.tools {
		if t == tool {
			return true
		}
	}
	return false
}

// errRecord is the class of every decoding error.
var errRecord = errors.New("malformed stored record")

// encode returns the stored form, always format 2 with r.mac (which
// keyring.sealRecord sets).
func (r *record) encode() []byte {
	n := 3 + 16 + binary.MaxVarintLen64 + len(r.mac)
	for _, t := range r.tools {
		n += binary.MaxVarintLen64 + len(t)
	}
	for i := range r.versions {
		n += 2*binary.MaxVarintLen64 + 4 + 8 + nonceSize + len(r.versions[i].ct)
	}
	b := make([]byte, 0, n)
	b = append(b, recordMagic, recordFormat)
	b = r.appendBody(b, true)
	return append(b, r.mac[:]...)
}

// appendBody appends everything between the format byte and the mac; with
// ciphertexts false, each version's ciphertext is left out (its length
// stays). That form is what the record MAC covers.
func (r *record) appendBody(b []byte, ciphertexts bool) []byte {
	b = append(b, byte(r.typ))
	b = binary.BigEndian.AppendUint64(b, uint64(r.created))
	b = binary.BigEndian.AppendUint64(b, uint64(r.rotated))
	b = binary.AppendUvarint(b, uint64(len(r.tools)))
	for _, t := range r.tools {
		b = binary.AppendUvarint(b, uint64(len(t)))
		b = append(b, t...)
	}
	b = binary.AppendUvarint(b, uint64(len(r.versions)))
	for i := range r.versions {
		v := &r.versions[i]
		b = binary.AppendUvarint(b, v.n)
		b = binary.BigEndian.AppendUint32(b, v.term)
		b = binary.BigEndian.AppendUint64(b, uint64(v.created))
		b = append(b, v.nonce[:]...)
		b = binary.AppendUvarint(b, uint64(len(v.ct)))
		if ciphertexts {
			b = append(b, v.ct...)
		}
	}
	return b
}

// appendMetadata appends what the record MAC covers: the body without the
// ciphertexts.
func (r *record) appendMetadata(b []byte) []byte { return r.appendBody(b, false) }

// decoder reads a record without ever reading past its input.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{errRecord}, args...)...)
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("truncated")
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) uvarint(max uint64, what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad %s", what)
		return 0
	}
	d.b = d.b[n:]
	if v > max {
		d.fail("%s %d is over the limit %d", what, v, max)
		return 0
	}
	return v
}

func (d *decoder) u32() uint32 {
	b := d.bytes(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (d *decoder) i64() int64 {
	b := d.bytes(8)
	if b == nil {
		return 0
	}
	return int64(binary.BigEndian.Uint64(b))
}

// decodeRecord parses a stored record, format 2 or 1. It does not check the
// MAC: use checkedRecord (or keyring.checkRecord) before trusting anything in
// it. Ciphertexts alias b: with bbolt, b is only valid inside its
// transaction, so a caller that keeps the record past the transaction must
// copy (see record.clone).
func decodeRecord(b []byte) (*record, error) {
	d := &decoder{b: b}
	head := d.bytes(3)
	if d.err != nil {
		return nil, d.err
	}
	if head[0] != recordMagic || (head[1] != recordFormat && head[1] != recordFormatV1) {
		return nil, fmt.Errorf("%w: unknown format %#x/%d", errRecord, head[0], head[1])
	}
	r := &record{format: head[1], typ: Type(head[2])}
	if !r.typ.valid() && r.typ != typeSystem {
		return nil, fmt.Errorf("%w: unknown type %d", errRecord, head[2])
	}
	r.created = d.i64()
	r.rotated = d.i64()
	nt := d.uvarint(maxTools, "tool count")
	if nt > 0 {
		r.tools = make([]string, 0, nt)
	}
	for i := uint64(0); i < nt && d.err == nil; i++ {
		l := d.uvarint(maxNameLen, "tool name length")
		t := d.bytes(int(l))
		if d.err == nil && checkName(string(t)) != nil {
			d.fail("bad tool name")
		}
		r.tools = append(r.tools, string(t))
	}
	nv := d.uvarint(MaxKeepVersions, "version count")
	if d.err == nil && nv == 0 {
		d.fail("no versions")
	}
	if d.err != nil {
		return nil, d.err
	}
	r.versions = make([]version, nv)
	var last uint64
	for i := range r.versions {
		v := &r.versions[i]
		v.n = d.uvarint(1<<63, "version")
		if d.err == nil && v.n <= last {
			d.fail("versions out of order")
		}
		last = v.n
		v.term = d.u32()
		v.created = d.i64()
		copy(v.nonce[:], d.bytes(nonceSize))
		l := d.uvarint(maxCiphertext, "ciphertext length")
		if d.err == nil && l < tagSize {
			d.fail("ciphertext shorter than its tag")
		}
		v.ct = d.bytes(int(l))
		if d.err != nil {
			return nil, d.err
		}
	}
	if r.format == recordFormat {
		copy(r.mac[:], d.bytes(len(r.mac)))
		if d.err != nil {
			return nil, d.err
		}
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errRecord, len(d.b))
	}
	return r, nil
}

// clone returns a deep copy of r, safe to keep after its transaction.
func (r *record) clone() *record {
	out := *r
	out.tools = append([]string(nil), r.tools...)
	out.versions = make([]version, len(r.versions))
	for i, v := range r.versions {
		v.ct = append([]byte(nil), v.ct...)
		out.versions[i] = v
	}
	return &out
}
