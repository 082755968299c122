package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

// Admin paths of the vault area.
const (
	adminVaultStatus  = "/admin/v1/vault/status"
	adminVaultRekey   = "/admin/v1/vault/rekey"
	adminVaultBackup  = "/admin/v1/vault/backup"
	adminVaultRestore = "/admin/v1/vault/restore"
)

// restoreUpgradeParam, set to "true" on a restore, accepts a backup written
// before records carried a MAC (vault.RestoreOptions.UpgradeOldFormat).
const restoreUpgradeParam = "upgrade_old_format"

type vaultRekeyRequest struct {
	Reencrypt bool `json:"reencrypt"`
}

// startMarkSegments bounds what the start reads of the journal for the
// vault's last recorded state: the close of a clean stop is in the newest
// segment (or the one before, when it was rotated just then); after a
// crash the last opening may lie far back in a long journal, which the
// start does not read its way to: older segments with no mark among the
// newest mean the last run ended without a close (StateUnverified).
const startMarkSegments = 2

// predecessorVaultMark is the last vault mark of the journal the live
// chain continues (its first entry names it), read from that journal's
// newest segments when it was set aside in the state dir and holds the
// entry the chain start names, with its hash; nil otherwise. A journal
// set aside together with a vault put back is then still compared.
func (d *daemon) predecessorVaultMark(ctx context.Context) *audit.VaultMark {
	cs := d.liveChainStart()
	if cs == nil || !cs.Known {
		return nil
	}
	for _, a := range setAsideJournals(d.config().Server.StateDir) {
		if a.chain != cs.Chain {
			continue
		}
		v, err := audit.OpenReadOnly(a.dir, &audit.ReadOnlyOptions{Appender: d.journal, Tail: startMarkSegments})
		// No audit key yet (it is kept in the vault): only the chain
		// start anchors the journal here.
		if err != nil || anchored(ctx, v, cs, nil) != nil {
			continue
		}
		marks, err := audit.LastVaultMarksWithin(ctx, v, 1, 0)
		if err != nil {
			continue
		}
		d.log.Info("vault: the journal set aside that this chain continues says what the vault was last recorded in", "dir", a.dir)
		if len(marks) > 0 && marks[0].Type == "vault.close" && marks[0].Seq > cs.Seq {
			// A clean stop records its close before the entry the chain
			// start names: a close after it is not that journal's own.
			d.log.Warn("vault: the journal set aside holds a vault.close after the entry the new chain's first entry names; it is not compared with",
				"dir", a.dir, "close_seq", marks[0].Seq, "named_seq", cs.Seq)
			return &audit.VaultMark{Type: "vault.unseal"}
		}
		if len(marks) == 0 {
			if _, n, _ := audit.DirChain(a.dir); n > startMarkSegments {
				// As for the live journal: no close where a clean stop
				// would have left it.
				return &audit.VaultMark{Type: "vault.unseal"}
			}
			return nil
		}
		return &marks[0]
	}
	return nil
}

// openVault loads the master key ($CREDENTIALS_DIRECTORY/master.key, then
// [vault] master_key_file), opens state_dir/vault.db and mounts the secret
// and vault verbs on the admin socket. It is a step of (*daemon).open after
// the audit journal, which it reads for the state the vault last closed in.
func (d *daemon) openVault(ctx, bg context.Context) error {
	cfg := d.config()
	key, source, err := vault.LoadMasterKey(cfg.Vault)
	if err != nil {
		return err
	}
	defer clear(key)
	// The state the vault was last recorded in, read before the opening
	// records its own: a close in another state than the vault opens in
	// means vault.db was changed while the daemon was down, which the
	// vault records and warns of. A new chain (the old journal set aside)
	// holds none yet: the journal it continues, when it is in the state
	// dir and anchored, says instead.
	marks, err := audit.LastVaultMarksWithin(ctx, d.journal, 1, startMarkSegments)
	if err != nil {
		return fmt.Errorf("reading the vault's last recorded state from the audit journal: %w", err)
	}
	var recorded *audit.VaultMark
	switch {
	case len(marks) > 0:
		recorded = &marks[0]
	case len(d.journal.Segments()) > startMarkSegments:
		// Older entries than the start read, and no mark among the
		// newest: a clean stop's close would be there, so the last run
		// ended without one, its opening further back.
		recorded = &audit.VaultMark{Type: "vault.unseal"}
	default:
		recorded = d.predecessorVaultMark(ctx)
	}
	v, err := vault.Open(ctx, filepath.Join(cfg.Server.StateDir, vault.DefaultFile), key, cfg.Vault,
		&vault.Options{Audit: d.journal, Logger: d.log, KeySource: source, Recorded: recorded})
	if errors.Is(err, vault.ErrOldFormat) {
		return fmt.Errorf("%w\nTo upgrade, once, as root: `systemctl stop applianced`, then %s, then `systemctl start applianced`",
			err, upgradeCommand(cfg.Path, source))
	}
	if err != nil {
		return err
	}
	d.vault = v
	check := v.StateCheck()
	d.vaultCheck.Store(&check)
	d.closers = append(d.closers, v.Close)
	d.reloaders = append(d.reloaders, func(_ context.Context, c *config.File) error { return v.Reconfigure(c.Vault) })
	mountSecrets(d.admin, v, func() []string {
		var names []string
		for _, t := range d.config().Tools {
			names = append(names, t.Name)
		}
		return names
	})
	mountVault(d.admin, v)
	return nil
}

