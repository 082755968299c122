package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sentinel errors of the journal.
var (
	// ErrClosed is returned by Append after Close.
	ErrClosed = errors.New("audit: journal is closed")
	// ErrUnwritable means the journal could not make an entry durable; the
	// caller's action must fail. It wraps the underlying I/O error.
	ErrUnwritable = errors.New("audit: journal cannot be written")
	// ErrDiskLimit is returned when the journal reached Options.MaxBytes and
	// the policy is DiskFullBlock.
	ErrDiskLimit = errors.New("audit: journal reached its size limit")
	// ErrTruncated means the journal on disk ends before the last sequence
	// number recorded as durable: entries were removed after they were written.
	ErrTruncated = errors.New("audit: journal was truncated")
	// ErrEventTooLarge is returned by Append for an event whose canonical
	// encoding is over MaxEventBytes; the caller's action must fail.
	ErrEventTooLarge = errors.New("audit: event too large")
)

// MaxEventBytes bounds an event's canonical encoding: Append refuses a
// larger one, so a forwarder never splits an event into more than
// MaxParts parts, and a capture verifier can refuse more.
const MaxEventBytes = 1 << 20

// MinPartBytes is the least room for event text a forwarder leaves in one
// part of a split event; it refuses a message size limit that leaves less.
const MinPartBytes = 128

// MaxParts is the most parts a split event can have: its canonical bytes,
// escaped as the content of a JSON string (at most 6 bytes each), in parts
// that each hold at least MinPartBytes-5 bytes but the last (an escape is
// never cut, and is at most 6 bytes).
const MaxParts = 6*MaxEventBytes/(MinPartBytes-5) + 1

// Disk-full policies.
const (
	DiskFullBlock      = "block"       // new actions fail: fail closed (the default)
	DiskFullDropOldest = "drop_oldest" // the oldest segment goes, with a high-severity event
)

// Options tune a journal. A nil *Options means the defaults.
type Options struct {
	// SegmentBytes is the size at which the journal starts a new segment
	// file. Default 64 MiB.
	SegmentBytes int64
	// MaxBytes bounds the total size of all segments, the zeros kept ahead
	// of the newest entries (prealloc.go) included; 0 means only the file
	// system bounds it. What happens at the bound is DiskFull.
	MaxBytes int64
	// DiskFull is DiskFullBlock (default) or DiskFullDropOldest. It applies
	// when MaxBytes is reached or the file system is full.
	DiskFull string
	// Logger receives operational messages; never event contents.
	Logger *slog.Logger
	// Now is the clock for events without a time. Default time.Now.
	Now func() time.Time

	noAhead    bool  // no zeros written ahead (prealloc.go), for the benchmark's comparison
	aheadChunk int64 // zeros written per step; tests make it small
}

