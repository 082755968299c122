package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

// The vault upgrade is the one verb that works on the vault without the
// daemon: the daemon refuses a vault written before records carried a MAC
// (a file put back from before the upgrade would otherwise be trusted
// again), so the admin upgrades it on purpose, once, after installing the
// release. It runs as root with the daemon stopped, reads the master key
// from the same places the daemon does, records the upgrade in the audit
// journal itself before the upgrade commits, and does its file work as the
// owner of vault.db so that the files it writes stay the service's.

// sealedCredential is where the unit file's comment puts the master key
// sealed with systemd-creds.
const sealedCredential = "/etc/credstore.encrypted/applianced.master.key"

// upgradeCommand is the command that upgrades the vault of the config at
// cfgPath when the daemon got its master key from source.
func upgradeCommand(cfgPath, source string) string {
	if strings.HasPrefix(source, "systemd-credential:") {
		// Root cannot read a TPM-sealed credential outside a unit: run
		// the verb in a transient unit that loads it as the service does.
		return fmt.Sprintf("`systemd-run --wait --pipe --collect -p LoadCredentialEncrypted=%s:%s /usr/bin/applianced vault upgrade --config %s` "+
			"(with the LoadCredentialEncrypted= or LoadCredential= line of the service: `systemctl cat applianced` shows it)",
			vault.CredentialName, sealedCredential, cfgPath)
	}
	return "`applianced vault upgrade --config " + cfgPath + "`"
}

