package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/admin"
)

// jtiRE is the form of the jti of every token the broker issues (newID).
var jtiRE = regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)

// Admin paths served by RegisterAdmin.
const (
	AdminAgentList    = "/admin/v1/agent/list"
	AdminAgentShow    = "/admin/v1/agent/show"
	AdminAgentDisable = "/admin/v1/agent/disable"
	AdminAgentEnable  = "/admin/v1/agent/enable"
	AdminTokenRevoke  = "/admin/v1/token/revoke"
)

// AgentList is the answer of AdminAgentList.
type AgentList struct {
	Agents []AgentInfo `json:"agents"`
}

// AgentRef names an agent in an admin request.
type AgentRef struct {
	Name   string `json:"name"`
	Reason string `json:"reason,omitempty"`
}

// RevokeRequest is the body of AdminTokenRevoke: exactly one field is set.
type RevokeRequest struct {
	JTI   string `json:"jti,omitempty"`
	Agent string `json:"agent,omitempty"`
	User  string `json:"user,omitempty"`
	// Account is a directory account's immutable id (objectGUID,
	// entryUUID; the oid of its tokens, as `ldap test` prints it): every
	// token of or for the account, whatever name it carries.
	Account string `json:"account,omitempty"`
}

// RevokeAnswer is the answer of AdminTokenRevoke: the request, and for a
// user what the revocation found.
type RevokeAnswer struct {
	RevokeRequest
	User *UserRevocation `json:"user_revocation,omitempty"`
}

// RegisterAdmin mounts the agent and token verbs on the admin mux.
func (b *Broker) RegisterAdmin(mux *http.ServeMux) {
	mux.HandleFunc("GET "+AdminAgentList, func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusOK, AgentList{Agents: b.Agents()})
	})
	mux.HandleFunc("POST "+AdminAgentShow, func(w http.ResponseWriter, r *http.Request) {
		var ref AgentRef
		if !admin.DecodeJSON(w, r, &ref) {
			return
		}
		info, err := b.Agent(ref.Name)
		if err != nil {
			writeAdminError(w, err)
			return
		}
		admin.WriteJSON(w, http.StatusOK, info)
	})
	setEnabled := func(enabled bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			var ref AgentRef
			if !admin.DecodeJSON(w, r, &ref) {
				return
			}
			caller, _ := admin.CallerFrom(r.Context())
			if err := b.SetAgentEnabled(r.Context(), ref.Name, enabled, caller.Actor()); err != nil {
				writeAdminError(w, err)
				return
			}
			info, err := b.Agent(ref.Name)
			if err != nil {
				writeAdminError(w, err)
				return
			}
			admin.WriteJSON(w, http.StatusOK, info)
		}
	}
	mux.HandleFunc("POST "+AdminAgentDisable, setEnabled(false))
	mux.HandleFunc("POST "+AdminAgentEnable, setEnabled(true))
	mux.HandleFunc("POST "+AdminTokenRevoke, func(w http.ResponseWriter, r *http.Request) {
		var req RevokeRequest
		if !admin.DecodeJSON(w, r, &req) {
			return
		}
		n := 0
		for _, s := range []string{req.JTI, req.Agent, req.User, req.Account} {
			if s != "" {
				n++
			}
		}
		if n != 1 {
			admin.WriteError(w, http.StatusBadRequest, "invalid_request", "name exactly one of jti, agent, user and account")
			return
		}
		caller, _ := admin.CallerFrom(r.Context())
		var err error
		switch {
		case req.JTI != "":
			if !jtiRE.MatchString(req.JTI) {
				admin.WriteError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf(
					"%q is not a token id: the jti of a token this appliance issued is 22 characters of A-Z a-z 0-9 - _ (see the token's jti claim, or details.jti of its tool.call events)", req.JTI))
				return
			}
			err = b.RevokeJTI(r.Context(), req.JTI, caller.Actor())
		case req.Agent != "":
			err = b.RevokeAgent(r.Context(), req.Agent, caller.Actor())
		case req.Account != "":
			if !accountIDRE.MatchString(req.Account) {
				admin.WriteError(w, http.StatusBadRequest, "invalid_request", fmt.Sprintf(
					"%q is not an account id: want the form 01234567-89ab-cdef-0123-456789abcdef (the oid of the account's tokens, or the id `applianced ldap test` prints)", req.Account))
				return
			}
			var res UserRevocation
			if res, err = b.RevokeAccount(r.Context(), req.Account, caller.Actor()); err == nil {
				admin.WriteJSON(w, http.StatusOK, RevokeAnswer{RevokeRequest: req, User: &res})
				return
			}
		default:
			if len(req.User) > 256 {
				admin.WriteError(w, http.StatusBadRequest, "invalid_request", "not a user name")
				return
			}
			var res UserRevocation
			if res, err = b.RevokeUser(r.Context(), req.User, caller.Actor()); err == nil {
				admin.WriteJSON(w, http.StatusOK, RevokeAnswer{RevokeRequest: req, User: &res})
				return
			}
		}
		if err != nil {
			writeAdminError(w, err)
			return
		}
		admin.WriteJSON(w, http.StatusOK, RevokeAnswer{RevokeRequest: req})
	})
}

func writeAdminError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNoSuchAgent) {
		admin.WriteError(w, http.StatusNotFound, "not_found", err.Error())
		return
	}
	admin.WriteError(w, http.StatusServiceUnavailable, "server_error", err.Error())
}

// Enabled reports whether the agent is configured and not disabled. The
// tool proxy asks on every call.
func (b *Broker) Enabled(ctx context.Context, name string) (bool, error) {
	if _, ok := b.cfg.Load().agents[name]; !ok {
		return false, nil
	}
	return !b.agentDisabled(name), nil
}

// Disable disables an agent on the appliance's own decision (a risk
// limit), until the given time or, when until is zero, until an
// administrator enables it.
func (b *Broker) Disable(ctx context.Context, name, reason string, until time.Time) error {
	if _, ok := b.cfg.Load().agents[name]; !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchAgent, name)
	}
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	old := b.states[name]
	st := old
	st.Disabled, st.DisabledAt, st.Reason, st.DisabledUntil = true, b.now().UTC(), reason, until.UTC()
	if until.IsZero() {
		st.DisabledUntil = time.Time{}
	}
	details := map[string]string{"reason": reason}
	if !until.IsZero() {
		details["until"] = until.UTC().Format(time.RFC3339)
	}
	if err := b.record(ctx, &audit.Event{Type: "broker.agent", Severity: audit.SeverityHigh, Action: "agent.disable",
		Target: name, Outcome: audit.OutcomeSuccess, Reason: reason, Details: details}); err != nil {
		return err
	}
	b.states[name] = st
	if err := b.store.PutAgentState(ctx, name, st); err != nil {
		b.log.Error("broker: saving agent state (in effect in this process)", "agent", name, "err", err)
		return err
	}
	return nil
}

// RevokeAgentTokens revokes every token the agent holds, on the
// appliance's own decision.
func (b *Broker) RevokeAgentTokens(ctx context.Context, name, reason string) error {
	return b.revokeAgent(ctx, name, audit.Actor{}, reason)
}
