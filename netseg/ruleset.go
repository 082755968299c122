package netseg

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// TableName is the only nftables table the appliance ever touches, in the
// inet family.
const TableName = "applianced"

// LogPrefix is the prefix of every drop the firewall logs.
const LogPrefix = "applianced-drop"

// Chain names. Each is a base chain with policy drop.
const (
	ChainInput   = "input"
	ChainOutput  = "output"
	ChainForward = "forward"
)

// Need is egress the appliance itself needs, derived from the rest of the
// config (its LDAP DCs, syslog targets, tool upstreams, NTP/DNS servers).
type Need struct {
	// Address is "host:port" or "ip:port"; a host name is resolved when the
	// ruleset is planned.
	Address string `json:"address"`
	// Proto is tcp or udp.
	Proto string `json:"proto"`
	// Origin says which config key the need comes from ("ldap.urls[0]").
	Origin string `json:"origin"`
}

// resolvedNeed is a Need with its address resolved.
type resolvedNeed struct {
	Need
	Addrs []netip.Addr
	Port  uint16
}

// ruleset is the desired content of table inet applianced, built by pure
// functions from the config and kept apart from the code that sends it.
type ruleset struct {
	Sets   []*setSpec
	Chains []*chainSpec
}

type setSpec struct {
	Set   nftables.Set
	Elems []nftables.SetElement
	Desc  string // what the plan says about it
	// Items are the human-readable members (merged CIDRs, ports, addr·port).
	Items []string
}

type chainSpec struct {
	Name  string
	Hook  *nftables.ChainHook
	Rules []*ruleSpec
}

type ruleSpec struct {
	Desc  string // stored as the rule's comment; the plan's words
	Exprs []expr.Any
}

var (
	tableRef = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}

	concatV4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	concatV6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
)

// buildRuleset turns a validated config and the appliance's own needs into
// the table's content. It is pure: same input, same output, no I/O.
//
// owners are the user ids whose sockets the appliance's own egress (needs)
// is for: the daemon's, and root's (doctor and the CLI's checks of the
// same servers; root can change the table anyway). None means any process,
// which lets every user on the AI server, agents included, reach the
// directory, the SIEM and the tools' upstreams directly.
func buildRuleset(cfg *Config, needs []resolvedNeed, owners []uint32) (*ruleset, error) {
	rs := &ruleset{}
	b := &builder{rs: rs, sets: map[string][]netip.Prefix{}}
	for _, v := range cfg.VLANs {
		b.vlans = append(b.vlans, v.Name)
	}
	for _, s := range cfg.Sets {
		for _, a := range s.Addresses {
			p, err := parsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("netseg: set %s: %w", s.Name, err)
			}
			b.sets[s.Name] = append(b.sets[s.Name], p)
		}
	}

	in := &chainSpec{Name: ChainInput, Hook: nftables.ChainHookInput}
	out := &chainSpec{Name: ChainOutput, Hook: nftables.ChainHookOutput}
	fwd := &chainSpec{Name: ChainForward, Hook: nftables.ChainHookForward}
	rs.Chains = []*chainSpec{in, out, fwd}

	in.Rules = append(in.Rules, ifaceAccept("input: accept loopback", expr.MetaKeyIIFNAME, "lo"))
	out.Rules = append(out.Rules, ifaceAccept("output: accept loopback", expr.MetaKeyOIFNAME, "lo"))
	for _, c := range rs.Chains {
		c.Rules = append(c.Rules, ctRule(c.Name+": drop ct state invalid", expr.CtStateBitINVALID, expr.VerdictDrop))
		c.Rules = append(c.Rules, ctRule(c.Name+": accept ct state established,related", expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, expr.VerdictAccept))
	}
	// Neighbour discovery, on the link only (hop limit 255). The appliance
	// is no router: it takes router advertisements and sends
	// solicitations, never the other way round.
	in.Rules = append(in.Rules, ndRule("input: accept IPv6 router advertisements and neighbour discovery, hop limit 255", 134, 136, 0, true))
	out.Rules = append(out.Rules, ndRule("output: accept IPv6 router solicitations and neighbour discovery, hop limit 255", 133, 136, 134, true))
	out.Rules = append(out.Rules, ndRule("output: accept IPv6 MLDv2 reports", 143, 143, 0, false))

	// The appliance's own needs: one concatenated addr·proto·port set per
	// family, one rule each.
	if err := b.needs(out, needs, owners); err != nil {
		return nil, err
	}
	// Routed traffic is taken only from the container and VM interfaces
	// of forward_from: to an interface of the same entry as it is (it stays
	// within one engine on the host), anywhere else under the egress rules. With none, the egress rules
	// get no forward copies and the host routes nothing.
	var also *chainSpec
	if ff := cfg.forwardFrom(); len(ff) > 0 {
		b.fwdSet = &setSpec{
			Set:  nftables.Set{Name: "forward_from", KeyType: nftables.TypeIFName, Interval: true},
			Desc: "interfaces of the host's containers and VMs: routed traffic comes in only on them, and leaves under the egress rules unless it stays within one entry",
		}
		b.fwdSet.Elems, b.fwdSet.Items = ifnameElems(ff)
		b.addSet(b.fwdSet)
		fwd.Rules = append(fwd.Rules, b.localRules(ff)...)
		also = fwd
	}
	for i := range cfg.Egress {
		if err := b.allow(out, "egress", i, &cfg.Egress[i], cfg.Egress[i].To, also); err != nil {
			return nil, err
		}
	}
	for i := range cfg.Ingress {
		if err := b.allow(in, "ingress", i, &cfg.Ingress[i], cfg.Ingress[i].From, nil); err != nil {
			return nil, err
		}
	}
	for _, c := range rs.Chains {
		c.Rules = append(c.Rules, dropRule(c.Name, cfg.logDrops(), cfg.logRate(), cfg.logGroup()))
	}
	return rs, nil
}

