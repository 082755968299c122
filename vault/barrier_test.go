package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
)

// One test per security property of the barrier.

func TestStoredBytesDifferFromPlaintext(t *testing.T) {
	e := newEnv(t, Config{})
	const value = "correct-horse-battery-staple"
	e.put(t, "db-password", TypePassword, value)
	raw := e.rawRecord(t, bucketSecrets, "db-password")
	rec, err := decodeRecord(raw)
	if err != nil {
		t.Fatal(err)
	}
	ct := rec.current().ct
	if bytes.Contains(raw, []byte(value)) {
		t.Error("the stored record contains the plaintext")
	}
	if bytes.Contains(ct, []byte(value)) || bytes.Equal(ct[:len(value)], []byte(value)) {
		t.Error("the ciphertext contains the plaintext")
	}
	if got, want := len(ct), len(value)+tagSize; got != want {
		t.Errorf("ciphertext length = %d, want %d (value + GCM tag)", got, want)
	}
}

func TestFlippedCiphertextByteFails(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "api", TypeAPIKey, "k-123456", "tickets")
	raw := e.rawRecord(t, bucketSecrets, "api")
	rec, _ := decodeRecord(raw)
	ctLen := len(rec.current().ct)
	// Flip every byte of the ciphertext and tag in turn, and each nonce byte.
	for i := 0; i < ctLen+nonceSize; i++ {
		bad, _ := decodeRecord(bytes.Clone(raw))
		bad = bad.clone()
		if i < ctLen {
			bad.current().ct[i] ^= 0x01
		} else {
			bad.current().nonce[i-ctLen] ^= 0x80
		}
		e.setRawRecord(t, bucketSecrets, "api", bad.encode())
		if _, err := e.v.ForTool(context.Background(), "tickets", "api"); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("byte %d flipped: ForTool error = %v, want ErrCorrupt", i, err)
		}
	}
	e.setRawRecord(t, bucketSecrets, "api", raw)
	val, err := e.v.ForTool(context.Background(), "tickets", "api")
	if err != nil || string(val) != "k-123456" {
		t.Fatalf("original record: ForTool = %q, %v", val, err)
	}
}

func TestMovedCiphertextFails(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "alpha", TypeAPIKey, "alpha-key", "tool")
	e.put(t, "beta", TypeAPIKey, "beta-key", "tool")
	if _, err := e.v.Rotate(context.Background(), operator, "alpha", []byte("alpha-key-2")); err != nil {
		t.Fatal(err)
	}
	e.put(t, "gamma", TypePassword, "gamma-pw", "tool")
	alpha, _ := decodeRecord(e.rawRecord(t, bucketSecrets, "alpha"))
	beta, _ := decodeRecord(e.rawRecord(t, bucketSecrets, "beta"))
	gamma, _ := decodeRecord(e.rawRecord(t, bucketSecrets, "gamma"))
	if _, err := e.v.Rekey(context.Background(), operator, false); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		target string
		rec    func() *record
	}{
		{"alpha's ciphertext under beta's name", "beta", func() *record { return alpha.clone() }},
		{"beta's ciphertext under alpha's name", "alpha", func() *record { return beta.clone() }},
		{"version 1 relabelled as version 2", "alpha", func() *record {
			r := alpha.clone()
			r.versions = r.versions[:1]
			r.versions[0].n = 2
			return r
		}},
		{"version 2 relabelled as version 3", "alpha", func() *record {
			r := alpha.clone()
			r.current().n = 3
			return r
		}},
		{"term relabelled", "alpha", func() *record {
			r := alpha.clone()
			r.current().term = 2
			return r
		}},
		{"type relabelled", "gamma", func() *record {
			r := gamma.clone()
			r.typ = TypeAPIKey
			return r
		}},
		{"secret moved into the system keys", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rec == nil {
				e.setRawRecord(t, bucketSystem, "alpha", alpha.clone().encode())
				if _, err := e.v.SystemKey(context.Background(), "alpha", nil); !errors.Is(err, ErrCorrupt) {
					t.Errorf("SystemKey error = %v, want ErrCorrupt", err)
				}
				return
			}
			e.setRawRecord(t, bucketSecrets, tt.target, tt.rec().encode())
			val, err := e.v.ForTool(context.Background(), "tool", tt.target)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("ForTool(%s) = %q, %v; want ErrCorrupt", tt.target, val, err)
			}
		})
	}
}

