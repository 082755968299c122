package broker

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/conf"
)

func validConfig() Config {
	uid := 1001
	return Config{
		Tokens: TokenConfig{TTL: conf.Duration(5 * time.Minute), MaxTTL: conf.Duration(time.Hour), RotateSigningKeyEvery: conf.Duration(720 * time.Hour)},
		Roles:  []Role{{Name: "support", Scopes: []string{"tickets:read", "tickets:delete"}, TTL: conf.Duration(5 * time.Minute)}},
		Agents: []Agent{{Name: "ticket-bot", Roles: []string{"support"}, UnixUID: &uid, ActForGroups: []string{"helpdesk"}}},
		Policies: []Policy{{Name: "office-hours-deletes", Agents: []string{"ticket-bot"}, Scopes: []string{"tickets:delete"},
			Hours: "Mon-Fri 08:00-18:00", SourceCIDRs: []string{"10.20.0.0/24"}, Effect: "allow"}},
	}
}

func TestConfigValidate(t *testing.T) {
	uid := 1001
	cases := []struct {
		name     string
		mutate   func(*Config)
		wantKeys []string
	}{
		{"valid", func(*Config) {}, nil},
		{"empty is valid", func(c *Config) { *c = Config{} }, nil},
		{"ttl over max_ttl", func(c *Config) { c.Tokens.TTL = conf.Duration(2 * time.Hour) }, []string{"tokens.ttl"}},
		{"rotation shorter than tokens live", func(c *Config) { c.Tokens.RotateSigningKeyEvery = conf.Duration(time.Hour) }, []string{"tokens.rotate_signing_key_every"}},
		{"issuer not https", func(c *Config) { c.Tokens.Issuer = "http://ai.corp.example" }, []string{"tokens.issuer"}},
		{"issuer with a trailing slash", func(c *Config) { c.Tokens.Issuer = "https://ai.corp.example/" }, []string{"tokens.issuer"}},
		{"issuer ok", func(c *Config) { c.Tokens.Issuer = "https://ai.corp.example:8443" }, nil},
		{"duplicate role", func(c *Config) { c.Roles = append(c.Roles, c.Roles[0]) }, []string{"role[1].name"}},
		{"role ttl over its max_ttl", func(c *Config) { c.Roles[0].MaxTTL = conf.Duration(time.Minute) }, []string{"role[0].ttl"}},
		{"role ttl over tokens.max_ttl", func(c *Config) { c.Roles[0].TTL = conf.Duration(2 * time.Hour) }, []string{"role[0].ttl"}},
		{"bad scope", func(c *Config) { c.Roles[0].Scopes = []string{"has space"} }, []string{"role[0].scopes[0]"}},
		{"role without scopes", func(c *Config) { c.Roles[0].Scopes = nil }, []string{"role[0].scopes"}},
		{"duplicate agent", func(c *Config) {
			a := c.Agents[0]
			a.UnixUID = nil
			a.UnixUser = "bot2"
			c.Agents = append(c.Agents, a)
		}, []string{"agent[1].name"}},
		{"unknown role", func(c *Config) { c.Agents[0].Roles = []string{"support", "admin"} }, []string{"agent[0].roles[1]"}},
		{"no auth", func(c *Config) { c.Agents[0].UnixUID = nil }, []string{"agent[0]"}},
		{"two local identities", func(c *Config) { c.Agents[0].UnixUser = "bot" }, []string{"agent[0]"}},
		{"same uid twice", func(c *Config) {
			c.Agents = append(c.Agents, Agent{Name: "b2", Roles: []string{"support"}, UnixUID: &uid})
		}, []string{"agent[1].unix_uid"}},
		// root exists on every machine: unix_user "root" is uid 0.
		{"a user name and a uid of one identity", func(c *Config) {
			zero := 0
			c.Agents = append(c.Agents, Agent{Name: "b2", Roles: []string{"support"}, UnixUID: &zero},
				Agent{Name: "b3", Roles: []string{"support"}, UnixUser: "root"})
		}, []string{"agent[2].unix_user"}},
		{"max_ttl over a day", func(c *Config) { c.Tokens.MaxTTL = conf.Duration(25 * time.Hour) }, []string{"tokens.max_ttl"}},
		{"bad unit", func(c *Config) { c.Agents[0].UnixUID = nil; c.Agents[0].SystemdUnit = "../x" }, []string{"agent[0].systemd_unit"}},
		{"bad secret hash", func(c *Config) { c.Agents[0].ClientSecretHash = "plaintext" }, []string{"agent[0].client_secret_hash"}},
		{"bad agent name", func(c *Config) { c.Agents[0].Name = "a b"; c.Policies = nil }, []string{"agent[0].name"}},
		{"duplicate policy", func(c *Config) { c.Policies = append(c.Policies, c.Policies[0]) }, []string{"policy[1].name"}},
		{"policy unknown agent", func(c *Config) { c.Policies[0].Agents = []string{"ghost"} }, []string{"policy[0].agents[0]"}},
		{"bad CIDR", func(c *Config) { c.Policies[0].SourceCIDRs = []string{"10.20.0.0/24", "10.300.0.0/8"} }, []string{"policy[0].source_cidrs[1]"}},
		{"bad hours", func(c *Config) { c.Policies[0].Hours = "Mon-Fri 8-18" }, []string{"policy[0].hours"}},
		{"bad day", func(c *Config) { c.Policies[0].Hours = "Mon-Fry 08:00-18:00" }, []string{"policy[0].hours"}},
		{"end before start", func(c *Config) { c.Policies[0].Hours = "Mon 18:00-08:00" }, []string{"policy[0].hours"}},
		{"bad effect", func(c *Config) { c.Policies[0].Effect = "permit" }, []string{"policy[0].effect"}},
		{"missing effect", func(c *Config) { c.Policies[0].Effect = "" }, []string{"policy[0].effect"}},
		{"allow without condition", func(c *Config) { c.Policies[0].Hours = ""; c.Policies[0].SourceCIDRs = nil }, []string{"policy[0]"}},
		{"unknown user role", func(c *Config) { c.UserRoles = []string{"support", "nope"} }, []string{"ldap.group_roles[1]"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			var got []string
			for _, e := range c.Validate() {
				got = append(got, e.Key)
			}
			if !slices.Equal(got, tc.wantKeys) {
				t.Fatalf("got error keys %v, want %v (errors: %v)", got, tc.wantKeys, c.Validate())
			}
		})
	}
}

