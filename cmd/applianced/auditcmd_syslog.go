package main

// The audit trail's delivery side: forwarding to syslog and Wazuh, signed
// checkpoints, the HMAC of secret values, and verification of what the
// receivers stored.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/syslog"
)

// Admin paths of this area.
const (
	adminAuditPubkey  = "/admin/v1/audit/pubkey"
	adminAuditHash    = "/admin/v1/audit/hash"
	adminAuditTargets = "/admin/v1/audit/targets"
)

// auditKeys is where the checkpoint signing key and the HMAC key live: the
// vault, opened before this step. Nil leaves checkpoints and `audit hash`
// off (and says so).
func auditKeys(d *daemon) audit.KeySource {
	if d.vault == nil {
		return nil
	}
	return d.vault
}

// auditHasher returns the Hasher components put in audit events instead of
// secret values and token ids (broker.Options.Hasher): HMAC-SHA256 under
// the vault's audit-hmac key, the key `applianced audit hash` uses.
func (d *daemon) auditHasher(ctx context.Context) (*audit.Hasher, error) {
	ks := auditKeys(d)
	if ks == nil {
		return nil, errors.New("audit: the vault is not open; no HMAC key")
	}
	return audit.NewHasher(ctx, ks)
}

type pubkeyReply struct {
	PublicKey string `json:"public_key"`
	KeyID     string `json:"key_id"`
}

type hashRequest struct {
	Value string `json:"value"`
}

type hashReply struct {
	HMAC string `json:"hmac"`
}

// finalCheckpointTimeout bounds the final checkpoint at stop: catching up
// with the journal and one append, all local.
const finalCheckpointTimeout = 5 * time.Second

