package netseg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// vlanAlias marks the interfaces the appliance created, so `net down` removes
// those and nothing else.
const vlanAlias = "applianced-managed"

// links is the netlink side: VLAN interfaces and address lookups.
type links struct {
	nsFd int
}

func (l *links) handle() (*netlink.Handle, error) {
	var h *netlink.Handle
	var err error
	if l.nsFd > 0 {
		h, err = netlink.NewHandleAt(vnetns.NsHandle(l.nsFd), unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netseg: netlink: %w", err)
	}
	return h, nil
}

// retry runs a netlink dump again when the kernel says it was interrupted
// by a concurrent change.
func retry[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// vlanState is what the kernel has for one configured VLAN.
type vlanState struct {
	Exists  bool
	Managed bool
	ID      int
	Parent  string
	MTU     int
	Up      bool
	Addrs   []string
}

func (l *links) inspect(h *netlink.Handle, name string) (vlanState, error) {
	var st vlanState
	link, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return st, nil
		}
		return st, fmt.Errorf("netseg: link %s: %w", name, err)
	}
	st.Exists = true
	a := link.Attrs()
	st.Managed = a.Alias == vlanAlias
	st.MTU = a.MTU
	st.Up = a.Flags&net.FlagUp != 0
	if v, ok := link.(*netlink.Vlan); ok {
		st.ID = v.VlanId
		if p, err := h.LinkByIndex(a.ParentIndex); err == nil {
			st.Parent = p.Attrs().Name
		}
	} else {
		st.ID = -1 // not a VLAN
	}
	addrs, err := retry(func() ([]netlink.Addr, error) { return h.AddrList(link, unix.AF_UNSPEC) })
	if err != nil {
		return st, fmt.Errorf("netseg: addresses of %s: %w", name, err)
	}
	for _, ad := range addrs {
		// Link-local ones and those with a lifetime (SLAAC, DHCP, privacy
		// addresses) are the kernel's or a daemon's, not the config's:
		// removing them would only start a fight with what adds them back.
		if ad.IP.IsLinkLocalUnicast() || ad.Flags&unix.IFA_F_PERMANENT == 0 {
			continue
		}
		ones, _ := ad.Mask.Size()
		ip, _ := netip.AddrFromSlice(ad.IP)
		st.Addrs = append(st.Addrs, netip.PrefixFrom(ip.Unmap(), ones).String())
	}
	slices.Sort(st.Addrs)
	return st, nil
}

// vlanDiff says what ensure would do for v, in words; empty means nothing.
func vlanDiff(v VLAN, st vlanState) (recreate bool, changes []string) {
	if !st.Exists {
		return true, []string{fmt.Sprintf("create VLAN %s: id %d on %s, addresses %s", v.Name, v.ID, v.Parent, strings.Join(v.Addresses, ", "))}
	}
	if st.ID < 0 {
		return false, []string{fmt.Sprintf("interface %s exists and is not a VLAN: refusing to replace it", v.Name)}
	}
	if !st.Managed {
		// Another tool (ifupdown, networkd, netplan) made it and keeps it:
		// changing its addresses would start a fight, deleting it on down
		// would take the admin's link away.
		return false, []string{fmt.Sprintf("VLAN %s exists and was not made by applianced: refusing to change it (remove it, or hand it over with `ip link set %s alias %s`)", v.Name, v.Name, vlanAlias)}
	}
	if st.ID != v.ID || st.Parent != v.Parent {
		return true, []string{fmt.Sprintf("recreate VLAN %s: id %d on %s becomes id %d on %s", v.Name, st.ID, st.Parent, v.ID, v.Parent)}
	}
	if v.MTU != 0 && st.MTU != v.MTU {
		changes = append(changes, fmt.Sprintf("VLAN %s: MTU %d becomes %d", v.Name, st.MTU, v.MTU))
	}
	want := normAddrs(v.Addresses)
	for _, a := range want {
		if !slices.Contains(st.Addrs, a) {
			changes = append(changes, fmt.Sprintf("VLAN %s: add address %s", v.Name, a))
		}
	}
	for _, a := range st.Addrs {
		if !slices.Contains(want, a) {
			changes = append(changes, fmt.Sprintf("VLAN %s: remove address %s", v.Name, a))
		}
	}
	if !st.Up {
		changes = append(changes, fmt.Sprintf("VLAN %s: set up", v.Name))
	}
	return false, changes
}

func normAddrs(in []string) []string {
	var out []string
	for _, a := range in {
		if p, err := netip.ParsePrefix(a); err == nil {
			out = append(out, p.String())
		}
	}
	slices.Sort(out)
	return out
}

