package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Capture verification: what a syslog receiver stored (an rsyslog file in
// RFC 5424 or the wazuh format, a Wazuh archives.log or archives.json) is
// reassembled by seq and checked like the journal itself. Each message
// carries a JSON body beginning with `{"audit_seq":` that holds the entry's
// seq, chain hash, previous hash and the event's canonical JSON (or a
// numbered part of it); receivers may add any prefix to the line.

// CaptureProblem kinds reported by VerifyCapture.
const (
	ProblemGap        = "gap"        // seqs missing from the capture
	ProblemAltered    = "altered"    // an event does not match its hash
	ProblemChain      = "chain"      // an entry's prev is not the previous entry's hash
	ProblemConflict   = "conflict"   // two different copies of one seq
	ProblemParts      = "parts"      // parts of a split event missing
	ProblemWithheld   = "withheld"   // the sender withheld an oversize event
	ProblemSignature  = "signature"  // a checkpoint signature or its hash is wrong
	ProblemTail       = "tail"       // entries after the last checkpoint: the tail may be cut
	ProblemMalformed  = "malformed"  // a message that looks like an audit body but does not parse
	ProblemCheckpoint = "checkpoint" // no checkpoint at all
	ProblemHead       = "head"       // the capture starts after the seq it should start at
	ProblemStale      = "stale"      // the newest seal is older than the capture should reach
	ProblemLink       = "link"       // a chain continues one the capture does not hold up to where it should, or names none
	// ProblemVault (capture_vault.go): the vault opened in another state
	// than it closed in.
)

// SealMargin is the slack allowed, beyond the interval a checkpoint
// promises, before the newest seal of a capture counts as too old: the
// time to deliver it, and clocks apart.
const SealMargin = time.Minute

// CaptureProblem is one finding, naming the seq numbers it is about.
type CaptureProblem struct {
	Kind     string `json:"kind"`
	Seq      uint64 `json:"seq,omitempty"`      // first seq concerned
	LastSeq  uint64 `json:"last_seq,omitempty"` // last seq concerned, for a range
	Message  string `json:"message"`
	Location string `json:"location,omitempty"` // file:line of the message, when one exists
	Chain    string `json:"chain,omitempty"`    // the chain concerned, when the capture holds several
}

func (p CaptureProblem) String() string {
	if p.Location != "" {
		return p.Location + ": " + p.Message
	}
	return p.Message
}

// CaptureOptions tunes VerifyCapture. The zero value checks everything but
// signatures.
type CaptureOptions struct {
	// PublicKey verifies checkpoint signatures (`applianced audit pubkey`).
	// Nil leaves signatures unchecked and says so in the report's notes.
	PublicKey ed25519.PublicKey
	// AllowOpenTail reports entries after the last checkpoint, and a
	// newest seal older than Until, as notes instead of problems, for a
	// capture of a stream that is still running.
	AllowOpenTail bool
	// From is the seq the capture should start at; 0 means 1. A capture
	// that starts later is missing its head: a problem. It applies to the
	// oldest chain in the capture, or to FromChain when that is set;
	// every other chain must start at seq 1.
	From uint64
	// FromChain is the chain From applies to; "" means the oldest.
	// (The legacy chain has no id: it is the oldest wherever it appears.)
	FromChain string
	// Until is the time the capture should reach (when it was taken). The
	// newest seal must then be no older than Until less the interval it
	// promised and SealMargin, or the tail after it was cut. Zero means
	// the time of the capture's newest entry.
	Until time.Time
	// Margin is the slack beyond the interval a seal promises; 0 means
	// SealMargin.
	Margin time.Duration
}

// CaptureReport is the outcome of VerifyCapture. OK is true when Problems
// is empty.
//
// A capture may hold several chains: a journal set aside (after damage)
// is followed by a new one starting at seq 1, with its own chain id,
// whose first entry names the chain it continues. Each chain is checked on
// its own and listed in Chains, oldest first (each after the chain it
// continues); FirstSeq, LastSeq, SealedUpTo and LastSeal* are those of the
// newest chain, the one whose newest seal must be recent.
type CaptureReport struct {
	Lines       int    `json:"lines"`       // lines read
	Messages    int    `json:"messages"`    // audit messages found (parts and duplicates included)
	Entries     int    `json:"entries"`     // distinct seqs, over every chain
	Duplicates  int    `json:"duplicates"`  // identical repeated copies
	FirstSeq    uint64 `json:"first_seq"`   // of the newest chain
	LastSeq     uint64 `json:"last_seq"`    // of the newest chain
	Checkpoints int    `json:"checkpoints"` // over every chain
	// SealedUpTo is the last seq of the newest chain a verified checkpoint
	// covers.
	SealedUpTo uint64 `json:"sealed_up_to"`
	// LastSealAt is when the newest chain's newest checkpoint was made
	// (zero when it carries no time: made by an older version),
	// LastSealFinal whether the journal closed after it. Without a key
	// they are what the checkpoints say, unverified.
	LastSealAt    time.Time     `json:"last_seal_at,omitzero"`
	LastSealFinal bool          `json:"last_seal_final,omitempty"`
	Chains        []ChainReport `json:"chains"`
	// FromChain is the chain CaptureOptions.From applied to.
	FromChain string           `json:"from_chain"`
	Problems  []CaptureProblem `json:"problems"`
	Notes     []string         `json:"notes"`
}

// ChainReport is what a capture holds of one chain.
type ChainReport struct {
	// ID is the chain id (audit_chain) its entries carry: random, made
	// when the journal's seq 1 was. Empty for the legacy chain: a journal
	// made by a version before chain ids keeps none.
	ID            string    `json:"id"`
	Entries       int       `json:"entries"`
	FirstSeq      uint64    `json:"first_seq"`
	LastSeq       uint64    `json:"last_seq"`
	Checkpoints   int       `json:"checkpoints"`
	SealedUpTo    uint64    `json:"sealed_up_to"`
	LastSealAt    time.Time `json:"last_seal_at,omitzero"`
	LastSealFinal bool      `json:"last_seal_final,omitempty"`
	LastEntryAt   time.Time `json:"last_entry_at,omitzero"` // the newest event's time
	// Link is what the chain's seq 1 says of the chain before it (an
	// audit.chain_start event), or that it names none.
	Link ChainLink `json:"link"`
}

// OK reports whether the capture verified without problems.
func (r *CaptureReport) OK() bool { return len(r.Problems) == 0 }

// wireBody is the JSON body of one message.
type wireBody struct {
	Seq       *uint64         `json:"audit_seq"`
	Chain     string          `json:"audit_chain"`
	Hash      string          `json:"audit_hash"`
	Prev      string          `json:"audit_prev"`
	Event     json.RawMessage `json:"event"`
	Part      int             `json:"audit_part"`
	Parts     int             `json:"audit_parts"`
	Chunk     *string         `json:"event_chunk"`
	Withheld  string          `json:"audit_withheld"`
	Size      int             `json:"audit_size"`
	EventType string          `json:"event_type"`
}

type capEntry struct {
	hash, prev [32]byte
	canonical  []byte
	parts      map[int][]byte // split events: chunk by part number, as they arrive
	nParts     int            // the number of parts; 0 unless split
	withheld   bool
	size       int
	eventType  string
	loc        string
	// raws are the wire bodies that arrived, one of each kind (the whole
	// event, each part): a message cut short must be a prefix of one.
	raws [][]byte
}

// CaptureVerifier accumulates capture files; Report checks them.
type CaptureVerifier struct {
	opts       CaptureOptions
	chains     map[string]map[uint64]*capEntry // by chain id, then seq
	partial    []CaptureProblem                // messages with a seq that do not parse
	partialRaw [][]byte                        // their bytes, by the same index
	dropped    int                             // problems past maxProblems, counted only
	rep        CaptureReport
}

// NewCaptureVerifier returns a verifier; opts may be nil.
func NewCaptureVerifier(opts *CaptureOptions) *CaptureVerifier {
	v := &CaptureVerifier{chains: map[string]map[uint64]*capEntry{}}
	if opts != nil {
		v.opts = *opts
	}
	return v
}

// VerifyCaptureFiles reads every file and returns the report.
func VerifyCaptureFiles(paths []string, opts *CaptureOptions) (*CaptureReport, error) {
	v := NewCaptureVerifier(opts)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("audit: capture: %w", err)
		}
		err = v.Read(p, f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return v.Report(), nil
}

// bodyPrefix starts the JSON body of every audit message.
const bodyPrefix = `{"audit_seq":`

var seqRE = regexp.MustCompile(`^\{"audit_seq":([0-9]{1,20})`)

// maxLine bounds one line of a capture.
const maxLine = 64 << 20

// Read adds one capture to the verifier. name labels locations in the
// report.
func (v *CaptureVerifier) Read(name string, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	n := 0
	for sc.Scan() {
		n++
		v.rep.Lines++
		v.line(fmt.Sprintf("%s:%d", name, n), sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit: capture %s: line %d: %w", name, n+1, err)
	}
	return nil
}

var fullLogKey = []byte(`"full_log"`)

func (v *CaptureVerifier) line(loc string, line []byte) {
	// Wazuh archives.json: one JSON object per line with the original
	// message in full_log.
	if len(line) > 0 && line[0] == '{' && bytes.Contains(line, fullLogKey) {
		var a struct {
			FullLog string `json:"full_log"`
		}
		if json.Unmarshal(line, &a) == nil && a.FullLog != "" {
			line = []byte(a.FullLog)
		}
	}
	i := bytes.Index(line, []byte(bodyPrefix))
	if i < 0 {
		return
	}
	v.rep.Messages++
	raw := line[i:]
	var b wireBody
	dec := json.NewDecoder(bytes.NewReader(raw))
	err := dec.Decode(&b)
	if err == nil && b.Seq == nil {
		err = errors.New("no audit_seq")
	}
	var hash, prev [32]byte
	if err == nil && b.Chain != "" && !validChainID(b.Chain) {
		err = fmt.Errorf("audit_chain %q is not a chain id", clip(b.Chain, 40))
	}
	if err == nil {
		err = decodeHash(&hash, b.Hash)
	}
	if err == nil {
		err = decodeHash(&prev, b.Prev)
	}
	if err != nil {
		p := CaptureProblem{Kind: ProblemMalformed, Location: loc}
		if m := seqRE.FindSubmatch(raw); m != nil {
			p.Seq, _ = strconv.ParseUint(string(m[1]), 10, 64)
			p.Message = fmt.Sprintf("seq %d: message does not parse (truncated or edited by the receiver?): %v", p.Seq, err)
			// A message cut by a dropped connection is sent again whole;
			// Report decides once it knows whether that copy arrived.
			if len(v.partial) >= maxProblems {
				v.dropped++
				return
			}
			v.partial = append(v.partial, p)
			v.partialRaw = append(v.partialRaw, append([]byte(nil), raw...))
			return
		}
		p.Message = fmt.Sprintf("audit message does not parse: %v", err)
		v.addProblem(p)
		return
	}
	if err := noDuplicateKeys(raw[:dec.InputOffset()]); err != nil {
		// Which of two "event" keys a reader takes is up to the reader:
		// the one that hashes may not be the one a SIEM shows.
		v.problem(ProblemAltered, *b.Seq, 0, loc, "seq %d: %v: the message was edited", *b.Seq, err)
		return
	}
	seq := *b.Seq
	entries := v.chains[b.Chain]
	if entries == nil {
		entries = map[uint64]*capEntry{}
		v.chains[b.Chain] = entries
	}
	e := entries[seq]
	if e == nil {
		e = &capEntry{hash: hash, prev: prev, loc: loc}
		entries[seq] = e
	} else if e.hash != hash || e.prev != prev {
		v.problem(ProblemConflict, seq, 0, loc, "seq %d: two different copies (first at %s)", seq, e.loc)
		return
	}
	switch {
	case b.Withheld != "":
		if !e.withheld && e.canonical == nil && e.nParts == 0 {
			e.withheld, e.size, e.eventType = true, b.Size, b.EventType
		} else {
			v.rep.Duplicates++
		}
	case b.Chunk != nil:
		if e.canonical != nil {
			// A part of an event already whole: only a piece of it is a
			// repeated copy.
			if !bytes.Contains(e.canonical, []byte(*b.Chunk)) {
				v.problem(ProblemConflict, seq, 0, loc, "seq %d: part %d differs from the copy that arrived whole (first at %s)", seq, b.Part, e.loc)
				return
			}
			v.rep.Duplicates++
			return
		}
		// No forwarder splits an event into more than MaxParts parts: a
		// forged count must not size anything.
		if b.Parts < 1 || b.Parts > MaxParts || b.Part < 1 || b.Part > b.Parts || (e.nParts != 0 && e.nParts != b.Parts) {
			v.problem(ProblemMalformed, seq, 0, loc, "seq %d: part %d of %d is inconsistent (at most %d parts, of one count)", seq, b.Part, b.Parts, MaxParts)
			return
		}
		if e.nParts == 0 {
			e.parts, e.nParts = map[int][]byte{}, b.Parts
		}
		if old, ok := e.parts[b.Part]; ok {
			if !bytes.Equal(old, []byte(*b.Chunk)) {
				v.problem(ProblemConflict, seq, 0, loc, "seq %d: two different copies of part %d (first at %s)", seq, b.Part, e.loc)
				return
			}
			v.rep.Duplicates++
			return
		}
		e.parts[b.Part] = []byte(*b.Chunk)
		e.raws = append(e.raws, append([]byte(nil), raw[:dec.InputOffset()]...))
		if len(e.parts) == e.nParts {
			var whole []byte
			for k := 1; k <= e.nParts; k++ {
				whole = append(whole, e.parts[k]...)
			}
			e.canonical = whole
			e.parts, e.nParts, e.withheld = nil, 0, false
		}
	case b.Event != nil:
		if e.canonical != nil {
			// Only the same event is a repeated copy: the same hashes
			// with other content would otherwise pass unseen.
			if !sameJSON(e.canonical, b.Event) {
				v.problem(ProblemConflict, seq, 0, loc, "seq %d: two different copies of the event (first at %s)", seq, e.loc)
				return
			}
			v.rep.Duplicates++
			return
		}
		e.canonical = append([]byte(nil), b.Event...)
		e.raws = append(e.raws, append([]byte(nil), raw[:dec.InputOffset()]...))
		e.parts, e.nParts, e.withheld = nil, 0, false
	default:
		v.problem(ProblemMalformed, seq, 0, loc, "seq %d: message has neither event, part nor stub", seq)
	}
}

// missingParts lists the part numbers 1..n not in have, as ranges, at
// most maxPartRanges of them.
func missingParts(have map[int][]byte, n int) string {
	var out []string
	for k := 1; k <= n; k++ {
		if _, ok := have[k]; ok {
			continue
		}
		a := k
		for k < n {
			if _, ok := have[k+1]; ok {
				break
			}
			k++
		}
		if len(out) == maxPartRanges {
			out = append(out, "and more")
			break
		}
		if a == k {
			out = append(out, strconv.Itoa(a))
		} else {
			out = append(out, fmt.Sprintf("%d-%d", a, k))
		}
	}
	return strings.Join(out, ", ")
}

// maxPartRanges bounds the ranges of missing parts a problem lists.
const maxPartRanges = 8

func decodeHash(dst *[32]byte, s string) error {
	if len(s) != 64 {
		return fmt.Errorf("hash %q is not 64 hex digits", clip(s, 80))
	}
	_, err := hex.Decode(dst[:], []byte(s))
	return err
}

func (v *CaptureVerifier) problem(kind string, seq, last uint64, loc, format string, args ...any) {
	v.addProblem(CaptureProblem{Kind: kind, Seq: seq, LastSeq: last, Location: loc, Message: fmt.Sprintf(format, args...)})
}

// addProblem keeps a problem found while reading, up to maxProblems of
// them: a capture full of forged lines costs a count, not memory.
func (v *CaptureVerifier) addProblem(p CaptureProblem) {
	if len(v.rep.Problems) >= maxProblems {
		v.dropped++
		return
	}
	p.Message = clip(p.Message, maxProblemMessage)
	v.rep.Problems = append(v.rep.Problems, p)
}

// Bounds of a report: the problems it lists (the rest are counted), and
// the length of each message.
const (
	maxProblems       = 1000
	maxProblemMessage = 1024
)

// clip cuts s to at most n bytes, saying so, never inside a UTF-8
// sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const more = "…(cut)"
	k := max(n-len(more), 0)
	for k > 0 && !utf8.RuneStart(s[k]) {
		k--
	}
	return s[:k] + more
}

// entryHash recomputes an entry's chain hash from its event bytes. A
// receiver may have re-encoded the JSON (escapes, DEL); when the bytes as
// received do not match, the event is decoded and canonicalised again.
func entryHash(prev [32]byte, canonical []byte) ([32]byte, *Event) {
	h := ChainHash(prev, canonical)
	var ev Event
	if err := json.Unmarshal(canonical, &ev); err != nil {
		return h, nil
	}
	return h, &ev
}

// chainCheck is the check of one chain's entries in a capture.
type chainCheck struct {
	rep      ChainReport
	entries  map[uint64]*capEntry
	problems []CaptureProblem
	notes    []string
	seal     *Checkpoint // the newest checkpoint that counts
	sealAt   uint64      // its seq
	// sealCovers is the time of the newest entry the seal covers: the
	// chain hash it signs authenticates that time, whatever the seal's
	// own message says.
	sealCovers time.Time
	firstAt    time.Time // the time of the first entry in the capture
	tail       bool      // entries after what the last checkpoint covers
	start      [32]byte  // LinkContinues: the hash the chain start names
	linked     bool      // LinkContinues: the chain before is in the capture up to that entry, with that hash
}

// Report checks everything read so far.
func (v *CaptureVerifier) Report() *CaptureReport {
	rep := v.rep
	rep.Problems = append([]CaptureProblem(nil), v.rep.Problems...)
	rep.Notes = append([]string(nil), v.rep.Notes...)
	if len(v.chains) == 0 {
		rep.Problems = append(rep.Problems, CaptureProblem{Kind: ProblemGap, Message: "no audit message in the capture"})
		limitProblems(&rep, v.dropped)
		return &rep
	}
	// In a fixed order: the same capture takes the same path every time
	// (a fuzzer that sees coverage change from run to run cannot
	// minimize what it finds).
	ids := slices.Sorted(maps.Keys(v.chains))
	recovered := 0
	for i, p := range v.partial {
		// Cut short, then sent again whole: the fragment is the start of
		// a copy that arrived. Anything else is not a cut copy.
		raw := bytes.TrimRight(v.partialRaw[i], "\r\n")
		if slices.ContainsFunc(ids, func(id string) bool {
			e, ok := v.chains[id][p.Seq]
			return ok && e.canonical != nil && slices.ContainsFunc(e.raws, func(r []byte) bool { return bytes.HasPrefix(r, raw) })
		}) {
			recovered++
			continue
		}
		rep.Problems = append(rep.Problems, p)
	}
	if recovered > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d message(s) cut short (a dropped connection) arrived again whole", recovered))
	}
	var checks []*chainCheck
	for _, id := range ids {
		checks = append(checks, v.checkChain(id, v.chains[id]))
	}
	// Oldest first: a journal set aside is followed by the new chain,
	// which names it.
	sort.Slice(checks, func(i, j int) bool {
		a, b := checks[i].rep, checks[j].rep
		if !a.LastEntryAt.Equal(b.LastEntryAt) {
			return a.LastEntryAt.Before(b.LastEntryAt)
		}
		return a.ID < b.ID
	})
	checks = orderByLinks(checks)
	newest := checks[len(checks)-1]
	fromChain, fromFound := v.opts.FromChain, v.opts.FromChain == ""
	if fromChain == "" {
		fromChain = checks[0].rep.ID
	}
	for _, c := range checks {
		applies := c.rep.ID == fromChain
		fromFound = fromFound || applies
		checkHead(c, v.opts.From, applies)
	}
	rep.FromChain = fromChain
	linkProblems, linkNotes := v.checkLinks(checks)
	for i, c := range checks[:len(checks)-1] {
		// A successor that names c's entry, found in the capture, says
		// how far c was recorded: its seals need not reach further.
		if next := checks[i+1]; !(next.linked && next.rep.Link.Chain == c.rep.ID) {
			v.checkSealedUntilSuccessor(c, next)
		}
	}
	if !fromFound {
		rep.Problems = append(rep.Problems, CaptureProblem{Kind: ProblemHead, Chain: fromChain,
			Message: fmt.Sprintf("--from names %s, which is not in the capture", chainName(clip(fromChain, 40)))})
	}
	if newest.seal != nil && (!newest.tail || v.opts.AllowOpenTail) {
		v.checkSealAge(newest, v.opts.Until)
	}
	if len(checks) > 1 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d chains in the capture (a journal set aside starts a new one); the newest is %s", len(checks), chainName(newest.rep.ID)))
		for _, c := range checks {
			// No hash covers a chain id: only a checkpoint says which
			// chain entries belong to. Without one, a chain of invented
			// entries would pass, whatever AllowOpenTail says.
			if c.seal == nil && !slices.ContainsFunc(c.problems, func(p CaptureProblem) bool {
				return p.Kind == ProblemCheckpoint || p.Kind == ProblemSignature
			}) {
				c.problems = append(c.problems, CaptureProblem{Kind: ProblemCheckpoint, Seq: c.rep.FirstSeq, LastSeq: c.rep.LastSeq,
					Message: fmt.Sprintf("no checkpoint of this chain in the capture: with several chains, entries no checkpoint names cannot be told from an invented chain (seqs %d to %d)", c.rep.FirstSeq, c.rep.LastSeq)})
			}
		}
	}
	for _, c := range checks {
		if len(checks) > 1 {
			for i := range c.problems {
				c.problems[i].Chain = c.rep.ID
				c.problems[i].Message = chainName(c.rep.ID) + ": " + c.problems[i].Message
			}
			for i := range c.notes {
				c.notes[i] = chainName(c.rep.ID) + ": " + c.notes[i]
			}
		}
		rep.Problems = append(rep.Problems, c.problems...)
		rep.Notes = append(rep.Notes, c.notes...)
		rep.Chains = append(rep.Chains, c.rep)
		rep.Entries += c.rep.Entries
		rep.Checkpoints += c.rep.Checkpoints
	}
	rep.Problems = append(rep.Problems, linkProblems...)
	rep.Notes = append(rep.Notes, linkNotes...)
	vaultProblems, vaultNotes := checkVaultStates(checks)
	rep.Problems = append(rep.Problems, vaultProblems...)
	rep.Notes = append(rep.Notes, vaultNotes...)
	n := newest.rep
	rep.FirstSeq, rep.LastSeq, rep.SealedUpTo, rep.LastSealAt, rep.LastSealFinal = n.FirstSeq, n.LastSeq, n.SealedUpTo, n.LastSealAt, n.LastSealFinal
	limitProblems(&rep, v.dropped)
	return &rep
}