type builder struct {
	rs    *ruleset
	sets  map[string][]netip.Prefix
	setID uint32
	// vlans are the configured VLAN interfaces: the segments the host sits
	// on, whose hosts it must not route anywhere.
	vlans []string
	// fwdSet holds the forward_from interfaces, the only ones routed
	// traffic may come in on.
	fwdSet *setSpec
}

func (b *builder) addSet(s *setSpec) {
	b.setID++
	s.Set.ID = b.setID
	s.Set.Table = tableRef
	b.rs.Sets = append(b.rs.Sets, s)
}

// localRules accept, in the forward chain, traffic that comes in and goes
// out on interfaces one and the same forward_from entry matches: the
// containers and VMs of one engine talking to each other, which never
// leaves the host. With br_netfilter on (Docker turns it on), packets
// bridged between two containers on one bridge cross the forward hook
// too, and the hook sees the bridge (docker0, br-<id>) as both their input
// and output interface, not its ports; packets routed between two bridges
// of one entry (br-<id1> and br-<id2>) are seen with one in, the other
// out, and the engine isolates those itself when it means to (Docker's
// DOCKER-ISOLATION chains). Traffic between the interfaces of two entries
// (docker0 to virbr0: Docker to libvirt) is not local here: it passes only
// under the egress rules. nftables cannot compare the input interface with
// the output one, so each entry has its own rule. A VLAN of the [net]
// section that an entry matches is neither in nor out: its hosts are the
// LAN's.
func (b *builder) localRules(patterns []string) []*ruleSpec {
	var out []*ruleSpec
	for _, s := range patterns {
		p := parseIfPattern(s)
		data := ifname(p.name)
		if p.prefix {
			// As nft encodes iifname "veth*": the prefix's bytes only.
			data = []byte(p.name)
		}
		var ex []expr.Any
		var skip []string
		for _, v := range b.vlans {
			if !p.matches(v) {
				continue
			}
			skip = append(skip, v)
			ex = append(ex,
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(v)},
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(v)},
			)
		}
		ex = append(ex,
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: slices.Clone(data)},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictAccept},
		)
		desc := ChainForward + ": accept between the host's containers and VMs within " + s + ", in and out"
		if len(skip) > 0 {
			desc += ", not from or to " + strings.Join(skip, ", ")
		}
		out = append(out, &ruleSpec{Desc: desc, Exprs: ex})
	}
	return out
}

