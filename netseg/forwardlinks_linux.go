package netseg

import (
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
)

// lanKind says what makes link one of the LAN's rather than a container's
// or VM's ("a physical device", "a bond", "a VLAN"), or "" when it is none
// of those. A link without a kind in netlink is a device driver's: a NIC
// (loopback aside). Everything the container and VM engines make has a
// kind (bridge, veth, tun), so an unknown kind is not held against a link.
func lanKind(l netlink.Link) string {
	switch l.Type() {
	case "device":
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			return ""
		}
		return "a physical device"
	case "bond":
		return "a bond"
	case "team":
		return "a team (bond)"
	case "vlan":
		return "a VLAN"
	}
	return ""
}

// forwardLinkProblems lists, in words, each of all that cfg's forward_from
// matches and that is a link of the LAN (see lanKind), or a bridge with
// such a link as a port: its hosts would be routed through the appliance
// to what the egress rules allow, and reach the containers of its entry as
// if they were theirs. The VLANs of cfg, never routed, are left out.
func forwardLinkProblems(cfg *Config, all []netlink.Link) []string {
	ff := cfg.forwardFrom()
	if len(ff) == 0 {
		return nil
	}
	const fix = "name the container and VM bridges precisely in forward_from (\"docker0\", \"br-0a1b2c3d4e5f\", \"virbr0\" rather than a prefix they share with it)"
	var out []string
	for _, l := range all {
		name := l.Attrs().Name
		entry := forwardMatch(ff, name)
		if entry == "" || slices.ContainsFunc(cfg.VLANs, func(v VLAN) bool { return v.Name == name }) {
			continue
		}
		if k := lanKind(l); k != "" {
			out = append(out, fmt.Sprintf("forward_from: %s matches %q but is %s, a link of the LAN and not of a container or VM: the hosts on it would be routed through the appliance and reach the containers; %s so that %s does not match",
				name, entry, k, fix, name))
			continue
		}
		if l.Type() != "bridge" {
			continue
		}
		for _, p := range all {
			if p.Attrs().MasterIndex != l.Attrs().Index {
				continue
			}
			if k := lanKind(p); k != "" {
				out = append(out, fmt.Sprintf("forward_from: bridge %s matches %q but has %s as a port, %s: the LAN's hosts behind it would be routed through the appliance and reach the containers; %s so that %s does not match, or take %s out of the bridge",
					name, entry, p.Attrs().Name, k, fix, name, p.Attrs().Name))
			}
		}
	}
	return out
}

// forwardProblems is forwardLinkProblems for the links of the namespace
// l works in.
func (l *links) forwardProblems(cfg *Config) ([]string, error) {
	if len(cfg.forwardFrom()) == 0 {
		return nil, nil
	}
	h, err := l.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	all, err := retry(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("netseg: list links: %w", err)
	}
	return forwardLinkProblems(cfg, all), nil
}

// ForwardLinkProblems lists, in words, each link of the host (of the
// network namespace nsFd, 0 for the caller's) that cfg's forward_from
// matches although it is a physical device, a bond or a VLAN, or a bridge
// with one of those as a port: a link of the LAN whose hosts the appliance
// would route. Plan and Apply refuse such a config (ErrInvalidConfig);
// doctor reports the same for the running host. It changes nothing.
func ForwardLinkProblems(cfg *Config, nsFd int) ([]string, error) {
	return (&links{nsFd: nsFd}).forwardProblems(cfg)
}
