package netseg

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/applianced/applianced/internal/conf"
	"golang.org/x/sys/unix"
)

// Config is the [net] section of applianced.toml: the VLANs the appliance
// sits on and the allow lists of its default-deny firewall. Everything not
// allowed here (or needed by the appliance itself, see Need) is dropped.
//
// Example:
//
//	[net]
//	log_drops = true
//	log_rate = 10
//	forward_from = ["docker0", "br-*", "virbr*", "vnet*"]
//
//	[[net.set]]
//	name = "dcs"
//	addresses = ["10.10.0.11/32", "10.10.0.12/32"]
//
//	[[net.vlan]]
//	name = "ai0"
//	parent = "eth0"
//	id = 20
//	addresses = ["10.20.0.5/24"]
//
//	[[net.egress]]
//	to = ["@dcs"]
//	proto = "tcp"
//	ports = [636]
//	comment = "domain controllers"
//
//	[[net.ingress]]
//	from = ["10.99.0.0/24"]
//	proto = "tcp"
//	ports = [22]
//	comment = "admin SSH"
type Config struct {
	// VLANs are 802.1Q interfaces the appliance creates and owns.
	VLANs []VLAN `toml:"vlan"`
	// Sets are named address lists that rules refer to as "@name".
	Sets []AddrSet `toml:"set"`
	// Egress rules allow traffic the appliance's host starts.
	Egress []Rule `toml:"egress"`
	// Ingress rules allow connections to the appliance's host.
	Ingress []Rule `toml:"ingress"`
	// LogDrops logs dropped packets to the audit trail (net.egress_blocked,
	// net.ingress_blocked). Nil means true.
	LogDrops *bool `toml:"log_drops"`
	// LogRate is the most dropped packets per second handed to the logger;
	// the rest are still dropped and counted. 0 means 10.
	LogRate int `toml:"log_rate"`
	// LogGroup is the nflog group the drop log rules send to. 0 means 100.
	LogGroup int `toml:"log_group"`
	// ForwardFrom names the interfaces of the host's containers and VMs:
	// traffic the host routes (the forward chain) is accepted only when it
	// comes in on one of them, and never from a [[net.vlan]]: as it is
	// when it goes out on an interface the same entry matches (containers
	// of one engine talking to each other, on one bridge or across two of
	// "br-*"), else under the egress rules (Docker to libvirt, say). A
	// name ending in "*" matches every interface that starts with the rest
	// ("veth*"). Nil (the key absent) means DefaultForwardFrom; an empty
	// list means the host routes nothing, not even between its containers.
	ForwardFrom []string `toml:"forward_from"`
}

// DefaultForwardFrom returns the forward_from of a config that does not set
// it: the bridges and host-side links that Docker (docker0, br-<network
// id>, veth…), Podman (podman0…, cni-podman0), Kubernetes CNI (cni0),
// libvirt (virbr0…, vnet0…), LXC (lxcbr0), LXD (lxdbr0), Incus (incusbr0)
// and systemd-nspawn (ve-<machine> for --network-veth, vz-<zone> for
// --network-zone) create. nspawn is among them because it ships with
// systemd on every host this runs on, and its names are its own: no
// distribution names a LAN link "ve-" or "vz-". The uplink, a bond or a
// VLAN of the host is not among them; a host whose own LAN bridge is
// named like one of these (an admin's "br-lan") must set forward_from
// itself, and a plan that finds a physical device, a bond or a VLAN
// behind a matching name, or in a matching bridge, is refused.
func DefaultForwardFrom() []string {
	return []string{"docker*", "br-*", "veth*", "podman*", "cni*", "virbr*", "vnet*", "lxcbr*", "lxdbr*", "incusbr*", "ve-*", "vz-*"}
}

// VLAN is one [[net.vlan]]: an 802.1Q interface on a parent link.
type VLAN struct {
	// Name of the interface, at most 15 bytes, e.g. "ai0".
	Name string `toml:"name"`
	// Parent is the physical link the tagged frames use, e.g. "eth0".
	// It must exist and be up.
	Parent string `toml:"parent"`
	// ID is the 802.1Q VLAN id, 1–4094.
	ID int `toml:"id"`
	// MTU of the VLAN interface; 0 keeps the kernel's default (the parent's).
	MTU int `toml:"mtu"`
	// Addresses assigned to the interface, in CIDR form ("10.20.0.5/24").
	Addresses []string `toml:"addresses"`
}

// AddrSet is one [[net.set]]: a named list of addresses and networks.
type AddrSet struct {
	Name      string   `toml:"name"`
	Addresses []string `toml:"addresses"`
}

