package audit

// A read-only view of a journal directory that is not open: one set aside
// after damage (the documented recovery), read to deliver what its
// receivers never got. The view never writes to the directory: no marker,
// no trim of a torn tail, no repair, no record of the chain beside it.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// Sentinel errors of OpenReadOnly.
var (
	// ErrNoSegments means the directory holds no journal segment.
	ErrNoSegments = errors.New("audit: no journal segment in the directory")
	// ErrLiveJournal means the directory is the live journal's own, or
	// holds the live journal's chain (a copy of it): its entries are the
	// running forwarders' to deliver.
	ErrLiveJournal = errors.New("audit: the directory is the live journal, or a copy of its chain")
)

// ReadOnlyOptions are the options of OpenReadOnly.
type ReadOnlyOptions struct {
	// Appender receives what is appended to the view (a forwarder records
	// its targets' state): the live journal, never the directory read.
	// Required. When it is a *Journal, the view refuses that journal's
	// directory and chain.
	Appender Appender
	// Tail, when above 0, reads only the newest Tail segments: the hash
	// chain is checked from the header of the first of them, which names
	// the hash of the entry before it. A view of a journal's recent
	// entries need not read the whole of a long journal.
	Tail int
}

// ReadOnlyJournal is a journal directory read without being opened: its
// segments in order, the hash chain checked from the first kept entry, up
// to the last entry that parses and chains (LastSeq). It implements what a
// forwarder needs of a journal: its Reader yields entries up to LastSeq and
// then waits, Prune removes nothing, and Append goes to
// ReadOnlyOptions.Appender. Nothing is ever written to the directory.
type ReadOnlyJournal struct {
	// j holds the reading side only (dir, chain, segments, committed):
	// it has no writer, no marker and no file open for writing. Each
	// segment's size is where its good entries end, so a Reader never
	// reads the damaged entry or anything after it.
	j     *Journal
	app   Appender
	first uint64
	stop  *Problem
}

// OpenReadOnly reads the journal in dir (see ReadOnlyJournal). A journal
// damaged somewhere is not an error: reading stops before the first entry
// that is torn, damaged or does not chain, and Stop says which and why. It
// is an error when dir is not a directory, holds no segment
// (ErrNoSegments), is the live journal's (ErrLiveJournal), or has no
// readable first segment header.
func OpenReadOnly(dir string, opts *ReadOnlyOptions) (*ReadOnlyJournal, error) {
	if opts == nil || opts.Appender == nil {
		return nil, errors.New("audit: ReadOnlyOptions.Appender is required")
	}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("audit: %s is not a directory", dir)
	}
	live, _ := opts.Appender.(*Journal)
	if live != nil {
		if lst, err := os.Stat(live.Dir()); err == nil && os.SameFile(st, lst) {
			return nil, fmt.Errorf("%w: %s", ErrLiveJournal, dir)
		}
	}
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	if len(segs) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoSegments, dir)
	}
	if opts.Tail > 0 && len(segs) > opts.Tail {
		segs = segs[len(segs)-opts.Tail:]
	}
	sc := scanReadOnly(segs)
	if sc.err != nil {
		return nil, fmt.Errorf("audit: %s: %w", dir, sc.err)
	}
	if live != nil && sc.chain == live.ChainID() {
		return nil, fmt.Errorf("%w: %s holds %s, the live journal's", ErrLiveJournal, dir, chainName(sc.chain))
	}
	if sc.stop == nil {
		// Whole entries, but fewer than the journal recorded as durable:
		// its tail was cut.
		if m, ok := readMarkerFile(filepath.Join(dir, "head")); ok && m.seq > sc.last {
			sc.stop = &Problem{Seq: sc.last + 1, Reason: fmt.Sprintf("the journal ends at seq %d but seq %d was recorded as durable: entries %d..%d are missing", sc.last, m.seq, sc.last+1, m.seq)}
		}
	}
	j := &Journal{dir: dir, chain: sc.chain, segments: sc.segs, committed: sc.last, lastHash: sc.lastHash, notify: make(chan struct{})}
	return &ReadOnlyJournal{j: j, app: opts.Appender, first: sc.first, stop: sc.stop}, nil
}

// Dir returns the directory read.
func (r *ReadOnlyJournal) Dir() string { return r.j.dir }

// ChainID returns the journal's chain id ("" for a legacy journal).
func (r *ReadOnlyJournal) ChainID() string { return r.j.chain }

// FirstSeq returns the seq of the oldest kept entry.
func (r *ReadOnlyJournal) FirstSeq() uint64 { return r.first }

// LastSeq returns the seq of the last good entry: FirstSeq()-1 when not
// even the first one is.
func (r *ReadOnlyJournal) LastSeq() uint64 { return r.j.committed }

// Stop says where the journal stops being readable, and why: the seq of
// the first entry that is torn, damaged, does not chain or is missing.
// Nil when every entry is good.
func (r *ReadOnlyJournal) Stop() *Problem { return r.stop }

// Reader returns a reader positioned at the first entry with seq >= from
// (0 or 1: the oldest kept). It yields entries up to LastSeq, then waits
// until its ctx ends.
func (r *ReadOnlyJournal) Reader(from uint64) (*Reader, error) { return r.j.Reader(from) }

// Segments lists the segments read, oldest first, up to the one holding
// the last good entry.
func (r *ReadOnlyJournal) Segments() []SegmentInfo { return r.j.Segments() }

// Prune removes nothing: the directory is never written.
func (r *ReadOnlyJournal) Prune(uint64, func(SegmentInfo) bool) (int, error) { return 0, nil }

// Append appends e to ReadOnlyOptions.Appender, never to the directory
// read.
func (r *ReadOnlyJournal) Append(ctx context.Context, e *Event) (uint64, error) {
	return r.app.Append(ctx, e)
}

