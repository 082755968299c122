package syslog

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/applianced/applianced/audit"
)

// Options tune a Forwarder. A nil *Options is not allowed: Dir is required.
type Options struct {
	// Dir holds the targets' cursor files (one small file each). Required;
	// created 0700 when missing. Not the journal's own directory.
	Dir string
	// Logger receives operational messages; never event contents.
	Logger *slog.Logger
	// DialTimeout bounds a connection attempt, TLS handshake included.
	// Default 10s.
	DialTimeout time.Duration
	// WriteTimeout bounds one write: a receiver that accepts but does not
	// read is abandoned after it and retried. Default 15s.
	WriteTimeout time.Duration
	// Settle is how long bytes must have been taken by the receiver before
	// the cursor moves past them. Default 250ms.
	Settle time.Duration
	// BackoffMin and BackoffMax bound the wait between failed attempts
	// (exponential with full jitter). Defaults 200ms and 30s.
	BackoffMin, BackoffMax time.Duration
	// Retain and KeepBytes are the retention of delivered segments: one is
	// removed once every target has delivered it and it is older than
	// Retain, or the journal is larger than KeepBytes. Zero disables each.
	Retain    time.Duration
	KeepBytes int64
	// PruneEvery is how often retention runs. Default 1m.
	PruneEvery time.Duration
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 15 * time.Second
	}
	if o.Settle <= 0 {
		o.Settle = 250 * time.Millisecond
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = 200 * time.Millisecond
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = 30 * time.Second
	}
	if o.PruneEvery <= 0 {
		o.PruneEvery = time.Minute
	}
	return o
}

// Journal is what a Forwarder needs of the audit journal; *audit.Journal
// implements it.
type Journal interface {
	audit.Appender
	Reader(from uint64) (*audit.Reader, error)
	LastSeq() uint64
	ChainID() string
	Segments() []audit.SegmentInfo
	Prune(deliveredUpTo uint64, remove func(audit.SegmentInfo) bool) (int, error)
}

// TargetStatus is what doctor and metrics show of one target.
type TargetStatus struct {
	Address     string    `json:"address"`
	Format      string    `json:"format"`
	Connected   bool      `json:"connected"`
	Delivered   uint64    `json:"delivered"`   // last seq known to have reached the receiver
	Sent        uint64    `json:"sent"`        // last seq written to the connection
	JournalSeq  uint64    `json:"journal_seq"` // last seq in the journal
	Lag         uint64    `json:"lag"`         // JournalSeq - Delivered
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Reconnects  int       `json:"reconnects"`
}

// Forwarder delivers the journal to every configured target, each from its
// own durable cursor, and prunes the journal behind the slowest one.
type Forwarder struct {
	j       Journal
	opts    Options
	targets []*target

	stopMu   sync.RWMutex // held for reading around a target-state append
	stopping bool

	retMu     sync.Mutex // guards the retention, which a reload may change
	retain    time.Duration
	keepBytes int64

	left []LeftChain // set by NewForwarder, read-only after
}

// LeftChain is where a target stood in a chain the journal no longer is:
// NewForwarder found the target's cursor in another chain (the journal
// was set aside and a new one started), recorded audit.tamper, and sends
// the new chain from its start. What the target missed of the old chain
// is still in the directory set aside.
type LeftChain struct {
	Target string // its address
	Chain  string // the chain the cursor stood in
	Cursor uint64 // the last seq of it the target confirmed
}

// LeftChains returns the targets whose cursor NewForwarder found in
// another chain than the journal's, in the order of the targets.
func (f *Forwarder) LeftChains() []LeftChain { return slices.Clone(f.left) }

// SetRetention changes Options.Retain and Options.KeepBytes of a running
// forwarder, as a config reload does; the next Prune applies them.
func (f *Forwarder) SetRetention(retain time.Duration, keepBytes int64) {
	f.retMu.Lock()
	f.retain, f.keepBytes = retain, keepBytes
	f.retMu.Unlock()
}

// Stopping tells the forwarder the daemon is stopping: from now on a
// target's state changes are logged but no longer appended to the journal,
// so the final checkpoint written next stays the journal's last entry.
// Call it before the final checkpoint; delivery goes on until Run's ctx
// ends.
func (f *Forwarder) Stopping() {
	f.stopMu.Lock()
	f.stopping = true
	f.stopMu.Unlock()
}

type target struct {
	f    *Forwarder
	cfg  Target
	ep   endpoint
	tls  *tls.Config
	cur  *cursor
	log  *slog.Logger
	fmtr *formatter

	delivered atomic.Uint64
	mu        sync.Mutex
	st        TargetStatus
	down      bool
	damagedAt uint64 // the entry last recorded as damaged (run's goroutine only)
}