func TestParseHours(t *testing.T) {
	loc := time.UTC
	at := func(day, h, m int) time.Time { return time.Date(2026, 11, 22+day, h, m, 0, 0, loc) } // 22 Nov 2026 is a Sunday
	cases := []struct {
		spec string
		in   []time.Time
		out  []time.Time
	}{
		{"Mon-Fri 08:00-18:00", []time.Time{at(1, 8, 0), at(5, 17, 59)}, []time.Time{at(1, 7, 59), at(1, 18, 0), at(6, 10, 0), at(0, 10, 0)}},
		{"Fri-Mon 22:00-24:00", []time.Time{at(5, 23, 0), at(0, 22, 0), at(1, 23, 59)}, []time.Time{at(2, 23, 0), at(5, 21, 59)}},
		{"Sat,Sun 10:00-12:00; Wed 00:00-01:00", []time.Time{at(6, 11, 0), at(3, 0, 30)}, []time.Time{at(6, 12, 0), at(3, 1, 0)}},
	}
	for _, tc := range cases {
		t.Run(tc.spec, func(t *testing.T) {
			h, err := ParseHours(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range tc.in {
				if !h.Contains(x) {
					t.Errorf("%s: got outside, want inside", x.Format("Mon 15:04"))
				}
			}
			for _, x := range tc.out {
				if h.Contains(x) {
					t.Errorf("%s: got inside, want outside", x.Format("Mon 15:04"))
				}
			}
		})
	}
	for _, bad := range []string{"", "Mon", "Mon 08:00", "Mon 08:00-25:00", "Mon 08:60-09:00", "Mon 8:00-9:00", "Xyz 08:00-09:00", "Mon 09:00-09:00", "Mon 24:01-24:02"} {
		if _, err := ParseHours(bad); err == nil {
			t.Errorf("ParseHours(%q): got no error", bad)
		}
	}
}

// TestPolicyEvaluation: deny wins, allow policies are conditions, and a
// request no policy applies to is allowed by the roles alone.
func TestPolicyEvaluation(t *testing.T) {
	pols, err := compilePolicies([]Policy{
		{Name: "office-deletes", Agents: []string{"bot"}, Scopes: []string{"tickets:delete"}, Hours: "Mon-Fri 08:00-18:00", SourceCIDRs: []string{"10.20.0.0/24", "127.0.0.1/32"}, Effect: "allow"},
		{Name: "no-finance-nights", UserGroups: []string{"finance"}, Hours: "Mon-Sun 20:00-24:00", Effect: "deny"},
		{Name: "quarantine", Agents: []string{"sketchy"}, Effect: "deny"},
		{Name: "no-finance-deletes", UserGroups: []string{"finance"}, Scopes: []string{"tickets:delete"}, Effect: "deny"},
	})
	if err != nil {
		t.Fatal(err)
	}
	wed10 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	wed21 := time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC)
	lan := netip.MustParseAddr("10.20.0.7")
	wan := netip.MustParseAddr("10.99.0.7")
	cases := []struct {
		name       string
		r          AccessRequest
		want       bool
		wantPolicy string
	}{
		{"delete in hours from the LAN", AccessRequest{Agent: "bot", Scope: "tickets:delete", Source: lan, Time: wed10}, true, ""},
		{"delete from another network", AccessRequest{Agent: "bot", Scope: "tickets:delete", Source: wan, Time: wed10}, false, "office-deletes"},
		{"delete from the agent socket", AccessRequest{Agent: "bot", Scope: "tickets:delete", Source: netip.MustParseAddr("127.0.0.1"), Time: wed10}, true, ""},
		{"delete with no source", AccessRequest{Agent: "bot", Scope: "tickets:delete", Time: wed10}, false, "office-deletes"},
		{"read is not covered", AccessRequest{Agent: "bot", Scope: "tickets:read", Source: wan, Time: wed21}, true, ""},
		{"other agent not covered", AccessRequest{Agent: "other", Scope: "tickets:delete", Source: wan, Time: wed21}, true, ""},
		{"finance user at night", AccessRequest{Agent: "bot", User: "bob", UserGroups: []string{"finance"}, Scope: "tickets:read", Time: wed21}, false, "no-finance-nights"},
		{"finance user by day", AccessRequest{Agent: "bot", User: "bob", UserGroups: []string{"finance"}, Scope: "tickets:read", Time: wed10}, true, ""},
		{"deny wins over allow", AccessRequest{Agent: "bot", User: "bob", UserGroups: []string{"finance"}, Scope: "tickets:delete", Source: lan, Time: wed10}, false, "no-finance-deletes"},
		{"unconditional deny", AccessRequest{Agent: "sketchy", Scope: "tickets:read", Time: wed10}, false, "quarantine"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := evaluate(pols, tc.r, time.UTC)
			if d.Allowed != tc.want || d.Policy != tc.wantPolicy {
				t.Fatalf("got %+v, want allowed %v by %q", d, tc.want, tc.wantPolicy)
			}
		})
	}
	// Hours are the site's: 20:00 UTC is 10:00 at UTC-10.
	site := time.FixedZone("site", -10*3600)
	r := AccessRequest{Agent: "bot", Scope: "tickets:delete", Source: lan, Time: time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)}
	if d := evaluate(pols, r, site); !d.Allowed {
		t.Fatalf("site time zone: got %+v, want allowed (10:00 local)", d)
	}
	if d := evaluate(pols, r, time.UTC); d.Allowed {
		t.Fatalf("UTC: got %+v, want denied (20:00)", d)
	}
}