// limitProblems keeps at most maxProblems problems, each message clipped,
// and says how many more there were.
func limitProblems(rep *CaptureReport, dropped int) {
	if len(rep.Problems) > maxProblems {
		dropped += len(rep.Problems) - maxProblems
		rep.Problems = rep.Problems[:maxProblems]
	}
	for i := range rep.Problems {
		rep.Problems[i].Message = clip(rep.Problems[i].Message, maxProblemMessage)
	}
	if dropped > 0 {
		rep.Problems = append(rep.Problems, CaptureProblem{Kind: ProblemMalformed, Message: fmt.Sprintf("%d more problem(s) not listed", dropped)})
	}
}

// checkHead checks where a chain's part of the capture starts. from
// applies to one chain only (the oldest, or the one CaptureOptions
// names): a chain that began later, after a journal was set aside, starts
// at seq 1 in any capture that holds it.
func checkHead(c *chainCheck, from uint64, fromApplies bool) {
	if !fromApplies {
		from = 1
	}
	from = max(from, 1)
	switch {
	case c.rep.FirstSeq > from:
		// Whoever edits the receiver's file can delete its beginning:
		// only the auditor knows where the record should start.
		var msg string
		if fromApplies {
			give := strconv.FormatUint(c.rep.FirstSeq, 10)
			if c.rep.ID != "" {
				// Only CHAIN:SEQ says a chain with an id starts later
				// (capture_link.go).
				give = c.rep.ID + ":" + give
			}
			msg = fmt.Sprintf("the capture starts at seq %d: seqs %d to %d are not in it (give --from %s if the receiver's record starts there)", c.rep.FirstSeq, from, c.rep.FirstSeq-1, give)
		} else {
			msg = fmt.Sprintf("the capture starts at seq %d: seqs %d to %d are not in it (a chain that began after the oldest in the capture starts at seq 1; --from applies to %s)", c.rep.FirstSeq, from, c.rep.FirstSeq-1, "the oldest chain")
		}
		c.problems = append([]CaptureProblem{{Kind: ProblemHead, Seq: from, LastSeq: c.rep.FirstSeq - 1, Message: msg}}, c.problems...)
	case c.rep.FirstSeq > 1:
		c.notes = append([]string{fmt.Sprintf("the capture starts at seq %d, as expected (--from %d); earlier entries are not in it", c.rep.FirstSeq, from)}, c.notes...)
	}
}

