package ldapauth

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Group is a directory group the user belongs to, directly or nested.
type Group struct {
	DN   string `json:"dn"`
	Name string `json:"name"` // sAMAccountName in AD, cn otherwise
}

// maxSIDTTL bounds how long a SID → group mapping is reused.
const maxSIDTTL = time.Hour

// sidTTL is how long a SID → group mapping is reused: no longer than a
// user's groups are (group_cache_ttl), so that a renamed group's old name,
// which group_roles and allowed_groups may still grant, lasts no longer
// than a removed membership does.
func (a *Authenticator) sidTTL() time.Duration { return min(maxSIDTTL, a.cfg.GroupCacheTTL.D()) }

// maxNesting bounds the memberOf walk.
const maxNesting = 16

// groupCache holds each user's groups for group_cache_ttl, keyed by the
// account's immutable id: a DN is given again to the next account of the
// same name, which must not inherit the cached groups of the last one.
type groupCache struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]cachedGroups
}

type cachedGroups struct {
	groups  []Group
	expires time.Time
}

const groupCacheMax = 50000

func (c *groupCache) get(id string, now time.Time) ([]Group, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[strings.ToLower(id)]
	if !ok || !now.Before(e.expires) {
		return nil, false
	}
	return e.groups, true
}

func (c *groupCache) put(id string, g []Group, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= groupCacheMax {
		for k, e := range c.m {
			if !now.Before(e.expires) || len(c.m) >= groupCacheMax {
				delete(c.m, k)
			}
		}
	}
	c.m[strings.ToLower(id)] = cachedGroups{groups: g, expires: now.Add(c.ttl)}
}

func (c *groupCache) drop(id string) {
	c.mu.Lock()
	delete(c.m, strings.ToLower(id))
	c.mu.Unlock()
}

// sidCache maps binary SIDs to groups (a zero Group for a SID with no group
// entry, such as a well-known SID).
type sidCache struct {
	mu sync.Mutex
	m  map[string]sidEntry
}

type sidEntry struct {
	g       Group
	expires time.Time
}

// userAttrs are the attributes read in the user search for a mode.
func userAttrs(mode string, loginAttrs []string) []string {
	a := []string{"displayName", "cn", "mail", "uid", "sAMAccountName", "userPrincipalName"}
	a = append(a, idAttrs...)
	switch mode {
	case GroupModeMemberOf:
		a = append(a, "memberOf")
	case GroupModeAD, GroupModeADInChain:
		// For the primary group, which no member link names.
		a = append(a, "objectSid", "primaryGroupID")
	}
	return append(a, loginAttrs...)
}

