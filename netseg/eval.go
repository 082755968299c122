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
