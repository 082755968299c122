package main

// `audit deliver`: what the syslog/Wazuh targets never got of a journal set
// aside after damage, delivered by the daemon (it has the targets, the live
// journal to record what it does, and the forwarder) through a read-only
// view of the old directory.

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/syslog"
)

const adminAuditDeliver = "/admin/v1/audit/deliver"

const (
	// defaultDeliverTimeout bounds one `audit deliver` when --timeout is
	// not given; maxDeliverTimeout bounds what it may ask for.
	defaultDeliverTimeout = 2 * time.Minute
	maxDeliverTimeout     = time.Hour
)

type deliverRequest struct {
	Dir     string `json:"dir"`              // absolute
	From    uint64 `json:"from,omitempty"`   // 0: each target's own start
	Target  string `json:"target,omitempty"` // "": every configured target
	Timeout string `json:"timeout,omitempty"`

	// The daemon's own delivery at its start (deliverSetAside), not an
	// admin's: only the targets in cursors, each from just after its
	// cursor in the old chain, and only when the directory holds the
	// entry that anchor (the live chain's first entry) names.
	atStart bool
	cursors map[string]uint64
	anchor  *audit.ChainStart
	pub     ed25519.PublicKey // the audit key's, for checkpoints; nil without one
}

// deliverReply says what the old journal holds and what each target got.
type deliverReply struct {
	Dir     string          `json:"dir"`
	Chain   string          `json:"chain"`
	First   uint64          `json:"first"` // oldest kept seq
	Last    uint64          `json:"last"`  // last good seq
	Stop    *audit.Problem  `json:"stop"`  // where reading stops, and why; nil: every entry is good
	Targets []deliverResult `json:"targets"`
}

type deliverResult struct {
	Address string `json:"address"`
	From    uint64 `json:"from"` // first seq sent; > Last when there was nothing to send
	// FromSource says why From: "--from", "audit.tamper at seq N" (the
	// position the target's cursor held when the old chain was left), or
	// "oldest kept entry".
	FromSource string `json:"from_source"`
	Delivered  uint64 `json:"delivered"` // last seq the receiver is known to have
	OK         bool   `json:"ok"`        // Delivered reached the old journal's last good seq
	Error      string `json:"error,omitempty"`
}

func cmdAuditDeliver(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("audit deliver", "DIR", "Deliver to the syslog/Wazuh targets what they never got of a journal set aside\n"+
		"(after `mv /var/lib/applianced/audit /var/lib/applianced/audit.damaged`). The\n"+
		"daemon reads DIR without writing to it, up to the first entry that is torn,\n"+
		"damaged or does not chain, and sends each configured target (or --target) the\n"+
		"entries from where that target stopped in the old chain (the audit.tamper\n"+
		"event the forwarder recorded when it met the new chain names it), or from\n"+
		"--from, or from the oldest entry kept. Receivers verify each chain on its own\n"+
		"(audit_chain), and an entry received twice is an identical copy, not a\n"+
		"problem. The daemon does this on its own at the start that follows the move,\n"+
		"for a journal set aside in the state dir; this verb is for a journal kept\n"+
		"elsewhere, a target that was down then, or a resend. Exit 1 when a target did\n"+
		"not get everything readable in time.",
		"applianced audit deliver /var/lib/applianced/audit.damaged",
		"applianced audit deliver --target tcp://siem.example:514 --from 5000 /var/lib/applianced/audit.damaged")
	from := fs.Uint64("from", 0, "the first `SEQ` of DIR to send to every target (default: where each target stopped)")
	target := fs.String("target", "", "deliver to this configured target `ADDRESS` only")
	timeout := fs.Duration("timeout", defaultDeliverTimeout, "give up on a target that has not got everything after this long")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if code, ok := e.parseArgs(fs, args, 1); !ok {
		return code
	}
	if *timeout <= 0 || *timeout > maxDeliverTimeout {
		fmt.Fprintf(e.stderr, "applianced audit deliver: --timeout %v: want more than 0 and at most %v\n", *timeout, maxDeliverTimeout)
		return exitUsage
	}
	dir, err := filepath.Abs(fs.Arg(0))
	if err != nil {
		return e.fail("audit deliver", err)
	}
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		fmt.Fprintf(e.stderr, "applianced audit deliver: %s is not a directory\n", dir)
		return exitUsage
	}
	// The daemon answers when the delivery ends: within the timeout.
	cctx, cancel := context.WithTimeout(ctx, *timeout+30*time.Second)
	defer cancel()
	var out deliverReply
	req := deliverRequest{Dir: dir, From: *from, Target: *target, Timeout: timeout.String()}
	if err := e.call(cctx, *cfgPath, http.MethodPost, adminAuditDeliver, req, &out); err != nil {
		return e.fail("audit deliver", err)
	}
	if *asJSON {
		e.printJSON(out)
	} else {
		printDeliver(e, &out)
	}
	for _, t := range out.Targets {
		if !t.OK {
			return exitFailure
		}
	}
	return exitOK
}

