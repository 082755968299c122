package vault

import (
	"path/filepath"

	"github.com/applianced/applianced/internal/conf"
)

// Defaults for the [vault] section.
const (
	// DefaultMasterKeyFile is where `applianced init` creates the master key
	// when the config names none.
	DefaultMasterKeyFile = "/etc/applianced/master.key"
	// DefaultKeepVersions is how many versions of a secret are kept when the
	// config says nothing.
	DefaultKeepVersions = 5
	// MaxKeepVersions bounds keep_versions.
	MaxKeepVersions = 100
	// DefaultFile is the database's file name inside the state directory.
	DefaultFile = "vault.db"
)

// Config is the [vault] section of applianced.toml:
//
//	[vault]
//	master_key_file = "/etc/applianced/master.key"   # or the systemd credential "master.key"
//	keep_versions = 5
//
// The database itself lives in the state directory ([server] state_dir) as
// vault.db. The master key is never stored in it.
type Config struct {
	// MasterKeyFile is the key file that `applianced init` creates (32
	// random bytes, mode 0400). It is used when the systemd credential
	// $CREDENTIALS_DIRECTORY/master.key is absent. Empty means
	// DefaultMasterKeyFile. Must be an absolute path.
	MasterKeyFile string `toml:"master_key_file"`

	// KeepVersions is how many versions of each secret are kept; a put or
	// rotate beyond that removes the oldest. 0 means DefaultKeepVersions;
	// otherwise 1 to MaxKeepVersions.
	KeepVersions int `toml:"keep_versions"`
}

// Validate reports every problem of the section, with keys relative to it.
func (c Config) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if c.MasterKeyFile != "" && !filepath.IsAbs(c.MasterKeyFile) {
		errs = append(errs, conf.Errf("master_key_file", "must be an absolute path, got %q", c.MasterKeyFile))
	}
	if c.KeepVersions < 0 || c.KeepVersions > MaxKeepVersions {
		errs = append(errs, conf.Errf("keep_versions", "must be between 1 and %d (0 means the default %d), got %d",
			MaxKeepVersions, DefaultKeepVersions, c.KeepVersions))
	}
	return errs
}

// masterKeyFile returns the configured key file or the default.
func (c Config) masterKeyFile() string {
	if c.MasterKeyFile == "" {
		return DefaultMasterKeyFile
	}
	return c.MasterKeyFile
}

// keepVersions returns the configured number of versions or the default.
func (c Config) keepVersions() int {
	if c.KeepVersions <= 0 {
		return DefaultKeepVersions
	}
	if c.KeepVersions > MaxKeepVersions {
		return MaxKeepVersions
	}
	return c.KeepVersions
}
