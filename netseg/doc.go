// Package netseg owns the appliance's network segmentation: the VLAN
// interfaces it sits on (netlink) and a default-deny firewall in the one
// nftables table it owns, inet applianced.
//
// The firewall drops everything in its input, output and forward base
// chains except loopback, established and related connections, IPv6
// neighbour discovery, the allow rules of the [net] section, and the egress
// the appliance itself needs (its directory servers, audit targets, tool
// upstreams), which the daemon derives from the rest of the config and
// passes in as Needs; that egress is accepted only from the sockets of the
// daemon's user and root (Options.NeedsOwners), so an agent on the host
// cannot reach the directory or the SIEM around the appliance.
//
// Egress rules also cover traffic the host routes for its containers and
// VMs (the forward chain), but only traffic that comes in on an interface
// that forward_from names (Config.ForwardFrom; by default the bridges and
// links of Docker, Podman, CNI, libvirt, LXC, LXD, Incus and
// systemd-nspawn, see DefaultForwardFrom), and never on a VLAN of the [net] section. A host of
// the LAN that sets the AI server as its router, through the uplink, a
// bond, a VLAN or any other link, is dropped, whatever ip_forward says;
// forward_from = [] routes nothing at all.
//
// Traffic that comes in on an interface of forward_from and goes out on an
// interface that the same entry matches never leaves the host, and the
// forward chain accepts it as it is, whatever the egress rules say
// ("forward: accept between the host's containers and VMs within
// docker*"): the web UI, model server and vector DB of a docker compose
// stack talk to each other, on one bridge (docker0 to docker0) or across
// two bridges of one entry (br-<id1> to br-<id2>, which Docker's own
// DOCKER-ISOLATION chains keep apart when it means them apart). Traffic
// between the interfaces of two entries is not accepted as local: a
// container on docker0 reaches a VM on virbr0, or an LXD container on
// lxdbr0, only on what the egress rules allow, as it would a host of the
// LAN, so one engine's sandbox is not open to every service of another.
// nftables cannot compare the input interface with the output one, so
// each entry has its own rule. Docker turns on br_netfilter
// (net.bridge.bridge-nf-call-iptables and -ip6tables, set per network
// namespace), which sends packets bridged between two ports of one bridge
// through the IPv4 and IPv6 forward hook as well, IPv6 neighbour discovery
// included; the hook sees them come in and go out on the bridge itself
// (docker0, br-<network id>, virbr0), not on its ports (the veths or
// vnets), so it is the bridge that forward_from must name (meta ibrname
// and obrname, the bridge of a port, do not exist in the inet family).
// Packets routed between two local bridges come in on one and go out on
// the other. A VLAN of the [net] section is never local, in or out, even
// where an entry's prefix matches its name.
//
// Allow lists live in named interval sets (networks are merged first, and
// forward_from is a set of interface names and prefixes) and a
// concatenated address·protocol·port set; each rule has a counter; drops are logged to an nflog group the Manager reads and turns
// into net.egress_blocked and net.ingress_blocked audit events, aggregated
// per destination and rate-limited.
//
// The Manager plans (a diff of the config against the kernel, in words),
// applies (the whole table replaced in one nftables transaction: all or
// nothing; when the forward chain changed, the conntrack entries of the
// forwarded flows it no longer accepts are then deleted, so that "ct state
// established" does not keep them running: a flow is judged by the routes
// to its two ends, which name the interfaces it crosses, and one whose end
// is an address of the host, the admin's SSH session among them, is never
// touched; a rollback does the same), arms a rollback unless the apply is confirmed in time, refuses
// an apply that would lock out the admin's SSH address unless forced, puts
// the table and VLANs back when another process changes them (drift), and
// removes everything it made on down. Every one of these is audited. The
// table comes back as soon as the daemon starts (RestoreTable), before
// anything else it opens can fail.
//
// It refuses to touch any other table or any interface it did not create:
// VLANs it creates carry the interface alias "applianced-managed". Stopping
// the daemon leaves the rules in place (fail closed).
//
// Caveats: host names in Needs are resolved when a plan is made; a DNS
// change afterwards needs a new apply. forward_from matches interface
// names: a link of the LAN named like a container bridge (an admin's
// "br-lan" under the default "br-*", or an Incus bridge given the uplink)
// would be routed, and would count as local to its entry, its hosts and
// the containers reaching each other beyond the egress rules. Plan and
// Apply therefore look at each link that forward_from matches (netlink)
// and refuse the config when one is a physical device, a bond or a VLAN,
// or a bridge with one of those as a port, naming the link, the port and
// the fix: name the container bridges precisely. A VLAN's parent that
// matches is refused too, and `applianced doctor` warns about such links
// on the running host. Drift repair and the restore at boot do not look:
// they put back what was applied, and must neither fail nor open more.
// A LAN reached through a link of another kind (a veth or a tap of a VPN
// or a router namespace, named like a container's) is not recognised:
// set forward_from on such a host. An accept in this table ends only this
// table's say on a packet: a drop in another table at the same hook still
// drops it, so the networks Docker isolates from each other
// (DOCKER-ISOLATION chains), or firewalld's zones, stay apart. The kernel
// must have nf_tables (and 8021q for VLANs; without it, ErrNo8021Q).
package netseg

import "errors"

// Sentinel errors callers branch on.
var (
	// ErrInvalidConfig wraps every config problem found by a plan or apply;
	// the kernel was not changed.
	ErrInvalidConfig = errors.New("netseg: invalid [net] config")
	// ErrLockout means the apply would stop the admin's SSH address from
	// reaching the appliance; pass Force to apply anyway.
	ErrLockout = errors.New("netseg: apply would cut the admin's SSH session")
	// ErrNo8021Q means the kernel cannot make VLAN interfaces.
	ErrNo8021Q = errors.New("netseg: kernel lacks 802.1Q support: load module 8021q")
	// ErrUnknownInterface means a rule or VLAN names an interface the
	// kernel does not have.
	ErrUnknownInterface = errors.New("netseg: unknown interface")
	// ErrNothingToConfirm means no apply is waiting for confirmation.
	ErrNothingToConfirm = errors.New("netseg: no apply is waiting for confirmation")
	// ErrNothingToRollback means there is no earlier state to go back to.
	ErrNothingToRollback = errors.New("netseg: no earlier state to roll back to")
)
