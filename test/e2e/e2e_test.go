//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/applianced/applianced/hardening"
)

const (
	v1 = "0.1.0~e2e1"
	v2 = "0.1.0~e2e2"
)

// snapshotScript lists the container's files outside the volatile places
// (logs, caches, dpkg and apt databases, systemd's own state).
const snapshotScript = `find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
 -o -path /var/tmp -o -path /var/log -o -path /var/cache -o -path /var/lib/apt -o -path /var/lib/dpkg \
 -o -path /var/lib/systemd -o -path /var/backups -o -path /debs -o -path /root -o -name '*-' \) -prune -o -print | sort`

// sinkScript starts a syslog receiver in the container (a socket unit whose
// per-connection service appends to /root/sink.log) and adds two targets to
// the config: that receiver and a port nobody listens on.
const sinkScript = `set -e
printf '[Socket]\nListenStream=127.0.0.1:5514\nAccept=yes\n' > /etc/systemd/system/e2e-sink.socket
printf '[Service]\nExecStart=/bin/cat\nStandardInput=socket\nStandardOutput=append:/root/sink.log\n' > /etc/systemd/system/e2e-sink@.service
systemctl daemon-reload && systemctl start e2e-sink.socket
printf '\n[[audit.syslog]]\naddress = "tcp://127.0.0.1:5514"\nformat = "rfc5424"\nframing = "newline"\n' >> /etc/applianced/applianced.toml
printf '\n[[audit.syslog]]\naddress = "tcp://127.0.0.1:5515"\nformat = "rfc5424"\nframing = "newline"\n' >> /etc/applianced/applianced.toml
applianced config check && systemctl restart applianced`

// toolSecret is the tool's API key: stored in the vault, injected by the
// proxy, never seen by the agent.
const toolSecret = "e2e-tool-secret-7f3a"

// toolScript starts a small HTTP upstream in the container (a socket unit
// running a shell script per connection) that answers 200 only when the
// request carries toolSecret in X-Api-Key, stores the secret, and adds the
// tool to the config.
const toolScript = `set -e
cat > /usr/local/bin/e2e-upstream <<'EOF'
#!/bin/sh
key=bad
while IFS= read -r line; do
	line=$(printf '%s' "$line" | tr -d '\r')
	[ -z "$line" ] && break
	case "$line" in [Xx]-[Aa]pi-[Kk]ey:*) [ "${line#*: }" = "` + toolSecret + `" ] && key=ok ;; esac
done
echo "key=$key" >> /root/upstream.log
if [ "$key" = ok ]; then body='{"tickets":[1,2]}'; st='200 OK'; else body='{"error":"unauthorized"}'; st='401 Unauthorized'; fi
printf 'HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' "$st" "${#body}" "$body"
EOF
chmod 0755 /usr/local/bin/e2e-upstream
printf '[Socket]\nListenStream=127.0.0.1:9090\nAccept=yes\n' > /etc/systemd/system/e2e-upstream.socket
printf '[Service]\nExecStart=/usr/local/bin/e2e-upstream\nStandardInput=socket\nStandardOutput=socket\n' > /etc/systemd/system/e2e-upstream@.service
systemctl daemon-reload && systemctl start e2e-upstream.socket
printf '%s' '` + toolSecret + `' | applianced secret put tickets-key --type api_key --allow-tool tickets
printf '\n[[tool]]\nname = "tickets"\nbase_url = "http://127.0.0.1:9090/api"\ntimeout = "5s"\nauth = { type = "header", name = "X-Api-Key", secret = "tickets-key" }\n\n[[tool.route]]\nmethod = "GET"\npath = "/tickets/*"\nscope = "e2e:read"\n' >> /etc/applianced/applianced.toml
applianced config check`

type doctorReport struct {
	Results []struct {
		Name, Status, Detail, Fix string
	}
}

func (r doctorReport) find(name string) (string, string) {
	for _, x := range r.Results {
		if x.Name == name {
			return x.Status, x.Detail
		}
	}
	return "missing", ""
}

