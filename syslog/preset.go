package syslog

import (
	"fmt"
	"os"
)

// PresetCursor makes delivered the durable position, in a journal of
// chain, of the target at address in the cursor directory dir (created
// 0700): a Forwarder made with Options.Dir = dir over a journal of that
// chain starts the target at delivered+1.
//
// It is for a temporary forwarder with its own directory, as `applianced
// audit deliver` runs over a journal set aside; presetting the running
// forwarder's cursors would skip or repeat entries.
func PresetCursor(dir, address, chain string, delivered uint64) error {
	if _, err := parseAddress(address); err != nil {
		return fmt.Errorf("syslog: target address %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("syslog: %w", err)
	}
	return newCursor(dir, address, chain).store(delivered)
}
