package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const validConfig = `[server]
listen = "127.0.0.1:8443"
state_dir = "/var/lib/applianced"

[[role]]
name = "support"
scopes = ["tickets:read"]

[[agent]]
name = "ticket-bot"
roles = ["support"]
unix_user = "ticketbot"

[audit]
segment_bytes = "64MB"
disk_full = "block"
`

func TestValidConfigLoads(t *testing.T) {
	f, err := Parse("applianced.toml", []byte(validConfig))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got, want := f.Server.AdminSocket, "/run/applianced/admin.sock"; got != want {
		t.Errorf("default admin_socket: got %q, want %q", got, want)
	}
	if got, want := int64(f.Audit.SegmentBytes), int64(64e6); got != want {
		t.Errorf("segment_bytes: got %d, want %d", got, want)
	}
	if len(f.Agents) != 1 || f.Agents[0].Roles[0] != "support" {
		t.Errorf("agents: got %+v", f.Agents)
	}
}

// Each broken config must be rejected with a problem naming this line and key.
func TestBrokenConfigsNameLineAndKey(t *testing.T) {
	cases := []struct {
		name     string
		config   string
		wantLine int
		wantKey  string
		wantMsg  string
	}{
		{"unknown key", "[server]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n", 3, "server.listne", "unknown key"},
		{"unknown section", "[server]\nlisten = \"127.0.0.1:1\"\n\n[srever]\nx = 1\n", 5, "srever.x", "unknown key"},
		{"wrong type", "[server]\nlisten = 8443\n", 2, "server.listen", ""},
		{"bad duration", "[server]\nlisten = \"127.0.0.1:1\"\nshutdown_timeout = \"soon\"\n", 3, "server.shutdown_timeout", "invalid duration"},
		{"bad size", "[audit]\nsegment_bytes = \"lots\"\n", 2, "audit.segment_bytes", "invalid size"},
		{"bad enum", "[audit]\n\ndisk_full = \"panic\"\n", 3, "audit.disk_full", "unknown policy"},
		{"bad listen", "[server]\nlisten = \"nowhere\"\n", 2, "server.listen", "host:port"},
		{"unknown key in an inline table", "[[tool]]\nname = \"t\"\nbase_url = \"https://t.example\"\nauth = { type = \"tls_client\", secret = \"k\", cert_file = \"/x\" }\n[[tool.route]]\nmethod = \"GET\"\npath = \"/**\"\nscope = \"t:read\"\n", 4, "tool[0].auth", `unknown key "cert_file"`},
		{"duration without quotes", "[tokens]\nttl = 5\n", 2, "tokens.ttl", "in quotes, with its unit"},
		{"string for a list", "[[role]]\nname = \"a\"\nscopes = [\"x\"]\n[[agent]]\nname = \"bot\"\nunix_uid = 1\nroles = \"a\"\n", 7, "agent[0].roles", `wrong type: a string where a list of strings, like ["a", "b"], belongs`},
		{"string for a number", "[risk]\nrequests_per_minute = \"sixty\"\n", 2, "risk.requests_per_minute", "wrong type: a string where a whole number belongs"},
		{"listen port out of range", "[server]\nlisten = \"0.0.0.0:99999\"\n", 2, "server.listen", "from 1 to 65535"},
		{"agent key file missing", "[[role]]\nname = \"a\"\n[[agent]]\nname = \"bot\"\nroles = [\"a\"]\npublic_key_file = \"/nonexistent/bot.pub\"\n", 6, "agent[0].public_key_file", "/nonexistent/bot.pub"},
		{"relative path", "[server]\nstate_dir = \"var/lib\"\n", 2, "server.state_dir", "absolute"},
		{"duplicate role", "[[role]]\nname = \"a\"\n[[role]]\nname = \"a\"\n", 4, "role[1].name", "duplicate name"},
		{"unknown role on agent", "[[role]]\nname = \"a\"\n[[agent]]\nname = \"bot\"\nroles = [\"a\", \"b\"]\n", 5, "agent[0].roles[1]", "unknown role"},
		{"syntax error", "[server\nlisten = 1\n", 1, "", "TOML syntax error"},
		{"bad log level", "[server]\nlog_level = \"loud\"\n", 2, "server.log_level", "unknown level"},
		{"star inside a forward_from name", "[net]\nlog_rate = 10\nforward_from = [\"docker0\", \"ve*th\"]\n", 3, "net.forward_from[1]", "may only end a name"},
		{"empty forward_from name", "[net]\nforward_from = [\"\"]\n", 2, "net.forward_from[0]", "empty name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("test.toml", []byte(tc.config))
			if err == nil {
				t.Fatalf("Parse accepted the config: %+v", f)
			}
			if f != nil {
				t.Fatal("Parse returned a config along with an error")
			}
			var ce *Error
			if !errors.As(err, &ce) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %T %v, want *config.Error", err, err)
			}
			for _, p := range ce.Problems {
				if p.Line == tc.wantLine && p.Key == tc.wantKey && strings.Contains(p.Msg, tc.wantMsg) && p.File == "test.toml" {
					return
				}
			}
			t.Fatalf("got problems %q, want one at line %d key %q containing %q", err.Error(), tc.wantLine, tc.wantKey, tc.wantMsg)
		})
	}
}