// openAuditForwarding starts the forwarders of [[audit.syslog]] and the
// checkpointer, and mounts their admin routes and metrics. At stop it
// appends the final checkpoint to the journal (whether or not any target
// can receive it), gives the connected targets syslog.StopFlushTimeout to
// take it, and stops the forwarders, before the journal closes. An
// unreachable target does not delay the stop; its entries are sent from
// its durable cursor after the next start.
func (d *daemon) openAuditForwarding(ctx, bg context.Context) error {
	cfg := d.config()
	a := cfg.Audit
	keep := int64(a.MaxBytes) / 4 * 3
	fw, err := syslog.New(d.journal, a.Syslog, &syslog.Options{
		Dir: filepath.Join(cfg.Server.StateDir, "syslog"), Logger: d.log, Retain: a.Retain.D(), KeepBytes: keep,
	})
	if err != nil {
		return err
	}
	var (
		ck     *audit.Checkpointer
		hasher *audit.Hasher
	)
	if ks := auditKeys(d); ks != nil {
		key, err := audit.LoadCheckpointKey(ctx, ks)
		if err != nil {
			return err
		}
		if hasher, err = d.auditHasher(ctx); err != nil {
			return err
		}
		ck = audit.NewCheckpointer(d.journal, key, &audit.CheckpointOptions{
			Every: a.CheckpointEvery, Interval: a.CheckpointInterval.D(), Logger: d.log,
		})
	} else {
		d.log.Warn("audit: no key source; checkpoints are not signed and `audit hash` is unavailable")
	}
	// The forwarders and the checkpointer outlive the other background
	// loops: the final checkpoint is written and delivered at close.
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { _ = fw.Run(runCtx); done <- struct{}{} }()
	if ck != nil {
		go func() {
			if err := ck.Run(runCtx); err != nil {
				d.log.Error("audit: checkpointer stopped", "err", err)
			}
			done <- struct{}{}
		}()
	}
	d.closers = append(d.closers, func() error {
		var errs []error
		fw.Stopping() // the final checkpoint stays the journal's last entry
		if ck != nil {
			// The final checkpoint is a local append: it does not wait
			// for any target.
			cctx, stop := context.WithTimeout(context.Background(), finalCheckpointTimeout)
			errs = append(errs, ck.Close(cctx))
			stop()
		}
		if len(a.Syslog) > 0 {
			// Connected targets get a short while to take the final
			// checkpoint; unreachable ones are not waited for. Either
			// way the cursors only move on confirmed delivery, so what
			// is left is sent at the next start.
			fctx, stop := context.WithTimeout(context.Background(), syslog.StopFlushTimeout)
			if err := fw.FlushConnected(fctx); err != nil {
				d.log.Warn("audit: stopping with entries not yet delivered; they are sent at the next start", "err", err)
			}
			stop()
		}
		// Ends every dial, write and backoff of the forwarders at once.
		cancel()
		<-done
		if ck != nil {
			<-done
		}
		return errors.Join(errs...)
	})
	// Closers run in reverse: the vault, opened before this, closes before
	// the final checkpoint, so that its vault.close (the state it closes
	// in) is sealed. Its own closer then finds it closed.
	if v := d.vault; v != nil {
		d.closers = append(d.closers, v.Close)
	}

	// A reload applies the journal's size limit and disk-full policy and
	// the retention at once (raising max_bytes is how an admin lets a
	// journal blocked at its limit take actions again); the rest of
	// [audit] is said to need a restart, so the reload is recorded as
	// partly refused rather than silently ignored.
	cur := a
	d.reloaders = append(d.reloaders, func(ctx context.Context, next *config.File) error {
		n := next.Audit
		var errs []error
		if !slices.Equal(n.Syslog, cur.Syslog) {
			errs = append(errs, errors.New("audit: [[audit.syslog]] changes take effect at the next restart (the running forwarders keep their targets)"))
		}
		var later []string
		if n.SegmentBytes != cur.SegmentBytes {
			later = append(later, "segment_bytes")
		}
		if n.CheckpointEvery != cur.CheckpointEvery {
			later = append(later, "checkpoint_every")
		}
		if n.CheckpointInterval != cur.CheckpointInterval {
			later = append(later, "checkpoint_interval")
		}
		if len(later) > 0 {
			errs = append(errs, fmt.Errorf("audit: %s: changes take effect at the next restart", strings.Join(later, ", ")))
		}
		if n.MaxBytes != cur.MaxBytes || n.DiskFull != cur.DiskFull {
			if err := d.journal.SetLimits(int64(n.MaxBytes), n.DiskFull); err != nil {
				errs = append(errs, fmt.Errorf("%w (max_bytes and disk_full unchanged)", err))
			} else {
				cur.MaxBytes, cur.DiskFull = n.MaxBytes, n.DiskFull
			}
		}
		cur.Retain = n.Retain
		fw.SetRetention(cur.Retain.D(), int64(cur.MaxBytes)/4*3)
		return errors.Join(errs...)
	})

	for i, t := range a.Syslog {
		labels := prometheus.Labels{"target": t.Address}
		st := func() syslog.TargetStatus { return fw.Status()[i] }
		d.metrics.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "applianced_audit_syslog_lag_entries",
				Help: "Audit entries not yet delivered to the syslog target.", ConstLabels: labels},
				func() float64 { return float64(st().Lag) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "applianced_audit_syslog_delivered_seq",
				Help: "Last audit seq known to have reached the syslog target.", ConstLabels: labels},
				func() float64 { return float64(st().Delivered) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "applianced_audit_syslog_connected",
				Help: "1 when the syslog target is connected.", ConstLabels: labels},
				func() float64 {
					if st().Connected {
						return 1
					}
					return 0
				}),
		)
	}

	d.mountAuditDeliver(a.Syslog)
	var pub ed25519.PublicKey
	if ck != nil {
		pub = ck.PublicKey()
	}
	d.deliverSetAside(fw, a.Syslog, pub)
	d.admin.HandleFunc("GET "+adminAuditTargets, func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, map[string]any{"targets": fw.Status()})
	})
	d.admin.HandleFunc("GET "+adminAuditPubkey, func(w http.ResponseWriter, r *http.Request) {
		if ck == nil {
			admin.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the audit key is not loaded (no vault)")
			return
		}
		pub := ck.PublicKey()
		admin.WriteJSON(w, http.StatusOK, pubkeyReply{PublicKey: audit.FormatPublicKey(pub), KeyID: audit.KeyID(pub)})
	})
	d.admin.HandleFunc("POST "+adminAuditHash, func(w http.ResponseWriter, r *http.Request) {
		if hasher == nil {
			admin.WriteError(w, http.StatusServiceUnavailable, "unavailable", "the audit HMAC key is not loaded (no vault)")
			return
		}
		var req hashRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		ev := &audit.Event{Type: "admin.call", Action: "audit.hash", Outcome: audit.OutcomeSuccess, Source: "unix"}
		if c, ok := admin.CallerFrom(r.Context()); ok {
			ev.Actor = c.Actor()
		}
		if err := d.record(r.Context(), ev); err != nil {
			admin.WriteError(w, http.StatusServiceUnavailable, "audit_unavailable", "the audit journal cannot be written")
			return
		}
		admin.WriteJSON(w, http.StatusOK, hashReply{HMAC: hasher.Sum(req.Value)})
	})
	return nil
}

