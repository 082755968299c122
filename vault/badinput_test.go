package vault

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
)

func TestPutRefusesBadInput(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "existing", TypePassword, "pw")
	cert, key := testKeyPair(t)
	otherCert, _ := testKeyPair(t)
	tests := []struct {
		name    string
		req     PutRequest
		wantMsg string
	}{
		{"empty value", PutRequest{Name: "a", Type: TypePassword}, "empty value"},
		{"value over 64 KiB", PutRequest{Name: "a", Type: TypeOpaque, Value: make([]byte, MaxValueSize+1)}, "over the limit"},
		{"unknown type", PutRequest{Name: "a", Type: Type(99), Value: []byte("x")}, "unknown secret type"},
		{"system type", PutRequest{Name: "a", Type: typeSystem, Value: []byte("x")}, "unknown secret type"},
		{"name with slash", PutRequest{Name: "a/b", Type: TypePassword, Value: []byte("x")}, "'/'"},
		{"name with newline", PutRequest{Name: "a\nb", Type: TypePassword, Value: []byte("x")}, "'\\n'"},
		{"name with NUL", PutRequest{Name: "a\x00", Type: TypePassword, Value: []byte("x")}, "'\\x00'"},
		{"name with space", PutRequest{Name: "a b", Type: TypePassword, Value: []byte("x")}, "' '"},
		{"name with escape", PutRequest{Name: "a\x1b[31m", Type: TypePassword, Value: []byte("x")}, "'\\x1b'"},
		{"name starting with a dot", PutRequest{Name: ".hidden", Type: TypePassword, Value: []byte("x")}, "starting with a letter or digit"},
		{"empty name", PutRequest{Name: "", Type: TypePassword, Value: []byte("x")}, "empty name"},
		{"long name", PutRequest{Name: strings.Repeat("a", maxNameLen+1), Type: TypePassword, Value: []byte("x")}, "longer than"},
		{"password with a newline", PutRequest{Name: "a", Type: TypePassword, Value: []byte("pw\n")}, "control characters"},
		{"api key with CR", PutRequest{Name: "a", Type: TypeAPIKey, Value: []byte("k\rX-Injected: 1")}, "control characters"},
		{"basic missing password", PutRequest{Name: "a", Type: TypeBasic, Value: []byte(`{"user":"u"}`)}, "missing or empty field(s): password"},
		{"basic empty object", PutRequest{Name: "a", Type: TypeBasic, Value: []byte(`{}`)}, "user, password"},
		{"basic user with colon", PutRequest{Name: "a", Type: TypeBasic, Value: []byte(`{"user":"u:x","password":"p"}`)}, "colon"},
		{"basic unknown field", PutRequest{Name: "a", Type: TypeBasic, Value: []byte(`{"user":"u","password":"p","pasword":"p"}`)}, `unknown field "pasword"`},
		{"basic not JSON", PutRequest{Name: "a", Type: TypeBasic, Value: []byte(`hunter2`)}, "not a JSON object"},
		{"basic two objects", PutRequest{Name: "a", Type: TypeBasic, Value: []byte(`{"user":"u","password":"p"}{}`)}, "trailing data"},
		{"basic wrong JSON type", PutRequest{Name: "a", Type: TypeBasic, Value: []byte(`{"user":1,"password":"p"}`)}, "wrong JSON type"},
		{"oauth2 missing token_url", PutRequest{Name: "a", Type: TypeOAuth2Client, Value: []byte(`{"client_id":"c","client_secret":"s"}`)}, "token_url"},
		{"oauth2 relative token_url", PutRequest{Name: "a", Type: TypeOAuth2Client, Value: []byte(`{"client_id":"c","client_secret":"s","token_url":"/token"}`)}, "absolute http(s) URL"},
		{"oauth2 bad scope", PutRequest{Name: "a", Type: TypeOAuth2Client, Value: []byte(`{"client_id":"c","client_secret":"s","token_url":"https://i/t","scopes":["a b"]}`)}, "scopes[0]"},
		{"tls missing key", PutRequest{Name: "a", Type: TypeTLSClient, Value: []byte(`{"cert":"x"}`)}, "missing or empty field(s): key"},
		{"tls not PEM", PutRequest{Name: "a", Type: TypeTLSClient, Value: []byte(`{"cert":"x","key":"y"}`)}, "do not make a key pair"},
		{"tls mismatched pair", PutRequest{Name: "a", Type: TypeTLSClient, Value: []byte(tlsJSON(otherCert, key))}, "do not make a key pair"},
		{"bad allowed tool", PutRequest{Name: "a", Type: TypePassword, Value: []byte("x"), AllowedTools: []string{"ok", "bad/tool"}}, "allowed tool"},
		{"too many tools", PutRequest{Name: "a", Type: TypePassword, Value: []byte("x"), AllowedTools: manyTools(maxTools + 1)}, "allowed tools"},
		{"type change of an existing secret", PutRequest{Name: "existing", Type: TypeAPIKey, Value: []byte("x")}, "delete it first"},
	}
	_ = cert
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.events(t))
			_, err := e.v.Put(ctx, operator, tt.req)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Put error = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Put error = %q, want it to say %q", err, tt.wantMsg)
			}
			if len(tt.req.Value) >= 4 && len(tt.req.Value) < 200 && bytes.Contains([]byte(err.Error()), tt.req.Value) {
				t.Errorf("the error quotes the value: %q", err)
			}
			evs := e.events(t)
			if len(evs) != before+1 || evs[before].Outcome != audit.OutcomeDenied || evs[before].Type != "secret.put" {
				t.Errorf("want one secret.put denied event, got %+v", evs[before:])
			}
			list, err := e.v.List(ctx, operator)
			if err != nil || len(list) != 1 || list[0].Name != "existing" || list[0].Version != 1 || list[0].Type != TypePassword {
				t.Errorf("after a refused put the vault holds %+v, %v", list, err)
			}
		})
	}
}

