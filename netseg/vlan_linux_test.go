package netseg

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/netns"
	"github.com/applianced/applianced/internal/testenv/qemuvm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if qemuvm.IsGuest() {
		qemuvm.GuestMain(m.Run) // Tier 3: this binary is /init of a qemu guest
	}
	os.Exit(m.Run())
}

// guestModules are what the VLAN tests (and those of the LAN links
// forward_from must not match: VLANs, bonds, bridges) need from Debian's
// kernel.
// crc32c_generic first: libcrc32c (for nf_tables) asks for it by name and
// there is no modprobe in the guest.
var guestModules = []string{"crc32c_generic", "8021q", "dummy", "bridge", "bonding", "nf_tables", "nft_ct", "nft_log", "nft_limit", "nfnetlink_log"}

// Tier 3: VLANs on Debian's kernel under qemu, since this host's kernel
// may lack 802.1Q. On the host this test boots the guest; in the guest it
// runs the checks.
func TestVLANsUnderQEMU(t *testing.T) {
	if qemuvm.IsGuest() {
		vlanChecks(t)
		t.Run("forward_from links", forwardLinkChecks)
		return
	}
	if err := qemuvm.Available(); err != nil {
		t.Skipf("skipped: %v", err)
	}
	ctx := context.Background()
	k, err := qemuvm.EnsureKernel(ctx, qemuvm.DefaultCacheDir)
	if err != nil {
		t.Fatalf("kernel: %v", err)
	}
	work := t.TempDir()
	bin := filepath.Join(work, "netseg.test")
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("skipped: no go toolchain on PATH to build the guest's static test binary: %v", err)
	}
	build := exec.CommandContext(ctx, goBin, "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static test binary: %v\n%s", err, out)
	}
	out, code, err := qemuvm.Run(ctx, k, qemuvm.Config{
		Binary: bin, Args: []string{"-test.run=^TestVLANsUnderQEMU$", "-test.v", "-test.count=1"},
		Modules: guestModules, WorkDir: work, Timeout: 3 * time.Minute,
	})
	if err != nil || code != 0 || !strings.Contains(string(out), "--- PASS: TestVLANsUnderQEMU") {
		t.Fatalf("guest on %s: exit %d, err %v; console:\n%s", k.Version, code, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "--- ") {
			t.Logf("guest: %s", strings.TrimSpace(line))
		}
	}
	t.Logf("guest on Debian kernel %s passed", k.Version)
}

