package audit

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A new chain names the one it replaced. The journal keeps a small record
// of its chain beside its directory (in the state dir, so that it stays
// when the directory is moved aside): the chain id, and the last seq and
// its chain hash as of its first entry, newest checkpoint or Close. When Open
// makes a new chain and finds such a record, the new chain's seq 1 is an
// audit.chain_start event naming that predecessor; the hash chain, and so
// every checkpoint, covers it. A capture verifier then knows which chain
// must come before, and how far it must reach: a capture from which the
// older chain was dropped names it.
//
// The record is written off the per-append path: by the Checkpointer
// after each checkpoint, by Close, by Open right after a chain start, and
// once by the commit of a first journal's first entry (so that a chain set
// aside before its first checkpoint is still named by the next one).

// Chain start event: its type and the keys of its Details.
const (
	TypeChainStart = "audit.chain_start"
	// TypeChainRecord says the record could not be written (recordChain).
	TypeChainRecord = "audit.chain_record"

	DetailPreviousChain = "previous_chain" // the predecessor's chain id ("" for the legacy chain)
	DetailPreviousSeq   = "previous_seq"   // the last seq of it the record held
	DetailPreviousHash  = "previous_hash"  // that entry's chain hash, hex

	// DetailPrevious is PreviousUnknown when a record of a predecessor
	// exists but cannot be read; the event's Reason says why.
	DetailPrevious  = "previous"
	PreviousUnknown = "unknown"
)

// lastSuffix names the record of a journal's chain: dir + lastSuffix.
const lastSuffix = ".last"

const lastMagic = "applianced audit last v1"

// chainLink is what the record says of a chain: its id and its last seq
// and chain hash as of the newest checkpoint or close.
type chainLink struct {
	chain string
	seq   uint64
	hash  [32]byte
}

// lastPath returns the path of the record of the journal in dir: beside
// dir, not in it.
func lastPath(dir string) string { return filepath.Clean(dir) + lastSuffix }

func (l chainLink) encode() []byte {
	return fmt.Appendf(nil, "%s\nchain=%s\nseq=%d\nhash=%x\n", lastMagic, l.chain, l.seq, l.hash)
}

// errNoLast means there is no record of a previous chain: a first start.
var errNoLast = errors.New("audit: no record of a previous chain")

// maxLastBytes bounds what readLast reads: a record is under 200 bytes.
const maxLastBytes = 4096

// readLast reads the record at path: errNoLast when there is none.
func readLast(path string) (chainLink, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return chainLink{}, errNoLast
	}
	if err != nil {
		return chainLink{}, fmt.Errorf("audit: reading %s: %w", path, err)
	}
	defer f.Close()
	b := make([]byte, maxLastBytes+1)
	n, err := f.Read(b)
	if err != nil && n == 0 {
		return chainLink{}, fmt.Errorf("audit: reading %s: %w", path, err)
	}
	if n > maxLastBytes {
		return chainLink{}, fmt.Errorf("audit: %s: record of the previous chain is over %d bytes", path, maxLastBytes)
	}
	lines := strings.Split(string(b[:n]), "\n")
	if len(lines) != 5 || lines[0] != lastMagic || lines[4] != "" ||
		!strings.HasPrefix(lines[1], "chain=") || !strings.HasPrefix(lines[2], "seq=") || !strings.HasPrefix(lines[3], "hash=") {
		return chainLink{}, fmt.Errorf("audit: %s: malformed record of the previous chain", path)
	}
	var l chainLink
	l.chain = strings.TrimPrefix(lines[1], "chain=")
	if l.chain != "" && !validChainID(l.chain) {
		return chainLink{}, fmt.Errorf("audit: %s: bad chain id", path)
	}
	if l.seq, err = strconv.ParseUint(strings.TrimPrefix(lines[2], "seq="), 10, 64); err != nil || l.seq == 0 {
		return chainLink{}, fmt.Errorf("audit: %s: bad seq", path)
	}
	if err := decodeHash(&l.hash, strings.TrimPrefix(lines[3], "hash=")); err != nil {
		return chainLink{}, fmt.Errorf("audit: %s: %w", path, err)
	}
	return l, nil
}