func cmdVaultUpgrade(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("vault upgrade", "",
		"Upgrade the vault written by a release from before records carried a MAC, once,\n"+
			"after installing this release; the daemon refuses such a vault until then.\n"+
			"Run it as root with the daemon stopped. It trusts the vault's allowed_tools and\n"+
			"versions as it finds them, gives every record its MAC under a new keyring term,\n"+
			"records the upgrade in the audit journal before it commits, then compacts the\n"+
			"file so nothing of the old format stays in it. Run it only right after the\n"+
			"package upgrade: a vault of the old format that shows up later is an older copy\n"+
			"put back, which must not be upgraded (restore a backup instead).\n"+
			"Run on a vault already upgraded, it only compacts it (so an interrupted run\n"+
			"can be finished).\n"+
			"With the master key as a systemd credential, run it in a transient unit that\n"+
			"loads the credential as the service does (second example).",
		"systemctl stop applianced && applianced vault upgrade && systemctl start applianced",
		"systemd-run --wait --pipe --collect -p LoadCredentialEncrypted="+vault.CredentialName+":"+sealedCredential+
			" /usr/bin/applianced vault upgrade --config "+config.DefaultPath)
	again := fs.Bool("again", false, "upgrade although the audit journal records an upgrade of this vault already")
	if _, code, ok := e.parsePositional(fs, args, 0); !ok {
		return code
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return e.fail("vault upgrade", err)
	}
	path := filepath.Join(cfg.Server.StateDir, vault.DefaultFile)
	if err := daemonStopped(ctx, cfg.Server.AdminSocket); err != nil {
		return e.fail("vault upgrade", err)
	}
	key, source, err := vault.LoadMasterKey(cfg.Vault)
	if err != nil {
		return e.fail("vault upgrade", err)
	}
	defer clear(key)
	uid := os.Getuid()
	who := audit.Actor{UID: &uid, PID: os.Getpid()}
	if err := becomeOwner(path); err != nil {
		return e.fail("vault upgrade", err)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a := cfg.Audit
	j, err := audit.Open(filepath.Join(cfg.Server.StateDir, "audit"), &audit.Options{
		SegmentBytes: int64(a.SegmentBytes), MaxBytes: int64(a.MaxBytes), DiskFull: a.DiskFull, Logger: log,
	})
	if err != nil {
		return e.fail("vault upgrade", err)
	}
	defer j.Close()
	if old, err := vault.OldFormat(path); err != nil {
		return e.fail("vault upgrade", err)
	} else if old && !*again {
		prev, err := previousUpgrade(ctx, j, path)
		if err != nil {
			return e.fail("vault upgrade", fmt.Errorf("cannot tell from the audit journal whether this vault was upgraded before: %w; "+
				"if you know it was not, run again with --again", err))
		}
		if prev != nil {
			by := "the daemon"
			if prev.Event.Actor.UID != nil {
				by = fmt.Sprintf("uid %d", *prev.Event.Actor.UID)
			}
			return e.fail("vault upgrade", fmt.Errorf("the audit journal records that %s was upgraded already (seq %d, %s, by %s): "+
				"a vault of the old format there now is an older copy put back, and upgrading it would trust whatever was changed in it. "+
				"Put a backup taken since that upgrade in its place instead. Only if you put this file back yourself, on purpose, "+
				"run again with --again", path, prev.Seq, prev.Event.Time.UTC().Format(time.RFC3339), by))
		}
	}
	res, err := vault.Upgrade(ctx, path, key, who, &vault.Options{Audit: j, Logger: log, KeySource: source})
	if err != nil {
		return e.fail("vault upgrade", err)
	}
	if res.Upgraded {
		fmt.Fprintf(e.stdout, "%s: upgraded: %d records and %d versions now carry a MAC, under keyring term %d; their allowed_tools and versions were trusted as found (check them with `applianced secret list` once the daemon runs)\n",
			path, res.Records, res.Versions, res.Term)
		for _, n := range res.NotUpgraded {
			fmt.Fprintf(e.stdout, "not upgraded (it does not decode or decrypt; refused until deleted): %s\n", n)
		}
	} else {
		fmt.Fprintf(e.stdout, "%s: already upgraded; nothing was trusted\n", path)
	}
	fmt.Fprintf(e.stdout, "%s: compacted (%d bytes, %d before)\n", path, res.BytesAfter, res.BytesBefore)
	return exitOK
}

// previousUpgrade returns the newest successful upgrade of the vault at
// path that the journal j records, or nil.
func previousUpgrade(ctx context.Context, j *audit.Journal, path string) (*audit.Entry, error) {
	from := uint64(1)
	if segs := j.Segments(); len(segs) > 0 {
		from = segs[0].First
	}
	r, err := j.Reader(from)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var found *audit.Entry
	for seq, last := from, j.LastSeq(); seq <= last; seq++ {
		ent, err := r.Next(ctx)
		if err != nil {
			return nil, err
		}
		ev := &ent.Event
		// "of" is absent in the events of the release that upgraded at
		// start; those were upgrades of the database too.
		if ev.Action == "vault.upgrade" && ev.Outcome == audit.OutcomeSuccess && ev.Target == path &&
			(ev.Details["of"] == "" || ev.Details["of"] == "database") {
			found = &ent
		}
	}
	return found, nil
}

// daemonStopped fails when a daemon answers on the admin socket: the
// upgrade writes the vault and the journal, which a running daemon owns.
func daemonStopped(ctx context.Context, socket string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := admin.NewClient(socket).Call(ctx, "GET", "/admin/v1/status", nil, nil)
	var ae *admin.Error
	if err == nil || errors.As(err, &ae) {
		return fmt.Errorf("the daemon is running (it answers on %s): stop it first (`systemctl stop applianced`)", socket)
	}
	return nil
}

// becomeOwner makes the process run as the owner of the vault at path when
// it runs as root and the vault is another user's (the service's), so the
// files the upgrade writes (the compacted vault, journal segments) belong
// to the service as before. The master key is read before.
func becomeOwner(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("no vault to upgrade: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok || os.Geteuid() != 0 || sys.Uid == 0 {
		return nil
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("dropping to the vault's owner: %w", err)
	}
	if err := syscall.Setgid(int(sys.Gid)); err != nil {
		return fmt.Errorf("dropping to the vault's owner: %w", err)
	}
	if err := syscall.Setuid(int(sys.Uid)); err != nil {
		return fmt.Errorf("dropping to the vault's owner: %w", err)
	}
	return nil
}
