package systemd_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"

	"github.com/applianced/applianced/hardening"
)

const unitFile = "applianced.service"

// directives reads the shipped unit: section -> name -> values in order.
func directives(t *testing.T) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatalf("parse %s: %v", unitFile, err)
	}
	m := map[string]map[string][]string{}
	for _, o := range opts {
		if m[o.Section] == nil {
			m[o.Section] = map[string][]string{}
		}
		m[o.Section][o.Name] = append(m[o.Section][o.Name], o.Value)
	}
	return m
}

// TestUnitDirectives: every directive the service's safety depends on is
// present with its exact value.
func TestUnitDirectives(t *testing.T) {
	d := directives(t)
	for _, tc := range []struct{ section, name, want string }{
		{"Service", "Type", "notify"},
		{"Service", "NotifyAccess", "main"},
		{"Service", "ExecStart", "/usr/bin/applianced serve --config /etc/applianced/applianced.toml"},
		{"Service", "WatchdogSec", "30s"},
		{"Service", "Restart", "on-failure"},
		{"Service", "RestartPreventExitStatus", "78"},
		{"Service", "User", "applianced"},
		{"Service", "Group", "applianced"},
		{"Service", "AmbientCapabilities", "CAP_NET_ADMIN"},
		{"Service", "CapabilityBoundingSet", "CAP_NET_ADMIN"},
		{"Service", "NoNewPrivileges", "yes"},
		{"Service", "StateDirectory", "applianced"},
		{"Service", "StateDirectoryMode", "0700"},
		{"Service", "RuntimeDirectory", "applianced"},
		{"Service", "RuntimeDirectoryMode", "0755"},
		{"Service", "ConfigurationDirectory", "applianced"},
		{"Service", "ConfigurationDirectoryMode", "0750"},
		{"Service", "UMask", "0077"},
		{"Service", "LimitCORE", "0"},
		{"Service", "ProtectSystem", "strict"},
		{"Service", "ProtectHome", "yes"},
		{"Service", "PrivateTmp", "yes"},
		{"Service", "PrivateDevices", "yes"},
		{"Service", "ProtectKernelTunables", "yes"},
		{"Service", "ProtectKernelModules", "yes"},
		{"Service", "ProtectKernelLogs", "yes"},
		{"Service", "ProtectControlGroups", "yes"},
		{"Service", "ProtectClock", "yes"},
		{"Service", "ProtectHostname", "yes"},
		{"Service", "ProtectProc", "invisible"},
		{"Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"},
		{"Service", "RestrictNamespaces", "yes"},
		{"Service", "RestrictRealtime", "yes"},
		{"Service", "RestrictSUIDSGID", "yes"},
		{"Service", "LockPersonality", "yes"},
		{"Service", "MemoryDenyWriteExecute", "yes"},
		{"Service", "SystemCallArchitectures", "native"},
		{"Install", "WantedBy", "multi-user.target"},
	} {
		t.Run(tc.section+"/"+tc.name, func(t *testing.T) {
			got := d[tc.section][tc.name]
			if len(got) != 1 || got[0] != tc.want {
				t.Errorf("%s= got %q, want exactly [%q]", tc.name, got, tc.want)
			}
		})
	}
	// A reload checks the file first (a broken one fails the reload job),
	// then signals the daemon.
	if got := d["Service"]["ExecReload"]; !slices.Equal(got, []string{"/usr/bin/applianced config reload --config /etc/applianced/applianced.toml"}) {
		t.Errorf("ExecReload= got %q, want the synchronous config reload", got)
	}
	// The system call filter is the system-service set, narrowed further.
	if got := d["Service"]["SystemCallFilter"]; len(got) == 0 || got[0] != "@system-service" || slices.ContainsFunc(got[1:], func(s string) bool { return !strings.HasPrefix(s, "~") }) {
		t.Errorf("SystemCallFilter= got %q, want @system-service then only ~deny lists", got)
	}
}

