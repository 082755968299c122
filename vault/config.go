package vault

// Config is the [vault] section of applianced.toml.
// (Fields are completed and documented by the vault implementation.)
type Config struct {
	MasterKeyFile string `toml:"master_key_file"`
	KeepVersions  int    `toml:"keep_versions"`
}
