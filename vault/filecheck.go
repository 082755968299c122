package vault

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// bbolt maps the file and follows page numbers it finds in it. In a damaged
// file a page number can point past the end of the file, and touching that
// memory is a SIGBUS, which no recover catches. So before bbolt opens a file
// the vault checks the meta page bbolt will use against the file's size, and
// then walks every page with the runtime's panic-on-fault set, so a bad
// pointer becomes an error here instead of a crash later.

const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltPageHeader   = 16
	boltMetaSize     = 64
	boltNoFreelist   = ^uint64(0)
	boltChecksumSpan = 56 // bytes of the meta the checksum covers
)

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
}

// parseBoltMeta reads the meta at the start of page buffer p.
func parseBoltMeta(p []byte) (boltMeta, bool) {
	if len(p) < boltPageHeader+boltMetaSize {
		return boltMeta{}, false
	}
	m := p[boltPageHeader : boltPageHeader+boltMetaSize]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:boltChecksumSpan])
	if h.Sum64() != le.Uint64(m[56:]) {
		return boltMeta{}, false
	}
	return boltMeta{
		pageSize: le.Uint32(m[8:]),
		root:     le.Uint64(m[16:]),
		freelist: le.Uint64(m[32:]),
		pgid:     le.Uint64(m[40:]),
		txid:     le.Uint64(m[48:]),
	}, true
}

// preflight checks that the meta bbolt will use stays inside the file. An
// empty file is fine: bbolt initializes it.
func preflight(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if size == 0 {
		return nil
	}
	read := func(off int64, n int) []byte {
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return nil
		}
		return b
	}
	var metas []boltMeta
	m0, ok0 := parseBoltMeta(read(0, boltPageHeader+boltMetaSize))
	if ok0 {
		metas = append(metas, m0)
	}
	// The second meta sits one page in; find the page size the way bbolt
	// does when the first meta is damaged.
	for off := int64(1024); off <= 64<<10; off *= 2 {
		if ok0 && off != int64(m0.pageSize) {
			continue
		}
		if m1, ok := parseBoltMeta(read(off, boltPageHeader+boltMetaSize)); ok && int64(m1.pageSize) == off {
			metas = append(metas, m1)
			break
		}
	}
	if len(metas) == 0 {
		return errors.New("no valid bbolt meta page (not a bbolt file, or both meta pages are damaged)")
	}
	m := metas[0]
	if len(metas) == 2 && metas[1].txid > m.txid {
		m = metas[1]
	}
	ps := uint64(m.pageSize)
	if ps < 1024 || ps > 64<<10 || ps&(ps-1) != 0 {
		return fmt.Errorf("bad page size %d", ps)
	}
	if m.pgid < 3 || m.pgid > uint64(size)/ps {
		return fmt.Errorf("the file is %d bytes but its meta page needs %d pages of %d bytes (truncated?)", size, m.pgid, ps)
	}
	if m.root < 2 || m.root >= m.pgid {
		return fmt.Errorf("root page %d is outside the file's %d pages", m.root, m.pgid)
	}
	if m.freelist != boltNoFreelist {
		if m.freelist < 2 || m.freelist >= m.pgid {
			return fmt.Errorf("freelist page %d is outside the file's %d pages", m.freelist, m.pgid)
		}
		hdr := read(int64(m.freelist*ps), boltPageHeader)
		if hdr == nil {
			return errors.New("cannot read the freelist page")
		}
		if over := uint64(binary.LittleEndian.Uint32(hdr[12:])); m.freelist+over >= m.pgid {
			return fmt.Errorf("freelist runs past the file's %d pages", m.pgid)
		}
	}
	return nil
}

// walkSink keeps the compiler from dropping the reads of walk.
var walkSink byte

// walk touches every page reachable from the root (branches, leaves,
// overflow) in this goroutine with panic-on-fault set, and turns a fault or a
// bbolt panic into an error.
func walk(db *bolt.DB) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("reading the file faulted: %v", p)
		}
	}()
	return db.View(func(tx *bolt.Tx) error {
		var x byte
		var visit func(b *bolt.Bucket, depth int) error
		visit = func(b *bolt.Bucket, depth int) error {
			if depth > 8 {
				return errors.New("buckets nested too deep")
			}
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if v == nil {
					child := b.Bucket(k)
					if child == nil {
						return fmt.Errorf("key %x has no value and is not a bucket", k)
					}
					if err := visit(child, depth+1); err != nil {
						return err
					}
					continue
				}
				if len(k) > 0 {
					x ^= k[len(k)-1]
				}
				for i := 0; i < len(v); i += 512 {
					x ^= v[i]
				}
				if len(v) > 0 {
					x ^= v[len(v)-1]
				}
			}
			return nil
		}
		err := tx.ForEach(func(name []byte, b *bolt.Bucket) error { return visit(b, 1) })
		walkSink ^= x
		return err
	})
}