// groups resolves the user's groups with the service connection c.
func (a *Authenticator) groups(ctx context.Context, c *ldap.Conn, user *ldap.Entry) ([]Group, error) {
	var (
		gs  []Group
		err error
	)
	switch a.cfg.GroupMode {
	case GroupModeAD:
		gs, err = a.tokenGroups(ctx, c, user.DN)
		if err == errNoTokenGroups {
			gs, err = a.inChain(ctx, c, user)
		}
	case GroupModeADInChain:
		gs, err = a.inChain(ctx, c, user)
	case GroupModeMemberOf:
		gs, err = a.memberOf(ctx, c, user)
	case GroupModePosix:
		gs, err = a.posix(ctx, c, user)
	default:
		err = fmt.Errorf("ldapauth: unknown group mode %q", a.cfg.GroupMode)
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(gs, func(i, j int) bool { return strings.ToLower(gs[i].Name) < strings.ToLower(gs[j].Name) })
	return gs, nil
}

var errNoTokenGroups = fmt.Errorf("ldapauth: directory returned no tokenGroups")

func (a *Authenticator) search(ctx context.Context, c *ldap.Conn, req *ldap.SearchRequest, paged bool) (*ldap.SearchResult, error) {
	var res *ldap.SearchResult
	err := withCtx(ctx, c, a.cfg.RequestTimeout.D(), func() error {
		var err error
		a.stats.ops.Add(1)
		if paged {
			res, err = c.SearchWithPaging(req, uint32(a.cfg.PageSize))
		} else {
			res, err = c.Search(req)
		}
		return err
	})
	return res, err
}

func (a *Authenticator) tokenGroups(ctx context.Context, c *ldap.Conn, userDN string) ([]Group, error) {
	res, err := a.search(ctx, c, ldap.NewSearchRequest(userDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, 0, false, "(objectClass=*)", []string{"tokenGroups"}, nil), false)
	if err != nil {
		return nil, fmt.Errorf("ldapauth: read tokenGroups: %w", err)
	}
	if len(res.Entries) != 1 {
		return nil, errNoTokenGroups
	}
	sids := res.Entries[0].GetRawAttributeValues("tokenGroups")
	if len(sids) == 0 {
		return nil, errNoTokenGroups
	}
	now := a.now()
	var (
		out     []Group
		missing [][]byte
	)
	a.sids.mu.Lock()
	for _, s := range sids {
		if e, ok := a.sids.m[string(s)]; ok && now.Before(e.expires) {
			if e.g.DN != "" {
				out = append(out, e.g)
			}
			continue
		}
		missing = append(missing, s)
	}
	a.sids.mu.Unlock()
	// Resolve unknown SIDs in batches, with every byte hex-escaped.
	for len(missing) > 0 {
		batch := missing[:min(len(missing), 100)]
		missing = missing[len(batch):]
		var f strings.Builder
		f.WriteString("(|")
		for _, s := range batch {
			f.WriteString("(objectSid=" + escapeBytes(s) + ")")
		}
		f.WriteString(")")
		res, err := a.search(ctx, c, ldap.NewSearchRequest(a.cfg.GroupBase, ldap.ScopeWholeSubtree,
			ldap.NeverDerefAliases, 0, 0, false, f.String(), []string{"objectSid", "sAMAccountName", "cn"}, nil), true)
		if err != nil {
			return nil, fmt.Errorf("ldapauth: resolve group SIDs: %w", err)
		}
		found := map[string]Group{}
		for _, e := range res.Entries {
			found[string(e.GetRawAttributeValue("objectSid"))] = groupOf(e)
		}
		a.sids.mu.Lock()
		for _, s := range batch {
			g := found[string(s)]
			a.sids.m[string(s)] = sidEntry{g: g, expires: now.Add(a.sidTTL())}
			if g.DN != "" {
				out = append(out, g)
			}
		}
		a.sids.mu.Unlock()
	}
	return out, nil
}

// inChain finds the groups user is in, directly or nested, with the
// in-chain rule on member, and its primary group (primaryGroupID, which no
// member link names: Domain Users for most accounts) with the groups that
// contain that group, as tokenGroups has them.
func (a *Authenticator) inChain(ctx context.Context, c *ldap.Conn, user *ldap.Entry) ([]Group, error) {
	out, err := a.groupsInChain(ctx, c, user.DN)
	if err != nil {
		return nil, err
	}
	pg, err := a.primaryGroup(ctx, c, user)
	if err != nil || pg.DN == "" {
		return out, err
	}
	// The groups above it count wherever it lies, as with tokenGroups;
	// the group itself only under group_base.
	outer, err := a.groupsInChain(ctx, c, pg.DN)
	if err != nil {
		return nil, err
	}
	if base, err := ldap.ParseDN(a.cfg.GroupBase); err == nil {
		if dn, err := ldap.ParseDN(pg.DN); err == nil && base.AncestorOfFold(dn) {
			outer = append([]Group{pg}, outer...)
		}
	}
	seen := map[string]bool{}
	for _, g := range out {
		seen[strings.ToLower(g.DN)] = true
	}
	for _, g := range outer {
		if k := strings.ToLower(g.DN); !seen[k] {
			seen[k] = true
			out = append(out, g)
		}
	}
	return out, nil
}

// groupsInChain lists the groups under group_base that have dn as a
// member, directly or nested.
func (a *Authenticator) groupsInChain(ctx context.Context, c *ldap.Conn, dn string) ([]Group, error) {
	filter := "(&(objectClass=group)(member:1.2.840.113556.1.4.1941:=" + ldap.EscapeFilter(dn) + "))"
	res, err := a.search(ctx, c, ldap.NewSearchRequest(a.cfg.GroupBase, ldap.ScopeWholeSubtree,
		ldap.NeverDerefAliases, 0, 0, false, filter, []string{"sAMAccountName", "cn"}, nil), true)
	if err != nil {
		return nil, fmt.Errorf("ldapauth: in-chain group search: %w", err)
	}
	out := make([]Group, 0, len(res.Entries))
	for _, e := range res.Entries {
		out = append(out, groupOf(e))
	}
	return out, nil
}

// primaryGroup resolves the user's primary group anywhere in the user's
// domain (the DC= components of its DN; user_base without them): its SID
// is the user's with the last sub-authority replaced by primaryGroupID. A
// zero Group when the user has none.
func (a *Authenticator) primaryGroup(ctx context.Context, c *ldap.Conn, user *ldap.Entry) (Group, error) {
	rid, err := strconv.ParseUint(user.GetAttributeValue("primaryGroupID"), 10, 32)
	if err != nil || rid == 0 {
		return Group{}, nil
	}
	sid, ok := withRID(user.GetRawAttributeValue("objectSid"), uint32(rid))
	if !ok {
		return Group{}, nil
	}
	now := a.now()
	a.sids.mu.Lock()
	e, hit := a.sids.m[string(sid)]
	a.sids.mu.Unlock()
	if hit && now.Before(e.expires) {
		return e.g, nil
	}
	res, err := a.search(ctx, c, ldap.NewSearchRequest(a.domainBase(user.DN), ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, 0, false, "(&(objectClass=group)(objectSid="+escapeBytes(sid)+"))", []string{"objectSid", "sAMAccountName", "cn"}, nil), false)
	if err != nil {
		return Group{}, fmt.Errorf("ldapauth: resolve the primary group: %w", err)
	}
	var g Group
	if len(res.Entries) == 1 {
		g = groupOf(res.Entries[0])
	}
	a.sids.mu.Lock()
	a.sids.m[string(sid)] = sidEntry{g: g, expires: now.Add(a.sidTTL())}
	a.sids.mu.Unlock()
	return g, nil
}

// domainBase is the naming context of the domain that holds dn: its
// trailing DC= components, or user_base when it has none.
func (a *Authenticator) domainBase(dn string) string {
	parsed, err := ldap.ParseDN(dn)
	if err != nil {
		return a.cfg.UserBase
	}
	i := len(parsed.RDNs)
	for i > 0 {
		r := parsed.RDNs[i-1]
		if len(r.Attributes) != 1 || !strings.EqualFold(r.Attributes[0].Type, "DC") {
			break
		}
		i--
	}
	if i == len(parsed.RDNs) {
		return a.cfg.UserBase
	}
	parts := make([]string, 0, len(parsed.RDNs)-i)
	for _, r := range parsed.RDNs[i:] {
		parts = append(parts, "DC="+ldap.EscapeDN(r.Attributes[0].Value))
	}
	return strings.Join(parts, ",")
}

// withRID returns a copy of the binary SID sid with its last sub-authority
// (the RID) set to rid; ok is false for a value that is not a SID with at
// least one sub-authority.
func withRID(sid []byte, rid uint32) ([]byte, bool) {
	if len(sid) < 12 || sid[0] != 1 {
		return nil, false
	}
	n := int(sid[1])
	if n < 1 || len(sid) != 8+4*n {
		return nil, false
	}
	out := slices.Clone(sid)
	binary.LittleEndian.PutUint32(out[len(out)-4:], rid)
	return out, true
}

func (a *Authenticator) memberOf(ctx context.Context, c *ldap.Conn, user *ldap.Entry) ([]Group, error) {
	seen := map[string]bool{}
	var out []Group
	// Only groups under group_base count, as in the other modes: a group
	// of the same name elsewhere (a delegated OU, a self-service branch)
	// must not grant access or roles.
	base, berr := ldap.ParseDN(a.cfg.GroupBase)
	queue := user.GetAttributeValues("memberOf")
	for depth := 0; len(queue) > 0 && depth < maxNesting; depth++ {
		var next []string
		for _, dn := range queue {
			k := strings.ToLower(dn)
			if seen[k] {
				continue
			}
			seen[k] = true
			if gdn, err := ldap.ParseDN(dn); berr != nil || err != nil || !base.AncestorOfFold(gdn) {
				continue
			}
			res, err := a.search(ctx, c, ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
				1, 0, false, "(objectClass=*)", []string{"cn", "memberOf"}, nil), false)
			if err != nil {
				if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
					continue
				}
				return nil, fmt.Errorf("ldapauth: read group %s: %w", dn, err)
			}
			for _, e := range res.Entries {
				out = append(out, groupOf(e))
				next = append(next, e.GetAttributeValues("memberOf")...)
			}
		}
		queue = next
	}
	return out, nil
}

