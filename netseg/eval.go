package netseg

import (
	"net/netip"
	"strings"
)

// ingressAllows reports whether cfg's ingress rules accept a new connection
// from src to port (proto "tcp" or "udp") arriving on iface ("" when
// unknown: interface-bound rules then do not count). It is the lockout
// check's model of the input chain; loopback and established traffic are
// not considered, since a new login needs a new connection.
func ingressAllows(cfg *Config, iface string, src netip.Addr, proto string, port int) bool {
	if src.IsLoopback() {
		return true
	}
	sets := map[string][]string{}
	for _, s := range cfg.Sets {
		sets[s.Name] = s.Addresses
	}
	for _, r := range cfg.Ingress {
		if r.Interface != "" && r.Interface != iface {
			continue
		}
		if p := r.proto(); p != "any" && p != proto {
			continue
		}
		if len(r.Ports) > 0 && !containsInt(r.Ports, port) {
			continue
		}
		if addrIn(src, r.From, sets) {
			return true
		}
	}
	return false
}

func addrIn(a netip.Addr, list []string, sets map[string][]string) bool {
	a = a.Unmap()
	for _, s := range list {
		if name, ok := strings.CutPrefix(s, "@"); ok {
			if addrIn(a, sets[name], nil) {
				return true
			}
			continue
		}
		if p, err := parsePrefix(s); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// forwardAllows reports whether cfg's forward chain accepts a new flow that
// comes in on iif and goes out on oif, to dst (proto an IP protocol number,
// port the destination port, 0 for none). It is the model of the forward
// chain the cut of forwarded flows after an apply uses: within one
// forward_from entry, or from one under the egress rules, never on a VLAN.
func forwardAllows(cfg *Config, iif, oif string, dst netip.Addr, proto uint8, port int) bool {
	isVLAN := func(n string) bool {
		for _, v := range cfg.VLANs {
			if v.Name == n {
				return true
			}
		}
		return false
	}
	entry := forwardMatch(cfg.forwardFrom(), iif)
	if entry == "" || isVLAN(iif) {
		return false
	}
	if parseIfPattern(entry).matches(oif) && !isVLAN(oif) {
		return true
	}
	sets := map[string][]string{}
	for _, s := range cfg.Sets {
		sets[s.Name] = s.Addresses
	}
	for _, r := range cfg.Egress {
		if r.Interface != "" && r.Interface != oif {
			continue
		}
		if pn := protoNumbers[r.proto()]; pn != 0 && pn != proto {
			continue
		}
		if len(r.Ports) > 0 && !containsInt(r.Ports, port) {
			continue
		}
		if addrIn(dst, r.To, sets) {
			return true
		}
	}
	return false
}