// vlanChecks runs inside the guest, in its own (throw-away) root namespace.
func vlanChecks(t *testing.T) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, name := range []string{"uplink0", "ai1"} {
		if err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatalf("dummy %s: %v", name, err)
		}
	}
	parent, _ := h.LinkByName("uplink0")
	if err := h.LinkSetUp(parent); err != nil {
		t.Fatal(err)
	}
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	stateDir := t.TempDir()
	m, err := New(Options{Audit: j, StateDir: stateDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg := &Config{
		VLANs:  []VLAN{{Name: "ai0", Parent: "uplink0", ID: 20, MTU: 1400, Addresses: []string{"10.20.0.5/24"}}},
		Egress: []Rule{{To: []string{"10.10.0.11"}, Ports: []int{636}, Interface: "ai0"}},
	}
	vlan := func() (*netlink.Vlan, []string) {
		t.Helper()
		l, err := h.LinkByName("ai0")
		if err != nil {
			t.Fatalf("ai0: %v", err)
		}
		v, ok := l.(*netlink.Vlan)
		if !ok {
			t.Fatalf("ai0 is a %s, want vlan", l.Type())
		}
		addrs, _ := h.AddrList(l, netlink.FAMILY_V4)
		var as []string
		for _, a := range addrs {
			as = append(as, a.IPNet.String())
		}
		return v, as
	}

	t.Run("create", func(t *testing.T) {
		if _, err := m.Apply(ctx, cfg, nil, ApplyOptions{}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		v, addrs := vlan()
		if v.VlanId != 20 || v.MTU != 1400 || v.ParentIndex != parent.Attrs().Index || v.Alias != vlanAlias {
			t.Errorf("got id %d mtu %d parent %d alias %q, want 20 1400 %d %q", v.VlanId, v.MTU, v.ParentIndex, v.Alias, parent.Attrs().Index, vlanAlias)
		}
		if !slices.Contains(addrs, "10.20.0.5/24") {
			t.Errorf("addresses: got %v, want 10.20.0.5/24", addrs)
		}
	})
	first, _ := vlan()

	t.Run("idempotent re-apply", func(t *testing.T) {
		p, err := m.Plan(ctx, cfg, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Changes) != 0 {
			t.Errorf("plan of the applied config: got %v, want no changes", p.Changes)
		}
		if _, err := m.Apply(ctx, cfg, nil, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		if v, _ := vlan(); v.Index != first.Index {
			t.Errorf("re-apply recreated ai0: index %d → %d", first.Index, v.Index)
		}
	})

	t.Run("changed id recreates", func(t *testing.T) {
		cfg.VLANs[0].ID = 21
		p, err := m.Plan(ctx, cfg, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(p.Changes, func(c string) bool { return strings.Contains(c, "recreate VLAN ai0: id 20 on uplink0 becomes id 21") }) {
			t.Errorf("plan: got %v, want the recreate of ai0", p.Changes)
		}
		if _, err := m.Apply(ctx, cfg, nil, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		v, addrs := vlan()
		if v.VlanId != 21 || v.Index == first.Index || !slices.Contains(addrs, "10.20.0.5/24") {
			t.Errorf("got id %d index %d addrs %v, want 21, a new index, 10.20.0.5/24", v.VlanId, v.Index, addrs)
		}
	})

	t.Run("changed mtu and address in place", func(t *testing.T) {
		before, _ := vlan()
		cfg.VLANs[0].MTU = 1300
		cfg.VLANs[0].Addresses = []string{"10.20.0.6/24"}
		if _, err := m.Apply(ctx, cfg, nil, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		v, addrs := vlan()
		if v.Index != before.Index || v.MTU != 1300 || !slices.Equal(addrs, []string{"10.20.0.6/24"}) {
			t.Errorf("got index %d mtu %d addrs %v, want %d 1300 [10.20.0.6/24]", v.Index, v.MTU, addrs, before.Index)
		}
	})

	t.Run("addresses with a lifetime are left alone", func(t *testing.T) {
		// What SLAAC or a DHCP client adds: not the config's to remove.
		l, _ := h.LinkByName("ai0")
		dyn := nlAddr("2001:db8:20::5/64")
		dyn.ValidLft, dyn.PreferedLft = 3600, 1800
		if err := h.AddrAdd(l, dyn); err != nil {
			t.Fatal(err)
		}
		p, err := m.Plan(ctx, cfg, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Changes) != 0 {
			t.Errorf("plan with a SLAAC-like address on ai0: got %v, want no changes", p.Changes)
		}
		if err := h.AddrDel(l, dyn); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("deleted vlan is restored by the link watcher", func(t *testing.T) {
		// The periodic check is an hour away: only the netlink link
		// notification can bring ai0 back in time.
		w, err := New(Options{Audit: j, StateDir: stateDir, DriftInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(rctx) }()
		defer func() { cancel(); <-done }()
		time.Sleep(time.Second) // let the watchers subscribe (TCG is slow)
		l, _ := h.LinkByName("ai0")
		if err := h.LinkDel(l); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if l, err := h.LinkByName("ai0"); err == nil {
				if v, ok := l.(*netlink.Vlan); ok && v.VlanId == 21 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("ai0 not restored by the drift watcher")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("refuses to replace a non-vlan", func(t *testing.T) {
		c := *cfg
		c.VLANs = append(slices.Clone(cfg.VLANs), VLAN{Name: "ai1", Parent: "uplink0", ID: 30})
		if _, err := m.Apply(ctx, &c, nil, ApplyOptions{}); err == nil {
			t.Fatal("Apply replaced the dummy interface ai1")
		}
		if l, err := h.LinkByName("ai1"); err != nil || l.Type() != "dummy" {
			t.Errorf("ai1 after refused apply: %v %v", l, err)
		}
	})

	t.Run("refuses to adopt a vlan it did not make", func(t *testing.T) {
		// ai2, VLAN 40 on uplink0 with two addresses, made by another tool.
		if err := h.LinkAdd(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "ai2", ParentIndex: parent.Attrs().Index}, VlanId: 40}); err != nil {
			t.Fatal(err)
		}
		ai2, _ := h.LinkByName("ai2")
		for _, a := range []string{"10.40.0.5/24", "10.41.0.5/24"} {
			if err := h.AddrAdd(ai2, nlAddr(a)); err != nil {
				t.Fatal(err)
			}
		}
		c := *cfg
		c.VLANs = append(slices.Clone(cfg.VLANs), VLAN{Name: "ai2", Parent: "uplink0", ID: 40, Addresses: []string{"10.40.0.5/24"}})
		p, err := m.Plan(ctx, &c, nil, "")
		if err != nil || !slices.ContainsFunc(p.Changes, func(s string) bool { return strings.Contains(s, "not made by applianced") }) {
			t.Errorf("plan: %v %v, want it to say ai2 is not ours", p, err)
		}
		if _, err := m.Apply(ctx, &c, nil, ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "not made by applianced") {
			t.Fatalf("Apply over another tool's ai2: got %v, want a refusal", err)
		}
		addrs, _ := h.AddrList(ai2, netlink.FAMILY_V4)
		if l, _ := h.LinkByName("ai2"); len(addrs) != 2 || l.Attrs().Alias == vlanAlias {
			t.Errorf("ai2 after the refused apply: %d addresses, alias %q; want both kept, unmarked", len(addrs), l.Attrs().Alias)
		}
	})

	t.Run("down removes our vlans only", func(t *testing.T) {
		if err := m.Down(ctx, audit.Actor{}, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := h.LinkByName("ai0"); err == nil {
			t.Error("ai0 still there after down")
		}
		for _, n := range []string{"uplink0", "ai1", "ai2"} {
			if _, err := h.LinkByName(n); err != nil {
				t.Errorf("%s removed by down: %v", n, err)
			}
		}
		if kt, _ := m.k.read(); kt.Exists {
			t.Error("table still there after down")
		}
	})
}

// On a kernel without 802.1Q (this host's), a VLAN apply says so clearly
// and changes nothing; on one with it, the VLAN is made.
func TestVLANKernelSupport(t *testing.T) {
	r := startLab(t)
	cfg, needs := labConfig()
	cfg.VLANs = []VLAN{{Name: "ai0", Parent: "to-user", ID: 20}}
	_, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{})
	if err == nil {
		l := &links{nsFd: r.lab.AI.Fd()}
		h, _ := l.handle()
		defer h.Close()
		st, ierr := l.inspect(h, "ai0")
		if ierr != nil || st.ID != 20 {
			t.Fatalf("kernel has 802.1Q but ai0 is %+v (%v)", st, ierr)
		}
		return
	}
	if !errors.Is(err, ErrNo8021Q) {
		t.Fatalf("Apply: got %v, want ErrNo8021Q", err)
	}
	if !strings.Contains(err.Error(), "kernel lacks 802.1Q support: load module 8021q") {
		t.Errorf("error text: got %q", err)
	}
	if kt, _ := r.m.k.read(); kt.Exists {
		t.Error("table applied although the VLAN could not be made")
	}
	_ = netns.Available
}
