package broker

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/applianced/applianced/audit"
)

// ErrNoSuchAgent is returned by the admin verbs for a name not in the config.
var ErrNoSuchAgent = errors.New("broker: no such agent")

// revocationSpan is how long a revocation made now is kept: as long as a
// token issued before it can live, under any config this broker may have
// had (max_ttl can be lowered by a reload or a restart while longer-lived
// tokens are out), so the bound of every config, not the current one.
func (b *Broker) revocationSpan() time.Duration { return MaxAllowedTTL + leeway }

// revocations is the in-memory copy of the revocation list, consulted on
// every verification; the Store holds the durable copy.
type revocations struct {
	mu     sync.RWMutex
	jtis   map[string]time.Time // jti -> until
	agents map[string]time.Time // agent -> tokens issued at or before this are revoked
	users  map[string]time.Time // userKey(user) -> as agents
	accts  map[string]time.Time // account id -> as agents
	names  map[string]time.Time // accountNameValue -> as agents, for an account's tokens under one name
	until  map[string]time.Time // kind\x00value -> until, for pruning agents/users
}

// userKey is how a revocation names a user. Directories compare login
// names without regard to case (sAMAccountName, and uid under
// caseIgnoreMatch), and a token carries the name as the directory stores
// it: `token revoke --user ALICE` must reach the tokens of "alice".
func userKey(name string) string { return strings.ToLower(name) }

func newRevocations(list []Revocation) *revocations {
	r := &revocations{jtis: map[string]time.Time{}, agents: map[string]time.Time{},
		users: map[string]time.Time{}, accts: map[string]time.Time{},
		names: map[string]time.Time{}, until: map[string]time.Time{}}
	for _, x := range list {
		r.add(x)
	}
	return r
}

func (r *revocations) add(x Revocation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch x.Kind {
	case RevokeJTI:
		r.jtis[x.Value] = later(r.jtis[x.Value], x.Until)
	case RevokeAgent:
		if x.At.After(r.agents[x.Value]) {
			r.agents[x.Value] = x.At
		}
	case RevokeUser:
		k := userKey(x.Value)
		if x.At.After(r.users[k]) {
			r.users[k] = x.At
		}
		if x.Until.After(r.until[x.Kind+"\x00"+k]) {
			r.until[x.Kind+"\x00"+k] = x.Until
		}
		return
	case RevokeUserWithoutID:
		// Kept as the record of a session that ended; check refuses every
		// user token without an account id anyway.
		return
	case RevokeAccount:
		if x.At.After(r.accts[x.Value]) {
			r.accts[x.Value] = x.At
		}
	case RevokeAccountName:
		if x.At.After(r.names[x.Value]) {
			r.names[x.Value] = x.At
		}
	}
	// A later revocation of the same agent never shortens an earlier one.
	r.until[x.Kind+"\x00"+x.Value] = later(r.until[x.Kind+"\x00"+x.Value], x.Until)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// check returns why p is revoked, or nil.
func (r *revocations) check(p *Principal) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.jtis[p.JTI]; ok {
		return ErrRevoked
	}
	// iat has one-second resolution: a token from the revocation's second
	// counts as revoked (fail closed).
	if p.Agent != "" {
		if at, ok := r.agents[p.Agent]; ok && !p.IssuedAt.After(at) {
			return ErrRevoked
		}
	}
	if p.User != "" {
		if at, ok := r.users[userKey(p.User)]; ok && !p.IssuedAt.After(at) {
			return ErrUserRevoked
		}
	}
	if p.UserID != "" {
		if at, ok := r.accts[p.UserID]; ok && !p.IssuedAt.After(at) {
			return ErrUserRevoked
		}
		if p.User != "" {
			if at, ok := r.names[accountNameValue(Account{ID: p.UserID, Name: p.User})]; ok && !p.IssuedAt.After(at) {
				return ErrUserRevoked
			}
		}
	} else if p.User != "" {
		// Every user token this broker issues carries the account id: one
		// without it was issued by a version that kept none, and cannot be
		// tied to an account any more (the name may be someone else's
		// now), so it is refused, whether or not its user still has a
		// session to be checked.
		return ErrUserRevoked
	}
	return nil
}