// chainName names a chain in messages.
func chainName(id string) string {
	if id == "" {
		return "the legacy chain (no chain id)"
	}
	return "chain " + id
}

// checkChain checks one chain's entries: contiguous seqs, hashes, the
// chain, checkpoints, the head and the tail.
func (v *CaptureVerifier) checkChain(id string, entries map[uint64]*capEntry) *chainCheck {
	c := &chainCheck{entries: entries, rep: ChainReport{ID: id, Link: ChainLink{State: LinkUnseen}}}
	seqs := slices.Sorted(maps.Keys(entries))
	c.rep.Entries = len(seqs)
	c.rep.FirstSeq, c.rep.LastSeq = seqs[0], seqs[len(seqs)-1]
	add := func(kind string, seq, last uint64, loc, format string, args ...any) {
		c.problems = append(c.problems, CaptureProblem{Kind: kind, Seq: seq, LastSeq: last, Location: loc, Message: fmt.Sprintf(format, args...)})
	}
	var (
		lastCP    uint64 // seq of the last checkpoint event
		covered   uint64 // the seq the last checkpoint covers
		unchecked int
		untimed   int
		isCP      = map[uint64]bool{}
		// newestAt[i] is the newest event time of seqs[:i+1].
		newestAt = make([]time.Time, len(seqs))
	)
	for i, s := range seqs {
		e := entries[s]
		if i > 0 {
			newestAt[i] = newestAt[i-1]
		}
		if i > 0 && s != seqs[i-1]+1 {
			a, b := seqs[i-1]+1, s-1
			if a == b {
				add(ProblemGap, a, 0, "", "seq %d is missing", a)
			} else {
				add(ProblemGap, a, b, "", "seqs %d to %d are missing (%d entries)", a, b, b-a+1)
			}
		} else if i > 0 && entries[seqs[i-1]].hash != e.prev {
			add(ProblemChain, s, 0, e.loc, "seq %d: chain break: its previous hash is not the hash of seq %d", s, s-1)
		}
		switch {
		case e.withheld:
			add(ProblemWithheld, s, 0, e.loc, "seq %d: the sender withheld this %q event of %d bytes (over max_message_bytes); its content is not verified", s, clip(e.eventType, 80), e.size)
			continue
		case e.nParts > 0:
			add(ProblemParts, s, 0, e.loc, "seq %d: part(s) %s of %d missing", s, missingParts(e.parts, e.nParts), e.nParts)
			continue
		}
		ev := v.check(s, e, add)
		if ev != nil && ev.Time.After(c.rep.LastEntryAt) {
			c.rep.LastEntryAt = ev.Time
		}
		if ev != nil && ev.Time.After(newestAt[i]) {
			newestAt[i] = ev.Time
		}
		if i == 0 && ev != nil {
			c.firstAt = ev.Time
		}
		if s == 1 && ev != nil {
			l, err := linkOf(ev)
			if err != nil {
				add(ProblemLink, s, 0, e.loc, "seq 1: %v", err)
			}
			if l.State == LinkContinues {
				_ = decodeHash(&c.start, l.Hash)
			}
			c.rep.Link = l
		}
		if ev == nil || ev.Type != TypeCheckpoint {
			continue
		}
		c.rep.Checkpoints++
		cp, err := ParseCheckpoint(ev)
		if err != nil {
			add(ProblemSignature, s, 0, e.loc, "seq %d: %v", s, err)
			continue
		}
		lastCP, covered = s, cp.Seq
		isCP[s] = true
		if v.opts.PublicKey == nil {
			unchecked++
		} else if err := cp.Verify(v.opts.PublicKey); err != nil {
			add(ProblemSignature, s, 0, e.loc, "seq %d: checkpoint signature does not verify with key %s (made by key %s)", s, KeyID(v.opts.PublicKey), cp.KeyID)
			continue
		}
		if cp.Chain != id {
			// The chain id of the wire body is not in any hash: the
			// signed one says which chain these entries are. (A
			// checkpoint without time has none: only the legacy chain
			// holds those.)
			add(ProblemSignature, s, 0, e.loc, "seq %d: a checkpoint of %s in %s: entries were moved between chains", s, chainName(cp.Chain), chainName(id))
			continue
		}
		if ce, ok := entries[cp.Seq]; ok && ce.hash != cp.Hash {
			add(ProblemSignature, s, 0, e.loc, "seq %d: checkpoint says seq %d has hash %x…, the capture has %x…", s, cp.Seq, cp.Hash[:6], ce.hash[:6])
			continue
		}
		if v.opts.PublicKey != nil && cp.Seq > c.rep.SealedUpTo {
			c.rep.SealedUpTo = cp.Seq
		}
		if !cp.Timed() {
			untimed++
		}
		c.seal, c.sealAt = cp, s
		// The entries up to cp.Seq that the capture holds (before this
		// checkpoint's own entry).
		c.sealCovers = time.Time{}
		if k, _ := slices.BinarySearch(seqs[:i], cp.Seq+1); k > 0 {
			c.sealCovers = newestAt[k-1]
		}
	}
	if c.seal != nil {
		c.rep.LastSealAt, c.rep.LastSealFinal = c.seal.Time, c.seal.Final
	}
	if untimed > 0 {
		c.notes = append(c.notes, fmt.Sprintf("%d checkpoint(s) carry no time (made by a version before sealed times): each is dated by the newest entry it covers", untimed))
	}
	if unchecked > 0 {
		c.notes = append(c.notes, fmt.Sprintf("%d checkpoint signature(s) not checked: give the appliance's public key (applianced audit pubkey)", unchecked))
	}
	// Entries after what the last checkpoint covers, checkpoints aside,
	// are not sealed: the tail may have been cut there.
	var tailFirst, tailLast uint64
	if lastCP != 0 {
		for _, s := range seqs {
			if s > covered && !isCP[s] {
				if tailFirst == 0 {
					tailFirst = s
				}
				tailLast = s
			}
		}
	}
	c.tail = tailFirst != 0
	switch {
	case lastCP == 0:
		msg := fmt.Sprintf("no checkpoint in the capture: seqs %d to %d are not sealed", c.rep.FirstSeq, c.rep.LastSeq)
		if v.opts.AllowOpenTail {
			c.notes = append(c.notes, msg)
		} else {
			add(ProblemCheckpoint, c.rep.FirstSeq, c.rep.LastSeq, "", "%s", msg)
		}
	case tailFirst != 0:
		msg := fmt.Sprintf("seqs %d to %d are not covered by the last checkpoint (seq %d, covering up to seq %d): the tail after seq %d is missing or the stream is still open", tailFirst, tailLast, lastCP, covered, covered)
		if v.opts.AllowOpenTail {
			c.notes = append(c.notes, msg)
		} else {
			add(ProblemTail, tailFirst, tailLast, "", "%s", msg)
		}
	}
	return c
}

