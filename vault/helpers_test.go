package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
)

// env is one vault under test with its real audit journal and a capture of
// everything it logged.
type env struct {
	dir     string
	path    string
	key     []byte
	journal *audit.Journal
	logs    *syncBuffer
	v       *Vault
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

var operator = func() audit.Actor { uid := 0; return audit.Actor{UID: &uid, PID: 4242} }()

func randomKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, MasterKeySize)
	if _, err := io.ReadFull(rand.Reader, k); err != nil {
		t.Fatal(err)
	}
	return k
}

// newEnv opens a vault in a fresh directory. The vault and the journal are
// closed, and the database checked with bbolt's consistency check, at the
// end of the test.
func newEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{dir: dir, path: filepath.Join(dir, "state", DefaultFile), key: randomKey(t), logs: &syncBuffer{}}
	j, err := audit.Open(filepath.Join(dir, "journal"), nil)
	if err != nil {
		t.Fatalf("audit.Open: %v", err)
	}
	e.journal = j
	t.Cleanup(func() { j.Close() })
	e.reopen(t, cfg)
	return e
}

// reopen (re)opens the vault of e with its key.
func (e *env) reopen(t testing.TB, cfg Config) {
	t.Helper()
	if e.v != nil {
		if err := e.v.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	v, err := Open(context.Background(), e.path, e.key, cfg, e.options())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	e.v = v
	t.Cleanup(func() {
		v.Close()
		checkConsistency(t, e.path)
	})
}

func (e *env) options() *Options {
	return &Options{
		Audit:     e.journal,
		Logger:    slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		KeySource: "file:test",
	}
}

// checkConsistency runs bbolt's consistency check on a closed database.
func checkConsistency(t testing.TB, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Errorf("consistency check: opening %s: %v", path, err)
		return
	}
	defer db.Close()
	if err := checkDB(db); err != nil {
		t.Errorf("consistency check of %s: %v", path, err)
	}
}

// events returns every event in the journal so far.
func (e *env) events(t testing.TB) []audit.Event {
	t.Helper()
	r, err := e.journal.Reader(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []audit.Event
	last := e.journal.LastSeq()
	for uint64(len(out)) < last {
		ent, err := r.Next(context.Background())
		if err != nil {
			t.Fatalf("reading the journal: %v", err)
		}
		out = append(out, ent.Event)
	}
	return out
}

// lastEvent returns the newest event in the journal.
func (e *env) lastEvent(t testing.TB) audit.Event {
	t.Helper()
	evs := e.events(t)
	if len(evs) == 0 {
		t.Fatal("the journal is empty")
	}
	return evs[len(evs)-1]
}

// put stores a secret or fails the test.
func (e *env) put(t testing.TB, name string, typ Type, value string, tools ...string) Meta {
	t.Helper()
	m, err := e.v.Put(context.Background(), operator, PutRequest{Name: name, Type: typ, Value: []byte(value), AllowedTools: tools})
	if err != nil {
		t.Fatalf("Put(%s): %v", name, err)
	}
	return m
}

// rawRecord returns the stored bytes of a secret.
func (e *env) rawRecord(t testing.TB, bucket []byte, name string) []byte {
	t.Helper()
	var out []byte
	err := e.v.db.View(func(tx *bolt.Tx) error {
		out = bytes.Clone(tx.Bucket(bucket).Get([]byte(name)))
		return nil
	})
	if err != nil || out == nil {
		t.Fatalf("reading record %q: %v", name, err)
	}
	return out
}

// setRawRecord overwrites the stored bytes of a secret, as an attacker with
// write access to the file could.
func (e *env) setRawRecord(t testing.TB, bucket []byte, name string, raw []byte) {
	t.Helper()
	err := e.v.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(name), raw) })
	if err != nil {
		t.Fatal(err)
	}
}

// closedJournal is a journal that has stopped accepting events: the real
// journal, closed.
func closedJournal(t testing.TB) audit.Appender {
	t.Helper()
	j, err := audit.Open(filepath.Join(t.TempDir(), "journal"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(context.Background(), &audit.Event{Type: "daemon.start", Outcome: audit.OutcomeSuccess}); err == nil {
		t.Fatal("a closed journal accepted an event")
	}
	return j
}

// testKeyPair makes a self-signed client certificate and its key, PEM.
func testKeyPair(t testing.TB) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "applianced-client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func tlsJSON(cert, key []byte) string {
	b, _ := json.Marshal(TLSClient{Cert: string(cert), Key: string(key)})
	return string(b)
}
