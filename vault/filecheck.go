package vault

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// bbolt maps the file and follows page numbers it finds in it. In a damaged
// file a page number can point past the end of the file (touching that
// memory is a SIGBUS, which no recover catches) or back up the tree (bbolt's
// cursor then descends forever, allocating until the OOM killer comes). So
// before bbolt opens a file the vault reads it itself: the meta page bbolt
// will use must fit the file, and every page reachable from the root must be
// inside it, reached once, and hold elements that stay inside the page.

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
		hdr := read(int64(m.freelist*ps), boltPageHeader+8)
		if hdr == nil {
			return errors.New("cannot read the freelist page")
		}
		le := binary.LittleEndian
		if got := le.Uint64(hdr); got != m.freelist || le.Uint16(hdr[8:]) != pageFreelist {
			return fmt.Errorf("page %d is not the freelist it should be", m.freelist)
		}
		over := uint64(le.Uint32(hdr[12:]))
		if m.freelist+over >= m.pgid {
			return fmt.Errorf("freelist runs past the file's %d pages", m.pgid)
		}
		// The freelist's entry count: a damaged one makes bbolt allocate
		// without bound.
		count := uint64(le.Uint16(hdr[10:]))
		if count == 0xFFFF {
			count = le.Uint64(hdr[16:]) + 1
		}
		if count > (over+1)*ps/8 || count > m.pgid {
			return fmt.Errorf("freelist claims %d entries in %d pages", count, over+1)
		}
		// Entries: sorted, unique page numbers inside the file (bbolt
		// panics on anything else).
		first := int64(m.freelist*ps) + boltPageHeader
		if le.Uint16(hdr[10:]) == 0xFFFF {
			first += 8
			count--
		}
		ids := read(first, int(count)*8)
		if ids == nil {
			return errors.New("cannot read the freelist")
		}
		var prev uint64
		for i := uint64(0); i < count; i++ {
			id := le.Uint64(ids[i*8:])
			if id < 2 || id >= m.pgid || id <= prev {
				return fmt.Errorf("freelist entry %d (page %d) is out of order or outside the file's %d pages", i, id, m.pgid)
			}
			prev = id
		}
	}
	return checkPages(f, m)
}

// The page layout bbolt writes (little-endian):
//
//	page header: id(8) flags(2) count(2) overflow(4)
//	branch element: pos(4) ksize(4) pgid(8)         key at element+pos
//	leaf element:   flags(4) pos(4) ksize(4) vsize(4) key at element+pos, value after it
//	bucket value:   root(8) sequence(8), then an inline leaf page when root is 0
const (
	pageBranch   = 0x01
	pageLeaf     = 0x02
	pageFreelist = 0x10
	leafBucket   = 0x01
	elemSize     = 16
	maxDepth     = 64
)

// walker reads pages from the file itself (not bbolt's mapping) and checks
// that every page reachable from the root is inside the file, is the page
// it claims to be, is reached once (no cycles), and that every element
// stays inside its page.
type walker struct {
	f       *os.File
	ps      uint64
	hwm     uint64
	visited map[uint64]bool
}

func (w *walker) page(id uint64) ([]byte, error) {
	if id < 2 || id >= w.hwm {
		return nil, fmt.Errorf("page %d is outside the file's %d pages", id, w.hwm)
	}
	if w.visited[id] {
		return nil, fmt.Errorf("page %d is reached twice (a cycle?)", id)
	}
	w.visited[id] = true
	hdr := make([]byte, boltPageHeader)
	if _, err := w.f.ReadAt(hdr, int64(id*w.ps)); err != nil {
		return nil, fmt.Errorf("reading page %d: %w", id, err)
	}
	if got := binary.LittleEndian.Uint64(hdr); got != id {
		return nil, fmt.Errorf("page %d says it is page %d", id, got)
	}
	over := uint64(binary.LittleEndian.Uint32(hdr[12:]))
	if id+over >= w.hwm {
		return nil, fmt.Errorf("page %d overflows past the file's %d pages", id, w.hwm)
	}
	for o := uint64(1); o <= over; o++ {
		w.visited[id+o] = true
	}
	p := make([]byte, (over+1)*w.ps)
	if _, err := w.f.ReadAt(p, int64(id*w.ps)); err != nil {
		return nil, fmt.Errorf("reading page %d: %w", id, err)
	}
	return p, nil
}

// tree checks the B+tree rooted at page id.
func (w *walker) tree(id uint64, depth int) error {
	if depth > maxDepth {
		return errors.New("the tree is too deep")
	}
	p, err := w.page(id)
	if err != nil {
		return err
	}
	return w.node(p, depth)
}

// node checks one branch or leaf page held in p.
func (w *walker) node(p []byte, depth int) error {
	le := binary.LittleEndian
	if len(p) < boltPageHeader {
		return errors.New("page shorter than its header")
	}
	flags, count := le.Uint16(p[8:]), int(le.Uint16(p[10:]))
	id := le.Uint64(p)
	if boltPageHeader+count*elemSize > len(p) {
		return fmt.Errorf("page %d: %d elements do not fit", id, count)
	}
	if flags != pageBranch && flags != pageLeaf {
		// bbolt takes any page that is not exactly a leaf for a branch.
		return fmt.Errorf("page %d: flags %#x where a branch or leaf page belongs", id, flags)
	}
	if flags == pageBranch && count == 0 {
		// bbolt's cursor reads element 0 of any branch page.
		return fmt.Errorf("page %d: an empty branch page", id)
	}
	for i := 0; i < count; i++ {
		at := boltPageHeader + i*elemSize
		e := p[at : at+elemSize]
		switch flags {
		case pageBranch:
			pos, ks := uint64(le.Uint32(e[0:])), uint64(le.Uint32(e[4:]))
			if uint64(at)+pos+ks > uint64(len(p)) {
				return fmt.Errorf("page %d: branch key %d runs past the page", id, i)
			}
			if err := w.tree(le.Uint64(e[8:]), depth+1); err != nil {
				return err
			}
		case pageLeaf:
			ef, pos, ks, vs := le.Uint32(e[0:]), uint64(le.Uint32(e[4:])), uint64(le.Uint32(e[8:])), uint64(le.Uint32(e[12:]))
			end := uint64(at) + pos + ks + vs
			if end > uint64(len(p)) {
				return fmt.Errorf("page %d: leaf element %d runs past the page", id, i)
			}
			if ef&leafBucket == 0 {
				continue
			}
			val := p[uint64(at)+pos+ks : end]
			if len(val) < 16 {
				return fmt.Errorf("page %d: bucket element %d is too short", id, i)
			}
			if root := le.Uint64(val); root != 0 {
				if err := w.tree(root, depth+1); err != nil {
					return err
				}
				continue
			}
			if err := w.node(val[16:], depth+1); err != nil { // inline bucket
				return err
			}
		default:
			return fmt.Errorf("page %d: flags %#x where a branch or leaf page belongs", id, flags)
		}
	}
	return nil
}

// checkPages walks the file's tree from the meta bbolt will use.
func checkPages(f *os.File, m boltMeta) error {
	w := &walker{f: f, ps: uint64(m.pageSize), hwm: m.pgid, visited: map[uint64]bool{}}
	return w.tree(m.root, 0)
}