// allow builds the rules of one [[net.egress]] or [[net.ingress]] entry: one
// interval set of merged networks per address family, a port set when ports
// are given, and one counted accept rule per family. Egress rules also go
// into also (the forward chain), so containers and VMs on the host leave
// it under the same allow list as the host itself: only traffic that comes
// in on an interface of forward_from, and never on a VLAN.
func (b *builder) allow(c *chainSpec, kind string, idx int, r *Rule, addrs []string, also *chainSpec) error {
	var prefixes []netip.Prefix
	for _, a := range addrs {
		if name, ok := strings.CutPrefix(a, "@"); ok {
			ps, known := b.sets[name]
			if !known {
				return fmt.Errorf("netseg: %s[%d]: unknown set %q", kind, idx, name)
			}
			prefixes = append(prefixes, ps...)
			continue
		}
		p, err := parsePrefix(a)
		if err != nil {
			return fmt.Errorf("netseg: %s[%d]: %w", kind, idx, err)
		}
		prefixes = append(prefixes, p)
	}
	proto := r.proto()
	var portSet *setSpec
	if len(r.Ports) > 0 {
		ports := slices.Clone(r.Ports)
		slices.Sort(ports)
		portSet = &setSpec{
			Set:  nftables.Set{Name: fmt.Sprintf("%s_%d_ports", kind, idx), KeyType: nftables.TypeInetService},
			Desc: fmt.Sprintf("%s[%d] ports", kind, idx),
		}
		for _, p := range ports {
			portSet.Elems = append(portSet.Elems, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(uint16(p))})
			portSet.Items = append(portSet.Items, fmt.Sprint(p))
		}
		b.addSet(portSet)
	}
	addrOff := uint32(12) // ip saddr
	if kind == "egress" {
		addrOff = 16 // ip daddr
	}
	for _, fam := range []struct {
		name   string
		proto  byte
		keyT   nftables.SetDatatype
		off    uint32
		length uint32
		is4    bool
	}{
		{"v4", unix.NFPROTO_IPV4, nftables.TypeIPAddr, addrOff, 4, true},
		{"v6", unix.NFPROTO_IPV6, nftables.TypeIP6Addr, addrOff - 4, 16, false}, // ip6 saddr 8, daddr 24
	} {
		if !fam.is4 {
			fam.off = 8
			if kind == "egress" {
				fam.off = 24
			}
		}
		ranges := mergePrefixes(prefixes, fam.is4)
		if len(ranges) == 0 {
			continue
		}
		if (proto == "icmp" && !fam.is4) || (proto == "icmpv6" && fam.is4) {
			continue
		}
		as := &setSpec{
			Set:  nftables.Set{Name: fmt.Sprintf("%s_%d_%s", kind, idx, fam.name), KeyType: fam.keyT, Interval: true},
			Desc: fmt.Sprintf("%s[%d] %s networks", kind, idx, fam.name),
		}
		as.Elems, as.Items = intervalElems(ranges)
		b.addSet(as)

		var ex []expr.Any
		if r.Interface != "" {
			key := expr.MetaKeyOIFNAME
			if kind == "ingress" {
				key = expr.MetaKeyIIFNAME
			}
			ex = append(ex, &expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(r.Interface)})
		}
		ex = append(ex,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: fam.off, Len: fam.length},
			&expr.Lookup{SourceRegister: 1, SetName: as.Set.Name, SetID: as.Set.ID},
		)
		if pn := protoNumbers[proto]; pn != 0 {
			ex = append(ex,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{pn}},
			)
		}
		if portSet != nil {
			ex = append(ex,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, SetName: portSet.Set.Name, SetID: portSet.Set.ID},
			)
		}
		desc := ruleDesc(kind, idx, r, fam.name, as.Set.Name, portSet)
		c.Rules = append(c.Rules, &ruleSpec{Desc: desc, Exprs: append(slices.Clone(ex), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})})
		if also != nil {
			// Routed traffic from the host's containers and VMs only: a
			// host on the LAN, on the uplink or on a VLAN must not use the
			// AI server as a router to what the server may reach.
			var fx []expr.Any
			for _, v := range b.vlans {
				fx = append(fx, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(v)})
			}
			fx = append(fx,
				&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Lookup{SourceRegister: 1, SetName: b.fwdSet.Set.Name, SetID: b.fwdSet.Set.ID},
			)
			fdesc := also.Name + ": " + desc + ", in via @" + b.fwdSet.Set.Name
			if len(b.vlans) > 0 {
				fdesc += ", not from " + strings.Join(b.vlans, ", ")
			}
			fx = append(fx, ex...)
			also.Rules = append(also.Rules, &ruleSpec{Desc: fdesc, Exprs: append(fx, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})})
		}
	}
	return nil
}