func TestSamePlaintextEncryptsDifferently(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "one", TypePassword, "same-value")
	e.put(t, "one", TypePassword, "same-value")
	rec, _ := decodeRecord(e.rawRecord(t, bucketSecrets, "one"))
	if len(rec.versions) != 2 {
		t.Fatalf("versions = %d, want 2", len(rec.versions))
	}
	a, b := rec.versions[0], rec.versions[1]
	if a.nonce == b.nonce {
		t.Error("two versions share a nonce")
	}
	if bytes.Equal(a.ct, b.ct) {
		t.Error("the same plaintext encrypted to the same ciphertext twice")
	}
	// Sealing twice with identical name, version and term differs too.
	t1 := e.v.kr.activeTerm()
	v1, _ := seal(t1, nsSecret, "x", TypePassword, 1, []byte("same-value"), time.Now())
	v2, _ := seal(t1, nsSecret, "x", TypePassword, 1, []byte("same-value"), time.Now())
	if bytes.Equal(v1.ct, v2.ct) {
		t.Error("sealing the same value at the same place twice gave the same ciphertext")
	}
}

func TestWrongMasterKeyIsSealed(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "s", TypePassword, "secret-value")
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	before := fileSum(t, e.path)
	nEvents := len(e.events(t))

	wrong := randomKey(t)
	v, err := Open(context.Background(), e.path, wrong, Config{}, e.options())
	if !errors.Is(err, ErrSealed) {
		if v != nil {
			v.Close()
		}
		t.Fatalf("Open with a wrong key: error = %v, want ErrSealed", err)
	}
	if !strings.Contains(err.Error(), "vault is sealed: master key does not open the keyring") {
		t.Errorf("error = %q, want the sealed message", err)
	}
	if after := fileSum(t, e.path); after != before {
		t.Error("opening with a wrong key changed the database file")
	}
	evs := e.events(t)
	if len(evs) != nEvents+1 || evs[len(evs)-1].Type != "vault.unseal" || evs[len(evs)-1].Outcome != audit.OutcomeFailure {
		t.Errorf("want one vault.unseal failure event, got %+v", evs[nEvents:])
	}
	e.reopen(t, Config{})
	val, err := e.v.ForInternal(context.Background(), "test", "s")
	if err != nil || string(val) != "secret-value" {
		t.Errorf("with the right key: %q, %v", val, err)
	}
}

func TestMasterKeyNeverInDatabase(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "s", TypeOpaque, "x")
	if _, err := e.v.Rekey(context.Background(), operator, true); err != nil {
		t.Fatal(err)
	}
	terms := e.v.kr.ids()
	var dataKeys [][]byte
	for _, id := range terms {
		dataKeys = append(dataKeys, bytes.Clone(e.v.kr.terms[id].key))
	}
	e.v.Close()
	db, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, e.key) {
		t.Error("the master key is in the database file")
	}
	for i, k := range dataKeys {
		if bytes.Contains(db, k) {
			t.Errorf("data key of term %d is in the database file in the clear", terms[i])
		}
	}
}

