package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/ldapauth"
	"github.com/applianced/applianced/netseg"
	"github.com/applianced/applianced/syslog"
)

func TestNetNeedsComeFromTheConfig(t *testing.T) {
	f := &config.File{
		LDAP:  &ldapauth.Config{URLs: []string{"ldaps://dc1.corp.example", "ldap://10.10.0.12:3389"}},
		Tools: []toolproxy.Tool{{BaseURL: "https://tickets.corp.example/api"}, {BaseURL: "http://10.0.0.9:8080/"}},
	}
	f.Audit.Syslog = []syslog.Target{{Address: "tls://siem.corp.example:6514"}, {Address: "udp://10.40.0.2"}, {Address: "unix:///dev/log"}, {Address: "relp+tls://10.40.0.3:2514"}}
	want := []netseg.Need{
		{Address: "dc1.corp.example:636", Proto: "tcp", Origin: "ldap.urls[0]"},
		{Address: "10.10.0.12:3389", Proto: "tcp", Origin: "ldap.urls[1]"},
		{Address: "siem.corp.example:6514", Proto: "tcp", Origin: "audit.syslog[0].address"},
		{Address: "10.40.0.2:514", Proto: "udp", Origin: "audit.syslog[1].address"},
		{Address: "10.40.0.3:2514", Proto: "tcp", Origin: "audit.syslog[3].address"},
		{Address: "tickets.corp.example:443", Proto: "tcp", Origin: "tool[0].base_url"},
		{Address: "10.0.0.9:8080", Proto: "tcp", Origin: "tool[1].base_url"},
	}
	if got := netNeeds(f); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

// DNS to the host's name servers is a need: the appliance resolves its
// servers' names. A local stub's (systemd-resolved's) upstream servers
// come from its own list; loopback and zoned servers need no rule.
func TestResolverNeeds(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := write("plain", "search corp.example\nnameserver 10.10.0.53\nnameserver fe80::1%eth0\nnameserver 127.0.0.1\n")
	stub := write("stub", "nameserver 127.0.0.53\noptions edns0\n")
	upstream := write("upstream", "nameserver 10.10.0.54\nnameserver 2001:db8::53\n")
	got := resolverNeeds(plain, upstream)
	want := []netseg.Need{
		{Address: "10.10.0.53:53", Proto: "udp", Origin: plain + " nameserver"},
		{Address: "10.10.0.53:53", Proto: "tcp", Origin: plain + " nameserver"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("plain: got %+v, want %+v", got, want)
	}
	got = resolverNeeds(stub, upstream)
	if len(got) != 4 || got[0].Address != "10.10.0.54:53" || got[2].Address != "[2001:db8::53]:53" || got[0].Origin != upstream+" nameserver" {
		t.Errorf("stub: got %+v, want the upstream servers' udp and tcp 53", got)
	}
	if got := resolverNeeds(filepath.Join(dir, "nosuch"), upstream); len(got) != 0 {
		t.Errorf("no resolv.conf: got %+v, want none", got)
	}
}

// The net verbs reach the daemon over the admin socket. Only read-only and
// refused verbs run here: the daemon works in the test's own network
// namespace, whose ruleset a test never changes (the netseg package applies
// for real inside namespaces it makes).
func TestNetVerbsThroughTheDaemon(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (the test daemon's admin socket admits uid 0 only; netlink reads need CAP_NET_ADMIN)")
	}
	dir := t.TempDir()
	rule := `
[[net.egress]]
to = ["10.10.0.11/32"]
proto = "tcp"
ports = [%d]
comment = "domain controllers"
`
	cfg := testConfig(t, dir, fmt.Sprintf(rule, 636))
	startDaemon(t, cfg)
	ctx := context.Background()
	verb := func(args ...string) (int, string, string) {
		e := testEnv()
		code := run(ctx, e, append(args, "--config", cfg.Path))
		return code, e.stdout.(*syncBuffer).String(), e.stderr.(*syncBuffer).String()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _, _ := verb("net", "status")
		if code == exitOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon's admin socket never answered net status")
		}
		time.Sleep(100 * time.Millisecond)
	}

	code, out, errOut := verb("net", "plan")
	if code != exitOK || !strings.Contains(out, "egress[0]: accept v4 tcp to @egress_0_v4 port 636 (domain controllers)") {
		t.Errorf("net plan: exit %d, stdout:\n%s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(out, "forward: egress[0]: accept v4 tcp to @egress_0_v4 port 636 (domain controllers), in via @forward_from") ||
		!strings.Contains(out, "only when it comes in on: "+strings.Join(netseg.DefaultForwardFrom(), ", ")+" (forward_from)") {
		t.Errorf("net plan does not say where routed traffic may come from:\n%s", out)
	}
	code, out, _ = verb("net", "plan", "--json")
	var p netseg.Plan
	if err := json.Unmarshal([]byte(out), &p); code != exitOK || err != nil || len(p.Rules) == 0 {
		t.Errorf("net plan --json: exit %d, err %v, rules %d", code, err, len(p.Rules))
	}
	if !slices.Equal(p.ForwardFrom, netseg.DefaultForwardFrom()) || p.ForwardLinks == nil {
		t.Errorf("net plan --json: forward_from %v, forward_links %v; want the default and a list", p.ForwardFrom, p.ForwardLinks)
	}
	if code, out, _ := verb("net", "status"); code != exitOK || !strings.Contains(out, "not applied") {
		t.Errorf("net status: exit %d, stdout:\n%s", code, out)
	}
	if code, _, errOut := verb("net", "confirm"); code != exitFailure || !strings.Contains(errOut, "no apply is waiting") {
		t.Errorf("net confirm with nothing pending: exit %d, stderr %s", code, errOut)
	}

	// A broken [net] section: apply is refused with the key and line, and
	// nothing is applied.
	bad := strings.Replace(mustRead(t, cfg.Path), "ports = [636]", "ports = [0]", 1)
	if err := os.WriteFile(cfg.Path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = verb("net", "apply")
	if code != exitFailure || !regexp.MustCompile(`applianced\.toml:\d+: net\.egress\[0\]\.ports\[0\]`).MatchString(errOut) {
		t.Errorf("net apply of a bad config: exit %d, stderr %s", code, errOut)
	}
	if code, out, _ := verb("net", "status", "--json"); code != exitOK || !strings.Contains(out, `"applied": false`) {
		t.Errorf("status after refused apply: exit %d, %s", code, out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
