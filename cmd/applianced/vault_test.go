package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

// goldenVault is a vault written by the release before records carried a
// MAC, and its master key (the vault package's test data): secrets
// db-pass, api and basic, system key jwt-signing.
var goldenVault = struct{ db, key string }{
	filepath.Join("..", "..", "vault", "testdata", "vault-format1.db"),
	filepath.Join("..", "..", "vault", "testdata", "vault-format1.key"),
}

func readGolden(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runVerb runs one verb in-process with the config at cfgPath and returns
// its exit code and everything it printed.
func runVerb(t testing.TB, cfgPath string, args ...string) (int, string) {
	t.Helper()
	var out, errOut strings.Builder
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut, getenv: func(string) string { return "" }}
	code := run(context.Background(), e, append(args, "--config", cfgPath))
	return code, out.String() + errOut.String()
}

// journalEvents reads every event of the journal in the state dir of cfg.
func journalEvents(t testing.TB, cfg *config.File) []audit.Event {
	t.Helper()
	j, err := audit.Open(filepath.Join(cfg.Server.StateDir, "audit"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	r, err := j.Reader(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []audit.Event
	for uint64(len(out)) < j.LastSeq() {
		ent, err := r.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ent.Event)
	}
	return out
}

// TestVaultUpgradeVerb: the daemon refuses a vault from before records
// carried a MAC, naming the command; `vault upgrade` upgrades it once,
// recorded in the journal by the admin's uid, and the daemon then opens it.
func TestVaultUpgradeVerb(t *testing.T) {
	dir := t.TempDir()
	cfgPath := vaultConfig(t, dir, readGolden(t, goldenVault.key))
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.Server.StateDir, vault.DefaultFile)
	if err := os.WriteFile(dbPath, readGolden(t, goldenVault.db), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	d, bg := newTestDaemon(t, ctx, cfg)
	err = d.openVault(ctx, bg)
	if !errors.Is(err, vault.ErrOldFormat) || !strings.Contains(err.Error(), "applianced vault upgrade --config "+cfgPath) {
		t.Fatalf("openVault of a vault from before record MACs: %v; want ErrOldFormat naming `applianced vault upgrade --config %s`", err, cfgPath)
	}
	d.close()

	code, out := runVerb(t, cfgPath, "vault", "upgrade")
	if code != exitOK || !strings.Contains(out, "upgraded: 4 records and 6 versions") || !strings.Contains(out, "trusted as found") ||
		!strings.Contains(out, "compacted") {
		t.Fatalf("vault upgrade: exit %d\n%s", code, out)
	}
	var ups []audit.Event
	for _, ev := range journalEvents(t, cfg) {
		if ev.Action == "vault.upgrade" {
			ups = append(ups, ev)
		}
	}
	if len(ups) != 1 || ups[0].Outcome != audit.OutcomeSuccess || ups[0].Source != "cli" || ups[0].Actor.UID == nil ||
		*ups[0].Actor.UID != os.Getuid() || ups[0].Target != dbPath {
		t.Errorf("upgrade events = %+v; want one success by this uid from the cli, naming %s", ups, dbPath)
	}

	// Again: nothing is trusted again, the file is only compacted.
	if code, out := runVerb(t, cfgPath, "vault", "upgrade"); code != exitOK || !strings.Contains(out, "already upgraded; nothing was trusted") {
		t.Errorf("vault upgrade of an upgraded vault: exit %d\n%s", code, out)
	}

	// The pre-upgrade file put back: the daemon refuses it, and so does the
	// verb, which finds the upgrade in the journal, unless told --again.
	upgraded, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dbPath, readGolden(t, goldenVault.db), 0o600); err != nil {
		t.Fatal(err)
	}
	d, bg = newTestDaemon(t, ctx, cfg)
	if err := d.openVault(ctx, bg); !errors.Is(err, vault.ErrOldFormat) {
		t.Errorf("openVault of the pre-upgrade file put back: %v; want ErrOldFormat", err)
	}
	d.close()
	code, out = runVerb(t, cfgPath, "vault", "upgrade")
	if code != exitFailure || !strings.Contains(out, "was upgraded already (seq ") || !strings.Contains(out, "older copy put back") ||
		!strings.Contains(out, "--again") {
		t.Errorf("vault upgrade of the pre-upgrade file put back: exit %d\n%s", code, out)
	}
	if code, out := runVerb(t, cfgPath, "vault", "upgrade", "--again"); code != exitOK || !strings.Contains(out, "upgraded: 4 records") {
		t.Errorf("vault upgrade --again: exit %d\n%s", code, out)
	}
	if err := os.WriteFile(dbPath, upgraded, 0o600); err != nil {
		t.Fatal(err)
	}

	startVaultDaemon(t, cfgPath)
	code, out = runVerb(t, cfgPath, "secret", "list")
	if code != exitOK || !strings.Contains(out, "db-pass") || !strings.Contains(out, "tickets,wiki") {
		t.Errorf("secret list after the upgrade: exit %d\n%s", code, out)
	}
	// While the daemon runs, the verb refuses to touch its files.
	if code, out := runVerb(t, cfgPath, "vault", "upgrade"); code != exitFailure || !strings.Contains(out, "the daemon is running") {
		t.Errorf("vault upgrade with the daemon running: exit %d\n%s", code, out)
	}
}

// TestVaultRestoreOldFormatBackup: `vault restore` refuses a backup from
// before records carried a MAC unless --upgrade-old-format asks for it,
// and then says that its metadata was trusted as found.
func TestVaultRestoreOldFormatBackup(t *testing.T) {
	cfgPath := vaultConfig(t, t.TempDir(), readGolden(t, goldenVault.key))
	startVaultDaemon(t, cfgPath)
	backup := filepath.Join(t.TempDir(), "old-backup.db")
	if err := os.WriteFile(backup, readGolden(t, goldenVault.db), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := runVerb(t, cfgPath, "vault", "restore", backup)
	if code != exitFailure || !strings.Contains(out, "--upgrade-old-format") || !strings.Contains(out, "written before records carried a MAC") {
		t.Errorf("vault restore of an old backup: exit %d\n%s", code, out)
	}
	if code, out := runVerb(t, cfgPath, "secret", "list"); code != exitOK || !strings.Contains(out, "no secrets") {
		t.Errorf("secret list after the refused restore: exit %d\n%s", code, out)
	}
	code, out = runVerb(t, cfgPath, "vault", "restore", "--upgrade-old-format", backup)
	if code != exitOK || !strings.Contains(out, "restored 3 secrets and 1 system keys") ||
		!strings.Contains(out, "this backup predates record MACs: it was upgraded, and its allowed_tools and versions were trusted as found, once") {
		t.Errorf("vault restore --upgrade-old-format: exit %d\n%s", code, out)
	}
	if code, out := runVerb(t, cfgPath, "secret", "list"); code != exitOK || !strings.Contains(out, "db-pass") {
		t.Errorf("secret list after the restore: exit %d\n%s", code, out)
	}
}

// TestRefusedSecretListedAndCounted: a record whose MAC does not check
// (a byte of it changed outside the vault) is listed with its state and
// counted by vault status, and the other secrets are listed as before;
// both verbs exit 1 and name the way out.
func TestRefusedSecretListedAndCounted(t *testing.T) {
	dir := t.TempDir()
	cfgPath := vaultConfig(t, dir, nil)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	// The vault written as the daemon would, then a record changed in the
	// file before the daemon starts.
	ctx := context.Background()
	key, _, err := vault.LoadMasterKey(cfg.Vault)
	if err != nil {
		t.Fatal(err)
	}
	j, err := audit.Open(filepath.Join(cfg.Server.StateDir, "audit"), nil)
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.Server.StateDir, vault.DefaultFile)
	v, err := vault.Open(ctx, dbPath, key, cfg.Vault, &vault.Options{Audit: j, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"db-pass", "tickets-key"} {
		if _, err := v.Put(ctx, audit.Actor{}, vault.PutRequest{Name: name, Type: vault.TypePassword, Value: []byte("v-" + name),
			AllowedTools: []string{"tickets"}}); err != nil {
			t.Fatal(err)
		}
	}
	v.Close()
	j.Close()
	db, err := bolt.Open(dbPath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("secrets"))
		raw := bytes.Clone(b.Get([]byte("db-pass")))
		raw[len(raw)-1] ^= 1 // the last byte of the record's MAC
		return b.Put([]byte("db-pass"), raw)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	startVaultDaemon(t, cfgPath)
	code, out := runVerb(t, cfgPath, "secret", "list")
	if code != exitFailure || !regexp.MustCompile(`db-pass +- +- +- +- +- +refused: metadata does not authenticate`).MatchString(out) ||
		!regexp.MustCompile(`tickets-key +password +1 +1 .* tickets +ok`).MatchString(out) ||
		!strings.Contains(out, "1 secret(s) refused, nothing of them is used: db-pass; restore a backup, or delete each") {
		t.Errorf("secret list with a refused record: exit %d\n%s", code, out)
	}
	code, out = runVerb(t, cfgPath, "secret", "list", "--json")
	if code != exitFailure || !strings.Contains(out, `"refused": "metadata does not authenticate"`) {
		t.Errorf("secret list --json with a refused record: exit %d\n%s", code, out)
	}
	code, out = runVerb(t, cfgPath, "vault", "status")
	if code != exitFailure || !regexp.MustCompile(`secrets +1 `).MatchString(out) || !strings.Contains(out, "refused         1 records") ||
		!strings.Contains(out, "refused: secret:db-pass: metadata does not authenticate") {
		t.Errorf("vault status with a refused record: exit %d\n%s", code, out)
	}
	if code, out := runVerb(t, cfgPath, "secret", "delete", "db-pass"); code != exitOK {
		t.Fatalf("secret delete of the refused record: exit %d\n%s", code, out)
	}
	if code, out := runVerb(t, cfgPath, "vault", "status"); code != exitOK || !strings.Contains(out, "refused         0 records") {
		t.Errorf("vault status after the delete: exit %d\n%s", code, out)
	}
}

const upgradeChildEnv = "APPLIANCED_VAULT_UPGRADE_CHILD"

// TestVaultUpgradeChild is the process TestVaultUpgradeKeepsTheServiceOwner
// runs `vault upgrade` in (the verb changes the process's user); on its
// own it does nothing.
func TestVaultUpgradeChild(t *testing.T) {
	cfgPath := os.Getenv(upgradeChildEnv)
	if cfgPath == "" {
		return // only a helper process; not a skipped test
	}
	code, out := runVerb(t, cfgPath, "vault", "upgrade")
	fmt.Print(out)
	if code != exitOK {
		t.Fatalf("vault upgrade: exit %d", code)
	}
}

// TestVaultUpgradeKeepsTheServiceOwner: root runs `vault upgrade` on the
// service's vault; the verb reads the master key as root, then works as
// the vault's owner, so every file it writes (the compacted vault, the
// journal) stays the service's and the daemon can still write them.
func TestVaultUpgradeKeepsTheServiceOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test gives the state to another user")
	}
	const service = 65534 // nobody
	dir := t.TempDir()
	cfgPath := vaultConfig(t, dir, readGolden(t, goldenVault.key))
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(cfg.Server.StateDir, vault.DefaultFile)
	if err := os.WriteFile(dbPath, readGolden(t, goldenVault.db), 0o600); err != nil {
		t.Fatal(err)
	}
	// No journal yet: the upgrade makes it, files and directory, which
	// must be the service's too.
	// The state is the service's; the test's directories above it (never
	// the system's temporary directory itself) can be passed.
	for p := dir; strings.HasPrefix(p, filepath.Clean(os.TempDir())+"/"); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	err = filepath.Walk(cfg.Server.StateDir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, service, service)
	})
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestVaultUpgradeChild$", "-test.v")
	cmd.Env = append(os.Environ(), upgradeChildEnv+"="+cfgPath)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "upgraded: 4 records") {
		t.Fatalf("vault upgrade as root: %v\n%s", err, out)
	}
	err = filepath.Walk(cfg.Server.StateDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != service || st.Gid != service {
			t.Errorf("%s is owned by %d:%d after the upgrade; want the service's %d:%d", p, st.Uid, st.Gid, service, service)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ups := 0
	for _, ev := range journalEvents(t, cfg) {
		if ev.Action == "vault.upgrade" && ev.Outcome == audit.OutcomeSuccess && ev.Actor.UID != nil && *ev.Actor.UID == 0 {
			ups++
		}
	}
	if ups != 1 {
		t.Errorf("%d upgrade events by root, want 1", ups)
	}
}

// TestVaultUpgradeCommandFollowsTheKeySource: the daemon's refusal names
// the command that reaches the master key where the daemon found it: the
// plain verb for a key file, a transient unit that loads the credential
// for a systemd credential (root cannot read a TPM-sealed one outside a
// unit).
func TestVaultUpgradeCommandFollowsTheKeySource(t *testing.T) {
	for _, tt := range []struct{ source, want string }{
		{"file:/etc/applianced/master.key", "`applianced vault upgrade --config /etc/applianced/applianced.toml`"},
		{"systemd-credential:/run/credentials/applianced.service/master.key",
			"`systemd-run --wait --pipe --collect -p LoadCredentialEncrypted=master.key:/etc/credstore.encrypted/applianced.master.key " +
				"/usr/bin/applianced vault upgrade --config /etc/applianced/applianced.toml`"},
	} {
		if got := upgradeCommand("/etc/applianced/applianced.toml", tt.source); !strings.HasPrefix(got, tt.want) {
			t.Errorf("upgradeCommand for %s = %q; want it to start with %q", tt.source, got, tt.want)
		}
	}
}
