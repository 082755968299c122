package netseg

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/netns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Tier 2 for traffic that stays on the host: containers on one bridge (a
// docker compose stack: web UI, model server, vector DB) and two local
// bridges routed to each other. With br_netfilter on, as Docker turns it
// on, bridged packets cross the forward hook too.

// bridgeNF turns on br_netfilter's calls to the IPv4 and IPv6 hooks in ns
// (net.bridge.bridge-nf-call-iptables and -ip6tables, one per network
// namespace), as Docker does on its host.
func bridgeNF(t *testing.T, ns *netns.NS) {
	t.Helper()
	err := ns.Do(func() error {
		for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
			if err := os.WriteFile("/proc/sys/net/bridge/"+k, []byte("1"), 0); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("skipped: the kernel has no br_netfilter (no /proc/sys/net/bridge; modprobe br_netfilter)")
	}
	if err != nil {
		t.Fatalf("br_netfilter on in %s: %v", ns.Name, err)
	}
}

func nsHandle(t *testing.T, ns *netns.NS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(vnetns.NsHandle(ns.Fd()))
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", ns.Name, err)
	}
	return h
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}
}

// scratchNet numbers the throw-away /24s addBridge builds its containers
// on before it moves them onto their bridge.
var scratchNet byte

// addBridge makes a Linux bridge in ai holding .1 of prefix (a /24), as
// Docker makes docker0 or a compose network's br-<id>, and plugs one
// container namespace per name into it by a veth, at .2, .3 and on, with
// its default route through the bridge. Every peer of the lab routes
// prefix through ai. The ports keep their lab names ("to-<name>"), which
// forward_from does not match: the rules must hold for what the forward
// hook sees of bridged packets, the bridge.
func addBridge(t *testing.T, lab *netns.Lab, bridge string, prefix netip.Prefix, names ...string) []*netns.Host {
	t.Helper()
	aiH := nsHandle(t, lab.AI)
	defer aiH.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}
	if err := aiH.LinkAdd(br); err != nil {
		t.Fatalf("bridge %s: %v", bridge, err)
	}
	base := prefix.Masked().Addr().As4()
	at := func(n byte) netip.Addr { return netip.AddrFrom4([4]byte{base[0], base[1], base[2], n}) }
	gw := at(1)
	if err := aiH.AddrAdd(br, &netlink.Addr{IPNet: ipNet(gw, 24)}); err != nil {
		t.Fatal(err)
	}
	if err := aiH.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	var hosts []*netns.Host
	for i, name := range names {
		scratchNet++
		h := lab.AddRouted(t, name, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, scratchNet, 0}), 24))
		port, err := aiH.LinkByName(h.AILink)
		if err != nil {
			t.Fatal(err)
		}
		// The bridge holds ai's address on the network, not the port.
		if err := aiH.AddrDel(port, &netlink.Addr{IPNet: ipNet(h.AIAddr, 24)}); err != nil {
			t.Fatal(err)
		}
		if err := aiH.LinkSetMaster(port, br); err != nil {
			t.Fatalf("%s into %s: %v", h.AILink, bridge, err)
		}
		hh := nsHandle(t, h.NS)
		eth0, err := hh.LinkByName("eth0")
		if err == nil {
			err = hh.AddrDel(eth0, &netlink.Addr{IPNet: ipNet(h.Addr, 24)})
		}
		if err == nil {
			err = hh.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(at(byte(2+i)), 24)})
		}
		if err == nil {
			err = hh.RouteReplace(&netlink.Route{Gw: gw.AsSlice()})
		}
		hh.Close()
		if err != nil {
			t.Fatalf("%s onto %s: %v", name, prefix, err)
		}
		h.Addr, h.AIAddr = at(byte(2+i)), gw
		hosts = append(hosts, h)
	}
	for _, p := range lab.Hosts {
		ph := nsHandle(t, p.NS)
		err := ph.RouteAdd(&netlink.Route{Dst: ipNet(prefix.Masked().Addr(), 24), Gw: p.AIAddr.AsSlice()})
		ph.Close()
		if err != nil {
			t.Fatalf("route to %s in %s: %v", prefix, p.Name, err)
		}
	}
	return hosts
}

