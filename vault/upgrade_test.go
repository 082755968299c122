package vault

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
)

// The upgrade of a database written before records carried a MAC is an
// action run on purpose, once: Open never upgrades, so a pre-upgrade copy
// put back later (with its records edited) is refused instead of being
// trusted again, and the upgraded file keeps nothing of the format 1 state
// in the pages bbolt freed.

// upgradeEvents counts the successful vault.upgrade events of e's journal.
func upgradeEvents(t *testing.T, e *env) int {
	t.Helper()
	n := 0
	for _, ev := range e.events(t) {
		if ev.Action == "vault.upgrade" && ev.Outcome == audit.OutcomeSuccess {
			n++
		}
	}
	return n
}

// TestFormat1DatabaseNotOpened: Open refuses a format 1 database as it
// finds it, and the message says to run the upgrade.
func TestFormat1DatabaseNotOpened(t *testing.T) {
	e := goldenEnv(t)
	wantOldFormatRefused(t, e)
	if n := upgradeEvents(t, e); n != 0 {
		t.Errorf("%d upgrade events, want none", n)
	}
}

// TestPreUpgradeCopyPutBackRefused: someone who can write vault.db puts
// back a copy taken before the upgrade (a backup the README told the admin
// to make), with a tool added to a secret's allowed_tools. Its keyring,
// marker and records all say format 1. Open refuses it; it is not
// upgraded again.
func TestPreUpgradeCopyPutBackRefused(t *testing.T) {
	e := goldenEnv(t)
	preUpgrade, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	e.upgrade(t)
	e.reopen(t, Config{})
	e.put(t, "written-after", TypePassword, "new-secret", "tickets")
	if err := e.v.Close(); err != nil {
		t.Fatal(err)
	}
	e.v = nil

	if err := os.WriteFile(e.path, preUpgrade, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(e.path, 0o600, nil)
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
		return b.Put([]byte("db-pass"), encodeV1(r))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	wantOldFormatRefused(t, e)
	if n := upgradeEvents(t, e); n != 1 {
		t.Errorf("%d upgrade events, want the one of the real upgrade", n)
	}
}

// makeFormat1 writes at e.path a copy of testdata/vault-format1.db with n
// more secrets, as the earlier release wrote them (record format 1, sealed
// under the active term of its format 1 keyring), and returns the stored
// bytes of each added record and the sealed keyring.
func makeFormat1(t testing.TB, e *env, n int) (records [][]byte, sealedKeyring []byte) {
	t.Helper()
	db, err := bolt.Open(e.path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		sealedKeyring = bytes.Clone(tx.Bucket(bucketMeta).Get(keyKeyring))
		kr, err := openKeyring(e.key, sealedKeyring)
		if err != nil {
			return err
		}
		defer kr.wipe()
		if kr.format != keyringFormatV1 {
			return fmt.Errorf("keyring format %d, want 1", kr.format)
		}
		b := tx.Bucket(bucketSecrets)
		now := time.Now()
		for i := range n {
			name := fmt.Sprintf("bulk-%04d", i)
			ver, err := seal(kr.activeTerm(), nsSecret, name, TypePassword, 1, []byte("value-"+name), now)
			if err != nil {
				return err
			}
			r := &record{format: recordFormatV1, typ: TypePassword, created: now.UnixNano(), rotated: now.UnixNano(),
				tools: []string{"tickets"}, versions: []version{ver}}
			raw := encodeV1(r)
			records = append(records, raw)
			if err := b.Put([]byte(name), raw); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return records, sealedKeyring
}

// leftovers counts the format 1 records and keyring still in the file.
func leftovers(t testing.TB, path string, records [][]byte, sealedKeyring []byte) (recs int, keyring bool) {
	t.Helper()
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range records {
		if bytes.Contains(file, r) {
			recs++
		}
	}
	return recs, bytes.Contains(file, sealedKeyring)
}

// TestUpgradeLeavesNoFormat1State: after the upgrade, the file holds none
// of the format 1 records nor the format 1 keyring, not even in pages bbolt
// freed, from which a format 1 database could be put together again.
func TestUpgradeLeavesNoFormat1State(t *testing.T) {
	e := goldenEnv(t)
	records, sealed := makeFormat1(t, e, 300)
	if recs, kr := leftovers(t, e.path, records, sealed); recs != len(records) || !kr {
		t.Fatalf("before the upgrade: %d of %d records and keyring %v found; the search does not work", recs, len(records), kr)
	}
	res := e.upgrade(t)
	if res.Records != 304 || res.BytesAfter <= 0 {
		t.Errorf("Upgrade = %+v; want 304 records", res)
	}
	if recs, kr := leftovers(t, e.path, records, sealed); recs != 0 || kr {
		t.Errorf("after the upgrade the file still holds %d of %d format 1 records; format 1 keyring: %v", recs, len(records), kr)
	}
	if _, err := os.Stat(e.path + compactSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the compaction's file is left behind: %v", err)
	}
	st, err := os.Stat(e.path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("the database after the upgrade: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	e.reopen(t, Config{})
	checkGolden(t, e.v, 3)
	for _, i := range []int{0, 299} {
		name := fmt.Sprintf("bulk-%04d", i)
		if val, err := e.v.ForTool(context.Background(), "tickets", name); err != nil || string(val) != "value-"+name {
			t.Errorf("ForTool(%s) = %q, %v", name, val, err)
		}
	}
}

// TestUpgradeRefusedWhileOpen: Upgrade holds the file's lock; a running
// daemon holds it too, so Upgrade fails and nothing changes.
func TestUpgradeRefusedWhileOpen(t *testing.T) {
	e := newEnv(t, Config{})
	e.put(t, "db-pass", TypePassword, "s3cr3t-db", "tickets")
	before := fileSum(t, e.path)
	if res, err := Upgrade(context.Background(), e.path, e.key, operator, e.options()); err == nil || !strings.Contains(err.Error(), "locked") {
		t.Errorf("Upgrade of an open database = %+v, %v; want a refusal saying it is locked", res, err)
	}
	if fileSum(t, e.path) != before {
		t.Error("the refused Upgrade changed the file")
	}
}

// The kill test re-runs this test binary as a child that upgrades a large
// format 1 database; the parent SIGKILLs it at a random moment, most often
// after the upgrade committed, while the file is compacted.
const upgradeCrashEnv = "APPLIANCED_VAULT_UPGRADE_CRASH_DIR"

// upgradeCrashChild upgrades dir/vault.db with the key dir/master.key,
// logging to stdout (the parent waits for the upgrade's line).
func upgradeCrashChild(dir string) int {
	key, _, err := LoadMasterKey(Config{MasterKeyFile: filepath.Join(dir, "master.key")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	j, err := audit.Open(filepath.Join(dir, "journal"), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer j.Close()
	_, _ = os.Stdout.WriteString("ready\n")
	_, err = Upgrade(context.Background(), filepath.Join(dir, DefaultFile), key, audit.Actor{},
		&Options{Audit: j, Logger: slog.New(slog.NewTextHandler(os.Stdout, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_, _ = os.Stdout.WriteString("done\n")
	return 0
}

// TestUpgradeKilled: a SIGKILL at any moment of the upgrade and its
// compaction leaves a database that is either still format 1 (Open
// refuses it; the upgrade, run again, completes) or upgraded with every
// secret; running the upgrade again then compacts it, so no format 1 state
// survives and no temporary file is left.
func TestUpgradeKilled(t *testing.T) {
	const secrets = 3000
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	runs, midCompaction, beforeCommit := 16, 0, 0
	for run := range runs {
		e := goldenEnv(t)
		records, sealed := makeFormat1(t, e, secrets)
		if err := os.WriteFile(filepath.Join(filepath.Dir(e.path), "master.key"), e.key, 0o400); err != nil {
			t.Fatal(err)
		}
		// The child uses the journal in the state directory.
		state := filepath.Dir(e.path)
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), upgradeCrashEnv+"="+state)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		early := run%4 == 0 // some kills land before the commit
		var delay time.Duration
		for sc.Scan() {
			line := sc.Text()
			if early && line == "ready" {
				delay = time.Duration(rng.IntN(30)) * time.Millisecond
				break
			}
			if strings.Contains(line, "vault: upgraded") {
				delay = time.Duration(rng.IntN(8000)) * time.Microsecond
				break
			}
			if line == "done" {
				break
			}
		}
		time.Sleep(delay)
		_ = cmd.Process.Kill()
		go func() {
			for sc.Scan() { // drain
			}
		}()
		_ = cmd.Wait()

		_, tmpErr := os.Stat(e.path + compactSuffix)
		v, err := Open(context.Background(), e.path, e.key, Config{}, e.options())
		switch {
		case errors.Is(err, ErrOldFormat):
			beforeCommit++
		case err != nil:
			t.Fatalf("run %d: after SIGKILL the database does not open: %v (child: %s)", run, err, stderr.String())
		default:
			if tmpErr == nil {
				midCompaction++
			}
			for _, i := range []int{0, secrets - 1} {
				name := fmt.Sprintf("bulk-%04d", i)
				if val, err := v.ForTool(context.Background(), "tickets", name); err != nil || string(val) != "value-"+name {
					t.Errorf("run %d: after SIGKILL ForTool(%s) = %q, %v", run, name, val, err)
				}
			}
			v.Close()
		}
		e.upgrade(t)
		if recs, kr := leftovers(t, e.path, records, sealed); recs != 0 || kr {
			t.Errorf("run %d: after the upgrade ran again the file holds %d format 1 records; keyring: %v", run, recs, kr)
		}
		if _, err := os.Stat(e.path + compactSuffix); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run %d: the compaction's file is left behind: %v", run, err)
		}
		e.reopen(t, Config{})
		checkGolden(t, e.v, 3)
	}
	t.Logf("%d runs: %d killed before the commit, %d killed during the compaction", runs, beforeCommit, midCompaction)
	if midCompaction == 0 {
		t.Errorf("no kill landed during the compaction: the test did not exercise it")
	}
}
