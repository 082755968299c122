package broker

import (
	"context"

	"github.com/applianced/applianced/ldapauth"
)

// DirectoryLogin is ldapauth's login and password-less lookup, as
// *ldapauth.Authenticator (or a wrapper that swaps it on reload) offers them.
type DirectoryLogin interface {
	Login(ctx context.Context, r ldapauth.Request) (ldapauth.Identity, ldapauth.Outcome, error)
	Lookup(ctx context.Context, r ldapauth.LookupRequest) (ldapauth.Identity, ldapauth.Outcome, error)
}

// FromLDAP adapts the directory login of ldapauth to an Authenticator. The
// directory records every attempt (auth.login) itself; the broker records
// the token it then issues; it records each lookup (auth.recheck) too.
func FromLDAP(a DirectoryLogin) Authenticator { return ldapLogin{a} }

type ldapLogin struct{ a DirectoryLogin }

func (l ldapLogin) Login(ctx context.Context, username, password, source string) (Identity, bool, error) {
	id, out, err := l.a.Login(ctx, ldapauth.Request{Username: username, Password: password, Source: source})
	if err != nil {
		return Identity{}, false, err
	}
	if out.Reason == ldapauth.ReasonRateLimited {
		return Identity{}, false, &ThrottledError{RetryAfter: out.RetryAfter}
	}
	if !out.OK {
		return Identity{}, false, nil
	}
	return brokerIdentity(id), true, nil
}

func (l ldapLogin) Recheck(ctx context.Context, acct Account, source string, freshGroups bool) (Identity, string, error) {
	id, out, err := l.a.Lookup(ctx, ldapauth.LookupRequest{Username: acct.Name, ID: acct.ID, Source: source, FreshGroups: freshGroups})
	if err != nil {
		return Identity{}, "", err
	}
	if !out.OK {
		if out.Reason == "" {
			return Identity{}, "denied", nil
		}
		return Identity{}, string(out.Reason), nil
	}
	return brokerIdentity(id), "", nil
}

func brokerIdentity(id ldapauth.Identity) Identity {
	groups := make([]string, 0, len(id.Groups))
	for _, g := range id.Groups {
		groups = append(groups, g.Name)
	}
	return Identity{Username: id.Username, ID: id.ID, DN: id.DN, Groups: groups, Roles: id.Roles}
}

// RecheckPeriodic is Recheck for the regular check of users holding live
// tokens: an answer that the user may still sign in is not recorded.
func (l ldapLogin) RecheckPeriodic(ctx context.Context, acct Account) (string, error) {
	_, out, err := l.a.Lookup(ctx, ldapauth.LookupRequest{Username: acct.Name, ID: acct.ID, Periodic: true})
	if err != nil {
		return "", err
	}
	if !out.OK {
		if out.Reason == "" {
			return "denied", nil
		}
		return string(out.Reason), nil
	}
	return "", nil
}