func printDeliver(e *env, out *deliverReply) {
	fmt.Fprintf(e.stdout, "%s: %s, seq %d..%d readable\n", out.Dir, chainLabel(out.Chain), out.First, out.Last)
	if out.Stop != nil {
		fmt.Fprintf(e.stdout, "the journal stops being readable at seq %d", out.Stop.Seq)
		if out.Stop.File != "" {
			fmt.Fprintf(e.stdout, " (%s)", out.Stop.File)
		}
		fmt.Fprintf(e.stdout, ": %s\n", out.Stop.Reason)
	}
	for _, t := range out.Targets {
		switch {
		case t.From > out.Last:
			fmt.Fprintf(e.stdout, "%s: nothing to send: it had every entry up to seq %d (%s)\n", t.Address, t.From-1, t.FromSource)
		case t.OK:
			fmt.Fprintf(e.stdout, "%s: delivered seq %d..%d (from %s)\n", t.Address, t.From, t.Delivered, t.FromSource)
		case t.Delivered >= t.From:
			fmt.Fprintf(e.stdout, "%s: FAILED: delivered seq %d..%d of %d..%d (from %s): %s\n", t.Address, t.From, t.Delivered, t.From, out.Last, t.FromSource, t.Error)
		default:
			fmt.Fprintf(e.stdout, "%s: FAILED: nothing of seq %d..%d delivered (from %s): %s\n", t.Address, t.From, out.Last, t.FromSource, t.Error)
		}
	}
}

// mountAuditDeliver mounts `audit deliver` for the targets the running
// forwarders have. One delivery runs at a time.
func (d *daemon) mountAuditDeliver(targets []syslog.Target) {
	// A delivery cut short by a crash leaves its temporary cursors; none
	// runs yet at start.
	if left, _ := filepath.Glob(filepath.Join(d.config().Server.StateDir, "syslog", "deliver-*")); len(left) > 0 {
		for _, p := range left {
			if err := os.RemoveAll(p); err != nil {
				d.log.Warn("audit deliver: removing a leftover temporary directory", "path", p, "err", err)
			}
		}
	}
	d.admin.HandleFunc("POST "+adminAuditDeliver, func(w http.ResponseWriter, r *http.Request) {
		var req deliverRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		if !d.deliverMu.TryLock() {
			admin.WriteError(w, http.StatusConflict, "busy", "another audit deliver is running (an admin's, or the daemon's own for a journal set aside, at its start): try again when it ends")
			return
		}
		defer d.deliverMu.Unlock()
		// A stop of the daemon ends the delivery at once: its result is
		// recorded, and the temporary forwarder stopped, before the
		// journal closes.
		ctx, cancel := admin.StreamContext(r)
		defer cancel()
		out, status, err := d.auditDeliver(ctx, req, targets)
		if err != nil {
			code := "invalid_request"
			if status == http.StatusServiceUnavailable {
				code = "audit_unavailable"
			}
			admin.WriteError(w, status, code, err.Error())
			return
		}
		admin.WriteJSON(w, http.StatusOK, out)
	})
}