func cmdAuditPubkey(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("audit pubkey", "", "Print the public key that signs the audit checkpoints, for auditors:\n"+
		"`applianced audit verify --pubkey KEY FILE...` checks captures with it.",
		"applianced audit pubkey", "applianced audit pubkey --json")
	asJSON := fs.Bool("json", false, "print JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	var out pubkeyReply
	if err := e.call(ctx, *cfgPath, http.MethodGet, adminAuditPubkey, nil, &out); err != nil {
		return e.fail("audit pubkey", err)
	}
	if *asJSON {
		e.printJSON(out)
	} else {
		fmt.Fprintln(e.stdout, out.PublicKey)
	}
	return exitOK
}

func cmdAuditHash(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("audit hash", "VALUE|-", "Print the HMAC under which a secret value appears in audit events, so an\n"+
		"auditor can search the trail for a known value. \"-\" reads the value from\n"+
		"standard input (keeps it out of the process list and shell history).",
		"applianced audit hash -", "printf %s \"$VALUE\" | applianced audit hash -")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 1) {
		return exitUsage
	}
	value := fs.Arg(0)
	if value == "-" {
		b, err := io.ReadAll(bufio.NewReader(io.LimitReader(e.stdin, 1<<20)))
		if err != nil {
			return e.fail("audit hash", err)
		}
		value = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	}
	var out hashReply
	if err := e.call(ctx, *cfgPath, http.MethodPost, adminAuditHash, hashRequest{Value: value}, &out); err != nil {
		return e.fail("audit hash", err)
	}
	fmt.Fprintln(e.stdout, out.HMAC)
	return exitOK
}

// captureFlags are the flags of `audit verify` for syslog captures.
type captureFlags struct {
	pubkey       *string
	openTail     *bool
	noSignatures *bool
	from         *string
	until        *string
}

func addCaptureFlags(fs interface {
	String(name, value, usage string) *string
	Bool(name string, value bool, usage string) *bool
}) captureFlags {
	return captureFlags{
		from: fs.String("from", "1", "with FILE: the `SEQ` the capture should start at (where the receiver's record\n"+
			"begins), or CHAIN:SEQ; it applies to the oldest chain in the capture (or to\n"+
			"CHAIN), and every later chain must start at seq 1; a capture that starts\n"+
			"later is missing its head. A chain with an id that starts after seq 1 needs\n"+
			"CHAIN:SEQ: only its seq 1 says which chain came before it"),
		until: fs.String("until", "now", "with FILE: the `TIME` the capture should reach (RFC 3339, or \"now\"): when\n"+
			"it was taken or rotated (\"now\" suits a live file only); the newest seal must\n"+
			"be no older than that less its interval and a minute, or the tail after it was cut"),
		pubkey: fs.String("pubkey", "", "with FILE: the checkpoint public `KEY` (applianced audit pubkey); default: ask the running daemon"),
		openTail: fs.Bool("open-tail", false, "with FILE: entries after the last checkpoint, and a newest seal older\n"+
			"than --until allows, are notes, not problems (a capture of a stream still running)"),
		noSignatures: fs.Bool("no-signatures", false, "with FILE: check the chain only, without the checkpoint key; the\n"+
			"result is then never \"ok\" (whoever rewrites a capture can recompute a chain)"),
	}
}

func init() { verifyCaptures = verifySyslogCaptures }

