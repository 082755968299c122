// Package slapd runs a real OpenLDAP server for tests: its own config and
// database in a temporary directory, LDAPS on a free loopback port with a
// certificate from a CA the harness generates, the memberof overlay (so
// groupOfNames membership shows as memberOf on users and nested groups) and
// the nis schema (posixAccount, posixGroup).
//
//	s, err := slapd.Start(ctx, slapd.Options{})
//	defer s.Stop()
//	s.AddUser(ctx, "alice", "pw", 10001)
//	s.AddGroup(ctx, "devs", s.UserDN("alice"))
//	s.AddPosixGroup(ctx, "staff", 5000, "alice")
//
// The service account ServiceDN (password ServicePassword) may read
// everything; users may only bind. Available says why slapd cannot run here.
package slapd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/internal/pki"
)

// Names in the test directory.
const (
	BaseDN    = "dc=example,dc=org"
	PeopleDN  = "ou=people," + BaseDN
	GroupsDN  = "ou=groups," + BaseDN
	AdminDN   = "cn=admin," + BaseDN
	ServiceDN = "cn=svc,ou=services," + BaseDN
)

// Options configure Start; the zero value is fine.
type Options struct{}

// Server is a running slapd.
type Server struct {
	URL             string // ldaps://127.0.0.1:PORT
	PlainURL        string // ldap://127.0.0.1:PORT, plaintext, for tests that read the protocol on the wire
	CAFile          string
	ServicePassword string
	AdminPassword   string

	dir      string
	cmd      *exec.Cmd
	done     chan error
	stopOnce sync.Once
	pool     *x509.CertPool
}

const modulePath = "/usr/lib/ldap"

// Available reports why slapd cannot run here, or nil.
func Available() error {
	if _, err := exec.LookPath("slapd"); err != nil {
		if _, err := os.Stat("/usr/sbin/slapd"); err != nil {
			return errors.New("slapd: not installed (Debian slapd)")
		}
	}
	for _, m := range []string{"back_mdb.so", "memberof.so"} {
		if _, err := os.Stat(filepath.Join(modulePath, m)); err != nil {
			return fmt.Errorf("slapd: module %s missing", m)
		}
	}
	return nil
}

func slapdPath() string {
	if p, err := exec.LookPath("slapd"); err == nil {
		return p
	}
	return "/usr/sbin/slapd"
}

// Start configures and starts slapd and seeds the base entries.
func Start(ctx context.Context, _ Options) (_ *Server, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "slapd-")
	if err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	s := &Server{dir: dir, AdminPassword: randHex(12), ServicePassword: randHex(12), done: make(chan error, 1)}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if err := s.writeCerts(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "db"), 0o700); err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	// Two free ports, both held until both are chosen so they differ.
	var ports [2]int
	var lns []net.Listener
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("slapd: %w", err)
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	for _, ln := range lns {
		ln.Close()
	}
	s.URL = "ldaps://127.0.0.1:" + strconv.Itoa(ports[0])
	s.PlainURL = "ldap://127.0.0.1:" + strconv.Itoa(ports[1])

	conf := fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath %[1]s
moduleload back_mdb
moduleload memberof
pidfile %[2]s/slapd.pid
argsfile %[2]s/slapd.args
TLSCACertificateFile %[2]s/ca.pem
TLSCertificateFile %[2]s/server.pem
TLSCertificateKeyFile %[2]s/server.key
database mdb
maxsize 67108864
suffix "%[3]s"
rootdn "%[4]s"
rootpw %[5]s
directory %[2]s/db
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
access to attrs=userPassword
  by anonymous auth
  by * none
access to *
  by dn.exact="%[6]s" read
  by * none
