package ldapauth

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/conf"
)

func validConfig() Config {
	return Config{
		URLs:               []string{"ldaps://dc1.corp.example", "ldaps://dc2.corp.example:636"},
		BindDN:             "CN=svc,DC=corp,DC=example",
		BindPasswordSecret: "ldap-bind",
		UserBase:           "DC=corp,DC=example",
	}
}

func TestValidate(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(caFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		mut      func(*Config)
		wantKeys []string
	}{
		{"valid", func(*Config) {}, nil},
		{"no urls", func(c *Config) { c.URLs = nil }, []string{"urls"}},
		{"plain ldap refused", func(c *Config) { c.URLs = []string{"ldap://dc1"} }, []string{"urls[0]"}},
		{"plain ldap with start_tls", func(c *Config) { c.URLs = []string{"ldap://dc1"}; c.StartTLS = true }, nil},
		{"plain ldap, insecure_plaintext, loopback", func(c *Config) {
			c.URLs = []string{"ldap://127.0.0.1:1389", "ldap://localhost", "ldap://[::1]:389"}
			c.InsecurePlaintext = true
		}, nil},
		{"plain ldap, insecure_plaintext, remote", func(c *Config) { c.URLs = []string{"ldap://dc1.corp.example"}; c.InsecurePlaintext = true }, []string{"urls[0]"}},
		{"start_tls on ldaps", func(c *Config) { c.StartTLS = true }, []string{"urls[0]", "urls[1]"}},
		{"bad scheme", func(c *Config) { c.URLs = []string{"http://dc1"} }, []string{"urls[0]"}},
		{"not a url", func(c *Config) { c.URLs = []string{"dc1.corp.example"} }, []string{"urls[0]"}},
		{"path in url", func(c *Config) { c.URLs = []string{"ldaps://dc1/DC=x"} }, []string{"urls[0]"}},
		{"missing ca_file", func(c *Config) { c.CAFile = "/nonexistent/ca.pem" }, []string{"ca_file"}},
		{"ca_file without certificate", func(c *Config) { c.CAFile = caFile }, []string{"ca_file"}},
		{"bind_dn without secret", func(c *Config) { c.BindPasswordSecret = "" }, []string{"bind_password_secret"}},
		{"anonymous", func(c *Config) { c.BindDN, c.BindPasswordSecret = "", "" }, nil},
		{"bad bind_dn", func(c *Config) { c.BindDN = "svc" }, []string{"bind_dn"}},
		{"no user_base", func(c *Config) { c.UserBase = "" }, []string{"user_base"}},
		{"bad group_base", func(c *Config) { c.GroupBase = "groups" }, []string{"group_base"}},
		{"bad login attribute", func(c *Config) { c.LoginAttributes = []string{"uid", "a=b"} }, []string{"login_attributes[1]"}},
		{"user_filter unparenthesised", func(c *Config) { c.UserFilter = "objectClass=user" }, []string{"user_filter"}},
		{"user_filter broken", func(c *Config) { c.UserFilter = "(objectClass=user" }, []string{"user_filter"}},
		{"bad group_mode", func(c *Config) { c.GroupMode = "nested" }, []string{"group_mode"}},
		{"empty allowed group", func(c *Config) { c.AllowedGroups = []string{"ai-users", " "} }, []string{"allowed_groups[1]"}},
		{"group without roles", func(c *Config) { c.GroupRoles = map[string][]string{"ai-users": nil} }, []string{`group_roles."ai-users"`}},
		{"tiny timeout", func(c *Config) { c.DialTimeout = conf.Duration(time.Millisecond) }, []string{"dial_timeout"}},
		{"negative ttl", func(c *Config) { c.GroupCacheTTL = -1 }, []string{"group_cache_ttl"}},
		{"page size", func(c *Config) { c.PageSize = -5 }, []string{"page_size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.mut(&c)
			var got []string
			for _, e := range c.Validate() {
				got = append(got, e.Key)
				if e.Msg == "" {
					t.Errorf("%s: empty message", e.Key)
				}
			}
			if !slices.Equal(got, tt.wantKeys) {
				t.Errorf("keys: got %v, want %v", got, tt.wantKeys)
			}
		})
	}
}

// TestNewDoesNotChangeConfig: defaults are applied to a copy.
func TestNewDoesNotChangeConfig(t *testing.T) {
	j := newJournal(t)
	c := validConfig()
	c.LoginAttributes = []string{"uid"}
	before := strings.Join(c.URLs, ",") + c.GroupMode + c.UserFilter + strings.Join(c.LoginAttributes, ",")
	a, err := New(c, Options{Audit: j, BindPassword: secrets})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	after := strings.Join(c.URLs, ",") + c.GroupMode + c.UserFilter + strings.Join(c.LoginAttributes, ",")
	if before != after || c.DialTimeout != 0 {
		t.Errorf("config changed: %q -> %q", before, after)
	}
	if a.cfg.GroupMode != GroupModeAD || a.cfg.DialTimeout.D() != DefaultDialTimeout {
		t.Errorf("defaults not applied: %+v", a.cfg)
	}
}

func TestNewRefuses(t *testing.T) {
	j := newJournal(t)
	tests := []struct {
		name string
		cfg  Config
		opts Options
	}{
		{"invalid config", Config{}, Options{Audit: j}},
		{"no audit", validConfig(), Options{BindPassword: secrets}},
		{"no secret source", validConfig(), Options{Audit: j}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if a, err := New(tt.cfg, tt.opts); err == nil {
				a.Close()
				t.Error("New accepted it")
			}
		})
	}
}