func TestClientSecretHash(t *testing.T) {
	h, err := HashClientSecret("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	p, err := parseArgon2id(h)
	if err != nil {
		t.Fatal(err)
	}
	if !p.verify("correct horse") || p.verify("correct horse ") || p.verify("") {
		t.Fatal("verify: got the wrong answer")
	}
	h2, _ := HashClientSecret("correct horse")
	if h == h2 {
		t.Fatal("two hashes of one secret are equal: no salt")
	}
}

// The peer is the agent of a systemd_unit when the cgroup file system
// lists its pid in that system unit (or below it); the same name under a
// user's own service manager, or a container's, is not that unit.
func TestInSystemUnit(t *testing.T) {
	root := t.TempDir()
	procs := func(dir, pids string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, dir, "cgroup.procs"), []byte(pids), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	procs("system.slice/bot.service", "100\n101\n")
	procs("agents.slice/bot.service/worker", "200\n") // Delegate=yes
	procs("user.slice/user-1000.slice/user@1000.service/app.slice/bot.service", "300\n")
	procs("user.slice/bot.service", "301\n")
	procs("machine.slice/bot.service", "302\n")
	procs("system.slice/other.service", "400\n")
	for _, tc := range []struct {
		unit string
		pid  int
		want bool
	}{
		{"bot.service", 101, true},
		{"bot.service", 200, true},
		{"bot.service", 300, false},
		{"bot.service", 301, false},
		{"bot.service", 302, false},
		{"bot.service", 400, false},
		{"bot.service", 10, false}, // a prefix of 100 is not 100
		{"../system.slice/bot.service", 101, false},
		{"", 101, false},
	} {
		if got := inSystemUnit(root, tc.unit, tc.pid); got != tc.want {
			t.Errorf("inSystemUnit(%q, %d): got %v, want %v", tc.unit, tc.pid, got, tc.want)
		}
	}
	if inSystemUnit("", "bot.service", 101) {
		t.Error("no cgroup v2 hierarchy, yet a unit was found")
	}
}
