package ldapauth

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/audit"
)

// LookupRequest is a password-less re-check of a user who logged in before.
type LookupRequest struct {
	// Username is the name the user logged in as, as Identity.Username
	// gave it (sAMAccountName, uid). Without ID, the account is found by
	// this name as Login finds it (any of login_attributes, or the
	// attribute Username comes from).
	Username string
	// ID is the account's immutable id, as Identity.ID gave it at login.
	// With it, the account is found by its id, whatever its name is now,
	// and must still carry Username (when set): an account deleted since
	// is ReasonUserNotFound, one renamed since (and not disabled, locked or expired) is
	// ReasonAccountRenamed, even when another account has taken the name. Rechecks of a session use it; a name alone is for
	// administrators' tools.
	ID        string
	Source    string // client address, for the audit
	RequestID string
	// FreshGroups resolves the groups from the directory even when the
	// group cache holds them (and refreshes the cache). Without it a cached
	// entry younger than group_cache_ttl is used. The account state is
	// always read from the directory.
	FreshGroups bool
	// Periodic marks the regular check of a user who holds live tokens:
	// an answer that the user may still sign in is not recorded (nothing
	// was decided, and every user every few seconds would bury the trail);
	// a refusal or a failure is.
	Periodic bool
}

// AD userAccountControl bits.
const (
	uacDisabled        = 0x2
	uacLockout         = 0x10     // in msDS-User-Account-Control-Computed
	uacPasswordExpired = 0x800000 // in msDS-User-Account-Control-Computed
)

// stateAttrs are the account-state attributes read by Lookup, per mode.
func stateAttrs(mode string) []string {
	switch mode {
	case GroupModeAD, GroupModeADInChain:
		return []string{"userAccountControl", "msDS-User-Account-Control-Computed", "lockoutTime", "accountExpires", "pwdLastSet"}
	}
	// OpenLDAP ppolicy, 389-DS and shadowAccount.
	return []string{"pwdAccountLockedTime", "nsAccountLock", "shadowExpire"}
}

// Lookup re-checks a known user with the service connection, never binding
// as the user: it finds the account by its id (or, without one, by name as
// Login does), reads the account state (AD: disabled, locked out, account
// expired, password expired or to be changed; elsewhere: ppolicy lock,
// nsAccountLock, shadowExpire, and that the user still exists), and
// resolves the groups and roles again. A denied lookup returns ok == false
// with the same Reasons as Login and drops the user's group cache entry; an
// error means the directory could not answer. Every lookup is audited
// (auth.recheck) before Lookup returns.
func (a *Authenticator) Lookup(ctx context.Context, r LookupRequest) (Identity, Outcome, error) {
	var filter string
	if r.ID != "" {
		f, err := idFilter(r.ID)
		if err != nil {
			return a.finishLookup(ctx, r, Identity{}, Outcome{Reason: ReasonInvalidAccountID}, nil)
		}
		filter = "(&" + a.cfg.UserFilter + f + ")"
	} else {
		name, err := parseLoginName(r.Username, a.cfg.NetBIOSDomain)
		if err != nil {
			return a.finishLookup(ctx, r, Identity{}, Outcome{Reason: ReasonInvalidName}, nil)
		}
		filter = userFilter(a.cfg.UserFilter, a.lookupAttrs(), name)
	}
	id, out, err := a.tryDCs(ctx, func(d *server) (Identity, Outcome, error, bool) {
		return a.lookupOn(ctx, d, filter, r)
	})
	return a.finishLookup(ctx, r, id, out, err)
}

// lookupAttrs are the attributes a name is looked up in: the login
// attributes and the one Identity.Username comes from, so that the name a
// login gave is found again whichever form the user typed
// (login_attributes = ["userPrincipalName"] gives "alice", not
// "alice@corp.example").
func (a *Authenticator) lookupAttrs() []string {
	attrs := slices.Clone(a.cfg.LoginAttributes)
	own := "uid"
	if a.cfg.GroupMode == GroupModeAD || a.cfg.GroupMode == GroupModeADInChain {
		own = "sAMAccountName"
	}
	if !slices.ContainsFunc(attrs, func(s string) bool { return strings.EqualFold(s, own) }) {
		attrs = append(attrs, own)
	}
	return attrs
}

