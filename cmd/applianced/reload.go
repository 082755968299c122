package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
)

// adminConfigReload is the admin verb behind `applianced config reload`,
// which is the unit's ExecReload: `systemctl reload` returns once the new
// config is in effect (or has been refused), never before.
const adminConfigReload = "/admin/v1/config/reload"

// reloadWait bounds how long `config reload` waits for the daemon's answer.
var reloadWait = 80 * time.Second

// reloadAnswer is what a reload applied: the file and the SHA-256 of the
// exact bytes read (the same as the config.reload audit event records).
type reloadAnswer struct {
	Config string `json:"config"`
	SHA256 string `json:"config_sha256"`
}

// reloadError is a reload that did not take effect, or took effect in part.
type reloadError struct {
	status      int
	code        string
	description string
}

func (e *reloadError) Error() string { return e.description }

// reloadFrom reads path and swaps it in if it is valid; otherwise the daemon
// keeps running on the old config, and every error is logged. SIGHUP and the
// admin verb both come here, one at a time. who asked is recorded (the zero
// Actor for a signal).
func (d *daemon) reloadFrom(ctx context.Context, path string, who audit.Actor) (reloadAnswer, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	d.notify.Reloading()
	defer d.notify.Ready()
	// Read once: the hash recorded below is of the bytes applied.
	data, err := os.ReadFile(path)
	var cfg *config.File
	if err == nil {
		cfg, err = config.Parse(path, data)
	}
	if err != nil {
		var problems []string
		var ce *config.Error
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				d.log.Error("reload refused: config error; still running on the previous config", "problem", p.String())
				problems = append(problems, p.String())
			}
		} else {
			d.log.Error("reload refused; still running on the previous config", "err", err)
			problems = append(problems, err.Error())
		}
		_ = d.record(ctx, &audit.Event{Type: "config.reload", Actor: who, Action: "reload", Outcome: audit.OutcomeDenied,
			Reason: "config has errors", Details: map[string]string{"config": path}})
		d.notify.Status("reload refused: %s has errors; running on the previous config", path)
		return reloadAnswer{}, &reloadError{http.StatusUnprocessableEntity, "config_invalid",
			strings.Join(problems, "\n") + "\nstill running on the previous config; fix the file and reload again"}
	}
	// Recorded before it takes effect: a config the journal cannot record
	// is not applied (the action fails, as every action does then).
	sum := sha256.Sum256(data)
	ans := reloadAnswer{Config: path, SHA256: hex.EncodeToString(sum[:])}
	details := map[string]string{"config": path, "config_sha256": ans.SHA256}
	if err := d.record(ctx, &audit.Event{Type: "config.reload", Actor: who, Action: "reload", Outcome: audit.OutcomeSuccess, Details: details}); err != nil {
		d.log.Error("reload refused: it cannot be recorded in the audit journal; still running on the previous config", "err", err)
		d.notify.Status("reload refused: the audit journal cannot be written; running on the previous config")
		return reloadAnswer{}, &reloadError{http.StatusServiceUnavailable, "audit_unavailable",
			"the audit journal cannot be written; still running on the previous config"}
	}
	if err := d.reload(ctx, cfg); err != nil {
		d.log.Error("reload partly refused", "err", err)
		_ = d.record(ctx, &audit.Event{Type: "config.reload", Actor: who, Action: "reload", Outcome: audit.OutcomeFailure,
			Reason: "recorded above but partly refused: " + err.Error(), Details: details})
		return ans, &reloadError{http.StatusConflict, "reload_partial",
			"reloaded in part: " + err.Error() + "; the rest is in effect"}
	}
	d.log.Info("config reloaded", "config", path)
	d.notify.Status("serving (config reloaded %s)", time.Now().Format(time.RFC3339))
	return ans, nil
}

// mountReload puts the reload verb on the admin socket. It reloads the file
// the daemon was started with, whatever config the CLI was given.
func (d *daemon) mountReload() {
	d.admin.HandleFunc("POST "+adminConfigReload, func(w http.ResponseWriter, r *http.Request) {
		var actor audit.Actor
		if c, ok := admin.CallerFrom(r.Context()); ok {
			actor = c.Actor()
		}
		ans, err := d.reloadFrom(context.WithoutCancel(r.Context()), d.config().Path, actor)
		var re *reloadError
		if errors.As(err, &re) {
			admin.WriteError(w, re.status, re.code, re.description)
			return
		}
		admin.WriteJSON(w, http.StatusOK, ans)
	})
}

func cmdConfigReload(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("config reload", "",
		"Make the running daemon read its config file again, and wait until it has:\n"+
			"exit 0 when the new config is in effect; otherwise print why and exit 1\n"+
			"(the daemon keeps running on the previous config). `systemctl reload` runs this.\n"+
			"--config only says where to find the admin socket; the daemon reloads the\n"+
			"file it was started with.",
		"applianced config reload")
	if _, code, ok := e.parsePositional(fs, args, 0); !ok {
		return code
	}
	// Within systemd's own limit for a reload job (90 s): an answer that
	// does not come is reported as such, not as a daemon that is gone.
	ctx, cancel := context.WithTimeout(ctx, reloadWait)
	defer cancel()
	var ans reloadAnswer
	if err := e.call(ctx, *cfgPath, http.MethodPost, adminConfigReload, nil, &ans); err != nil {
		var ae *admin.Error
		switch {
		case errors.As(err, &ae):
		case ctx.Err() != nil:
			err = fmt.Errorf("the daemon did not answer within %s; it may still be reloading (journalctl -u applianced says)", reloadWait)
		default:
			err = fmt.Errorf("%w (a changed [server] admin_socket takes effect only at the next restart: systemctl restart applianced)", err)
		}
		return e.fail("config reload", err)
	}
	fmt.Fprintf(e.stdout, "%s: reloaded (sha256 %s)\n", ans.Config, ans.SHA256)
	return exitOK
}