// checkSealAge says whether the newest seal of a chain is as recent as
// the capture should reach: the appliance writes a checkpoint every
// interval, idle or not, so an older newest seal means the capture was cut
// after it (or the appliance stopped writing).
//
// A seal's time is the later of the time it signs and the time of the
// newest entry it covers: the chain hash it signs authenticates that
// entry's time too. A seal made by a version before sealed times (no time
// of its own) is then dated by its entries, so a capture cut back to one
// is stale like any other; it promised no interval, so the default one
// stands in.
func (v *CaptureVerifier) checkSealAge(c *chainCheck, until time.Time) {
	seal, at := c.seal, c.sealAt
	sealedAt, interval := c.sealTime()
	if sealedAt.IsZero() {
		c.notes = append(c.notes, fmt.Sprintf("the newest checkpoint (seq %d) carries no time and covers no entry with one: whether the capture was cut after it cannot be told", at))
		return
	}
	if until.IsZero() || c.rep.LastEntryAt.After(until) {
		until = c.rep.LastEntryAt
	}
	margin := v.opts.Margin
	if margin <= 0 {
		margin = SealMargin
	}
	due := sealedAt.Add(interval + margin)
	if !until.After(due) {
		if !seal.Final {
			c.notes = append(c.notes, fmt.Sprintf("the capture ends at checkpoint seq %d of a journal still open, made at %s; later entries belong to a later capture", at, sealedAt.UTC().Format(time.RFC3339)))
		}
		return
	}
	var msg string
	switch {
	case !seal.Timed():
		msg = fmt.Sprintf("the newest seal (seq %d) carries no time (made by a version before sealed times); the newest entry it covers was made at %s, and the capture should reach %s: what came after seq %d was cut, or the appliance wrote nothing since",
			at, sealedAt.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339), at)
	case seal.Final:
		msg = fmt.Sprintf("the newest seal (seq %d) is final: the appliance's journal closed at %s, and the capture should reach %s: the journal continues after a restart, so what it wrote after a later start is missing, unless the appliance stayed stopped",
			at, sealedAt.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
	default:
		msg = fmt.Sprintf("the newest seal (seq %d) was made at %s and promised the next within %s, but the capture should reach %s: what came after seq %d was cut, or the appliance stopped writing without a final seal",
			at, sealedAt.UTC().Format(time.RFC3339), interval, until.UTC().Format(time.RFC3339), at)
	}
	msg += "; if this file was taken or rotated before " + until.UTC().Format(time.RFC3339) +
		", give --until with when it was (the receiver's rotation time, say), or --open-tail for a stream still being written: --until now is right only for a live file"
	if v.opts.AllowOpenTail {
		c.notes = append(c.notes, msg)
		return
	}
	c.problems = append(c.problems, CaptureProblem{Kind: ProblemStale, Seq: at + 1, Message: msg})
}