type readOnlyScan struct {
	segs     []segment // size: where the good entries end
	chain    string
	first    uint64
	last     uint64
	lastHash [32]byte
	stop     *Problem
	err      error // the first segment's header cannot be read
}

// scanReadOnly reads segs in order, checking every entry as VerifyDir
// does, and stops at the first problem.
func scanReadOnly(segs []segment) readOnlyScan {
	var (
		sc     readOnlyScan
		expect uint64
	)
	for i, s := range segs {
		name := filepath.Base(s.path)
		stop := func(seq uint64, format string, a ...any) readOnlyScan {
			sc.stop = &Problem{Seq: seq, File: name, Reason: fmt.Sprintf(format, a...)}
			return sc
		}
		f, err := openRegular(s.path)
		if err != nil {
			if i == 0 {
				sc.err = err
				return sc
			}
			return stop(expect, "%v", err)
		}
		size, p := scanSegment(f, s, i == 0, &sc, &expect)
		f.Close()
		if p != nil && size < 0 {
			if i == 0 {
				sc.err = errors.New(p.Reason)
				return sc
			}
			return stop(p.Seq, "%s", p.Reason)
		}
		sc.segs = append(sc.segs, segment{first: s.first, path: s.path, size: size})
		if p != nil {
			return stop(p.Seq, "%s", p.Reason)
		}
	}
	return sc
}

// openRegular opens path for reading if it is a regular file: not a
// symlink (which could lead anywhere), a FIFO (which would block the
// open) or a device.
func openRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("audit: %s is not a regular file (%s)", filepath.Base(path), fi.Mode().Type())
	}
	return f, nil
}

// maxSegmentLine bounds a line of a segment read by the read-only view: the
// journal never writes an entry longer (MaxEventBytes of event, its hash
// and seq), and a damaged file without a newline is not read whole.
const maxSegmentLine = MaxEventBytes + 4<<10

// readLineMax is readLine for at most maxSegmentLine bytes.
func readLineMax(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if i := bytes.IndexByte(chunk, 0); i >= 0 {
			return append(line, chunk[:i]...), errPadding
		}
		line = append(line, chunk...)
		if len(line) > maxSegmentLine {
			return line, fmt.Errorf("a line of over %d bytes, longer than any entry the journal writes", maxSegmentLine)
		}
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

// scanSegment checks one segment's header against what comes before it and
// its entries; it returns where its good entries end (-1 when its header is
// not good) and the first problem.
func scanSegment(f *os.File, s segment, first bool, sc *readOnlyScan, expect *uint64) (int64, *Problem) {
	br := bufio.NewReaderSize(f, 1<<20)
	hdr, err := readLineMax(br)
	if err != nil {
		return -1, &Problem{Seq: s.first, Reason: "segment header missing or cut"}
	}
	line := bytes.TrimSuffix(hdr, []byte("\n"))
	hfirst, hprev, err := parseHeader(line)
	var chain string
	if err == nil {
		chain, err = headerChain(line)
	}
	if err != nil || hfirst != s.first || hfirst == 0 {
		return -1, &Problem{Seq: s.first, Reason: "segment header damaged, or it does not match its file name"}
	}
	if first {
		sc.chain, sc.first, sc.last, sc.lastHash = chain, hfirst, hfirst-1, hprev
		*expect = hfirst
	} else {
		switch {
		case chain != sc.chain:
			return -1, &Problem{Seq: hfirst, Reason: fmt.Sprintf("segment of %s in a journal of %s", chainName(chain), chainName(sc.chain))}
		case hfirst < *expect:
			return -1, &Problem{Seq: hfirst, Reason: fmt.Sprintf("segments overlap: %s begins at seq %d, which the one before already holds", filepath.Base(s.path), hfirst)}
		case hfirst != *expect:
			return -1, &Problem{Seq: *expect, Reason: fmt.Sprintf("entries %d..%d missing between segments", *expect, hfirst-1)}
		case hprev != sc.lastHash:
			return -1, &Problem{Seq: hfirst, Reason: "segment does not continue the chain of the one before"}
		}
	}
	off := int64(len(hdr))
	for {
		line, err := readLineMax(br)
		if err == io.EOF || errors.Is(err, errPadding) {
			if len(line) > 0 {
				return off, &Problem{Seq: *expect, Reason: "entry cut short (torn)"}
			}
			if errors.Is(err, errPadding) {
				if zeros, zerr := onlyZeros(s.path, off); zerr != nil || !zeros {
					return off, &Problem{Seq: *expect, Reason: "data after the zero byte that ends the entries: entries hidden behind it, or damage"}
				}
			}
			return off, nil
		}
		if err != nil {
			return off, &Problem{Seq: *expect, Reason: err.Error()}
		}
		h, canon, seq, err := parseLine(line[:len(line)-1])
		if err != nil {
			return off, &Problem{Seq: *expect, Reason: "entry damaged: " + err.Error()}
		}
		if seq != *expect {
			return off, &Problem{Seq: *expect, Reason: fmt.Sprintf("found seq %d where %d belongs: an entry was removed, reordered or damaged", seq, *expect)}
		}
		if ChainHash(sc.lastHash, canon) != h {
			return off, &Problem{Seq: seq, Reason: "hash does not match: the entry or its predecessor was changed"}
		}
		var ev Event
		if err := json.Unmarshal(canon, &ev); err != nil || ev.Seq != seq {
			return off, &Problem{Seq: seq, Reason: "entry is not a valid event"}
		}
		sc.last, sc.lastHash = seq, h
		*expect = seq + 1
		off += int64(len(line))
	}
}