func manyTools(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "tool" + strings.Repeat("x", i)
	}
	return out
}

func TestStructuredValuesAreStoredInTheirInjectionForm(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	cert, key := testKeyPair(t)
	tests := []struct {
		name  string
		typ   Type
		in    string
		want  string
		check string // an equivalent spelling Verify must accept
	}{
		{"basic", TypeBasic, `{"user":"svc","password":"p:w d"}`, "svc:p:w d", `{ "password": "p:w d", "user": "svc" }`},
		{"oauth2", TypeOAuth2Client, `{"token_url":"https://idp.example/t","client_secret":"s","client_id":"c","scopes":["a","b"],"audience":"api"}`,
			`{"client_id":"c","client_secret":"s","token_url":"https://idp.example/t","scopes":["a","b"],"audience":"api"}`, ""},
		{"tls", TypeTLSClient, tlsJSON(cert, key), strings.TrimRight(string(cert), "\n") + "\n" + string(key), ""},
		{"opaque", TypeOpaque, "\x00\xff\n", "\x00\xff\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.put(t, tt.name, tt.typ, tt.in, "tool")
			got, err := e.v.ForTool(ctx, "tool", tt.name)
			if err != nil || string(got) != tt.want {
				t.Fatalf("ForTool = %q, %v; want %q", got, err, tt.want)
			}
			for _, cand := range []string{tt.in, tt.check} {
				if cand == "" {
					continue
				}
				ok, err := e.v.Verify(ctx, operator, tt.name, []byte(cand))
				if err != nil || !ok {
					t.Errorf("Verify(%.30q) = %v, %v; want a match", cand, ok, err)
				}
			}
		})
	}
}

func TestVerifyAndRotateRefuseBadInput(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	e.put(t, "b", TypeBasic, `{"user":"u","password":"p"}`)
	if _, err := e.v.Rotate(ctx, operator, "missing", []byte("x")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Rotate of a missing secret: %v, want ErrNotFound", err)
	}
	if _, err := e.v.Rotate(ctx, operator, "b", []byte(`{"user":"u"}`)); !errors.Is(err, ErrInvalid) {
		t.Errorf("Rotate with a missing field: %v, want ErrInvalid", err)
	}
	if _, err := e.v.Rotate(ctx, operator, "b", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Rotate with an empty value: %v, want ErrInvalid", err)
	}
	if _, err := e.v.Verify(ctx, operator, "b/../x", []byte("x")); !errors.Is(err, ErrInvalid) {
		t.Errorf("Verify of a bad name: %v, want ErrInvalid", err)
	}
	if ok, err := e.v.Verify(ctx, operator, "b", []byte(`{"user":"u","password":"q"}`)); err != nil || ok {
		t.Errorf("Verify of a wrong candidate = %v, %v; want no match", ok, err)
	}
	if _, err := e.v.ForTool(ctx, "bad tool", "b"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ForTool with a bad tool name: %v, want ErrInvalid", err)
	}
	if _, err := e.v.ForInternal(ctx, "", "b"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ForInternal without a label: %v, want ErrInvalid", err)
	}
	if _, err := e.v.PutSystemKey(ctx, operator, "k", nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("PutSystemKey with an empty key: %v, want ErrInvalid", err)
	}
	m, _ := e.v.Describe(ctx, "b")
	if m.Version != 1 {
		t.Errorf("version after refused rotations = %d, want 1", m.Version)
	}
}