// sealTime returns when the chain's newest seal was made, as far as the
// capture can tell (see checkSealAge), and the interval it promised.
func (c *chainCheck) sealTime() (time.Time, time.Duration) {
	at, interval := c.seal.Time, c.seal.Interval
	if c.sealCovers.After(at) {
		at = c.sealCovers
	}
	if !c.seal.Timed() {
		interval = DefaultCheckpointInterval
	}
	return at, interval
}

// checkSealedUntilSuccessor says whether a chain that is not the newest
// was sealed up to when the next began: its journal wrote a checkpoint
// every interval until it stopped, so a newest seal older than the next
// chain's first entry, less that interval and the margin, means the
// capture was cut after it. A final seal says the journal closed there.
func (v *CaptureVerifier) checkSealedUntilSuccessor(c, next *chainCheck) {
	if c.seal == nil || c.seal.Final || next.firstAt.IsZero() {
		return
	}
	sealedAt, interval := c.sealTime()
	margin := v.opts.Margin
	if margin <= 0 {
		margin = SealMargin
	}
	if sealedAt.IsZero() || !next.firstAt.After(sealedAt.Add(interval+margin)) {
		return
	}
	c.problems = append(c.problems, CaptureProblem{Kind: ProblemStale, Seq: c.sealAt + 1,
		Message: fmt.Sprintf("the newest seal (seq %d) was made at %s and promised the next within %s, but %s began at %s: what this chain wrote after seq %d was cut (it has no final seal)",
			c.sealAt, sealedAt.UTC().Format(time.RFC3339), interval, chainName(next.rep.ID), next.firstAt.UTC().Format(time.RFC3339), c.sealAt)})
}

