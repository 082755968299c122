package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Checkpoint event: its type and the keys of its Details.
const (
	TypeCheckpoint = "audit.checkpoint"

	CheckpointKeyName = "audit-checkpoint" // KeySource entry: the Ed25519 seed

	DetailCheckpointSeq   = "seq"        // the covered entry's seq
	DetailCheckpointHash  = "chain_hash" // its chain hash, hex
	DetailCheckpointFinal = "final"      // "true" when the journal closed after it
	DetailCheckpointKeyID = "key_id"     // KeyID of the signing key
	DetailCheckpointSig   = "sig"        // Ed25519 signature, base64 (standard, padded)

	// DetailCheckpointTime is when the checkpoint was made (RFC 3339, UTC,
	// nanoseconds), and DetailCheckpointInterval the longest time the
	// appliance lets pass before the next one (a Go duration, "1m0s"):
	// together they say how recent the newest seal of a capture must be.
	// Checkpoints of versions before them have neither.
	DetailCheckpointTime     = "sealed_at"
	DetailCheckpointInterval = "interval"
	// DetailCheckpointChain is the journal's chain id (Journal.ChainID),
	// absent for a journal made by a version before chain ids.
	DetailCheckpointChain = "chain"
)

// Sentinel errors of checkpoint verification.
var (
	ErrBadCheckpoint = errors.New("audit: malformed checkpoint")
	ErrBadSignature  = errors.New("audit: checkpoint signature does not verify")
)

// Checkpoint is what a checkpoint event asserts: the entry with Seq of the
// chain Chain had the chain hash Hash, signed by the appliance's audit key
// at Time, and the next checkpoint follows within Interval. Since every hash covers all earlier
// entries, a good checkpoint seals the journal up to Seq.
//
// A zero Time is a checkpoint of the versions before sealed times: its
// signature covers seq, hash and final only (message v1), and it says
// nothing of when it was made nor of which chain it seals.
type Checkpoint struct {
	Chain    string // the journal's chain id; "" for the legacy chain
	Seq      uint64
	Hash     [32]byte
	Final    bool // the journal was closed cleanly right after this checkpoint
	Time     time.Time
	Interval time.Duration
	KeyID    string
	Sig      []byte
}

// signedBytes is the exact message the signature covers.
func (c *Checkpoint) signedBytes() []byte {
	if c.Time.IsZero() {
		return fmt.Appendf(nil, "applianced audit checkpoint v1\nseq=%d\nhash=%x\nfinal=%t\n", c.Seq, c.Hash, c.Final)
	}
	return fmt.Appendf(nil, "applianced audit checkpoint v2\nchain=%s\nseq=%d\nhash=%x\nfinal=%t\ntime=%s\ninterval=%d\n",
		c.Chain, c.Seq, c.Hash, c.Final, c.Time.UTC().Format(time.RFC3339Nano), int64(c.Interval))
}

// Timed reports whether the checkpoint carries the time it was made
// (checkpoints of older versions do not).
func (c *Checkpoint) Timed() bool { return !c.Time.IsZero() }

// KeyID names a public key: the first 16 hex digits of its SHA-256.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// LoadCheckpointKey returns the appliance's Ed25519 audit key from ks,
// creating it the first time.
func LoadCheckpointKey(ctx context.Context, ks KeySource) (ed25519.PrivateKey, error) {
	seed, err := ks.SystemKey(ctx, CheckpointKeyName, func() ([]byte, error) {
		s := make([]byte, ed25519.SeedSize)
		if _, err := io.ReadFull(rand.Reader, s); err != nil {
			return nil, err
		}
		return s, nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: load checkpoint key: %w", err)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, want %d", ErrBadKey, CheckpointKeyName, len(seed), ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// FormatPublicKey writes a checkpoint public key as auditors receive it:
// "ed25519:" and the base64 of the 32 bytes.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return "ed25519:" + base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey reads what FormatPublicKey writes (the "ed25519:" prefix
// is optional).
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), "ed25519:"))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("audit: public key %q: want ed25519: and the base64 of 32 bytes", s)
	}
	return ed25519.PublicKey(b), nil
}

// NewCheckpointEvent signs c (Chain, Seq, Hash, Final, Time, Interval) with
// key and returns the event to append; the event's time is c.Time.
func NewCheckpointEvent(key ed25519.PrivateKey, c Checkpoint) *Event {
	c.KeyID = KeyID(key.Public().(ed25519.PublicKey))
	c.Sig = ed25519.Sign(key, c.signedBytes())
	d := map[string]string{
		DetailCheckpointSeq:   strconv.FormatUint(c.Seq, 10),
		DetailCheckpointHash:  hex.EncodeToString(c.Hash[:]),
		DetailCheckpointKeyID: c.KeyID,
		DetailCheckpointSig:   base64.StdEncoding.EncodeToString(c.Sig),
	}
	if c.Final {
		d[DetailCheckpointFinal] = "true"
	}
	ev := &Event{Type: TypeCheckpoint, Outcome: OutcomeSuccess, Target: "journal", Details: d}
	if c.Timed() {
		d[DetailCheckpointTime] = c.Time.UTC().Format(time.RFC3339Nano)
		d[DetailCheckpointInterval] = c.Interval.String()
		if c.Chain != "" {
			d[DetailCheckpointChain] = c.Chain
		}
		ev.Time = c.Time.UTC()
	}
	return ev
}

// ParseCheckpoint reads a checkpoint event's details without checking the
// signature.
func ParseCheckpoint(e *Event) (*Checkpoint, error) {
	if e.Type != TypeCheckpoint {
		return nil, fmt.Errorf("%w: type %q", ErrBadCheckpoint, e.Type)
	}
	d := e.Details
	seq, err := strconv.ParseUint(d[DetailCheckpointSeq], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: seq %q", ErrBadCheckpoint, d[DetailCheckpointSeq])
	}
	h, err := hex.DecodeString(d[DetailCheckpointHash])
	if err != nil || len(h) != 32 {
		return nil, fmt.Errorf("%w: chain_hash %q", ErrBadCheckpoint, d[DetailCheckpointHash])
	}
	sig, err := base64.StdEncoding.DecodeString(d[DetailCheckpointSig])
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: sig is not a base64 Ed25519 signature", ErrBadCheckpoint)
	}
	c := &Checkpoint{Seq: seq, Final: d[DetailCheckpointFinal] == "true", KeyID: d[DetailCheckpointKeyID], Sig: sig}
	copy(c.Hash[:], h)
	ts, ti := d[DetailCheckpointTime], d[DetailCheckpointInterval]
	if ts != "" || ti != "" {
		if c.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil || c.Time.IsZero() {
			return nil, fmt.Errorf("%w: sealed_at %q", ErrBadCheckpoint, ts)
		}
		if c.Interval, err = time.ParseDuration(ti); err != nil || c.Interval <= 0 {
			return nil, fmt.Errorf("%w: interval %q", ErrBadCheckpoint, ti)
		}
		c.Chain = d[DetailCheckpointChain]
	} else if _, ok := d[DetailCheckpointChain]; ok {
		return nil, fmt.Errorf("%w: a chain without a time", ErrBadCheckpoint)
	}
	return c, nil
}

// Verify checks the signature with pub.
func (c *Checkpoint) Verify(pub ed25519.PublicKey) error {
	if !ed25519.Verify(pub, c.signedBytes(), c.Sig) {
		return fmt.Errorf("%w (seq %d, key %s, checked with key %s)", ErrBadSignature, c.Seq, c.KeyID, KeyID(pub))
	}
	return nil
}
