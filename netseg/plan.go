package netseg

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
)

// Plan is what an apply changes, in words a sysadmin reads.
type Plan struct {
	// Changes lists each difference between the config and the kernel;
	// empty means the kernel already matches.
	Changes []string `json:"changes"`
	// Needs is the egress the appliance itself needs, with where each one
	// comes from in the config.
	Needs []PlannedNeed `json:"needs"`
	// Rules is the full ruleset after the apply, one line per rule.
	Rules []string `json:"rules"`
	// ForwardFrom is the forward_from in force: the interfaces routed
	// traffic may come in on, to go out on an interface of the same entry
	// or to leave under the egress rules. Empty means the host routes nothing
	// (forward_from = []).
	ForwardFrom []string `json:"forward_from"`
	// ForwardLinks are the host's interfaces that match ForwardFrom now
	// (the VLANs, never routed, left out).
	ForwardLinks []string `json:"forward_links"`
	// FlowsCut is how many forwarded flows an apply ended because its
	// rules no longer accept them (conntrack entries deleted); the host's
	// own connections are never among them.
	FlowsCut int `json:"flows_cut,omitempty"`
	// FlowsCutError says why the flows the new rules no longer accept
	// could not all be ended; those run until they close.
	FlowsCutError string `json:"flows_cut_error,omitempty"`
	// Lockout says why the apply would cut the admin's SSH session.
	Lockout string `json:"lockout,omitempty"`
	// ConfirmBy is when an unconfirmed apply rolls back.
	ConfirmBy time.Time `json:"confirm_by,omitzero"`
}

// PlannedNeed is one resolved Need.
type PlannedNeed struct {
	Address  string   `json:"address"`
	Proto    string   `json:"proto"`
	Origin   string   `json:"origin"`
	Resolved []string `json:"resolved"`
}

// String renders the plan for a terminal.
func (p *Plan) String() string {
	var b strings.Builder
	if len(p.Changes) == 0 {
		b.WriteString("No changes: the kernel matches the config.\n")
	} else {
		fmt.Fprintf(&b, "%d change(s):\n", len(p.Changes))
		for _, c := range p.Changes {
			fmt.Fprintf(&b, "  %s\n", c)
		}
	}
	if len(p.Needs) > 0 {
		b.WriteString("\nEgress the appliance needs (from the rest of the config):\n")
		for _, n := range p.Needs {
			fmt.Fprintf(&b, "  %s %s -> %s   (%s)\n", n.Proto, n.Address, strings.Join(n.Resolved, ", "), n.Origin)
		}
	}
	if len(p.ForwardFrom) == 0 {
		b.WriteString("\nRouted traffic: none; the host routes nothing for its containers or VMs, not even between them (forward_from = []).\n")
	} else {
		fmt.Fprintf(&b, "\nRouted traffic leaves under the egress rules only when it comes in on: %s (forward_from)\n", strings.Join(p.ForwardFrom, ", "))
		b.WriteString("  between two interfaces one entry matches (docker0 and docker0, br-a and br-b: containers or VMs of one engine, bridged or routed) it is accepted\n")
		b.WriteString("  between interfaces of two entries (docker0 and virbr0) only under the egress rules\n")
		if len(p.ForwardLinks) == 0 {
			b.WriteString("  no interface of the host matches now\n")
		} else {
			fmt.Fprintf(&b, "  interfaces that match now: %s\n", strings.Join(p.ForwardLinks, ", "))
		}
	}
	b.WriteString("\nRuleset after apply (everything else is dropped and logged):\n")
	for _, r := range p.Rules {
		fmt.Fprintf(&b, "  %s\n", r)
	}
	if p.FlowsCut > 0 {
		fmt.Fprintf(&b, "\nEnded %d forwarded connection(s) the new rules no longer accept (the host's own are never ended).\n", p.FlowsCut)
	}
	if p.FlowsCutError != "" {
		fmt.Fprintf(&b, "\nWARNING: forwarded connections the new rules no longer accept could not be ended (%s): they run until they close.\n", p.FlowsCutError)
	}
	if p.Lockout != "" {
		fmt.Fprintf(&b, "\nWARNING: %s\n", p.Lockout)
	}
	if !p.ConfirmBy.IsZero() {
		fmt.Fprintf(&b, "\nRolls back at %s unless confirmed with `applianced net confirm`.\n", p.ConfirmBy.UTC().Format(time.RFC3339))
	}
	return b.String()
}

