package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"time"
)

// The vault's states as the local journal recorded them. vault.close
// carries the digest of the state the vault closed in and vault.unseal the
// one it opened in (capture_vault.go checks the same on a receiver's copy).
// The daemon reads the newest of them before it opens the vault, to notice
// at start a vault.db changed while it was down; doctor reads them to
// report such an opening.

// VaultMark is one vault.close or vault.unseal of the journal that
// recorded the vault's state: a successful one carrying vault_state.
type VaultMark struct {
	Seq   uint64
	Time  time.Time
	Type  string // "vault.close" or "vault.unseal"
	State string // the digest of the vault's whole database, hex
}

// JournalView is a journal read for its newest entries: a *Journal or a
// *ReadOnlyJournal.
type JournalView interface {
	Segments() []SegmentInfo
	Reader(from uint64) (*Reader, error)
	LastSeq() uint64
}

// LastVaultMarks returns up to n of j's newest vault marks, newest first
// (fewer when j holds fewer). It reads j's segments from the newest back
// and stops at the first segment that completes the n, so that it reads
// the journal's tail, not the whole of it. It reads only j's own chain:
// a journal that started a new chain (the old one set aside after damage)
// holds no vault mark until the vault first opens on it.
func LastVaultMarks(ctx context.Context, j JournalView, n int) ([]VaultMark, error) {
	return LastVaultMarksWithin(ctx, j, n, 0)
}

// LastVaultMarksWithin is LastVaultMarks reading at most the newest
// segments of j (all of them when segments is 0): what a start may read
// before it is ready, however long the journal and however far back its
// last mark.
func LastVaultMarksWithin(ctx context.Context, j JournalView, n, segments int) ([]VaultMark, error) {
	var out []VaultMark
	last := j.LastSeq()
	segs := j.Segments()
	if segments > 0 && len(segs) > segments {
		segs = segs[len(segs)-segments:]
	}
	for i := len(segs) - 1; i >= 0 && len(out) < n; i-- {
		s := segs[i]
		hi := min(s.Last, last)
		if hi < s.First {
			continue
		}
		found, err := vaultMarksIn(ctx, j, s.First, hi)
		if err != nil {
			return nil, err
		}
		slices.Reverse(found)
		out = append(out, found...)
	}
	if len(out) > n {
		out = out[:n]
	}
	return out, nil
}

// vaultMarksIn returns the vault marks of seqs from..to of j, in seq order.
func vaultMarksIn(ctx context.Context, j JournalView, from, to uint64) ([]VaultMark, error) {
	r, err := j.Reader(from)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out []VaultMark
	for r.Pos() <= to {
		e, err := r.Next(ctx)
		if err != nil {
			return nil, fmt.Errorf("audit: reading the vault's recorded states: %w", err)
		}
		ev := &e.Event
		if (ev.Type == "vault.close" || ev.Type == "vault.unseal") && ev.Outcome == OutcomeSuccess && ev.Details[detailVaultState] != "" {
			out = append(out, VaultMark{Seq: e.Seq, Time: ev.Time, Type: ev.Type, State: ev.Details[detailVaultState]})
		}
	}
	return out, nil
}

// DirLastVaultMarks is LastVaultMarks of the journal in dir, read without
// being opened (its daemon may be writing it) and from its newest segment
// back: it reads and checks only as many segments as the n marks need,
// doubling them each time, so that a long journal costs its tail. A torn
// or cut newest entry (a crash, an append being written) ends the view
// there and hides nothing older. Damage further back ends the widening
// when it lies in the part a narrower view already read: the marks after
// it are the ones that count, and a wider view would stop before them.
//
// It reads at most the newest maxSegments segments (all when 0).
func DirLastVaultMarks(ctx context.Context, dir string, n, maxSegments int) ([]VaultMark, error) {
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	var (
		marks []VaultMark
		read  uint64 // the first seq the last view read
	)
	for tail := 1; ; tail *= 2 {
		if maxSegments > 0 {
			tail = min(tail, maxSegments)
		}
		v, err := OpenReadOnly(dir, &ReadOnlyOptions{Appender: appendsNothing{}, Tail: tail})
		if err != nil {
			if read != 0 {
				return marks, nil // an older segment's header is bad
			}
			return nil, err
		}
		if p := v.Stop(); p != nil && read != 0 && p.Seq <= read {
			return marks, nil
		}
		if marks, err = LastVaultMarks(ctx, v, n); err != nil {
			return nil, err
		}
		read = v.FirstSeq()
		if len(marks) >= n || tail >= len(segs) || (maxSegments > 0 && tail >= maxSegments) {
			return marks, nil
		}
	}
}

// appendsNothing is the appender of a view that only reads.
type appendsNothing struct{}

func (appendsNothing) Append(context.Context, *Event) (uint64, error) {
	return 0, errors.New("audit: a view read for its vault marks records nothing")
}

// LastSealed returns the seq up to which the newest good checkpoint of j
// seals it: a checkpoint of j's chain, signed with pub, whose sealed entry
// j holds with the hash the checkpoint names. It reads j's segments from
// the newest back. ok is false when j holds no such checkpoint. A journal
// directory that holds one is this appliance's journal up to that seq,
// not one made up with its chain id.
func LastSealed(ctx context.Context, j JournalView, pub ed25519.PublicKey) (seq uint64, ok bool, err error) {
	last := j.LastSeq()
	segs := j.Segments()
	for i := len(segs) - 1; i >= 0; i-- {
		s := segs[i]
		hi := min(s.Last, last)
		if hi < s.First {
			continue
		}
		cps, err := checkpointsIn(ctx, j, s.First, hi)
		if err != nil {
			return 0, false, err
		}
		for k := len(cps) - 1; k >= 0; k-- {
			c := cps[k]
			if c.cp.Verify(pub) != nil || c.cp.Seq == 0 || c.cp.Seq >= c.at {
				continue
			}
			h, err := hashAt(ctx, j, c.cp.Seq)
			if err != nil || h != c.cp.Hash {
				continue
			}
			if c.chain != "" && c.cp.Timed() && c.cp.Chain != c.chain {
				continue
			}
			return c.cp.Seq, true, nil
		}
	}
	return 0, false, nil
}

// checkpointAt is a checkpoint event of a journal: what it says, the seq
// it was written at and the chain of the entry.
type checkpointAt struct {
	cp    *Checkpoint
	at    uint64
	chain string
}

// checkpointsIn returns the checkpoints among seqs from..to of j, in seq
// order; events that do not parse as checkpoints are left out.
func checkpointsIn(ctx context.Context, j JournalView, from, to uint64) ([]checkpointAt, error) {
	r, err := j.Reader(from)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out []checkpointAt
	for r.Pos() <= to {
		e, err := r.Next(ctx)
		if err != nil {
			return nil, fmt.Errorf("audit: reading checkpoints: %w", err)
		}
		if e.Event.Type != TypeCheckpoint {
			continue
		}
		if cp, err := ParseCheckpoint(&e.Event); err == nil {
			out = append(out, checkpointAt{cp: cp, at: e.Seq, chain: e.Chain})
		}
	}
	return out, nil
}

// hashAt is the chain hash of j's entry seq.
func hashAt(ctx context.Context, j JournalView, seq uint64) ([32]byte, error) {
	r, err := j.Reader(seq)
	if err != nil {
		return [32]byte{}, err
	}
	defer r.Close()
	e, err := r.Next(ctx)
	if err != nil {
		return [32]byte{}, err
	}
	if e.Seq != seq {
		return [32]byte{}, fmt.Errorf("audit: read seq %d for %d", e.Seq, seq)
	}
	return e.Hash, nil
}