// auditDeliver checks req, records audit.deliver, runs a temporary
// forwarder over the read-only view of req.Dir until every selected target
// has its last good entry or the timeout ends, and records the result. A
// refusal (with its HTTP status) changes nothing.
func (d *daemon) auditDeliver(ctx context.Context, req deliverRequest, configured []syslog.Target) (*deliverReply, int, error) {
	timeout := defaultDeliverTimeout
	if req.Timeout != "" {
		t, err := time.ParseDuration(req.Timeout)
		if err != nil || t <= 0 || t > maxDeliverTimeout {
			return nil, http.StatusBadRequest, fmt.Errorf("timeout %q: want a duration more than 0 and at most %v", req.Timeout, maxDeliverTimeout)
		}
		timeout = t
	}
	if !filepath.IsAbs(req.Dir) {
		return nil, http.StatusBadRequest, fmt.Errorf("dir %q: want an absolute path", req.Dir)
	}
	targets, err := selectTargets(configured, req.Target)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	if req.atStart {
		targets = slices.DeleteFunc(slices.Clone(targets), func(t syslog.Target) bool { _, left := req.cursors[t.Address]; return !left })
	}
	v, err := audit.OpenReadOnly(req.Dir, &audit.ReadOnlyOptions{Appender: d.journal})
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	if req.atStart {
		if err := anchored(ctx, v, req.anchor, req.pub); err != nil {
			return nil, http.StatusBadRequest, err
		}
		if ctx.Err() != nil {
			// The daemon is stopping (and may not wait for this): record
			// nothing more.
			return nil, http.StatusServiceUnavailable, ctx.Err()
		}
	}
	out := &deliverReply{Dir: req.Dir, Chain: v.ChainID(), First: v.FirstSeq(), Last: v.LastSeq(), Stop: v.Stop(), Targets: []deliverResult{}}
	if out.Last < out.First {
		return nil, http.StatusBadRequest, fmt.Errorf("%s holds no readable entry: seq %d: %s", req.Dir, out.Stop.Seq, out.Stop.Reason)
	}
	if req.From != 0 && (req.From < out.First || req.From > out.Last) {
		return nil, http.StatusBadRequest, fmt.Errorf("from %d: %s holds seq %d..%d readable", req.From, req.Dir, out.First, out.Last)
	}
	var left map[string]tamperMark
	if req.From == 0 && !req.atStart {
		if left, err = d.leftChain(ctx, out.Chain); err != nil {
			return nil, http.StatusInternalServerError, err
		}
	}
	var plan []string
	for _, t := range targets {
		res := deliverResult{Address: t.Address, From: req.From, FromSource: "--from"}
		switch {
		case req.atStart:
			c := req.cursors[t.Address]
			res.From, res.FromSource = max(c+1, out.First), fmt.Sprintf("its cursor at start, seq %d", c)
		case req.From == 0:
			res.From, res.FromSource = out.First, "oldest kept entry"
			if m, ok := left[t.Address]; ok {
				res.From, res.FromSource = max(m.cursor+1, out.First), fmt.Sprintf("audit.tamper at seq %d", m.seq)
			}
		}
		res.Delivered = res.From - 1
		out.Targets = append(out.Targets, res)
		plan = append(plan, fmt.Sprintf("%s from %d (%s)", t.Address, res.From, res.FromSource))
	}

	ev := deliverEvent(ctx, out, audit.OutcomeSuccess, "")
	ev.Details["stage"], ev.Details["targets"] = "start", strings.Join(plan, "; ")
	if req.atStart {
		ev.Details["trigger"] = "daemon start"
	}
	if _, err := d.journal.Append(ctx, ev); err != nil {
		d.log.Error("audit append failed", "type", ev.Type, "err", err)
		return nil, http.StatusServiceUnavailable, errors.New("the audit journal cannot be written; nothing was delivered")
	}

	runErr := d.runDeliver(ctx, v, targets, out, timeout)
	var results []string
	outcome, reason := audit.OutcomeSuccess, ""
	for i := range out.Targets {
		t := &out.Targets[i]
		if runErr != nil && t.Error == "" && !t.OK {
			t.Error = runErr.Error()
		}
		switch {
		case t.OK:
			results = append(results, fmt.Sprintf("%s: delivered up to %d", t.Address, t.Delivered))
		default:
			outcome, reason = audit.OutcomeFailure, "a target did not get every readable entry"
			results = append(results, fmt.Sprintf("%s: delivered up to %d of %d: %s", t.Address, t.Delivered, out.Last, t.Error))
		}
	}
	ev = deliverEvent(ctx, out, outcome, reason)
	ev.Details["stage"], ev.Details["results"] = "result", strings.Join(results, "; ")
	if req.atStart {
		ev.Details["trigger"] = "daemon start"
	}
	// The delivery has happened, whatever the journal says now: the start
	// event, which had to be written, says it was asked; a result that
	// cannot be written is logged, and the caller gets it anyway.
	if _, err := d.journal.Append(context.WithoutCancel(ctx), ev); err != nil {
		d.log.Error("audit append failed", "type", ev.Type, "err", err)
	}
	return out, http.StatusOK, nil
}