// checkParents lists, as "vlan[i].parent: ..." problems, the VLANs whose
// parent is missing or down.
func (l *links) checkParents(vlans []VLAN) ([]string, error) {
	if len(vlans) == 0 {
		return nil, nil
	}
	h, err := l.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var out []string
	for i, v := range vlans {
		p, err := h.LinkByName(v.Parent)
		if err != nil {
			out = append(out, fmt.Sprintf("vlan[%d].parent: unknown interface %q", i, v.Parent))
			continue
		}
		if p.Attrs().Flags&net.FlagUp == 0 {
			out = append(out, fmt.Sprintf("vlan[%d].parent: %s is down: bring it up first", i, v.Parent))
		}
		if pm := p.Attrs().MTU; v.MTU > pm {
			// The kernel refuses it with a bare "invalid argument".
			out = append(out, fmt.Sprintf("vlan[%d].mtu: %d is more than the MTU of its parent %s (%d): raise the parent's first, or lower this", i, v.MTU, v.Parent, pm))
		}
	}
	return out, nil
}

// ensure makes the kernel's VLANs match vlans: created when missing,
// recreated when the id or parent changed, MTU and addresses corrected.
// Interfaces are matched by name; one that exists and is not a VLAN is
// never touched.
func (l *links) ensure(vlans []VLAN) ([]string, error) {
	h, err := l.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var done []string
	for _, v := range vlans {
		st, err := l.inspect(h, v.Name)
		if err != nil {
			return done, err
		}
		recreate, changes := vlanDiff(v, st)
		if st.Exists && (st.ID < 0 || !st.Managed) {
			return done, fmt.Errorf("netseg: %s", changes[0])
		}
		if recreate {
			if st.Exists {
				if err := h.LinkDel(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: v.Name}}); err != nil {
					return done, fmt.Errorf("netseg: delete VLAN %s: %w", v.Name, err)
				}
				// Said at once: if what follows fails, the caller puts
				// the previous VLANs back.
				done = append(done, fmt.Sprintf("deleted VLAN %s id %d on %s, to recreate it", v.Name, st.ID, st.Parent))
			}
			parent, err := h.LinkByName(v.Parent)
			if err != nil {
				return done, fmt.Errorf("netseg: vlan %s: parent %s: %w", v.Name, v.Parent, ErrUnknownInterface)
			}
			// Marked as ours in the same message that makes it: a VLAN is
			// never left behind unmarked, which nothing would remove.
			la := netlink.LinkAttrs{Name: v.Name, ParentIndex: parent.Attrs().Index, MTU: v.MTU, Alias: vlanAlias}
			if err := h.LinkAdd(&netlink.Vlan{LinkAttrs: la, VlanId: v.ID, VlanProtocol: netlink.VLAN_PROTOCOL_8021Q}); err != nil {
				if errors.Is(err, unix.EOPNOTSUPP) {
					return done, fmt.Errorf("%w (creating %s)", ErrNo8021Q, v.Name)
				}
				return done, fmt.Errorf("netseg: create VLAN %s: %w", v.Name, err)
			}
			done = append(done, fmt.Sprintf("created VLAN %s id %d on %s", v.Name, v.ID, v.Parent))
			st = vlanState{Exists: true, Managed: true, ID: v.ID, Parent: v.Parent}
			_, changes = vlanDiff(v, st)
		}
		link, err := h.LinkByName(v.Name)
		if err != nil {
			return done, fmt.Errorf("netseg: link %s: %w", v.Name, err)
		}
		if link.Attrs().Alias != vlanAlias {
			if err := h.LinkSetAlias(link, vlanAlias); err != nil {
				return done, fmt.Errorf("netseg: mark %s: %w", v.Name, err)
			}
		}
		if v.MTU != 0 && link.Attrs().MTU != v.MTU {
			if err := h.LinkSetMTU(link, v.MTU); err != nil {
				return done, fmt.Errorf("netseg: MTU of %s: %w", v.Name, err)
			}
		}
		// Stale addresses go first: removing a primary address takes its
		// secondaries (a new one in the same subnet) with it.
		want := normAddrs(v.Addresses)
		for _, a := range st.Addrs {
			if slices.Contains(want, a) {
				continue
			}
			if err := h.AddrDel(link, nlAddr(a)); err != nil {
				return done, fmt.Errorf("netseg: remove address %s from %s: %w", a, v.Name, err)
			}
		}
		for _, a := range want {
			if slices.Contains(st.Addrs, a) {
				continue
			}
			if err := h.AddrAdd(link, nlAddr(a)); err != nil && !errors.Is(err, unix.EEXIST) {
				return done, fmt.Errorf("netseg: address %s on %s: %w", a, v.Name, err)
			}
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			if err := h.LinkSetUp(link); err != nil {
				return done, fmt.Errorf("netseg: set %s up: %w", v.Name, err)
			}
		}
		done = append(done, changes...)
	}
	return done, nil
}

// nlAddr converts a normalized prefix ("10.0.0.1/24") to a netlink address.
func nlAddr(prefix string) *netlink.Addr {
	p := netip.MustParsePrefix(prefix)
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}