// writeLast replaces the record at path: written to a temporary file
// (0600), synced, renamed into place and the directory synced, so that a
// crash leaves the old record or the new one, never a part.
func writeLast(path string, l chainLink) error {
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("audit: chain record: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("audit: chain record: %w", err)
	}
	if _, err := f.Write(l.encode()); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("audit: chain record: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("audit: chain record: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

// saveLast records the journal's chain as far as it is durable now. The
// Checkpointer calls it after each checkpoint, Close after the last entry,
// Open after a chain start, and a first journal's first commit once: never
// each append.
func (j *Journal) saveLast() error {
	j.lastMu.Lock()
	defer j.lastMu.Unlock()
	j.mu.Lock()
	l := chainLink{chain: j.chain, seq: j.committed, hash: j.lastHash}
	j.mu.Unlock()
	if l.seq == 0 || l.seq == j.lastSaved {
		// Nothing yet (the record, if any, still names the predecessor,
		// which the next Open names again), or nothing new.
		return nil
	}
	if err := writeLast(lastPath(j.dir), l); err != nil {
		return err
	}
	j.lastSaved = l.seq
	return nil
}

// recordChain is saveLast for the Checkpointer and a chain start: a
// failure is logged, and the first of a run of failures is recorded in
// the journal with severity high, since a chain that replaces this
// journal would then name the chain before it, and a capture without this
// one would verify. The journal may still take entries (its segments are
// preallocated) when a new file cannot be made.
func (j *Journal) recordChain() {
	err := j.saveLast()
	j.lastMu.Lock()
	first := err != nil && !j.lastFailing
	j.lastFailing = err != nil
	j.lastMu.Unlock()
	if err == nil {
		return
	}
	j.opts.Logger.Error("audit: recording the journal's chain beside its directory", "path", lastPath(j.dir), "err", err)
	if !first {
		return
	}
	ev := &Event{Type: TypeChainRecord, Severity: SeverityHigh, Action: "audit.record", Target: lastPath(j.dir), Outcome: OutcomeFailure,
		Reason: "the record of this journal's chain cannot be written: a chain that replaces this journal would not name it; free space or fix the state dir's permissions: " + err.Error()}
	if _, aerr := j.Append(context.Background(), ev); aerr != nil {
		j.opts.Logger.Error("audit: recording that the chain record failed", "err", aerr)
	}
}

// chainStartEvent returns the first entry of a new chain: it names the
// chain the record at path holds, or says that the record cannot be read.
// With no record at all (a first start) it returns nil: the chain then
// starts with its first real event.
func chainStartEvent(path string, log warner) *Event {
	l, err := readLast(path)
	switch {
	case errors.Is(err, errNoLast):
		return nil
	case err != nil:
		log.Warn("audit: the record of the previous chain cannot be read; the new chain says so and names none", "path", path, "err", err)
		return &Event{Type: TypeChainStart, Severity: SeverityHigh, Action: "audit.open", Target: "journal", Outcome: OutcomeFailure,
			Reason:  "a new chain; the record of the chain before it cannot be read: " + err.Error(),
			Details: map[string]string{DetailPrevious: PreviousUnknown}}
	}
	return &Event{Type: TypeChainStart, Severity: SeverityWarn, Action: "audit.open", Target: "journal", Outcome: OutcomeSuccess,
		Reason: "a new chain, continuing the chain named here (its journal was moved aside or lost)",
		Details: map[string]string{
			DetailPreviousChain: l.chain,
			DetailPreviousSeq:   strconv.FormatUint(l.seq, 10),
			DetailPreviousHash:  hex.EncodeToString(l.hash[:]),
		}}
}

type warner interface{ Warn(string, ...any) }

// startChain appends the chain start event, when there is one, as seq 1
// of a new chain, and records the new chain at once.
func (j *Journal) startChain() error {
	ev := chainStartEvent(lastPath(j.dir), j.opts.Logger)
	if ev == nil {
		return nil
	}
	seq, err := j.Append(context.Background(), ev)
	if err != nil {
		return fmt.Errorf("audit: starting the chain: %w", err)
	}
	if seq != 1 {
		return fmt.Errorf("audit: starting the chain: got seq %d, want 1", seq)
	}
	// The chain start is durable; until the record names this chain it
	// still names the predecessor, which a successor would name too.
	j.recordChain()
	return nil
}

// ChainStart is what a chain's first entry (an audit.chain_start event)
// says of the chain before it.
type ChainStart struct {
	// Known is false when the record of the chain before could not be
	// read (Details "previous": "unknown"); Reason then says why.
	Known  bool
	Reason string
	Chain  string // the predecessor's chain id; "" for the legacy chain
	Seq    uint64 // its last seq as of its newest checkpoint or close
	Hash   [32]byte
}

// ParseChainStart reads a chain start event's details. The event comes
// from a capture: every value is checked.
func ParseChainStart(e *Event) (*ChainStart, error) {
	if e.Type != TypeChainStart {
		return nil, fmt.Errorf("audit: not a chain start: type %q", clip(e.Type, 40))
	}
	d := e.Details
	if p, ok := d[DetailPrevious]; ok {
		if p != PreviousUnknown || len(d) != 1 {
			return nil, fmt.Errorf("audit: chain start: previous %q with %d details", clip(p, 40), len(d))
		}
		return &ChainStart{Reason: e.Reason}, nil
	}
	chain, ok := d[DetailPreviousChain]
	if !ok || len(d) != 3 {
		return nil, errors.New("audit: chain start: want previous_chain, previous_seq and previous_hash")
	}
	s := &ChainStart{Known: true, Chain: chain}
	if s.Chain != "" && !validChainID(s.Chain) {
		return nil, fmt.Errorf("audit: chain start: previous_chain %q", clip(s.Chain, 40))
	}
	var err error
	if s.Seq, err = strconv.ParseUint(d[DetailPreviousSeq], 10, 64); err != nil || s.Seq == 0 {
		return nil, fmt.Errorf("audit: chain start: previous_seq %q", clip(d[DetailPreviousSeq], 40))
	}
	if err := decodeHash(&s.Hash, d[DetailPreviousHash]); err != nil {
		return nil, fmt.Errorf("audit: chain start: previous_hash: %w", err)
	}
	return s, nil
}

// ErrNoRecord means no record of a chain lies beside a journal's
// directory (RecordedChain).
var ErrNoRecord = errNoLast

// RecordedChain reads the record beside the journal directory dir: the
// chain it names and that chain's last seq as recorded. ErrNoRecord when
// there is none.
func RecordedChain(dir string) (chain string, seq uint64, err error) {
	l, err := readLast(lastPath(dir))
	if err != nil {
		return "", 0, err
	}
	return l.chain, l.seq, nil
}

// DirChain reads, without opening the journal, the chain id of the
// journal in dir ("" for the legacy chain) from its newest segment, and
// how many segments it has (0: none, and no chain yet).
func DirChain(dir string) (chain string, segments int, err error) {
	segs, err := listSegments(dir)
	if err != nil || len(segs) == 0 {
		return "", 0, err
	}
	chain, err = segmentChain(segs[len(segs)-1].path)
	return chain, len(segs), err
}
