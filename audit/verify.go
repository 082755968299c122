package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Problem is one thing Verify found wrong, at the first seq it concerns.
type Problem struct {
	Seq    uint64 `json:"seq"`
	File   string `json:"file,omitempty"`
	Reason string `json:"reason"`
}

func (p Problem) String() string {
	if p.File != "" {
		return fmt.Sprintf("seq %d (%s): %s", p.Seq, p.File, p.Reason)
	}
	return fmt.Sprintf("seq %d: %s", p.Seq, p.Reason)
}

// Report is the result of verifying a journal.
type Report struct {
	// Chain is the journal's chain id (Journal.ChainID): "" for a journal
	// made by a version before chain ids.
	Chain    string    `json:"chain"`
	First    uint64    `json:"first"`    // first seq present
	Last     uint64    `json:"last"`     // last seq present and valid
	Entries  uint64    `json:"entries"`  // entries checked
	Marker   uint64    `json:"marker"`   // last seq recorded as durable
	Problems []Problem `json:"problems"` // empty when the journal is intact
	// With a public key (VerifyDirWith): the checkpoints met, and the
	// highest seq one of them, signed by that key, seals.
	Checkpoints int    `json:"checkpoints"`
	SealedUpTo  uint64 `json:"sealed_up_to"`
	// LastSealAt is when the newest checkpoint signed by that key was
	// made (zero when it carries no time: made by an older version).
	LastSealAt    time.Time `json:"last_seal_at,omitzero"`
	LastSealFinal bool      `json:"last_seal_final,omitempty"`
	// Link is what the journal's seq 1 says of the chain before it: it
	// continues one (an audit.chain_start event), or is the first. Nil
	// when the journal has no intact seq 1.
	Link *ChainLink `json:"link,omitempty"`
}

// VerifyOptions are the options of VerifyDirWith.
type VerifyOptions struct {
	// PublicKey checks every checkpoint's signature and that the hash it
	// signs is the chain's at its seq. Without it the journal's chain
	// proves nothing against whoever can rewrite the files: they can
	// recompute it.
	PublicKey ed25519.PublicKey
}

// hashWindow is how many recent chain hashes VerifyDirWith keeps to check
// the checkpoints against (a checkpoint seals what came shortly before).
const hashWindow = 1 << 16

// OK reports whether the journal verified with no problem.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// VerifyDir checks the journal in dir: every entry's hash against its
// predecessor's, contiguous seq numbers within and across segments, and the
// durable marker against the last entry (a cut tail). It stops at the first
// break in a segment and names its seq; an error means dir could not be read
// at all.
func VerifyDir(dir string) (*Report, error) { return VerifyDirWith(dir, nil) }