// verifySyslogCaptures checks rsyslog files (RFC 5424 or wazuh format) and
// Wazuh archives.log / archives.json.
func verifySyslogCaptures(ctx context.Context, e *env, cfgPath string, files []string, asJSON bool, cf captureFlags) int {
	opts := &audit.CaptureOptions{AllowOpenTail: *cf.openTail}
	seq := *cf.from
	if c, s, ok := strings.Cut(seq, ":"); ok {
		opts.FromChain, seq = c, s
	}
	from, err := strconv.ParseUint(seq, 10, 64)
	if err != nil || (opts.FromChain == "" && strings.Contains(*cf.from, ":")) {
		fmt.Fprintf(e.stderr, "applianced audit verify: --from %q: want SEQ or CHAIN:SEQ (2, or 0123456789abcdef0123456789abcdef:2)\n", *cf.from)
		return exitUsage
	}
	opts.From = from
	if *cf.until == "now" {
		opts.Until = time.Now()
	} else {
		t, err := time.Parse(time.RFC3339Nano, *cf.until)
		if err != nil {
			fmt.Fprintf(e.stderr, "applianced audit verify: --until %q: want RFC 3339 (2026-11-26T08:00:00Z) or \"now\"\n", *cf.until)
			return exitUsage
		}
		opts.Until = t
	}
	if *cf.pubkey != "" {
		pub, err := audit.ParsePublicKey(*cf.pubkey)
		if err != nil {
			fmt.Fprintf(e.stderr, "applianced audit verify: %v\n", err)
			return exitUsage
		}
		opts.PublicKey = pub
	} else {
		var out pubkeyReply
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := e.call(cctx, cfgPath, http.MethodGet, adminAuditPubkey, nil, &out)
		cancel()
		if err == nil {
			opts.PublicKey, err = audit.ParsePublicKey(out.PublicKey)
		}
		if err != nil && !*cf.noSignatures {
			// Without the key, anyone who rewrites a capture can recompute
			// its chain and sign checkpoints of their own: no "ok" then.
			fmt.Fprintf(e.stderr, "applianced audit verify: no checkpoint key (%v): give the appliance's key with --pubkey KEY "+
				"(from `applianced audit pubkey`, kept by the auditor), or --no-signatures to check the chain alone\n", err)
			return exitUsage
		}
	}
	rep, err := audit.VerifyCaptureFiles(files, opts)
	if err != nil {
		return e.fail("audit verify", err)
	}
	if asJSON {
		e.printJSON(rep)
	} else {
		for _, c := range rep.Chains {
			h := sealHeadline(c.FirstSeq, c.SealedUpTo, c.Checkpoints > 0, c.LastSealAt, c.LastSealFinal, opts.PublicKey)
			if len(rep.Chains) > 1 && c.ID == rep.FromChain {
				h += fmt.Sprintf("; --from %d applies to this chain", max(opts.From, 1))
			}
			h += "; " + c.Link.String()
			switch {
			case len(rep.Chains) > 1:
				h = chainLabel(c.ID) + ": " + h
			case c.ID != "":
				h += " (chain " + c.ID + ")"
			}
			fmt.Fprintln(e.stdout, h)
		}
		if *cf.until == "now" {
			// The default suits a live file only: say so, with the time.
			fmt.Fprintf(e.stdout, "seals checked up to now (%s); for a file taken or rotated earlier, give --until with when it was\n",
				opts.Until.UTC().Format(time.RFC3339))
		}
		for _, p := range rep.Problems {
			fmt.Fprintf(e.stdout, "FAIL %s\n", p)
		}
		for _, n := range rep.Notes {
			fmt.Fprintf(e.stdout, "note: %s\n", n)
		}
		span := fmt.Sprintf("(seq %d..%d)", rep.FirstSeq, rep.LastSeq)
		if len(rep.Chains) > 1 {
			span = fmt.Sprintf("in %d chains (the newest: seq %d..%d)", len(rep.Chains), rep.FirstSeq, rep.LastSeq)
		}
		fmt.Fprintf(e.stdout, "%d messages, %d entries %s, %d duplicates, %d checkpoints, sealed up to seq %d\n",
			rep.Messages, rep.Entries, span, rep.Duplicates, rep.Checkpoints, rep.SealedUpTo)
		switch {
		case rep.OK() && opts.PublicKey == nil:
			fmt.Fprintln(e.stdout, "chain intact, but NOT VERIFIED: no checkpoint key, so a rewritten capture would pass too")
		case rep.OK():
			of := ""
			if len(rep.Chains) > 1 {
				of = " of the newest chain"
			}
			fmt.Fprintf(e.stdout, "ok: no gap, no altered entry, chain intact, sealed up to seq %d%s by key %s\n", rep.SealedUpTo, of, keyID(opts.PublicKey))
		}
	}
	if !rep.OK() || opts.PublicKey == nil {
		return exitFailure
	}
	return exitOK
}

// sealHeadline says which seqs of a chain are sealed, by which key, and
// when the last seal was made.
func sealHeadline(first, sealed uint64, have bool, at time.Time, final bool, pub ed25519.PublicKey) string {
	switch {
	case pub == nil:
		return "nothing sealed: no checkpoint key" + lastSeal(have, at, final) + " (unverified)"
	case sealed == 0:
		return "nothing sealed" + lastSeal(have, at, final)
	}
	return fmt.Sprintf("sealed seq %d..%d by key %s%s", first, sealed, keyID(pub), lastSeal(have, at, final))
}

// chainLabel names a chain of a capture.
func chainLabel(id string) string {
	if id == "" {
		return "legacy chain"
	}
	return "chain " + id
}

// lastSeal describes the newest checkpoint's time, if there is one.
func lastSeal(have bool, at time.Time, final bool) string {
	switch {
	case !have:
		return ""
	case at.IsZero():
		return "; the last seal carries no time (made by an older version)"
	case final:
		return "; last seal at " + at.UTC().Format(time.RFC3339) + " (final: the journal closed)"
	}
	return "; last seal at " + at.UTC().Format(time.RFC3339)
}

// keyID is a short name of an Ed25519 public key: the first 8 bytes of its
// SHA-256, in hex.
func keyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}