func (o *Options) withDefaults() Options {
	var out Options
	if o != nil {
		out = *o
	}
	if out.SegmentBytes <= 0 {
		out.SegmentBytes = 64 << 20
	}
	if out.DiskFull == "" {
		out.DiskFull = DiskFullBlock
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return out
}

// Entry is one journal record: the event's canonical bytes and its place in
// the chain. Hash = SHA-256(Prev || Canonical).
type Entry struct {
	Chain     string // the journal's chain id (Journal.ChainID)
	Seq       uint64
	Prev      [32]byte
	Hash      [32]byte
	Canonical []byte
	Event     Event
}

// ChainHash returns the chain hash of an entry whose predecessor's hash is
// prev (all zeros for the first entry of a journal).
func ChainHash(prev [32]byte, canonical []byte) [32]byte {
	h := sha256.New()
	h.Write(prev[:])
	h.Write(canonical)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Journal is the append-only, hash-chained audit journal in one directory.
// It is safe for concurrent use; concurrent Appends share fsyncs.
type Journal struct {
	dir   string
	opts  Options
	mark  *marker
	chain string // the chain id, in every segment header; "" for a legacy journal

	reqs   chan *appendReq
	sendMu sync.RWMutex // held shared to send on reqs, exclusively to close it
	done   chan struct{}

	mu        sync.Mutex // guards the fields below
	closed    bool
	committed uint64   // last durable seq
	lastHash  [32]byte // hash of entry `committed`
	notify    chan struct{}
	segments  []segment // sorted by first seq; the last one is written to
	broken    error     // a failed fsync: nothing more is accepted

	syncs atomic.Int64 // fsyncs of entries done, for the benchmark's report

	// commitStart is when the batch being written began (unix ns), 0 when
	// the writer waits: for Stalled.
	commitStart atomic.Int64

	// The limits SetLimits may change while the journal runs (a reload);
	// opts keeps the values it was opened with.
	maxBytes atomic.Int64
	diskFull atomic.Pointer[string]

	ahead ahead // zeros written ahead of the entries (prealloc.go)

	// The record of the chain beside the directory (chainlink.go).
	lastMu    sync.Mutex // serializes saveLast
	lastSaved uint64     // the seq it names, once this journal wrote it
	// lastFailing is set while writing the record fails (recordChain).
	lastFailing bool

	// writer-owned
	// recordFirst: a chain with no record beside it yet (a first start);
	// the first commit writes one.
	recordFirst bool
	f           *os.File
	size        int64
	nextSeq     uint64
	prev        [32]byte
}

type segment struct {
	first uint64
	path  string
	size  int64
}

type appendReq struct {
	ev    *Event
	canon []byte // encoded with seq 0; the writer puts the real seq in
	seq   uint64
	err   error
	done  chan struct{}
}

const (
	segPrefix   = "journal-"
	segSuffix   = ".log"
	headerMagic = "applianced-journal v1"
)

func segName(first uint64) string { return fmt.Sprintf("%s%020d%s", segPrefix, first, segSuffix) }

// Open opens or creates the journal in dir (created 0700). It checks the last
// segment's tail: a final line torn by a crash (never acknowledged) is cut
// off; a journal that ends before its durable marker, or whose every
// segment is gone, is refused with ErrTruncated.
//
// A new chain whose directory has a record of an earlier chain beside it
// (dir + ".last", see chainlink.go) starts with an audit.chain_start event
// at seq 1 naming that chain; without a record (a first start) its seq 1
// is the first event appended.
func Open(dir string, opts *Options) (*Journal, error) {
	o := opts.withDefaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: creating journal dir: %w", err)
	}
	if err := removeTemps(dir, o.Logger); err != nil {
		return nil, err
	}
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	mark, err := openMarker(filepath.Join(dir, "head"))
	if err != nil {
		return nil, err
	}
	var cutEvent *Event // entries cut at open, recorded once the writer runs
	newChain := false   // a chain made here: it may continue a recorded one
	j := &Journal{dir: dir, opts: o, mark: mark, reqs: make(chan *appendReq, 1024),
		done: make(chan struct{}), notify: make(chan struct{}), nextSeq: 1}
	j.maxBytes.Store(o.MaxBytes)
	j.diskFull.Store(&o.DiskFull)
	if len(segs) == 0 {
		// No segment, but a durable marker: every entry was deleted, which
		// must not pass for a new journal (it would overwrite the marker,
		// the only trace of what was there).
		if m := mark.load(); m.seq > 0 {
			mark.close()
			return nil, fmt.Errorf("%w: %s holds no journal segment but seq %d was recorded as durable; entries 1..%d are missing (move %s aside to start a new chain)",
				ErrTruncated, dir, m.seq, m.seq, dir)
		}
		// A new chain: entries of a journal set aside, which a receiver
		// holds too, are told from this one's by the chain id.
		if j.chain, err = newChainID(); err != nil {
			mark.close()
			return nil, err
		}
		if err := j.newSegment(1, [32]byte{}); err != nil {
			mark.close()
			return nil, err
		}
		newChain = true
	} else {
		last := segs[len(segs)-1]
		lastSeq, lastHash, goodSize, clean, err := scanTail(last)
		if err != nil {
			mark.close()
			return nil, err
		}
		if j.chain, err = segmentChain(last.path); err != nil {
			mark.close()
			return nil, err
		}
		if m := mark.load(); m.seq > lastSeq {
			mark.close()
			return nil, fmt.Errorf("%w: %s ends at seq %d but seq %d was recorded as durable; entries %d..%d are missing (run `applianced audit verify`; move %s aside to start a new chain)",
				ErrTruncated, last.path, lastSeq, m.seq, lastSeq+1, m.seq, dir)
		}
		f, err := os.OpenFile(last.path, os.O_RDWR, 0o600)
		if err != nil {
			mark.close()
			return nil, fmt.Errorf("audit: opening journal segment: %w", err)
		}
		if !clean {
			// Whole entries after what is cut were not a crash's torn
			// line: a zero byte written into an entry hides the ones after
			// it. (A crash can leave them too, never acknowledged, when
			// the disk kept later pages of a batch and not earlier ones.)
			// They are cut either way, and said.
			if n, first := entriesAfter(last.path, goodSize, lastSeq); n > 0 {
				cutEvent = &Event{Type: "audit.tamper", Severity: SeverityHigh, Action: "audit.open", Target: last.path,
					Outcome: OutcomeFailure, Reason: "whole entries after a damaged one were cut when the journal opened: a zero byte written into an entry, or a crash that kept a batch's later pages only",
					Details: map[string]string{"entries_cut": strconv.Itoa(n), "first_seq_cut": strconv.FormatUint(first, 10), "after_seq": strconv.FormatUint(lastSeq, 10)}}
			}
			o.Logger.Warn("audit: cutting a torn final line left by a crash", "segment", last.path, "bytes", last.size-goodSize)
			if err := f.Truncate(goodSize); err != nil {
				f.Close()
				mark.close()
				return nil, fmt.Errorf("audit: repairing torn tail: %w", err)
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				f.Close()
				mark.close()
				return nil, fmt.Errorf("audit: repairing torn tail: %w", err)
			}
			last.size = goodSize
		}
		segs[len(segs)-1].size = goodSize
		if _, err := f.Seek(goodSize, io.SeekStart); err != nil {
			f.Close()
			mark.close()
			return nil, fmt.Errorf("audit: %w", err)
		}
		j.segments, j.f, j.size = segs, f, goodSize
		j.nextSeq, j.prev = lastSeq+1, lastHash
		j.committed, j.lastHash = lastSeq, lastHash
		j.ahead.path = last.path
		j.ahead.zeroEnd.Store(last.size)
		// A chain made by an Open whose chain start never became durable
		// (a full disk, a crash right after the first segment): it is
		// still new, and still continues what the record names.
		newChain = lastSeq == 0
	}
	if newChain {
		if _, err := os.Lstat(lastPath(dir)); errors.Is(err, os.ErrNotExist) {
			j.recordFirst = true
		}
	}
	j.startAhead()
	go j.writer()
	if newChain {
		if err := j.startChain(); err != nil {
			j.Close()
			return nil, err
		}
	}
	if cutEvent != nil {
		o.Logger.Error("audit: entries after a damaged one were cut", "details", cutEvent.Details)
		if _, err := j.Append(context.Background(), cutEvent); err != nil {
			o.Logger.Error("audit: recording the cut entries", "err", err)
		}
	}
	return j, nil
}

// entriesAfter counts the lines after off in path that parse as entries of
// a seq beyond last, and the first such seq.
func entriesAfter(path string, off int64, last uint64) (n int, first uint64) {
	b, err := os.ReadFile(path)
	if err != nil || off >= int64(len(b)) {
		return 0, 0
	}
	for _, line := range bytes.Split(b[off:], []byte("\n")) {
		line = bytes.TrimLeft(line, "\x00")
		if _, _, seq, err := parseLine(line); err == nil && seq > last {
			if n == 0 {
				first = seq
			}
			n++
		}
	}
	return n, first
}

// dropsOldest reports whether the disk-full policy is DiskFullDropOldest.
func (j *Journal) dropsOldest() bool { return *j.diskFull.Load() == DiskFullDropOldest }

// SetLimits changes MaxBytes and DiskFull (see Options) of the running
// journal, as a config reload does. A limit below what the journal holds
// now under DiskFullBlock would refuse every append until an operator
// removed segments: it is refused, and nothing changes.
func (j *Journal) SetLimits(maxBytes int64, diskFull string) error {
	if diskFull == "" {
		diskFull = DiskFullBlock
	}
	if diskFull != DiskFullBlock && diskFull != DiskFullDropOldest {
		return fmt.Errorf("audit: disk_full %q: want %q or %q", diskFull, DiskFullBlock, DiskFullDropOldest)
	}
	if maxBytes < 0 {
		return fmt.Errorf("audit: max_bytes %d: want 0 (no limit) or more", maxBytes)
	}
	if maxBytes > 0 && diskFull == DiskFullBlock {
		if held := j.totalSize() + maxHeaderBytes; held > maxBytes {
			return fmt.Errorf("audit: max_bytes %d is below the %d bytes the journal holds now: under disk_full = %q every action would fail; raise it, or choose %q",
				maxBytes, held, DiskFullBlock, DiskFullDropOldest)
		}
	}
	j.maxBytes.Store(maxBytes)
	j.diskFull.Store(&diskFull)
	return nil
}

// Limits returns the size limit (0: none) and disk-full policy in force.
func (j *Journal) Limits() (maxBytes int64, diskFull string) {
	return j.maxBytes.Load(), *j.diskFull.Load()
}

// ChainID returns the journal's chain id: random, made with its seq 1 and
// kept in every segment header, so that the entries of a journal set aside
// (whose successor starts again at seq 1) are not taken for this one's. A
// journal made by a version before chain ids has none: "" (the legacy
// chain) for as long as it lasts.
func (j *Journal) ChainID() string { return j.chain }

// Dir returns the journal's directory.
func (j *Journal) Dir() string { return j.dir }

// LastSeq returns the last durable sequence number (0 for an empty journal).
func (j *Journal) LastSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.committed
}