func TestAllProblemsReportedAtOnce(t *testing.T) {
	cfg := "[server]\nlisten = 8443\nlog_level = \"loud\"\nbogus = 1\n\n[audit]\ndisk_full = \"panic\"\nsegment_bytes = true\n"
	_, err := Parse("test.toml", []byte(cfg))
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want *Error", err)
	}
	want := map[int]string{2: "server.listen", 3: "server.log_level", 4: "server.bogus", 7: "audit.disk_full", 8: "audit.segment_bytes"}
	got := map[int]string{}
	for _, p := range ce.Problems {
		got[p.Line] = p.Key
	}
	for line, key := range want {
		if got[line] != key {
			t.Errorf("line %d: got key %q, want %q (all: %v)", line, got[line], key, err)
		}
	}
}

func TestMissingFileIsAClearError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.toml")
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("got %v, want an error naming %s and saying it does not exist", err, path)
	}
}

func TestAdminSocketReadsPastErrorsElsewhere(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(path, []byte("[server]\nadmin_socket = \"/tmp/x.sock\"\nbogus = 1\n"), 0o600)
	got, err := AdminSocket(path)
	if err != nil || got != "/tmp/x.sock" {
		t.Fatalf("AdminSocket: got %q, %v; want /tmp/x.sock", got, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(validConfig))
	f.Add([]byte("[server]\nlisten = 8443\n"))
	f.Add([]byte("[[tool]]\nname = \"t\"\n[[tool.route]]\npath = \"/x\"\nauth = { type = \"bearer\" }\n"))
	f.Add([]byte("[ldap.group_roles]\n\"a.b c\" = [\"r\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		f, err := Parse("fuzz.toml", data)
		if err == nil && f == nil {
			t.Fatal("nil config without error")
		}
		if err != nil && f != nil {
			t.Fatal("config with error")
		}
	})
}

// [net] forward_from = [] (route nothing) stays apart from an absent key
// (the default list) through the loader.
func TestNetForwardFromEmptyIsKept(t *testing.T) {
	f, err := Parse("test.toml", []byte(validConfig+"\n[net]\nforward_from = []\n"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if f.Net.ForwardFrom == nil || len(f.Net.ForwardFrom) != 0 {
		t.Errorf("forward_from = []: got %#v, want an empty, non-nil list", f.Net.ForwardFrom)
	}
	f, err = Parse("test.toml", []byte(validConfig))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if f.Net.ForwardFrom != nil {
		t.Errorf("no forward_from: got %#v, want nil (the default)", f.Net.ForwardFrom)
	}
}
