package vault

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"testing"
)

// TestCiphertextIsAES256GCMBoundToNameAndVersion opens a stored ciphertext
// with nothing but the standard library: its term's data key is 32 bytes
// (AES-256), GCM with the 12-byte nonce kept beside it opens it under the
// documented additional data (namespace, name, type, version, term), and the
// same bytes under another name or another version do not open.
func TestCiphertextIsAES256GCMBoundToNameAndVersion(t *testing.T) {
	e := newEnv(t, Config{KeepVersions: 5})
	e.put(t, "db-password", TypePassword, "first-value")
	if _, err := e.v.Rotate(context.Background(), operator, "db-password", []byte("second-value")); err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord(e.rawRecord(t, bucketSecrets, "db-password"))
	if err != nil {
		t.Fatal(err)
	}
	aad := func(name string, version uint64, term uint32) []byte {
		b := []byte("applianced-vault-v1\x00")
		b = append(b, nsSecret, 0)
		b = append(b, name...)
		b = append(b, 0, byte(TypePassword))
		b = binary.BigEndian.AppendUint64(b, version)
		return binary.BigEndian.AppendUint32(b, term)
	}
	want := map[uint64]string{1: "first-value", 2: "second-value"}
	if len(rec.versions) != 2 {
		t.Fatalf("got %d versions, want 2", len(rec.versions))
	}
	for _, ver := range rec.versions {
		key := e.v.kr.terms[ver.term].key
		if len(key) != 32 {
			t.Fatalf("data key of term %d: %d bytes, want 32 (AES-256)", ver.term, len(key))
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			t.Fatal(err)
		}
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := gcm.Open(nil, ver.nonce[:], ver.ct, aad("db-password", ver.n, ver.term))
		if err != nil || !bytes.Equal(plain, []byte(want[ver.n])) {
			t.Errorf("version %d: got %q, %v; want %q", ver.n, plain, err, want[ver.n])
		}
		for _, other := range []struct {
			name    string
			version uint64
		}{{"db-passworD", ver.n}, {"other", ver.n}, {"db-password", 3 - ver.n}} {
			if _, err := gcm.Open(nil, ver.nonce[:], ver.ct, aad(other.name, other.version, ver.term)); err == nil {
				t.Errorf("version %d opened as %s version %d", ver.n, other.name, other.version)
			}
		}
	}
}