func (r *revocations) prune(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, until := range r.until {
		if !now.After(until) {
			continue
		}
		delete(r.until, k)
		kind, value, _ := strings.Cut(k, "\x00")
		switch kind {
		case RevokeJTI:
			delete(r.jtis, value)
		case RevokeAgent:
			delete(r.agents, value)
		case RevokeUser:
			delete(r.users, value)
		case RevokeAccount:
			delete(r.accts, value)
		case RevokeAccountName:
			delete(r.names, value)
		}
	}
}

// revoke persists x, then makes it effective.
func (b *Broker) revoke(ctx context.Context, x Revocation) error {
	if err := b.store.PutRevocation(ctx, x); err != nil {
		return err
	}
	b.revs.add(x)
	return nil
}

// RevokeJTI revokes one access token by its id, at once, for every verifier.
func (b *Broker) RevokeJTI(ctx context.Context, jti string, by audit.Actor) error {
	now := b.now()
	x := Revocation{Kind: RevokeJTI, Value: jti, At: now, Until: now.Add(b.revocationSpan())}
	return b.adminRevoke(ctx, x, by, map[string]string{"jti_hmac": b.hashID(jti)})
}

// RevokeAgent revokes every token the agent holds or acts with, issued
// until now. New tokens are still issued unless the agent is disabled.
func (b *Broker) RevokeAgent(ctx context.Context, name string, by audit.Actor) error {
	return b.revokeAgent(ctx, name, by, "")
}

func (b *Broker) revokeAgent(ctx context.Context, name string, by audit.Actor, reason string) error {
	if _, ok := b.cfg.Load().agents[name]; !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchAgent, name)
	}
	now := b.now()
	x := Revocation{Kind: RevokeAgent, Value: name, At: now, Until: now.Add(b.revocationSpan())}
	details := map[string]string{"agent": name}
	if reason != "" {
		details["reason"] = reason
	}
	return b.adminRevoke(ctx, x, by, details)
}

// UserRevocation is what RevokeUser found: how many sessions it ended,
// and whether the appliance had issued the user a token that may still be
// live. Neither, for a name the admin typed, usually means a misspelling.
type UserRevocation struct {
	SessionsEnded int  `json:"sessions_ended"`
	HeldLiveToken bool `json:"held_live_token"`
	// AccountIDs (RevokeUser) are the directory accounts that hold tokens
	// under the name: after a rename, more than one may have held it.
	AccountIDs []string `json:"account_ids,omitempty"`
	// Names (RevokeAccount) are the names the account's tokens carry.
	Names []string `json:"names,omitempty"`
}

// accountIDRE is the canonical form of an account id, in either case.
var accountIDRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// RevokeAccount revokes every token of or for the directory account with
// the immutable id id, whatever name it carries (a renamed account's old
// and new names alike), issued until now, and ends the account's
// sessions. Another account that has one of its names now is untouched.
func (b *Broker) RevokeAccount(ctx context.Context, id string, by audit.Actor) (UserRevocation, error) {
	if !accountIDRE.MatchString(id) {
		return UserRevocation{}, fmt.Errorf("broker: %q is not an account id", id)
	}
	id = strings.ToLower(id)
	now := b.now()
	var res UserRevocation
	b.holders.Range(func(k, v any) bool {
		if h := v.(holding); strings.EqualFold(h.acct.ID, id) && !now.After(h.until.Add(leeway)) {
			res.HeldLiveToken = true
			if !slices.Contains(res.Names, h.acct.Name) {
				res.Names = append(res.Names, h.acct.Name)
			}
		}
		return true
	})
	sort.Strings(res.Names)
	x := Revocation{Kind: RevokeAccount, Value: id, At: now, Until: now.Add(b.revocationSpan())}
	err := b.adminRevoke(ctx, x, by, map[string]string{"account_id": id, "names": strings.Join(res.Names, ",")}, func(ctx context.Context) error {
		n, err := b.store.RevokeAccountFamilies(ctx, Account{ID: id})
		res.SessionsEnded = n
		return err
	})
	return res, err
}