// New validates the targets and prepares a Forwarder; Run starts it.
func New(j Journal, targets []Target, opts *Options) (*Forwarder, error) {
	if opts == nil || opts.Dir == "" {
		return nil, errors.New("syslog: Options.Dir is required")
	}
	if errs := ValidateTargets(targets); len(errs) > 0 {
		var all []error
		for _, e := range errs {
			all = append(all, e)
		}
		return nil, fmt.Errorf("syslog: invalid target: %w", errors.Join(all...))
	}
	o := opts.withDefaults()
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("syslog: %w", err)
	}
	f := &Forwarder{j: j, opts: o, retain: o.Retain, keepBytes: o.KeepBytes}
	for _, tc := range targets {
		tc = tc.withDefaults()
		ep, _ := parseAddress(tc.Address)
		t := &target{f: f, cfg: tc, ep: ep, cur: newCursor(o.Dir, tc.Address, j.ChainID()),
			log: o.Logger.With("target", tc.Address), fmtr: newFormatter(tc, ep)}
		if ep.tls() {
			c, err := tlsConfig(tc, ep)
			if err != nil {
				return nil, err
			}
			t.tls = c
		}
		if tc.Start == StartNow && !t.cur.exists() {
			// A new target that replaces one which had the history.
			if err := t.cur.store(j.LastSeq()); err != nil {
				return nil, err
			}
			t.log.Info("syslog: new target starts with the next entry (start = \"now\")", "journal_seq", j.LastSeq())
		}
		seq, chain, err := t.cur.load()
		if err != nil {
			// A damaged cursor means everything kept is sent again:
			// duplicates, never a loss.
			t.log.Error("syslog: cursor unreadable; resending from the oldest entry kept", "err", err)
		}
		if last := j.LastSeq(); chain != j.ChainID() {
			// A position in another chain: the journal was set aside and
			// a new one started at seq 1, perhaps already past the old
			// position. All of the new chain goes, and the SIEM hears of
			// it; the receiver tells the chains apart by audit_chain.
			t.log.Error("syslog: the journal is another chain than the one this target received; sending it from the oldest entry kept",
				"cursor", seq, "cursor_chain", chain, "journal_chain", j.ChainID(), "journal_seq", last)
			t.tamper(context.Background(), "the journal is another chain than the one this target received: it was set aside or replaced",
				map[string]string{"cursor": fmt.Sprint(seq), "cursor_chain": chain, "journal_chain": j.ChainID(), "journal_seq": fmt.Sprint(last)})
			if chain != "" {
				f.left = append(f.left, LeftChain{Target: tc.Address, Chain: chain, Cursor: seq})
			}
			seq = 0
		} else if seq > last {
			// The cursor is ahead of the journal: the journal was replaced
			// (moved aside to start a new chain, or restored from an older
			// copy). Sending it all again is the only safe choice, and the
			// SIEM hears of it.
			t.log.Error("syslog: cursor is ahead of the journal; resending from the oldest entry kept", "cursor", seq, "journal_seq", last)
			t.tamper(context.Background(), "the journal ends before what this target already received: it was replaced or cut",
				map[string]string{"cursor": fmt.Sprint(seq), "journal_seq": fmt.Sprint(last)})
			seq = 0
		}
		t.delivered.Store(seq)
		t.st = TargetStatus{Address: tc.Address, Format: tc.Format}
		f.targets = append(f.targets, t)
	}
	return f, nil
}

// Run delivers until ctx ends. It returns nil then.
func (f *Forwarder) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, t := range f.targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.run(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(f.opts.PruneEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if _, err := f.Prune(); err != nil {
					f.opts.Logger.Error("syslog: journal retention", "err", err)
				}
			}
		}
	}()
	wg.Wait()
	return nil
}

// Status returns each target's state.
func (f *Forwarder) Status() []TargetStatus {
	last := f.j.LastSeq()
	out := make([]TargetStatus, len(f.targets))
	for i, t := range f.targets {
		t.mu.Lock()
		s := t.st
		t.mu.Unlock()
		s.Delivered = t.delivered.Load()
		s.JournalSeq = last
		if last > s.Delivered {
			s.Lag = last - s.Delivered
		}
		out[i] = s
	}
	return out
}

// Delivered returns the lowest delivered seq over all targets: what every
// receiver has. With no target it is the journal's last seq.
func (f *Forwarder) Delivered() uint64 {
	min := f.j.LastSeq()
	for _, t := range f.targets {
		if d := t.delivered.Load(); d < min {
			min = d
		}
	}
	return min
}

