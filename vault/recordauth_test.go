package vault

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
)

// One test per property of the record MAC: an attacker with write access to
// vault.db, but without the master key, can change neither a secret's
// allowed_tools nor its set of versions, cannot strip the MAC or the marker
// that says records carry one, and cannot make the vault launder such a
// change by writing over it.

// encodeV1 writes r as a vault from before records carried a MAC wrote it
// (record format 1): what an attacker who strips the MAC writes.
func encodeV1(r *record) []byte {
	b := []byte{recordMagic, recordFormatV1}
	return r.appendBody(b, true)
}

// wantRefused checks that err refuses the record name for reason, and that
// no value came with it.
func wantRefused(t *testing.T, what string, val []byte, err, reason error, name string) {
	t.Helper()
	if val != nil {
		t.Errorf("%s handed out %q", what, val)
	}
	if !errors.Is(err, ErrCorrupt) || !errors.Is(err, reason) {
		t.Errorf("%s: error = %v; want ErrCorrupt and %q", what, err, reason)
		return
	}
	if !strings.Contains(err.Error(), `"`+name+`"`) {
		t.Errorf("%s: error %q does not name %q", what, err, name)
	}
}

func TestEditedAllowedToolsRefused(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "db-pass", TypePassword, "s3cr3t-db", "tickets")
	rec, err := decodeRecord(e.rawRecord(t, bucketSecrets, "db-pass"))
	if err != nil {
		t.Fatal(err)
	}
	rec.tools = []string{"evil", "tickets"}
	e.setRawRecord(t, bucketSecrets, "db-pass", rec.encode())

	val, err := e.v.ForTool(ctx, "evil", "db-pass")
	wantRefused(t, "ForTool(evil)", val, err, errBadMAC, "db-pass")
	if ev := e.lastEvent(t); ev.Type != "secret.use" || ev.Outcome != audit.OutcomeFailure || ev.Target != "db-pass" {
		t.Errorf("event = %s/%s/%s, want secret.use/failure/db-pass", ev.Type, ev.Outcome, ev.Target)
	}
	val, err = e.v.ForTool(ctx, "tickets", "db-pass")
	wantRefused(t, "ForTool(tickets)", val, err, errBadMAC, "db-pass")
	val, err = e.v.ForInternal(ctx, "test", "db-pass")
	wantRefused(t, "ForInternal", val, err, errBadMAC, "db-pass")
	_, err = e.v.Describe(ctx, "db-pass")
	wantRefused(t, "Describe", nil, err, errBadMAC, "db-pass")
	list, err := e.v.List(ctx, operator)
	if err != nil || len(list) != 1 || list[0].Name != "db-pass" || list[0].Refused != RefusedBadMAC || list[0].AllowedTools != nil {
		t.Errorf("List = %+v, %v; want db-pass refused, without its tools", list, err)
	}
}