func ruleDesc(kind string, idx int, r *Rule, fam, set string, ports *setSpec) string {
	dir := "to"
	if kind == "ingress" {
		dir = "from"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s[%d]: accept %s %s %s @%s", kind, idx, fam, r.proto(), dir, set)
	if ports != nil {
		fmt.Fprintf(&sb, " port %s", strings.Join(ports.Items, ","))
	}
	if r.Interface != "" {
		io := "out"
		if kind == "ingress" {
			io = "in"
		}
		fmt.Fprintf(&sb, " %s via %s", io, r.Interface)
	}
	if r.Comment != "" {
		fmt.Fprintf(&sb, " (%s)", r.Comment)
	}
	return sb.String()
}

// needs adds the appliance's own egress: a concatenated set of
// address·protocol·port per family, looked up by one rule each.
func (b *builder) needs(out *chainSpec, needs []resolvedNeed, owners []uint32) error {
	type fam struct {
		name  string
		nfp   byte
		keyT  nftables.SetDatatype
		off   uint32
		alen  uint32
		proto uint32 // register of the protocol
		port  uint32 // register of the port
	}
	fams := []fam{
		{"v4", unix.NFPROTO_IPV4, concatV4, 16, 4, 9, 10},
		{"v6", unix.NFPROTO_IPV6, concatV6, 24, 16, 12, 13},
	}
	for _, f := range fams {
		type key struct {
			a     netip.Addr
			proto uint8
			port  uint16
		}
		seen := map[key]bool{}
		s := &setSpec{
			Set:  nftables.Set{Name: "appliance_" + f.name, KeyType: f.keyT, Concatenation: true},
			Desc: "the appliance's own egress (" + f.name + ")",
		}
		for _, n := range needs {
			pn, ok := protoNumbers[strings.ToLower(n.Proto)]
			if !ok || (pn != 6 && pn != 17) {
				return fmt.Errorf("netseg: need %s from %s: proto must be tcp or udp, got %q", n.Address, n.Origin, n.Proto)
			}
			for _, a := range n.Addrs {
				if a.Is4() != (f.name == "v4") {
					continue
				}
				k := key{a, pn, n.Port}
				if seen[k] {
					continue
				}
				seen[k] = true
				kb := make([]byte, 0, f.keyT.Bytes)
				kb = append(kb, a.AsSlice()...)
				kb = append(kb, pn, 0, 0, 0)
				kb = binary.BigEndian.AppendUint16(kb, n.Port)
				kb = append(kb, 0, 0)
				s.Elems = append(s.Elems, nftables.SetElement{Key: kb})
				s.Items = append(s.Items, fmt.Sprintf("%s %s (%s)", strings.ToLower(n.Proto), netip.AddrPortFrom(a, n.Port), n.Origin))
			}
		}
		if len(s.Elems) == 0 {
			continue
		}
		b.addSet(s)
		rule := func(desc string, owner []expr.Any) *ruleSpec {
			es := []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfp}},
			}
			es = append(es, owner...)
			es = append(es,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.off, Len: f.alen},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: f.proto},
				&expr.Payload{DestRegister: f.port, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Lookup{SourceRegister: 1, SetName: s.Set.Name, SetID: s.Set.ID},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictAccept},
			)
			return &ruleSpec{Desc: desc, Exprs: es}
		}
		desc := fmt.Sprintf("output: accept %s the appliance's own egress @%s", f.name, s.Set.Name)
		if len(owners) == 0 {
			out.Rules = append(out.Rules, rule(desc, nil))
			continue
		}
		for _, uid := range owners {
			// A packet without a socket (one the kernel makes itself)
			// has no owner and does not match.
			out.Rules = append(out.Rules, rule(fmt.Sprintf("%s, from uid %d", desc, uid), []expr.Any{
				&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, uid)},
			}))
		}
	}
	return nil
}