func (a *Authenticator) lookupOn(ctx context.Context, d *server, filter string, r LookupRequest) (id Identity, out Outcome, err error, failover bool) {
	out.DC = d.url
	sc, pooled, err := a.searchConn(ctx, d)
	if err != nil {
		out, failover := searchConnFailure(d, err)
		return id, out, err, failover
	}
	keep := false
	defer func() { a.releaseSearch(d, sc, keep) }()
	attrs := append(userAttrs(a.cfg.GroupMode, a.cfg.LoginAttributes), stateAttrs(a.cfg.GroupMode)...)
	req := ldap.NewSearchRequest(a.cfg.UserBase, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, 0, false, filter, attrs, nil)
	var res *ldap.SearchResult
	if sc, res, err = a.searchUser(ctx, d, sc, pooled, req); sc == nil {
		return id, out, err, isConnErr(err)
	}
	if err != nil {
		out, keep, err, failover = searchFailure(d, sc, err)
		return id, out, err, failover
	}
	keep = true
	switch {
	case len(res.Entries) == 0 || res.Entries[0].DN == "":
		out.Reason = ReasonUserNotFound
		return id, out, nil, false
	case len(res.Entries) > 1:
		out.Reason = ReasonAmbiguousUser
		return id, out, nil, false
	}
	user := res.Entries[0]
	acctID, err := accountID(user)
	if err != nil {
		return id, Outcome{Reason: ReasonDirectoryUnavailable, DC: d.url}, fmt.Errorf("ldapauth: user search on %s: %w", d.url, err), false
	}
	if r.ID != "" && acctID != strings.ToLower(r.ID) {
		a.cache.drop(acctID)
		out.Reason = ReasonUserNotFound
		return id, out, nil, false
	}
	if reason := accountState(user, a.cfg.GroupMode, a.now()); reason != "" {
		a.cache.drop(acctID)
		out.Reason = reason
		id.DN = user.DN
		return id, out, nil, false
	}
	if now := a.username(user); r.ID != "" && r.Username != "" && !strings.EqualFold(now, r.Username) {
		// The account was renamed: the name its sessions carry may be
		// another account's now, and is not this one's. The account
		// itself may still sign in under its current name.
		a.cache.drop(acctID)
		out.Reason = ReasonAccountRenamed
		id.DN, id.Username, id.ID = user.DN, now, acctID
		return id, out, nil, false
	}
	groups, hit := a.cache.get(acctID, a.now())
	if hit && !r.FreshGroups {
		a.stats.cacheHit.Add(1)
	} else {
		groups, err = a.groups(ctx, sc, user)
		if err != nil {
			keep = !connFailed(sc, err)
			return id, Outcome{Reason: ReasonDirectoryUnavailable, DC: d.url}, fmt.Errorf("ldapauth: groups on %s: %w", d.url, err), false
		}
		a.cache.put(acctID, groups, a.now())
	}
	d.markUp(a.now())
	id = a.identity(user, acctID, groups, d.url)
	if len(a.cfg.AllowedGroups) > 0 && !a.allowed(groups) {
		a.cache.drop(acctID)
		out.Reason = ReasonNotInAllowedGroups
		return id, out, nil, false
	}
	out.OK = true
	return id, out, nil, false
}

// accountState returns why the directory would refuse the account now, or
// "" when it may log in, from the attributes of stateAttrs.
func accountState(e *ldap.Entry, mode string, now time.Time) Reason {
	num := func(attr string) (int64, bool) {
		v := e.GetAttributeValue(attr)
		if v == "" {
			return 0, false
		}
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	}
	switch mode {
	case GroupModeAD, GroupModeADInChain:
		if uac, ok := num("userAccountControl"); ok && uac&uacDisabled != 0 {
			return ReasonAccountDisabled
		}
		if exp, ok := num("accountExpires"); ok && exp != 0 && exp != 0x7FFFFFFFFFFFFFFF && !now.Before(fromFiletime(exp)) {
			return ReasonAccountExpired
		}
		if computed, ok := num("msDS-User-Account-Control-Computed"); ok {
			// The DC computes lockout with the domain's lockout duration.
			if computed&uacLockout != 0 {
				return ReasonAccountLocked
			}
			if computed&uacPasswordExpired != 0 {
				if pls, ok := num("pwdLastSet"); ok && pls == 0 {
					return ReasonPasswordMustChange
				}
				return ReasonPasswordExpired
			}
		} else if lt, ok := num("lockoutTime"); ok && lt != 0 {
			// Without the computed flags, any lockout counts until a
			// successful login or an administrator resets it.
			return ReasonAccountLocked
		}
		if pls, ok := num("pwdLastSet"); ok && pls == 0 {
			return ReasonPasswordMustChange
		}
	default:
		if e.GetAttributeValue("pwdAccountLockedTime") != "" {
			return ReasonAccountLocked
		}
		if strings.EqualFold(e.GetAttributeValue("nsAccountLock"), "true") {
			return ReasonAccountDisabled
		}
		if days, ok := num("shadowExpire"); ok && days >= 0 && !now.Before(time.Unix(days*86400, 0)) {
			return ReasonAccountExpired
		}
	}
	return ""
}

// fromFiletime converts an AD FILETIME (100 ns since 1601) to a time.
func fromFiletime(ft int64) time.Time {
	const epochDiff = 116444736000000000 // 1601 → 1970 in 100 ns
	return time.Unix(0, 0).Add(time.Duration(ft-epochDiff) * 100)
}

// finishLookup audits a lookup (auth.recheck) and returns its result.
func (a *Authenticator) finishLookup(ctx context.Context, r LookupRequest, id Identity, out Outcome, lerr error) (Identity, Outcome, error) {
	if r.Periodic && lerr == nil && out.OK {
		return id, out, nil
	}
	ev := authEvent("auth.recheck", "ldap.recheck", r.Username, r.RequestID, r.Source, id, out, lerr)
	if lerr == nil && !out.OK {
		ev.Severity = audit.SeverityWarn
	}
	if r.ID != "" {
		ev.Details["account_id"] = strings.ToLower(r.ID)
	}
	if out.Reason == ReasonAccountRenamed {
		// Target is the account's DN now; the name it goes by now.
		ev.Details["name_now"] = id.Username
	}
	return a.record(ctx, ev, "recheck", id, out, lerr)
}