// TestRefusedRecordsListedAndCounted: a refused record does not hide the
// others. List names it with why, and nothing of its metadata; Status
// counts and names it apart from the good ones.
func TestRefusedRecordsListedAndCounted(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "api", TypeAPIKey, "api-key", "tickets")
	e.put(t, "db-pass", TypePassword, "s3cr3t-db", "tickets")
	e.put(t, "wiki", TypePassword, "wiki-pw", "wiki")
	if _, err := e.v.SystemKey(ctx, "jwt-signing", func() ([]byte, error) { return []byte("signing-key"), nil }); err != nil {
		t.Fatal(err)
	}
	rec, err := decodeRecord(e.rawRecord(t, bucketSecrets, "db-pass"))
	if err != nil {
		t.Fatal(err)
	}
	rec.tools = append(rec.tools, "evil")
	e.setRawRecord(t, bucketSecrets, "db-pass", rec.encode())
	sys, err := decodeRecord(e.rawRecord(t, bucketSystem, "jwt-signing"))
	if err != nil {
		t.Fatal(err)
	}
	e.setRawRecord(t, bucketSystem, "jwt-signing", encodeV1(sys))
	e.setRawRecord(t, bucketSecrets, "junk", []byte{recordMagic, 9})

	list, err := e.v.List(ctx, operator)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	got := map[string]Meta{}
	for _, m := range list {
		got[m.Name] = m
	}
	for _, want := range []struct{ name, refused, tools string }{
		{"api", "", "tickets"}, {"db-pass", RefusedBadMAC, ""}, {"junk", RefusedUndecoded, ""}, {"wiki", "", "wiki"},
	} {
		m, ok := got[want.name]
		if !ok || m.Refused != want.refused || strings.Join(m.AllowedTools, ",") != want.tools {
			t.Errorf("List entry %s = %+v; want refused %q, tools %q", want.name, m, want.refused, want.tools)
		}
		if want.refused != "" && (m.Type != 0 || m.Version != 0 || m.Versions != nil) {
			t.Errorf("List entry %s gives metadata of a refused record: %+v", want.name, m)
		}
	}
	if len(list) != 4 {
		t.Errorf("List has %d entries, want 4", len(list))
	}
	if ev := e.lastEvent(t); ev.Action != "secret.list" || ev.Outcome != audit.OutcomeSuccess || ev.Details["refused"] != "2" {
		t.Errorf("list event = %s/%s %v; want success with 2 refused", ev.Action, ev.Outcome, ev.Details)
	}

	st, err := e.v.Status(ctx, operator)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	wantNamed := []string{"secret:db-pass: " + RefusedBadMAC, "secret:junk: " + RefusedUndecoded, "system key:jwt-signing: " + RefusedNoMAC}
	if st.Secrets != 2 || st.SystemKeys != 0 || st.Refused != 3 || strings.Join(st.RefusedRecords, "|") != strings.Join(wantNamed, "|") {
		t.Errorf("Status = %d secrets, %d system keys, %d refused %q; want 2, 0, 3 %q", st.Secrets, st.SystemKeys, st.Refused, st.RefusedRecords, wantNamed)
	}
	if ev := e.lastEvent(t); ev.Action != "vault.status" || ev.Details["refused"] != "3" {
		t.Errorf("status event = %s %v; want 3 refused", ev.Action, ev.Details)
	}
	// The way out still works.
	for _, name := range []string{"db-pass", "junk"} {
		if err := e.v.Delete(ctx, operator, name); err != nil {
			t.Errorf("Delete(%s): %v", name, err)
		}
	}
	if list, err := e.v.List(ctx, operator); err != nil || len(list) != 2 {
		t.Errorf("List after deleting the refused = %+v, %v", list, err)
	}
}

func TestDroppedNewestVersionRefused(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "api", TypeAPIKey, "old-compromised-key", "tickets")
	e.put(t, "api", TypeAPIKey, "middle-key", "tickets")
	e.put(t, "api", TypeAPIKey, "new-rotated-key", "tickets")
	rec, err := decodeRecord(e.rawRecord(t, bucketSecrets, "api"))
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []int{1, 2} {
		bad := rec.clone()
		bad.versions = bad.versions[:keep]
		e.setRawRecord(t, bucketSecrets, "api", bad.encode())
		val, err := e.v.ForTool(ctx, "tickets", "api")
		wantRefused(t, "ForTool after dropping the newest versions", val, err, errBadMAC, "api")
		ok, err := e.v.Verify(ctx, operator, "api", []byte("old-compromised-key"))
		if ok || !errors.Is(err, errBadMAC) {
			t.Errorf("Verify after dropping the newest versions = %v, %v; want a refusal", ok, err)
		}
	}
}

func TestRecordWithoutMACRefused(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "db-pass", TypePassword, "s3cr3t-db", "tickets")
	if _, err := e.v.SystemKey(ctx, "jwt-signing", func() ([]byte, error) { return []byte("signing-key"), nil }); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		bucket []byte
		name   string
		get    func() ([]byte, error)
	}{
		{bucketSecrets, "db-pass", func() ([]byte, error) { return e.v.ForTool(ctx, "tickets", "db-pass") }},
		{bucketSystem, "jwt-signing", func() ([]byte, error) { return e.v.SystemKey(ctx, "jwt-signing", nil) }},
	} {
		rec, err := decodeRecord(e.rawRecord(t, r.bucket, r.name))
		if err != nil {
			t.Fatal(err)
		}
		e.setRawRecord(t, r.bucket, r.name, encodeV1(rec))
		val, err := r.get()
		wantRefused(t, r.name+" without its MAC", val, err, errNoMAC, r.name)
	}
	// A system key refused is not silently replaced by a new one.
	key, err := e.v.SystemKey(ctx, "jwt-signing", func() ([]byte, error) { return []byte("replacement"), nil })
	wantRefused(t, "SystemKey with create", key, err, errNoMAC, "jwt-signing")
}