// RevokeUser revokes every token of or for the user issued until now and
// ends the user's sessions (refresh tokens). The name is matched without
// regard to case, as the directory matches it.
func (b *Broker) RevokeUser(ctx context.Context, name string, by audit.Actor) (UserRevocation, error) {
	now := b.now()
	var res UserRevocation
	b.holders.Range(func(k, v any) bool {
		if h := v.(holding); strings.EqualFold(h.acct.Name, name) && !now.After(h.until.Add(leeway)) {
			res.HeldLiveToken = true
			if h.acct.ID != "" && !slices.Contains(res.AccountIDs, h.acct.ID) {
				res.AccountIDs = append(res.AccountIDs, h.acct.ID)
			}
		}
		return true
	})
	sort.Strings(res.AccountIDs)
	x := Revocation{Kind: RevokeUser, Value: name, At: now, Until: now.Add(b.revocationSpan())}
	details := map[string]string{"user": name}
	if len(res.AccountIDs) > 0 {
		details["account_ids"] = strings.Join(res.AccountIDs, ",")
	}
	err := b.adminRevoke(ctx, x, by, details, func(ctx context.Context) error {
		n, err := b.store.RevokeUserFamilies(ctx, name)
		res.SessionsEnded = n
		return err
	})
	return res, err
}

// adminRevoke records the revocation, then makes it (and also, if set). A
// revocation that cannot be recorded is not made: the action fails as a
// whole, as every action does when the journal cannot be written (and
// with it every use of a token at the proxy). If making it fails after the
// record, a second record says so.
func (b *Broker) adminRevoke(ctx context.Context, x Revocation, by audit.Actor, details map[string]string, also ...func(context.Context) error) error {
	ev := func(outcome, reason string) *audit.Event {
		return &audit.Event{Type: "broker.revoke", Severity: audit.SeverityWarn, Actor: by,
			Action: "token.revoke", Target: x.Kind, Outcome: outcome, Reason: reason, Details: details}
	}
	if err := b.record(ctx, ev(audit.OutcomeSuccess, "")); err != nil {
		return err
	}
	err := b.revoke(ctx, x)
	for _, f := range also {
		if err == nil {
			err = f(ctx)
		}
	}
	if err != nil {
		_ = b.record(ctx, ev(audit.OutcomeFailure, "recorded above but not made: "+err.Error()))
		return err
	}
	return nil
}

// AgentInfo is an agent's config and runtime state, for listings.
type AgentInfo struct {
	Name          string    `json:"name"`
	Roles         []string  `json:"roles"`
	Scopes        []string  `json:"scopes"`
	Auth          []string  `json:"auth"` // unix_user, unix_uid, systemd_unit, private_key_jwt, client_secret
	ActForGroups  []string  `json:"act_for_groups,omitempty"`
	Enabled       bool      `json:"enabled"`
	DisabledAt    time.Time `json:"disabled_at,omitzero"`
	DisabledUntil time.Time `json:"disabled_until,omitzero"`
	Reason        string    `json:"reason,omitempty"`
	LastSeen      time.Time `json:"last_seen,omitzero"`
}