// TestUnitRunsUnprivileged: no root, no capability beyond CAP_NET_ADMIN,
// no way to gain one.
func TestUnitRunsUnprivileged(t *testing.T) {
	d := directives(t)["Service"]
	for _, name := range []string{"User", "Group"} {
		if v := d[name]; len(v) != 1 || v[0] == "root" || v[0] == "0" {
			t.Errorf("%s= got %q, want a dedicated non-root account", name, v)
		}
	}
	for _, forbidden := range []string{"DynamicUser", "PermissionsStartOnly", "SupplementaryGroups"} {
		if v := d[forbidden]; len(v) > 0 && strings.Join(v, "") != "" {
			t.Errorf("%s= got %q, want unset", forbidden, v)
		}
	}
	for _, name := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		for _, v := range d[name] {
			for _, c := range strings.Fields(v) {
				if c != "CAP_NET_ADMIN" {
					t.Errorf("%s= grants %s, want only CAP_NET_ADMIN", name, c)
				}
			}
		}
	}
	for _, v := range d["ExecStart"] {
		if strings.HasPrefix(v, "+") || strings.HasPrefix(v, "!") {
			t.Errorf("ExecStart=%s runs with full privileges", v)
		}
	}
}

// TestUnitDocumentsMasterKeyCredential: the unit explains how to keep the
// master key as an encrypted credential, with the credential name the
// daemon reads.
func TestUnitDocumentsMasterKeyCredential(t *testing.T) {
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"LoadCredentialEncrypted=master.key:/etc/credstore.encrypted/applianced.master.key",
		"systemd-creds encrypt --name=master.key",
		"$CREDENTIALS_DIRECTORY/master.key",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
}

// TestUnitExposure scores the shipped unit with the real systemd-analyze.
func TestUnitExposure(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("skipped: systemd-analyze (Debian systemd) not installed")
	}
	got, err := hardening.UnitExposure(context.Background(), unitFile, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd-analyze security --offline=true %s: exposure %.1f", unitFile, got)
	if got > hardening.MaxExposure {
		t.Errorf("exposure got %.1f, want at most %.1f", got, hardening.MaxExposure)
	}
}

// TestModulesLoad: the kernel modules the service cannot load itself are
// loaded at boot.
func TestModulesLoad(t *testing.T) {
	b, err := os.ReadFile("modules-load.d/applianced.conf")
	if err != nil {
		t.Fatal(err)
	}
	var mods []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, ";") {
			mods = append(mods, line)
		}
	}
	slices.Sort(mods)
	if want := []string{"8021q", "nf_tables"}; !slices.Equal(mods, want) {
		t.Errorf("modules got %q, want %q", mods, want)
	}
}

// TestFirewallUnit: the boot-time restore of the firewall runs before any
// interface comes up (network-pre.target, pulled in from sysinit), as the
// service's user with only CAP_NET_ADMIN, and is as hardened as the service.
func TestFirewallUnit(t *testing.T) {
	const fw = "applianced-firewall.service"
	f, err := os.Open(fw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	opts, err := unit.DeserializeOptions(f)
	if err != nil {
		t.Fatalf("parse %s: %v", fw, err)
	}
	got := map[string]string{}
	for _, o := range opts {
		got[o.Section+"."+o.Name] += o.Value + " "
	}
	for k, want := range map[string]string{
		"Unit.DefaultDependencies":      "no",
		"Unit.Before":                   "network-pre.target",
		"Unit.Wants":                    "network-pre.target",
		"Service.Type":                  "oneshot",
		"Service.ExecStart":             "/usr/bin/applianced net restore",
		"Service.User":                  "applianced",
		"Service.CapabilityBoundingSet": "CAP_NET_ADMIN",
		"Install.WantedBy":              "sysinit.target",
	} {
		if !strings.Contains(got[k], want) {
			t.Errorf("%s: got %q, want it to hold %q", k, got[k], want)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("skipped: systemd-analyze (Debian systemd) not installed")
	}
	exp, err := hardening.UnitExposure(context.Background(), fw, true)
	if err != nil {
		t.Fatal(err)
	}
	if exp > hardening.MaxExposure {
		t.Errorf("exposure got %.1f, want at most %.1f", exp, hardening.MaxExposure)
	}
}