// mountVault puts the vault verbs on the admin mux. Backup and restore
// stream the database file as application/octet-stream.
func mountVault(mux *http.ServeMux, v *vault.Vault) {
	mux.HandleFunc("GET "+adminVaultStatus, func(w http.ResponseWriter, r *http.Request) {
		st, err := v.Status(r.Context(), actorOf(r))
		answerVault(w, st, err)
	})
	mux.HandleFunc("POST "+adminVaultRekey, func(w http.ResponseWriter, r *http.Request) {
		var req vaultRekeyRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		res, err := v.Rekey(r.Context(), actorOf(r), req.Reencrypt)
		answerVault(w, res, err)
	})
	mux.HandleFunc("GET "+adminVaultBackup, func(w http.ResponseWriter, r *http.Request) {
		// The status line goes out with the first byte, after the audit
		// event: a refusal before it is still a JSON error.
		bw := &lazyHeader{w: w}
		if _, err := v.Backup(r.Context(), actorOf(r), bw); err != nil && !bw.started {
			writeVaultError(w, err)
		}
	})
	mux.HandleFunc("POST "+adminVaultRestore, func(w http.ResponseWriter, r *http.Request) {
		body := http.MaxBytesReader(w, r.Body, vault.MaxRestoreBytes)
		opts := &vault.RestoreOptions{UpgradeOldFormat: r.URL.Query().Get(restoreUpgradeParam) == "true"}
		res, err := v.Restore(r.Context(), actorOf(r), body, opts)
		answerVault(w, res, err)
	})
}

// lazyHeader writes the success headers just before the first byte.
type lazyHeader struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyHeader) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "application/octet-stream")
		l.w.Header().Set("Cache-Control", "no-store")
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(p)
}

func cmdVaultStatus(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("vault status", "",
		"Show the vault: where the master key came from, the keyring term, and counts.",
		"applianced vault status", "applianced vault status --json")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, code, ok := e.parsePositional(fs, args, 0); !ok {
		return code
	}
	var st vault.Status
	code := e.show(ctx, *cfgPath, "vault status", http.MethodGet, adminVaultStatus, nil, &st, *asJSON, func() {
		sealed := "no (unsealed)"
		if st.Sealed {
			sealed = "yes"
		}
		fmt.Fprintf(e.stdout, "sealed          %s\n", sealed)
		fmt.Fprintf(e.stdout, "master key      %s\n", st.KeySource)
		fmt.Fprintf(e.stdout, "database        %s (%d bytes)\n", st.Path, st.SizeBytes)
		fmt.Fprintf(e.stdout, "keyring term    %d of %d (since %s)\n", st.Term, st.Terms, st.TermCreated.Local().Format(time.DateTime))
		fmt.Fprintf(e.stdout, "secrets         %d (%d versions kept, keep_versions = %d)\n", st.Secrets, st.Versions, st.KeepVersions)
		fmt.Fprintf(e.stdout, "older terms     %d versions (vault rekey --reencrypt moves them)\n", st.OldTermVersions)
		fmt.Fprintf(e.stdout, "system keys     %d\n", st.SystemKeys)
		fmt.Fprintf(e.stdout, "refused         %d records\n", st.Refused)
		for _, r := range st.RefusedRecords {
			fmt.Fprintf(e.stdout, "  refused: %s\n", r)
		}
	})
	if code != exitOK || st.Refused == 0 {
		return code
	}
	fmt.Fprintf(e.stderr, "applianced vault status: %d record(s) refused, nothing of them is used: restore a backup, "+
		"or delete each secret (`applianced secret delete NAME`) and put it again\n", st.Refused)
	return exitFailure
}

func cmdVaultRekey(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("vault rekey", "[--reencrypt]",
		"Add a new keyring term; new writes use it and older terms keep decrypting.\n"+
			"--reencrypt also re-encrypts every stored version under the new term, online.",
		"applianced vault rekey", "applianced vault rekey --reencrypt")
	re := fs.Bool("reencrypt", false, "re-encrypt everything under the new term")
	if _, code, ok := e.parsePositional(fs, args, 0); !ok {
		return code
	}
	var res vault.RekeyResult
	if err := e.call(ctx, *cfgPath, http.MethodPost, adminVaultRekey, vaultRekeyRequest{Reencrypt: *re}, &res); err != nil {
		return e.fail("vault rekey", err)
	}
	fmt.Fprintf(e.stdout, "keyring term %d is active", res.Term)
	if *re {
		fmt.Fprintf(e.stdout, "; %d versions re-encrypted", res.Reencrypted)
	}
	fmt.Fprintln(e.stdout)
	return exitOK
}