// addV6 gives each host IPv6 (off in the lab's namespaces) and the
// address fd00:<net>::<2+i>/64 on eth0, with no duplicate address
// detection: containers of one bridge that speak IPv6 to each other, as a
// Docker network with enable_ipv6 does.
func addV6(t *testing.T, net6 netip.Prefix, hosts ...*netns.Host) {
	t.Helper()
	for i, h := range hosts {
		err := h.Do(func() error {
			for _, k := range []string{"all/accept_dad", "default/accept_dad", "eth0/accept_dad", "all/disable_ipv6", "default/disable_ipv6", "eth0/disable_ipv6"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k, []byte("0"), 0); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("IPv6 on in %s: %v", h.Name, err)
		}
		a := net6.Masked().Addr().As16()
		a[15] = byte(2 + i)
		h.Addr6 = netip.AddrFrom16(a)
		hh := nsHandle(t, h.NS)
		eth0, err := hh.LinkByName("eth0")
		if err == nil {
			err = hh.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(h.Addr6, 64), Flags: unix.IFA_F_NODAD})
		}
		hh.Close()
		if err != nil {
			t.Fatalf("%s in %s: %v", h.Addr6, h.Name, err)
		}
	}
}

// A docker compose stack on the AI server keeps working under the table:
// the web UI reaches the model server on the same bridge (br_netfilter
// on), and the vector DB on a second network of the same engine (another
// br-<id>, routed), both ways. Across engines it is not local: a
// container on docker0 reaches a VM on libvirt's virbr0 only on what the
// egress rules allow. What leaves the host is still the egress rules'
// business only, and a host of the LAN that routes through the AI server
// reaches neither a container nor the outside.
func TestContainersTalkAmongThemselves(t *testing.T) {
	r := startLab(t)
	bridgeNF(t, r.lab.AI)
	app := addBridge(t, r.lab, "br-0a1b2c3d4e5f", netip.MustParsePrefix("172.18.0.0/24"), "webui", "model")
	db := addBridge(t, r.lab, "br-5e6f7a8b9c0d", netip.MustParsePrefix("172.19.0.0/24"), "vectordb")
	sandbox := addBridge(t, r.lab, "docker0", netip.MustParsePrefix("172.17.0.0/24"), "sandbox")[0]
	vm := addBridge(t, r.lab, "virbr0", netip.MustParsePrefix("192.168.122.0/24"), "vm")[0]
	webui, model, vectordb := app[0], app[1], db[0]
	user := r.lab.Hosts["user"]
	routeVia(t, user, r.lab.Hosts["dc"])
	addV6(t, netip.MustParsePrefix("fd00:18::/64"), webui, model)
	serveTCP(t, model.NS, "[fd00:18::3]:11434")
	serveTCP(t, model.NS, "172.18.0.3:11434")
	serveTCP(t, webui.NS, "172.18.0.2:8080")
	serveTCP(t, vectordb.NS, "172.19.0.2:6333")
	serveTCP(t, vm.NS, "192.168.122.2:5432")
	serveTCP(t, vm.NS, "192.168.122.2:443")
	for _, c := range []struct {
		from *netns.NS
		addr string
	}{
		{webui.NS, "172.18.0.3:11434"}, {webui.NS, "[fd00:18::3]:11434"}, {webui.NS, "172.19.0.2:6333"}, {vectordb.NS, "172.18.0.3:11434"},
		{webui.NS, "10.10.0.11:636"}, {webui.NS, "203.0.113.10:443"},
		{sandbox.NS, "192.168.122.2:5432"}, {sandbox.NS, "192.168.122.2:443"}, {vm.NS, "172.18.0.3:11434"},
		{user.NS, "172.18.0.3:11434"}, {user.NS, "10.10.0.11:636"},
	} {
		waitReach(t, c.from, c.addr)
	}

	cfg, needs := labConfig() // forward_from not set: the default
	// The VM's web server is allowed egress, its database is not.
	cfg.Egress = append(cfg.Egress, Rule{To: []string{"192.168.122.2"}, Proto: "tcp", Ports: []int{443}, Comment: "VM web"})
	p, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	cases := []reachCase{
		{"web UI reaches the model server on its bridge", webui.NS, "172.18.0.3:11434", true},
		{"model server reaches the web UI on its bridge", model.NS, "172.18.0.2:8080", true},
		{"web UI reaches the model server on its bridge over IPv6", webui.NS, "[fd00:18::3]:11434", true},
		{"web UI reaches the vector DB on another bridge of br-*", webui.NS, "172.19.0.2:6333", true},
		{"vector DB reaches the model server on another bridge of br-*", vectordb.NS, "172.18.0.3:11434", true},
		{"container on docker0 cannot reach a VM on virbr0 on a port egress does not allow", sandbox.NS, "192.168.122.2:5432", false},
		{"container on docker0 reaches a VM on virbr0 on a port egress allows", sandbox.NS, "192.168.122.2:443", true},
		{"VM on virbr0 cannot reach the model server on br-*", vm.NS, "172.18.0.3:11434", false},
		{"web UI reaches the dc (allowed egress)", webui.NS, "10.10.0.11:636", true},
		{"web UI cannot reach the internet host", webui.NS, "203.0.113.10:443", false},
		{"web UI cannot use the appliance's own egress", webui.NS, "10.40.0.10:6514", false},
		{"LAN host routed via the AI server cannot reach a container", user.NS, "172.18.0.3:11434", false},
		{"LAN host routed via the AI server cannot reach the dc", user.NS, "10.10.0.11:636", false},
	}
	checkReach(t, cases)
	st, err := r.m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Drift) != 0 {
		t.Errorf("drift right after apply: %v", st.Drift)
	}
	if got := counter(st, ChainForward, "forward: accept between the host's containers and VMs within br-*"); got == 0 {
		t.Error("the forward rule for traffic within br-* counted no packet")
	}
	if got := counter(st, ChainForward, "forward: accept between the host's containers and VMs within virbr*"); got != 0 {
		t.Errorf("the forward rule for traffic within virbr* counted %d packets, want 0 (no VM talked to a VM)", got)
	}
	if want := []string{"br-0a1b2c3d4e5f", "br-5e6f7a8b9c0d", "docker0", "virbr0"}; !slices.Equal(p.ForwardLinks, want) {
		t.Errorf("plan: interfaces that match forward_from: got %v, want %v (the bridges, not their ports)", p.ForwardLinks, want)
	}
	if s := p.String(); !strings.Contains(s, "between two interfaces one entry matches") || !strings.Contains(s, "between interfaces of two entries (docker0 and virbr0) only under the egress rules") {
		t.Errorf("plan text does not say which traffic between containers is accepted:\n%s", s)
	}

	// Without any egress rule the stack still works, and nothing leaves.
	cfg.Egress = nil
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatalf("Apply without egress rules: %v", err)
	}
	if err := reachTCP(webui.NS, "172.18.0.3:11434"); err != nil {
		t.Errorf("without egress rules, web UI → model server on its bridge: %v", err)
	}
	if err := reachTCP(webui.NS, "172.19.0.2:6333"); err != nil {
		t.Errorf("without egress rules, web UI → vector DB on another bridge of br-*: %v", err)
	}
	if err := reachTCP(sandbox.NS, "192.168.122.2:443"); err == nil {
		t.Error("without egress rules, a container on docker0 reached a VM on virbr0")
	}
	if err := reachTCP(webui.NS, "10.10.0.11:636"); err == nil {
		t.Error("without egress rules, web UI reached the dc")
	}
}