// runDeliver runs a forwarder over v for the targets of out that lack
// entries, each from its cursor preset in a temporary directory, until
// they have v's last good entry or timeout ends; it fills in each
// target's Delivered, OK and Error.
func (d *daemon) runDeliver(ctx context.Context, v *audit.ReadOnlyJournal, targets []syslog.Target, out *deliverReply, timeout time.Duration) error {
	var run []syslog.Target
	for i, t := range targets {
		if out.Targets[i].From > out.Last {
			out.Targets[i].OK = true // it has everything readable
			continue
		}
		run = append(run, t)
	}
	if len(run) == 0 {
		return nil
	}
	base := filepath.Join(d.config().Server.StateDir, "syslog")
	if err := os.MkdirAll(base, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(base, "deliver-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for i, t := range targets {
		if out.Targets[i].From <= out.Last {
			if err := syslog.PresetCursor(tmp, t.Address, out.Chain, out.Targets[i].From-1); err != nil {
				return err
			}
		}
	}
	fw, err := syslog.New(v, run, &syslog.Options{Dir: tmp, Logger: d.log.With("deliver", out.Dir), BackoffMax: 5 * time.Second})
	if err != nil {
		return err
	}
	// The running forwarders record the targets' state (target_down,
	// target_up); this one's would name positions in the old chain and
	// contradict theirs. What it achieved is in the result event.
	fw.Stopping()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { _ = fw.Run(runCtx); close(done) }()
	fctx, stop := context.WithTimeout(ctx, timeout)
	flushErr := fw.Flush(fctx)
	stop()
	cancel()
	<-done
	st := fw.Status()
	for i := range out.Targets {
		for _, s := range st {
			if s.Address != out.Targets[i].Address {
				continue
			}
			t := &out.Targets[i]
			t.Delivered, t.OK = s.Delivered, s.Delivered >= out.Last
			switch {
			case t.OK:
			case ctx.Err() != nil:
				t.Error = "interrupted: the daemon is stopping; run audit deliver again once it runs"
			default:
				t.Error = s.LastError
				if t.Error == "" && flushErr != nil {
					t.Error = flushErr.Error()
				}
			}
		}
	}
	return nil
}

// selectTargets returns the configured targets, or the one named.
func selectTargets(configured []syslog.Target, name string) ([]syslog.Target, error) {
	if len(configured) == 0 {
		return nil, errors.New("no [[audit.syslog]] target is configured: there is nowhere to deliver")
	}
	if name == "" {
		return configured, nil
	}
	var names []string
	for _, t := range configured {
		if t.Address == name {
			return []syslog.Target{t}, nil
		}
		names = append(names, t.Address)
	}
	return nil, fmt.Errorf("target %q is not configured (configured: %s)", name, strings.Join(names, ", "))
}

// tamperMark is where a target's cursor stood in a chain left behind.
type tamperMark struct {
	seq    uint64 // of the audit.tamper event that says so
	cursor uint64 // the last seq of that chain the target had
}

// leftChain reads the live journal for the audit.tamper events a forwarder
// records when it finds a target's cursor in another chain (chain), and
// returns, by target address, the newest one's cursor.
func (d *daemon) leftChain(ctx context.Context, chain string) (map[string]tamperMark, error) {
	out := map[string]tamperMark{}
	last := d.journal.LastSeq()
	from := uint64(1)
	if segs := d.journal.Segments(); len(segs) > 0 {
		from = segs[0].First
	}
	if from > last {
		return out, nil
	}
	rd, err := d.journal.Reader(from)
	if err != nil {
		return nil, err
	}
	defer func() {
		if rd != nil {
			rd.Close()
		}
	}()
	for pruned := 0; rd.Pos() <= last; {
		e, err := rd.Next(ctx)
		if errors.Is(err, audit.ErrPruned) && pruned < 3 {
			// Retention removed the oldest segment while it was read:
			// go on from the oldest kept (what it held is gone anyway).
			pruned++
			rd.Close()
			from := rd.Pos()
			if segs := d.journal.Segments(); len(segs) > 0 {
				from = max(from, segs[0].First)
			}
			next, err := d.journal.Reader(from)
			if err != nil {
				rd = nil
				return nil, err
			}
			rd = next
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading the journal for the targets' positions in chain %s: %w", chain, err)
		}
		// Only the event of a cursor found in another chain names that
		// chain, and the journal it was found against (this one); the
		// event of a cursor ahead of this chain has no cursor_chain, and
		// its cursor is a position in this chain, not in the one left.
		ev := &e.Event
		cc, named := ev.Details["cursor_chain"]
		if ev.Type != "audit.tamper" || !named || cc != chain || ev.Details["journal_chain"] != d.journal.ChainID() || ev.Target == "" {
			continue
		}
		c, err := strconv.ParseUint(ev.Details["cursor"], 10, 64)
		if err != nil {
			continue
		}
		out[ev.Target] = tamperMark{seq: e.Seq, cursor: c}
	}
	return out, nil
}

// deliverEvent is the audit.deliver event of out, by the caller in ctx.
func deliverEvent(ctx context.Context, out *deliverReply, outcome, reason string) *audit.Event {
	ev := &audit.Event{Type: "audit.deliver", Action: "audit.deliver", Target: out.Dir, Outcome: outcome, Reason: reason, Source: "unix",
		Details: map[string]string{"chain": out.Chain, "first": strconv.FormatUint(out.First, 10), "last": strconv.FormatUint(out.Last, 10)}}
	if reason != "" {
		ev.Severity = audit.SeverityHigh
	}
	if out.Stop != nil {
		ev.Details["stop_seq"], ev.Details["stop_reason"] = strconv.FormatUint(out.Stop.Seq, 10), out.Stop.Reason
	}
	if c, ok := admin.CallerFrom(ctx); ok {
		ev.Actor = c.Actor()
	}
	return ev
}

// setAside is a journal directory set aside in the state dir.
type setAside struct{ dir, chain string }

// setAsideJournals lists the journals set aside in stateDir: the
// directories audit.* holding segments, with their chain.
func setAsideJournals(stateDir string) []setAside {
	var out []setAside
	dirs, _ := filepath.Glob(filepath.Join(stateDir, "audit.*"))
	for _, p := range dirs {
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			continue
		}
		if c, n, err := audit.DirChain(p); err == nil && n > 0 {
			out = append(out, setAside{dir: p, chain: c})
		}
	}
	return out
}