// VerifyDirWith is VerifyDir, checking the checkpoints with opts.PublicKey.
func VerifyDirWith(dir string, opts *VerifyOptions) (*Report, error) {
	var o VerifyOptions
	if opts != nil {
		o = *opts
	}
	segs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	rep := &Report{Problems: []Problem{}}
	mark, haveMark := readMarkerFile(filepath.Join(dir, "head"))
	rep.Marker = mark.seq
	if len(segs) == 0 {
		if rep.Marker > 0 {
			rep.Problems = append(rep.Problems, Problem{Seq: 1, Reason: fmt.Sprintf("journal is empty but seq %d was recorded as durable", rep.Marker)})
		}
		return rep, nil
	}
	var (
		expect   uint64
		prev     [32]byte
		have     bool
		markHash *[32]byte // the chain hash at the marker's seq, once met
		cps      *cpCheck
	)
	if o.PublicKey != nil {
		cps = &cpCheck{pub: o.PublicKey, hashes: map[uint64][32]byte{}}
	}
	if segs[0].first == 1 {
		rep.Link = firstLink(segs[0].path)
	}
	for i, s := range segs {
		name := filepath.Base(s.path)
		f, err := os.Open(s.path)
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		br := bufio.NewReaderSize(f, 1<<20)
		hdr, err := readLine(br)
		if err != nil {
			f.Close()
			rep.Problems = append(rep.Problems, Problem{Seq: s.first, File: name, Reason: "segment header missing"})
			return rep, nil
		}
		first, hprev, err := parseHeader(bytes.TrimSuffix(hdr, []byte("\n")))
		var chain string
		if err == nil {
			chain, err = headerChain(bytes.TrimSuffix(hdr, []byte("\n")))
		}
		if err != nil || first != s.first {
			f.Close()
			rep.Problems = append(rep.Problems, Problem{Seq: s.first, File: name, Reason: "segment header does not match its file name"})
			return rep, nil
		}
		if !have {
			rep.First, expect, prev, have = first, first, hprev, true
			rep.Chain = chain
			if cps != nil {
				cps.chain = chain
			}
		} else {
			if chain != rep.Chain {
				f.Close()
				rep.Problems = append(rep.Problems, Problem{Seq: first, File: name,
					Reason: fmt.Sprintf("segment of %s in a journal of %s: a segment of another journal was put in", chainName(chain), chainName(rep.Chain))})
				return rep, nil
			}
			if first != expect {
				f.Close()
				rep.Problems = append(rep.Problems, Problem{Seq: expect, File: name,
					Reason: fmt.Sprintf("entries %d..%d missing between segments", expect, first-1)})
				return rep, nil
			}
			if hprev != prev {
				f.Close()
				rep.Problems = append(rep.Problems, Problem{Seq: first, File: name, Reason: "segment does not continue the chain of the one before"})
				return rep, nil
			}
		}
		p := verifySegment(br, name, &expect, &prev, rep, i == len(segs)-1, mark, &markHash, s.path, int64(len(hdr)), cps)
		f.Close()
		if p != nil {
			rep.Problems = append(rep.Problems, *p)
			return rep, nil
		}
	}
	switch {
	case rep.Marker > rep.Last:
		rep.Problems = append(rep.Problems, Problem{Seq: rep.Last + 1,
			Reason: fmt.Sprintf("journal ends at seq %d but seq %d was recorded as durable: the tail was cut (entries %d..%d missing)", rep.Last, rep.Marker, rep.Last+1, rep.Marker)})
	case rep.Entries > 0 && !haveMark:
		// The journal makes the marker file when it opens: gone, a cut
		// tail cannot be told from a journal that ended. (A file with no
		// valid record is what a full disk leaves, and is let pass.)
		rep.Problems = append(rep.Problems, Problem{Seq: rep.Last,
			Reason: "the durable marker file (head) is missing: whether the tail was cut cannot be told"})
	case markHash != nil && *markHash != mark.hash:
		rep.Problems = append(rep.Problems, Problem{Seq: rep.Marker,
			Reason: fmt.Sprintf("seq %d does not have the hash recorded as durable for it: entries up to it were rewritten", rep.Marker)})
	}
	return rep, nil
}

// cpCheck checks the checkpoints met during a verify.
type cpCheck struct {
	pub    ed25519.PublicKey
	chain  string              // the journal's chain id
	hashes map[uint64][32]byte // the last hashWindow chain hashes
}

func (c *cpCheck) entry(seq uint64, h [32]byte, ev *Event, rep *Report, name string) *Problem {
	c.hashes[seq] = h
	delete(c.hashes, seq-hashWindow)
	if ev.Type != TypeCheckpoint {
		return nil
	}
	rep.Checkpoints++
	cp, err := ParseCheckpoint(ev)
	if err != nil {
		return &Problem{Seq: seq, File: name, Reason: err.Error()}
	}
	if err := cp.Verify(c.pub); err != nil {
		return &Problem{Seq: seq, File: name, Reason: fmt.Sprintf("checkpoint signature does not verify with key %s (made by key %s): a forged checkpoint", KeyID(c.pub), cp.KeyID)}
	}
	if cp.Chain != c.chain {
		return &Problem{Seq: seq, File: name, Reason: fmt.Sprintf("a checkpoint of %s in a journal of %s: it seals another journal", chainName(cp.Chain), chainName(c.chain))}
	}
	rep.LastSealAt, rep.LastSealFinal = cp.Time, cp.Final
	want, ok := c.hashes[cp.Seq]
	if !ok {
		return nil // sealed before this journal's oldest kept entry, or long before
	}
	if want != cp.Hash {
		return &Problem{Seq: cp.Seq, File: name, Reason: fmt.Sprintf("the checkpoint at seq %d signed another hash for seq %d: entries up to it were rewritten", seq, cp.Seq)}
	}
	if cp.Seq > rep.SealedUpTo {
		rep.SealedUpTo = cp.Seq
	}
	return nil
}