// Append records e durably and returns its sequence number. It sets e.Seq,
// and e.Time when zero. An error means nothing was recorded.
func (j *Journal) Append(ctx context.Context, e *Event) (uint64, error) {
	if e.Time.IsZero() {
		e.Time = j.opts.Now().UTC()
	}
	e.Seq = 0
	canon, err := e.Canonical()
	if err != nil {
		return 0, fmt.Errorf("audit: encoding event: %w", err)
	}
	if len(canon) > MaxEventBytes {
		return 0, fmt.Errorf("%w: %q event of %d bytes, limit %d", ErrEventTooLarge, e.Type, len(canon), MaxEventBytes)
	}
	r := &appendReq{ev: e, canon: canon, done: make(chan struct{})}
	if err := j.send(ctx, r); err != nil {
		return 0, err
	}
	// Once queued, the entry may become durable; wait for the outcome even if
	// ctx ends, so a caller never acts on an unrecorded decision or reports a
	// recorded one as lost.
	<-r.done
	if r.err != nil {
		return 0, r.err
	}
	e.Seq = r.seq
	return r.seq, nil
}

// testHookBeforeSend, if set, runs between send's check that the journal
// is open and the send itself.
var testHookBeforeSend atomic.Pointer[func()]

// send queues r for the writer. Close cannot close the queue while a send
// is under way: it waits for the send, and the writer drains the queue.
func (j *Journal) send(ctx context.Context, r *appendReq) error {
	j.sendMu.RLock()
	defer j.sendMu.RUnlock()
	j.mu.Lock()
	closed, broken := j.closed, j.broken
	j.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if broken != nil {
		return broken
	}
	if hook := testHookBeforeSend.Load(); hook != nil {
		(*hook)()
	}
	select {
	case j.reqs <- r:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("audit: %w", ctx.Err())
	}
}