// autoDeliverTimeout bounds the delivery the daemon starts on its own: a
// receiver still down by then gets the rest from an admin's `audit
// deliver`, which the log and doctor name.
const autoDeliverTimeout = 10 * time.Minute

// autoDeliverStopWait bounds how long a stop waits for that delivery to
// record its result (the read of a large directory does not stop half-way).
const autoDeliverStopWait = 15 * time.Second

// anchored checks that v is the journal the live chain's first entry (cs)
// says it continues, not one made up with its chain id (which every
// message carries): v holds, readable, the entry cs names as the last one
// recorded, with the same hash; or, when v's readable part ends before
// that entry (the damage that had it set aside), a checkpoint of v signed
// with pub (this appliance's audit key) whose sealed entry v holds with
// the hash it names. An entry at cs's seq with another hash refuses v
// whatever else it holds. pub nil: only cs can anchor v.
func anchored(ctx context.Context, v *audit.ReadOnlyJournal, cs *audit.ChainStart, pub ed25519.PublicKey) error {
	named := cs != nil && cs.Known && cs.Chain == v.ChainID()
	if named && cs.Seq >= v.FirstSeq() && cs.Seq <= v.LastSeq() {
		r, err := v.Reader(cs.Seq)
		if err != nil {
			return err
		}
		defer r.Close()
		e, err := r.Next(ctx)
		if err != nil {
			return err
		}
		if e.Seq != cs.Seq || e.Hash != cs.Hash {
			return fmt.Errorf("seq %d of %s has another hash than the live chain's first entry names: it is not the journal that chain continues", cs.Seq, v.Dir())
		}
		return nil
	}
	if pub != nil {
		if _, ok, err := audit.LastSealed(ctx, v, pub); err != nil {
			return err
		} else if ok {
			return nil
		}
	}
	if named {
		return fmt.Errorf("%s holds seq %d..%d readable, not seq %d, which the live chain's first entry names, and no checkpoint of it signed with this appliance's audit key", v.Dir(), v.FirstSeq(), v.LastSeq(), cs.Seq)
	}
	return fmt.Errorf("the live chain's first entry does not name chain %q, and %s holds no checkpoint of it signed with this appliance's audit key", v.ChainID(), v.Dir())
}