// basePlan is the part of a plan that needs no kernel: needs and rules.
func basePlan(a *applied) *Plan {
	p := &Plan{Changes: []string{}, ForwardFrom: slices.Clone(a.Config.forwardFrom()), ForwardLinks: []string{}}
	for _, n := range a.Needs {
		pn := PlannedNeed{Address: n.Address, Proto: strings.ToLower(n.Proto), Origin: n.Origin}
		for _, ad := range n.Addrs {
			pn.Resolved = append(pn.Resolved, netip.AddrPortFrom(ad, n.Port).String())
		}
		p.Needs = append(p.Needs, pn)
	}
	for _, c := range a.rs.Chains {
		for _, r := range c.Rules {
			p.Rules = append(p.Rules, r.Desc)
		}
		p.Rules = append(p.Rules, c.Name+": policy drop")
	}
	return p
}

// forwardLinks lists the names among links that forward_from matches,
// the VLANs left out.
func forwardLinks(cfg *Config, links []string) []string {
	out := []string{}
	for _, l := range links {
		if forwardMatch(cfg.forwardFrom(), l) != "" && !slices.ContainsFunc(cfg.VLANs, func(v VLAN) bool { return v.Name == l }) {
			out = append(out, l)
		}
	}
	slices.Sort(out)
	return out
}

// tableChanges diffs the desired ruleset against the kernel's table.
func tableChanges(want *ruleset, kt *kernelTable) []string {
	if !kt.Exists {
		out := []string{fmt.Sprintf("create table inet %s: chains input, output, forward with policy drop", TableName)}
		for _, s := range want.Sets {
			out = append(out, fmt.Sprintf("create set %s (%s): %s", s.Set.Name, s.Desc, summarize(s.Items)))
		}
		for _, c := range want.Chains {
			for _, r := range c.Rules {
				out = append(out, "add rule "+r.Desc)
			}
		}
		return out
	}
	var out []string
	for _, s := range want.Sets {
		ks, ok := kt.Sets[s.Set.Name]
		if !ok {
			out = append(out, fmt.Sprintf("create set %s (%s): %s", s.Set.Name, s.Desc, summarize(s.Items)))
			continue
		}
		got, wantItems := renderElems(&s.Set, ks.Elems), renderElems(&s.Set, s.Elems)
		var add, del []string
		for _, w := range wantItems {
			if !slices.Contains(got, w) {
				add = append(add, w)
			}
		}
		for _, g := range got {
			if !slices.Contains(wantItems, g) {
				del = append(del, g)
			}
		}
		if len(add) > 0 {
			out = append(out, fmt.Sprintf("set %s: add %s", s.Set.Name, summarize(add)))
		}
		if len(del) > 0 {
			out = append(out, fmt.Sprintf("set %s: remove %s", s.Set.Name, summarize(del)))
		}
	}
	for name := range kt.Sets {
		if !slices.ContainsFunc(want.Sets, func(s *setSpec) bool { return s.Set.Name == name }) {
			out = append(out, "delete set "+name)
		}
	}
	for _, c := range want.Chains {
		got := kt.Chains[c.Name]
		var gd []string
		for _, r := range got {
			gd = append(gd, r.Desc)
		}
		var wd []string
		for _, r := range c.Rules {
			d := truncate(r.Desc, 250)
			wd = append(wd, d)
			if !slices.Contains(gd, d) {
				out = append(out, "add rule "+r.Desc)
			}
		}
		for _, d := range gd {
			if !slices.Contains(wd, d) {
				out = append(out, "remove rule "+orDesc(d))
			}
		}
	}
	for name := range kt.Chains {
		if !slices.ContainsFunc(want.Chains, func(c *chainSpec) bool { return c.Name == name }) {
			out = append(out, "delete chain "+name)
		}
	}
	slices.Sort(out)
	return out
}

