// Package devdir is the embedded directory of `applianced dev`: a real LDAP
// server (LDAPS with a CA it generates) on loopback, seeded with demo users
// and nested groups, that ldapauth logs into with the same code as a
// production AD (group_mode = "memberof").
//
// It refuses to listen on anything but a loopback address, refuses searches
// from connections not bound as its service account, and only supports what
// ldapauth needs: simple bind, search (base, one level, subtree; equality,
// presence, substring, and/or/not filters), size limits. Wrong passwords and
// a disabled account are answered with the same diagnostic codes as AD
// (data 52e, 533) so `applianced ldap test` shows real reasons in the demo.
// It keeps everything in memory; nothing is written but the CA file.
package devdir

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/jimlambrt/gldap"

	"github.com/applianced/applianced/internal/conf"
	"github.com/applianced/applianced/internal/pki"
	"github.com/applianced/applianced/ldapauth"
)

// Names in the demo directory.
const (
	BaseDN    = "dc=applianced,dc=dev"
	PeopleDN  = "ou=people," + BaseDN
	GroupsDN  = "ou=groups," + BaseDN
	ServiceDN = "cn=applianced,ou=services," + BaseDN
	// SecretName is the bind_password_secret of Config; Server.Secret
	// answers it.
	SecretName = "ldap-bind"
)

// Options configure Start.
type Options struct {
	// Addr is the loopback address to listen on; default "127.0.0.1:0"
	// (a free port).
	Addr string
	// Dir receives ca.pem. Required.
	Dir string
	// Password, when set, is every demo user's password (for scripted
	// demos); default a random one per user.
	Password string
	// AnonymousSearch lets unauthenticated connections search (as some
	// OpenLDAP sites do), so a demo needs no service password in a vault;
	// Config then has no bind_dn. Default false: only the service account
	// searches.
	AnonymousSearch bool
}

// Credential is a demo account to print.
type Credential struct {
	Username string // uid
	Password string
	Note     string // what logging in with it shows
}

// Server is a running demo directory.
type Server struct {
	url     string
	anon    bool
	caFile  string
	svcPass string
	creds   []Credential
	srv     *gldap.Server
	done    chan error

	mu      sync.Mutex
	entries []*entry
	bound   map[int]string // connection ID → bound DN
}

type entry struct {
	dn       string
	attrs    [][2]string // name, value; in order
	password string
	disabled bool
}

func (e *entry) get(name string) []string {
	var out []string
	for _, a := range e.attrs {
		if strings.EqualFold(a[0], name) {
			out = append(out, a[1])
		}
	}
	return out
}

// Start seeds and starts the directory; it stops when ctx ends or Stop is
// called.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.Dir == "" {
		return nil, errors.New("devdir: Options.Dir is required")
	}
	ap, err := netip.ParseAddrPort(o.Addr)
	if err != nil {
		return nil, fmt.Errorf("devdir: address %q: %w", o.Addr, err)
	}
	if !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("devdir: %s is not a loopback address", o.Addr)
	}
	if ap.Port() == 0 {
		ln, err := net.Listen("tcp", o.Addr)
		if err != nil {
			return nil, fmt.Errorf("devdir: %w", err)
		}
		ap = netip.MustParseAddrPort(ln.Addr().String())
		ln.Close()
	}
	s := &Server{
		url:    "ldaps://" + ap.String(),
		anon:   o.AnonymousSearch,
		caFile: filepath.Join(o.Dir, "devdir-ca.pem"),
		bound:  map[int]string{},
		done:   make(chan error, 1),
	}
	tlsCfg, err := s.makeTLS(ap.Addr())
	if err != nil {
		return nil, err
	}
	s.seed(o.Password)

	gs, err := gldap.NewServer(gldap.WithLogger(hclog.NewNullLogger()), gldap.WithOnClose(func(id int) {
		s.mu.Lock()
		delete(s.bound, id)
		s.mu.Unlock()
	}))
	if err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	mux, err := gldap.NewMux()
	if err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	if err := mux.Bind(s.bind); err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	if err := mux.Search(s.search); err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	if err := mux.DefaultRoute(s.unsupported); err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	if err := gs.Router(mux); err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	s.srv = gs
	go func() { s.done <- gs.Run(ap.String(), gldap.WithTLSConfig(tlsCfg)) }()

	// Ready when a TLS connection succeeds.
	pool := x509.NewCertPool()
	b, _ := os.ReadFile(s.caFile)
	pool.AppendCertsFromPEM(b)
	deadline := time.Now().Add(10 * time.Second)
	for {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
		c, err := d.DialContext(ctx, "tcp", ap.String())
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-s.done:
			return nil, fmt.Errorf("devdir: server stopped: %w", err)
		case <-ctx.Done():
			gs.Stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			gs.Stop()
			return nil, fmt.Errorf("devdir: not ready: %w", err)
		}
	}
	context.AfterFunc(ctx, func() { gs.Stop() })
	return s, nil
}