// Rule is one [[net.egress]] or [[net.ingress]] allow rule.
type Rule struct {
	// To lists destination CIDRs, bare addresses or "@set" names (egress).
	To []string `toml:"to"`
	// From lists source CIDRs, bare addresses or "@set" names (ingress).
	From []string `toml:"from"`
	// Proto is tcp, udp, icmp, icmpv6 or any. Empty means tcp.
	Proto string `toml:"proto"`
	// Ports are destination ports (tcp and udp only); empty means all.
	Ports []int `toml:"ports"`
	// Interface limits the rule to one interface (a link or a VLAN name):
	// the outgoing one for egress, the incoming one for ingress.
	Interface string `toml:"interface"`
	// Comment says why the rule exists; it appears in the plan.
	Comment string `toml:"comment"`
}

const (
	defaultLogRate  = 10
	defaultLogGroup = 100
)

var ifNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
var setNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)

func (c *Config) logDrops() bool { return c.LogDrops == nil || *c.LogDrops }

// forwardFrom is ForwardFrom with its default.
func (c *Config) forwardFrom() []string {
	if c.ForwardFrom == nil {
		return DefaultForwardFrom()
	}
	return c.ForwardFrom
}

// ifPattern is one forward_from entry: an interface name, or a prefix of
// one when the entry ends in "*".
type ifPattern struct {
	name   string
	prefix bool
}

func parseIfPattern(s string) ifPattern {
	if p, ok := strings.CutSuffix(s, "*"); ok {
		return ifPattern{p, true}
	}
	return ifPattern{s, false}
}

func (p ifPattern) matches(name string) bool {
	if p.prefix {
		return strings.HasPrefix(name, p.name)
	}
	return name == p.name
}

// overlaps reports whether some interface name matches both p and q.
func (p ifPattern) overlaps(q ifPattern) bool {
	return (p.prefix && strings.HasPrefix(q.name, p.name)) || (q.prefix && strings.HasPrefix(p.name, q.name)) || p == q
}

// forwardMatch returns the forward_from entry that name matches, or "".
func forwardMatch(patterns []string, name string) string {
	for _, s := range patterns {
		if parseIfPattern(s).matches(name) {
			return s
		}
	}
	return ""
}

func (c *Config) logRate() int {
	if c.LogRate == 0 {
		return defaultLogRate
	}
	return c.LogRate
}

func (c *Config) logGroup() uint16 {
	if c.LogGroup == 0 {
		return defaultLogGroup
	}
	return uint16(c.LogGroup)
}

// Validate checks the section without touching the kernel. Keys are relative
// to the section: "vlan[0].id", "egress[2].to[1]".
func (c *Config) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if c.LogRate < 0 || c.LogRate > 10000 {
		errs = append(errs, conf.Errf("log_rate", "must be between 1 and 10000 packets per second, got %d", c.LogRate))
	}
	if c.LogGroup < 0 || c.LogGroup > 65535 {
		errs = append(errs, conf.Errf("log_group", "must be an nflog group between 1 and 65535, got %d", c.LogGroup))
	}

	sets := map[string]bool{}
	for i, s := range c.Sets {
		key := fmt.Sprintf("set[%d]", i)
		switch {
		case !setNameRE.MatchString(s.Name):
			errs = append(errs, conf.Errf(key+".name", "%q is not a valid set name (a letter, then letters, digits or _; at most 32)", s.Name))
		case sets[s.Name]:
			errs = append(errs, conf.Errf(key+".name", "duplicate set name %q", s.Name))
		}
		sets[s.Name] = true
		if len(s.Addresses) == 0 {
			errs = append(errs, conf.Errf(key+".addresses", "a set needs at least one address"))
		}
		errs = append(errs, checkPrefixes(key+".addresses", s.Addresses, nil)...)
	}

	names := map[string]bool{}
	ids := map[string]int{} // parent/id → index
	for i, v := range c.VLANs {
		key := fmt.Sprintf("vlan[%d]", i)
		switch {
		case !ifNameRE.MatchString(v.Name):
			errs = append(errs, conf.Errf(key+".name", "%q is not a valid interface name (1–15 of A-Z a-z 0-9 _ . -)", v.Name))
		case names[v.Name]:
			errs = append(errs, conf.Errf(key+".name", "duplicate VLAN name %q", v.Name))
		}
		names[v.Name] = true
		if !ifNameRE.MatchString(v.Parent) {
			errs = append(errs, conf.Errf(key+".parent", "%q is not a valid interface name", v.Parent))
		} else if v.Parent == v.Name {
			errs = append(errs, conf.Errf(key+".parent", "a VLAN cannot be its own parent"))
		}
		if v.ID < 1 || v.ID > 4094 {
			errs = append(errs, conf.Errf(key+".id", "VLAN id must be between 1 and 4094, got %d", v.ID))
		} else {
			pk := fmt.Sprintf("%s/%d", v.Parent, v.ID)
			if j, dup := ids[pk]; dup {
				errs = append(errs, conf.Errf(key+".id", "VLAN id %d on %s is already used by vlan[%d]", v.ID, v.Parent, j))
			}
			ids[pk] = i
		}
		if v.MTU != 0 && (v.MTU < 68 || v.MTU > 65535) {
			errs = append(errs, conf.Errf(key+".mtu", "MTU must be between 68 and 65535, got %d", v.MTU))
		}
		for j, a := range v.Addresses {
			k := fmt.Sprintf("%s.addresses[%d]", key, j)
			p, err := netip.ParsePrefix(a)
			if err != nil {
				errs = append(errs, conf.Errf(k, "%q is not an address with a prefix length like \"10.20.0.5/24\"", a))
				continue
			}
			if msg := hostAddrProblem(p); msg != "" {
				errs = append(errs, conf.Errf(k, "%q %s: give this host's own address on the VLAN, like \"10.20.0.5/24\"", a, msg))
			}
		}
	}

	errs = append(errs, c.validateForwardFrom()...)

	for i, r := range c.Egress {
		errs = append(errs, r.validate(fmt.Sprintf("egress[%d]", i), "to", r.To, r.From, "from", sets)...)
	}
	for i, r := range c.Ingress {
		errs = append(errs, r.validate(fmt.Sprintf("ingress[%d]", i), "from", r.From, r.To, "to", sets)...)
	}
	return errs
}