// removeManaged deletes the VLANs we created whose names are not in keep.
func (l *links) removeManaged(keep []VLAN) ([]string, error) {
	h, err := l.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	stale, err := staleVLANs(h, keep)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, link := range stale {
		name := link.Attrs().Name
		if err := h.LinkDel(link); err != nil {
			return done, fmt.Errorf("netseg: delete VLAN %s: %w", name, err)
		}
		done = append(done, "removed VLAN "+name)
	}
	return done, nil
}

// staleVLANs returns the VLANs we created whose names are not in keep.
func staleVLANs(h *netlink.Handle, keep []VLAN) ([]netlink.Link, error) {
	all, err := retry(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("netseg: list links: %w", err)
	}
	var stale []netlink.Link
	for _, link := range all {
		a := link.Attrs()
		if a.Alias == vlanAlias && link.Type() == "vlan" && !slices.ContainsFunc(keep, func(v VLAN) bool { return v.Name == a.Name }) {
			stale = append(stale, link)
		}
	}
	return stale, nil
}

// plan reports what ensure and removeManaged would do, without doing it.
func (l *links) plan(vlans []VLAN) ([]string, error) {
	h, err := l.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var out []string
	for _, v := range vlans {
		st, err := l.inspect(h, v.Name)
		if err != nil {
			return nil, err
		}
		_, ch := vlanDiff(v, st)
		out = append(out, ch...)
	}
	stale, err := staleVLANs(h, vlans)
	if err != nil {
		return nil, err
	}
	for _, link := range stale {
		out = append(out, "remove VLAN "+link.Attrs().Name+" (no longer in the config)")
	}
	return out, nil
}

// linkNames lists the interface names the kernel has.
func (l *links) linkNames() ([]string, error) {
	h, err := l.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	all, err := retry(h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("netseg: list links: %w", err)
	}
	var out []string
	for _, link := range all {
		out = append(out, link.Attrs().Name)
	}
	return out, nil
}

// ifaceOf returns the name of the interface that holds address a, or "".
func (l *links) ifaceOf(a netip.Addr) (string, error) {
	h, err := l.handle()
	if err != nil {
		return "", err
	}
	defer h.Close()
	addrs, err := retry(func() ([]netlink.Addr, error) { return h.AddrList(nil, unix.AF_UNSPEC) })
	if err != nil {
		return "", fmt.Errorf("netseg: list addresses: %w", err)
	}
	for _, ad := range addrs {
		ip, _ := netip.AddrFromSlice(ad.IP)
		if ip.Unmap() == a.Unmap() {
			link, err := h.LinkByIndex(ad.LinkIndex)
			if err != nil {
				return "", fmt.Errorf("netseg: link %d: %w", ad.LinkIndex, err)
			}
			return link.Attrs().Name, nil
		}
	}
	return "", nil
}

// session is an established inbound TCP connection.
type session struct {
	local  netip.AddrPort // this host's end
	client netip.Addr
}

// inboundSessions lists the established TCP connections whose local port
// is one of ports, from the kernel's socket list (sock_diag) of the
// namespace the Manager works in.
func (l *links) inboundSessions(ports []int) ([]session, error) {
	var h *netlink.Handle
	var err error
	if l.nsFd > 0 {
		h, err = netlink.NewHandleAt(vnetns.NsHandle(l.nsFd), unix.NETLINK_INET_DIAG)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_INET_DIAG)
	}
	if err != nil {
		return nil, fmt.Errorf("netseg: sock_diag: %w", err)
	}
	defer h.Close()
	var out []session
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := h.SocketDiagTCP(fam)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("netseg: list TCP sockets: %w", err)
		}
		for _, s := range socks {
			if s.State != tcpEstablished || !slices.Contains(ports, int(s.ID.SourcePort)) {
				continue
			}
			local, ok1 := netip.AddrFromSlice(s.ID.Source)
			client, ok2 := netip.AddrFromSlice(s.ID.Destination)
			if !ok1 || !ok2 || client.Unmap().IsLoopback() {
				continue
			}
			out = append(out, session{local: netip.AddrPortFrom(local.Unmap(), s.ID.SourcePort), client: client.Unmap()})
		}
	}
	return out, nil
}

// tcpEstablished is TCP_ESTABLISHED in the kernel's socket states.
const tcpEstablished = 1

// sshdConfig is where sshd's listening ports are read from.
const sshdConfig = "/etc/ssh/sshd_config"

// sshdPorts returns the ports of the Port lines of sshd's config at path
// (its main file only), or 22.
func sshdPorts(path string) []int {
	b, err := os.ReadFile(path)
	if err != nil {
		return []int{22}
	}
	var ports []int
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && strings.EqualFold(f[0], "Port") {
			if p, err := strconv.Atoi(f[1]); err == nil && p > 0 && p < 65536 {
				ports = append(ports, p)
			}
		}
	}
	if len(ports) == 0 {
		return []int{22}
	}
	return ports
}
