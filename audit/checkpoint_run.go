package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// CheckpointOptions tune a Checkpointer. A nil *CheckpointOptions means the
// defaults.
type CheckpointOptions struct {
	// Every is the number of entries after which a checkpoint is written.
	// Default 10000.
	Every int
	// Interval is the time between checkpoints when fewer than Every
	// entries come: one is written each Interval, idle or not (a
	// heartbeat), and each says so, so that a capture whose newest
	// checkpoint is older than Interval was cut or its appliance stopped.
	// Default DefaultCheckpointInterval.
	Interval time.Duration
	// Logger receives operational messages.
	Logger *slog.Logger
}

// DefaultCheckpointInterval is the time between checkpoints when
// CheckpointOptions.Interval is not set. Verification also takes it as
// the interval of a checkpoint made by a version before sealed times,
// which promised none.
const DefaultCheckpointInterval = time.Minute

// Checkpointer appends signed checkpoints to a journal: every Every entries,
// every Interval even when nothing else happened (a heartbeat), and a final
// one at Close. Each carries the time it was made. Checkpoints go through
// the journal, so every forwarder delivers them with the stream. After
// each it updates the record of the chain beside the journal's directory
// (chainlink.go).
type Checkpointer struct {
	j     *Journal
	key   ed25519.PrivateKey
	opts  CheckpointOptions
	final chan chan error
	done  chan struct{}
	start uint64 // the journal's last seq when the Checkpointer was made
}

// NewCheckpointer returns a Checkpointer; Run starts it. It counts entries
// from the journal's last one now, so none appended before Run gets going
// is left out of the count.
func NewCheckpointer(j *Journal, key ed25519.PrivateKey, opts *CheckpointOptions) *Checkpointer {
	var o CheckpointOptions
	if opts != nil {
		o = *opts
	}
	if o.Every <= 0 {
		o.Every = 10000
	}
	if o.Interval <= 0 {
		o.Interval = DefaultCheckpointInterval
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Checkpointer{j: j, key: key, opts: o, final: make(chan chan error), done: make(chan struct{}), start: j.LastSeq()}
}

// PublicKey returns the key auditors verify checkpoints with.
func (c *Checkpointer) PublicKey() ed25519.PublicKey { return c.key.Public().(ed25519.PublicKey) }

// Run follows the journal and writes checkpoints until ctx ends or Close.
func (c *Checkpointer) Run(ctx context.Context) error {
	defer close(c.done)
	r, err := c.j.Reader(max(c.start, 1))
	if err != nil {
		return err
	}
	entries, perr, stopPump := r.Pump(ctx, 1024)
	defer stopPump()

	var (
		lastSeq  uint64
		lastHash [32]byte
		since    int // entries since the last checkpoint, checkpoints excluded
	)
	take := func(e Entry) {
		lastSeq, lastHash = e.Seq, e.Hash
		if e.Event.Type != TypeCheckpoint {
			since++
		}
	}
	write := func(final bool) error {
		if lastSeq == 0 {
			return nil
		}
		cp := Checkpoint{Chain: c.j.ChainID(), Seq: lastSeq, Hash: lastHash, Final: final, Time: c.j.opts.Now().UTC(), Interval: c.opts.Interval}
		if _, err := c.j.Append(ctx, NewCheckpointEvent(c.key, cp)); err != nil {
			return fmt.Errorf("audit: checkpoint at seq %d: %w", lastSeq, err)
		}
		since = 0
		// The record beside the journal follows the checkpoints (not
		// every append): a chain that replaces this one names it.
		c.j.recordChain()
		return nil
	}
	tick := time.NewTicker(c.opts.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-perr:
			if errors.Is(err, context.Canceled) || errors.Is(err, ErrClosed) {
				return nil
			}
			return err
		case e := <-entries:
			take(e)
			if since >= c.opts.Every {
				if err := write(false); err != nil {
					c.opts.Logger.Error("audit: checkpoint", "err", err)
				}
			}
		case <-tick.C:
			// Idle or not: a capture that ends at a checkpoint older
			// than Interval was cut there, or its appliance stopped.
			if err := write(false); err != nil {
				c.opts.Logger.Error("audit: checkpoint", "err", err)
			}
		case reply := <-c.final:
			// Catch up with everything durable, then seal it.
			want := c.j.LastSeq()
			var err error
			for lastSeq < want && err == nil {
				select {
				case e := <-entries:
					take(e)
				case err = <-perr:
				case <-ctx.Done():
					err = ctx.Err()
				}
			}
			if err == nil {
				err = write(true)
			}
			reply <- err
			return err
		}
	}
}

// Close writes the final checkpoint, covering every entry durable so far,
// and stops Run. Call it after the last action and before the journal
// closes; a Flush of the forwarders afterwards delivers it.
func (c *Checkpointer) Close(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case c.final <- reply:
	case <-c.done:
		return errors.New("audit: checkpointer is not running")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