// validateForwardFrom checks forward_from, and that no VLAN's parent link
// matches it: the VLANs themselves are never a source of routed traffic,
// but their parent's untagged hosts would be.
func (c *Config) validateForwardFrom() []*conf.FieldError {
	var errs []*conf.FieldError
	var seen []ifPattern
	var seenIdx []int
	for j, s := range c.ForwardFrom {
		k := fmt.Sprintf("forward_from[%d]", j)
		p := parseIfPattern(s)
		switch {
		case s == "":
			errs = append(errs, conf.Errf(k, "an empty name matches no interface: give a name like \"virbr0\" or a prefix like \"veth*\""))
			continue
		case s == "*":
			errs = append(errs, conf.Errf(k, "\"*\" alone would route traffic from every interface, the LAN's and the uplink's included: list the container and VM interfaces (\"docker*\", \"virbr*\")"))
			continue
		case strings.Contains(p.name, "*"):
			errs = append(errs, conf.Errf(k, "%q: \"*\" may only end a name, as a prefix match (\"veth*\")", s))
			continue
		case len(p.name) > unix.IFNAMSIZ-1:
			errs = append(errs, conf.Errf(k, "%q is longer than an interface name can be (%d bytes)", s, unix.IFNAMSIZ-1))
			continue
		case !ifNameRE.MatchString(p.name):
			errs = append(errs, conf.Errf(k, "%q is not a valid interface name or prefix (1–15 of A-Z a-z 0-9 _ . -, then an optional \"*\")", s))
			continue
		}
		for n, q := range seen {
			switch {
			case p == q:
				errs = append(errs, conf.Errf(k, "duplicate entry %q (forward_from[%d])", s, seenIdx[n]))
			case p.overlaps(q):
				errs = append(errs, conf.Errf(k, "%q overlaps %q (forward_from[%d]): some interface names match both; keep one", s, c.ForwardFrom[seenIdx[n]], seenIdx[n]))
			default:
				continue
			}
			break
		}
		seen = append(seen, p)
		seenIdx = append(seenIdx, j)
	}
	if len(errs) > 0 {
		return errs
	}
	ff, where := c.forwardFrom(), "forward_from"
	if c.ForwardFrom == nil {
		where = "the default forward_from"
	}
	for i, v := range c.VLANs {
		if m := forwardMatch(ff, v.Parent); m != "" && v.Parent != "" {
			errs = append(errs, conf.Errf(fmt.Sprintf("vlan[%d].parent", i),
				"%q matches %q of %s: the hosts on its untagged network would be routed through the appliance; set forward_from to the container and VM interfaces only", v.Parent, m, where))
		}
	}
	return errs
}

