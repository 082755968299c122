package broker

import (
	"context"

	"github.com/applianced/applianced/ldapauth"
)

// DirectoryLogin is ldapauth's login, as *ldapauth.Authenticator (or a
// wrapper that swaps it on reload) offers it.
type DirectoryLogin interface {
	Login(ctx context.Context, r ldapauth.Request) (ldapauth.Identity, ldapauth.Outcome, error)
}

// FromLDAP adapts the directory login of ldapauth to an Authenticator. The
// directory records every attempt (auth.login) itself; the broker records
// the token it then issues.
func FromLDAP(a DirectoryLogin) Authenticator { return ldapLogin{a} }

type ldapLogin struct{ a DirectoryLogin }

func (l ldapLogin) Login(ctx context.Context, username, password, source string) (Identity, bool, error) {
	id, out, err := l.a.Login(ctx, ldapauth.Request{Username: username, Password: password, Source: source})
	if err != nil {
		return Identity{}, false, err
	}
	if !out.OK {
		return Identity{}, false, nil
	}
	groups := make([]string, 0, len(id.Groups))
	for _, g := range id.Groups {
		groups = append(groups, g.Name)
	}
	return Identity{Username: id.Username, DN: id.DN, Groups: groups, Roles: id.Roles}, true, nil
}
