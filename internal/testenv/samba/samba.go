// Package samba runs a real Samba Active Directory domain controller for
// tests: it provisions a fresh domain in a temporary directory, gives the DC
// its own network namespace joined to the test process by a veth pair with
// addresses in a private /30, and serves LDAPS (636) and StartTLS (389) with a
// certificate from a CA the harness generates (Samba's self-made certificate
// has a negative serial number, which crypto/x509 refuses; a real site uses
// its own CA too).
//
// Provisioning takes seconds, so start one DC per test binary in TestMain and
// share it:
//
//	func TestMain(m *testing.M) {
//		if err := samba.Available(); err != nil {
//			fmt.Println("skipping Samba tests:", err)
//			os.Exit(m.Run()) // tests call t.Skip when dc == nil
//		}
//		dc, err := samba.Start(context.Background(), samba.Options{})
//		if err != nil { log.Fatal(err) }
//		code := m.Run()
//		dc.Stop()
//		os.Exit(code)
//	}
//
// Then tests add what they need with distinct names (AddUser, AddGroup,
// AddMembers, Disable, Lock, ExpireAccount, ExpirePassword,
// MustChangePassword, DenyLogonHours) and connect
// to LDAPSURL or StartTLSURL, verifying against CAFile with ServerName.
//
// The package refuses to run without root and the samba, samba-tool and ip
// binaries (Available says which is missing). Nothing it starts listens
// outside its own namespace, and Stop removes the namespace, the veth pair,
// the processes and the directory.
package samba

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf16"

	"github.com/go-ldap/ldap/v3"

	"github.com/applianced/applianced/internal/pki"
)

// Default domain names.
const (
	DefaultRealm  = "CORP.EXAMPLE"
	DefaultDomain = "CORP"
)

// Options configure Start. The zero value is a usable default.
type Options struct {
	Realm  string // DNS realm, default CORP.EXAMPLE
	Domain string // NetBIOS domain, default CORP
	// LockoutThreshold is the domain's bad-password count that locks an
	// account (default 5). Lock performs that many wrong binds.
	LockoutThreshold int
	// Dir is where the domain is provisioned; default a new temporary
	// directory removed by Stop.
	Dir string
}

// DC is a running Samba AD domain controller.
type DC struct {
	Realm      string // "CORP.EXAMPLE"
	Domain     string // "CORP"
	BaseDN     string // "DC=corp,DC=example"
	UsersDN    string // "CN=Users,DC=corp,DC=example"
	Hostname   string // the name in the DC certificate: "dc1.corp.example"
	IP         netip.Addr
	CAFile     string // PEM of the CA that issued the DC certificate
	AdminDN    string // "CN=Administrator,CN=Users,..."
	AdminPass  string
	Dir        string
	Netns      string
	lockout    int
	hostVeth   string
	ownDir     bool
	cmd        *exec.Cmd
	waitErr    chan error
	logFile    string
	stopOnce   sync.Once
	caPool     *x509.CertPool
	adminMu    sync.Mutex
	adminConn  *ldap.Conn
	tlsTimeout time.Duration
}

// Available reports why a DC cannot run here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("samba: needs root (network namespaces)")
	}
	for _, b := range []string{"samba", "samba-tool", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("samba: %s not installed (Debian samba, samba-ad-dc, iproute2)", b)
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return errors.New("samba: no network namespace support")
	}
	return nil
}

