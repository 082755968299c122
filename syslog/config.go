package syslog

// Target is one [[audit.syslog]] of applianced.toml.
// (Fields are completed and documented by the syslog implementation.)
type Target struct {
	Address string `toml:"address"`
	Format  string `toml:"format"`
	Framing string `toml:"framing"`
	CAFile  string `toml:"ca_file"`
}
