package audit

import (
	"encoding/hex"
	"fmt"
	"slices"
)

// The links between the chains of a capture. A chain made when a journal
// was set aside starts with an audit.chain_start event naming the chain it
// continues and that chain's last entry as of its newest checkpoint or
// close (chainlink.go). The event is in the new chain's hash chain, so its
// checkpoints seal it: nobody who edits the receiver's file can change or
// remove it without the seal failing. What it names must then be in the
// capture: a capture from which the older chain was dropped, or cut before
// that entry, does not verify.

// orderByLinks puts each chain after the chain it continues, when the
// capture holds that one; chains otherwise keep their order (by time).
func orderByLinks(checks []*chainCheck) []*chainCheck {
	byID := make(map[string]*chainCheck, len(checks))
	for _, c := range checks {
		byID[c.rep.ID] = c
	}
	pred := func(c *chainCheck) *chainCheck {
		if c.rep.Link.State != LinkContinues {
			return nil
		}
		return byID[c.rep.Link.Chain]
	}
	out := make([]*chainCheck, 0, len(checks))
	placed := make(map[*chainCheck]bool, len(checks))
	for _, c := range checks {
		// The chains before c, back to one placed or with none in the
		// capture; a cycle (only a forgery makes one) stops there too.
		var path []*chainCheck
		on := map[*chainCheck]bool{}
		for x := c; x != nil && !placed[x] && !on[x]; x = pred(x) {
			path = append(path, x)
			on[x] = true
		}
		for i := len(path) - 1; i >= 0; i-- {
			placed[path[i]] = true
			out = append(out, path[i])
		}
	}
	return out
}

// checkLinks checks what each chain's seq 1 says of the chain before it
// against the capture, chains oldest first: a chain that continues
// another needs that one in the capture, up to the entry it names, with
// the hash it names; a chain that is not the oldest and names none (made
// by a version before links, or after the record beside the journal was
// lost) leaves the capture unable to show that no chain before it was
// dropped. It sets each chain's Link and returns its problems and notes,
// each naming its chain.
func (v *CaptureVerifier) checkLinks(checks []*chainCheck) (problems []CaptureProblem, notes []string) {
	byID := make(map[string]*chainCheck, len(checks))
	for _, c := range checks {
		byID[c.rep.ID] = c
	}
	for i, c := range checks {
		id, l := c.rep.ID, &c.rep.Link
		// The auditor said this chain is where the receiver's record
		// starts (--from CHAIN:SEQ): what came before is not expected.
		startsHere := v.opts.FromChain != "" && v.opts.FromChain == id
		problem := func(seq, last uint64, format string, args ...any) {
			problems = append(problems, CaptureProblem{Kind: ProblemLink, Chain: id, Seq: seq, LastSeq: last,
				Message: chainName(id) + " " + fmt.Sprintf(format, args...)})
		}
		switch l.State {
		case LinkUnseen:
			// The oldest chain starts after seq 1 (--from SEQ): its seq 1,
			// which would say what came before it, is not here. Unless
			// the auditor names this chain as where the record starts,
			// the older chains, and this one's head, could all have been
			// dropped. A legacy chain has nothing before it.
			if i == 0 && v.opts.FromChain == "" && id != "" && c.rep.FirstSeq > 1 {
				problem(c.rep.FirstSeq, 0, "starts at seq %d: its seq 1, which names the chain it continues, is not in the capture, so it cannot show that no chain before it was dropped; "+
					"give --from %s:%d if the receiver's record starts in this chain", c.rep.FirstSeq, id, c.rep.FirstSeq)
			}
		case LinkFirst:
			if i > 0 {
				l.State = LinkNone
				problem(1, 0, "names no chain before it (made by a version before chain links, or after the record beside its journal was lost), "+
					"but %s is older in the capture: the capture cannot show that no chain before it was dropped", chainName(checks[i-1].rep.ID))
			}
		case LinkUnknown:
			if startsHere {
				notes = append(notes, fmt.Sprintf("%s continues a chain it cannot name (%s); --from names it as where the record starts", chainName(id), clip(l.Reason, 200)))
				break
			}
			problem(1, 0, "continues a chain it cannot name: the record of it could not be read when the journal started (%s); "+
				"the capture cannot show that chain is whole, nor that it is here (give --from %s:1 if the receiver's record starts with this chain)", clip(l.Reason, 200), id)
		case LinkContinues:
			p := byID[l.Chain]
			switch {
			case p == c:
				problem(1, 0, "names itself as the chain it continues")
			case p == nil && startsHere:
				notes = append(notes, fmt.Sprintf("%s continues %s from seq %d, which is not in the capture; --from names %s as where the record starts",
					chainName(id), chainName(l.Chain), l.Seq, chainName(id)))
			case p == nil:
				problem(1, 0, "continues %s from seq %d, which is not in the capture: the chain before this one is missing (an auditor keeps every chain; or give --from %s:1 if the receiver's record starts with this chain)",
					chainName(l.Chain), l.Seq, id)
			default:
				notes = append(notes, v.checkPredecessor(c, p, problem)...)
			}
		}
	}
	return problems, notes
}