// heldConn is a TCP connection from one namespace to a listener in
// another, kept open across an apply, with what the listener receives.
type heldConn struct {
	c   net.Conn
	got chan string
}

func holdConn(t *testing.T, from, to *netns.NS, addr string) *heldConn {
	t.Helper()
	l := to.Listen(t, "tcp", addr)
	hc := &heldConn{got: make(chan string, 16)}
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			hc.got <- string(buf[:n])
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := from.Dial(context.Background(), "tcp", addr, shortDial)
		if err == nil {
			hc.c = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s to %s: %v", from.Name, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { hc.c.Close() })
	if !hc.passes("hello") {
		t.Fatalf("%s to %s: the first write did not arrive", from.Name, addr)
	}
	return hc
}

// passes writes msg and reports whether the listener got it in time.
func (hc *heldConn) passes(msg string) bool {
	if _, err := hc.c.Write([]byte(msg)); err != nil {
		return false
	}
	select {
	case s := <-hc.got:
		return s == msg
	case <-time.After(2 * time.Second):
		return false
	}
}

// An apply that narrows forward_from ends the forwarded flows the new
// rules no longer accept, which "ct state established" would keep running
// otherwise: a LAN host behind a bridge named like a container's loses its
// open connection to a container once forward_from stops naming the
// bridge. Flows still accepted (containers on one bridge) and the host's
// own connections (the admin's SSH session) go on.
func TestNarrowingForwardFromEndsItsFlows(t *testing.T) {
	r := startLab(t)
	bridgeNF(t, r.lab.AI)
	app := addBridge(t, r.lab, "br-0a1b2c3d4e5f", netip.MustParsePrefix("172.18.0.0/24"), "webui", "model")
	lanpc := addBridge(t, r.lab, "br-mgmt", netip.MustParsePrefix("192.168.50.0/24"), "lanpc")[0]
	webui, model := app[0], app[1]
	cfg, needs := labConfig() // forward_from: the default, whose "br-*" takes br-mgmt
	// The admin's session to the host itself, on a port of its own (the
	// lab serves 22 already).
	cfg.Ingress = append(cfg.Ingress, Rule{From: []string{"10.99.0.0/24"}, Proto: "tcp", Ports: []int{2222}, Comment: "admin SSH"})
	if _, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	lanFlow := holdConn(t, lanpc.NS, model.NS, "172.18.0.3:11434")
	stackFlow := holdConn(t, webui.NS, model.NS, "172.18.0.3:8000")
	sshFlow := holdConn(t, r.lab.Hosts["admin"].NS, r.lab.AI, "10.99.0.1:2222")

	cfg.ForwardFrom = []string{"br-0a1b2c3d4e5f", "docker*", "veth*"}
	p, err := r.m.Apply(context.Background(), cfg, needs, ApplyOptions{})
	if err != nil {
		t.Fatalf("Apply narrowing forward_from: %v", err)
	}
	if lanFlow.passes("after narrowing") {
		t.Error("the LAN host's established flow still reaches the container after forward_from no longer names br-mgmt")
	}
	if !stackFlow.passes("after narrowing") {
		t.Error("a flow between two containers on one bridge, still accepted, was ended")
	}
	if !sshFlow.passes("after narrowing") {
		t.Error("the admin's SSH session to the host itself was ended")
	}
	if err := reachTCP(lanpc.NS, "172.18.0.3:11434"); err == nil {
		t.Error("a new connection from the LAN host is still accepted after narrowing")
	}
	if p.FlowsCut < 1 || p.FlowsCutError != "" || !strings.Contains(p.String(), "Ended 1 forwarded connection") {
		t.Errorf("plan: flows cut %d, error %q; want the LAN host's flow counted:\n%s", p.FlowsCut, p.FlowsCutError, p.String())
	}

	// An apply that leaves the forward chain as it is ends nothing.
	p, err = r.m.Apply(context.Background(), cfg, needs, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.FlowsCut != 0 || !stackFlow.passes("after a second apply") {
		t.Errorf("an apply that changed no forward rule ended %d flows", p.FlowsCut)
	}

	// A rollback to the narrower rules ends what the wider ones let in.
	wide := *cfg
	wide.ForwardFrom = nil
	if _, err := r.m.Apply(context.Background(), &wide, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	lanFlow = holdConn(t, lanpc.NS, model.NS, "172.18.0.3:11435")
	if err := r.m.Rollback(context.Background(), audit.Actor{}, ""); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if lanFlow.passes("after the rollback") {
		t.Error("the LAN host's flow still reaches the container after a rollback to rules that do not accept it")
	}
	if !stackFlow.passes("after the rollback") || !sshFlow.passes("after the rollback") {
		t.Error("the rollback ended a flow the rules still accept, or the host's own")
	}
}
