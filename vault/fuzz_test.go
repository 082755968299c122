package vault

import (
	"bytes"
	"testing"
	"time"
)

// FuzzDecodeRecord feeds the stored-record decoder arbitrary bytes: it must
// never panic, whatever it accepts must survive an encode/decode round trip
// unchanged, and the MAC check must answer without a panic. The seeds are
// records of both formats: 2 (with a MAC under the seed keyring's record
// key, so mutations reach the check) and 1 (as written before records
// carried a MAC).
func FuzzDecodeRecord(f *testing.F) {
	kr, err := newKeyring(time.Unix(0, 0))
	if err != nil {
		f.Fatal(err)
	}
	mk := func(typ Type, tools []string, values ...string) *record {
		r := &record{typ: typ, created: 1, rotated: 2, tools: tools}
		for i, v := range values {
			ver, err := seal(kr.activeTerm(), nsSecret, "n", typ, uint64(i+1), []byte(v), time.Unix(0, int64(i)))
			if err != nil {
				f.Fatal(err)
			}
			r.versions = append(r.versions, ver)
		}
		kr.sealRecord(nsSecret, "n", r)
		return r
	}
	for _, r := range []*record{
		mk(TypePassword, nil, "pw"),
		mk(TypeAPIKey, []string{"tickets", "wiki"}, "k1", "k2", "k3"),
		mk(typeSystem, nil, string(make([]byte, 64))),
		mk(TypeOpaque, []string{"a"}, string(make([]byte, 1000))),
	} {
		f.Add(r.encode())
		f.Add(encodeV1(r))
	}
	f.Add([]byte{})
	f.Add([]byte{recordMagic, recordFormat, 1})
	f.Add([]byte{recordMagic, recordFormatV1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{recordMagic, recordFormat, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := checkedRecord(kr, nsSecret, "n", b); err == nil && r.format != recordFormat {
			t.Fatalf("the check accepted a format %d record", r.format)
		}
		r, err := decodeRecord(b)
		if err != nil {
			if r != nil {
				t.Fatal("decodeRecord returned a record with an error")
			}
			return
		}
		if len(r.versions) == 0 || len(r.versions) > MaxKeepVersions {
			t.Fatalf("accepted %d versions", len(r.versions))
		}
		for _, tool := range r.tools {
			if checkName(tool) != nil {
				t.Fatalf("accepted tool name %q", tool)
			}
		}
		for i := range r.versions {
			if len(r.versions[i].ct) < tagSize || len(r.versions[i].ct) > maxCiphertext {
				t.Fatalf("accepted a ciphertext of %d bytes", len(r.versions[i].ct))
			}
			if i > 0 && r.versions[i].n <= r.versions[i-1].n {
				t.Fatal("accepted versions out of order")
			}
		}
		enc := r.encode()
		r2, err := decodeRecord(enc)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if !bytes.Equal(r2.encode(), enc) || r2.mac != r.mac {
			t.Fatal("encode/decode is not stable")
		}
		_ = r.meta("n")
	})
}

// FuzzDecodeKeyring checks the keyring decoder the same way: it only ever
// sees bytes the master key authenticated, but must still never panic.
func FuzzDecodeKeyring(f *testing.F) {
	kr, err := newKeyring(time.Unix(0, 0))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(kr.encode())
	kr2, _ := kr.withNewTerm(time.Unix(1, 0))
	f.Add(kr2.encode())
	old := &keyring{format: keyringFormatV1, active: kr2.active, terms: kr2.terms} // as written before the record key
	f.Add(old.encode())
	f.Add([]byte{keyringMagic, keyringFormat, 0, 0, 0, 1, 0, 0, 0, 1})
	f.Add([]byte{keyringMagic, keyringFormatV1, 0, 0, 0, 1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		kr, err := decodeKeyring(b)
		if err != nil {
			return
		}
		if kr.activeTerm() == nil {
			t.Fatal("accepted a keyring without its active term")
		}
		enc := kr.encode()
		kr2, err := decodeKeyring(enc)
		if err != nil {
			t.Fatalf("re-encoded keyring does not decode: %v", err)
		}
		if !bytes.Equal(kr2.encode(), enc) || kr2.active != kr.active || len(kr2.terms) != len(kr.terms) ||
			kr2.format != kr.format || !bytes.Equal(kr2.recordKey, kr.recordKey) {
			t.Fatal("keyring encode/decode is not stable")
		}
	})
}
