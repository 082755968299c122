// Package fstree snapshots a directory tree for tests that must show a
// step wrote nothing: each path's mode, modification time and, for files,
// SHA-256.
package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
)

// Snapshot maps every path under root for which include is true (nil:
// every path) to its mode, modification time and content hash.
func Snapshot(root string, include func(path string) bool) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if include != nil && !include(path) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		h := info.Mode().String() + " " + info.ModTime().String()
		if !d.IsDir() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			h += " " + hex.EncodeToString(sum[:])
		}
		out[path] = h
		return nil
	})
	return out, err
}