func (r *Rule) validate(key, addrKey string, addrs, other []string, otherKey string, sets map[string]bool) []*conf.FieldError {
	var errs []*conf.FieldError
	if len(other) > 0 {
		errs = append(errs, conf.Errf(key+"."+otherKey, "not allowed here: use %q", addrKey))
	}
	if len(addrs) == 0 {
		errs = append(errs, conf.Errf(key+"."+addrKey, "a rule needs at least one address, network or @set (use \"0.0.0.0/0\" for any IPv4 address)"))
	}
	errs = append(errs, checkPrefixes(key+"."+addrKey, addrs, sets)...)
	proto := r.proto()
	if _, ok := protoNumbers[proto]; !ok {
		errs = append(errs, conf.Errf(key+".proto", "unknown protocol %q: want tcp, udp, icmp, icmpv6 or any", r.Proto))
	} else if len(r.Ports) > 0 && proto != "tcp" && proto != "udp" {
		errs = append(errs, conf.Errf(key+".ports", "ports need proto tcp or udp, not %q", proto))
	}
	seen := map[int]bool{}
	for j, p := range r.Ports {
		pk := fmt.Sprintf("%s.ports[%d]", key, j)
		switch {
		case p < 1 || p > 65535:
			errs = append(errs, conf.Errf(pk, "port must be between 1 and 65535, got %d", p))
		case seen[p]:
			errs = append(errs, conf.Errf(pk, "duplicate port %d", p))
		}
		seen[p] = true
	}
	if r.Interface != "" && !ifNameRE.MatchString(r.Interface) {
		errs = append(errs, conf.Errf(key+".interface", "%q is not a valid interface name", r.Interface))
	}
	if strings.ContainsAny(r.Comment, "\x00\n") || len(r.Comment) > 128 {
		errs = append(errs, conf.Errf(key+".comment", "a comment is one line of at most 128 bytes"))
	}
	return errs
}

// checkPrefixes checks a list of CIDRs, bare addresses and (when sets is not
// nil) "@set" references. Overlaps within the list are refused: they are
// almost always a typo, and the kernel refuses overlapping intervals.
func checkPrefixes(key string, list []string, sets map[string]bool) []*conf.FieldError {
	var errs []*conf.FieldError
	var seen []netip.Prefix
	var seenIdx []int
	for j, s := range list {
		k := fmt.Sprintf("%s[%d]", key, j)
		if name, ok := strings.CutPrefix(s, "@"); ok && sets != nil {
			if !sets[name] {
				errs = append(errs, conf.Errf(k, "unknown set %q: declare it with [[net.set]]", name))
			}
			continue
		}
		p, err := parsePrefix(s)
		if err != nil {
			errs = append(errs, conf.Errf(k, "%v", err))
			continue
		}
		for n, q := range seen {
			if p.Overlaps(q) {
				errs = append(errs, conf.Errf(k, "%s overlaps %s (%s[%d])", p, q, key, seenIdx[n]))
				break
			}
		}
		seen = append(seen, p)
		seenIdx = append(seenIdx, j)
	}
	return errs
}

// parsePrefix accepts "10.0.0.0/8" or a bare address ("10.0.0.1" means /32).
// Host bits must be zero: "10.0.0.1/8" is refused as ambiguous.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not a CIDR like \"10.0.0.0/24\"", s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set: did you mean %s?", s, p.Masked())
		}
		if p.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("%q: write IPv4 networks in dotted form", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or a CIDR", s)
	}
	if a.Is4In6() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (r *Rule) proto() string {
	if r.Proto == "" {
		return "tcp"
	}
	return strings.ToLower(r.Proto)
}

// protoNumbers maps config protocol names to IP protocol numbers; any is 0.
var protoNumbers = map[string]uint8{"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "any": 0}

// hostAddrProblem says why p cannot be an address of this host on a link,
// or "".
func hostAddrProblem(p netip.Prefix) string {
	a := p.Addr()
	switch {
	case a.Is4In6():
		return "is an IPv4-mapped IPv6 address"
	case a.IsUnspecified():
		return "is the unspecified address"
	case a.IsLoopback():
		return "is a loopback address"
	case a.IsMulticast():
		return "is a multicast address"
	case a.IsLinkLocalUnicast():
		return "is link-local (the kernel makes those itself)"
	}
	if a.Is4() {
		if a.As4()[0] == 0 {
			return "is in 0.0.0.0/8, which names no host"
		}
		if a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return "is the broadcast address"
		}
		if bits := p.Bits(); bits <= 30 {
			if a == p.Masked().Addr() {
				return "is the network's own address"
			}
			last := a.As4()
			mask := ^uint32(0) >> bits
			v := uint32(last[0])<<24 | uint32(last[1])<<16 | uint32(last[2])<<8 | uint32(last[3])
			if v&mask == mask {
				return "is the network's broadcast address"
			}
		}
	}
	return ""
}
