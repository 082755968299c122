package netseg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/netns"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Tier 2: a real kernel in network namespaces made by the test. The
// firewall runs inside the "ai" namespace.

const shortDial = 500 * time.Millisecond // below the first SYN retransmit (1 s)

type labRun struct {
	lab *netns.Lab
	m   *Manager
	j   *audit.Journal
	ctx context.Context
}

// startLab builds the namespaces, the servers every test talks to, a real
// audit journal and a running Manager inside the ai namespace.
func startLab(t *testing.T) *labRun { return startLabDrift(t, time.Second) }

// startLabDrift is startLab with the periodic drift check every driftEvery.
func startLabDrift(t *testing.T, driftEvery time.Duration) *labRun {
	t.Helper()
	lab := netns.New(t)
	m, j := newLabManager(t, lab, Options{DriftInterval: driftEvery, LogInterval: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitNflogBound(t, lab.AI, defaultLogGroup)
	serveTCP(t, lab.Hosts["dc"].NS, "10.10.0.11:636")
	serveTCP(t, lab.Hosts["siem"].NS, "10.40.0.10:6514")
	serveTCP(t, lab.Hosts["internet"].NS, "203.0.113.10:443")
	serveTCP(t, lab.AI, "0.0.0.0:8443")
	serveTCP(t, lab.AI, "0.0.0.0:22")
	return &labRun{lab: lab, m: m, j: j, ctx: ctx}
}

// waitNflogBound waits until Run's drop log listens on group in ns: a
// packet dropped before that is counted but never logged, which a test
// counting logged drops would take for a lost event.
func waitNflogBound(t *testing.T, ns *netns.NS, group int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var bound bool
		err := ns.Do(func() error {
			b, err := os.ReadFile("/proc/thread-self/net/netfilter/nfnetlink_log")
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) > 0 && f[0] == strconv.Itoa(group) {
					bound = true
				}
			}
			return err
		})
		if err != nil {
			t.Fatalf("reading the nflog bindings: %v", err)
		}
		if bound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the drop log never bound nflog group %d", group)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func serveTCP(t *testing.T, ns *netns.NS, addr string) {
	t.Helper()
	l := ns.Listen(t, "tcp", addr)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

func reachTCP(ns *netns.NS, addr string) error {
	c, err := ns.Dial(context.Background(), "tcp", addr, shortDial)
	if err != nil {
		return err
	}
	return c.Close()
}

// reachUDP sends one datagram from ns to addr and reports whether the
// listener got it.
func reachUDP(t *testing.T, from *netns.NS, to *netns.Host, port int) bool {
	t.Helper()
	pc := to.ListenPacket(t, "udp", net.JoinHostPort(to.Addr.String(), strconv.Itoa(port)))
	defer pc.Close()
	c, err := from.Dial(context.Background(), "udp", pc.LocalAddr().String(), shortDial)
	if err == nil {
		_, err = c.Write([]byte("ping"))
		c.Close()
	}
	if err != nil {
		return false // EPERM from the output hook
	}
	pc.SetReadDeadline(time.Now().Add(shortDial))
	buf := make([]byte, 16)
	_, _, err = pc.ReadFrom(buf)
	return err == nil
}

// reachICMP sends one echo request from ns and waits for the reply.
func reachICMP(t *testing.T, from *netns.NS, to string) bool {
	t.Helper()
	pc := from.ListenPacket(t, "ip4:icmp", "0.0.0.0")
	defer pc.Close()
	id := uint16(os.Getpid())
	msg := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'a', 'p', 'p'}
	var sum uint32
	for i := 0; i+1 < len(msg); i += 2 {
		sum += uint32(msg[i])<<8 | uint32(msg[i+1])
	}
	sum += uint32(msg[len(msg)-1]) << 8
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	cs := ^uint16(sum)
	msg[2], msg[3] = byte(cs>>8), byte(cs)
	if _, err := pc.WriteTo(msg, &net.IPAddr{IP: net.ParseIP(to)}); err != nil {
		return false
	}
	pc.SetReadDeadline(time.Now().Add(shortDial))
	buf := make([]byte, 1500)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return false
		}
		if n >= 8 && buf[0] == 0 && uint16(buf[4])<<8|uint16(buf[5]) == id {
			return true
		}
	}
}