// Close stops accepting appends, finishes those queued, and closes files.
func (j *Journal) Close() error {
	j.sendMu.Lock()
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		j.sendMu.Unlock()
		return nil
	}
	j.closed = true
	j.mu.Unlock()
	close(j.reqs)
	j.sendMu.Unlock()
	<-j.done
	j.stopAhead()
	var errs []error
	// Every entry is durable now: the record names the last one, for
	// the chain that follows if this journal is ever set aside.
	errs = append(errs, j.saveLast())
	if j.f != nil {
		// A stopped journal's files hold exactly their entries.
		errs = append(errs, j.trim(trimJob{j.f, j.size}))
		j.f = nil
	}
	errs = append(errs, j.mark.close())
	return errors.Join(errs...)
}

// writer is the single goroutine that writes: it takes every request queued
// while the previous fsync ran, writes them in one write, syncs once, and
// acknowledges them all (group commit).
func (j *Journal) writer() {
	defer close(j.done)
	batch := make([]*appendReq, 0, 256)
	var buf bytes.Buffer
	for {
		r, ok := <-j.reqs
		if !ok {
			return
		}
		batch = append(batch[:0], r)
	drain:
		for len(batch) < 4096 {
			select {
			case r, ok := <-j.reqs:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		j.commitStart.Store(time.Now().UnixNano())
		j.commit(batch, &buf)
		j.commitStart.Store(0)
	}
}

// Stalled reports whether a batch has been in writing (write and fsync)
// for longer than d: a disk that stopped answering. Every action then
// waits on the journal.
func (j *Journal) Stalled(d time.Duration) bool {
	s := j.commitStart.Load()
	return s != 0 && time.Since(time.Unix(0, s)) > d
}

func (j *Journal) commit(batch []*appendReq, buf *bytes.Buffer) {
	fail := func(err error) {
		for _, r := range batch {
			r.err = err
			close(r.done)
		}
	}
	j.mu.Lock()
	broken := j.broken
	j.mu.Unlock()
	if broken != nil {
		fail(broken)
		return
	}
	buf.Reset()
	seq, prev := j.nextSeq, j.prev
	for _, r := range batch {
		// r.canon keeps seq 0: a batch retried (after drop_oldest made room
		// on a full disk) numbers it again from the same encoding.
		line := withSeq(r.canon, seq)
		h := ChainHash(prev, line)
		var hexHash [64]byte
		hex.Encode(hexHash[:], h[:])
		buf.Write(hexHash[:])
		buf.WriteByte(' ')
		buf.Write(line)
		buf.WriteByte('\n')
		r.seq, prev = seq, h
		seq++
	}
	if err := j.makeRoom(int64(buf.Len())); err != nil {
		fail(err)
		return
	}
	n, werr := j.write(buf.Bytes())
	if werr == nil {
		// The appenders the previous batch woke wait in this goroutine's
		// run queue, and a goroutine blocked in fdatasync keeps its P (and
		// that queue) until the runtime's monitor takes it back. Yielding
		// first lets them run elsewhere while the disk works (about 5%
		// more tokens per second in the broker's benchmark).
		runtime.Gosched()
		werr = unix.Fdatasync(int(j.f.Fd()))
		j.syncs.Add(1)
		if werr != nil {
			// After a failed fsync the page cache's state is unknown; accept
			// nothing more until the journal is reopened.
			err := fmt.Errorf("%w: fsync %s: %w", ErrUnwritable, j.f.Name(), werr)
			j.mu.Lock()
			j.broken = err
			j.mu.Unlock()
			j.opts.Logger.Error("audit: journal fsync failed; refusing further appends", "err", werr)
			fail(err)
			return
		}
	}
	if werr != nil {
		// Nothing of this batch may remain: cut back to where it started.
		if n > 0 {
			if terr := j.cut(); terr != nil {
				err := fmt.Errorf("%w: %w (and cutting the partial write failed: %w)", ErrUnwritable, werr, terr)
				j.mu.Lock()
				j.broken = err
				j.mu.Unlock()
				fail(err)
				return
			}
		}
		if _, err := j.f.Seek(j.size, io.SeekStart); err != nil {
			j.mu.Lock()
			j.broken = fmt.Errorf("%w: %w", ErrUnwritable, err)
			j.mu.Unlock()
		}
		if errors.Is(werr, syscall.ENOSPC) && j.dropsOldest() && j.dropOldest() {
			j.commit(batch, buf) // retry once there is room
			return
		}
		fail(fmt.Errorf("%w: %w", ErrUnwritable, werr))
		return
	}
	j.size += int64(n)
	j.wrote(j.size)
	j.nextSeq, j.prev = seq, prev
	j.mu.Lock()
	j.committed, j.lastHash = seq-1, prev
	j.segments[len(j.segments)-1].size = j.size
	ch := j.notify
	j.notify = make(chan struct{})
	j.mu.Unlock()
	close(ch)
	j.mark.store(seq-1, prev)
	if j.recordFirst {
		// A first start: no record names any chain yet. Once, with the
		// first entry, the record names this one, so that a chain that
		// replaces it before its first checkpoint still names it.
		j.recordFirst = false
		if err := j.saveLast(); err != nil {
			j.opts.Logger.Error("audit: recording the journal's chain beside its directory; the next checkpoint tries again", "err", err)
		}
	}
	for _, r := range batch {
		close(r.done)
	}
	if j.size >= j.opts.SegmentBytes && j.roomForHeader() {
		if err := j.newSegment(seq, prev); err != nil {
			j.opts.Logger.Error("audit: starting a new segment", "err", err)
		}
	}
}

// maxHeaderBytes bounds a segment header's size, for the size limit.
const maxHeaderBytes = 128

// roomForHeader says whether a new segment's header fits under MaxBytes,
// making room under drop_oldest. Under block, when it does not fit, the
// segment being written goes on past SegmentBytes instead, and every batch
// still has to fit (makeRoom).
func (j *Journal) roomForHeader() bool {
	if j.maxBytes.Load() <= 0 {
		return true
	}
	for j.totalSize()+maxHeaderBytes > j.maxBytes.Load() {
		if !j.dropsOldest() || !j.dropOldest() {
			return false
		}
	}
	return true
}

// makeRoom applies the size limit before a batch of n bytes is written.
// Under block, a batch that does not fit is refused. Under drop_oldest the
// oldest segments go first; when only the segment being written is left,
// the journal moves on to a new segment and drops that one too. A batch
// larger than MaxBytes on its own is then written anyway (drop_oldest
// never refuses an entry for the limit), and logged.
func (j *Journal) makeRoom(n int64) error {
	if j.maxBytes.Load() <= 0 {
		return nil
	}
	for j.totalSize()+n > j.maxBytes.Load() {
		if !j.dropsOldest() {
			return fmt.Errorf("%w (%d bytes; policy %q)", ErrDiskLimit, j.maxBytes.Load(), *j.diskFull.Load())
		}
		if j.dropOldest() {
			continue
		}
		j.mu.Lock()
		emptySeg := j.segments[len(j.segments)-1].first == j.nextSeq
		j.mu.Unlock()
		if emptySeg {
			j.opts.Logger.Warn("audit: a batch larger than max_bytes on its own; written anyway (policy drop_oldest)",
				"batch_bytes", n, "max_bytes", j.maxBytes.Load())
			return nil
		}
		if err := j.newSegment(j.nextSeq, j.prev); err != nil {
			return fmt.Errorf("%w: %w", ErrUnwritable, err)
		}
	}
	return nil
}

func (j *Journal) totalSize() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	var n int64
	for _, s := range j.segments {
		n += s.size
	}
	return n
}

// dropOldest removes the oldest segment (never the one being written) under
// the drop_oldest policy and records that it did, in the next segment.
func (j *Journal) dropOldest() bool {
	j.mu.Lock()
	if len(j.segments) < 2 {
		j.mu.Unlock()
		return false
	}
	old := j.segments[0]
	j.segments = j.segments[1:]
	j.mu.Unlock()
	if err := os.Remove(old.path); err != nil {
		j.opts.Logger.Error("audit: dropping oldest segment", "segment", old.path, "err", err)
		return false
	}
	j.opts.Logger.Warn("audit: journal full; dropped the oldest segment (policy drop_oldest)",
		"segment", old.path, "first_seq", old.first)
	// The drop itself is recorded asynchronously: this runs inside the
	// writer, which cannot wait for its own append.
	go func() {
		_, _ = j.Append(context.Background(), &Event{
			Type: "audit.dropped", Severity: SeverityHigh, Action: "audit.retention", Outcome: OutcomeSuccess,
			Reason:  "journal full; oldest segment dropped by policy drop_oldest",
			Details: map[string]string{"first_seq": strconv.FormatUint(old.first, 10), "segment": filepath.Base(old.path)},
		})
	}()
	return true
}

// withSeq replaces the leading `{"seq":0,` of an encoded event with the real
// sequence number, so the canonical bytes equal json.Marshal of the event
// with Seq set.
func withSeq(canon []byte, seq uint64) []byte {
	const zero = `{"seq":0,`
	out := make([]byte, 0, len(canon)+20)
	out = append(out, `{"seq":`...)
	out = strconv.AppendUint(out, seq, 10)
	out = append(out, ',')
	return append(out, canon[len(zero):]...)
}

// The segment appears under its name only with its header on disk: the
// header is written and synced under a temporary name, then linked into
// place (which fails if the name exists). A crash midway leaves at most a
// temporary file, which Open removes, never a segment without a header.
func (j *Journal) newSegment(first uint64, prev [32]byte) error {
	path := filepath.Join(j.dir, segName(first))
	tmp := path + tmpSuffix
	_ = os.Remove(tmp) // left by a crash while creating this very segment
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("audit: creating segment: %w", err)
	}
	fail := func(what string, err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("audit: %s: %w", what, err)
	}
	hdr := fmt.Sprintf("%s first=%d prev=%s", headerMagic, first, hex.EncodeToString(prev[:]))
	if j.chain != "" {
		hdr += " chain=" + j.chain
	}
	hdr += "\n"
	if _, err := f.WriteString(hdr); err != nil {
		return fail("writing segment header", err)
	}
	if err := f.Sync(); err != nil {
		return fail("syncing segment header", err)
	}
	if err := os.Link(tmp, path); err != nil {
		return fail("creating segment", err)
	}
	if err := syncDir(j.dir); err != nil {
		// Undo, so that no segment without entries stays between the one
		// still written and a later one.
		os.Remove(path)
		return fail("creating segment", err)
	}
	_ = os.Remove(tmp) // a leftover is removed by Open
	// The segment is listed before it becomes the one written, so that the
	// zeros written ahead in it are bounded with the old one counted
	// (aheadRoom).
	j.mu.Lock()
	j.segments = append(j.segments, segment{first: first, path: path, size: int64(len(hdr))})
	j.mu.Unlock()
	j.switchTo(f, path, int64(len(hdr)))
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: syncing %s: %w", dir, err)
	}
	return nil
}

