package hardening

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// JournalLimitCheck looks at the audit journal's size limit against the
// file system that holds the state directory (the vault's database too).
// Without max_bytes a SIEM outage lets the journal grow until the file
// system is full, and then every action fails and nothing is pruned until
// someone frees space: that warns, with a size to set. A limit beyond what
// the file system has room for warns too. diskFull is "block" or
// "drop_oldest", for the report.
func JournalLimitCheck(stateDir string, maxBytes int64, diskFull string) Check {
	return Check{Name: "audit journal limit", Run: func(ctx context.Context) []Result {
		const name = "audit max_bytes"
		var st unix.Statfs_t
		if err := unix.Statfs(stateDir, &st); err != nil {
			return []Result{{Name: name, Status: Skip, Detail: fmt.Sprintf("cannot look at %s: %v", stateDir, err),
				Fix: "create the state directory (the package does) or fix [server] state_dir"}}
		}
		size := int64(st.Blocks) * st.Bsize
		free := int64(st.Bavail) * st.Bsize
		// Half the file system, at most what is free now: room for the
		// vault, the rest of the state and the system.
		suggest := min(size/2, free)
		switch {
		case maxBytes <= 0:
			return []Result{{Name: name, Status: Warn,
				Detail: fmt.Sprintf("not set: while a SIEM is down the journal grows until %s (%s free of %s) is full; then every action fails until space is freed", stateDir, human(free), human(size)),
				Fix:    fmt.Sprintf("set [audit] max_bytes (about %q here) and choose disk_full", humanConfig(suggest))}}
		case maxBytes > free+journalBytes(stateDir):
			return []Result{{Name: name, Status: Warn,
				Detail: fmt.Sprintf("%s, more than the file system holding %s has room for (%s free): it fills before the limit applies", human(maxBytes), stateDir, human(free)),
				Fix:    fmt.Sprintf("lower [audit] max_bytes (about %q here) or give %s more room", humanConfig(suggest), stateDir)}}
		}
		return []Result{{Name: name, Status: Pass, Detail: fmt.Sprintf("%s, disk_full = %s; %s free on the file system", human(maxBytes), diskFull, human(free))}}
	}}
}

// journalBytes is what the journal in stateDir/audit holds now (it counts
// toward the limit, not against the free space).
func journalBytes(stateDir string) int64 {
	paths, _ := filepath.Glob(filepath.Join(stateDir, "audit", "journal-*.log"))
	var n int64
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}

// humanConfig spells n as a max_bytes value, rounded down.
func humanConfig(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", max(n>>10, 1))
}