// Start provisions a domain and starts its DC. Call Stop when done.
func Start(ctx context.Context, o Options) (_ *DC, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if o.Realm == "" {
		o.Realm = DefaultRealm
	}
	if o.Domain == "" {
		o.Domain = DefaultDomain
	}
	if o.LockoutThreshold == 0 {
		o.LockoutThreshold = 5
	}
	sweepStale()
	dc := &DC{
		Realm:      strings.ToUpper(o.Realm),
		Domain:     strings.ToUpper(o.Domain),
		AdminPass:  "Adm1n-" + randHex(8) + "!",
		Dir:        o.Dir,
		lockout:    o.LockoutThreshold,
		tlsTimeout: 10 * time.Second,
	}
	var dcs []string
	for _, p := range strings.Split(strings.ToLower(dc.Realm), ".") {
		dcs = append(dcs, "DC="+p)
	}
	dc.BaseDN = strings.Join(dcs, ",")
	dc.UsersDN = "CN=Users," + dc.BaseDN
	dc.AdminDN = "CN=Administrator," + dc.UsersDN
	dc.Hostname = "dc1." + strings.ToLower(dc.Realm)
	if dc.Dir == "" {
		d, err := os.MkdirTemp("", "samba-dc-")
		if err != nil {
			return nil, fmt.Errorf("samba: %w", err)
		}
		dc.Dir, dc.ownDir = d, true
	}
	defer func() {
		if err != nil {
			dc.Stop()
		}
	}()

	pid := os.Getpid()
	dc.Netns = fmt.Sprintf("appl-smb-%d", pid)
	dc.hostVeth = fmt.Sprintf("asmb%dh", pid)
	nsVeth := fmt.Sprintf("asmb%dn", pid)
	idx := uint32(pid%16000) * 4
	base := netip.AddrFrom4([4]byte{10, 231, byte(idx >> 8), byte(idx)})
	hostIP := base.Next()
	dc.IP = hostIP.Next()

	if err := dc.writeCerts(); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"netns", "add", dc.Netns},
		{"-n", dc.Netns, "link", "set", "lo", "up"},
		{"link", "add", dc.hostVeth, "type", "veth", "peer", "name", nsVeth, "netns", dc.Netns},
		{"addr", "add", hostIP.String() + "/30", "dev", dc.hostVeth},
		{"link", "set", dc.hostVeth, "up"},
		{"-n", dc.Netns, "addr", "add", dc.IP.String() + "/30", "dev", nsVeth},
		{"-n", dc.Netns, "link", "set", nsVeth, "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("samba: ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}

	run := filepath.Join(dc.Dir, "run")
	tlsDir := filepath.Join(dc.Dir, "tls")
	opt := func(k, v string) string { return "--option=" + k + " = " + v }
	prov := exec.CommandContext(ctx, "samba-tool", "domain", "provision",
		"--realm="+dc.Realm, "--domain="+dc.Domain, "--adminpass="+dc.AdminPass,
		"--server-role=dc", "--dns-backend=NONE", "--use-rfc2307",
		"--host-name=dc1", "--targetdir="+filepath.Join(dc.Dir, "d"),
		opt("server services", "ldap"),
		opt("tls enabled", "yes"),
		opt("tls keyfile", filepath.Join(tlsDir, "dc.key")),
		opt("tls certfile", filepath.Join(tlsDir, "dc.pem")),
		opt("tls cafile", filepath.Join(tlsDir, "ca.pem")),
		opt("pid directory", run),
		opt("ncalrpc dir", filepath.Join(run, "ncalrpc")),
		opt("winbindd socket directory", filepath.Join(run, "winbindd")),
		opt("ntp signd socket directory", filepath.Join(run, "ntp")),
		opt("log file", filepath.Join(dc.Dir, "log.%m")),
	)
	if out, err := prov.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("samba: provision: %v: %s", err, tail(out))
	}
	dc.logFile = filepath.Join(dc.Dir, "samba.out")
	lf, err := os.Create(dc.logFile)
	if err != nil {
		return nil, fmt.Errorf("samba: %w", err)
	}
	defer lf.Close()
	// Not CommandContext: the DC outlives the ctx of Start.
	dc.cmd = exec.Command("ip", "netns", "exec", dc.Netns,
		"samba", "-i", "-d1", "-s", filepath.Join(dc.Dir, "d", "etc", "smb.conf"))
	dc.cmd.Stdout, dc.cmd.Stderr = lf, lf
	dc.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := dc.cmd.Start(); err != nil {
		return nil, fmt.Errorf("samba: start: %w", err)
	}
	dc.waitErr = make(chan error, 1)
	go func() { dc.waitErr <- dc.cmd.Wait() }()

	if err := dc.waitReady(ctx); err != nil {
		return nil, err
	}
	if err := dc.setPolicy(ctx); err != nil {
		return nil, err
	}
	return dc, nil
}