// URL is the directory's ldaps:// URL.
func (s *Server) URL() string { return s.url }

// CAFile is the PEM file of the CA that signed the directory's certificate.
func (s *Server) CAFile() string { return s.caFile }

// Credentials are the demo accounts, to print.
func (s *Server) Credentials() []Credential { return append([]Credential(nil), s.creds...) }

// Secret answers the service account's password for SecretName; it is an
// ldapauth.SecretFunc.
func (s *Server) Secret(_ context.Context, name string) ([]byte, error) {
	if name != SecretName {
		return nil, fmt.Errorf("devdir: no secret %q", name)
	}
	return []byte(s.svcPass), nil
}

// BindPassword is the service account's password (to store in the vault
// under SecretName).
func (s *Server) BindPassword() string { return s.svcPass }

// Config is a ready ldapauth configuration for this directory: LDAPS
// verified against CAFile, memberof groups, only ai-users may log in. With
// AnonymousSearch it has no bind_dn.
func (s *Server) Config() ldapauth.Config {
	c := ldapauth.Config{
		URLs:               []string{s.url},
		CAFile:             s.caFile,
		BindDN:             ServiceDN,
		BindPasswordSecret: SecretName,
		UserBase:           PeopleDN,
		GroupBase:          GroupsDN,
		LoginAttributes:    []string{"uid", "mail"},
		GroupMode:          ldapauth.GroupModeMemberOf,
		AllowedGroups:      []string{"ai-users"},
		GroupRoles: map[string][]string{
			"ai-users": {"chat-user"},
			"helpdesk": {"ticket-user"},
		},
		DialTimeout:    conf.Duration(2 * time.Second),
		RequestTimeout: conf.Duration(5 * time.Second),
		GroupCacheTTL:  conf.Duration(time.Minute),
	}
	if s.anon {
		c.BindDN, c.BindPasswordSecret = "", ""
	}
	return c
}

// TOML is Config as an [ldap] section for applianced.toml, without
// group_roles (whose roles the config must define; add an
// [ldap.group_roles] table next to the [[role]] sections).
func (s *Server) TOML() string {
	c := s.Config()
	q := func(v string) string { return strconv.Quote(v) }
	var b strings.Builder
	b.WriteString("[ldap]\n")
	b.WriteString("urls = [" + q(c.URLs[0]) + "]\n")
	b.WriteString("ca_file = " + q(c.CAFile) + "\n")
	if c.BindDN != "" {
		b.WriteString("bind_dn = " + q(c.BindDN) + "\n")
		b.WriteString("bind_password_secret = " + q(c.BindPasswordSecret) + "\n")
	}
	b.WriteString("user_base = " + q(c.UserBase) + "\n")
	b.WriteString("group_base = " + q(c.GroupBase) + "\n")
	b.WriteString("login_attributes = [" + q(c.LoginAttributes[0]) + ", " + q(c.LoginAttributes[1]) + "]\n")
	b.WriteString("group_mode = " + q(c.GroupMode) + "\n")
	b.WriteString("allowed_groups = [" + q(c.AllowedGroups[0]) + "]\n")
	b.WriteString("dial_timeout = \"2s\"\nrequest_timeout = \"5s\"\ngroup_cache_ttl = \"1m\"\n")
	return b.String()
}

// Stop stops the server and closes its connections.
func (s *Server) Stop() error {
	if err := s.srv.Stop(); err != nil {
		return fmt.Errorf("devdir: %w", err)
	}
	return nil
}