func TestRekeyKeepsOldTermsOpenAndWritesUseNewTerm(t *testing.T) {
	e := newEnv(t, Config{KeepVersions: 10})
	ctx := context.Background()
	e.put(t, "s", TypePassword, "v1", "tool")
	res, err := e.v.Rekey(ctx, operator, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Term != 2 {
		t.Fatalf("new term = %d, want 2", res.Term)
	}
	m, err := e.v.Rotate(ctx, operator, "s", []byte("v2"))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Versions[len(m.Versions)-1].Term; got != 2 {
		t.Errorf("new version's term = %d, want 2", got)
	}
	if got := m.Versions[0].Term; got != 1 {
		t.Errorf("old version's term = %d, want 1", got)
	}
	// Survives a restart: the new keyring was persisted.
	e.reopen(t, Config{KeepVersions: 10})
	rec, _ := decodeRecord(e.rawRecord(t, bucketSecrets, "s"))
	for i, want := range []string{"v1", "v2"} {
		plain, err := openVersion(e.v.kr, nsSecret, "s", rec.typ, &rec.versions[i])
		if err != nil || string(plain) != want {
			t.Errorf("version %d after rekey: %q, %v; want %q", i+1, plain, err, want)
		}
	}
	st, err := e.v.Status(ctx, operator)
	if err != nil {
		t.Fatal(err)
	}
	if st.Term != 2 || st.Terms != 2 || st.OldTermVersions != 1 {
		t.Errorf("status = term %d, terms %d, old-term versions %d; want 2, 2, 1", st.Term, st.Terms, st.OldTermVersions)
	}

	// Rekey with re-encryption moves everything to term 3.
	if _, err := e.v.SystemKey(ctx, "jwt-signing", func() ([]byte, error) { return []byte("k1"), nil }); err != nil {
		t.Fatal(err)
	}
	res, err = e.v.Rekey(ctx, operator, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Term != 3 || res.Reencrypted != 3 {
		t.Errorf("rekey with re-encryption = %+v, want term 3 and 3 versions", res)
	}
	st, _ = e.v.Status(ctx, operator)
	if st.OldTermVersions != 0 {
		t.Errorf("old-term versions after re-encryption = %d, want 0", st.OldTermVersions)
	}
	val, err := e.v.ForTool(ctx, "tool", "s")
	if err != nil || string(val) != "v2" {
		t.Errorf("after re-encryption: %q, %v", val, err)
	}
	key, err := e.v.SystemKey(ctx, "jwt-signing", nil)
	if err != nil || string(key) != "k1" {
		t.Errorf("system key after re-encryption: %q, %v", key, err)
	}
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "kept", TypePassword, "kept-value", "tool")
	e.put(t, "deleted-later", TypeAPIKey, "deleted-value", "tool")
	sys, err := e.v.SystemKey(ctx, "audit-hmac", func() ([]byte, error) { return []byte("hmac-key"), nil })
	if err != nil {
		t.Fatal(err)
	}
	var backup bytes.Buffer
	if _, err := e.v.Backup(ctx, operator, &backup); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(backup.Bytes(), []byte("kept-value")) || bytes.Contains(backup.Bytes(), e.key) {
		t.Error("the backup holds a plaintext or the master key")
	}

	if err := e.v.Delete(ctx, operator, "deleted-later"); err != nil {
		t.Fatal(err)
	}
	e.put(t, "added-later", TypePassword, "added-value", "tool")
	if _, err := e.v.Rotate(ctx, operator, "kept", []byte("rotated-value")); err != nil {
		t.Fatal(err)
	}

	res, err := e.v.Restore(ctx, operator, bytes.NewReader(backup.Bytes()), nil)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if res.Secrets != 2 || res.SystemKeys != 1 {
		t.Errorf("restore result = %+v, want 2 secrets and 1 system key", res)
	}
	for name, want := range map[string]string{"kept": "kept-value", "deleted-later": "deleted-value"} {
		val, err := e.v.ForTool(ctx, "tool", name)
		if err != nil || string(val) != want {
			t.Errorf("after restore %s = %q, %v; want %q", name, val, err, want)
		}
	}
	if _, err := e.v.ForTool(ctx, "tool", "added-later"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a secret added after the backup: error = %v, want ErrNotFound", err)
	}
	key, err := e.v.SystemKey(ctx, "audit-hmac", nil)
	if err != nil || !bytes.Equal(key, sys) {
		t.Errorf("system key after restore = %q, %v", key, err)
	}
	// The restored database is the live one after a restart too.
	e.reopen(t, Config{})
	if _, err := e.v.ForTool(ctx, "tool", "deleted-later"); err != nil {
		t.Errorf("after restart: %v", err)
	}
	if st, err := os.Stat(e.path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("restored database mode: %v, %v", st.Mode(), err)
	}
}

func TestRestoreRefusesAnotherMasterKey(t *testing.T) {
	other := newEnv(t, Config{})
	other.put(t, "foreign", TypePassword, "foreign-value")
	var backup bytes.Buffer
	if _, err := other.v.Backup(context.Background(), operator, &backup); err != nil {
		t.Fatal(err)
	}

	e := newEnv(t, Config{})
	e.put(t, "mine", TypePassword, "mine-value")
	before := fileSum(t, e.path)
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"another vault's backup", backup.Bytes(), ErrSealed},
		{"garbage", bytes.Repeat([]byte("not a database "), 1000), ErrCorrupt},
		{"empty", nil, ErrInvalid},
		{"truncated backup", backup.Bytes()[:backup.Len()/2], ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.v.Restore(context.Background(), operator, bytes.NewReader(tt.data), nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Restore error = %v, want %v", err, tt.want)
			}
			if ev := e.lastEvent(t); ev.Type != "vault.restore" || ev.Outcome != audit.OutcomeDenied {
				t.Errorf("last event = %s/%s, want vault.restore/denied", ev.Type, ev.Outcome)
			}
			val, err := e.v.ForInternal(context.Background(), "test", "mine")
			if err != nil || string(val) != "mine-value" {
				t.Errorf("after a refused restore: %q, %v", val, err)
			}
			if _, err := e.v.ForInternal(context.Background(), "test", "foreign"); !errors.Is(err, ErrNotFound) {
				t.Errorf("foreign secret visible after a refused restore: %v", err)
			}
		})
	}
	after := fileSum(t, e.path)
	if before != after {
		t.Error("a refused restore changed the database")
	}
	leftovers, _ := filepath.Glob(e.path + ".restore-*")
	if len(leftovers) != 0 {
		t.Errorf("refused restores left files behind: %v", leftovers)
	}
}