// ifnameElems encodes forward_from as an interval set of interface names,
// the way nft encodes iifname { "veth*" }: a name is the range of itself,
// a prefix the range of every name that starts with it (the prefix padded
// with zeros up to the prefix padded with 0xff), each closed by an
// interval-end element one past it.
func ifnameElems(patterns []string) ([]nftables.SetElement, []string) {
	var elems []nftables.SetElement
	for _, s := range patterns {
		p := parseIfPattern(s)
		var end []byte
		if p.prefix {
			end = []byte(p.name)
		} else {
			end = ifname(p.name)
		}
		elems = append(elems, nftables.SetElement{Key: ifname(p.name)})
		if next, ok := incBytes(end); ok {
			elems = append(elems, nftables.SetElement{Key: ifname(string(next)), IntervalEnd: true})
		}
	}
	return elems, slices.Clone(patterns)
}

// incBytes returns b plus one as a big-endian number, or false when b is
// all 0xff (the range reaches the top of the key space).
func incBytes(b []byte) ([]byte, bool) {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return nil, false
}

func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func ifaceAccept(desc string, key expr.MetaKey, name string) *ruleSpec {
	return &ruleSpec{Desc: desc, Exprs: []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}}
}

func ctRule(desc string, bits uint32, v expr.VerdictKind) *ruleSpec {
	return &ruleSpec{Desc: desc, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Counter{},
		&expr.Verdict{Kind: v},
	}}
}

// ndRule accepts the ICMPv6 types lo–hi, so a default-deny table does not
// break IPv6 on its links (neighbour and router discovery, MLD reports).
// ndRule accepts ICMPv6 of the types lo to hi (but not except, when
// non-zero). With hop255 it takes only packets with hop limit 255, which
// no router forwards: neighbour discovery (RFC 4861) stays on the link,
// and cannot carry data to or from anywhere else.
func ndRule(desc string, lo, hi, except byte, hop255 bool) *ruleSpec {
	es := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
	}
	if hop255 {
		es = append(es,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 7, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{255}},
		)
	}
	es = append(es,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{lo}, ToData: []byte{hi}},
	)
	if except != 0 {
		es = append(es, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{except}})
	}
	es = append(es, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})
	return &ruleSpec{Desc: desc, Exprs: es}
}

// dropRule counts every packet that falls through to the chain's drop
// policy and, when logging is on, logs up to rate of them per second to the
// nflog group.
func dropRule(chain string, log bool, rate int, group uint16) *ruleSpec {
	ex := []expr.Any{&expr.Counter{}}
	desc := chain + ": count dropped packets"
	if log {
		desc = fmt.Sprintf("%s: count dropped packets, log %d/s to nflog group %d", chain, rate, group)
		ex = append(ex,
			&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(rate), Unit: expr.LimitTimeSecond, Burst: uint32(rate)},
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: group, Data: []byte(LogPrefix)},
		)
	}
	return &ruleSpec{Desc: desc, Exprs: ex}
}