// checkPredecessor checks that p, which c continues, holds the entry c's
// chain start names, with its hash.
func (v *CaptureVerifier) checkPredecessor(c, p *chainCheck, problem func(seq, last uint64, format string, args ...any)) (notes []string) {
	l := c.rep.Link
	e, ok := p.entries[l.Seq]
	switch {
	case !ok && p.rep.LastSeq < l.Seq:
		problem(1, 0, "continues %s from seq %d, but the capture holds that chain only up to seq %d: seqs %d to %d of it are missing (cut)",
			chainName(p.rep.ID), l.Seq, p.rep.LastSeq, p.rep.LastSeq+1, l.Seq)
		return nil
	case !ok:
		problem(1, 0, "continues %s from seq %d, which is not in the capture", chainName(p.rep.ID), l.Seq)
		return nil
	case e.hash != c.start:
		problem(1, 0, "continues %s from seq %d with chain hash %x…, but that entry in the capture has %x…: not the entry the chain start recorded",
			chainName(p.rep.ID), l.Seq, c.start[:6], e.hash[:6])
		return nil
	}
	// The chain start, sealed in c, authenticates p up to l.Seq: that is
	// how far p was recorded when c began, so p's own seals need not reach
	// further, nor p's tail be judged as cut (a killed journal has no
	// final seal).
	c.linked = true
	p.problems = slices.DeleteFunc(p.problems, func(x CaptureProblem) bool { return x.Kind == ProblemTail })
	p.tail = false
	if p.rep.LastSeq > l.Seq {
		// The record follows the checkpoints: entries written after the
		// last one, before the journal was damaged and set aside, are
		// not in it, and nothing seals them.
		notes = append(notes, fmt.Sprintf("%s continues %s from seq %d; that chain goes on to seq %d: entries written after its last checkpoint or close, before its journal was set aside (no seal covers them)",
			chainName(c.rep.ID), chainName(p.rep.ID), l.Seq, p.rep.LastSeq))
	}
	return notes
}

// Link states of a chain (ChainLink.State): what its seq 1 says of the
// chain before it.
const (
	LinkContinues = "continues" // seq 1 is a chain start naming the chain before and its last entry
	LinkFirst     = "first"     // seq 1 is an ordinary event, and no chain before it is known
	LinkNone      = "none"      // seq 1 is an ordinary event, but a capture holds an older chain
	LinkUnknown   = "unknown"   // seq 1 says the record of the chain before could not be read
	LinkUnseen    = "unseen"    // seq 1 is not at hand (a capture that starts later), or does not verify
)

// ChainLink is what a chain's seq 1 says of the chain before it, in a
// verification report.
type ChainLink struct {
	State string `json:"state"`
	// Chain, Seq and Hash name the entry of the chain before from which
	// this one continues (LinkContinues); Chain "" is the legacy chain.
	Chain string `json:"chain"`
	Seq   uint64 `json:"seq,omitempty"`
	Hash  string `json:"hash,omitempty"`
	// Reason is why the record could not be read (LinkUnknown).
	Reason string `json:"reason,omitempty"`
}

// String says what the chain continues, for a report line.
func (l ChainLink) String() string {
	switch l.State {
	case LinkContinues:
		return fmt.Sprintf("continues %s from seq %d", chainName(l.Chain), l.Seq)
	case LinkFirst:
		return "first chain"
	case LinkNone:
		return "names no chain before it"
	case LinkUnknown:
		return "continues a chain it cannot name (the record of it could not be read)"
	}
	return "its seq 1 is not at hand: what it continues is not known"
}

// linkOf reads what the first entry of a chain, ev, says of the chain
// before it.
func linkOf(ev *Event) (ChainLink, error) {
	if ev.Type != TypeChainStart {
		return ChainLink{State: LinkFirst}, nil
	}
	s, err := ParseChainStart(ev)
	if err != nil {
		return ChainLink{State: LinkUnseen}, err
	}
	if !s.Known {
		return ChainLink{State: LinkUnknown, Reason: s.Reason}, nil
	}
	return ChainLink{State: LinkContinues, Chain: s.Chain, Seq: s.Seq, Hash: hex.EncodeToString(s.Hash[:])}, nil
}