// Flush waits until every target delivered what the journal held when it
// was called, or ctx ends. The daemon calls it at shutdown, after the final
// checkpoint.
func (f *Forwarder) Flush(ctx context.Context) error {
	want := f.j.LastSeq()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for f.Delivered() < want {
		select {
		case <-ctx.Done():
			return fmt.Errorf("syslog: flush: %d of %d delivered: %w", f.Delivered(), want, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// StopFlushTimeout is the bound the daemon gives FlushConnected at stop,
// for the final checkpoint to reach the targets that are connected. What
// is not delivered by then stays in the journal and is sent at the next
// start, from the target's durable cursor: a stop never loses an entry.
const StopFlushTimeout = 2 * time.Second

// ErrTargetUnavailable means FlushConnected gave up on a target that was
// not connected; its entries wait in the journal.
var ErrTargetUnavailable = errors.New("syslog: target not connected; its entries wait in the journal")

// FlushConnected is Flush for a stop: it waits, until ctx ends, only for
// the targets that are connected, and gives up at once on a target that is
// not (its last attempt failed, it is dialing, or it is waiting to retry)
// or that loses its connection meanwhile. An unreachable target therefore
// costs a stop nothing; a connected one that does not read costs at most
// ctx's bound. It returns nil when every target has what the journal held
// when it was called; else an error wrapping ErrTargetUnavailable and/or
// ctx's error. Nothing is lost either way: the cursors stay where delivery
// was confirmed.
func (f *Forwarder) FlushConnected(ctx context.Context) error {
	want := f.j.LastSeq()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	gaveUp := map[*target]bool{}
	for {
		waiting := 0
		for _, t := range f.targets {
			if gaveUp[t] || t.delivered.Load() >= want {
				continue
			}
			t.mu.Lock()
			up := t.st.Connected
			t.mu.Unlock()
			if !up {
				gaveUp[t] = true
				continue
			}
			waiting++
		}
		if waiting == 0 {
			break
		}
		select {
		case <-ctx.Done():
			var errs []error
			for _, t := range f.targets {
				if d := t.delivered.Load(); d < want && !gaveUp[t] {
					errs = append(errs, fmt.Errorf("syslog: flush %s: %d of %d delivered: %w", t.cfg.Address, d, want, ctx.Err()))
				}
			}
			return errors.Join(append(errs, f.gaveUpErr(gaveUp, want))...)
		case <-tick.C:
		}
	}
	return f.gaveUpErr(gaveUp, want)
}

func (f *Forwarder) gaveUpErr(gaveUp map[*target]bool, want uint64) error {
	var errs []error
	for _, t := range f.targets {
		if gaveUp[t] && t.delivered.Load() < want {
			errs = append(errs, fmt.Errorf("%w: %s: %d of %d delivered", ErrTargetUnavailable, t.cfg.Address, t.delivered.Load(), want))
		}
	}
	return errors.Join(errs...)
}

// Prune removes journal segments every target has delivered, when they are
// older than Retain or the journal is larger than KeepBytes.
func (f *Forwarder) Prune() (int, error) {
	var total int64
	for _, s := range f.j.Segments() {
		total += s.Bytes
	}
	now := time.Now()
	f.retMu.Lock()
	retain, keepBytes := f.retain, f.keepBytes
	f.retMu.Unlock()
	return f.j.Prune(f.Delivered(), func(s audit.SegmentInfo) bool {
		old := retain > 0 && now.Sub(s.ModTime) > retain
		big := keepBytes > 0 && total > keepBytes
		if old || big {
			total -= s.Bytes
			return true
		}
		return false
	})
}

// run connects, delivers and reconnects until ctx ends.
func (t *target) run(ctx context.Context) {
	o := t.f.opts
	backoff := o.BackoffMin
	for ctx.Err() == nil {
		before := t.delivered.Load()
		tc := t.tls
		var err error
		if t.ep.tls() {
			// The CA and client certificate are read again for each
			// connection: renewed in place, they take effect at the next
			// one, without a restart (a reload changes no path).
			tc, err = tlsConfig(t.cfg, t.ep)
		}
		var c *conn
		if err == nil {
			c, err = dial(ctx, t.ep, tc, o.DialTimeout)
		}
		if err == nil {
			t.setConnected(true)
			err = t.deliver(ctx, c)
			c.close()
			t.setConnected(false)
		}
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, audit.ErrPruned) {
			// Retention (drop_oldest) removed what the cursor pointed at;
			// the journal recorded that (audit.dropped). Not the
			// receiver's doing: go on from the oldest entry kept, with
			// no target_down alert.
			t.mu.Lock()
			t.st.LastError, t.st.LastErrorAt = err.Error(), time.Now().UTC()
			t.mu.Unlock()
			t.skipPruned()
			continue
		}
		if errors.Is(err, audit.ErrDamaged) {
			t.damaged(ctx, err)
		}
		t.fail(ctx, err)
		if t.delivered.Load() > before {
			backoff = o.BackoffMin
		}
		wait := time.Duration(rand.Int64N(int64(backoff))) + o.BackoffMin/2
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		backoff = min(backoff*2, o.BackoffMax)
	}
	if err := t.cur.store(t.delivered.Load()); err != nil {
		t.log.Error("syslog: saving cursor", "err", err)
	}
}

// damaged records, once per entry, that the journal cannot be read past a
// damaged entry (audit.tamper): the target is stuck there until the
// journal is repaired, and the SIEM must hear why.
func (t *target) damaged(ctx context.Context, err error) {
	at := t.delivered.Load() + 1
	if t.damagedAt == at {
		return
	}
	t.damagedAt = at
	t.tamper(ctx, err.Error(), map[string]string{"seq": fmt.Sprint(at)})
}

// tamper records an audit.tamper event about this target's view of the
// journal.
func (t *target) tamper(ctx context.Context, reason string, details map[string]string) {
	details["delivered"] = fmt.Sprint(t.delivered.Load())
	ev := &audit.Event{Type: "audit.tamper", Severity: audit.SeverityHigh, Action: "audit.forward", Target: t.cfg.Address,
		Outcome: audit.OutcomeFailure, Reason: reason, Details: details}
	if _, err := t.f.j.Append(ctx, ev); err != nil && ctx.Err() == nil {
		t.log.Error("syslog: recording a damaged or replaced journal", "err", err)
	}
}

// skipPruned moves a cursor that points before the oldest kept entry (only
// possible after drop_oldest) to the oldest kept entry.
func (t *target) skipPruned() {
	segs := t.f.j.Segments()
	if len(segs) == 0 {
		return
	}
	first := segs[0].First
	if d := t.delivered.Load(); d+1 < first {
		t.log.Error("syslog: entries were removed before delivery; continuing with the oldest kept",
			"delivered", d, "oldest_kept", first)
		t.delivered.Store(first - 1)
	}
}

func (t *target) setConnected(up bool) {
	t.mu.Lock()
	t.st.Connected = up
	if up {
		t.st.Reconnects++
	}
	t.mu.Unlock()
}

// fail records err; the first failure after a working period is audited, so
// the other targets (and the journal) say the target is down.
func (t *target) fail(ctx context.Context, err error) {
	if err == nil {
		return
	}
	t.mu.Lock()
	t.st.LastError, t.st.LastErrorAt = err.Error(), time.Now().UTC()
	wasDown := t.down
	t.down = true
	t.mu.Unlock()
	t.log.Warn("syslog: target unavailable; entries wait in the journal", "err", err, "delivered", t.delivered.Load())
	if !wasDown {
		t.audit(ctx, "audit.target_down", audit.SeverityHigh, audit.OutcomeFailure, err.Error())
	}
}

// up notes a delivery; the first after a failure is audited.
func (t *target) up(ctx context.Context) {
	t.mu.Lock()
	wasDown := t.down
	t.down = false
	t.mu.Unlock()
	if wasDown {
		t.audit(ctx, "audit.target_up", "", audit.OutcomeSuccess, "")
	}
}

func (t *target) audit(ctx context.Context, typ, sev, outcome, reason string) {
	ev := &audit.Event{Type: typ, Severity: sev, Action: "audit.forward", Target: t.cfg.Address,
		Outcome: outcome, Reason: reason, Details: map[string]string{"delivered": fmt.Sprint(t.delivered.Load())}}
	t.f.stopMu.RLock()
	defer t.f.stopMu.RUnlock()
	if t.f.stopping {
		return
	}
	if _, err := t.f.j.Append(ctx, ev); err != nil && ctx.Err() == nil {
		t.log.Error("syslog: recording target state", "event", typ, "err", err)
	}
}

type flight struct {
	seq  uint64    // last seq of the batch
	end  uint64    // socket bytes written once the batch was out (RELP: its last command)
	seen time.Time // when the receiver was first seen to have it
}

const (
	maxBatchBytes   = 256 << 10
	maxBatchEntries = 2048
	confirmEvery    = 20 * time.Millisecond
	storeEvery      = 200 * time.Millisecond
)

// deliver sends from the cursor on c until c fails or ctx ends.
func (t *target) deliver(ctx context.Context, c *conn) error {
	o := t.f.opts
	r, err := t.f.j.Reader(t.delivered.Load() + 1)
	if err != nil {
		return err
	}
	// A write blocked on a receiver that does not read ends with ctx: the
	// socket is closed (a deadline alone could be replaced by the next
	// write's before that write starts).
	stopUnblock := context.AfterFunc(ctx, c.abort)
	defer stopUnblock()
	entries, perr, stopPump := r.Pump(ctx, maxBatchEntries)
	defer stopPump()
	// Over RELP a flight ends at its last command, which the receiver's
	// answer proves processed: no settling. Elsewhere it ends at a byte
	// count of the socket.
	settle := o.Settle
	if c.relp != nil {
		t.fmtr.tx = 1 // the open
		settle = 0
	}

	var (
		readErr   error // the journal cannot be read past here
		buf       []byte
		ends      []int
		pending   []flight
		lastStore = time.Now()
		stored    = t.delivered.Load()
		tick      = time.NewTicker(confirmEvery)
	)
	defer tick.Stop()
	confirm := func() error {
		now := time.Now()
		if len(pending) > 0 {
			acked, taking, err := c.received()
			if err != nil {
				return err
			}
			for i := range pending {
				if !pending[i].seen.IsZero() {
					continue
				}
				if pending[i].end > acked {
					break
				}
				pending[i].seen = now
			}
			// Confirm what was acknowledged at least Settle ago, while the
			// receiver is taking data now.
			n := 0
			for taking && n < len(pending) && !pending[n].seen.IsZero() && now.Sub(pending[n].seen) >= settle {
				t.delivered.Store(pending[n].seq)
				n++
			}
			if n > 0 {
				pending = append(pending[:0], pending[n:]...)
				t.up(ctx)
			}
		}
		if d := t.delivered.Load(); d != stored && now.Sub(lastStore) >= storeEvery {
			if err := t.cur.store(d); err != nil {
				// A cursor that cannot be saved (a full disk) costs only
				// duplicates after a restart: delivery goes on, and the
				// save is tried again at the next interval.
				t.log.Error("syslog: saving cursor; delivery goes on", "err", err)
				t.mu.Lock()
				t.st.LastError, t.st.LastErrorAt = "saving the cursor: "+err.Error(), now.UTC()
				t.mu.Unlock()
				lastStore = now
				return nil
			}
			stored, lastStore = d, now
		}
		return nil
	}
	defer func() {
		if d := t.delivered.Load(); d != stored {
			if err := t.cur.store(d); err != nil {
				t.log.Error("syslog: saving cursor", "err", err)
			}
		}
	}()

	for {
		var e audit.Entry
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.dead:
			return c.deadErr()
		case err := <-perr:
			if !errors.Is(err, audit.ErrDamaged) {
				return err
			}
			// The entries read before the damaged one still go out and
			// are confirmed; then the error ends the connection, with
			// the cursor just before the damaged entry.
			readErr, perr = err, nil
			continue
		case <-tick.C:
			if err := confirm(); err != nil {
				return err
			}
			if readErr != nil && len(entries) == 0 && len(pending) == 0 {
				return readErr
			}
			continue
		case e = <-entries:
		}
		buf, ends = buf[:0], ends[:0]
		var last uint64
		for {
			rec := record{Chain: e.Chain, Seq: e.Seq, Prev: e.Prev, Hash: e.Hash, Canonical: e.Canonical, Event: &e.Event}
			buf, ends, err = t.fmtr.appendMessages(buf, ends, &rec)
			if err != nil {
				return err
			}
			last = e.Seq
			if len(buf) >= maxBatchBytes || len(ends) >= maxBatchEntries {
				break
			}
			var more bool
			select {
			case e, more = <-entries:
			default:
			}
			if !more {
				break
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if c.ep.stream() {
			if err := c.write(ctx, buf, o.WriteTimeout); err != nil {
				return err
			}
			end := c.written()
			if c.relp != nil {
				end = t.fmtr.tx
			}
			pending = append(pending, flight{seq: last, end: end})
		} else {
			start := 0
			for _, end := range ends {
				if err := c.write(ctx, buf[start:end], o.WriteTimeout); err != nil {
					return err
				}
				start = end
			}
			// Datagrams have no acknowledgement: written is all we know.
			t.delivered.Store(last)
			t.up(ctx)
		}
		t.mu.Lock()
		t.st.Sent = last
		t.mu.Unlock()
		if err := confirm(); err != nil {
			return err
		}
	}
}