`, modulePath, dir, BaseDN, AdminDN, s.AdminPassword, ServiceDN)
	confFile := filepath.Join(dir, "slapd.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "slapd.log"))
	if err != nil {
		return nil, fmt.Errorf("slapd: %w", err)
	}
	defer logf.Close()
	s.cmd = exec.Command(slapdPath(), "-d", "0", "-f", confFile, "-h", s.URL+"/ "+s.PlainURL+"/")
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("slapd: start: %w", err)
	}
	go func() { s.done <- s.cmd.Wait() }()

	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := s.dial(AdminDN, s.AdminPassword)
		if err == nil {
			c.Close()
			break
		}
		select {
		case werr := <-s.done:
			s.done <- werr
			b, _ := os.ReadFile(filepath.Join(dir, "slapd.log"))
			return nil, fmt.Errorf("slapd: exited (%v): %s", werr, b)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("slapd: not ready: %w", err)
		}
	}
	base := []struct {
		dn    string
		attrs map[string][]string
	}{
		{BaseDN, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"}}},
		{PeopleDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"people"}}},
		{GroupsDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"groups"}}},
		{"ou=services," + BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"services"}}},
		{ServiceDN, map[string][]string{"objectClass": {"person"}, "cn": {"svc"}, "sn": {"svc"}, "userPassword": {s.ServicePassword}}},
	}
	for _, e := range base {
		if err := s.Add(ctx, e.dn, e.attrs); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Stop kills slapd and removes its directory.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
			}
		}
		os.RemoveAll(s.dir)
	})
}

// TLSConfig verifies the server against CAFile.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

func (s *Server) dial(dn, pw string) (*ldap.Conn, error) {
	c, err := ldap.DialURL(s.URL, ldap.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}), ldap.DialWithTLSConfig(s.TLSConfig()))
	if err != nil {
		return nil, err
	}
	c.SetTimeout(10 * time.Second)
	if err := c.Bind(dn, pw); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Add creates an entry as the root DN.
func (s *Server) Add(_ context.Context, dn string, attrs map[string][]string) error {
	c, err := s.dial(AdminDN, s.AdminPassword)
	if err != nil {
		return fmt.Errorf("slapd: admin bind: %w", err)
	}
	defer c.Close()
	a := ldap.NewAddRequest(dn, nil)
	for k, v := range attrs {
		a.Attribute(k, v)
	}
	if err := c.Add(a); err != nil {
		return fmt.Errorf("slapd: add %s: %w", dn, err)
	}
	return nil
}

// UserDN is the DN AddUser gives uid.
func (s *Server) UserDN(uid string) string { return "uid=" + ldap.EscapeDN(uid) + "," + PeopleDN }

// GroupDN is the DN AddGroup and AddPosixGroup give cn.
func (s *Server) GroupDN(cn string) string { return "cn=" + ldap.EscapeDN(cn) + "," + GroupsDN }

// AddUser creates an inetOrgPerson + posixAccount with a password.
func (s *Server) AddUser(ctx context.Context, uid, password string, uidNumber int) error {
	return s.Add(ctx, s.UserDN(uid), map[string][]string{
		"objectClass":   {"inetOrgPerson", "posixAccount"},
		"uid":           {uid},
		"cn":            {uid},
		"sn":            {uid},
		"displayName":   {strings.ToUpper(uid[:1]) + uid[1:]},
		"mail":          {uid + "@example.org"},
		"uidNumber":     {strconv.Itoa(uidNumber)},
		"gidNumber":     {"100"},
		"homeDirectory": {"/home/" + uid},
		"userPassword":  {password},
	})
}

// AddGroup creates a groupOfNames with member DNs (users or groups); the
// memberof overlay then sets memberOf on each member.
func (s *Server) AddGroup(ctx context.Context, cn string, members ...string) error {
	return s.Add(ctx, s.GroupDN(cn), map[string][]string{
		"objectClass": {"groupOfNames"},
		"cn":          {cn},
		"member":      members,
	})
}

// AddPosixGroup creates a posixGroup listing member uids.
func (s *Server) AddPosixGroup(ctx context.Context, cn string, gid int, memberUIDs ...string) error {
	attrs := map[string][]string{
		"objectClass": {"posixGroup"},
		"cn":          {cn},
		"gidNumber":   {strconv.Itoa(gid)},
	}
	if len(memberUIDs) > 0 {
		attrs["memberUid"] = memberUIDs
	}
	return s.Add(ctx, "cn="+ldap.EscapeDN(cn)+",ou=posix,"+GroupsDN, attrs)
}

// AddPosixOU creates ou=posix under the groups, where AddPosixGroup puts
// posix groups (kept apart so they do not collide with groupOfNames names).
func (s *Server) AddPosixOU(ctx context.Context) error {
	return s.Add(ctx, "ou=posix,"+GroupsDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"posix"}})
}

func (s *Server) writeCerts() error {
	notAfter := time.Now().Add(7 * 24 * time.Hour)
	ca, err := pki.NewCA("slapd test CA", notAfter, x509.KeyUsageCertSign)
	if err != nil {
		return fmt.Errorf("slapd: %w", err)
	}
	leaf, err := ca.Issue(pki.Leaf{
		CommonName:  "127.0.0.1",
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost"},
		ExtKeyUsage: x509.ExtKeyUsageServerAuth,
		NotAfter:    notAfter,
	})
	if err != nil {
		return fmt.Errorf("slapd: %w", err)
	}
	s.CAFile = filepath.Join(s.dir, "ca.pem")
	if err := os.WriteFile(s.CAFile, pki.CertPEM(ca.DER), 0o600); err != nil {
		return fmt.Errorf("slapd: %w", err)
	}
	if err := leaf.WriteFiles(filepath.Join(s.dir, "server.pem"), 0o600, filepath.Join(s.dir, "server.key"), 0o600); err != nil {
		return fmt.Errorf("slapd: %w", err)
	}
	s.pool = x509.NewCertPool()
	s.pool.AddCert(ca.Cert)
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}
