//go:build linux

// Package netns builds throw-away network labs for tests: unnamed network
// namespaces joined by veth pairs, with helpers to listen and dial from
// inside any of them. It never changes the caller's own namespace: every
// namespace switch happens on a locked OS thread that is switched back.
//
// The lab is a star around the "ai" namespace (the appliance's host), one
// point-to-point /24 per peer:
//
//	user     10.30.0.2   ai side 10.30.0.1
//	admin    10.99.0.2   ai side 10.99.0.1
//	dc       10.10.0.11  ai side 10.10.0.1
//	siem     10.40.0.10  ai side 10.40.0.1
//	internet 203.0.113.10 ai side 203.0.113.1
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is one network namespace made by the test.
type NS struct {
	Name string
	h    vnetns.NsHandle
}

// Fd is the namespace's file descriptor, valid until the test ends.
func (n *NS) Fd() int { return int(n.h) }

// Do runs fn on a locked OS thread inside the namespace.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := vnetns.Set(n.h); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := vnetns.Set(orig); err != nil {
			// The thread is left locked so the runtime discards it.
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener inside the namespace; it is closed at the end of the test.
func (n *NS) Listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := n.Do(func() (err error) { l, err = net.Listen(network, addr); return }); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, n.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// ListenPacket opens a packet socket inside the namespace; closed at the end of the test.
func (n *NS) ListenPacket(t testing.TB, network, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	if err := n.Do(func() (err error) { pc, err = net.ListenPacket(network, addr); return }); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, n.Name, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// Dial connects from inside the namespace with a timeout.
func (n *NS) Dial(ctx context.Context, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Host is a peer of the ai namespace.
type Host struct {
	*NS
	Addr   netip.Addr // the host's address
	AIAddr netip.Addr // the ai namespace's address on the same link
	// Addr6 and AIAddr6 are the IPv6 pair of a NewDualStack lab: fd00:N::2
	// and fd00:N::1 on the same link (invalid otherwise).
	Addr6, AIAddr6 netip.Addr
	AILink         string // the link's name inside the ai namespace
}

// Lab is the set of namespaces of one test.
type Lab struct {
	AI    *NS
	Hosts map[string]*Host
}

// Peers of the ai namespace, with their /24s.
var peers = []struct{ name, host, ai string }{
	{"user", "10.30.0.2", "10.30.0.1"},
	{"admin", "10.99.0.2", "10.99.0.1"},
	{"dc", "10.10.0.11", "10.10.0.1"},
	{"siem", "10.40.0.10", "10.40.0.1"},
	{"internet", "203.0.113.10", "203.0.113.1"},
}

// Available reports why labs cannot be built here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to make network namespaces")
	}
	return nil
}

// New builds an IPv4-only lab (IPv6 is off in every namespace, so only the
// test's own packets cross the links), or skips the test when namespaces
// cannot be made. Everything is torn down when the test ends.
func New(t testing.TB) *Lab { return build(t, false) }

// NewDualStack is New with IPv6 on as well: every link also gets
// fd00:N::1 (ai side) and fd00:N::2 (peer), without duplicate address
// detection, so they are usable at once. Peer N is 1 for user, 2 for
// admin, and so on in the order of the package doc.
func NewDualStack(t testing.TB) *Lab { return build(t, true) }

func build(t testing.TB, v6 bool) *Lab {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("skipped: %v", err)
	}
	lab := &Lab{Hosts: map[string]*Host{}}
	lab.AI = newNS(t, "ai", v6)
	aiH, err := netlink.NewHandleAt(lab.AI.h)
	if err != nil {
		t.Fatalf("netlink handle in ai: %v", err)
	}
	defer aiH.Close()
	for i, p := range peers {
		ns := newNS(t, p.name, v6)
		h := &Host{NS: ns, Addr: netip.MustParseAddr(p.host), AIAddr: netip.MustParseAddr(p.ai), AILink: "to-" + p.name}
		if v6 {
			h.AIAddr6 = netip.MustParseAddr(fmt.Sprintf("fd00:%d::1", i+1))
			h.Addr6 = netip.MustParseAddr(fmt.Sprintf("fd00:%d::2", i+1))
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: h.AILink},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(ns.h),
		}
		if err := aiH.LinkAdd(veth); err != nil {
			t.Fatalf("veth to %s: %v", p.name, err)
		}
		if err := configure(aiH, h.AILink, h.AIAddr, h.AIAddr6); err != nil {
			t.Fatalf("ai side of %s: %v", p.name, err)
		}
		hh, err := netlink.NewHandleAt(ns.h)
		if err != nil {
			t.Fatalf("netlink handle in %s: %v", p.name, err)
		}
		err = configure(hh, "eth0", h.Addr, h.Addr6)
		hh.Close()
		if err != nil {
			t.Fatalf("%s side: %v", p.name, err)
		}
		lab.Hosts[p.name] = h
	}
	for _, h := range lab.Hosts {
		if err := waitActive(aiH, h.AILink); err != nil {
			t.Fatal(err)
		}
		hh, err := netlink.NewHandleAt(h.h)
		if err != nil {
			t.Fatal(err)
		}
		err = waitActive(hh, "eth0")
		hh.Close()
		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
	}
	return lab
}

