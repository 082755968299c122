package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
)

func cmdAuditVerify(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("audit verify", "[FILE...]", "Verify the audit trail: every entry's chain hash, contiguous sequence numbers,\n"+
		"and the durable marker (a cut tail). Without FILE it reads the journal in the\n"+
		"state dir; with --pubkey it also checks every checkpoint's signature and the hash\n"+
		"it seals. Names the first bad seq; exit 1 on any problem.\n\n"+
		"With FILE it checks what a syslog or Wazuh receiver stored, and says first which\n"+
		"seqs are sealed and when the last seal was made. The appliance writes a signed\n"+
		"checkpoint every checkpoint_interval even when idle, so a capture whose newest\n"+
		"seal is older than --until less that interval and a minute was cut (or the\n"+
		"appliance stopped writing): a problem unless --open-tail. A capture that starts\n"+
		"after seq 1 is a problem unless --from says where the receiver's record starts.\n"+
		"Checkpoints of older versions carry no time: they still verify, and the output\n"+
		"says that their age cannot be checked. A capture may hold several chains (a\n"+
		"journal moved aside is followed by a new one from seq 1, with a new chain id,\n"+
		"audit_chain): each is checked on its own, and --until applies to the newest.\n"+
		"Entries of a journal made before chain ids carry none: the legacy chain.\n"+
		"A new chain's seq 1 names the chain it continues and that chain's last seq\n"+
		"and hash (audit.chain_start): the capture must hold that chain up to there,\n"+
		"so keep every chain. Each chain's line says what it continues.",
		"applianced audit verify", "applianced audit verify --json",
		"applianced audit verify --pubkey ed25519:... /var/log/applianced-audit.log",
		"applianced audit verify --pubkey ed25519:... --until 2026-11-26T08:00:00Z --from 3f0c9a7d1b2e4f60a8c5d9e2b7f41c6e:5000 archive.log")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	dir := fs.String("dir", "", "journal `DIR` (default: <state_dir>/audit)")
	cf := addCaptureFlags(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return verifyCaptures(ctx, e, *cfgPath, fs.Args(), *asJSON, cf)
	}
	if *dir == "" {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			fmt.Fprintf(e.stderr, "applianced audit verify: %v\n(or name the journal with --dir)\n", err)
			return exitFailure
		}
		*dir = filepath.Join(cfg.Server.StateDir, "audit")
	}
	opts := &audit.VerifyOptions{}
	if *cf.pubkey != "" {
		pub, err := audit.ParsePublicKey(*cf.pubkey)
		if err != nil {
			fmt.Fprintf(e.stderr, "applianced audit verify: %v\n", err)
			return exitUsage
		}
		opts.PublicKey = pub
	}
	rep, err := audit.VerifyDirWith(*dir, opts)
	if err != nil {
		return e.fail("audit verify", err)
	}
	if *asJSON {
		e.printJSON(rep)
	} else {
		for _, p := range rep.Problems {
			fmt.Fprintf(e.stdout, "FAIL %s\n", p)
		}
		link := ""
		if rep.Link != nil {
			link = "; " + rep.Link.String()
		}
		switch {
		case !rep.OK():
		case opts.PublicKey == nil:
			fmt.Fprintf(e.stdout, "ok: %d entries, seq %d..%d, chain intact%s; checkpoints not checked (give --pubkey KEY): "+
				"without them this catches accidents, not someone who can rewrite the journal\n", rep.Entries, rep.First, rep.Last, link)
		default:
			fmt.Fprintf(e.stdout, "ok: %d entries, seq %d..%d of %s, chain intact, %d checkpoints, sealed up to seq %d by key %s%s",
				rep.Entries, rep.First, rep.Last, chainLabel(rep.Chain), rep.Checkpoints, rep.SealedUpTo, keyID(opts.PublicKey), lastSeal(rep.Checkpoints > 0, rep.LastSealAt, rep.LastSealFinal))
			if rep.Last > rep.SealedUpTo {
				fmt.Fprintf(e.stdout, "; seqs %d..%d not sealed yet", rep.SealedUpTo+1, rep.Last)
			}
			fmt.Fprintln(e.stdout, link)
		}
	}
	if !rep.OK() {
		return exitFailure
	}
	return exitOK
}

// verifyCaptures checks syslog captures; the syslog side of the audit
// package replaces this when it is wired.
var verifyCaptures = func(ctx context.Context, e *env, cfgPath string, files []string, asJSON bool, cf captureFlags) int {
	fmt.Fprintln(e.stderr, "applianced audit verify: verifying syslog captures is not available in this build")
	return exitFailure
}

func cmdAuditTail(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("audit tail", "", "Print the newest audit events as JSON lines, from the running daemon.",
		"applianced audit tail", "applianced audit tail -n 50", "applianced audit tail -f")
	follow := fs.Bool("f", false, "keep printing new events as they are recorded")
	n := fs.Int("n", 20, "how many of the newest events to print first")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	if *n < 0 {
		fmt.Fprintf(e.stderr, "applianced audit tail: -n %d: want 0 or more\n", *n)
		return exitUsage
	}
	c, err := e.adminClient(*cfgPath)
	if err != nil {
		return e.fail("audit tail", err)
	}
	path := "/admin/v1/audit/tail?n=" + strconv.Itoa(*n)
	if *follow {
		path += "&follow=1"
	}
	err = c.Stream(ctx, path, func(line []byte) error {
		_, err := fmt.Fprintf(e.stdout, "%s\n", line)
		return err
	})
	if err != nil && ctx.Err() == nil {
		return e.fail("audit tail", err)
	}
	if *follow && ctx.Err() == nil {
		// The daemon ended the stream: it is stopping.
		fmt.Fprintln(e.stderr, "applianced audit tail: the daemon stopped")
	}
	return exitOK
}

// handleAuditTail streams the newest n entries, then (follow=1) new ones,
// one canonical event per line.
func (d *daemon) handleAuditTail(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseUint(r.URL.Query().Get("n"), 10, 32)
	if err != nil {
		n = 20
	}
	last := d.journal.LastSeq()
	from := uint64(1)
	if last > n {
		from = last - n + 1
	}
	if segs := d.journal.Segments(); len(segs) > 0 && from < segs[0].First {
		from = segs[0].First
	}
	rd, err := d.journal.Reader(from)
	if err != nil {
		admin.WriteError(w, http.StatusInternalServerError, "server_error", err.Error())
		return
	}
	defer rd.Close()
	follow := r.URL.Query().Get("follow") == "1"
	ctx, cancel := admin.StreamContext(r) // ends at once when the daemon stops
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriter(w)
	flusher, _ := w.(http.Flusher)
	for follow || rd.Pos() <= last {
		e, err := rd.Next(ctx)
		if err != nil {
			break
		}
		bw.Write(e.Canonical)
		bw.WriteByte('\n')
		if rd.Pos() > d.journal.LastSeq() {
			bw.Flush()
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
	bw.Flush()
}