// check verifies one complete entry's hash and returns its event.
func (v *CaptureVerifier) check(s uint64, e *capEntry, add func(string, uint64, uint64, string, string, ...any)) *Event {
	h, ev := entryHash(e.prev, e.canonical)
	if h == e.hash && ev != nil && ev.Seq == s {
		return ev
	}
	if ev != nil {
		// A receiver may re-encode escapes, nothing more: the same keys,
		// spelt the same, in the same order, with the same values. Extra,
		// repeated or re-cased keys, which decoding would drop or fold,
		// are an edit.
		if c, err := ev.Canonical(); err == nil && ChainHash(e.prev, c) == e.hash && ev.Seq == s && sameJSON(c, e.canonical) {
			return ev
		}
	}
	add(ProblemAltered, s, 0, e.loc, "seq %d: the event does not match its hash: altered after it was recorded", s)
	return nil
}

// sameJSON reports whether a and b are the same JSON text up to how
// strings and numbers are escaped or spelt: the same tokens in the same
// order, keys included as they are spelt. Neither may repeat a key.
func sameJSON(a, b []byte) bool {
	if bytes.Equal(a, b) {
		return true
	}
	ta, err := jsonTokens(a)
	if err != nil {
		return false
	}
	tb, err := jsonTokens(b)
	if err != nil {
		return false
	}
	return slices.Equal(ta, tb)
}

