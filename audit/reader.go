package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// ErrPruned is returned when a Reader is asked for entries that retention
// already removed.
var ErrPruned = errors.New("audit: entries were removed by retention")

// ErrDamaged means an entry of the journal does not parse or is not the one
// its place calls for: the file was altered or damaged. Reading cannot go
// past it; `applianced audit verify` names what is wrong.
var ErrDamaged = errors.New("audit: journal entry damaged")

// Reader reads durable entries in seq order, waiting for new ones. Forwarders
// (syslog, Wazuh) each keep their own Reader and cursor.
type Reader struct {
	j     *Journal
	next  uint64
	f     *os.File
	br    *bufio.Reader
	prev  [32]byte
	chain string // of the segment read
}

// Reader returns a reader positioned at the first entry with seq >= from
// (from 0 or 1 means the oldest entry kept).
func (j *Journal) Reader(from uint64) (*Reader, error) {
	if from == 0 {
		from = 1
	}
	return &Reader{j: j, next: from}, nil
}

// Next returns the next durable entry, waiting until one exists or ctx ends.
func (r *Reader) Next(ctx context.Context) (Entry, error) {
	for {
		r.j.mu.Lock()
		committed, ch, closed := r.j.committed, r.j.notify, r.j.closed
		r.j.mu.Unlock()
		if r.next > committed {
			if closed {
				return Entry{}, ErrClosed
			}
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return Entry{}, ctx.Err()
			case <-time.After(time.Second): // Close does not signal; poll for it
				continue
			}
		}
		if r.br == nil {
			if err := r.open(); err != nil {
				return Entry{}, err
			}
		}
		line, err := readLine(r.br)
		if endOfData(line, err) {
			// This segment is done; the entry is in the next one.
			r.f.Close()
			r.f, r.br = nil, nil
			continue
		}
		if err == io.EOF || errors.Is(err, errPadding) {
			return Entry{}, fmt.Errorf("%w: reading journal at seq %d: entry cut short", ErrDamaged, r.next)
		}
		if err != nil {
			return Entry{}, fmt.Errorf("audit: reading journal at seq %d: %w", r.next, err)
		}
		h, canon, seq, err := parseLine(line[:len(line)-1])
		if err != nil {
			return Entry{}, fmt.Errorf("%w: entry %d: %w", ErrDamaged, r.next, err)
		}
		if seq < r.next {
			r.prev = h
			continue
		}
		if seq != r.next {
			return Entry{}, fmt.Errorf("%w: entry %d: found seq %d", ErrDamaged, r.next, seq)
		}
		e := Entry{Chain: r.chain, Seq: seq, Prev: r.prev, Hash: h, Canonical: canon}
		if err := json.Unmarshal(canon, &e.Event); err != nil {
			return Entry{}, fmt.Errorf("%w: entry %d: %w", ErrDamaged, seq, err)
		}
		r.prev = h
		r.next++
		return e, nil
	}
}

// open opens the segment holding r.next and skips to just before it.
func (r *Reader) open() error {
	r.j.mu.Lock()
	segs := append([]segment(nil), r.j.segments...)
	r.j.mu.Unlock()
	idx := -1
	for i, s := range segs {
		if s.first <= r.next {
			idx = i
		}
	}
	if idx < 0 {
		if len(segs) > 0 {
			return fmt.Errorf("%w: seq %d is before the oldest kept (%d)", ErrPruned, r.next, segs[0].first)
		}
		return fmt.Errorf("audit: journal has no segments")
	}
	f, err := os.Open(segs[idx].path)
	if err != nil {
		if os.IsNotExist(err) {
			return fmt.Errorf("%w: seq %d", ErrPruned, r.next)
		}
		return fmt.Errorf("audit: %w", err)
	}
	// The zeros written ahead of the segment being written (prealloc.go)
	// are not read: what is read of it ends with the last durable entry.
	br := bufio.NewReaderSize(&durable{j: r.j, f: f, first: segs[idx].first}, 256<<10)
	hdr, err := readLine(br)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: %s: reading header: %w", segs[idx].path, err)
	}
	_, prev, err := parseHeader(hdr[:len(hdr)-1])
	var chain string
	if err == nil {
		chain, err = headerChain(hdr[:len(hdr)-1])
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: %s: %w", segs[idx].path, err)
	}
	r.f, r.br, r.prev, r.chain = f, br, prev, chain
	return nil
}

// durable reads a segment file up to the end of its durable entries as the
// journal records it.
type durable struct {
	j     *Journal
	f     *os.File
	first uint64 // the segment's
	pos   int64
}

func (d *durable) Read(p []byte) (int, error) {
	d.j.mu.Lock()
	end := int64(-1)
	for _, s := range d.j.segments {
		if s.first == d.first {
			end = s.size
		}
	}
	d.j.mu.Unlock()
	if end >= 0 {
		if d.pos >= end {
			return 0, io.EOF
		}
		p = p[:min(int64(len(p)), end-d.pos)]
	}
	n, err := d.f.ReadAt(p, d.pos)
	d.pos += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// Pos returns the seq the next call to Next returns.
func (r *Reader) Pos() uint64 { return r.next }

// Close releases the reader's file.
func (r *Reader) Close() error {
	if r.f != nil {
		err := r.f.Close()
		r.f, r.br = nil, nil
		return err
	}
	return nil
}

// SegmentInfo describes one segment file, for retention decisions.
type SegmentInfo struct {
	First   uint64    // seq of its first entry
	Last    uint64    // seq of its last entry (First-1 when empty)
	Bytes   int64     // size on disk
	Path    string    // file path
	ModTime time.Time // time of its last write
}

// Segments lists the journal's segments, oldest first. The last one is the
// one being written.
func (j *Journal) Segments() []SegmentInfo {
	j.mu.Lock()
	segs := append([]segment(nil), j.segments...)
	committed := j.committed
	j.mu.Unlock()
	out := make([]SegmentInfo, len(segs))
	for i, s := range segs {
		last := committed
		if i+1 < len(segs) {
			last = segs[i+1].first - 1
		}
		var mt time.Time
		if st, err := os.Stat(s.path); err == nil {
			mt = st.ModTime()
		}
		out[i] = SegmentInfo{First: s.first, Last: last, Bytes: s.size, Path: s.path, ModTime: mt}
	}
	return out
}

// Prune removes, oldest first, whole segments whose every entry has
// seq <= deliveredUpTo and for which remove returns true (nil removes every
// delivered one). The segment being written is never removed.
func (j *Journal) Prune(deliveredUpTo uint64, remove func(SegmentInfo) bool) (int, error) {
	n := 0
	for {
		segs := j.Segments()
		if len(segs) < 2 {
			return n, nil
		}
		s := segs[0]
		if s.Last > deliveredUpTo || (remove != nil && !remove(s)) {
			return n, nil
		}
		j.mu.Lock()
		if len(j.segments) < 2 || j.segments[0].path != s.Path {
			j.mu.Unlock()
			continue
		}
		j.segments = j.segments[1:]
		j.mu.Unlock()
		if err := os.Remove(s.Path); err != nil && !os.IsNotExist(err) {
			return n, fmt.Errorf("audit: pruning %s: %w", s.Path, err)
		}
		n++
	}
}