func TestKeepVersions(t *testing.T) {
	e := newEnv(t, Config{KeepVersions: 3})
	ctx := context.Background()
	e.put(t, "s", TypePassword, "v1")
	for i := 2; i <= 7; i++ {
		if _, err := e.v.Rotate(ctx, operator, "s", []byte("v"+string(rune('0'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	m, _ := e.v.Describe(ctx, "s")
	var got []uint64
	for _, ver := range m.Versions {
		got = append(got, ver.Version)
	}
	if m.Version != 7 || len(got) != 3 || got[0] != 5 || got[2] != 7 {
		t.Errorf("versions = %v (current %d), want [5 6 7] (current 7)", got, m.Version)
	}
	val, _ := e.v.ForInternal(ctx, "test", "s")
	if string(val) != "v7" {
		t.Errorf("current value = %q, want v7", val)
	}
	// A reload to keep_versions = 1 applies from the next write.
	if err := e.v.Reconfigure(Config{KeepVersions: 1}); err != nil {
		t.Fatal(err)
	}
	if err := e.v.Reconfigure(Config{KeepVersions: -1}); err == nil {
		t.Error("Reconfigure accepted keep_versions = -1")
	}
	m, err := e.v.Rotate(ctx, operator, "s", []byte("v8"))
	if err != nil || len(m.Versions) != 1 || m.Version != 8 {
		t.Errorf("after reconfigure: %+v, %v; want only version 8", m.Versions, err)
	}
}

// TestCorruptedDatabase opens damaged files: each gives an error that wraps
// ErrCorrupt and names the file, and nothing panics.
func TestCorruptedDatabase(t *testing.T) {
	good := newEnv(t, Config{})
	for i := 0; i < 30; i++ {
		good.put(t, "s"+strings.Repeat("x", i), TypePassword, strings.Repeat("v", 100+i*50), "tool")
	}
	if err := good.v.Close(); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(good.path)
	if err != nil {
		t.Fatal(err)
	}
	notVault := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(notVault, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("unrelated")); return err })
	db.Close()
	otherBytes, _ := os.ReadFile(notVault)

	rng := rand.New(rand.NewPCG(1, 2))
	garbage := make([]byte, 64<<10)
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	zeroMeta := bytes.Clone(orig)
	clear(zeroMeta[:8192])
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"random bytes", garbage, "no valid bbolt meta"},
		{"a text file", []byte("[vault]\nkeep_versions = 5\n"), "no valid bbolt meta"},
		{"truncated to half", orig[:len(orig)/2], "truncated"},
		{"truncated to two pages", orig[:8192], "truncated"},
		{"meta pages zeroed", zeroMeta, "no valid bbolt meta"},
		{"a bbolt file that is not a vault", otherBytes, "not a vault database"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vault.db")
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			v, err := Open(context.Background(), path, good.key, Config{}, good.options())
			if err == nil {
				v.Close()
				t.Fatal("Open of a damaged file succeeded")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open error = %v, want ErrCorrupt naming %s and saying %q", err, path, tt.want)
			}
		})
	}

	t.Run("damaged keyring with the right key", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "vault.db")
		if err := os.WriteFile(path, orig, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = db.Update(func(tx *bolt.Tx) error {
			kr := bytes.Clone(tx.Bucket(bucketMeta).Get(keyKeyring))
			kr[len(kr)-1] ^= 1
			return tx.Bucket(bucketMeta).Put(keyKeyring, kr)
		})
		db.Close()
		_, err = Open(context.Background(), path, good.key, Config{}, good.options())
		if !errors.Is(err, ErrCorrupt) || errors.Is(err, ErrSealed) || !strings.Contains(err.Error(), "master key is right") {
			t.Errorf("Open error = %v, want ErrCorrupt saying the key is right", err)
		}
		_, err = Open(context.Background(), path, randomKey(t), Config{}, good.options())
		if !errors.Is(err, ErrSealed) {
			t.Errorf("Open with a wrong key: %v, want ErrSealed", err)
		}
	})

	// Random damage anywhere: Open either refuses with a clear error or
	// opens, and then every read answers without a panic.
	t.Run("random byte damage", func(t *testing.T) {
		dir := t.TempDir()
		seed := uint64(time.Now().UnixNano())
		if s, err := strconv.ParseUint(os.Getenv("VAULT_DAMAGE_SEED"), 10, 64); err == nil {
			seed = s // to replay a failure
		}
		t.Logf("damage seed %d (replay with VAULT_DAMAGE_SEED)", seed)
		rng := rand.New(rand.NewPCG(seed, 3))
		for i := 0; i < 300; i++ {
			data := bytes.Clone(orig)
			for n := 1 + rng.IntN(8); n > 0; n-- {
				data[rng.IntN(len(data))] ^= byte(1 + rng.IntN(255))
			}
			path := filepath.Join(dir, "vault.db")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			v, err := Open(context.Background(), path, good.key, Config{}, good.options())
			if err != nil {
				if os.Getenv("VAULT_DAMAGE_SEED") != "" {
					t.Logf("damage %d: %v", i, err)
				}
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrSealed) || !strings.Contains(err.Error(), path) {
					t.Fatalf("damage %d: Open error = %v, want ErrCorrupt or ErrSealed naming the file", i, err)
				}
				continue
			}
			_, _ = v.List(context.Background(), operator)
			_, _ = v.Status(context.Background(), operator)
			for j := 0; j < 30; j++ {
				_, _ = v.ForTool(context.Background(), "tool", "s"+strings.Repeat("x", j))
			}
			v.Close()
		}
	})
}

func TestDatabaseLockedByAnotherOpen(t *testing.T) {
	e := newEnv(t, Config{})
	_, err := Open(context.Background(), e.path, e.key, Config{}, e.options())
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Errorf("second Open: error = %v, want a lock error", err)
	}
}