func (dc *DC) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := dc.dialAdmin(ctx)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case werr := <-dc.waitErr:
			dc.waitErr <- werr
			b, _ := os.ReadFile(dc.logFile)
			return fmt.Errorf("samba: DC exited (%v): %s", werr, tail(b))
		case <-ctx.Done():
			return fmt.Errorf("samba: waiting for DC: %w", ctx.Err())
		case <-time.After(150 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("samba: DC not ready: %w", err)
		}
	}
}

// LDAPSURL is the DC's LDAPS endpoint ("ldaps://10.231.x.y:636").
func (dc *DC) LDAPSURL() string { return "ldaps://" + net.JoinHostPort(dc.IP.String(), "636") }

// StartTLSURL is the DC's plain LDAP endpoint, for StartTLS.
func (dc *DC) StartTLSURL() string { return "ldap://" + net.JoinHostPort(dc.IP.String(), "389") }

// Addr is the DC's LDAPS host:port, for proxies in front of it.
func (dc *DC) Addr() string { return net.JoinHostPort(dc.IP.String(), "636") }

// TLSConfig verifies the DC against CAFile under Hostname.
func (dc *DC) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: dc.caPool, ServerName: dc.Hostname, MinVersion: tls.VersionTLS12}
}

// UPN returns name@realm.
func (dc *DC) UPN(name string) string { return name + "@" + strings.ToLower(dc.Realm) }

// Stop ends the DC and removes its namespace, veth pair and directory. It is
// safe to call more than once.
func (dc *DC) Stop() {
	dc.stopOnce.Do(func() {
		dc.adminMu.Lock()
		if dc.adminConn != nil {
			dc.adminConn.Close()
		}
		dc.adminMu.Unlock()
		if dc.cmd != nil && dc.cmd.Process != nil {
			_ = syscall.Kill(-dc.cmd.Process.Pid, syscall.SIGKILL)
			select {
			case <-dc.waitErr:
			case <-time.After(5 * time.Second):
			}
		}
		if dc.Netns != "" {
			killNetns(dc.Netns)
			_ = exec.Command("ip", "link", "del", dc.hostVeth).Run()
			_ = exec.Command("ip", "netns", "del", dc.Netns).Run()
		}
		if dc.ownDir {
			os.RemoveAll(dc.Dir)
		}
	})
}

// killNetns kills every process left in the namespace.
func killNetns(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
}

// sweepStale removes namespaces left by test binaries that died without
// Stop (kill -9).
func sweepStale() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "appl-smb-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue
		}
		killNetns(e.Name())
		_ = exec.Command("ip", "link", "del", fmt.Sprintf("asmb%dh", pid)).Run()
		_ = exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}

func (dc *DC) writeCerts() error {
	dir := filepath.Join(dc.Dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("samba: %w", err)
	}
	ca, err := newCA("Samba test CA " + dc.Realm)
	if err != nil {
		return err
	}
	leaf, err := ca.Issue(pki.Leaf{
		CommonName:  dc.Hostname,
		DNSNames:    []string{dc.Hostname},
		ExtKeyUsage: x509.ExtKeyUsageServerAuth,
		NotAfter:    time.Now().Add(7 * 24 * time.Hour),
	})
	if err != nil {
		return fmt.Errorf("samba: dc certificate: %w", err)
	}
	dc.CAFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(dc.CAFile, pki.CertPEM(ca.DER), 0o644); err != nil {
		return fmt.Errorf("samba: %w", err)
	}
	if err := leaf.WriteFiles(filepath.Join(dir, "dc.pem"), 0o644, filepath.Join(dir, "dc.key"), 0o600); err != nil {
		return fmt.Errorf("samba: %w", err)
	}
	dc.caPool = x509.NewCertPool()
	dc.caPool.AddCert(ca.Cert)
	return nil
}

