package syslog

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// cursor is a target's durable position: the last seq known to have
// reached the receiver. It lives in its own small file, replaced atomically
// (write, fsync, rename, fsync the directory).
type cursor struct {
	path    string
	address string
	chain   string // the journal's chain id, stored with every position
}

type cursorFile struct {
	Address   string    `json:"address"`
	Chain     string    `json:"chain,omitempty"` // absent: a legacy journal, or a cursor of a version before chain ids
	Delivered uint64    `json:"delivered"`
	Updated   time.Time `json:"updated"`
}

// cursorName is the file name of the cursor of address: stable, and safe
// whatever the address holds.
func cursorName(address string) string {
	h := sha256.Sum256([]byte(address))
	return "syslog-" + hex.EncodeToString(h[:8]) + ".cursor"
}

func newCursor(dir, address, chain string) *cursor {
	return &cursor{path: filepath.Join(dir, cursorName(address)), address: address, chain: chain}
}

// exists reports whether a position was ever stored.
func (c *cursor) exists() bool {
	_, err := os.Stat(c.path)
	return err == nil
}

// load returns the stored position and the chain it is a position in; 0
// and the journal's chain when there is none yet.
func (c *cursor) load() (uint64, string, error) {
	b, err := os.ReadFile(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, c.chain, nil
	}
	if err != nil {
		return 0, c.chain, fmt.Errorf("syslog: cursor: %w", err)
	}
	var cf cursorFile
	if err := json.Unmarshal(b, &cf); err != nil {
		return 0, c.chain, fmt.Errorf("syslog: cursor %s is damaged: %w", c.path, err)
	}
	if cf.Address != c.address {
		return 0, c.chain, fmt.Errorf("syslog: cursor %s belongs to %q, not %q", c.path, cf.Address, c.address)
	}
	return cf.Delivered, cf.Chain, nil
}

// store makes seq the durable position.
func (c *cursor) store(seq uint64) error {
	b, err := json.Marshal(cursorFile{Address: c.address, Chain: c.chain, Delivered: seq, Updated: time.Now().UTC()})
	if err != nil {
		return err
	}
	tmp := c.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("syslog: cursor: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, c.path)
	}
	if err == nil {
		var d *os.File
		if d, err = os.Open(filepath.Dir(c.path)); err == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("syslog: cursor: %w", err)
	}
	return nil
}