func verifySegment(br *bufio.Reader, name string, expect *uint64, prev *[32]byte, rep *Report, last bool, mark markerRec, markHash **[32]byte, path string, off int64, cps *cpCheck) *Problem {
	for {
		line, err := readLine(br)
		if err == io.EOF || errors.Is(err, errPadding) {
			// The entries end at the end of the file or at zeros written
			// ahead of them (see prealloc.go): nothing but zeros may
			// follow, or a zero byte hides entries after it.
			if errors.Is(err, errPadding) {
				at := off + int64(len(line))
				if zeros, zerr := onlyZeros(path, at); zerr == nil && !zeros && zeroAt(path, at) {
					// Still a zero where the entries stopped, and data after
					// it (a live journal's new entry would have filled it).
					return &Problem{Seq: *expect, File: name, Reason: "data after the zero byte that ends the entries: entries hidden behind it?"}
				}
			}
			if len(line) > 0 {
				if last {
					return nil // an unfinished final line was never acknowledged
				}
				return &Problem{Seq: *expect, File: name, Reason: "entry not terminated"}
			}
			return nil
		}
		off += int64(len(line))
		if err != nil {
			return &Problem{Seq: *expect, File: name, Reason: err.Error()}
		}
		h, canon, seq, err := parseLine(line[:len(line)-1])
		if err != nil {
			return &Problem{Seq: *expect, File: name, Reason: err.Error()}
		}
		if seq != *expect {
			return &Problem{Seq: *expect, File: name,
				Reason: fmt.Sprintf("found seq %d where %d belongs: an entry was removed or reordered", seq, *expect)}
		}
		if ChainHash(*prev, canon) != h {
			return &Problem{Seq: seq, File: name, Reason: "hash does not match: the entry or its predecessor was changed"}
		}
		var ev Event
		if err := json.Unmarshal(canon, &ev); err != nil || ev.Seq != seq {
			return &Problem{Seq: seq, File: name, Reason: "entry is not a valid event"}
		}
		if cps != nil {
			if p := cps.entry(seq, h, &ev, rep, name); p != nil {
				return p
			}
		}
		*prev = h
		if seq == mark.seq {
			hh := h
			*markHash = &hh
		}
		rep.Last, rep.Entries = seq, rep.Entries+1
		*expect = seq + 1
	}
}

// zeroAt reports whether the byte at off in path is zero.
func zeroAt(path string, off int64) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [1]byte
	n, _ := f.ReadAt(b[:], off)
	return n == 1 && b[0] == 0
}

// firstLink reads what the first entry of a journal's first segment says
// of the chain before it; nil when that entry does not verify (Verify says
// why).
func firstLink(path string) *ChainLink {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	if _, err := readLine(br); err != nil {
		return nil
	}
	line, err := readLine(br)
	if err != nil {
		return nil
	}
	h, canon, seq, err := parseLine(bytes.TrimSuffix(line, []byte("\n")))
	var ev Event
	if err != nil || seq != 1 || ChainHash([32]byte{}, canon) != h || json.Unmarshal(canon, &ev) != nil {
		return nil
	}
	l, err := linkOf(&ev)
	if err != nil {
		return nil
	}
	return &l
}
