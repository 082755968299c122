package toolproxy

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
)

// Admin paths served by RegisterAdmin.
const (
	AdminApprovalList    = "/admin/v1/approval/list"
	AdminApprovalApprove = "/admin/v1/approval/approve"
	AdminApprovalDeny    = "/admin/v1/approval/deny"
	AdminTOTPEnroll      = "/admin/v1/user/totp-enroll"
	AdminTOTPStatus      = "/admin/v1/user/totp-status"
	AdminTOTPUnlock      = "/admin/v1/user/totp-unlock"
)

// ApprovalList is the answer of AdminApprovalList.
type ApprovalList struct {
	Approvals []Approval `json:"approvals"`
}

// ApprovalRef names an approval in an admin request.
type ApprovalRef struct {
	ID string `json:"id"`
}

// EnrollRequest and EnrollAnswer are the admin TOTP enrolment verb.
type (
	EnrollRequest struct {
		User string `json:"user"`
	}
	EnrollAnswer struct {
		User      string `json:"user"`
		AccountID string `json:"account_id"` // the directory account the seed is bound to
		URI       string `json:"uri"`
	}
)

// UserRef names a user in the admin TOTP status and unlock verbs; it is
// resolved through the directory to the account it names now. Their
// answers are TOTPStatus and TOTPUnlock.
type UserRef struct {
	User string `json:"user"`
}

// ListApprovals returns recent approvals, newest first, with their status
// as of now.
func (p *Proxy) ListApprovals(context.Context) ([]Approval, error) {
	return p.store.listApprovals(p.now())
}

// Decide approves or denies a pending approval on behalf of an
// administrator; the decision is audited before it takes effect.
func (p *Proxy) Decide(ctx context.Context, id string, approve bool, by audit.Actor) (*Approval, error) {
	if !approvalIDRE.MatchString(id) {
		return nil, ErrApprovalNotFound
	}
	now := p.now()
	a, err := p.store.approval(id)
	if err != nil {
		return nil, err
	}
	verb := "deny"
	if approve {
		verb = "approve"
	}
	ev := &audit.Event{
		Type: "approval." + verb, Actor: by, Action: "approval." + verb, Target: id, Outcome: audit.OutcomeSuccess,
		Source: "unix", Details: map[string]string{"approver": "admin", "agent": a.Agent, "user": a.User, "tool": a.Tool, "method": a.Method, "path": a.Path},
	}
	if a.UserID != "" {
		ev.Details["account_id"] = a.UserID
	}
	if st := a.effective(now); st != StatusPending {
		ev.Type, ev.Outcome, ev.Reason = "approval.refused", audit.OutcomeDenied, "the approval is "+st
		if _, err := p.opts.Audit.Append(ctx, ev); err != nil {
			return nil, err
		}
		if st == StatusExpired {
			return a, ErrApprovalExpired
		}
		return a, ErrApprovalDecided
	}
	if _, err := p.opts.Audit.Append(ctx, ev); err != nil {
		return nil, err
	}
	by2 := "admin"
	if by.UID != nil {
		by2 = "admin uid " + strconv.Itoa(*by.UID)
	}
	return p.store.decide(id, approve, by2, now)
}