// events reads the journal until want returns true or the wait ends.
func (r *labRun) events(t *testing.T, want func([]audit.Event) bool) []audit.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rd, err := r.j.Reader(0)
		if err != nil {
			t.Fatalf("journal reader: %v", err)
		}
		var evs []audit.Event
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			e, err := rd.Next(ctx)
			cancel()
			if err != nil {
				break
			}
			evs = append(evs, e.Event)
		}
		rd.Close()
		if want(evs) || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ofType(evs []audit.Event, typ string) []audit.Event {
	var out []audit.Event
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

func TestApplySegmentsTheLab(t *testing.T) {
	r := startLab(t)
	ai, hosts := r.lab.AI, r.lab.Hosts

	// Without the firewall everything is reachable: the checks below can fail.
	if err := reachTCP(ai, "203.0.113.10:443"); err != nil {
		t.Fatalf("before apply: ai cannot reach the internet host (lab broken): %v", err)
	}
	if !reachUDP(t, ai, hosts["internet"], 53) || !reachICMP(t, ai, "203.0.113.10") {
		t.Fatal("before apply: ai cannot reach the internet host over UDP or ICMP (lab broken)")
	}

	cfg, needs := labConfig()
	plan, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if !strings.Contains(plan.String(), "audit.syslog[0].address") {
		t.Errorf("plan does not say where the SIEM egress comes from:\n%s", plan)
	}

	tcp := []reachCase{
		{"ai reaches dc ldaps", ai, "10.10.0.11:636", true},
		{"ai reaches siem syslog (derived need)", ai, "10.40.0.10:6514", true},
		{"ai cannot reach internet tcp", ai, "203.0.113.10:443", false},
		{"user reaches api", hosts["user"].NS, "10.30.0.1:8443", true},
		{"user cannot reach ssh", hosts["user"].NS, "10.30.0.1:22", false},
		{"admin reaches ssh", hosts["admin"].NS, "10.99.0.1:22", true},
	}
	checkReach(t, tcp)
	if reachUDP(t, ai, hosts["internet"], 53) {
		t.Error("ai reached the internet host over UDP")
	}
	if reachICMP(t, ai, "203.0.113.10") {
		t.Error("ai reached the internet host over ICMP")
	}

	// Blocked: 3 packets out of ai (tcp, udp, icmp), 1 SYN into ai (user→22).
	st, err := r.m.Status(context.Background())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if got := counter(st, ChainOutput, "output: count dropped"); got != 3 {
		t.Errorf("output drop counter: got %d, want 3", got)
	}
	if got := counter(st, ChainInput, "input: count dropped"); got != 1 {
		t.Errorf("input drop counter: got %d, want 1", got)
	}
	if got := counter(st, ChainOutput, "egress[0]"); got != 1 {
		t.Errorf("egress[0] (dc) counter: got %d, want 1 (one SYN)", got)
	}

	sum := func(evs []audit.Event, typ, target string) int {
		n := 0
		for _, e := range ofType(evs, typ) {
			if e.Target == target {
				p, _ := strconv.Atoi(e.Details["packets"])
				n += p
			}
		}
		return n
	}
	evs := r.events(t, func(evs []audit.Event) bool {
		return sum(evs, "net.egress_blocked", "203.0.113.10") >= 3 && sum(evs, "net.ingress_blocked", "10.30.0.2") >= 1
	})
	if got := sum(evs, "net.egress_blocked", "203.0.113.10"); got != 3 {
		t.Errorf("net.egress_blocked packets to 203.0.113.10: got %d, want 3", got)
	}
	if got := sum(evs, "net.ingress_blocked", "10.30.0.2"); got != 1 {
		t.Errorf("net.ingress_blocked packets from 10.30.0.2: got %d, want 1", got)
	}
	for _, e := range ofType(evs, "net.egress_blocked") {
		if e.Target == "203.0.113.10" && e.Details["proto"] == "tcp" && e.Details["port"] != "443" {
			t.Errorf("egress_blocked tcp event port: got %q, want 443", e.Details["port"])
		}
	}
	if len(ofType(evs, "net.apply")) != 1 {
		t.Errorf("net.apply events: got %d, want 1", len(ofType(evs, "net.apply")))
	}
}

func TestUnconfirmedApplyRollsBack(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{ConfirmWithin: 2 * time.Second}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := reachTCP(r.lab.AI, "203.0.113.10:443"); err == nil {
		t.Fatal("firewall not in force right after apply")
	}
	evs := r.events(t, func(evs []audit.Event) bool { return len(ofType(evs, "net.rollback")) > 0 })
	if len(ofType(evs, "net.rollback")) != 1 {
		t.Fatalf("net.rollback events: got %d, want 1", len(ofType(evs, "net.rollback")))
	}
	if err := reachTCP(r.lab.AI, "203.0.113.10:443"); err != nil {
		t.Errorf("after automatic rollback to no table: ai cannot reach the internet host: %v", err)
	}
	kt, err := r.m.k.read()
	if err != nil {
		t.Fatal(err)
	}
	if kt.Exists {
		t.Error("table still present after rollback to the state without one")
	}
	if err := r.m.Confirm(context.Background(), audit.Actor{}, ""); !errors.Is(err, ErrNothingToConfirm) {
		t.Errorf("Confirm after rollback: got %v, want ErrNothingToConfirm", err)
	}
}

func TestConfirmedApplyStays(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{ConfirmWithin: 2 * time.Second}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := r.m.Confirm(context.Background(), audit.Actor{}, ""); err != nil {
		t.Fatalf("Confirm: %v", err)
	}
	time.Sleep(2500 * time.Millisecond) // past the window
	if err := reachTCP(r.lab.AI, "203.0.113.10:443"); err == nil {
		t.Error("confirmed firewall was rolled back")
	}
	// A manual rollback still goes back to no table; a second one has nothing.
	if err := r.m.Rollback(context.Background(), audit.Actor{}, ""); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if err := reachTCP(r.lab.AI, "203.0.113.10:443"); err != nil {
		t.Errorf("after rollback: %v", err)
	}
	if err := r.m.Rollback(context.Background(), audit.Actor{}, ""); !errors.Is(err, ErrNothingToRollback) {
		t.Errorf("second Rollback: got %v, want ErrNothingToRollback", err)
	}
}

// An SSH session established now is protected whoever runs the apply and
// whatever their environment says ($SSH_CONNECTION is dropped by sudo): an
// apply that would stop its client from connecting again is refused, and
// goes through once the session has ended.
func TestApplyRefusesToCutAnEstablishedSSHSession(t *testing.T) {
	lab := netns.New(t)
	m, _ := newLabManager(t, lab, Options{SSHPorts: []int{22}})
	l := lab.AI.Listen(t, "tcp", "0.0.0.0:22")
	held := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			held <- c
		}
	}()
	client, err := lab.Hosts["admin"].NS.Dial(context.Background(), "tcp", "10.99.0.1:22", shortDial)
	if err != nil {
		t.Fatal(err)
	}
	server := <-held
	cfg, needs := labConfig()
	cfg.Ingress = cfg.Ingress[:1] // no admin SSH rule
	plan, err := m.Plan(context.Background(), cfg, needs, "")
	if err != nil || !strings.Contains(plan.Lockout, "10.99.0.2 to port 22") {
		t.Fatalf("Plan: lockout %q, err %v; want the session from 10.99.0.2 named", plan.Lockout, err)
	}
	if _, err := m.Apply(context.Background(), cfg, needs, ApplyOptions{}); !errors.Is(err, ErrLockout) || !strings.Contains(err.Error(), "10.99.0.2") {
		t.Fatalf("Apply with an SSH session from 10.99.0.2 open: got %v, want ErrLockout naming it", err)
	}
	if kt, _ := m.k.read(); kt.Exists {
		t.Fatal("a refused apply created the table")
	}
	client.Close()
	server.Close()
	// The session is gone (past TIME_WAIT on the client's side only).
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err = m.Apply(context.Background(), cfg, needs, ApplyOptions{})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Apply once the session ended: %v", err)
	}
}