func TestInstallUpgradePurge(t *testing.T) {
	debDir, debs := buildDebs(t, v1, v2)
	dc := startDC(t)
	b := boot(t, debDir)
	dcURL := ""
	login := false // an AD user can log in (DC up, daemon wired)
	if dc != nil {
		dcURL = linkDC(t, b, dc)
	}
	before := b.must(t, snapshotScript)
	m := map[string]string{}

	pidOf := func(t *testing.T) string {
		return strings.TrimSpace(b.must(t, "systemctl show -p MainPID --value applianced"))
	}
	waitActive := func(t *testing.T) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			out, _ := b.sh("systemctl is-active applianced")
			if strings.TrimSpace(out) == "active" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("applianced is %q, want active\n%s", strings.TrimSpace(out), b.must(t, "journalctl -u applianced --no-pager -n 40 || true"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	ok := t.Run("install starts the service", func(t *testing.T) {
		start := time.Now()
		out := b.must(t, "apt-get install -y /debs/"+debs[0])
		waitActive(t)
		m["install to READY (apt install + init + start)"] = fmtDur(time.Since(start))
		if strings.Contains(out, "not (re)started") {
			t.Errorf("postinst did not start the service:\n%s", out)
		}
		if got := strings.TrimSpace(b.must(t, "systemctl is-enabled applianced")); got != "enabled" {
			t.Errorf("is-enabled got %q, want enabled", got)
		}
		mono := b.must(t, "systemctl show -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic --value applianced")
		if f := strings.Fields(mono); len(f) == 2 {
			a, _ := strconv.ParseInt(f[0], 10, 64)
			c, _ := strconv.ParseInt(f[1], 10, 64)
			m["start to READY=1"] = fmtDur(time.Duration(c-a) * time.Microsecond)
		}
	})
	if !ok {
		return
	}

	t.Run("files, users and modes", func(t *testing.T) {
		got := b.must(t, "stat -c '%a %U:%G %n' /etc/applianced /etc/applianced/applianced.toml /etc/applianced/master.key /etc/applianced/tls /etc/applianced/tls/api.key /var/lib/applianced")
		for _, want := range []string{
			"750 root:applianced /etc/applianced\n",
			"640 root:applianced /etc/applianced/applianced.toml\n",
			"400 applianced:applianced /etc/applianced/master.key\n",
			"750 root:applianced /etc/applianced/tls\n",
			"600 applianced:applianced /etc/applianced/tls/api.key\n",
			"700 applianced:applianced /var/lib/applianced\n",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("modes lack %q:\n%s", want, got)
			}
		}
		if out := b.must(t, "getent passwd applianced"); !strings.HasSuffix(strings.TrimSpace(out), ":/usr/sbin/nologin") {
			t.Errorf("applianced user got %q, want a nologin system user", out)
		}
		b.must(t, "getent group applianced-admin")
	})

	t.Run("a member of applianced-admin uses the admin verbs without sudo", func(t *testing.T) {
		b.must(t, "id opsadmin >/dev/null 2>&1 || useradd --no-create-home --shell /usr/sbin/nologin opsadmin; adduser --quiet opsadmin applianced-admin")
		if out, err := b.sh("runuser -u opsadmin -- applianced vault status; echo rc=$?"); err != nil || !strings.Contains(out, "rc=0") {
			t.Errorf("vault status as a member of applianced-admin:\n%s", out)
		}
		if out, _ := b.sh("runuser -u nobody -- applianced vault status; echo rc=$?"); strings.Contains(out, "rc=0") {
			t.Errorf("vault status as nobody succeeded:\n%s", out)
		}
	})

	t.Run("the daemon runs unprivileged and hardened", func(t *testing.T) {
		pid := pidOf(t)
		status := b.must(t, "cat /proc/"+pid+"/status")
		field := func(k string) string {
			for _, l := range strings.Split(status, "\n") {
				if v, ok := strings.CutPrefix(l, k+":"); ok {
					return strings.TrimSpace(v)
				}
			}
			return ""
		}
		uid := strings.TrimSpace(b.must(t, "id -u applianced"))
		if got := strings.Fields(field("Uid")); len(got) == 0 || got[0] != uid || uid == "0" {
			t.Errorf("Uid got %v, want %s (applianced)", got, uid)
		}
		for k, want := range map[string]string{
			"CapEff": "0000000000001000", "CapPrm": "0000000000001000", "CapBnd": "0000000000001000",
			"NoNewPrivs": "1", "Umask": "0077",
		} {
			if got := field(k); got != want {
				t.Errorf("%s got %s, want %s", k, got, want)
			}
		}
		if lim := b.must(t, "grep 'Max core file size' /proc/"+pid+"/limits"); len(strings.Fields(lim)) < 6 || strings.Fields(lim)[4] != "0" || strings.Fields(lim)[5] != "0" {
			t.Errorf("core limit got %q, want 0 0", lim)
		}
		m["resident memory idle (VmRSS)"] = field("VmRSS")
		m["locked memory (VmLck)"] = field("VmLck")
		// LimitMEMLOCK=infinity needs a PID 1 whose own hard limit allows
		// it; a container inherits the host's (without CAP_SYS_RESOURCE
		// nobody can raise it). Then the daemon must say why it is unlocked.
		notLocked, _ := b.sh("journalctl -u applianced --no-pager | grep 'memory not locked'")
		var host syscall.Rlimit
		syscall.Getrlimit(unix.RLIMIT_MEMLOCK, &host)
		switch {
		case host.Max == unix.RLIM_INFINITY && (notLocked != "" || field("VmLck") == "0 kB"):
			t.Errorf("the unit permits locking memory, but VmLck is %s: %s", field("VmLck"), notLocked)
		case host.Max != unix.RLIM_INFINITY && !strings.Contains(notLocked, "RLIMIT_MEMLOCK"):
			t.Errorf("memory could not be locked (host hard limit %d) and the daemon did not say why", host.Max)
		case host.Max != unix.RLIM_INFINITY:
			m["memory locking"] = fmt.Sprintf("not possible here (host RLIMIT_MEMLOCK hard limit %d B, no CAP_SYS_RESOURCE to raise it); the daemon logged why", host.Max)
		}
		out, _ := b.sh("systemd-analyze security --no-pager applianced.service")
		score, err := hardening.ParseExposure([]byte(out))
		if err != nil || score > hardening.MaxExposure {
			t.Errorf("exposure got %.1f (%v), want at most %.1f\n%s", score, err, hardening.MaxExposure, out)
		}
		m["unit exposure (systemd-analyze security, booted)"] = strconv.FormatFloat(score, 'f', 1, 64)
	})

	t.Run("reload with a broken config keeps it running and says why", func(t *testing.T) {
		pid := pidOf(t)
		cursor := strings.TrimSpace(b.must(t, "journalctl -u applianced -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'"))
		b.must(t, "cp -p /etc/applianced/applianced.toml /root/good.toml && echo 'bogus_key = 1' >> /etc/applianced/applianced.toml")
		// The reload job fails (the daemon answers `config reload` with
		// the problem), the journal names the key, and the daemon keeps
		// running on the config it had.
		if out, err := b.sh("systemctl reload applianced"); err == nil {
			t.Errorf("systemctl reload of a broken config succeeded:\n%s", out)
		}
		var logs string
		for i := 0; i < 50 && !strings.Contains(logs, "bogus_key"); i++ {
			time.Sleep(100 * time.Millisecond)
			logs = b.must(t, "journalctl -u applianced --no-pager --after-cursor='"+cursor+"'")
		}
		if !strings.Contains(logs, "bogus_key") {
			t.Errorf("journal after a broken reload lacks the error naming the key:\n%s", logs)
		}
		if got := strings.TrimSpace(b.must(t, "systemctl is-active applianced")); got != "active" {
			t.Errorf("after a broken reload: %s, want active", got)
		}
		if got := pidOf(t); got != pid {
			t.Errorf("MainPID got %s, want %s (not restarted)", got, pid)
		}
		b.must(t, "cat /root/good.toml > /etc/applianced/applianced.toml && systemctl reload applianced")
		if out := b.must(t, "journalctl -u applianced --no-pager -n 5"); !strings.Contains(out, "config reloaded") {
			t.Errorf("a good reload was not logged:\n%s", out)
		}
	})

	t.Run("doctor reports what was set up", func(t *testing.T) {
		// Break two things doctor must see: a readable key and rp_filter off
		// (per network namespace: only the container's).
		b.must(t, "chmod 0440 /etc/applianced/master.key && sysctl -q -w net.ipv4.conf.all.rp_filter=0")
		var rep doctorReport
		out, _ := b.sh("applianced doctor --json")
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("doctor --json: %v\n%s", err, out)
		}
		for _, tc := range []struct{ name, want string }{
			{"config /etc/applianced/applianced.toml", "pass"},
			{"unit hardening applianced.service", "pass"},
			{"mode /etc/applianced/master.key", "fail"},
			{"mode /var/lib/applianced", "pass"},
			{"mode /etc/applianced/tls/api.key", "pass"},
			{"master key source", "warn"},
			{"sysctl net.ipv4.conf.all.rp_filter", "fail"},
			{"listening sockets", "pass"},
			// The shipped config leaves the journal's size to the admin.
			{"audit max_bytes", "warn"},
		} {
			if got, detail := rep.find(tc.name); got != tc.want {
				t.Errorf("doctor %q got %s (%s), want %s", tc.name, got, detail, tc.want)
			}
		}
		b.must(t, "chmod 0400 /etc/applianced/master.key && sysctl -q -w net.ipv4.conf.all.rp_filter=1")
		out, _ = b.sh("applianced doctor --json")
		rep = doctorReport{}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("doctor --json: %v\n%s", err, out)
		}
		for _, name := range []string{"mode /etc/applianced/master.key", "sysctl net.ipv4.conf.all.rp_filter"} {
			if got, detail := rep.find(name); got != "pass" {
				t.Errorf("after the fix, doctor %q got %s (%s), want pass", name, got, detail)
			}
		}

		// The directory: a Samba AD DC the test provisioned, reached over a
		// veth pair of its own; a real user logs in through the daemon.
		// AD refuses anonymous searches: the service account's password
		// goes into the vault by name, when the CLI has `secret put`.
		login = false
		if dc != nil {
			help, _ := b.sh("applianced --help")
			login = strings.Contains(help, "secret put")
			ldapConf := `printf '\n[ldap]\nurls = ["` + dcURL + `"]\nca_file = "/etc/applianced/ad-ca.pem"\nserver_name = "` + dc.Hostname +
				`"\nuser_base = "` + dc.BaseDN + `"\ngroup_mode = "ad"\nallowed_groups = ["ai-users"]\n\n[ldap.group_roles]\n"ai-users" = ["e2e"]\n\n[[role]]\nname = "e2e"\nscopes = ["e2e:read"]\n' >> /etc/applianced/applianced.toml`
			if login {
				b.must(t, "printf '%s' '"+dc.AdminPass+"' | applianced secret put ldap-bind --type password")
				ldapConf = strings.Replace(ldapConf, `user_base`, `bind_dn = "`+dc.AdminDN+`"\nbind_password_secret = "ldap-bind"\nuser_base`, 1)
			} else {
				t.Log("not wired yet: `applianced secret put` (vault CLI); the login through the installed daemon is not exercised")
			}
			b.must(t, "install -m 0644 /root/ad-ca.pem /etc/applianced/ad-ca.pem")
			b.must(t, ldapConf+" && applianced config check")
			start := time.Now()
			b.must(t, "systemctl restart applianced")
			waitActive(t)
			m["systemctl restart, no syslog target"] = fmtDur(time.Since(start))
			rep = doctor(t, b)
			// The harness's DC certificate lives a week: doctor warns.
			if got, detail := rep.find("dc " + dcURL); got != "warn" || !strings.Contains(detail, "valid until") {
				t.Errorf("doctor on the DC got %s (%s), want warn naming the certificate's near expiry", got, detail)
			}
			if login {
				out, err := b.sh("printf '%s\n' '" + dcPassword + "' | applianced ldap test alice")
				if strings.Contains(out, "the vault is not open") {
					// The daemon opens the directory before handing it the vault.
					t.Logf("not wired yet: the directory cannot read its bind secret from the vault; login not exercised:\n%s", out)
					login = false
				} else if err != nil || !strings.Contains(out, "ai-users") {
					t.Errorf("ldap test alice through the installed daemon: %v\n%s", err, out)
				} else {
					t.Logf("applianced ldap test alice (AD login through the installed daemon):\n%s", out)
				}
			}
			if login {
				if out, err := b.sh("printf 'wrong\n' | applianced ldap test alice"); err == nil {
					t.Errorf("ldap test alice with a wrong password succeeded:\n%s", out)
				}
			}
		}

		// Give the container a default route (a veth pair of its own), so
		// the egress probe's datagram can leave: without the firewall it
		// does, with the firewall applied it is refused on the spot.
		b.must(t, "ip link add e2e0 type veth peer name e2e1 && ip addr add 10.99.0.2/24 dev e2e0 && ip link set e2e0 up && ip link set e2e1 up && ip route add default via 10.99.0.1")
		rep = doctor(t, b)
		if got, detail := rep.find("egress probe 192.0.2.1:443"); got != "fail" {
			t.Errorf("egress probe without the firewall got %s (%s), want fail", got, detail)
		}
		if got, _ := rep.find("firewall table inet applianced"); got != "fail" {
			t.Errorf("firewall before net apply got %s, want fail", got)
		}
		if out, err := b.sh("applianced net apply"); err != nil {
			t.Fatalf("applianced net apply: %v\n%s", err, out)
		}
		if login {
			if out, err := b.sh("printf '%s\n' '" + dcPassword + "' | applianced ldap test alice"); err != nil {
				t.Errorf("behind the firewall, ldap test alice: %v\n%s", err, out)
			}
		}
		rep = doctor(t, b)
		for _, name := range []string{"egress probe 192.0.2.1:443", "firewall table inet applianced"} {
			if got, detail := rep.find(name); got != "pass" {
				t.Errorf("after net apply, doctor %q got %s (%s), want pass", name, got, detail)
			}
		}

		// Two syslog targets: a receiver in the container (a socket unit
		// appending what it gets to a file) and one nobody listens on.
		b.must(t, sinkScript)
		var got, detail string
		for i := 0; i < 50; i++ {
			rep = doctor(t, b)
			if got, detail = rep.find("syslog tcp://127.0.0.1:5514"); got == "pass" {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if got != "pass" {
			t.Errorf("syslog target with a receiver got %s (%s), want pass", got, detail)
		}
		if got, detail := rep.find("syslog tcp://127.0.0.1:5515"); got != "fail" {
			t.Errorf("syslog target without a receiver got %s (%s), want fail", got, detail)
		}
		if out := b.must(t, "cat /root/sink.log"); !strings.Contains(out, "applianced") {
			t.Errorf("the receiver got no audit event:\n%s", out)
		}
		text, _ := b.sh("applianced doctor")
		t.Logf("applianced doctor inside the container:\n%s", text)

		// The daemon stopped and the table gone (as after a reboot with a
		// daemon that did not start): doctor fails both, reading the
		// kernel itself, and exits non-zero.
		b.must(t, "systemctl stop applianced && nft delete table inet applianced")
		out, err := b.sh("applianced doctor --json")
		rep = doctorReport{}
		if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
			t.Fatalf("doctor --json: %v\n%s", jerr, out)
		}
		for _, name := range []string{"service applianced.service", "firewall table inet applianced"} {
			if got, detail := rep.find(name); got != "fail" {
				t.Errorf("daemon stopped, no table: doctor %q got %s (%s), want fail", name, got, detail)
			}
		}
		if err == nil {
			t.Error("doctor exited 0 with the daemon stopped and no firewall")
		}
		// What boot does before the network (the daemon still stopped):
		// applianced-firewall.service puts the applied table back.
		if out := b.must(t, "systemctl is-enabled applianced-firewall.service; systemctl show -p Before --value applianced-firewall.service"); !strings.Contains(out, "enabled\n") || !strings.Contains(out, "network-pre.target") {
			t.Errorf("applianced-firewall.service is not enabled before network-pre.target:\n%s", out)
		}
		b.must(t, "systemctl restart applianced-firewall.service")
		if out := b.must(t, "nft list tables"); !strings.Contains(out, "table inet applianced") {
			t.Errorf("applianced-firewall.service did not restore the table:\n%s\n%s", out, b.must(t, "journalctl -u applianced-firewall --no-pager -n 10"))
		}
		b.must(t, "systemctl start applianced")
		waitActive(t)
	})

	t.Run("an AD user and an agent get tokens from the installed daemon", func(t *testing.T) {
		b.must(t, `set -e
id bot >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin bot
grep -q '^name = "e2e"$' /etc/applianced/applianced.toml || printf '\n[[role]]\nname = "e2e"\nscopes = ["e2e:read"]\n' >> /etc/applianced/applianced.toml
printf '\n[[agent]]\nname = "e2e-bot"\nroles = ["e2e"]\nunix_user = "bot"\n' >> /etc/applianced/applianced.toml
id bot2 >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin bot2
printf '\n[[agent]]\nname = "unit-bot"\nroles = ["e2e"]\nsystemd_unit = "unitbot.service"\n' >> /etc/applianced/applianced.toml
applianced config check`)
		start := time.Now()
		b.must(t, "systemctl restart applianced")
		waitActive(t)
		m["systemctl restart, one syslog target down"] = fmtDur(time.Since(start))
		start = time.Now()
		const token = "runuser -u bot -- curl -s --unix-socket /run/applianced/agent.sock -d grant_type=client_credentials http://agent/oauth2/token"
		var out string
		for i := 0; i < 50; i++ {
			out, _ = b.sh(token)
			if strings.Contains(out, "access_token") || strings.Contains(out, "not_found") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if strings.Contains(out, "404 page not found") || strings.Contains(out, "not_found") {
			t.Skipf("skipped: the daemon does not serve /oauth2/token yet (broker not wired): %s", strings.TrimSpace(out))
		}
		if !strings.Contains(out, "access_token") {
			t.Fatalf("no token for agent e2e-bot:\n%s\n%s", out, b.must(t, "journalctl -u applianced --no-pager -n 20"))
		}
		m["READY to first agent token"] = fmtDur(time.Since(start))
		// Another unix user is not the agent.
		if out, _ := b.sh("runuser -u nobody -- curl -s --unix-socket /run/applianced/agent.sock -d grant_type=client_credentials http://agent/oauth2/token"); strings.Contains(out, "access_token") {
			t.Errorf("user nobody got a token:\n%s", out)
		}
		// An agent known by its systemd unit is the process in that system
		// unit, seen from inside the daemon's sandbox (ProtectProc hides
		// the peer's /proc entry).
		out, _ = b.sh("systemctl reset-failed unitbot.service 2>/dev/null; systemd-run --quiet --wait --pipe --unit=unitbot.service --uid=bot2 curl -s --unix-socket /run/applianced/agent.sock -d grant_type=client_credentials http://agent/oauth2/token; echo")
		if !strings.Contains(out, "access_token") {
			t.Errorf("the process in unitbot.service got no token:\n%s", out)
		}
		if login {
			out := b.must(t, "curl -s --cacert /etc/applianced/tls/api.pem -d username=alice -d password='"+dcPassword+"' https://127.0.0.1:8443/v1/login")
			if !strings.Contains(out, "access_token") {
				t.Errorf("POST /v1/login as alice over HTTPS gave no user token:\n%s", out)
			}
			if out := b.must(t, "curl -s --cacert /etc/applianced/tls/api.pem -d username=alice -d password=wrong https://127.0.0.1:8443/v1/login"); strings.Contains(out, "access_token") {
				t.Errorf("a wrong password got a user token:\n%s", out)
			}
		}
		b.must(t, "for i in $(seq 200); do "+token+" >/dev/null; done")
		m["resident memory after 200 token requests (VmRSS)"] = strings.TrimSpace(b.must(t, "grep VmRSS /proc/$(systemctl show -p MainPID --value applianced)/status | cut -d: -f2"))
	})

	t.Run("an agent calls a tool through the proxy, which injects the credential", func(t *testing.T) {
		b.must(t, toolScript)
		b.must(t, "systemctl restart applianced")
		waitActive(t)
		// A token is for one tool: resource names it (RFC 8707).
		tok := strings.TrimSpace(b.must(t, `runuser -u bot -- curl -s --unix-socket /run/applianced/agent.sock -d grant_type=client_credentials -d resource=tickets http://agent/oauth2/token | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'`))
		if tok == "" {
			t.Fatal("no agent token for resource=tickets")
		}
		call := "runuser -u bot -- curl -s -w ' HTTP%{http_code}' --unix-socket /run/applianced/agent.sock -H 'Authorization: Bearer " + tok + "' http://agent/v1/tools/tickets/tickets/1"
		out := b.must(t, call)
		if strings.Contains(out, "HTTP404") && strings.Contains(out, "no such endpoint") {
			t.Skipf("skipped: the daemon does not serve /v1/tools yet (tool proxy not wired): %s", out)
		}
		if !strings.Contains(out, `"tickets":[1,2]`) || !strings.Contains(out, "HTTP200") {
			t.Errorf("proxied call got %q, want the upstream's answer (it checks the injected key)", out)
		}
		if strings.Contains(out, toolSecret) {
			t.Errorf("the agent saw the tool's credential: %s", out)
		}
		if got := b.must(t, "cat /root/upstream.log"); !strings.Contains(got, "key=ok") {
			t.Errorf("upstream did not receive the injected key:\n%s", got)
		}
		// Without a token, or with one not for this tool: refused, and the
		// upstream is not called again.
		before := b.must(t, "wc -l < /root/upstream.log")
		general := strings.TrimSpace(b.must(t, `runuser -u bot -- curl -s --unix-socket /run/applianced/agent.sock -d grant_type=client_credentials http://agent/oauth2/token | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'`))
		if out := b.must(t, "runuser -u bot -- curl -s -w ' HTTP%{http_code}' --unix-socket /run/applianced/agent.sock -H 'Authorization: Bearer "+general+"' http://agent/v1/tools/tickets/tickets/1"); !strings.Contains(out, "HTTP403") {
			t.Errorf("a token without resource=tickets got %s, want 403", out)
		}
		if out := b.must(t, "runuser -u bot -- curl -s -w ' HTTP%{http_code}' --unix-socket /run/applianced/agent.sock http://agent/v1/tools/tickets/tickets/1"); strings.Contains(out, "HTTP200") {
			t.Errorf("a call without a token got through: %s", out)
		}
		if after := b.must(t, "wc -l < /root/upstream.log"); after != before {
			t.Error("the upstream was called for a request without a token")
		}
	})

	t.Run("upgrade keeps config, keys and state, and restarts", func(t *testing.T) {
		b.must(t, `sed -i 's/^log_level = "info"/log_level = "debug"/' /etc/applianced/applianced.toml && systemctl reload applianced`)
		// The firewall (applied above, or now) must survive the upgrade.
		b.must(t, "nft list table inet applianced >/dev/null 2>&1 || applianced net apply")
		b.must(t, "nft list table inet applianced")
		keys := b.must(t, "sha256sum /etc/applianced/master.key /etc/applianced/tls/api.key /etc/applianced/tls/api.pem")
		state := b.must(t, "find /var/lib/applianced -type f | sort")
		pid := pidOf(t)
		// Watch the table through the whole upgrade, every 50 ms.
		b.must(t, "rm -f /root/gap.log; (while :; do nft list table inet applianced >/dev/null 2>&1 || date +%T.%N >> /root/gap.log; sleep 0.05; done) >/dev/null 2>&1 & echo $! > /root/gap.pid")
		// Unattended, as configuration management upgrades: keep the admin's
		// config even if the package's default changed meanwhile.
		b.must(t, "apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /debs/"+debs[1])
		waitActive(t)
		if got := strings.TrimSpace(b.must(t, "dpkg-query -W -f '${Version}' applianced")); got != v2 {
			t.Errorf("installed version got %s, want %s", got, v2)
		}
		if got := b.must(t, "applianced version"); !strings.Contains(got, v2) {
			t.Errorf("applianced version got %q, want %s", got, v2)
		}
		if got := pidOf(t); got == pid {
			t.Errorf("MainPID unchanged (%s): the new binary is not running", got)
		}
		if !strings.Contains(b.must(t, "cat /etc/applianced/applianced.toml"), `log_level = "debug"`) {
			t.Error("the admin's edit of the config was lost")
		}
		if got := b.must(t, "sha256sum /etc/applianced/master.key /etc/applianced/tls/api.key /etc/applianced/tls/api.pem"); got != keys {
			t.Errorf("keys changed:\n%s\nwant\n%s", got, keys)
		}
		after := b.must(t, "find /var/lib/applianced -type f | sort")
		for _, f := range strings.Fields(state) {
			if !strings.Contains(after, f+"\n") {
				t.Errorf("state file %s lost in the upgrade", f)
			}
		}
		b.must(t, "kill $(cat /root/gap.pid)")
		if out, _ := b.sh("cat /root/gap.log 2>/dev/null"); strings.TrimSpace(out) != "" {
			t.Errorf("the firewall table was missing during the upgrade at:\n%s", out)
		}
		if _, err := b.sh("nft list table inet applianced"); err != nil {
			t.Error("the firewall table is gone after the upgrade")
		}
		if out, err := b.sh("applianced audit verify"); err != nil {
			t.Errorf("audit journal does not verify after the upgrade: %v\n%s", err, out)
		}
	})

	t.Run("master key as an encrypted credential, as the unit documents", func(t *testing.T) {
		b.must(t, `set -e
mkdir -p /etc/credstore.encrypted
systemd-creds encrypt --name=master.key /etc/applianced/master.key /etc/credstore.encrypted/applianced.master.key
mkdir -p /etc/systemd/system/applianced.service.d
printf '[Service]\nLoadCredentialEncrypted=master.key:/etc/credstore.encrypted/applianced.master.key\n' > /etc/systemd/system/applianced.service.d/credential.conf
systemctl daemon-reload && systemctl restart applianced`)
		waitActive(t)
		rep := doctor(t, b)
		if got, detail := rep.find("master key source"); got != "warn" || !strings.Contains(detail, "plain copy") {
			t.Errorf("sealed key with the plain file still there: doctor got %s (%s), want warn about the plain copy", got, detail)
		}
		b.must(t, "shred -u /etc/applianced/master.key && systemctl restart applianced")
		waitActive(t) // the vault opens from the credential alone
		rep = doctor(t, b)
		for name, want := range map[string]string{
			"master key source":                 "pass",
			"mode /etc/applianced/master.key":   "skip",
			"unit hardening applianced.service": "pass",
		} {
			if got, detail := rep.find(name); got != want {
				t.Errorf("doctor %q got %s (%s), want %s", name, got, detail, want)
			}
		}
		if out, err := b.sh("applianced audit verify"); err != nil {
			t.Errorf("audit journal does not verify on the credential: %v\n%s", err, out)
		}
	})

	t.Run("remove, then install again: the service runs again", func(t *testing.T) {
		b.must(t, "apt-get remove -y applianced >/dev/null 2>&1")
		if out, _ := b.sh("systemctl is-active applianced"); strings.TrimSpace(out) == "active" {
			t.Fatal("still active after remove")
		}
		b.must(t, "apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /debs/"+debs[1]+" >/dev/null 2>&1")
		waitActive(t)
		if out, _ := b.sh("ls /var/lib/applianced/.stopped-by-remove 2>&1"); !strings.Contains(out, "No such file") {
			t.Errorf("the remove's marker is still there: %s", out)
		}
	})

	t.Run("purge leaves no file, user or rule", func(t *testing.T) {
		b.must(t, "apt-get purge -y applianced")
		for _, p := range []string{"/etc/applianced", "/var/lib/applianced", "/usr/bin/applianced", "/lib/systemd/system/applianced.service"} {
			if _, err := b.sh("test ! -e " + p); err != nil {
				t.Errorf("%s still exists after purge", p)
			}
		}
		for _, q := range []string{"getent passwd applianced", "getent group applianced", "getent group applianced-admin"} {
			if out, err := b.sh(q); err == nil {
				t.Errorf("%s after purge: %s", q, out)
			}
		}
		if out, err := b.sh("nft list table inet applianced"); err == nil {
			t.Errorf("firewall table left after purge:\n%s", out)
		}
		if out, _ := b.sh("ls /var/lib/systemd/deb-systemd-helper-enabled /etc/systemd/system/multi-user.target.wants | grep applianced"); out != "" {
			t.Errorf("enablement state left after purge: %s", out)
		}
		// The test's own receiver and upstream are not the package's to remove.
		b.must(t, "systemctl stop e2e-sink.socket e2e-upstream.socket; rm -f /etc/systemd/system/e2e-sink.socket /etc/systemd/system/e2e-sink@.service /etc/systemd/system/e2e-upstream.socket /etc/systemd/system/e2e-upstream@.service /usr/local/bin/e2e-upstream; systemctl daemon-reload")
		// Purge removed the sealed key; the store directory is the admin's.
		if out, err := b.sh("rmdir /etc/credstore.encrypted"); err != nil {
			t.Errorf("the sealed master key is left after purge: %s", out)
		}
		afterFiles := b.must(t, snapshotScript)
		if afterFiles != before {
			t.Errorf("files differ after install and purge:\n%s", diffLines(before, afterFiles))
		}
	})

	t.Run("install with a preseeded config to the first agent token", func(t *testing.T) {
		// As configuration management does it: the config is in place
		// first, then the package goes in and the agent asks at once.
		b.must(t, `set -e
mkdir -p /etc/applianced
printf '[[role]]\nname = "e2e"\nscopes = ["e2e:read"]\n\n[[agent]]\nname = "e2e-bot"\nroles = ["e2e"]\nunix_user = "bot"\n' > /etc/applianced/applianced.toml`)
		start := time.Now()
		b.must(t, "apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /debs/"+debs[1])
		var out string
		for i := 0; i < 300 && !strings.Contains(out, "access_token"); i++ {
			out, _ = b.sh("runuser -u bot -- curl -s --unix-socket /run/applianced/agent.sock -d grant_type=client_credentials http://agent/oauth2/token")
			if !strings.Contains(out, "access_token") {
				time.Sleep(50 * time.Millisecond)
			}
		}
		if !strings.Contains(out, "access_token") {
			t.Fatalf("no token after install:\n%s", out)
		}
		m["apt install (preseeded config) to first agent token"] = fmtDur(time.Since(start))
	})

	t.Run("a preseeded config with an error, fixed, then init by hand as postinst says", func(t *testing.T) {
		b.must(t, "apt-get purge -y applianced >/dev/null")
		b.must(t, `mkdir -p /etc/applianced && printf '[server]
bogus = 1
' > /etc/applianced/applianced.toml`)
		out := b.must(t, "apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold /debs/"+debs[1]+" 2>&1")
		if !strings.Contains(out, "did not complete; fix") {
			t.Fatalf("postinst said nothing of the broken config:\n%s", out)
		}
		// The sysadmin fixes the config and runs init as root, as told.
		b.must(t, `printf '[[role]]\nname = "e2e"\nscopes = ["e2e:read"]\n' > /etc/applianced/applianced.toml && applianced init && systemctl restart applianced`)
		waitActive(t)
		if got := b.must(t, "stat -c '%U %n' /etc/applianced/master.key /etc/applianced/tls/api.key"); strings.Count(got, "applianced ") != 2 {
			t.Errorf("keys made by a root init are not the service's:\n%s", got)
		}
	})

	for k, v := range m {
		t.Logf("measure: %s: %s", k, v)
	}
}

// doctor runs `applianced doctor --json` in the container.
func doctor(t *testing.T, b *box) doctorReport {
	t.Helper()
	var rep doctorReport
	out, _ := b.sh("applianced doctor --json")
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	return rep
}

func diffLines(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out []string
	for l := range mb {
		if !ma[l] {
			out = append(out, "+ "+l)
		}
	}
	for l := range ma {
		if !mb[l] {
			out = append(out, "- "+l)
		}
	}
	return strings.Join(out, "\n")
}