func orDesc(d string) string {
	if d == "" {
		return "(a rule without a comment, added outside applianced)"
	}
	return d
}

func summarize(items []string) string {
	const max = 8
	if len(items) <= max {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:max], ", "), len(items)-max)
}

// renderElems turns set elements into readable items, the same way for the
// kernel's elements and ours, so they can be compared.
func renderElems(s *nftables.Set, elems []nftables.SetElement) []string {
	var out []string
	switch {
	case s.Interval && s.KeyType.Name == nftables.TypeIFName.Name:
		out = renderIfnames(elems)
	case s.Interval:
		es := slices.Clone(elems)
		slices.SortStableFunc(es, func(a, b nftables.SetElement) int { return bytes.Compare(a.Key, b.Key) })
		for i := 0; i < len(es); i++ {
			if es[i].IntervalEnd {
				continue
			}
			from, ok := netip.AddrFromSlice(es[i].Key)
			if !ok {
				continue
			}
			to := lastOfFamily(from)
			if i+1 < len(es) && es[i+1].IntervalEnd {
				if end, ok := netip.AddrFromSlice(es[i+1].Key); ok {
					to = end.Prev()
				}
				i++
			}
			out = append(out, rangeString(addrRange{from, to}))
		}
	case s.Concatenation:
		for _, e := range elems {
			n := len(e.Key) - 8
			if n != 4 && n != 16 {
				continue
			}
			a, _ := netip.AddrFromSlice(e.Key[:n])
			port := binary.BigEndian.Uint16(e.Key[n+4:])
			out = append(out, fmt.Sprintf("%s %s", protoName(e.Key[n]), netip.AddrPortFrom(a, port)))
		}
	default:
		for _, e := range elems {
			if len(e.Key) == 2 {
				out = append(out, fmt.Sprint(binary.BigEndian.Uint16(e.Key)))
			}
		}
	}
	slices.Sort(out)
	return out
}

// renderIfnames turns the elements of an interval set of interface names
// back into forward_from entries ("virbr0", "veth*"); a range that is
// neither is shown as its two ends.
func renderIfnames(elems []nftables.SetElement) []string {
	es := slices.Clone(elems)
	slices.SortStableFunc(es, func(a, b nftables.SetElement) int { return bytes.Compare(a.Key, b.Key) })
	var out []string
	for i := 0; i < len(es); i++ {
		if es[i].IntervalEnd {
			continue
		}
		start := es[i].Key
		base := string(bytes.TrimRight(start, "\x00"))
		var end []byte
		if i+1 < len(es) && es[i+1].IntervalEnd {
			end = es[i+1].Key
			i++
		}
		exact, _ := incBytes(ifname(base))
		prefixEnd, _ := incBytes([]byte(base))
		switch {
		case bytes.Equal(start, ifname(base)) && bytes.Equal(end, exact):
			out = append(out, base)
		case bytes.Equal(start, ifname(base)) && base != "" && bytes.Equal(end, ifname(string(prefixEnd))):
			out = append(out, base+"*")
		default:
			out = append(out, fmt.Sprintf("%q-%q", start, end))
		}
	}
	slices.Sort(out)
	return out
}

func lastOfFamily(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	return netip.AddrFrom16([16]byte{0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 255, 8: 255, 9: 255, 10: 255, 11: 255, 12: 255, 13: 255, 14: 255, 15: 255})
}