// Agents lists the configured agents with their state, by name.
func (b *Broker) Agents() []AgentInfo {
	cc := b.cfg.Load()
	out := make([]AgentInfo, 0, len(cc.agents))
	for name := range cc.agents {
		info, _ := b.Agent(name)
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Agent returns one agent's config and state.
func (b *Broker) Agent(name string) (AgentInfo, error) {
	a, ok := b.cfg.Load().agents[name]
	if !ok {
		return AgentInfo{}, fmt.Errorf("%w: %q", ErrNoSuchAgent, name)
	}
	b.stateMu.RLock()
	st := b.states[name]
	b.stateMu.RUnlock()
	if v, ok := b.seen.Load(name); ok {
		st.LastSeen = v.(time.Time)
	}
	info := AgentInfo{Name: name, Roles: a.Roles, Scopes: a.scopes, ActForGroups: a.ActForGroups,
		Enabled: !b.agentDisabled(name), DisabledAt: st.DisabledAt, DisabledUntil: st.DisabledUntil, Reason: st.Reason,
		LastSeen: st.LastSeen}
	if info.Enabled {
		info.DisabledAt, info.DisabledUntil, info.Reason = time.Time{}, time.Time{}, ""
	}
	if a.UnixUser != "" {
		info.Auth = append(info.Auth, "unix_user")
	}
	if a.UnixUID != nil {
		info.Auth = append(info.Auth, "unix_uid")
	}
	if a.SystemdUnit != "" {
		info.Auth = append(info.Auth, "systemd_unit")
	}
	if a.pub != nil {
		info.Auth = append(info.Auth, "private_key_jwt")
	}
	if a.secret != nil {
		info.Auth = append(info.Auth, "client_secret")
	}
	return info, nil
}

// SetAgentEnabled enables or disables an agent. Disabling takes effect at
// once: no new tokens, and its existing tokens fail verification.
func (b *Broker) SetAgentEnabled(ctx context.Context, name string, enabled bool, by audit.Actor) error {
	if _, ok := b.cfg.Load().agents[name]; !ok {
		return fmt.Errorf("%w: %q", ErrNoSuchAgent, name)
	}
	action := "agent.enable"
	if !enabled {
		action = "agent.disable"
	}
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	st := b.states[name]
	st.Disabled = !enabled
	st.DisabledAt, st.DisabledUntil, st.Reason = time.Time{}, time.Time{}, ""
	if !enabled {
		st.DisabledAt, st.Reason = b.now().UTC(), "disabled by an administrator"
	}
	if err := b.store.PutAgentState(ctx, name, st); err != nil {
		return err
	}
	var details map[string]string
	if !enabled {
		details = map[string]string{"tokens": "revoked"}
	}
	if err := b.record(ctx, &audit.Event{Type: "broker.agent", Severity: audit.SeverityWarn, Actor: by,
		Action: action, Target: name, Outcome: audit.OutcomeSuccess, Details: details}); err != nil {
		// Not recorded: put the old state back, so no change stands without a record.
		if uerr := b.store.PutAgentState(ctx, name, b.states[name]); uerr != nil {
			b.log.Error("broker: restoring agent state after an audit failure", "agent", name, "err", uerr)
		}
		return err
	}
	b.states[name] = st
	if !enabled {
		// Disabled tokens are refused for as long as the agent stays
		// disabled; revoked, they stay refused once it is enabled again
		// (disable, rotate its key, enable must not bring a leaked token
		// back).
		now := b.now()
		x := Revocation{Kind: RevokeAgent, Value: name, At: now, Until: now.Add(b.revocationSpan())}
		if err := b.revoke(ctx, x); err != nil {
			return fmt.Errorf("broker: agent %s is disabled, but its tokens could not be revoked (they are refused while it stays disabled): %w", name, err)
		}
	}
	return nil
}

// revokeDirectoryDenied ends every session and token of an account the
// directory now refuses (disabled, locked, expired, gone or out of
// allowed_groups), seen at refresh, token exchange or the periodic check,
// and of a session without an account id (deniedNoAccountID). An account
// renamed since (deniedRenamed) loses only its sessions and tokens under
// the old name, which may be someone else's now; those under its name now
// stay. It is audited (token.revoke, its target the kind of revocation)
// before the refusal is answered. Another account that has the name now
// keeps its sessions and tokens.
func (b *Broker) revokeDirectoryDenied(ctx context.Context, q *request, acct Account, reason string) error {
	now := b.now()
	x := Revocation{Kind: RevokeAccount, Value: acct.ID, At: now, Until: now.Add(b.revocationSpan())}
	details := map[string]string{"user": acct.Name, "reason": "directory: " + reason, "trigger": q.grant}
	evReason := "directory_denied"
	families := b.store.RevokeAccountFamilies
	switch {
	case acct.ID == "":
		// Only tokens without an account id: those that carry one are
		// of an account the directory still answers for, whoever it is.
		x = Revocation{Kind: RevokeUserWithoutID, Value: acct.Name, At: now, Until: now.Add(b.revocationSpan())}
		details["reason"], evReason = reason, deniedNoAccountID
	case reason == deniedRenamed:
		x = Revocation{Kind: RevokeAccountName, Value: accountNameValue(acct), At: now, Until: now.Add(b.revocationSpan())}
		details["account_id"] = acct.ID
		families = b.store.RevokeAccountNameFamilies
	default:
		details["account_id"] = acct.ID
	}
	n, err := families(ctx, acct)
	if err == nil {
		details["sessions"] = strconv.Itoa(n)
		err = b.revoke(ctx, x)
	}
	ev := &audit.Event{Type: "token.revoke", Severity: audit.SeverityHigh, Actor: q.actor(), Action: "token.revoke",
		Target: x.Kind, Outcome: audit.OutcomeSuccess, Reason: evReason, Source: q.srcString, Details: details}
	if err != nil {
		ev.Outcome, ev.Reason = audit.OutcomeFailure, err.Error()
		_ = b.record(ctx, ev)
		return err
	}
	return b.record(ctx, ev)
}