// TestWriteOverTamperedRecordRefused: a rotation, a put or a re-encryption
// reads the record it writes over through the same check, so it cannot
// give a tampered record a valid MAC.
func TestWriteOverTamperedRecordRefused(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "db-pass", TypePassword, "s3cr3t-db", "tickets")
	rec, err := decodeRecord(e.rawRecord(t, bucketSecrets, "db-pass"))
	if err != nil {
		t.Fatal(err)
	}
	rec.tools = []string{"evil", "tickets"}
	tampered := rec.encode()
	e.setRawRecord(t, bucketSecrets, "db-pass", tampered)

	if _, err := e.v.Rotate(ctx, operator, "db-pass", []byte("rotated")); !errors.Is(err, errBadMAC) {
		t.Errorf("Rotate over a tampered record: error = %v, want a refusal", err)
	}
	if _, err := e.v.Put(ctx, operator, PutRequest{Name: "db-pass", Type: TypePassword, Value: []byte("again"),
		AllowedTools: []string{"evil"}}); !errors.Is(err, errBadMAC) {
		t.Errorf("Put over a tampered record: error = %v, want a refusal", err)
	}
	if _, err := e.v.Rekey(ctx, operator, true); !errors.Is(err, errBadMAC) {
		t.Errorf("Rekey with re-encryption over a tampered record: error = %v, want a refusal", err)
	}
	if got := e.rawRecord(t, bucketSecrets, "db-pass"); !bytes.Equal(got, tampered) {
		t.Error("a write went over the tampered record")
	}
	val, err := e.v.ForTool(ctx, "evil", "db-pass")
	wantRefused(t, "ForTool(evil) after the writes", val, err, errBadMAC, "db-pass")

	// Delete is the way out, and a new put then works.
	if err := e.v.Delete(ctx, operator, "db-pass"); err != nil {
		t.Fatalf("Delete of a tampered record: %v", err)
	}
	e.put(t, "db-pass", TypePassword, "fresh", "tickets")
	if val, err := e.v.ForTool(ctx, "tickets", "db-pass"); err != nil || string(val) != "fresh" {
		t.Errorf("after delete and put: %q, %v", val, err)
	}
}

// stripAll rewrites every record of the closed database at path without its
// MAC and applies edit to the meta bucket, as an attacker with the file
// could.
func stripAll(t *testing.T, path string, edit func(meta *bolt.Bucket) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketSecrets, bucketSystem} {
			b := tx.Bucket(name)
			var keys, vals [][]byte
			err := b.ForEach(func(k, raw []byte) error {
				r, err := decodeRecord(raw)
				if err != nil {
					return err
				}
				if bytes.Equal(k, []byte("db-pass")) {
					r.tools = append(r.tools, "evil")
				}
				keys, vals = append(keys, bytes.Clone(k)), append(vals, encodeV1(r))
				return nil
			})
			if err != nil {
				return err
			}
			for i := range keys {
				if err := b.Put(keys[i], vals[i]); err != nil {
					return err
				}
			}
		}
		return edit(tx.Bucket(bucketMeta))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFormatMarkerChangedRefused: a database whose records carry a MAC
// cannot be made to look like one from before (marker set back, MACs
// stripped), which Open would upgrade, trusting what it finds.
func TestFormatMarkerChangedRefused(t *testing.T) {
	for _, marker := range []struct {
		name string
		set  func(meta *bolt.Bucket) error
	}{
		{"marker set back", func(meta *bolt.Bucket) error { return meta.Put(keyFormat, formatV1) }},
		{"marker removed", func(meta *bolt.Bucket) error { return meta.Delete(keyFormat) }},
	} {
		t.Run(marker.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			e.put(t, "db-pass", TypePassword, "s3cr3t-db", "tickets")
			if err := e.v.Close(); err != nil {
				t.Fatal(err)
			}
			stripAll(t, e.path, marker.set)
			before := fileSum(t, e.path)
			v, err := Open(context.Background(), e.path, e.key, Config{}, e.options())
			if err == nil {
				val, ferr := v.ForTool(context.Background(), "evil", "db-pass")
				v.Close()
				t.Fatalf("Open succeeded; ForTool(evil) = %q, %v", val, ferr)
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), e.path) {
				t.Errorf("Open error = %v, want ErrCorrupt naming the file", err)
			}
			if fileSum(t, e.path) != before {
				t.Error("the refused Open changed the file")
			}
		})
	}
}