func cmdVaultBackup(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("vault backup", "FILE",
		"Write a consistent snapshot of the vault to FILE (mode 0600) while the daemon\n"+
			"runs. It stays encrypted: it opens only with the master key, so keep the key's\n"+
			"own backup apart from it. FILE must not exist.",
		"applianced vault backup /root/vault-$(date +%F).db")
	return e.streamFile(fs, cfgPath, args, func(socket, path string) error {
		n, err := backupTo(ctx, socket, path)
		if err == nil {
			fmt.Fprintf(e.stdout, "%s: %d bytes written\n", path, n)
		}
		return err
	})
}

func cmdVaultRestore(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("vault restore", "[--upgrade-old-format] FILE",
		"Replace the vault with a backup made by `vault backup`. The daemon refuses a\n"+
			"backup the current master key cannot open, or one that is damaged; the\n"+
			"replaced database is kept beside it as vault.db.before-restore.\n"+
			"A backup made by a release from before records carried a MAC is refused: its\n"+
			"allowed_tools and versions cannot be checked, and whoever could write it could\n"+
			"have changed them. --upgrade-old-format restores it anyway, upgraded, trusting\n"+
			"it as found, once: use it only for a backup you have kept safe.",
		"applianced vault restore /root/vault-2026-11-25.db",
		"applianced vault restore --upgrade-old-format /root/vault-before-upgrade.db")
	upgrade := fs.Bool("upgrade-old-format", false, "accept a backup from before records carried a MAC, trusting its metadata as found")
	return e.streamFile(fs, cfgPath, args, func(socket, path string) error {
		res, err := restoreFrom(ctx, socket, path, *upgrade)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "restored %d secrets and %d system keys (keyring term %d); the previous database is %s\n",
			res.Secrets, res.SystemKeys, res.Term, res.Previous)
		if res.Upgraded {
			fmt.Fprintf(e.stdout, "this backup predates record MACs: it was upgraded, and its allowed_tools and versions were trusted as found, once; check them with `applianced secret list`\n")
			for _, n := range res.NotUpgraded {
				fmt.Fprintf(e.stdout, "not upgraded (it does not decrypt; refused until deleted): %s\n", n)
			}
		}
		return nil
	})
}

// streamFile is the rest of a verb that streams one FILE over the admin
// socket (vault backup, vault restore): it parses args, finds the socket
// and runs transfer with it and FILE; transfer prints what it did.
func (e *env) streamFile(fs *flag.FlagSet, cfgPath *string, args []string, transfer func(socket, path string) error) int {
	pos, code, ok := e.parsePositional(fs, args, 1)
	if !ok {
		return code
	}
	c, err := e.adminClient(*cfgPath)
	if err != nil {
		return e.fail(fs.Name(), err)
	}
	if err := transfer(c.Socket, pos[0]); err != nil {
		return e.fail(fs.Name(), err)
	}
	return exitOK
}

// streamClient is an HTTP client on the admin socket for the two verbs
// that stream a file instead of JSON.
func streamClient(socket string) *http.Client {
	d := net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", socket) },
		DisableKeepAlives: true,
	}}
}

// backupTo streams the backup into a new file next to path, then renames it
// into place, so a failed backup leaves no partial file.
func backupTo(ctx context.Context, socket, path string) (int64, error) {
	if _, err := os.Lstat(path); err == nil {
		return 0, fmt.Errorf("%s exists; choose a new file name", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://admin"+adminVaultBackup, nil)
	if err != nil {
		return 0, err
	}
	resp, err := streamClient(socket).Do(req)
	if err != nil {
		return 0, fmt.Errorf("is the daemon running? connecting to %s: %w", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, answerError(resp)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".part-*")
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(tmp, resp.Body)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp.Name(), path) // fails if path appeared meanwhile: never overwrite
	}
	_ = os.Remove(tmp.Name())
	if err != nil {
		return 0, fmt.Errorf("writing %s: %w", path, err)
	}
	return n, nil
}

// restoreFrom sends the file at path to the daemon; upgrade accepts a
// backup from before records carried a MAC.
func restoreFrom(ctx context.Context, socket, path string, upgrade bool) (vault.RestoreResult, error) {
	var res vault.RestoreResult
	f, err := os.Open(path)
	if err != nil {
		return res, err
	}
	defer f.Close()
	target := "http://admin" + adminVaultRestore
	if upgrade {
		target += "?" + restoreUpgradeParam + "=true"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, f)
	if err != nil {
		return res, err
	}
	if st, err := f.Stat(); err == nil {
		req.ContentLength = st.Size()
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := streamClient(socket).Do(req)
	if err != nil {
		return res, fmt.Errorf("is the daemon running? connecting to %s: %w", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return res, answerError(resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&res); err != nil {
		return res, fmt.Errorf("decoding the answer: %w", err)
	}
	return res, nil
}

// answerError turns a non-200 answer into the admin client's error type.
func answerError(resp *http.Response) error {
	var eb admin.ErrorBody
	_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&eb)
	if eb.Error == "" {
		eb.Error = http.StatusText(resp.StatusCode)
	}
	return &admin.Error{Status: resp.StatusCode, Code: eb.Error, Description: eb.Description}
}