// TestPlaintextNeverWritten scans every byte the vault wrote (database,
// journal, logs, backup) for every plaintext and every field of the
// structured values.
func TestPlaintextNeverWritten(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	cert, key := testKeyPair(t)
	secrets := []struct {
		name   string
		typ    Type
		value  string
		needle []string
	}{
		{"pw", TypePassword, "Pl41nT3xt-Password!", nil},
		{"api", TypeAPIKey, "sk_live_0123456789abcdefPLAIN", nil},
		{"basic", TypeBasic, `{"user":"svc-plainuser","password":"BasicPlainPassw0rd"}`, []string{"BasicPlainPassw0rd"}},
		{"oauth", TypeOAuth2Client, `{"client_id":"cid","client_secret":"OAuthPlainClientSecret","token_url":"https://idp.example/token"}`,
			[]string{"OAuthPlainClientSecret"}},
		{"tls", TypeTLSClient, tlsJSON(cert, key), []string{strings.Split(string(key), "\n")[1]}},
		{"blob", TypeOpaque, "\x00\x01OpaquePlainBytes\xff", nil},
	}
	for _, s := range secrets {
		e.put(t, s.name, s.typ, s.value, "tool")
		if _, err := e.v.Rotate(ctx, operator, s.name, []byte(s.value)); err != nil {
			t.Fatal(err)
		}
		if ok, err := e.v.Verify(ctx, operator, s.name, []byte(s.value)); err != nil || !ok {
			t.Fatalf("Verify(%s) = %v, %v", s.name, ok, err)
		}
		if _, err := e.v.Verify(ctx, operator, s.name, []byte(s.value+"x")); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatal(err)
		}
		// Refused input must not leak either.
		_, _ = e.v.Put(ctx, operator, PutRequest{Name: s.name, Type: TypeTLSClient, Value: []byte(s.value)})
		_, _ = e.v.ForTool(ctx, "other-tool", s.name)
	}
	if _, err := e.v.Rekey(ctx, operator, true); err != nil {
		t.Fatal(err)
	}
	var backup bytes.Buffer
	if _, err := e.v.Backup(ctx, operator, &backup); err != nil {
		t.Fatal(err)
	}
	e.v.Close()

	blobs := map[string][]byte{"logs": e.logs.Bytes(), "backup": backup.Bytes()}
	for _, dir := range []string{filepath.Dir(e.path), e.journal.Dir()} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, ent := range entries {
			b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
			if err != nil {
				t.Fatal(err)
			}
			blobs[filepath.Join(filepath.Base(dir), ent.Name())] = b
		}
	}
	if len(e.logs.Bytes()) == 0 || len(blobs) < 4 {
		t.Fatalf("nothing to scan: %d blobs, %d bytes of logs", len(blobs), len(e.logs.Bytes()))
	}
	for _, s := range secrets {
		needles := append([]string{s.value}, s.needle...)
		for _, n := range needles {
			for where, b := range blobs {
				if bytes.Contains(b, []byte(n)) {
					t.Errorf("the plaintext of %s (%.12q...) is in %s", s.name, n, where)
				}
			}
		}
	}
}