func (a *Authenticator) posix(ctx context.Context, c *ldap.Conn, user *ldap.Entry) ([]Group, error) {
	uid := user.GetAttributeValue("uid")
	if uid == "" {
		return nil, nil
	}
	filter := "(&(objectClass=posixGroup)(memberUid=" + ldap.EscapeFilter(uid) + "))"
	res, err := a.search(ctx, c, ldap.NewSearchRequest(a.cfg.GroupBase, ldap.ScopeWholeSubtree,
		ldap.NeverDerefAliases, 0, 0, false, filter, []string{"cn"}, nil), true)
	if err != nil {
		return nil, fmt.Errorf("ldapauth: posix group search: %w", err)
	}
	out := make([]Group, 0, len(res.Entries))
	for _, e := range res.Entries {
		out = append(out, groupOf(e))
	}
	return out, nil
}

func groupOf(e *ldap.Entry) Group {
	name := e.GetAttributeValue("sAMAccountName")
	if name == "" {
		name = e.GetAttributeValue("cn")
	}
	if name == "" {
		if dn, err := ldap.ParseDN(e.DN); err == nil && len(dn.RDNs) > 0 && len(dn.RDNs[0].Attributes) > 0 {
			name = dn.RDNs[0].Attributes[0].Value
		}
	}
	return Group{DN: e.DN, Name: name}
}

// matchGroup says whether g is the group named by ref (a name or a DN).
func matchGroup(g Group, ref string) bool {
	if strings.Contains(ref, "=") {
		return strings.EqualFold(normDN(g.DN), normDN(ref))
	}
	return strings.EqualFold(g.Name, ref)
}

func normDN(s string) string {
	dn, err := ldap.ParseDN(s)
	if err != nil {
		return s
	}
	parts := make([]string, 0, len(dn.RDNs))
	for _, r := range dn.RDNs {
		var av []string
		for _, at := range r.Attributes {
			av = append(av, strings.ToLower(at.Type)+"="+strings.ToLower(at.Value))
		}
		parts = append(parts, strings.Join(av, "+"))
	}
	return strings.Join(parts, ",")
}
