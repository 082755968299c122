package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/vault"
)

func cmdInit(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("init", "", "Create what the daemon needs before its first start: the state directory (0700),\n"+
		"the master key file (0400) and a self-signed TLS certificate for the API when none\n"+
		"exists. Idempotent: an existing key or certificate is never overwritten.",
		"applianced init", "applianced init --config /etc/applianced/applianced.toml")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(e.stderr, "applianced init: the config has errors; nothing was created:\n%v\n", err)
		return exitFailure
	}
	if err := initState(e, cfg); err != nil {
		return e.fail("init", err)
	}
	return exitOK
}

// initState creates the state dir, master key and TLS pair for cfg, saying
// what it did and what it left alone.
func initState(e *env, cfg *config.File) error {
	dir := cfg.Server.StateDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	fmt.Fprintf(e.stdout, "state dir     %s (0700)\n", dir)

	keyFile := cfg.Vault.MasterKeyFile
	if keyFile == "" {
		keyFile = vault.DefaultMasterKeyFile
	}
	if cred := e.getenv("CREDENTIALS_DIRECTORY"); cred != "" {
		if _, err := os.Stat(filepath.Join(cred, "master.key")); err == nil {
			fmt.Fprintf(e.stdout, "master key    from the systemd credential %s: no key file needed\n", filepath.Join(cred, "master.key"))
			keyFile = ""
		}
	}
	if keyFile != "" {
		created, err := vault.CreateMasterKeyFile(keyFile)
		if err != nil {
			return err
		}
		if created {
			fmt.Fprintf(e.stdout, "master key    %s created (0400); back it up offline: without it the vault cannot be opened\n", keyFile)
		} else {
			fmt.Fprintf(e.stdout, "master key    %s exists; left unchanged\n", keyFile)
		}
	}

	hosts := []string{"localhost", "127.0.0.1"}
	if h, err := os.Hostname(); err == nil {
		hosts = append([]string{h}, hosts...)
	}
	if host, _, err := net.SplitHostPort(cfg.Server.Listen); err == nil && host != "" && host != "0.0.0.0" && host != "::" {
		hosts = append(hosts, host)
	}
	created, err := writeSelfSigned(cfg.Server.TLSCert, cfg.Server.TLSKey, hosts)
	if err != nil {
		return fmt.Errorf("creating the API certificate: %w", err)
	}
	if created {
		fmt.Fprintf(e.stdout, "TLS           %s and %s created (self-signed for %v); replace them with your CA's\n", cfg.Server.TLSCert, cfg.Server.TLSKey, hosts)
	} else {
		fmt.Fprintf(e.stdout, "TLS           %s exists; left unchanged\n", cfg.Server.TLSCert)
	}
	return ownForService(e, dir, keyFile, cfg.Server.TLSKey, cfg.Server.TLSCert)
}

// ownForService gives the state dir and the key files to the service's
// user when init runs as root on a host where that user exists (the
// package's): the daemon runs as it and must read them. Made by root and
// left root's, they kept the service from starting ("permission denied").
func ownForService(e *env, stateDir string, files ...string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("applianced")
	if err != nil {
		return nil // no service user: a run outside the package
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	chown := func(p string) error {
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&os.ModeSymlink != 0 {
			return nil // absent (a systemd credential), or a link someone manages
		}
		if err := os.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("giving %s to user applianced: %w", p, err)
		}
		return nil
	}
	if err := chown(stateDir); err != nil {
		return err
	}
	for _, f := range files {
		if f == "" {
			continue
		}
		if err := chown(f); err != nil {
			return err
		}
		// The directory of a key: the service must reach it, nobody else.
		if d := filepath.Dir(f); d != "/etc/applianced" && strings.HasPrefix(d, "/etc/applianced/") {
			if err := os.Lchown(d, 0, gid); err == nil {
				_ = os.Chmod(d, 0o750)
			}
		}
	}
	fmt.Fprintln(e.stdout, "owner         the state dir and key files belong to user applianced, which the service runs as")
	return nil
}