func randPassword() string {
	const alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// seed builds the demo tree: alice is in ai-users through team-ai (nested),
// bob is disabled, carol is only in helpdesk (not allowed to log in).
func (s *Server) seed(fixed string) {
	pass := func() string {
		if fixed != "" {
			return fixed
		}
		return randPassword()
	}
	s.svcPass = randPassword()
	add := func(dn string, pw string, disabled bool, attrs ...string) {
		e := &entry{dn: dn, password: pw, disabled: disabled}
		// Every entry has its immutable id (RFC 4530), as OpenLDAP gives it.
		e.attrs = append(e.attrs, [2]string{"entryUUID", newUUID()})
		for i := 0; i+1 < len(attrs); i += 2 {
			e.attrs = append(e.attrs, [2]string{attrs[i], attrs[i+1]})
		}
		s.entries = append(s.entries, e)
	}
	group := func(cn string) string { return "cn=" + cn + "," + GroupsDN }
	person := func(uid string) string { return "uid=" + uid + "," + PeopleDN }
	add(BaseDN, "", false, "objectClass", "top", "objectClass", "domain", "dc", "applianced")
	add(PeopleDN, "", false, "objectClass", "organizationalUnit", "ou", "people")
	add(GroupsDN, "", false, "objectClass", "organizationalUnit", "ou", "groups")
	add("ou=services,"+BaseDN, "", false, "objectClass", "organizationalUnit", "ou", "services")
	add(ServiceDN, s.svcPass, false, "objectClass", "person", "cn", "applianced")

	users := []struct {
		uid, name, note string
		disabled        bool
		groups          []string
	}{
		{"alice", "Alice Example", "in ai-users through team-ai: logs in", false, []string{"team-ai"}},
		{"bob", "Bob Example", "disabled account: denied (account_disabled)", true, []string{"team-ai"}},
		{"carol", "Carol Example", "only in helpdesk: denied (not_in_allowed_groups)", false, []string{"helpdesk"}},
	}
	members := map[string][]string{}
	for _, u := range users {
		p := pass()
		attrs := []string{"objectClass", "inetOrgPerson", "objectClass", "person", "uid", u.uid, "cn", u.name,
			"displayName", u.name, "mail", u.uid + "@applianced.dev"}
		for _, g := range u.groups {
			attrs = append(attrs, "memberOf", group(g))
			members[g] = append(members[g], person(u.uid))
		}
		add(person(u.uid), p, u.disabled, attrs...)
		s.creds = append(s.creds, Credential{Username: u.uid, Password: p, Note: u.note})
	}
	members["ai-users"] = append(members["ai-users"], group("team-ai"))
	groups := []struct {
		cn       string
		memberOf []string
	}{
		{"team-ai", []string{"ai-users"}},
		{"ai-users", nil},
		{"helpdesk", nil},
	}
	for _, g := range groups {
		attrs := []string{"objectClass", "groupOfNames", "cn", g.cn}
		for _, m := range members[g.cn] {
			attrs = append(attrs, "member", m)
		}
		for _, p := range g.memberOf {
			attrs = append(attrs, "memberOf", group(p))
		}
		add(group(g.cn), "", false, attrs...)
	}
}

// newUUID is a random (version 4) UUID in its string form.
func newUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("devdir: crypto/rand failed: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func normDN(s string) string {
	dn, err := ldap.ParseDN(s)
	if err != nil {
		return strings.ToLower(s)
	}
	parts := make([]string, 0, len(dn.RDNs))
	for _, r := range dn.RDNs {
		var av []string
		for _, a := range r.Attributes {
			av = append(av, strings.ToLower(a.Type)+"="+strings.ToLower(a.Value))
		}
		parts = append(parts, strings.Join(av, "+"))
	}
	return strings.Join(parts, ",")
}

func (s *Server) find(dn string) *entry {
	n := normDN(dn)
	for _, e := range s.entries {
		if normDN(e.dn) == n {
			return e
		}
	}
	return nil
}

// adDiag is AD's bind diagnostic with a sub-code.
func adDiag(code string) string {
	return "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data " + code + ", v1db1"
}

func (s *Server) bind(w *gldap.ResponseWriter, r *gldap.Request) {
	resp := r.NewBindResponse(gldap.WithResponseCode(gldap.ResultInvalidCredentials))
	defer func() { _ = w.Write(resp) }()
	m, err := r.GetSimpleBindMessage()
	if err != nil {
		resp.SetResultCode(gldap.ResultAuthMethodNotSupported)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.bound, r.ConnectionID())
	if m.UserName == "" && m.Password == "" {
		resp.SetResultCode(gldap.ResultSuccess) // anonymous: may not search
		return
	}
	if m.Password == "" {
		resp.SetResultCode(gldap.ResultUnwillingToPerform)
		resp.SetDiagnosticMessage("unauthenticated bind (DN with no password) disallowed")
		return
	}
	e := s.find(m.UserName)
	if e == nil || e.password == "" {
		resp.SetDiagnosticMessage(adDiag("52e"))
		return
	}
	if subtle.ConstantTimeCompare([]byte(e.password), []byte(m.Password)) != 1 {
		resp.SetDiagnosticMessage(adDiag("52e"))
		return
	}
	if e.disabled {
		resp.SetDiagnosticMessage(adDiag("533"))
		return
	}
	s.bound[r.ConnectionID()] = e.dn
	resp.SetResultCode(gldap.ResultSuccess)
}

func (s *Server) search(w *gldap.ResponseWriter, r *gldap.Request) {
	done := r.NewSearchDoneResponse(gldap.WithResponseCode(gldap.ResultSuccess))
	defer func() { _ = w.Write(done) }()
	m, err := r.GetSearchMessage()
	if err != nil {
		done.SetResultCode(gldap.ResultProtocolError)
		return
	}
	if m.BaseDN == "" && m.Scope == gldap.BaseObject {
		// Root DSE, readable by anyone (used as a health check).
		e := r.NewSearchResponseEntry("")
		e.AddAttribute("supportedLDAPVersion", []string{"3"})
		e.AddAttribute("namingContexts", []string{BaseDN})
		_ = w.Write(e)
		return
	}
	s.mu.Lock()
	who := s.bound[r.ConnectionID()]
	s.mu.Unlock()
	if !strings.EqualFold(who, ServiceDN) && !(s.anon && who == "") {
		done.SetResultCode(gldap.ResultInsufficientAccessRights)
		done.SetDiagnosticMessage("only the service account may search")
		return
	}
	f, err := ldap.CompileFilter(m.Filter)
	if err != nil {
		done.SetResultCode(gldap.ResultProtocolError)
		return
	}
	base := normDN(m.BaseDN)
	if s.find(m.BaseDN) == nil {
		done.SetResultCode(gldap.ResultNoSuchObject)
		return
	}
	sent := int64(0)
	for _, e := range s.entries {
		n := normDN(e.dn)
		in := false
		switch m.Scope {
		case gldap.BaseObject:
			in = n == base
		case gldap.SingleLevel:
			_, parent, ok := strings.Cut(n, ",")
			in = ok && parent == base
		case gldap.WholeSubtree:
			in = n == base || strings.HasSuffix(n, ","+base)
		}
		if !in || !match(f, e) {
			continue
		}
		if m.SizeLimit > 0 && sent >= m.SizeLimit {
			done.SetResultCode(gldap.ResultSizeLimitExceeded)
			return
		}
		out := r.NewSearchResponseEntry(e.dn)
		for name, vals := range selectAttrs(e, m.Attributes) {
			out.AddAttribute(name, vals)
		}
		if err := w.Write(out); err != nil {
			return
		}
		sent++
	}
}

func selectAttrs(e *entry, want []string) map[string][]string {
	out := map[string][]string{}
	all := len(want) == 0
	for _, w := range want {
		if w == "*" {
			all = true
		}
	}
	for _, a := range e.attrs {
		// An operational attribute is returned only when asked for by name.
		ok := all && !strings.EqualFold(a[0], "entryUUID")
		for _, w := range want {
			if strings.EqualFold(w, a[0]) {
				ok = true
			}
		}
		if ok {
			out[a[0]] = append(out[a[0]], a[1])
		}
	}
	return out
}

func (s *Server) unsupported(w *gldap.ResponseWriter, r *gldap.Request) {
	_ = w.Write(r.NewResponse(gldap.WithResponseCode(gldap.ResultUnwillingToPerform),
		gldap.WithDiagnosticMessage("the demo directory is read-only")))
}

func (s *Server) makeTLS(ip netip.Addr) (*tls.Config, error) {
	notAfter := time.Now().Add(30 * 24 * time.Hour)
	ca, err := pki.NewCA("applianced dev directory CA", notAfter, x509.KeyUsageCertSign)
	if err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	leaf, err := ca.Issue(pki.Leaf{
		CommonName:  "localhost",
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{ip.AsSlice()},
		ExtKeyUsage: x509.ExtKeyUsageServerAuth,
		NotAfter:    notAfter,
	})
	if err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	if err := os.WriteFile(s.caFile, pki.CertPEM(ca.DER), 0o644); err != nil {
		return nil, fmt.Errorf("devdir: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.DER}, PrivateKey: leaf.Key}},
		MinVersion:   tls.VersionTLS12,
	}, nil
}