// goldenEnv opens a copy of testdata/vault-format1.db, a database written
// before records carried a MAC (keyring terms 1 and 2; db-pass: password,
// versions 1 to 3, tools tickets; api: api_key, tools tickets and wiki;
// basic: basic, no tools; system key jwt-signing).
func goldenEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, Config{})
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	e.v = nil
	db, err := os.ReadFile(filepath.Join("testdata", "vault-format1.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.path, db, 0o600); err != nil {
		t.Fatal(err)
	}
	e.key = goldenKey(t)
	return e
}

func goldenKey(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "vault-format1.key"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := parseKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// upgrade runs Upgrade on the closed database of e, as `applianced vault
// upgrade` does, and fails the test on error.
func (e *env) upgrade(t *testing.T) UpgradeResult {
	t.Helper()
	res, err := Upgrade(context.Background(), e.path, e.key, operator, e.options())
	if err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	return res
}

// goldenValues are the current values in testdata/vault-format1.db.
var goldenValues = []struct{ tool, name, value string }{
	{"tickets", "db-pass", "db-pass-v3"},
	{"wiki", "api", "api-key-v1"},
	{"tickets", "api", "api-key-v1"},
}

// checkGolden checks that the vault holds what testdata/vault-format1.db
// held, every record now with a valid MAC and every version under term.
func checkGolden(t *testing.T, v *Vault, term uint32) {
	t.Helper()
	ctx := context.Background()
	for _, g := range goldenValues {
		val, err := v.ForTool(ctx, g.tool, g.name)
		if err != nil || string(val) != g.value {
			t.Errorf("ForTool(%s, %s) = %q, %v; want %q", g.tool, g.name, val, err, g.value)
		}
	}
	if val, err := v.ForTool(ctx, "wiki", "db-pass"); !errors.Is(err, ErrDenied) {
		t.Errorf("ForTool(wiki, db-pass) = %q, %v; want ErrDenied", val, err)
	}
	if val, err := v.ForInternal(ctx, "test", "basic"); err != nil || string(val) != "svc:basic-pw" {
		t.Errorf("basic = %q, %v", val, err)
	}
	if key, err := v.SystemKey(ctx, "jwt-signing", nil); err != nil || string(key) != "system-key-v1" {
		t.Errorf("system key = %q, %v", key, err)
	}
	m, err := v.Describe(ctx, "db-pass")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Versions) != 3 || m.Version != 3 || strings.Join(m.AllowedTools, ",") != "tickets" {
		t.Errorf("db-pass = %+v, want versions 1 to 3 and tools [tickets]", m)
	}
	for _, ver := range m.Versions {
		if ver.Term != term {
			t.Errorf("db-pass version %d is under term %d, want %d", ver.Version, ver.Term, term)
		}
	}
	err = v.db.View(func(tx *bolt.Tx) error {
		if f := tx.Bucket(bucketMeta).Get(keyFormat); !bytes.Equal(f, formatV2) {
			t.Errorf("format marker = %q, want %q", f, formatV2)
		}
		for _, b := range []struct {
			ns     byte
			bucket []byte
		}{{nsSecret, bucketSecrets}, {nsSystem, bucketSystem}} {
			err := tx.Bucket(b.bucket).ForEach(func(k, raw []byte) error {
				if _, err := checkedRecord(v.kr, b.ns, string(k), raw); err != nil {
					t.Errorf("after the upgrade: %v", err)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFormat1DatabaseUpgraded upgrades a database written before records
// carried a MAC: Upgrade does it once, audited, and it then opens and works
// as before, with a MAC on every record and every version under a new term.
func TestFormat1DatabaseUpgraded(t *testing.T) {
	e := goldenEnv(t)
	res := e.upgrade(t)
	if !res.Upgraded || res.Term != 3 || res.Records != 4 || res.Versions != 6 || len(res.NotUpgraded) != 0 {
		t.Errorf("Upgrade = %+v; want upgraded to term 3, 4 records, 6 versions", res)
	}
	e.reopen(t, Config{})
	checkGolden(t, e.v, 3)
	st, err := e.v.Status(context.Background(), operator)
	if err != nil {
		t.Fatal(err)
	}
	if st.Term != 3 || st.Terms != 3 || st.Secrets != 3 || st.SystemKeys != 1 || st.OldTermVersions != 0 {
		t.Errorf("status after the upgrade = %+v; want term 3 of 3, 3 secrets, 1 system key, all versions under term 3", st)
	}
	upgrades := func() []audit.Event {
		var out []audit.Event
		for _, ev := range e.events(t) {
			if ev.Action == "vault.upgrade" {
				out = append(out, ev)
			}
		}
		return out
	}
	ups := upgrades()
	if len(ups) != 1 || ups[0].Outcome != audit.OutcomeSuccess || ups[0].Details["records"] != "4" ||
		ups[0].Details["versions"] != "6" || ups[0].Details["not_upgraded"] != "0" ||
		ups[0].Source != "cli" || ups[0].Actor.UID == nil || *ups[0].Actor.UID != *operator.UID {
		t.Fatalf("upgrade events = %+v; want one success for 4 records and 6 versions", ups)
	}
	if _, ok := audit.LookupEventType(ups[0].Type); !ok {
		t.Errorf("event type %q is not in the audit catalogue", ups[0].Type)
	}

	// Later opens do not upgrade again, nor does Upgrade (it only
	// compacts), and writes keep working.
	e.reopen(t, Config{})
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	if res := e.upgrade(t); res.Upgraded {
		t.Errorf("a second Upgrade = %+v; want nothing upgraded", res)
	}
	e.reopen(t, Config{})
	if n := len(upgrades()); n != 1 {
		t.Errorf("%d upgrade events after a reopen, want 1", n)
	}
	checkGolden(t, e.v, 3)
	if _, err := e.v.Rotate(context.Background(), operator, "api", []byte("api-key-v2")); err != nil {
		t.Fatal(err)
	}
	if val, err := e.v.ForTool(context.Background(), "wiki", "api"); err != nil || string(val) != "api-key-v2" {
		t.Errorf("after a rotation: %q, %v", val, err)
	}
}

// TestFormat1RecordNotDecryptingStaysRefused: the upgrade leaves a record
// it cannot decrypt as it was (so it is refused, having no MAC) and
// upgrades the rest.
func TestFormat1RecordNotDecryptingStaysRefused(t *testing.T) {
	e := goldenEnv(t)
	db, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSecrets)
		r, err := decodeRecord(bytes.Clone(b.Get([]byte("api"))))
		if err != nil {
			return err
		}
		r = r.clone()
		r.current().ct[0] ^= 1
		return b.Put([]byte("api"), encodeV1(r))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if res := e.upgrade(t); len(res.NotUpgraded) != 1 || res.NotUpgraded[0] != "secret:api" {
		t.Errorf("Upgrade = %+v; want secret:api not upgraded", res)
	}
	e.reopen(t, Config{})
	val, err := e.v.ForTool(context.Background(), "tickets", "api")
	wantRefused(t, "the damaged record", val, err, errNoMAC, "api")
	if val, err := e.v.ForTool(context.Background(), "tickets", "db-pass"); err != nil || string(val) != "db-pass-v3" {
		t.Errorf("an intact record after the upgrade: %q, %v", val, err)
	}
	var up audit.Event
	for _, ev := range e.events(t) {
		if ev.Action == "vault.upgrade" {
			up = ev
		}
	}
	if up.Details["not_upgraded"] != "1" || up.Details["not_upgraded_names"] != "secret:api" {
		t.Errorf("upgrade event details = %v; want secret:api not upgraded", up.Details)
	}
}

// TestOldKeyringPutBackDoesNotDowngrade: after the upgrade, putting back
// the keyring from before it (as found in an older copy of the file),
// with the marker set back and the MACs stripped, makes a database Open
// refuses as written before records carried a MAC: it is neither upgraded
// again nor changed.
func TestOldKeyringPutBackDoesNotDowngrade(t *testing.T) {
	e := goldenEnv(t)
	var oldKeyring []byte
	db, err := bolt.Open(e.path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		oldKeyring = bytes.Clone(tx.Bucket(bucketMeta).Get(keyKeyring))
		return nil
	})
	db.Close()
	e.upgrade(t)
	e.reopen(t, Config{})
	if _, err := e.v.ForTool(context.Background(), "tickets", "db-pass"); err != nil {
		t.Fatal(err)
	}
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}

	stripAll(t, e.path, func(meta *bolt.Bucket) error {
		if err := meta.Put(keyFormat, formatV1); err != nil {
			return err
		}
		return meta.Put(keyKeyring, oldKeyring)
	})
	wantOldFormatRefused(t, e)
}

// wantOldFormatRefused checks that Open refuses the database of e as
// written before records carried a MAC, naming the upgrade verb, records
// the refusal, and leaves the file as it was.
func wantOldFormatRefused(t *testing.T, e *env) {
	t.Helper()
	before := fileSum(t, e.path)
	v, err := Open(context.Background(), e.path, e.key, Config{}, e.options())
	if err == nil {
		val, ferr := v.ForTool(context.Background(), "evil", "db-pass")
		v.Close()
		t.Fatalf("Open accepted a database written before records carried a MAC; ForTool(evil, db-pass) = %q, %v", val, ferr)
	}
	if !errors.Is(err, ErrOldFormat) || !strings.Contains(err.Error(), e.path) ||
		!strings.Contains(err.Error(), "`applianced vault upgrade`") || !strings.Contains(err.Error(), "older copy put back") {
		t.Errorf("Open error = %v; want ErrOldFormat naming the file, the upgrade verb and what to do with an older copy", err)
	}
	if fileSum(t, e.path) != before {
		t.Error("the refused Open changed the file")
	}
	if ev := e.lastEvent(t); ev.Type != "vault.unseal" || ev.Outcome != audit.OutcomeFailure || ev.Target != e.path ||
		!strings.Contains(ev.Reason, "not upgraded") {
		t.Errorf("last event = %s/%s/%s %q; want the refused unseal", ev.Type, ev.Outcome, ev.Target, ev.Reason)
	}
}

// TestTamperedBackupRefused: Restore checks every record's MAC, so a
// backup whose allowed_tools were edited is refused and nothing changes.
func TestTamperedBackupRefused(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "db-pass", TypePassword, "s3cr3t-db", "tickets")
	var backup bytes.Buffer
	if _, err := e.v.Backup(ctx, operator, &backup); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, backup.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSecrets)
		r, err := decodeRecord(bytes.Clone(b.Get([]byte("db-pass"))))
		if err != nil {
			return err
		}
		r.tools = append(r.tools, "evil")
		return b.Put([]byte("db-pass"), r.encode())
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	doctored, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	before := fileSum(t, e.path)
	_, err = e.v.Restore(ctx, operator, bytes.NewReader(doctored), nil)
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, errBadMAC) || !strings.Contains(err.Error(), `"db-pass"`) {
		t.Fatalf("Restore of a doctored backup: error = %v; want a refusal naming db-pass", err)
	}
	if fileSum(t, e.path) != before {
		t.Error("a refused restore changed the database")
	}
	if val, err := e.v.ForTool(ctx, "evil", "db-pass"); !errors.Is(err, ErrDenied) {
		t.Errorf("ForTool(evil) after the refused restore = %q, %v; want ErrDenied", val, err)
	}
}

// TestFormat1BackupRestoredIsUpgraded: a backup written before records
// carried a MAC is refused unless the operator asks for it; then it
// restores, upgraded and compacted as it goes in, and the result says so.
func TestFormat1BackupRestoredIsUpgraded(t *testing.T) {
	e := newEnv(t, Config{})
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	e.v = nil
	if err := os.Remove(e.path); err != nil {
		t.Fatal(err)
	}
	e.key = goldenKey(t)
	e.reopen(t, Config{})
	e.put(t, "replaced", TypePassword, "gone-after-restore")
	backup, err := os.ReadFile(filepath.Join("testdata", "vault-format1.db"))
	if err != nil {
		t.Fatal(err)
	}
	before := fileSum(t, e.path)
	if res, err := e.v.Restore(context.Background(), operator, bytes.NewReader(backup), nil); !errors.Is(err, ErrOldFormat) ||
		!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "--upgrade-old-format") {
		t.Fatalf("Restore of a format 1 backup without asking = %+v, %v; want ErrOldFormat naming --upgrade-old-format", res, err)
	}
	if fileSum(t, e.path) != before {
		t.Error("a refused restore changed the database")
	}
	if ev := e.lastEvent(t); ev.Action != "vault.restore" || ev.Outcome != audit.OutcomeDenied {
		t.Errorf("event of the refused restore = %s/%s, want vault.restore/denied", ev.Action, ev.Outcome)
	}
	if val, err := e.v.ForInternal(context.Background(), "test", "replaced"); err != nil || string(val) != "gone-after-restore" {
		t.Errorf("after the refused restore: %q, %v", val, err)
	}

	res, err := e.v.Restore(context.Background(), operator, bytes.NewReader(backup), &RestoreOptions{UpgradeOldFormat: true})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	var kinds []string
	for _, ev := range e.events(t) {
		if ev.Action == "vault.upgrade" || (ev.Action == "vault.restore" && ev.Outcome == audit.OutcomeSuccess) {
			kinds = append(kinds, ev.Action+"/"+ev.Details["of"]+"/"+ev.Details["upgraded"])
		}
	}
	if strings.Join(kinds, " ") != "vault.upgrade/backup/ vault.restore//true" {
		t.Errorf("events = %v; want the upgrade of the backup, then its restore marked upgraded", kinds)
	}
	if matches, _ := filepath.Glob(e.path + ".*tmp*"); len(matches) != 0 {
		t.Errorf("files left behind: %v", matches)
	}
	if !res.Upgraded || res.Term != 3 || res.Secrets != 3 || res.SystemKeys != 1 {
		t.Errorf("restore result = %+v; want upgraded, term 3, 3 secrets and 1 system key", res)
	}
	checkGolden(t, e.v, 3)
	e.reopen(t, Config{})
	checkGolden(t, e.v, 3)
}