// A VLAN that cannot be put back (its parent gone) never keeps the table
// away: drift repair and the automatic rollback program the table first,
// and say what is left undone.
func TestTableComesBackEvenWhenAVLANCannot(t *testing.T) {
	lab := netns.New(t)
	serveTCP(t, lab.Hosts["internet"].NS, "203.0.113.10:443")
	m, j := newLabManager(t, lab, Options{})
	cfg, _ := labConfig()
	cfg.VLANs = []VLAN{{Name: "ai0", Parent: "gone0", ID: 20, Addresses: []string{"10.20.0.5/24"}}}
	rs, err := buildRuleset(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The state a host had when its VLAN's parent was still there.
	m.mu.Lock()
	m.cur = &applied{Config: *cfg, rs: rs, At: time.Now()}
	m.mu.Unlock()

	t.Run("drift repair", func(t *testing.T) {
		if err := m.repair(context.Background()); err == nil || !strings.Contains(err.Error(), "gone0") {
			t.Fatalf("repair: got %v, want the VLAN's failure", err)
		}
		if kt, _ := m.k.read(); !kt.Exists {
			t.Fatal("the table was not put back because a VLAN could not be")
		}
		if err := reachTCP(lab.AI, "203.0.113.10:443"); err == nil {
			t.Error("ai reaches the internet host after the repair")
		}
	})

	t.Run("automatic rollback", func(t *testing.T) {
		// An unconfirmed apply of no ingress at all, rolling back to the
		// state whose VLAN cannot be made.
		open := &Config{Egress: []Rule{{To: []string{"0.0.0.0/0"}, Proto: "any"}}}
		ors, err := buildRuleset(open, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.k.replace(ors); err != nil {
			t.Fatal(err)
		}
		m.mu.Lock()
		prev := m.cur
		m.cur = &applied{Config: *open, rs: ors, At: time.Now()}
		p := &pendingConfirm{prev: prev, deadline: time.Now()}
		m.pending = p
		m.mu.Unlock()
		m.expire(p)
		if err := reachTCP(lab.AI, "203.0.113.10:443"); err == nil {
			t.Error("the rollback did not put the previous table back")
		}
		if st, _ := m.Status(context.Background()); !st.ConfirmBy.IsZero() || st.RollbackError != "" {
			t.Errorf("after the rollback: confirm by %v, error %q; want nothing pending", st.ConfirmBy, st.RollbackError)
		}
		r, err := j.Reader(1)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		var last audit.Event
		for range j.LastSeq() {
			e, err := r.Next(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if e.Event.Type == "net.rollback" {
				last = e.Event
			}
		}
		if last.Outcome != audit.OutcomeSuccess || !strings.Contains(last.Details["vlans_not_restored"], "gone0") {
			t.Errorf("net.rollback: %s %v, want success naming the VLAN left undone", last.Outcome, last.Details)
		}
	})
}

// reachTCPAs connects from ns to addr in a process running as uid, as an
// agent on the AI server would.
func reachTCPAs(t *testing.T, ns *netns.NS, uid int, addr string) error {
	t.Helper()
	for _, tool := range []string{"nsenter", "setpriv", "bash", "timeout"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s not installed", tool)
		}
	}
	fd, err := unix.Dup(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "netns")
	defer f.Close()
	host, port, _ := net.SplitHostPort(addr)
	u := strconv.Itoa(uid)
	cmd := exec.Command("nsenter", "--net=/proc/self/fd/3", "setpriv", "--reuid="+u, "--regid="+u, "--clear-groups",
		"timeout", "1", "bash", "-c", "exec 3<>/dev/tcp/"+host+"/"+port)
	cmd.ExtraFiles = []*os.File{f}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// The appliance's own egress (the needs derived from its config) is
// accepted only from the owners' sockets: another user on the AI server,
// an agent, cannot reach the SIEM (or the directory, or a tool's upstream)
// through it. What the admin allowed in [[net.egress]] stays host-wide.
func TestOwnEgressIsTheOwnersOnly(t *testing.T) {
	lab := netns.New(t)
	serveTCP(t, lab.Hosts["dc"].NS, "10.10.0.11:636")
	serveTCP(t, lab.Hosts["siem"].NS, "10.40.0.10:6514")
	m, _ := newLabManager(t, lab, Options{NeedsOwners: []uint32{0}})
	cfg, needs := labConfig()
	if _, err := m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := reachTCPAs(t, lab.AI, 0, "10.40.0.10:6514"); err != nil {
		t.Errorf("root (an owner) to the SIEM: %v", err)
	}
	if err := reachTCPAs(t, lab.AI, 65534, "10.40.0.10:6514"); err == nil {
		t.Error("another user reaches the SIEM through the appliance's own egress")
	}
	if err := reachTCPAs(t, lab.AI, 65534, "10.10.0.11:636"); err != nil {
		t.Errorf("another user to the DC, which [[net.egress]] allows: %v", err)
	}
	// The owners are part of the applied state: a restart restores them.
	m.mu.Lock()
	owners := m.cur.Owners
	m.mu.Unlock()
	if !slices.Equal(owners, []uint32{0}) {
		t.Errorf("applied owners %v, want [0]", owners)
	}
}

// otherProcess runs an nft command in the ai namespace, as a separate
// process would.
func otherProcess(t *testing.T, ns *netns.NS, args ...string) {
	t.Helper()
	otherProcessOutput(t, ns, args...)
}

// otherProcessOutput is otherProcess, returning what nft printed.
func otherProcessOutput(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	fd, err := unix.Dup(ns.Fd()) // the File closes its fd; the lab keeps its own
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "netns")
	defer f.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/proc/self/fd/3", "nft"}, args...)...)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// acceptLastRule replaces the last rule of our output chain (the count,
// log and drop of what nothing allowed) with an accept under the same
// comment, as someone hiding a change from a check of comments would.
func acceptLastRule(t *testing.T, ns *netns.NS) {
	t.Helper()
	out := otherProcessOutput(t, ns, "-a", "list", "chain", "inet", "applianced", "output")
	var handle, comment string
	for _, line := range strings.Split(out, "\n") {
		if m := regexp.MustCompile(`comment "(.*)" # handle (\d+)`).FindStringSubmatch(line); m != nil {
			comment, handle = m[1], m[2]
		}
	}
	if handle == "" {
		t.Fatalf("no rule with a comment and a handle in:\n%s", out)
	}
	otherProcess(t, ns, "replace", "rule", "inet", "applianced", "output", "handle", handle, "accept", "comment", `"`+comment+`"`)
}

func TestDriftIsRepaired(t *testing.T) {
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("skipped: nsenter (util-linux) not installed")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipped: nft (nftables) not installed")
	}
	tests := []struct{ name, cmd string }{
		{"flush table", "flush table inet applianced"},
		{"delete table", "delete table inet applianced"},
		{"flush chain", "flush chain inet applianced output"},
		// The same rules, comments and count: only what they do changed.
		{"policy accept", "add chain inet applianced output { type filter hook output priority 0 ; policy accept ; }"},
		{"rule replaced under its comment", ""},
		// The routed traffic's sources swapped for the uplink.
		{"forward_from replaced", `flush set inet applianced forward_from ; add element inet applianced forward_from { "eth*" }`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The periodic check is an hour away: only the nftables
			// notifications can trigger the repair in time.
			r := startLabDrift(t, time.Hour)
			cfg, needs := labConfig()
			if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			time.Sleep(300 * time.Millisecond) // the watchers subscribe as Run starts
			if tc.cmd == "" {
				acceptLastRule(t, r.lab.AI)
			} else {
				otherProcess(t, r.lab.AI, strings.Fields(tc.cmd)...)
			}
			evs := r.events(t, func(evs []audit.Event) bool { return len(ofType(evs, "net.drift")) > 0 })
			drift := ofType(evs, "net.drift")
			if len(drift) == 0 {
				t.Fatal("no net.drift event")
			}
			if drift[0].Details["repaired"] != "true" || drift[0].Details["changed"] == "" {
				t.Errorf("net.drift details: got %v, want repaired=true and what changed", drift[0].Details)
			}
			st, err := r.m.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Drift) != 0 {
				t.Errorf("drift after repair: %v", st.Drift)
			}
			if err := reachTCP(r.lab.AI, "203.0.113.10:443"); err == nil {
				t.Error("after repair ai reaches the internet host")
			}
		})
	}
}

