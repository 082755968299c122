package netseg

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// forwardKey sums up what decides the forward chain's verdicts in a: its
// rules and the sets they look up. Two states with the same key accept the
// same routed flows.
func forwardKey(a *applied) string {
	if a == nil {
		return ""
	}
	var b strings.Builder
	for _, c := range a.rs.Chains {
		if c.Name != ChainForward {
			continue
		}
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "%s|%s\n", r.Desc, exprFingerprint(r.Exprs))
		}
	}
	for _, s := range a.rs.Sets {
		if s.Set.Name == "forward_from" || strings.HasPrefix(s.Set.Name, "egress_") {
			fmt.Fprintf(&b, "set %s: %s\n", s.Set.Name, strings.Join(renderElems(&s.Set, s.Elems), ","))
		}
	}
	return b.String()
}

// flowFilter picks the conntrack entries of forwarded flows that cfg's
// forward chain would not accept as new. A flow one of whose ends is an
// address of the host (its original source, or its reply's source, the
// destination after DNAT) is the host's own, the admin's SSH session
// among them, and never picked. The interfaces a flow comes in and goes
// out on are not in conntrack: they are found as the routes to its two
// ends, which is what the forward hook saw (the bridge, for a bridged
// flow).
type flowFilter struct {
	cfg   *Config
	local map[netip.Addr]bool
	via   func(netip.Addr) string
}

func (f *flowFilter) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool {
	src, ok1 := netip.AddrFromSlice(fl.Forward.SrcIP)
	dst, ok2 := netip.AddrFromSlice(fl.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	src, dst = src.Unmap(), dst.Unmap()
	if f.local[src] || f.local[dst] || src.IsLoopback() || dst.IsLoopback() {
		return false
	}
	iif, oif := f.via(src), f.via(dst)
	if iif == "" || oif == "" {
		return false // no route: not a flow the host routes
	}
	if forwardAllows(f.cfg, iif, oif, dst, fl.Forward.Protocol, int(fl.Reverse.SrcPort)) {
		return false
	}
	return true
}

// cutFlows deletes the conntrack entries of the forwarded flows that cfg no
// longer accepts, so that the forward chain's "established,related" accept
// does not keep them running after an apply narrowed what is routed. It
// returns how many it deleted. The handle holds a netfilter socket of its
// own in the namespace: one without would dump the caller's table.
func (l *links) cutFlows(cfg *Config) (int, error) {
	var h *netlink.Handle
	var err error
	if l.nsFd > 0 {
		h, err = netlink.NewHandleAt(vnetns.NsHandle(l.nsFd), unix.NETLINK_ROUTE, unix.NETLINK_NETFILTER)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE, unix.NETLINK_NETFILTER)
	}
	if err != nil {
		return 0, fmt.Errorf("netseg: netlink: %w", err)
	}
	defer h.Close()
	all, err := retry(h.LinkList)
	if err != nil {
		return 0, fmt.Errorf("netseg: list links: %w", err)
	}
	names := map[int]string{}
	for _, lk := range all {
		names[lk.Attrs().Index] = lk.Attrs().Name
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return 0, fmt.Errorf("netseg: list addresses: %w", err)
	}
	f := &flowFilter{cfg: cfg, local: map[netip.Addr]bool{}}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			f.local[ip.Unmap()] = true
		}
	}
	routes := map[netip.Addr]string{}
	f.via = func(a netip.Addr) string {
		if n, ok := routes[a]; ok {
			return n
		}
		n := ""
		if rs, err := h.RouteGet(a.AsSlice()); err == nil && len(rs) > 0 {
			n = names[rs[0].LinkIndex]
		}
		routes[a] = n
		return n
	}
	cut := 0
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, fam, f)
		cut += int(n)
		if err != nil {
			return cut, fmt.Errorf("netseg: conntrack: %w", err)
		}
	}
	return cut, nil
}

// cutStaleFlows runs cutFlows when the forward chain of a differs from
// before's, and says so in p.
func (m *Manager) cutStaleFlows(before, a *applied, p *Plan) map[string]string {
	if a == nil || forwardKey(before) == forwardKey(a) {
		return nil
	}
	n, err := m.l.cutFlows(&a.Config)
	p.FlowsCut = n
	det := map[string]string{"flows_cut": fmt.Sprint(n)}
	if err != nil {
		m.log.Warn("netseg: forwarded flows the new rules do not accept could not all be cut; they run until they close", "err", err)
		p.FlowsCutError = err.Error()
		det["flows_cut_error"] = truncate(err.Error(), 500)
	}
	return det
}