// RegisterAdmin adds the approval and TOTP verbs (enroll, status, unlock)
// to the admin socket's mux.
func (p *Proxy) RegisterAdmin(mux *http.ServeMux) {
	mux.HandleFunc("GET "+AdminApprovalList, func(w http.ResponseWriter, r *http.Request) {
		list, err := p.ListApprovals(r.Context())
		if err != nil {
			admin.WriteError(w, http.StatusInternalServerError, CodeServerError, err.Error())
			return
		}
		if list == nil {
			list = []Approval{}
		}
		admin.WriteJSON(w, http.StatusOK, ApprovalList{Approvals: list})
	})
	decide := func(approve bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var ref ApprovalRef
			if !admin.DecodeJSON(w, r, &ref) {
				return
			}
			caller, _ := admin.CallerFrom(r.Context())
			a, err := p.Decide(r.Context(), ref.ID, approve, caller.Actor())
			switch {
			case errors.Is(err, ErrApprovalNotFound):
				admin.WriteError(w, http.StatusNotFound, "not_found", "no such approval")
			case errors.Is(err, ErrApprovalExpired), errors.Is(err, ErrApprovalDecided):
				desc := "the approval expired"
				if cur, gerr := p.store.approval(ref.ID); gerr == nil {
					desc = "the approval is already " + cur.effective(p.now())
					if cur.DecidedBy != "" {
						desc += " (by " + cur.DecidedBy + ")"
					}
				}
				admin.WriteError(w, http.StatusConflict, CodeApprovalInvalid, desc)
			case err != nil:
				admin.WriteError(w, http.StatusServiceUnavailable, CodeServerError, err.Error())
			default:
				admin.WriteJSON(w, http.StatusOK, a)
			}
		}
	}
	mux.HandleFunc("POST "+AdminApprovalApprove, decide(true))
	mux.HandleFunc("POST "+AdminApprovalDeny, decide(false))
	mux.HandleFunc("POST "+AdminTOTPEnroll, func(w http.ResponseWriter, r *http.Request) {
		var req EnrollRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		accountID, ok := p.adminAccount(w, r, req.User, "enroll the name an active user logs in with")
		if !ok {
			return
		}
		caller, _ := admin.CallerFrom(r.Context())
		ev := &audit.Event{
			Type: "auth.totp", Actor: caller.Actor(), Action: "totp.enroll", Target: req.User,
			Outcome: audit.OutcomeSuccess, Source: "unix", Details: map[string]string{"account_id": accountID},
		}
		if _, err := p.opts.Audit.Append(context.WithoutCancel(r.Context()), ev); err != nil {
			admin.WriteError(w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written, so nothing was done; `applianced doctor` shows why (the journal's disk, its limit), then try again")
			return
		}
		uri, err := p.EnrollTOTP(r.Context(), req.User, accountID)
		if err != nil {
			admin.WriteError(w, http.StatusInternalServerError, CodeServerError, err.Error())
			return
		}
		admin.WriteJSON(w, http.StatusOK, EnrollAnswer{User: req.User, AccountID: accountID, URI: uri})
	})
	mux.HandleFunc("POST "+AdminTOTPStatus, func(w http.ResponseWriter, r *http.Request) {
		var req UserRef
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		accountID, ok := p.adminAccount(w, r, req.User, "name the user as they log in")
		if !ok {
			return
		}
		st, err := p.StatusTOTP(r.Context(), req.User, accountID)
		if err != nil {
			admin.WriteError(w, http.StatusInternalServerError, CodeServerError, err.Error())
			return
		}
		admin.WriteJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST "+AdminTOTPUnlock, func(w http.ResponseWriter, r *http.Request) {
		var req UserRef
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		accountID, ok := p.adminAccount(w, r, req.User, "name the user as they log in")
		if !ok {
			return
		}
		caller, _ := admin.CallerFrom(r.Context())
		out, err := p.UnlockTOTP(r.Context(), req.User, accountID, caller.Actor())
		switch {
		case errors.Is(err, ErrNotEnrolled):
			admin.WriteError(w, http.StatusNotFound, "not_enrolled", req.User+" (account "+accountID+") has no TOTP enrolment, so nothing is locked;"+
				" give them one with applianced user totp enroll "+req.User)
		case errors.Is(err, errAuditUnlock):
			admin.WriteError(w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written, so nothing was unlocked; `applianced doctor` shows why (the journal's disk, its limit), then try again")
		case err != nil:
			admin.WriteError(w, http.StatusInternalServerError, CodeServerError, err.Error())
		default:
			admin.WriteJSON(w, http.StatusOK, out)
		}
	})
}

// adminAccount resolves user through the directory to the account id its
// TOTP enrolment is stored under, or answers why not (hint says what to
// do when the directory refuses the name) and returns false.
func (p *Proxy) adminAccount(w http.ResponseWriter, r *http.Request, user, hint string) (string, bool) {
	if !userRE.MatchString(user) {
		admin.WriteError(w, http.StatusBadRequest, CodeInvalidRequest, "not a user name")
		return "", false
	}
	if p.opts.Users == nil {
		admin.WriteError(w, http.StatusServiceUnavailable, "directory_unavailable", "no directory to resolve "+user+"'s account: TOTP enrolments are bound to directory accounts")
		return "", false
	}
	accountID, refused, err := p.opts.Users.UserAccount(r.Context(), user)
	if err != nil {
		admin.WriteError(w, http.StatusServiceUnavailable, "directory_unavailable", "the directory cannot be asked whether "+user+" exists: "+err.Error())
		return "", false
	}
	if refused != "" {
		admin.WriteError(w, http.StatusNotFound, "not_found", "the directory refuses user "+strconv.Quote(user)+" ("+refused+"); "+hint)
		return "", false
	}
	if accountID == "" {
		admin.WriteError(w, http.StatusServiceUnavailable, "directory_unavailable", "the directory gave no account id for "+strconv.Quote(user))
		return "", false
	}
	return accountID, true
}