func TestBadConfigChangesNothing(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	before, err := r.m.k.read()
	if err != nil {
		t.Fatal(err)
	}
	// A link that exists but is down, for the "parent down" case.
	h, err := r.m.l.handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "down0"}, PeerName: "down1"}); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		mut  func(c *Config)
		key  string // the error names it
	}{
		{"overlapping cidrs", func(c *Config) { c.Egress[0].To = []string{"10.0.0.0/8", "10.10.0.0/16"} }, "egress[0].to[1]"},
		{"port 0", func(c *Config) { c.Ingress[0].Ports = []int{0} }, "ingress[0].ports[0]"},
		{"unknown interface", func(c *Config) { c.Ingress[0].Interface = "nosuch0" }, "ingress[0].interface"},
		{"vlan id 4095", func(c *Config) { c.VLANs = []VLAN{{Name: "ai0", Parent: "to-user", ID: 4095}} }, "vlan[0].id"},
		{"parent missing", func(c *Config) { c.VLANs = []VLAN{{Name: "ai0", Parent: "nosuch0", ID: 20}} }, "vlan[0].parent"},
		{"parent down", func(c *Config) { c.VLANs = []VLAN{{Name: "ai0", Parent: "down0", ID: 20}} }, "vlan[0].parent: down0 is down"},
		{"forward_from star alone", func(c *Config) { c.ForwardFrom = []string{"docker0", "*"} }, "forward_from[1]"},
		{"forward_from star inside", func(c *Config) { c.ForwardFrom = []string{"ve*th"} }, "forward_from[0]"},
		{"forward_from too long", func(c *Config) { c.ForwardFrom = []string{"averyveryverylongname"} }, "forward_from[0]"},
		{"vlan parent in forward_from", func(c *Config) {
			c.VLANs = []VLAN{{Name: "ai0", Parent: "to-user", ID: 20}}
			c.ForwardFrom = []string{"to-*"}
		}, "vlan[0].parent"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c, n := labConfig()
			tc.mut(c)
			_, err := r.m.Apply(context.Background(), c, n, ApplyOptions{})
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Apply: got %v, want ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Errorf("error %q does not name %s", err, tc.key)
			}
			after, err := r.m.k.read()
			if err != nil {
				t.Fatal(err)
			}
			if d := tableDrift(r.m.cur.rs, after); len(d) != 0 || len(after.Sets) != len(before.Sets) {
				t.Errorf("kernel changed by a refused apply: %v", d)
			}
		})
	}
}

// A transaction the kernel refuses halfway leaves the previous ruleset.
func TestRefusedTransactionKeepsPrevious(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	rs, err := buildRuleset(&Config{Egress: []Rule{{To: []string{"0.0.0.0/0"}, Proto: "any"}}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The last rule looks up a set that is not in the batch.
	out := rs.Chains[1]
	out.Rules = append(out.Rules, &ruleSpec{Desc: "broken", Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: "missing", SetID: 999},
	}})
	if err := r.m.k.replace(rs); err == nil {
		t.Fatal("kernel accepted a rule referring to a missing set")
	}
	kt, err := r.m.k.read()
	if err != nil {
		t.Fatal(err)
	}
	if d := tableDrift(r.m.cur.rs, kt); len(d) != 0 {
		t.Errorf("previous ruleset damaged by a refused transaction: %v", d)
	}
	if err := reachTCP(r.lab.AI, "203.0.113.10:443"); err == nil {
		t.Error("ai reaches the internet host after a refused transaction")
	}
}

func TestApplyRefusesSSHLockout(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	cfg.Ingress = cfg.Ingress[:1] // no admin SSH rule
	ssh := "10.99.0.2 50022 10.99.0.1 22"
	_, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{SSHConnection: ssh})
	if !errors.Is(err, ErrLockout) {
		t.Fatalf("Apply: got %v, want ErrLockout", err)
	}
	if kt, _ := r.m.k.read(); kt.Exists {
		t.Error("a refused apply created the table")
	}
	if err := reachTCP(r.lab.Hosts["admin"].NS, "10.99.0.1:22"); err != nil {
		t.Errorf("admin lost SSH after a refused apply: %v", err)
	}
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{SSHConnection: ssh, Force: true}); err != nil {
		t.Fatalf("Apply --force: %v", err)
	}
	if err := reachTCP(r.lab.Hosts["admin"].NS, "10.99.0.1:22"); err == nil {
		t.Error("forced apply without an SSH rule still lets admin in (check is vacuous)")
	}
	// With the admin rule there is no lockout.
	cfg2, _ := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg2, needs, ApplyOptions{SSHConnection: ssh}); err != nil {
		t.Errorf("Apply with admin SSH allowed: %v", err)
	}
	evs := r.events(t, func(evs []audit.Event) bool { return len(ofType(evs, "net.apply")) >= 3 })
	var denied, overridden int
	for _, e := range ofType(evs, "net.apply") {
		if e.Outcome == audit.OutcomeDenied {
			denied++
		}
		if e.Outcome == audit.OutcomeSuccess && e.Details["force"] == "true" && e.Details["lockout_overridden"] != "" {
			overridden++
		}
	}
	if denied != 1 || overridden != 1 {
		t.Errorf("net.apply events: got %d denied and %d forced over a lockout, want 1 and 1", denied, overridden)
	}
}

func TestDownRemovesTableOnly(t *testing.T) {
	r := startLab(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipped: nft (nftables) not installed")
	}
	// Another table in the namespace must survive everything we do.
	otherProcess(t, r.lab.AI, "add", "table", "inet", "sitefw")
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := r.m.Down(context.Background(), audit.Actor{}, ""); err != nil {
		t.Fatalf("Down: %v", err)
	}
	c, err := r.m.k.conn()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	if got := strings.Join(names, ","); got != "sitefw" {
		t.Errorf("tables after down: got %q, want only sitefw", got)
	}
	if err := reachTCP(r.lab.AI, "203.0.113.10:443"); err != nil {
		t.Errorf("after down: %v", err)
	}
	evs := r.events(t, func(evs []audit.Event) bool { return len(ofType(evs, "net.down")) > 0 })
	if len(ofType(evs, "net.down")) != 1 {
		t.Errorf("net.down events: got %d, want 1", len(ofType(evs, "net.down")))
	}
}