// NewCA makes a self-signed ECDSA CA (a second, unrelated CA is what a
// wrong-CA test needs). It returns the key and the DER certificate.
func NewCA(cn string) (*ecdsa.PrivateKey, []byte, error) {
	ca, err := newCA(cn)
	if err != nil {
		return nil, nil, err
	}
	return ca.Key, ca.DER, nil
}

func newCA(cn string) (*pki.CA, error) {
	ca, err := pki.NewCA(cn, time.Now().Add(7*24*time.Hour), x509.KeyUsageCertSign|x509.KeyUsageCRLSign)
	if err != nil {
		return nil, fmt.Errorf("samba: ca: %w", err)
	}
	return ca, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

func tail(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// dialAdmin opens a new LDAPS connection bound as Administrator.
func (dc *DC) dialAdmin(ctx context.Context) (*ldap.Conn, error) {
	return dc.dialAs(ctx, dc.AdminDN, dc.AdminPass)
}

func (dc *DC) dialAs(ctx context.Context, dn, pass string) (*ldap.Conn, error) {
	cfg := dc.TLSConfig()
	if cfg.RootCAs == nil {
		return nil, errors.New("samba: no CA")
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := ldap.DialURL(dc.LDAPSURL(), ldap.DialWithDialer(d), ldap.DialWithTLSConfig(cfg))
	if err != nil {
		return nil, err
	}
	c.SetTimeout(dc.tlsTimeout)
	if err := c.Bind(dn, pass); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// admin runs f on a shared Administrator connection, redialling once if the
// connection was lost.
func (dc *DC) admin(ctx context.Context, f func(*ldap.Conn) error) error {
	dc.adminMu.Lock()
	defer dc.adminMu.Unlock()
	for attempt := 0; ; attempt++ {
		if dc.adminConn == nil || dc.adminConn.IsClosing() {
			c, err := dc.dialAdmin(ctx)
			if err != nil {
				return fmt.Errorf("samba: admin bind: %w", err)
			}
			dc.adminConn = c
		}
		err := f(dc.adminConn)
		if err != nil && attempt == 0 && ldap.IsErrorWithCode(err, ldap.ErrorNetwork) {
			dc.adminConn.Close()
			dc.adminConn = nil
			continue
		}
		return err
	}
}

func (dc *DC) setPolicy(ctx context.Context) error {
	return dc.admin(ctx, func(c *ldap.Conn) error {
		m := ldap.NewModifyRequest(dc.BaseDN, nil)
		m.Replace("lockoutThreshold", []string{strconv.Itoa(dc.lockout)})
		if err := c.Modify(m); err != nil {
			return fmt.Errorf("samba: domain policy: %w", err)
		}
		return nil
	})
}

// unicodePwd encodes an AD password value: the quoted password in UTF-16LE.
func unicodePwd(p string) string {
	u := utf16.Encode([]rune(`"` + p + `"`))
	b := make([]byte, 2*len(u))
	for i, r := range u {
		binary.LittleEndian.PutUint16(b[2*i:], r)
	}
	return string(b)
}

// User is an account for AddUser. Name is the sAMAccountName; the CN is the
// Name too, under CN=Users unless OU is set (an existing container DN).
type User struct {
	Name        string
	Password    string
	DisplayName string
	Mail        string
	OU          string
}

// UserDN is the DN AddUser gives a user of that name under CN=Users.
func (dc *DC) UserDN(name string) string {
	return "CN=" + ldap.EscapeDN(name) + "," + dc.UsersDN
}

// GroupDN is the DN AddGroup gives a group of that name.
func (dc *DC) GroupDN(name string) string { return dc.UserDN(name) }

// AddUser creates an enabled user with a password and returns its DN.
func (dc *DC) AddUser(ctx context.Context, u User) (string, error) {
	parent := dc.UsersDN
	if u.OU != "" {
		parent = u.OU
	}
	dn := "CN=" + ldap.EscapeDN(u.Name) + "," + parent
	a := ldap.NewAddRequest(dn, nil)
	a.Attribute("objectClass", []string{"top", "person", "organizationalPerson", "user"})
	a.Attribute("sAMAccountName", []string{u.Name})
	a.Attribute("userPrincipalName", []string{dc.UPN(u.Name)})
	if u.DisplayName != "" {
		a.Attribute("displayName", []string{u.DisplayName})
	}
	if u.Mail != "" {
		a.Attribute("mail", []string{u.Mail})
	}
	a.Attribute("unicodePwd", []string{unicodePwd(u.Password)})
	a.Attribute("userAccountControl", []string{"512"})
	err := dc.admin(ctx, func(c *ldap.Conn) error { return c.Add(a) })
	if err != nil {
		return "", fmt.Errorf("samba: add user %s: %w", u.Name, err)
	}
	return dn, nil
}

// AddGroup creates a global security group with the given members (names
// resolved under CN=Users, or full DNs) and returns its DN.
func (dc *DC) AddGroup(ctx context.Context, name string, members ...string) (string, error) {
	dn := dc.GroupDN(name)
	a := ldap.NewAddRequest(dn, nil)
	a.Attribute("objectClass", []string{"top", "group"})
	a.Attribute("sAMAccountName", []string{name})
	if len(members) > 0 {
		a.Attribute("member", dc.dns(members))
	}
	if err := dc.admin(ctx, func(c *ldap.Conn) error { return c.Add(a) }); err != nil {
		return "", fmt.Errorf("samba: add group %s: %w", name, err)
	}
	return dn, nil
}

// AddMembers adds members (names or DNs) to an existing group.
func (dc *DC) AddMembers(ctx context.Context, group string, members ...string) error {
	m := ldap.NewModifyRequest(dc.dns([]string{group})[0], nil)
	m.Add("member", dc.dns(members))
	if err := dc.admin(ctx, func(c *ldap.Conn) error { return c.Modify(m) }); err != nil {
		return fmt.Errorf("samba: add members to %s: %w", group, err)
	}
	return nil
}

// RemoveMembers takes members (names or DNs) out of an existing group.
func (dc *DC) RemoveMembers(ctx context.Context, group string, members ...string) error {
	m := ldap.NewModifyRequest(dc.dns([]string{group})[0], nil)
	m.Delete("member", dc.dns(members))
	if err := dc.admin(ctx, func(c *ldap.Conn) error { return c.Modify(m) }); err != nil {
		return fmt.Errorf("samba: remove members from %s: %w", group, err)
	}
	return nil
}

func (dc *DC) dns(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		if strings.Contains(n, "=") {
			out[i] = n
		} else {
			out[i] = dc.UserDN(n)
		}
	}
	return out
}

func (dc *DC) replace(ctx context.Context, name, attr, val string) error {
	m := ldap.NewModifyRequest(dc.dns([]string{name})[0], nil)
	m.Replace(attr, []string{val})
	if err := dc.admin(ctx, func(c *ldap.Conn) error { return c.Modify(m) }); err != nil {
		return fmt.Errorf("samba: set %s of %s: %w", attr, name, err)
	}
	return nil
}

// Disable sets ACCOUNTDISABLE (userAccountControl 0x2) on a user.
func (dc *DC) Disable(ctx context.Context, name string) error {
	return dc.replace(ctx, name, "userAccountControl", "514")
}

// ExpireAccount sets accountExpires to 1970 (AD data 701 at bind).
func (dc *DC) ExpireAccount(ctx context.Context, name string) error {
	return dc.replace(ctx, name, "accountExpires", "116444736000000000")
}

// DenyLogonHours clears every bit of logonHours: the account may not log on
// at any hour (AD data 530 at bind).
func (dc *DC) DenyLogonHours(ctx context.Context, name string) error {
	return dc.replace(ctx, name, "logonHours", string(make([]byte, 21)))
}

// MustChangePassword sets pwdLastSet to 0: the password is expired and must
// be changed at next logon (AD data 773 at bind).
func (dc *DC) MustChangePassword(ctx context.Context, name string) error {
	return dc.replace(ctx, name, "pwdLastSet", "0")
}

// Lock makes the DC lock the account by binding with a wrong password
// LockoutThreshold times, as an attacker would.
func (dc *DC) Lock(ctx context.Context, name string) error {
	for i := 0; i < dc.lockout; i++ {
		c, err := dc.dialAs(ctx, dc.UPN(name), "wrong-"+randHex(4))
		if err == nil {
			c.Close()
			return fmt.Errorf("samba: lock %s: a wrong password was accepted", name)
		}
		if !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return fmt.Errorf("samba: lock %s: %w", name, err)
		}
	}
	return nil
}

// Attr reads one attribute of an entry (a name under CN=Users or a DN), as
// Administrator; for example badPwdCount to count failed binds.
func (dc *DC) Attr(ctx context.Context, name, attr string) ([]string, error) {
	var vals []string
	err := dc.admin(ctx, func(c *ldap.Conn) error {
		r, err := c.Search(ldap.NewSearchRequest(dc.dns([]string{name})[0], ldap.ScopeBaseObject,
			ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{attr}, nil))
		if err != nil {
			return err
		}
		if len(r.Entries) == 1 {
			vals = r.Entries[0].GetAttributeValues(attr)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("samba: read %s of %s: %w", attr, name, err)
	}
	return vals, nil
}

// expirePy sets pwdLastSet directly in sam.ldb, past the password_hash
// module (which only lets LDAP clients write 0 or -1), as Samba's own tests
// do. DN, value and paths come from the environment.
const expirePy = `
import os, ldb
from samba.samdb import SamDB
from samba.auth import system_session
from samba.param import LoadParm
lp = LoadParm(); lp.load(os.environ["SMB_CONF"])
db = SamDB(url=os.environ["SAM_LDB"], session_info=system_session(), lp=lp)
m = ldb.Message(); m.dn = ldb.Dn(db, os.environ["USER_DN"])
m["pwdLastSet"] = ldb.MessageElement(os.environ["PWD_LAST_SET"], ldb.FLAG_MOD_REPLACE, "pwdLastSet")
db.modify(m, controls=["local_oid:1.3.6.1.4.1.7165.4.3.12:0"])
`

// ExpirePassword backdates the user's pwdLastSet by 100 days, past the
// domain's maximum password age (42 days): the password has expired (AD
// data 532 at bind), as it would after months without a change.
func (dc *DC) ExpirePassword(ctx context.Context, name string) error {
	py := "/usr/bin/python3"
	if b, err := os.ReadFile("/usr/bin/samba-tool"); err == nil {
		if line, _, _ := strings.Cut(string(b), "\n"); strings.HasPrefix(line, "#!") {
			if f := strings.Fields(strings.TrimPrefix(line, "#!")); len(f) > 0 {
				py = f[0]
			}
		}
	}
	old := time.Now().Add(-100 * 24 * time.Hour)
	// Windows FILETIME: 100 ns intervals since 1601-01-01.
	ft := (old.Unix()+11644473600)*10_000_000 + int64(old.Nanosecond()/100)
	cmd := exec.CommandContext(ctx, py, "-c", expirePy)
	cmd.Env = append(os.Environ(),
		"SMB_CONF="+filepath.Join(dc.Dir, "d", "etc", "smb.conf"),
		"SAM_LDB="+filepath.Join(dc.Dir, "d", "private", "sam.ldb"),
		"USER_DN="+dc.dns([]string{name})[0],
		"PWD_LAST_SET="+strconv.FormatInt(ft, 10))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("samba: expire password of %s: %v: %s", name, err, tail(out))
	}
	return nil
}

// SetPassword sets a user's password as Administrator.
func (dc *DC) SetPassword(ctx context.Context, name, pass string) error {
	return dc.replace(ctx, name, "unicodePwd", unicodePwd(pass))
}