// addrRange is an inclusive range of addresses of one family.
type addrRange struct{ from, to netip.Addr }

// mergePrefixes returns the prefixes of one family as sorted, merged,
// non-overlapping, non-adjacent ranges: the kernel refuses overlapping
// intervals in a set.
func mergePrefixes(ps []netip.Prefix, v4 bool) []addrRange {
	var rs []addrRange
	for _, p := range ps {
		if p.Addr().Is4() != v4 {
			continue
		}
		p = p.Masked()
		rs = append(rs, addrRange{p.Addr(), lastAddr(p)})
	}
	slices.SortFunc(rs, func(a, b addrRange) int { return a.from.Compare(b.from) })
	var out []addrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			next := last.to.Next()
			if !next.IsValid() || r.from.Compare(next) <= 0 {
				if r.to.Compare(last.to) > 0 {
					last.to = r.to
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		hostBits := len(b)*8 - bits - (len(b)-1-i)*8
		switch {
		case hostBits >= 8:
			b[i] = 0xff
		case hostBits > 0:
			b[i] |= byte(1<<hostBits) - 1
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// intervalElems encodes ranges the way nft does: a start element and an
// interval-end element one past the range (omitted at the top of the space).
func intervalElems(rs []addrRange) ([]nftables.SetElement, []string) {
	var elems []nftables.SetElement
	var items []string
	for _, r := range rs {
		elems = append(elems, nftables.SetElement{Key: r.from.AsSlice()})
		if end := r.to.Next(); end.IsValid() {
			elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
		items = append(items, rangeString(r))
	}
	return elems, items
}

// rangeString writes a range as a CIDR when it is one, else as "a-b".
func rangeString(r addrRange) string {
	for bits := 0; bits <= r.from.BitLen(); bits++ {
		p := netip.PrefixFrom(r.from, bits)
		if p.Masked().Addr() == r.from && lastAddr(p) == r.to {
			return p.String()
		}
	}
	return r.from.String() + "-" + r.to.String()
}

// elemChunk is how many set elements go in one netlink message.
const elemChunk = 1024

// send queues the whole table on c, replacing whatever table of ours is
// there: add (so the delete cannot fail), delete, add again, then chains,
// sets and rules. Nothing is sent until c.Flush, which the kernel applies as
// one transaction: all of it or none of it.
func send(c *nftables.Conn, rs *ruleset) error {
	c.AddTable(tableRef)
	c.DelTable(tableRef)
	t := c.AddTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyINet})
	chains := map[string]*nftables.Chain{}
	policy := nftables.ChainPolicyDrop
	for _, cs := range rs.Chains {
		chains[cs.Name] = c.AddChain(&nftables.Chain{
			Name: cs.Name, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: cs.Hook, Priority: nftables.ChainPriorityFilter, Policy: &policy,
		})
	}
	for _, s := range rs.Sets {
		set := s.Set
		set.Table = t
		// One netlink attribute holds at most 64 KiB: elements go in chunks.
		first := s.Elems[:min(len(s.Elems), elemChunk)]
		if err := c.AddSet(&set, first); err != nil {
			return fmt.Errorf("netseg: set %s: %w", set.Name, err)
		}
		for i := len(first); i < len(s.Elems); i += elemChunk {
			if err := c.SetAddElements(&set, s.Elems[i:min(len(s.Elems), i+elemChunk)]); err != nil {
				return fmt.Errorf("netseg: set %s: %w", set.Name, err)
			}
		}
	}
	for _, cs := range rs.Chains {
		for _, r := range cs.Rules {
			c.AddRule(&nftables.Rule{
				Table: t, Chain: chains[cs.Name], Exprs: r.Exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, truncate(r.Desc, 250)),
			})
		}
	}
	return nil
}

// sendDelete queues the removal of our table (and only ours). Adding it
// first makes the delete succeed whether or not the table exists.
func sendDelete(c *nftables.Conn) {
	c.AddTable(tableRef)
	c.DelTable(tableRef)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