// tmpSuffix marks a segment being created (see newSegment).
const tmpSuffix = ".tmp"

// removeTemps deletes the temporary files of segments whose creation a
// crash interrupted: they never held an entry.
func removeTemps(dir string, log *slog.Logger) error {
	tmps, err := filepath.Glob(filepath.Join(dir, segPrefix+"*"+segSuffix+tmpSuffix))
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	for _, t := range tmps {
		if err := os.Remove(t); err != nil {
			return fmt.Errorf("audit: removing an unfinished segment: %w", err)
		}
		log.Warn("audit: removed an unfinished segment left by a crash (it held no entry)", "path", t)
	}
	return nil
}

func listSegments(dir string) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: reading journal dir: %w", err)
	}
	var segs []segment
	for _, e := range ents {
		name := e.Name()
		if len(name) != len(segPrefix)+20+len(segSuffix) || name[:len(segPrefix)] != segPrefix {
			continue
		}
		first, err := strconv.ParseUint(name[len(segPrefix):len(segPrefix)+20], 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		segs = append(segs, segment{first: first, path: filepath.Join(dir, name), size: info.Size()})
	}
	sort.Slice(segs, func(a, b int) bool { return segs[a].first < segs[b].first })
	return segs, nil
}

// parseHeader reads a segment header line.
func parseHeader(line []byte) (first uint64, prev [32]byte, err error) {
	var prevHex string
	if _, err := fmt.Sscanf(string(line), headerMagic+" first=%d prev=%64s", &first, &prevHex); err != nil {
		return 0, prev, fmt.Errorf("bad segment header: %w", err)
	}
	b, err := hex.DecodeString(prevHex)
	if err != nil || len(b) != 32 {
		return 0, prev, errors.New("bad segment header: prev hash")
	}
	copy(prev[:], b)
	return first, prev, nil
}