func TestToolNotAllowedIsDeniedAndAudited(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "tickets-key", TypeAPIKey, "tk-1", "tickets")
	e.put(t, "no-tools", TypeAPIKey, "nt-1")

	val, err := e.v.ForTool(ctx, "tickets", "tickets-key")
	if err != nil || string(val) != "tk-1" {
		t.Fatalf("allowed tool: %q, %v", val, err)
	}
	tests := []struct{ tool, name string }{
		{"wiki", "tickets-key"},
		{"tickets", "no-tools"},
		{"tickets-key", "tickets-key"},
	}
	for _, tt := range tests {
		t.Run(tt.tool+"->"+tt.name, func(t *testing.T) {
			val, err := e.v.ForTool(ctx, tt.tool, tt.name)
			if !errors.Is(err, ErrDenied) || val != nil {
				t.Fatalf("ForTool(%s, %s) = %q, %v; want ErrDenied and no value", tt.tool, tt.name, val, err)
			}
			ev := e.lastEvent(t)
			if ev.Type != "secret.use" || ev.Outcome != audit.OutcomeDenied || ev.Target != tt.name || ev.Details["tool"] != tt.tool {
				t.Errorf("event = %+v, want secret.use denied for %s by %s", ev, tt.name, tt.tool)
			}
		})
	}
	// Internal components are not bound by allowed_tools.
	if val, err := e.v.ForInternal(ctx, "ldapauth", "no-tools"); err != nil || string(val) != "nt-1" {
		t.Errorf("ForInternal = %q, %v", val, err)
	}
}

func TestFailedAuditFailsTheOperation(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "existing", TypePassword, "before")
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	opts := e.options()
	opts.Audit = closedJournal(t)
	if _, err := Open(ctx, e.path, e.key, Config{}, opts); !errors.Is(err, ErrAudit) {
		t.Fatalf("Open with a dead journal: error = %v, want ErrAudit", err)
	}

	// Open with the live journal, then let the journal die.
	dir := filepath.Join(t.TempDir(), "journal2")
	j, err := audit.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts.Audit = j
	v, err := Open(ctx, e.path, e.key, Config{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	ops := []struct {
		name string
		do   func() error
	}{
		{"put", func() error {
			_, err := v.Put(ctx, operator, PutRequest{Name: "new", Type: TypePassword, Value: []byte("x")})
			return err
		}},
		{"rotate", func() error { _, err := v.Rotate(ctx, operator, "existing", []byte("after")); return err }},
		{"delete", func() error { return v.Delete(ctx, operator, "existing") }},
		{"verify", func() error { _, err := v.Verify(ctx, operator, "existing", []byte("before")); return err }},
		{"list", func() error { _, err := v.List(ctx, operator); return err }},
		{"status", func() error { _, err := v.Status(ctx, operator); return err }},
		{"rekey", func() error { _, err := v.Rekey(ctx, operator, true); return err }},
		{"backup", func() error { _, err := v.Backup(ctx, operator, &buf); return err }},
		{"system key create", func() error {
			_, err := v.SystemKey(ctx, "new-key", func() ([]byte, error) { return []byte("k"), nil })
			return err
		}},
		{"denied tool", func() error { _, err := v.ForTool(ctx, "nope", "existing"); return err }},
	}
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			if err := op.do(); !errors.Is(err, ErrAudit) {
				t.Errorf("%s with a dead journal: error = %v, want ErrAudit", op.name, err)
			}
		})
	}
	if buf.Len() != 0 {
		t.Error("backup wrote data without an audit record")
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	e.reopen(t, Config{})
	val, err := e.v.ForInternal(ctx, "test", "existing")
	if err != nil || string(val) != "before" {
		t.Errorf("after unaudited attempts: %q, %v; want \"before\"", val, err)
	}
	if m, _ := e.v.Describe(ctx, "existing"); m.Version != 1 {
		t.Errorf("version after unaudited attempts = %d, want 1", m.Version)
	}
	for _, name := range []string{"new"} {
		if _, err := e.v.Describe(ctx, name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s exists after an unaudited put: %v", name, err)
		}
	}
	if _, err := e.v.SystemKey(ctx, "new-key", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("system key exists after an unaudited create: %v", err)
	}
	st, _ := e.v.Status(ctx, operator)
	if st.Term != 1 {
		t.Errorf("term = %d after an unaudited rekey, want 1", st.Term)
	}
}