func newNS(t testing.TB, name string, v6 bool) *NS {
	t.Helper()
	var h vnetns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err = vnetns.New() // switches this thread into the new namespace
		if err != nil {
			errc <- err
			return
		}
		if !v6 {
			// IPv6 off: the lab speaks IPv4 only, so counters see only the test's packets.
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0)
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0)
		} else {
			// No duplicate address detection, link-local included: every
			// address is usable as soon as its link is up.
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/all/accept_dad", []byte("0"), 0)
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0)
		}
		if err := vnetns.Set(orig); err != nil {
			errc <- err // thread stays locked and is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("new network namespace %s: %v", name, err)
	}
	ns := &NS{Name: name, h: h}
	t.Cleanup(func() { h.Close() })
	lo := func() error {
		nh, err := netlink.NewHandleAt(h)
		if err != nil {
			return err
		}
		defer nh.Close()
		l, err := nh.LinkByName("lo")
		if err != nil {
			return err
		}
		return nh.LinkSetUp(l)
	}
	if err := lo(); err != nil {
		t.Fatalf("lo up in %s: %v", name, err)
	}
	return ns
}

func configure(h *netlink.Handle, link string, a, a6 netip.Addr) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return err
	}
	p := netip.PrefixFrom(a, 24)
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("address %s: %w", p, err)
	}
	if a6.IsValid() {
		addr6 := &netlink.Addr{IPNet: &net.IPNet{IP: a6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(l, addr6); err != nil {
			return fmt.Errorf("address %s/64: %w", a6, err)
		}
	}
	return h.LinkSetUp(l)
}

// waitActive waits until the kernel has activated link's transmit queue:
// until then (the link watcher may take a second) it drops every packet.
func waitActive(h *netlink.Handle, link string) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		qs, err := h.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT && q.Type() != "noop" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("link %s still has no active queue", link)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// AddRouted adds a namespace behind ai, as a container or VM on the
// appliance's host: its own /24 link to ai (host .2, ai .1 of prefix), a
// default route through ai, forwarding on in ai, and a route back to it
// from every peer. Its traffic to the peers crosses ai's forward hook.
func (lab *Lab) AddRouted(t testing.TB, name string, prefix netip.Prefix) *Host {
	t.Helper()
	base := prefix.Masked().Addr().As4()
	h := &Host{
		NS:     newNS(t, name, false),
		Addr:   netip.AddrFrom4([4]byte{base[0], base[1], base[2], 2}),
		AIAddr: netip.AddrFrom4([4]byte{base[0], base[1], base[2], 1}),
		AILink: "to-" + name,
	}
	aiH, err := netlink.NewHandleAt(lab.AI.h)
	if err != nil {
		t.Fatal(err)
	}
	defer aiH.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: h.AILink}, PeerName: "eth0", PeerNamespace: netlink.NsFd(h.h)}
	if err := aiH.LinkAdd(veth); err != nil {
		t.Fatalf("veth to %s: %v", name, err)
	}
	if err := configure(aiH, h.AILink, h.AIAddr, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if err := lab.AI.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)
	}); err != nil {
		t.Fatalf("forwarding in ai: %v", err)
	}
	hh, err := netlink.NewHandleAt(h.h)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if err := configure(hh, "eth0", h.Addr, netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	if err := waitActive(hh, "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := waitActive(aiH, h.AILink); err != nil {
		t.Fatal(err)
	}
	if err := hh.RouteAdd(&netlink.Route{Gw: h.AIAddr.AsSlice()}); err != nil {
		t.Fatalf("default route in %s: %v", name, err)
	}
	dst := &net.IPNet{IP: prefix.Masked().Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), 32)}
	for _, p := range lab.Hosts {
		ph, err := netlink.NewHandleAt(p.h)
		if err != nil {
			t.Fatal(err)
		}
		err = ph.RouteAdd(&netlink.Route{Dst: dst, Gw: p.AIAddr.AsSlice()})
		ph.Close()
		if err != nil {
			t.Fatalf("route to %s in %s: %v", prefix, p.Name, err)
		}
	}
	return h
}
