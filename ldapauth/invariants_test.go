package ldapauth

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"

	"github.com/applianced/applianced/internal/testenv/samba"
)

// TestGroupFilterEscapesTheUserDN: the user's DN goes into the in-chain
// group filter (and the group SIDs into the tokenGroups lookup filter); a name with filter metacharacters (which AD allows in a CN and
// sAMAccountName) logs in and gets its groups, nested ones too, and
// a group named with them maps to its roles. Unescaped, the filter would not
// parse (or would match other entries).
func TestGroupFilterEscapesTheUserDN(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	suffix := fmt.Sprintf("%d-%d", os.Getpid()%10000, userSeq.Add(1))
	user := "p(a)r" + suffix
	group := "g)(cn" + suffix
	outer := "o(ut" + suffix
	if _, err := dc.AddUser(ctx, samba.User{Name: user, Password: pw(user)}); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.AddGroup(ctx, group, user); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.AddGroup(ctx, outer, group); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{GroupModeAD, GroupModeADInChain} {
		t.Run(mode, func(t *testing.T) {
			a, _ := newAuth(t, adConfig(func(c *Config) {
				c.GroupMode = mode
				c.GroupRoles = map[string][]string{outer: {"nested-role"}, group: {"direct-role"}}
			}), nil)
			id, out, err := a.Login(ctx, Request{Username: user, Password: pw(user)})
			if err != nil || !out.OK {
				t.Fatalf("login of %q: ok=%v reason=%q err=%v", user, out.OK, out.Reason, err)
			}
			dns := map[string]string{}
			for _, g := range id.Groups {
				dns[g.Name] = g.DN
			}
			for _, want := range []string{group, outer} {
				if got, ok := dns[want]; !ok || got != dc.GroupDN(want) {
					t.Errorf("group %q: got DN %q (present %v), want %q; all groups %v", want, got, ok, dc.GroupDN(want), id.Groups)
				}
			}
			if roles := slices.Sorted(slices.Values(id.Roles)); !slices.Equal(roles, []string{"direct-role", "nested-role"}) {
				t.Errorf("roles: got %q, want [direct-role nested-role]", roles)
			}
		})
	}
}

// stripStartTLS is a man in the middle on the way to the DC's plain LDAP
// port: it answers every StartTLS request itself with "unavailable" (as a
// downgrade attacker would), forwards everything else to the DC, and keeps
// every byte the client sent.
type stripStartTLS struct {
	mu       sync.Mutex
	sent     bytes.Buffer
	stripped int
}

func (s *stripStartTLS) listen(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serve(c, target)
			}()
		}
	}()
	return ln.Addr().String()
}

func (s *stripStartTLS) serve(c net.Conn, target string) {
	defer c.Close()
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	var wmu sync.Mutex // the client connection has two writers
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := up.Read(buf)
			if n > 0 {
				wmu.Lock()
				_, _ = c.Write(buf[:n])
				wmu.Unlock()
			}
			if err != nil {
				c.Close()
				return
			}
		}
	}()
	for {
		p, err := ber.ReadPacket(c)
		if err != nil {
			return
		}
		raw := p.Bytes()
		s.mu.Lock()
		s.sent.Write(raw)
		s.mu.Unlock()
		if len(p.Children) >= 2 && p.Children[1].ClassType == ber.ClassApplication && p.Children[1].Tag == 23 {
			// ExtendedRequest (StartTLS): refuse it in the DC's name.
			s.mu.Lock()
			s.stripped++
			s.mu.Unlock()
			resp := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAP Response")
			resp.AppendChild(p.Children[0])
			ext := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 24, nil, "Extended Response")
			ext.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, 52, "resultCode"))
			ext.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", "matchedDN"))
			ext.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", "diagnosticMessage"))
			resp.AppendChild(ext)
			wmu.Lock()
			_, _ = c.Write(resp.Bytes())
			wmu.Unlock()
			continue
		}
		if _, err := up.Write(raw); err != nil {
			return
		}
	}
}

// TestStrippedStartTLSSendsNoPassword: with start_tls = true and
// insecure_plaintext = false, a DC (or an attacker in front of it) that
// refuses StartTLS gets a TLS error from the login and never a bind: neither
// the service account's password nor the user's crosses the wire in clear.
// With insecure_plaintext = true and no StartTLS, the same recorder does see
// the password, so it would catch a leak.
func TestStrippedStartTLSSendsNoPassword(t *testing.T) {
	needDC(t)
	ctx := context.Background()
	mitm := &stripStartTLS{}
	addr := mitm.listen(t, net.JoinHostPort(dc.IP.String(), "389"))
	a, _ := newAuth(t, adConfig(func(c *Config) {
		c.URLs, c.StartTLS = []string{"ldap://" + addr}, true
		c.MaxFailuresPerUser, c.MaxFailuresPerSource = 1000, 1000
	}), nil)
	_, out, err := a.Login(ctx, Request{Username: "alice", Password: pw("alice")})
	if out.OK || err == nil {
		t.Fatalf("login through a StartTLS stripper: ok=%v err=%v, want a failure", out.OK, err)
	}
	mitm.mu.Lock()
	sent, stripped := bytes.Clone(mitm.sent.Bytes()), mitm.stripped
	mitm.mu.Unlock()
	if stripped == 0 {
		t.Fatal("the client never asked for StartTLS: the check proves nothing")
	}
	for who, secret := range map[string]string{"service account": pw(svcName), "user": pw("alice")} {
		if bytes.Contains(sent, []byte(secret)) {
			t.Errorf("the %s's password crossed the wire in clear after StartTLS was refused", who)
		}
	}

	// The recorder's control: plaintext allowed by the config, the bind goes
	// out in clear (and the DC refuses it), and the recorder sees it.
	control := &stripStartTLS{}
	caddr := control.listen(t, net.JoinHostPort(dc.IP.String(), "389"))
	b, _ := newAuth(t, adConfig(func(c *Config) {
		c.URLs, c.InsecurePlaintext = []string{"ldap://" + caddr}, true
		c.MaxFailuresPerUser, c.MaxFailuresPerSource = 1000, 1000
	}), nil)
	_, _, _ = b.Login(ctx, Request{Username: "alice", Password: pw("alice")})
	control.mu.Lock()
	defer control.mu.Unlock()
	if !bytes.Contains(control.sent.Bytes(), []byte(pw(svcName))) {
		t.Error("control: the recorder did not see a plaintext bind it was allowed to see")
	}
}