// Every golden ruleset is one the kernel accepts, and reads back without drift.
func TestKernelAcceptsGoldenRulesets(t *testing.T) {
	lab := netns.New(t)
	k := &nft{nsFd: lab.AI.Fd()}
	for name, tc := range goldenCases() {
		t.Run(name, func(t *testing.T) {
			rs, err := buildRuleset(tc.cfg, tc.needs, tc.owners)
			if err != nil {
				t.Fatal(err)
			}
			if err := k.replace(rs); err != nil {
				t.Fatalf("kernel refused: %v", err)
			}
			kt, err := k.read()
			if err != nil {
				t.Fatal(err)
			}
			if d := tableDrift(rs, kt); len(d) != 0 {
				t.Errorf("read back differs: %v", d)
			}
			if ch := tableChanges(rs, kt); len(ch) != 0 {
				t.Errorf("plan against itself: got %v, want no changes", ch)
			}
		})
	}
}

// A big allow list goes through in one transaction (elements in chunks, a
// forced send buffer) and reads back whole.
func TestApplyTenThousandCIDRs(t *testing.T) {
	lab := netns.New(t)
	k := &nft{nsFd: lab.AI.Fd()}
	rs, err := buildRuleset(&Config{Egress: []Rule{{To: manyCIDRs(10000), Proto: "tcp", Ports: []int{443}}}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.replace(rs); err != nil {
		t.Fatalf("replace: %v", err)
	}
	kt, err := k.read()
	if err != nil {
		t.Fatal(err)
	}
	if got := len(kt.Sets["egress_0_v4"].Elems); got != 20000 {
		t.Errorf("elements: got %d, want 20000 (start and end of 10000 ranges)", got)
	}
	if d := tableDrift(rs, kt); len(d) != 0 {
		t.Errorf("drift: %v", d)
	}
}

// A restarted daemon knows what it applied: drift is still repaired, a
// pending confirmation still rolls back, rollback still works.
func TestStateSurvivesRestart(t *testing.T) {
	lab := netns.New(t)
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	serveTCP(t, lab.Hosts["internet"].NS, "203.0.113.10:443")
	dir := t.TempDir()
	opts := Options{Audit: j, StateDir: dir, NetNSFd: lab.AI.Fd(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), DriftInterval: 200 * time.Millisecond}
	m1, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg, needs := labConfig()
	if _, err := m1.Apply(context.Background(), cfg, needs, ApplyOptions{ConfirmWithin: time.Hour}); err != nil {
		t.Fatal(err)
	}
	m1.mu.Lock()
	m1.pending.stop() // the first daemon "stops"
	m1.mu.Unlock()

	m2, err := New(opts)
	if err != nil {
		t.Fatalf("New after restart: %v", err)
	}
	st, err := m2.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !st.Applied || st.ConfirmBy.IsZero() || len(st.Drift) != 0 {
		t.Fatalf("status after restart: applied %v, confirm by %v, drift %v; want applied, pending, no drift", st.Applied, st.ConfirmBy, st.Drift)
	}
	if err := m2.Confirm(context.Background(), audit.Actor{}, ""); err != nil {
		t.Fatalf("Confirm after restart: %v", err)
	}
	if err := m2.k.remove(); err != nil { // someone deletes the table while no daemon runs
		t.Fatal(err)
	}
	if err := m2.repair(context.Background()); err != nil {
		t.Fatalf("repair: %v", err)
	}
	if err := reachTCP(lab.AI, "203.0.113.10:443"); err == nil {
		t.Error("table not restored after restart")
	}
	if err := m2.Rollback(context.Background(), audit.Actor{}, ""); err != nil {
		t.Fatalf("Rollback after restart: %v", err)
	}
	if kt, _ := m2.k.read(); kt.Exists {
		t.Error("rollback after restart left the table")
	}
}

// After a reboot the kernel holds nothing of ours. RestoreTable, which
// serve calls before anything that can fail, puts the applied table back
// from the saved state alone; and Run's drift repair does it at once, not
// at its first periodic check.
func TestTableIsBackAtStart(t *testing.T) {
	lab := netns.New(t)
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	serveTCP(t, lab.Hosts["internet"].NS, "203.0.113.10:443")
	dir := t.TempDir()
	opts := Options{Audit: j, StateDir: dir, NetNSFd: lab.AI.Fd(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), DriftInterval: time.Hour}
	m1, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	cfg, needs := labConfig()
	if _, err := m1.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	reboot := func() {
		t.Helper()
		if err := m1.k.remove(); err != nil {
			t.Fatal(err)
		}
		if err := reachTCP(lab.AI, "203.0.113.10:443"); err != nil {
			t.Fatalf("without the table: %v (lab broken)", err)
		}
	}

	t.Run("RestoreTable", func(t *testing.T) {
		reboot()
		changed, err := RestoreTable(dir, lab.AI.Fd())
		if err != nil || len(changed) == 0 {
			t.Fatalf("RestoreTable: changed %v, err %v; want the missing table named", changed, err)
		}
		if err := reachTCP(lab.AI, "203.0.113.10:443"); err == nil {
			t.Error("ai reaches the internet host after RestoreTable")
		}
		if changed, err := RestoreTable(dir, lab.AI.Fd()); err != nil || len(changed) != 0 {
			t.Errorf("RestoreTable again: changed %v, err %v; want nothing to do", changed, err)
		}
		if changed, err := RestoreTable(t.TempDir(), lab.AI.Fd()); err != nil || len(changed) != 0 {
			t.Errorf("RestoreTable without saved state: changed %v, err %v; want nothing to do", changed, err)
		}
	})

	t.Run("Run", func(t *testing.T) {
		reboot()
		m2, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m2.Run(ctx) }()
		defer func() { cancel(); <-done }()
		// The periodic check is an hour away and nothing changed the
		// table after Run began: only the repair at start can put it back.
		deadline := time.Now().Add(10 * time.Second)
		for {
			kt, err := m2.k.read()
			if err != nil {
				t.Fatal(err)
			}
			if kt.Exists {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("Run did not put the table back at start")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := reachTCP(lab.AI, "203.0.113.10:443"); err == nil {
			t.Error("ai reaches the internet host after Run started")
		}
	})
}

// No audit, no action: when the journal cannot record the apply, the
// kernel is put back as it was and the apply fails.
func TestApplyFailsWithoutAudit(t *testing.T) {
	lab := netns.New(t)
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{Audit: j, NetNSFd: lab.AI.Fd(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	j.Close() // every Append now fails
	cfg, needs := labConfig()
	if _, err := m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err == nil {
		t.Fatal("Apply succeeded without an audit journal")
	}
	if kt, err := m.k.read(); err != nil || kt.Exists {
		t.Errorf("table left in the kernel by an unaudited apply (exists %v, err %v)", kt != nil && kt.Exists, err)
	}
}

// The plan says, in words, what an edit of the config changes in the kernel.
func TestPlanDescribesChanges(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg.Egress[0].To = append(cfg.Egress[0].To, "10.10.0.20")
	cfg.Ingress = cfg.Ingress[:1]
	needs = append(needs, Need{Address: "localhost:123", Proto: "udp", Origin: "ntp"})
	p, err := r.m.Plan(context.Background(), cfg, needs, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"set egress_0_v4: add 10.10.0.20/32",
		"remove rule ingress[1]: accept v4 tcp from @ingress_1_v4 port 22 (admin SSH)",
		"delete set ingress_1_v4",
		"set appliance_v4: add udp 127.0.0.1:123",
	} {
		if !slices.Contains(p.Changes, want) {
			t.Errorf("plan lacks %q; got:\n%s", want, strings.Join(p.Changes, "\n"))
		}
	}
	if !strings.Contains(p.String(), "udp localhost:123 -> 127.0.0.1:123") || !strings.Contains(p.String(), "(ntp)") {
		t.Errorf("plan text does not show the resolved need and its origin:\n%s", p)
	}
	// Planning changed nothing.
	kt, err := r.m.k.read()
	if err != nil {
		t.Fatal(err)
	}
	if d := tableDrift(r.m.cur.rs, kt); len(d) != 0 {
		t.Errorf("plan changed the kernel: %v", d)
	}
}

// counter sums the packets of chain's rules whose description starts with prefix.
func counter(st *Status, chain, prefix string) uint64 {
	var n uint64
	for _, r := range st.Rules {
		if r.Chain == chain && strings.HasPrefix(r.Rule, prefix) {
			n += r.Packets
		}
	}
	return n
}

// Fail closed: stopping the daemon (Run ends) leaves the firewall in force.
func TestStoppingLeavesRulesInPlace(t *testing.T) {
	lab := netns.New(t)
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	serveTCP(t, lab.Hosts["internet"].NS, "203.0.113.10:443")
	if err := reachTCP(lab.AI, "203.0.113.10:443"); err != nil {
		t.Fatalf("before apply: %v (lab broken)", err)
	}
	m, err := New(Options{Audit: j, NetNSFd: lab.AI.Fd(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	cfg, needs := labConfig()
	if _, err := m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	kt, err := m.k.read()
	if err != nil {
		t.Fatal(err)
	}
	if d := tableDrift(m.cur.rs, kt); len(d) != 0 {
		t.Errorf("table changed when the daemon stopped: %v", d)
	}
	if err := reachTCP(lab.AI, "203.0.113.10:443"); err == nil {
		t.Error("ai reaches the internet host after the daemon stopped")
	}
}

// UDP, ICMP and interface-bound rules, with real packets.
func TestProtocolAndInterfaceRules(t *testing.T) {
	r := startLab(t)
	ai, hosts := r.lab.AI, r.lab.Hosts
	cfg := &Config{
		Egress: []Rule{
			{To: []string{"10.40.0.10"}, Proto: "udp", Ports: []int{514}, Comment: "syslog over udp"},
			{To: []string{"10.10.0.11"}, Proto: "icmp", Comment: "ping the DC"},
		},
		Ingress: []Rule{
			{From: []string{"0.0.0.0/0"}, Proto: "tcp", Ports: []int{8443}, Interface: "to-user", Comment: "API on the users' link only"},
			{From: []string{"10.99.0.0/24"}, Proto: "tcp", Ports: []int{22}, Comment: "admin SSH"},
		},
	}
	if _, err := r.m.Apply(context.Background(), cfg, nil, ApplyOptions{}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	checks := []struct {
		name string
		got  bool
		want bool
	}{
		{"ai → siem udp 514", reachUDP(t, ai, hosts["siem"], 514), true},
		{"ai → siem udp 515", reachUDP(t, ai, hosts["siem"], 515), false},
		{"ai → internet udp 514", reachUDP(t, ai, hosts["internet"], 514), false},
		{"ai pings dc", reachICMP(t, ai, "10.10.0.11"), true},
		{"ai pings internet", reachICMP(t, ai, "203.0.113.10"), false},
		{"user → api on its link", reachTCP(hosts["user"].NS, "10.30.0.1:8443") == nil, true},
		{"admin → api on another link", reachTCP(hosts["admin"].NS, "10.99.0.1:8443") == nil, false},
		{"admin → ssh", reachTCP(hosts["admin"].NS, "10.99.0.1:22") == nil, true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got reachable %v, want %v", c.name, c.got, c.want)
		}
	}
}

// The plan warns about a lockout before anything is applied.
func TestPlanWarnsOfLockout(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	cfg.Ingress = cfg.Ingress[:1] // no admin SSH rule
	p, err := r.m.Plan(context.Background(), cfg, needs, "10.99.0.2 50022 10.99.0.1 22")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.Lockout, "10.99.0.2") || !strings.Contains(p.String(), "WARNING") {
		t.Errorf("plan lockout: got %q", p.Lockout)
	}
	cfg2, _ := labConfig()
	if p, _ := r.m.Plan(context.Background(), cfg2, needs, "10.99.0.2 50022 10.99.0.1 22"); p.Lockout != "" {
		t.Errorf("plan with admin SSH allowed warns: %q", p.Lockout)
	}
}

// Dual stack: IPv6 allow rules work with real packets, neighbour discovery
// gets through the default-deny chains, and the rest of IPv6 is dropped.
func TestIPv6Rules(t *testing.T) {
	lab := netns.NewDualStack(t)
	dc, user, inet := lab.Hosts["dc"], lab.Hosts["user"], lab.Hosts["internet"]
	dcAddr := netip.AddrPortFrom(dc.Addr6, 636).String()
	inetAddr := netip.AddrPortFrom(inet.Addr6, 443).String()
	apiAddr := netip.AddrPortFrom(user.AIAddr6, 8443).String()
	serveTCP(t, dc.NS, dcAddr)
	serveTCP(t, inet.NS, inetAddr)
	serveTCP(t, lab.AI, apiAddr)
	// Links come up asynchronously: wait until IPv6 works without a firewall.
	for start := time.Now(); ; {
		err := reachTCP(lab.AI, inetAddr)
		if err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("before apply: %v (lab broken)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	m, err := New(Options{Audit: j, NetNSFd: lab.AI.Fd(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &Config{
		Egress:  []Rule{{To: []string{dc.Addr6.String()}, Proto: "tcp", Ports: []int{636}}},
		Ingress: []Rule{{From: []string{"fd00:1::/64"}, Proto: "tcp", Ports: []int{8443}}},
	}
	if _, err := m.Apply(context.Background(), cfg, nil, ApplyOptions{}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	// ai has not talked to dc nor user to ai over IPv6 yet: neighbour
	// discovery must cross the new chains for the allowed checks to pass.
	checks := []struct {
		name string
		err  error
		want bool
	}{
		{"ai → dc [v6]:636", reachTCP(lab.AI, dcAddr), true},
		{"ai → internet [v6]:443", reachTCP(lab.AI, inetAddr), false},
		{"user → api [v6]:8443", reachTCP(user.NS, apiAddr), true},
	}
	for _, c := range checks {
		if got := c.err == nil; got != c.want {
			t.Errorf("%s: got reachable %v (err %v), want %v", c.name, got, c.err, c.want)
		}
	}
}

// A container behind the appliance leaves it under the same egress rules
// (forward chain), and its blocked attempts are audited as egress.
func TestRoutedTrafficFollowsEgressRules(t *testing.T) {
	r := startLab(t)
	ctr := addContainer(t, r.lab, "ctr", "docker0", netip.MustParsePrefix("172.17.0.0/24"))
	waitReach(t, ctr.NS, "203.0.113.10:443")
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := reachTCP(ctr.NS, "10.10.0.11:636"); err != nil {
		t.Errorf("container → dc:636 (allowed egress): %v", err)
	}
	if err := reachTCP(ctr.NS, "203.0.113.10:443"); err == nil {
		t.Error("container reached the internet host through the appliance")
	}
	if err := reachTCP(ctr.NS, "10.40.0.10:6514"); err == nil {
		t.Error("container used the appliance's own egress (siem), which is for the host only")
	}
	evs := r.events(t, func(evs []audit.Event) bool {
		for _, e := range ofType(evs, "net.egress_blocked") {
			if e.Target == "203.0.113.10" && e.Details["chain"] == "forward" {
				return true
			}
		}
		return false
	})
	found := false
	for _, e := range ofType(evs, "net.egress_blocked") {
		if e.Target == "203.0.113.10" && e.Details["chain"] == "forward" && e.Details["sources"] == "172.17.0.2" {
			found = true
		}
	}
	if !found {
		t.Errorf("no net.egress_blocked from the forward chain for 172.17.0.2 → 203.0.113.10 in %d events", len(evs))
	}
}

// net down and net rollback that cannot be audited change nothing: the
// egress filter never goes away, or back to an older state, unrecorded.
func TestDownAndRollbackFailWithoutAudit(t *testing.T) {
	r := startLab(t)
	ctx := context.Background()
	cfg, needs := labConfig()
	if _, err := r.m.Apply(ctx, cfg, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg2, needs2 := labConfig()
	cfg2.Egress[0].To = append(cfg2.Egress[0].To, "10.10.0.20")
	if _, err := r.m.Apply(ctx, cfg2, needs2, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	want := r.m.cur.rs
	r.j.Close() // every Append now fails
	unchanged := func(what string) {
		t.Helper()
		kt, err := r.m.k.read()
		if err != nil {
			t.Fatal(err)
		}
		if !kt.Exists {
			t.Fatalf("%s without an audit journal removed the table", what)
		}
		if d := tableDrift(want, kt); len(d) != 0 {
			t.Fatalf("%s without an audit journal changed the table: %v", what, d)
		}
	}
	if err := r.m.Down(ctx, audit.Actor{}, ""); err == nil {
		t.Fatal("Down succeeded without an audit journal")
	}
	unchanged("net down")
	if err := r.m.Rollback(ctx, audit.Actor{}, ""); err == nil {
		t.Fatal("Rollback succeeded without an audit journal")
	}
	unchanged("net rollback")
}

// The rollback of an apply not confirmed in time is a safety net against a
// ruleset that cut the admin off: it happens even when the journal cannot
// record it (an admin's own rollback would then be refused).
func TestUnconfirmedApplyRollsBackEvenWithoutAudit(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{ConfirmWithin: time.Second}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	r.j.Close() // every Append now fails
	deadline := time.Now().Add(15 * time.Second)
	for {
		kt, err := r.m.k.read()
		if err != nil {
			t.Fatal(err)
		}
		if !kt.Exists {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the unconfirmed ruleset is still in place: the automatic rollback did not happen without a journal")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := reachTCP(r.lab.AI, "203.0.113.10:443"); err != nil {
		t.Errorf("after the automatic rollback: %v", err)
	}
	if err := r.m.Confirm(context.Background(), audit.Actor{}, ""); !errors.Is(err, ErrNothingToConfirm) {
		t.Errorf("Confirm after the rollback: got %v, want ErrNothingToConfirm", err)
	}
}

func TestSSHDPorts(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := dir + "/sshd_config"
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		conf string
		want []int
	}{
		{"# Port 22\nPermitRootLogin no\n", []int{22}},
		{"Port 2222\nport 22\n", []int{2222, 22}},
		{"Port nope\n", []int{22}},
	} {
		if got := sshdPorts(write(tc.conf)); !slices.Equal(got, tc.want) {
			t.Errorf("%q: got %v, want %v", tc.conf, got, tc.want)
		}
	}
	if got := sshdPorts(dir + "/nosuch"); !slices.Equal(got, []int{22}) {
		t.Errorf("no config: got %v, want [22]", got)
	}
}

// A confirmation after the window closed is refused: the rollback is due.
func TestConfirmAfterTheWindowIsRefused(t *testing.T) {
	r := startLabDrift(t, time.Hour)
	cfg, needs := labConfig()
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{ConfirmWithin: time.Hour}); err != nil {
		t.Fatal(err)
	}
	r.m.mu.Lock()
	r.m.pending.stop()
	r.m.pending.deadline = time.Now().Add(-time.Second)
	r.m.pending.lastErr = "the kernel refused it"
	r.m.mu.Unlock()
	err := r.m.Confirm(context.Background(), audit.Actor{}, "")
	if !errors.Is(err, ErrNothingToConfirm) || !strings.Contains(err.Error(), "window closed") || !strings.Contains(err.Error(), "the kernel refused it") {
		t.Fatalf("Confirm after the deadline: got %v, want a refusal saying the window closed and why the rollback failed", err)
	}
	if st, _ := r.m.Status(context.Background()); st.RollbackError != "the kernel refused it" {
		t.Errorf("status rollback error %q", st.RollbackError)
	}
}

// Neighbour discovery stays on the link: an ICMPv6 neighbour solicitation
// leaves only with hop limit 255 (what RFC 4861 requires, and no router
// forwards), so it cannot carry data anywhere else; and the appliance
// sends no router advertisement.
func TestNeighbourDiscoveryOnlyOnTheLink(t *testing.T) {
	lab := netns.NewDualStack(t)
	peer := lab.Hosts["dc"]
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	m, err := New(Options{Audit: j, NetNSFd: lab.AI.Fd(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := labConfig()
	if _, err := m.Apply(context.Background(), cfg, nil, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	send := func(typ byte, hops int) error {
		return lab.AI.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, hops); err != nil {
				return err
			}
			msg := make([]byte, 24) // type, code, checksum (the kernel's), reserved, target
			msg[0] = typ
			copy(msg[8:], peer.Addr6.AsSlice())
			to := &unix.SockaddrInet6{Addr: peer.Addr6.As16()}
			return unix.Sendto(fd, msg, 0, to)
		})
	}
	if err := send(135, 255); err != nil {
		t.Errorf("a neighbour solicitation with hop limit 255: %v, want sent", err)
	}
	if err := send(135, 64); !errors.Is(err, unix.EPERM) {
		t.Errorf("a neighbour solicitation with hop limit 64: got %v, want EPERM (dropped)", err)
	}
	if err := send(134, 255); !errors.Is(err, unix.EPERM) {
		t.Errorf("a router advertisement: got %v, want EPERM (dropped)", err)
	}
}

// A VLAN whose MTU its parent cannot carry is a config error that says
// so, not the kernel's bare "invalid argument" at apply.
func TestVLANMTUAboveItsParentIsAConfigError(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	parent := r.lab.Hosts["user"].AILink
	cfg.VLANs = []VLAN{{Name: "ai0", Parent: parent, ID: 20, MTU: 9000, Addresses: []string{"10.20.0.5/24"}}}
	_, err := r.m.Plan(context.Background(), cfg, needs, "")
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "vlan[0].mtu: 9000 is more than the MTU of its parent "+parent+" (1500)") {
		t.Fatalf("Plan: got %v, want a config error on vlan[0].mtu naming %s's 1500", err, parent)
	}
}

// CheckTable (doctor, with the daemon stopped) reads the kernel against
// the saved state and changes nothing.
func TestCheckTable(t *testing.T) {
	lab := netns.New(t)
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	dir := t.TempDir()
	if applied, drift, err := CheckTable(dir, lab.AI.Fd()); applied || len(drift) != 0 || err != nil {
		t.Fatalf("nothing saved: got %v %v %v, want not applied", applied, drift, err)
	}
	m, err := New(Options{Audit: j, StateDir: dir, NetNSFd: lab.AI.Fd(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	cfg, needs := labConfig()
	if _, err := m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if applied, drift, err := CheckTable(dir, lab.AI.Fd()); !applied || len(drift) != 0 || err != nil {
		t.Fatalf("applied and in place: got %v %v %v", applied, drift, err)
	}
	if err := m.k.remove(); err != nil {
		t.Fatal(err)
	}
	applied, drift, err := CheckTable(dir, lab.AI.Fd())
	if !applied || err != nil || !slices.Contains(drift, "table inet applianced is missing") {
		t.Fatalf("after a reboot: got %v %v %v, want the missing table", applied, drift, err)
	}
	if kt, _ := m.k.read(); kt.Exists {
		t.Error("CheckTable changed the kernel")
	}
}

// A host on one of the appliance's VLANs cannot use it as a router to what
// the egress rules allow (with ip_forward on), even when forward_from names
// the VLAN: the forward copies of the egress rules are for the host's
// containers and VMs only. Nor is the VLAN local to the host: its hosts and
// the containers do not reach each other through the forward chain.
func TestSegmentHostsAreNotRouted(t *testing.T) {
	r := startLab(t)
	ctr := addContainer(t, r.lab, "ctr", "veth3f2a1b0", netip.MustParsePrefix("172.17.0.0/24"))
	seg := r.lab.AddRouted(t, "seg", netip.MustParsePrefix("172.18.0.0/24"))
	serveTCP(t, ctr.NS, "172.17.0.2:8000")
	serveTCP(t, seg.NS, "172.18.0.2:8000")
	for _, h := range []*netns.Host{ctr, seg} {
		waitReach(t, h.NS, "10.10.0.11:636")
	}
	waitReach(t, ctr.NS, "172.18.0.2:8000")
	waitReach(t, seg.NS, "172.17.0.2:8000")
	cfg, _ := labConfig()
	// The segment's link stands in for a configured VLAN (the kernel here
	// has no 802.1Q; only its name matters to the rules), and a prefix of
	// forward_from takes it too.
	cfg.VLANs = []VLAN{{Name: seg.AILink, Parent: "eth0", ID: 30, Addresses: []string{"172.18.0.1/24"}}}
	cfg.ForwardFrom = []string{"veth*", "to-*"}
	rs, err := buildRuleset(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.m.k.replace(rs); err != nil {
		t.Fatal(err)
	}
	if err := reachTCP(ctr.NS, "10.10.0.11:636"); err != nil {
		t.Errorf("container → dc:636 (allowed egress): %v", err)
	}
	if err := reachTCP(seg.NS, "10.10.0.11:636"); err == nil {
		t.Error("a host on a VLAN of the appliance was routed to the dc")
	}
	if err := reachTCP(seg.NS, "172.17.0.2:8000"); err == nil {
		t.Error("a host on a VLAN of the appliance was routed to a container")
	}
	if err := reachTCP(ctr.NS, "172.18.0.2:8000"); err == nil {
		t.Error("a container was routed to a host on a VLAN of the appliance, which the egress rules do not allow")
	}
}

// newLabManager is a Manager of lab's AI namespace with a journal of its
// own, a private state dir and a quiet logger, over what opts sets besides.
func newLabManager(t *testing.T, lab *netns.Lab, opts Options) (*Manager, *audit.Journal) {
	t.Helper()
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatalf("audit.Open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	opts.Audit, opts.NetNSFd = j, lab.AI.Fd()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.StateDir == "" {
		opts.StateDir = t.TempDir()
	}
	m, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m, j
}

// A table deleted while it is being listed (an automatic rollback, `net
// down` or another tool, between two of the listing's netlink dumps) reads
// as gone, not as an error.
func TestTableDeletedWhileReadIsGone(t *testing.T) {
	lab := netns.New(t)
	k := &nft{nsFd: lab.AI.Fd()}
	cfg, _ := labConfig()
	rs, err := buildRuleset(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.replace(rs); err != nil {
		t.Fatal(err)
	}
	deleted := false
	testHookMidRead = func() {
		if !deleted {
			deleted = true
			if err := k.remove(); err != nil {
				t.Errorf("removing the table mid-read: %v", err)
			}
		}
	}
	t.Cleanup(func() { testHookMidRead = nil })
	kt, err := k.read()
	if err != nil {
		t.Fatalf("read of a table deleted mid-read: %v", err)
	}
	if !deleted || kt.Exists {
		t.Fatalf("deleted %v, read says exists %v; want gone", deleted, kt.Exists)
	}
}

// reachCase is one TCP connection a test expects to be made, or refused.
type reachCase struct {
	name string
	from *netns.NS
	addr string
	want bool
}

// checkReach tries each case in a subtest of its own.
func checkReach(t *testing.T, cases []reachCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := reachTCP(tc.from, tc.addr)
			if got := err == nil; got != tc.want {
				t.Errorf("reach %s from %s: got %v (err %v), want %v", tc.addr, tc.from.Name, got, err, tc.want)
			}
		})
	}
}