// TestRestoreFormat1BackupWhileReading restores a backup from before
// records carried a MAC while readers keep going: each read answers the
// value before or after the restore, never an error.
func TestRestoreFormat1BackupWhileReading(t *testing.T) {
	e := newEnv(t, Config{})
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	e.v = nil
	if err := os.Remove(e.path); err != nil {
		t.Fatal(err)
	}
	e.key = goldenKey(t)
	e.reopen(t, Config{})
	ctx := context.Background()
	e.put(t, "db-pass", TypePassword, "before-restore", "tickets")
	backup, err := os.ReadFile(filepath.Join("testdata", "vault-format1.db"))
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	for g := 0; g < 4; g++ {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				val, err := e.v.ForTool(ctx, "tickets", "db-pass")
				if err != nil || (string(val) != "before-restore" && string(val) != "db-pass-v3") {
					t.Errorf("ForTool during the restore = %q, %v", val, err)
					return
				}
				reads.Add(1)
			}
		})
	}
	// waitReads lets the readers do n more reads (or gives up after a
	// while, when they stopped on an error).
	waitReads := func(n int64) {
		for until, end := reads.Load()+n, time.Now().Add(5*time.Second); reads.Load() < until && time.Now().Before(end); {
			runtime.Gosched()
		}
	}
	waitReads(100)
	_, err = e.v.Restore(ctx, operator, bytes.NewReader(backup), &RestoreOptions{UpgradeOldFormat: true})
	waitReads(100)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	checkGolden(t, e.v, 3)
}

// TestFormat1UpgradeNotAuditedNotDone: the upgrade is audited before it
// commits; when the journal refuses the event, Upgrade fails and the file
// is left as it was.
func TestFormat1UpgradeNotAuditedNotDone(t *testing.T) {
	e := goldenEnv(t)
	before := fileSum(t, e.path)
	opts := e.options()
	opts.Audit = closedJournal(t)
	if res, err := Upgrade(context.Background(), e.path, e.key, operator, opts); !errors.Is(err, ErrAudit) {
		t.Errorf("Upgrade without an audit journal = %+v, %v; want ErrAudit", res, err)
	}
	if fileSum(t, e.path) != before {
		t.Error("the database changed although its upgrade was not audited")
	}
	e.upgrade(t)
	e.reopen(t, Config{})
	checkGolden(t, e.v, 3)
}