func TestOperationsAreAudited(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	var buf bytes.Buffer
	steps := []struct {
		do         func() error
		typ        string
		action     string
		target     string
		outcome    string
		detailKey  string
		detailWant string
	}{
		{func() error { e.put(t, "s", TypePassword, "v", "tool"); return nil }, "secret.put", "secret.put", "s", "success", "version", "1"},
		{func() error { _, err := e.v.Rotate(ctx, operator, "s", []byte("w")); return err }, "secret.rotate", "secret.rotate", "s", "success", "version", "2"},
		{func() error { _, err := e.v.Verify(ctx, operator, "s", []byte("v")); return err }, "secret.verify", "secret.verify", "s", "success", "match", "false"},
		{func() error { _, err := e.v.Verify(ctx, operator, "s", []byte("w")); return err }, "secret.verify", "secret.verify", "s", "success", "match", "true"},
		{func() error { _, err := e.v.List(ctx, operator); return err }, "admin.call", "secret.list", "", "success", "count", "1"},
		{func() error { _, err := e.v.Status(ctx, operator); return err }, "admin.call", "vault.status", "", "success", "term", "1"},
		{func() error { _, err := e.v.Rekey(ctx, operator, false); return err }, "vault.rekey", "vault.rekey", "", "success", "term", "2"},
		{func() error { _, err := e.v.Backup(ctx, operator, &buf); return err }, "vault.backup", "vault.backup", "", "success", "term", "2"},
		{func() error { return e.v.Delete(ctx, operator, "s") }, "secret.delete", "secret.delete", "s", "success", "version", "2"},
		{func() error { return e.v.Delete(ctx, operator, "s") }, "secret.delete", "secret.delete", "s", "denied", "", ""},
		{func() error {
			_, err := e.v.Put(ctx, operator, PutRequest{Name: "bad/name", Type: TypePassword, Value: []byte("v")})
			return err
		}, "secret.put", "secret.put", "bad/name", "denied", "", ""},
		{func() error {
			_, err := e.v.PutSystemKey(ctx, operator, "jwt", []byte("k"))
			return err
		}, "secret.put", "system_key.put", "jwt", "success", "kind", "system_key"},
	}
	for i, s := range steps {
		_ = s.do()
		ev := e.lastEvent(t)
		if ev.Type != s.typ || ev.Action != s.action || ev.Target != s.target || ev.Outcome != s.outcome {
			t.Errorf("step %d: event %s/%s/%s/%s, want %s/%s/%s/%s", i, ev.Type, ev.Action, ev.Target, ev.Outcome,
				s.typ, s.action, s.target, s.outcome)
		}
		if s.detailKey != "" && ev.Details[s.detailKey] != s.detailWant {
			t.Errorf("step %d (%s): details[%s] = %q, want %q", i, s.action, s.detailKey, ev.Details[s.detailKey], s.detailWant)
		}
		if s.action != "system_key.put" && (ev.Actor.UID == nil || *ev.Actor.UID != 0) {
			t.Errorf("step %d (%s): actor uid missing: %+v", i, s.action, ev.Actor)
		}
		if _, ok := audit.LookupEventType(ev.Type); !ok {
			t.Errorf("step %d: event type %q is not in the audit catalogue", i, ev.Type)
		}
	}
}

func TestFilesArePrivate(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "s", TypePassword, "v")
	st, err := os.Stat(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("database mode = %04o, want 0600", got)
	}
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Open(context.Background(), e.path, e.key, Config{}, e.options())
	if err == nil || !strings.Contains(err.Error(), "0644") || !strings.Contains(err.Error(), e.path) {
		t.Errorf("Open of a 0644 database: error = %v, want a refusal naming the file and mode", err)
	}
	if err := os.Chmod(e.path, 0o600); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