// jsonTokens lists a JSON text's tokens, as strings: delimiters, keys and
// values (numbers as written, strings unescaped, with a type prefix). It
// refuses a repeated key in an object, and trailing data.
func jsonTokens(b []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out []string
	type obj struct {
		keys    map[string]bool
		wantKey bool
	}
	var stack []*obj
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		var top *obj
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			out = append(out, "d"+t.String())
			switch t {
			case '{':
				if top != nil && top.keys != nil {
					top.wantKey = true
				}
				stack = append(stack, &obj{keys: map[string]bool{}, wantKey: true})
				continue
			case '[':
				if top != nil && top.keys != nil {
					top.wantKey = true
				}
				stack = append(stack, &obj{})
				continue
			default:
				stack = stack[:len(stack)-1]
				continue
			}
		case string:
			if top != nil && top.keys != nil && top.wantKey {
				if top.keys[t] {
					return nil, fmt.Errorf("key %q repeated", t)
				}
				top.keys[t] = true
				top.wantKey = false
				out = append(out, "k"+t)
				continue
			}
			out = append(out, "s"+t)
		case json.Number:
			out = append(out, "n"+t.String())
		case bool:
			out = append(out, fmt.Sprintf("b%v", t))
		case nil:
			out = append(out, "null")
		}
		if top != nil && top.keys != nil {
			top.wantKey = true
		}
	}
	return out, nil
}

// noDuplicateKeys refuses a JSON text with a key repeated in an object.
func noDuplicateKeys(b []byte) error {
	_, err := jsonTokens(b)
	return err
}