// deliverSetAside starts, in the background, what `audit deliver DIR` does
// for the targets the forwarders found in another chain at start
// (fw.LeftChains: the journal was set aside since they last sent), each
// from just after its own cursor, when that chain's journal is an audit.*
// directory of the state dir and holds the entry the live chain's first
// entry names (its chain start): the targets get what they missed without
// an admin. A target still left in the old chain at a later start (it was
// down) is tried again then. A chain whose journal is elsewhere, or a
// delivery that fails, is logged with the command to run; the delivery is
// recorded as an admin's is (audit.deliver, with trigger "daemon start").
// A stop of the daemon ends it, its result recorded first.
func (d *daemon) deliverSetAside(fw *syslog.Forwarder, targets []syslog.Target, pub ed25519.PublicKey) {
	byChain := map[string]map[string]uint64{}
	for _, l := range fw.LeftChains() {
		if byChain[l.Chain] == nil {
			byChain[l.Chain] = map[string]uint64{}
		}
		byChain[l.Chain][l.Target] = l.Cursor
	}
	if len(byChain) == 0 {
		return
	}
	start := d.liveChainStart()
	type job struct {
		dirs    []string
		cursors map[string]uint64
	}
	var jobs []job
	aside := setAsideJournals(d.config().Server.StateDir)
	for chain, cursors := range byChain {
		var dirs []string
		for _, a := range aside {
			if a.chain == chain {
				dirs = append(dirs, a.dir)
			}
		}
		if len(dirs) == 0 {
			d.log.Warn("audit: syslog targets stopped in a journal chain that is no longer the live one, and no journal set aside in the state dir holds it: "+
				"if it was moved elsewhere, run `applianced audit deliver DIR` on it so the targets get what they missed", "chain", chain)
			continue
		}
		jobs = append(jobs, job{dirs: dirs, cursors: cursors})
	}
	if len(jobs) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, j := range jobs {
			for _, dir := range j.dirs {
				if ctx.Err() != nil {
					return
				}
				d.deliverMu.Lock()
				out, _, err := d.auditDeliver(ctx, deliverRequest{Dir: dir, Timeout: autoDeliverTimeout.String(), atStart: true, cursors: j.cursors, anchor: start, pub: pub}, targets)
				d.deliverMu.Unlock()
				if err != nil {
					d.log.Warn("audit: a journal set aside was not delivered on its own; see why, and deliver it with `applianced audit deliver "+dir+"`",
						"dir", dir, "err", err)
					continue // another directory may hold the chain
				}
				for _, t := range out.Targets {
					if !t.OK {
						d.log.Warn("audit: a target did not get all of a journal set aside: run `applianced audit deliver "+dir+"` when it is back",
							"dir", dir, "target", t.Address, "delivered", t.Delivered, "last", out.Last, "err", t.Error)
						continue
					}
					d.log.Info("audit: delivered what a target missed of a journal set aside", "dir", dir, "target", t.Address, "from", t.From, "to", t.Delivered)
				}
				break
			}
		}
	}()
	d.closers = append(d.closers, func() error {
		cancel()
		select {
		case <-done:
		case <-time.After(autoDeliverStopWait):
			d.log.Warn("audit: stopping while still reading a journal set aside; its delivery's result may not be recorded")
		}
		return nil
	})
}

// liveChainStart is what the live journal's first entry says of the chain
// it continues; nil when its first entry is not a chain start (a first
// journal, or seq 1 no longer kept).
func (d *daemon) liveChainStart() *audit.ChainStart {
	if segs := d.journal.Segments(); len(segs) == 0 || segs[0].First != 1 {
		return nil
	}
	r, err := d.journal.Reader(1)
	if err != nil {
		return nil
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	e, err := r.Next(ctx)
	if err != nil || e.Event.Type != audit.TypeChainStart {
		return nil
	}
	cs, err := audit.ParseChainStart(&e.Event)
	if err != nil {
		return nil
	}
	return cs
}
