package toolproxy

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/applianced/applianced/audit"
	bolt "go.etcd.io/bbolt"
)

// ApprovalHeader carries the id of an approved call when the agent retries.
const ApprovalHeader = "Approval-Id"

var approvalIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

func newApprovalID() string {
	var b [16]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		panic("toolproxy: crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

func (st *state) approvalTTL() time.Duration {
	if d := st.risk.ApprovalTTL.D(); d > 0 {
		return d
	}
	return DefaultApprovalTTL
}

// errAuditLock is a TOTP lock the journal would not take (so not locked).
var errAuditLock = errors.New("toolproxy: recording a TOTP lock")

// callHash binds an approval to one exact call, made for one directory
// account: the same call for another account under the same name differs.
// withAccount false gives the hash of the call as approvals stored before
// account ids were kept have it.
func (c *call) callHash(bodySHA string, withAccount bool) string {
	h := sha256.New()
	fields := []string{c.pr.Agent, c.pr.User, c.t.cfg.Name, c.r.Method, c.tp.escaped(), c.query.Encode(), bodySHA}
	if withAccount && c.pr.UserID != "" {
		// Only when there is one, so that a call without an account hashes
		// as it did before. Fields are length-prefixed: seven and eight
		// fields never collide.
		fields = append(fields, c.pr.UserID)
	}
	for _, s := range fields {
		h.Write([]byte(strconv.Itoa(len(s))))
		h.Write([]byte{':'})
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkApproval lets the call through with a valid Approval-Id, or creates
// an approval and answers 403 approval_required. false means answered.
func (p *Proxy) checkApproval(c *call, why string) bool {
	sum := sha256.Sum256(c.body)
	bodySHA := hex.EncodeToString(sum[:])
	hash := c.callHash(bodySHA, true)
	if id := c.r.Header.Get(ApprovalHeader); id != "" {
		c.ev.Details["approval_id"] = id
		if !approvalIDRE.MatchString(id) {
			c.deny(http.StatusForbidden, "tool.deny", CodeApprovalInvalid, "malformed Approval-Id")
			return false
		}
		if _, err := p.store.consume(id, hash, c.callHash(bodySHA, false), c.now); err != nil {
			desc := "the approval cannot be used for this call"
			switch {
			case errors.Is(err, ErrApprovalNotFound):
				desc = "no such approval"
			case errors.Is(err, ErrApprovalPending):
				desc = "the approval has not been granted yet"
			case errors.Is(err, ErrApprovalDenied):
				desc = "the approval was denied"
			case errors.Is(err, ErrApprovalUsed):
				desc = "the approval was already used"
			case errors.Is(err, ErrApprovalExpired):
				desc = "the approval expired"
			case errors.Is(err, ErrApprovalMismatch):
				desc = "the approval is for a different call (agent, user, method, path, query or body differ)"
			}
			c.deny(http.StatusForbidden, "tool.deny", CodeApprovalInvalid, desc)
			return false
		}
		return true
	}
	a := &Approval{
		ID: newApprovalID(), Status: StatusPending, Agent: c.pr.Agent, User: c.pr.User, UserID: c.pr.UserID, Tool: c.t.cfg.Name,
		Method: c.r.Method, Path: c.ev.Details["path"], BodySHA256: bodySHA, Reason: why,
		Created: c.now, Expires: c.now.Add(c.st.approvalTTL()), CallHash: hash,
	}
	a, err := p.store.createApproval(a, c.now)
	if tm := (*TooManyPendingError)(nil); errors.As(err, &tm) {
		who := "for itself"
		if c.pr.User != "" {
			who = "for user " + c.pr.User
		}
		secs := max(int64(math.Ceil(tm.FirstExpiry.Sub(c.now).Seconds())), 1)
		c.w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		c.deny(http.StatusTooManyRequests, "tool.deny", CodeTooManyApprovals, fmt.Sprintf(
			"agent %s has %d approvals pending %s; an approver must decide them, or the first expires in %d s", c.pr.Agent, maxPendingPerAgent, who, secs))
		return false
	}
	if err != nil {
		p.log.Error("toolproxy: storing an approval", "err", err)
		c.deny(http.StatusInternalServerError, "tool.deny", CodeServerError, "approvals are unavailable")
		return false
	}
	c.ev.Type = "approval.request"
	c.ev.Outcome = audit.OutcomeDenied
	c.ev.Reason = why
	c.ev.Details["decision"] = CodeApprovalRequired
	c.ev.Details["approval_id"] = a.ID
	c.ev.Details["expires_at"] = a.Expires.UTC().Format(time.RFC3339)
	if !c.record() {
		return false
	}
	writeJSON(c.w, http.StatusForbidden, errorBody{
		Error: CodeApprovalRequired, Description: why + "; retry with header Approval-Id once approved",
		ApprovalID: a.ID, ExpiresAt: a.Expires.UTC().Format(time.RFC3339),
	})
	return false
}

// ApprovalStatus is what GET /v1/approvals/{id} answers.
type ApprovalStatus struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	ExpiresAt string `json:"expires_at"`
}

// TOTPDecision is the body of POST /v1/approvals/{id}.
type TOTPDecision struct {
	User     string `json:"user"`
	Code     string `json:"code"`
	Decision string `json:"decision"` // approve | deny
}

func (p *Proxy) serveApproval(w http.ResponseWriter, r *http.Request, id string) {
	if !approvalIDRE.MatchString(id) {
		writeError(w, http.StatusNotFound, "not_found", "no such approval")
		return
	}
	switch r.Method {
	case http.MethodGet:
		a, err := p.store.approval(id)
		if err != nil {
			writeError(w, http.StatusNotFound, "not_found", "no such approval")
			return
		}
		writeJSON(w, http.StatusOK, ApprovalStatus{ID: a.ID, Status: a.effective(p.now()), ExpiresAt: a.Expires.UTC().Format(time.RFC3339)})
	case http.MethodPost:
		p.decideTOTP(w, r, id)
	default:
		w.Header().Set("Allow", "GET, POST")
		writeError(w, http.StatusMethodNotAllowed, CodeInvalidRequest, "GET or POST")
	}
}

// decideTOTP lets the user an agent acts for approve or deny with a TOTP
// code from their enrolled authenticator.
func (p *Proxy) decideTOTP(w http.ResponseWriter, r *http.Request, id string) {
	var d TOTPDecision
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil || d.User == "" || d.Code == "" || (d.Decision != "approve" && d.Decision != "deny") {
		writeError(w, http.StatusBadRequest, CodeInvalidRequest, `want {"user": ..., "code": ..., "decision": "approve"|"deny"}`)
		return
	}
	now := p.now()
	_, src := sourceOf(r)
	// The user named in the body is only a claim until their code checks
	// out: it is recorded as such, and becomes the actor only then.
	ev := &audit.Event{
		Type: "approval.refused", Action: "approval." + d.Decision, Target: id,
		Outcome: audit.OutcomeDenied, RequestID: newRequestID(), Source: src,
		Details: map[string]string{"approver": "totp", "claimed_user": d.User},
	}
	fail := func(status int, code, desc string) {
		ev.Reason = desc
		if _, err := p.opts.Audit.Append(context.WithoutCancel(r.Context()), ev); err != nil {
			writeError(w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written")
			return
		}
		writeError(w, status, code, desc)
	}
	a, err := p.store.approval(id)
	if err != nil {
		fail(http.StatusNotFound, "not_found", "no such approval")
		return
	}
	// Not the actor: nobody has authenticated yet.
	ev.Details["agent"] = a.Agent
	if st := a.effective(now); st != StatusPending {
		fail(http.StatusConflict, CodeApprovalInvalid, "the approval is "+st)
		return
	}
	// Only the user the agent acts for may decide: with their own token,
	// and their own code. A wrong code from them counts against the
	// approval (after maxTOTPFailures it is denied); a request without
	// their token does not, so that a stranger cannot deny an approval by
	// failing on purpose.
	if a.User == "" {
		fail(http.StatusForbidden, CodeAccessDenied, "the agent acts for no user; only an administrator can decide (applianced approval approve|deny ID)")
		return
	}
	// The code is checked against the seed of the account the agent acts
	// for, never against one enrolled under the same name by another.
	ev.Details["account_id"] = a.UserID
	if a.UserID == "" {
		fail(http.StatusForbidden, CodeAccessDenied, "the approval names no directory account; only an administrator can decide (applianced approval approve|deny ID)")
		return
	}
	// The user proves who they are with their own token (the one the
	// chatbot holds from /v1/login) before any code is tried: a stranger
	// who knows the approval's id cannot count failures against it.
	raw, ok := bearerToken(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		fail(http.StatusUnauthorized, CodeInvalidToken, "deciding an approval needs the user's own token (from /v1/login) in Authorization: Bearer ...")
		return
	}
	up, err := p.opts.Verifier.VerifyUser(r.Context(), raw)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		desc := "the token is not a user's own valid token (an agent's or an exchanged one is not accepted here)"
		if te := (*TokenError)(nil); errors.As(err, &te) && te.Why != "" {
			desc = "the user token " + te.Why
		}
		fail(http.StatusUnauthorized, CodeInvalidToken, desc)
		return
	}
	// From here on the token says who asks: the account, not a name,
	// decides (a renamed user keeps their approvals).
	ev.Details["token_user"] = up.User
	setJTI(ev, up)
	if up.UserID != a.UserID {
		fail(http.StatusForbidden, CodeAccessDenied, "wrong user or code")
		return
	}
	// The directory is asked now, as at every token exchange: an account
	// locked or disabled since its token was issued decides nothing.
	if p.opts.Users != nil {
		id, why, err := p.opts.Users.UserAccount(r.Context(), up.User)
		switch {
		case err != nil:
			fail(http.StatusServiceUnavailable, "directory_unavailable", "the directory cannot be asked about "+up.User+"; try again")
			return
		case why != "":
			ev.Details["directory"] = why
			fail(http.StatusForbidden, CodeAccessDenied, "the directory refuses "+up.User+" ("+why+")")
			return
		case id != a.UserID:
			ev.Details["directory"] = "name_now_another_account"
			fail(http.StatusForbidden, CodeAccessDenied, "wrong user or code")
			return
		}
	}
	// One code at a time: the failures counted for the approval and for
	// the account, and the denial they cause, are read and written whole.
	p.totpMu.Lock()
	defer p.totpMu.Unlock()
	recordLock := func() error {
		lev := &audit.Event{Type: "auth.totp", Severity: audit.SeverityHigh, Actor: audit.Actor{User: up.User}, Action: "totp.lock", Target: up.User,
			Outcome: audit.OutcomeFailure, RequestID: ev.RequestID, Source: src,
			Reason:  fmt.Sprintf("%d wrong codes in a row: TOTP is locked until an administrator unlocks or enrolls the account again", maxAccountTOTPFailures),
			Details: map[string]string{"account_id": a.UserID, "approval_id": id, "agent": a.Agent}}
		setJTI(lev, up)
		if _, err := p.opts.Audit.Append(context.WithoutCancel(r.Context()), lev); err != nil {
			return fmt.Errorf("%w: %w", errAuditLock, err)
		}
		return nil
	}
	res, err := p.verifyTOTP(r.Context(), a.User, a.UserID, d.Code, now, recordLock)
	if errors.Is(err, errAuditLock) {
		writeError(w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written")
		return
	}
	if err != nil {
		p.log.Error("toolproxy: checking a TOTP code", "err", err)
		fail(http.StatusInternalServerError, CodeServerError, "TOTP is unavailable")
		return
	}
	reason := "wrong user or code"
	switch res {
	case totpLegacy:
		ev.Details["totp"] = "enrolled_by_name_only"
		// Not the user's failure, and not counted: the enrolment is to be
		// redone, not guessed to belong to this account.
		fail(http.StatusForbidden, CodeAccessDenied, "the TOTP enrolment of "+a.User+
			" predates directory account ids and is no longer accepted; an administrator must enroll again (applianced user totp enroll "+up.User+")")
		return
	case totpLocked, totpLockedNow:
		ev.Details["totp"] = "locked"
		if res == totpLockedNow {
			ev.Severity = audit.SeverityHigh
			ev.Details["totp_locked_now"] = "true"
		}
		if res == totpLocked {
			// Not counted against the approval: no code was tried.
			fail(http.StatusForbidden, CodeAccessDenied, totpLockedMessage(up.User))
			return
		}
		reason = totpLockedMessage(up.User)
	case totpOtherAccount:
		ev.Details["totp"] = "enrolled_for_another_account"
	case totpNotEnrolled:
		ev.Details["totp"] = "not_enrolled"
	}
	if res != totpOK {
		// The failure that reaches maxTOTPFailures denies the approval: that
		// denial is recorded before it takes effect.
		if cur, err := p.store.approval(id); err == nil && cur.effective(now) == StatusPending && cur.Failures+1 >= maxTOTPFailures {
			if _, err := p.opts.Audit.Append(context.WithoutCancel(r.Context()), &audit.Event{
				Type: "approval.deny", Severity: audit.SeverityWarn, Action: "approval.deny", Target: id,
				Outcome: audit.OutcomeSuccess, Reason: "too many failed codes", RequestID: ev.RequestID, Source: src,
				Details: map[string]string{"approver": "totp", "agent": a.Agent, "user": a.User, "account_id": a.UserID, "tool": a.Tool},
			}); err != nil {
				writeError(w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written")
				return
			}
		}
		denied := false
		_, _ = p.store.updateApprovalKeep(id, func(a *Approval) error {
			a.Failures++
			if a.Failures >= maxTOTPFailures && a.Status == StatusPending {
				a.Status, a.DecidedBy, a.DecidedAt = StatusDenied, "too many failed codes", now
				denied = true
			}
			return nil
		})
		if denied {
			ev.Details["auto_denied"] = "true"
		}
		fail(http.StatusForbidden, CodeAccessDenied, reason)
		return
	}
	// Recorded before it takes effect: no decision without a record.
	ev.Type = "approval." + d.Decision
	ev.Outcome = audit.OutcomeSuccess
	ev.Actor = audit.Actor{User: up.User, Agent: a.Agent}
	if _, err := p.opts.Audit.Append(context.WithoutCancel(r.Context()), ev); err != nil {
		writeError(w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written")
		return
	}
	a, err = p.store.decide(id, d.Decision == "approve", "user:"+up.User, now)
	if err != nil {
		ev.Type, ev.Outcome = "approval.refused", audit.OutcomeFailure
		fail(http.StatusConflict, CodeApprovalInvalid, "the approval could not be decided: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, ApprovalStatus{ID: a.ID, Status: a.Status, ExpiresAt: a.Expires.UTC().Format(time.RFC3339)})
}

// approvalSweepEvery is how often the proxy looks for approvals that
// expired unused. The proxy's clock decides what has expired; this ticker
// only wakes the sweep.
const approvalSweepEvery = 30 * time.Second

// sweepControl stops one sweeper goroutine.
type sweepControl struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startSweeper starts the goroutine that records approval.expire for every
// approval that expires unused, whether or not anyone polls it. The first
// sweep runs one interval after the start; it also records approvals that
// expired while the daemon was down.
func (p *Proxy) startSweeper(every time.Duration) {
	p.sweeper.Lock()
	defer p.sweeper.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	ctl := &sweepControl{cancel: cancel, done: make(chan struct{})}
	p.sweepCtl = ctl
	go func() {
		defer close(ctl.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			if _, err := p.sweepApprovals(ctx); err != nil && ctx.Err() == nil {
				p.log.Error("toolproxy: recording expired approvals; retrying at the next sweep", "err", err)
			}
		}
	}()
}

// stopSweeper stops the sweeper goroutine and waits for it. Idempotent.
func (p *Proxy) stopSweeper() {
	p.sweeper.Lock()
	ctl := p.sweepCtl
	p.sweepCtl = nil
	p.sweeper.Unlock()
	if ctl != nil {
		ctl.cancel()
		<-ctl.done
	}
}

// sweepApprovals records approval.expire once for each approval that has
// expired, as of the proxy's clock, while pending or approved but unused,
// and marks it expired. A used or denied approval never expires. The
// approval is marked first, so that a concurrent use or decision sees it
// expired and nothing records it twice; if the journal refuses the event the
// mark is undone and the next sweep tries again. It returns how many
// approvals it recorded.
func (p *Proxy) sweepApprovals(ctx context.Context) (int, error) {
	p.sweepMu.Lock()
	defer p.sweepMu.Unlock()
	now := p.now()
	due, err := p.store.dueToExpire(now)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range due {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		a, prev, err := p.store.markExpired(id, now)
		if errors.Is(err, errNotDue) || errors.Is(err, ErrApprovalNotFound) {
			continue // used, decided or pruned since the listing
		}
		if err != nil {
			return n, err
		}
		reason := "expired unanswered"
		if prev == StatusApproved {
			reason = "expired approved but unused"
		}
		ev := &audit.Event{
			Type: "approval.expire", Actor: audit.Actor{Agent: a.Agent, User: a.User},
			Action: "approval.expire", Target: a.ID, Outcome: audit.OutcomeSuccess, Reason: reason,
			RequestID: newRequestID(),
			Details: map[string]string{
				"approval_id": a.ID, "agent": a.Agent, "user": a.User, "tool": a.Tool,
				"method": a.Method, "path": a.Path, "status": prev,
				"expires_at": a.Expires.UTC().Format(time.RFC3339),
			},
		}
		if _, err := p.opts.Audit.Append(context.WithoutCancel(ctx), ev); err != nil {
			if _, uerr := p.store.updateApproval(id, func(a *Approval) error {
				if a.Status != StatusExpired {
					return errNotDue
				}
				a.Status = prev
				return nil
			}); uerr != nil && !errors.Is(uerr, errNotDue) {
				p.log.Error("toolproxy: undoing an approval's expiry mark", "approval_id", id, "err", uerr)
			}
			return n, fmt.Errorf("toolproxy: recording approval.expire: %w", err)
		}
		n++
	}
	return n, nil
}

// errNotDue says an approval is not (or no longer) pending or approved past
// its expiry.
var errNotDue = errors.New("toolproxy: approval is not due to expire")

// dueToExpire lists the approvals still stored as pending or approved whose
// expiry has passed as of now.
func (s *store) dueToExpire(now time.Time) ([]string, error) {
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApprovals).ForEach(func(k, v []byte) error {
			var a Approval
			if json.Unmarshal(v, &a) != nil {
				return nil
			}
			if dueToExpire(&a, now) {
				ids = append(ids, string(k))
			}
			return nil
		})
	})
	return ids, err
}

func dueToExpire(a *Approval, now time.Time) bool {
	return (a.Status == StatusPending || a.Status == StatusApproved) && !now.Before(a.Expires)
}

// markExpired stores the approval as expired if it is due, and returns it
// with the status it had.
func (s *store) markExpired(id string, now time.Time) (*Approval, string, error) {
	var prev string
	a, err := s.updateApproval(id, func(a *Approval) error {
		if !dueToExpire(a, now) {
			return errNotDue
		}
		prev = a.Status
		a.Status = StatusExpired
		return nil
	})
	return a, prev, err
}