// headerChain reads the chain id of a segment header line: "" for a
// header written before chain ids (the legacy chain).
func headerChain(line []byte) (string, error) {
	f := strings.Fields(string(line))
	switch {
	case len(f) == 4:
		return "", nil
	case len(f) == 5 && strings.HasPrefix(f[4], "chain="):
		id := strings.TrimPrefix(f[4], "chain=")
		if !validChainID(id) {
			return "", fmt.Errorf("bad segment header: chain id %q", id)
		}
		return id, nil
	}
	return "", errors.New("bad segment header: unknown fields")
}

// chainIDBytes is the size of a chain id before hex encoding.
const chainIDBytes = 16

func validChainID(id string) bool {
	if len(id) != 2*chainIDBytes || strings.ToLower(id) != id {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// newChainID returns a random chain id.
func newChainID() (string, error) {
	b := make([]byte, chainIDBytes)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		return "", fmt.Errorf("audit: chain id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// segmentChain reads the chain id from a segment file's header.
func segmentChain(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	hdr, err := readLine(bufio.NewReaderSize(f, 512))
	if err != nil {
		return "", fmt.Errorf("audit: %s: segment header: %w", path, err)
	}
	id, err := headerChain(bytes.TrimSuffix(hdr, []byte("\n")))
	if err != nil {
		return "", fmt.Errorf("audit: %s: %w", path, err)
	}
	return id, nil
}

// parseLine splits an entry line (without its newline) into hash and
// canonical bytes and reads the seq from the canonical bytes.
func parseLine(line []byte) (hash [32]byte, canon []byte, seq uint64, err error) {
	if len(line) < 66 || line[64] != ' ' {
		return hash, nil, 0, errors.New("malformed entry")
	}
	if _, err := hex.Decode(hash[:], line[:64]); err != nil {
		return hash, nil, 0, errors.New("malformed entry hash")
	}
	canon = line[65:]
	const pre = `{"seq":`
	if !bytes.HasPrefix(canon, []byte(pre)) {
		return hash, nil, 0, errors.New("malformed entry: no seq")
	}
	rest := canon[len(pre):]
	i := bytes.IndexByte(rest, ',')
	if i <= 0 {
		return hash, nil, 0, errors.New("malformed entry: no seq")
	}
	seq, err = strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil {
		return hash, nil, 0, errors.New("malformed entry: bad seq")
	}
	return hash, canon, seq, nil
}

// scanTail reads the last segment and returns the last valid entry's seq and
// hash and the size up to it, and whether nothing but zeros follows (clean).
// It accepts only a torn last line, and whatever a crash left after it, as
// damage; anything else wrong is left to Verify.
func scanTail(s segment) (lastSeq uint64, lastHash [32]byte, goodSize int64, clean bool, err error) {
	f, err := os.Open(s.path)
	if err != nil {
		return 0, lastHash, 0, false, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<20)
	hdr, err := readLine(br)
	if err != nil {
		return 0, lastHash, 0, false, fmt.Errorf("audit: %s: segment header missing (a crash while creating it?): remove the empty segment file if it has no entries", s.path)
	}
	first, prev, err := parseHeader(bytes.TrimSuffix(hdr, []byte("\n")))
	if err != nil {
		return 0, lastHash, 0, false, fmt.Errorf("audit: %s: %w", s.path, err)
	}
	lastSeq, lastHash, goodSize = first-1, prev, int64(len(hdr))
	for {
		line, err := readLine(br)
		if err == io.EOF || errors.Is(err, errPadding) {
			// The entries end here: cleanly if only zeros follow; a partial
			// line or anything after the zeros was never acknowledged.
			clean := len(line) == 0
			if clean {
				if clean, err = onlyZeros(s.path, goodSize); err != nil {
					return 0, lastHash, 0, false, err
				}
			}
			return lastSeq, lastHash, goodSize, clean, nil
		}
		if err != nil {
			return 0, lastHash, 0, false, fmt.Errorf("audit: reading %s: %w", s.path, err)
		}
		h, canon, seq, perr := parseLine(line[:len(line)-1])
		if perr != nil || seq != lastSeq+1 || ChainHash(lastHash, canon) != h {
			// Only a torn tail may be repaired: the bad line must be the last.
			if endOfData(readLine(br)) {
				return lastSeq, lastHash, goodSize, false, nil
			}
			return 0, lastHash, 0, false, fmt.Errorf("audit: %s: entry after seq %d is damaged (run `applianced audit verify`)", s.path, lastSeq)
		}
		lastSeq, lastHash = seq, h
		goodSize += int64(len(line))
	}
}
