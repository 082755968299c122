package netseg

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Tier 2 for routed traffic: with ip_forward on in the ai namespace (as
// Docker leaves it), the forward copies of the egress rules take only
// traffic that comes in on a container or VM interface of forward_from.

// addContainer adds a namespace routed behind ai, as a container or VM of
// the appliance's host, whose link on the ai side is named aiLink ("veth…"
// as Docker names it, or any other name the test needs).
func addContainer(t *testing.T, lab *netns.Lab, name, aiLink string, prefix netip.Prefix) *netns.Host {
	t.Helper()
	h := lab.AddRouted(t, name, prefix)
	nh, err := netlink.NewHandleAt(vnetns.NsHandle(lab.AI.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	l, err := nh.LinkByName(h.AILink)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel renames only a link that is down; its address stays.
	if err := nh.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	if err := nh.LinkSetName(l, aiLink); err != nil {
		t.Fatalf("rename %s to %s: %v", h.AILink, aiLink, err)
	}
	if err := nh.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	h.AILink = aiLink
	return h
}

// routeVia makes from send its traffic for to's network through ai (from's
// link to ai as its gateway), and to send its replies back the same way: a
// host of the LAN that sets the AI server as its router.
func routeVia(t *testing.T, from, to *netns.Host) {
	t.Helper()
	add := func(h, dst *netns.Host) {
		nh, err := netlink.NewHandleAt(vnetns.NsHandle(h.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		defer nh.Close()
		p := netip.PrefixFrom(dst.Addr, 24).Masked()
		r := &netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}, Gw: h.AIAddr.AsSlice()}
		if err := nh.RouteAdd(r); err != nil {
			t.Fatalf("route to %s via ai in %s: %v", p, h.Name, err)
		}
	}
	add(from, to)
	add(to, from)
}

// waitReach retries until from reaches addr: a link just brought up drops
// packets for a moment.
func waitReach(t *testing.T, from *netns.NS, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := reachTCP(from, addr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("before apply: %s cannot reach %s: %v (lab broken)", from.Name, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A host on the LAN (here the user's segment, standing for the uplink: no
// VLAN is configured) that routes through the AI server is not forwarded to
// what the egress rules allow; a container on a veth of the default
// forward_from is, and only there; a link of the host not in forward_from
// forwards nothing.
func TestOnlyContainerInterfacesAreRouted(t *testing.T) {
	r := startLab(t)
	hosts := r.lab.Hosts
	ctr := addContainer(t, r.lab, "ctr", "veth3f2a1b0", netip.MustParsePrefix("172.17.0.0/24"))
	other := r.lab.AddRouted(t, "other", netip.MustParsePrefix("172.19.0.0/24")) // ai side "to-other"
	routeVia(t, hosts["user"], hosts["dc"])
	for _, from := range []*netns.NS{ctr.NS, other.NS, hosts["user"].NS} {
		waitReach(t, from, "10.10.0.11:636")
	}
	waitReach(t, ctr.NS, "203.0.113.10:443")

	cfg, needs := labConfig() // no VLAN, forward_from not set: the default
	p, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	cases := []reachCase{
		{"container on a veth reaches the dc (allowed egress)", ctr.NS, "10.10.0.11:636", true},
		{"container on a veth cannot reach the internet host", ctr.NS, "203.0.113.10:443", false},
		{"container on a veth cannot use the appliance's own egress", ctr.NS, "10.40.0.10:6514", false},
		{"LAN host routed via the AI server cannot reach the dc", hosts["user"].NS, "10.10.0.11:636", false},
		{"namespace on a link outside forward_from cannot reach the dc", other.NS, "10.10.0.11:636", false},
	}
	checkReach(t, cases)
	st, err := r.m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Drift) != 0 {
		t.Errorf("drift right after apply: %v", st.Drift)
	}
	// One SYN of the container was accepted; the LAN host's and the other
	// link's were dropped (with their retransmits, so at least one each).
	if got := counter(st, ChainForward, "forward: egress[0]"); got != 1 {
		t.Errorf("forward egress[0] counter: got %d, want 1 (the container's SYN)", got)
	}
	if got := counter(st, ChainForward, "forward: count dropped"); got < 3 {
		t.Errorf("forward drop counter: got %d, want at least 3", got)
	}
	if !slices.Equal(p.ForwardFrom, DefaultForwardFrom()) || !slices.Equal(p.ForwardLinks, []string{"veth3f2a1b0"}) {
		t.Errorf("plan: forward_from %v, links %v; want the default and only veth3f2a1b0", p.ForwardFrom, p.ForwardLinks)
	}
	if s := p.String(); !strings.Contains(s, "interfaces that match now: veth3f2a1b0") {
		t.Errorf("plan text does not name the routed interfaces:\n%s", s)
	}
}

// forward_from = [] routes nothing, not even from a container's veth.
func TestEmptyForwardFromRoutesNothing(t *testing.T) {
	r := startLab(t)
	ctr := addContainer(t, r.lab, "ctr", "veth3f2a1b0", netip.MustParsePrefix("172.17.0.0/24"))
	waitReach(t, ctr.NS, "10.10.0.11:636")
	cfg, needs := labConfig()
	cfg.ForwardFrom = []string{}
	p, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := reachTCP(ctr.NS, "10.10.0.11:636"); err == nil {
		t.Error("a container reached the dc with forward_from = []")
	}
	if err := reachTCP(r.lab.AI, "10.10.0.11:636"); err != nil {
		t.Errorf("the host itself lost its egress to the dc: %v", err)
	}
	for _, rule := range p.Rules {
		if strings.HasPrefix(rule, "forward: egress") {
			t.Errorf("forward_from = [] still has a forward rule: %s", rule)
		}
	}
	if s := p.String(); !strings.Contains(s, "Routed traffic: none") || len(p.ForwardFrom) != 0 {
		t.Errorf("plan text does not say nothing is routed:\n%s", s)
	}
	st, err := r.m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Drift) != 0 {
		t.Errorf("drift right after apply: %v", st.Drift)
	}
	// The saved state keeps [] apart from an absent forward_from: read
	// back after a restart, it is still the table in the kernel.
	applied, drift, err := CheckTable(r.m.opts.StateDir, r.lab.AI.Fd())
	if err != nil || !applied || len(drift) != 0 {
		t.Errorf("CheckTable from the saved state: applied %v, drift %v, err %v; want applied, no drift", applied, drift, err)
	}
}

// A forward_from set another process changed is drift that names the
// entries: the same number of elements says nothing of what was swapped
// (here the uplink's "eth*" for Docker's "docker*").
func TestForwardFromDriftNamesTheEntries(t *testing.T) {
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skip("skipped: nsenter (util-linux) not installed")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipped: nft (nftables) not installed")
	}
	lab := netns.New(t)
	m, _ := newLabManager(t, lab, Options{})
	cfg, needs := labConfig()
	if _, err := m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	var elems []string
	for _, e := range DefaultForwardFrom() {
		if e == "docker*" {
			e = "eth*"
		}
		elems = append(elems, `"`+e+`"`)
	}
	otherProcess(t, lab.AI, strings.Fields(`flush set inet applianced forward_from ; add element inet applianced forward_from { `+strings.Join(elems, ", ")+` }`)...)
	applied, drift, err := CheckTable(m.opts.StateDir, lab.AI.Fd())
	if err != nil || !applied {
		t.Fatalf("CheckTable: applied %v, err %v", applied, err)
	}
	want := "set forward_from has eth* it should not and lacks docker*"
	if !slices.Contains(drift, want) {
		t.Errorf("drift: got %q, want %q among it", drift, want)
	}
}
