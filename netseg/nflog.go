package netseg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
)

// nfnetlink_log constants (linux/netfilter/nfnetlink_log.h); x/sys/unix
// does not carry them.
const (
	nfulnlMsgPacket    = 0
	nfulnlMsgConfig    = 1
	nfulaCfgCmd        = 1
	nfulaCfgMode       = 2
	nfulnlCfgCmdBind   = 1
	nfulnlCfgCmdUnbind = 2
	nfulnlCopyPacket   = 2
	nfulaPacketHdr     = 1
	nfulaPayload       = 9
	nfulaPrefix        = 10
	nfSubsysULOG       = 4

	hookLocalIn  = 1
	hookForward  = 2
	hookLocalOut = 3
)

// drop is one packet the firewall dropped and logged.
type drop struct {
	Hook    uint8
	Prefix  string
	Proto   uint8
	Src     netip.Addr
	Dst     netip.Addr
	DstPort uint16 // tcp and udp only
}

var errNotOurs = errors.New("netseg: nflog message without our prefix")

// parseNflog decodes one NFULNL_MSG_PACKET body (nfgenmsg + attributes)
// into a drop. It is fed by the kernel but treated as untrusted: every
// length is checked.
func parseNflog(b []byte) (drop, error) {
	var d drop
	if len(b) < 4 {
		return d, errors.New("netseg: nflog message too short")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return d, fmt.Errorf("netseg: nflog attributes: %w", err)
	}
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPacketHdr:
			if h := ad.Bytes(); len(h) >= 3 {
				d.Hook = h[2]
			}
		case nfulaPrefix:
			d.Prefix = strings.TrimRight(string(ad.Bytes()), "\x00")
		case nfulaPayload:
			payload = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return d, fmt.Errorf("netseg: nflog attributes: %w", err)
	}
	if d.Prefix != LogPrefix {
		return d, errNotOurs
	}
	if err := parseIPHeader(payload, &d); err != nil {
		return d, err
	}
	return d, nil
}

func parseIPHeader(p []byte, d *drop) error {
	if len(p) < 1 {
		return errors.New("netseg: nflog packet without payload")
	}
	var l4 []byte
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return errors.New("netseg: truncated IPv4 header")
		}
		ihl := int(p[0]&0x0f) * 4
		if ihl < 20 || len(p) < ihl {
			return errors.New("netseg: bad IPv4 header length")
		}
		d.Proto = p[9]
		d.Src = netip.AddrFrom4([4]byte(p[12:16]))
		d.Dst = netip.AddrFrom4([4]byte(p[16:20]))
		if binary.BigEndian.Uint16(p[6:8])&0x1fff == 0 { // first fragment only carries ports
			l4 = p[ihl:]
		}
	case 6:
		if len(p) < 40 {
			return errors.New("netseg: truncated IPv6 header")
		}
		d.Proto = p[6]
		d.Src = netip.AddrFrom16([16]byte(p[8:24]))
		d.Dst = netip.AddrFrom16([16]byte(p[24:40]))
		l4 = p[40:]
	default:
		return fmt.Errorf("netseg: nflog payload is not IP (version %d)", p[0]>>4)
	}
	if (d.Proto == 6 || d.Proto == 17) && len(l4) >= 4 {
		d.DstPort = binary.BigEndian.Uint16(l4[2:4])
	}
	return nil
}

// eventType names the audit event of a drop: traffic to the host is
// ingress; traffic from it, or routed through it (containers, VMs), egress.
func (d drop) eventType() string {
	if d.Hook == hookLocalIn {
		return "net.ingress_blocked"
	}
	return "net.egress_blocked"
}

func hookChain(h uint8) string {
	switch h {
	case hookLocalIn:
		return ChainInput
	case hookForward:
		return ChainForward
	case hookLocalOut:
		return ChainOutput
	}
	return fmt.Sprint(h)
}

func protoName(p uint8) string {
	for n, v := range protoNumbers {
		if v == p && n != "any" {
			return n
		}
	}
	return fmt.Sprint(p)
}

// aggKey groups drops: egress by destination, ingress by source, and both
// by protocol and port.
type aggKey struct {
	Type  string
	Hook  uint8
	Peer  netip.Addr
	Proto uint8
	Port  uint16
}

type aggVal struct {
	Count       int
	First, Last time.Time
	Others      map[netip.Addr]bool // sources (egress) or destinations (ingress)
}

// aggregator counts drops per key until flushed. It is not safe for
// concurrent use; the Manager serializes it.
type aggregator struct {
	m   map[aggKey]*aggVal
	max int // events per flush; the rest is summarised in one event
}

func (a *aggregator) add(d drop, now time.Time) {
	if a.m == nil {
		a.m = map[aggKey]*aggVal{}
	}
	k := aggKey{Type: d.eventType(), Hook: d.Hook, Peer: d.Dst, Proto: d.Proto, Port: d.DstPort}
	other := d.Src
	if k.Type == "net.ingress_blocked" {
		k.Peer, other = d.Src, d.Dst
	}
	v := a.m[k]
	if v == nil {
		v = &aggVal{First: now, Others: map[netip.Addr]bool{}}
		a.m[k] = v
	}
	v.Count++
	v.Last = now
	if len(v.Others) < 8 {
		v.Others[other] = true
	}
}

// aggEvent is one audit event's worth of drops.
type aggEvent struct {
	Type    string
	Target  string
	Details map[string]string
}

// flush returns the events for what was counted and resets the counts.
// Keys beyond max are folded into one summary event per type.
func (a *aggregator) flush() []aggEvent {
	keys := make([]aggKey, 0, len(a.m))
	for k := range a.m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { // busiest first, then stable order
		vi, vj := a.m[keys[i]], a.m[keys[j]]
		if vi.Count != vj.Count {
			return vi.Count > vj.Count
		}
		if keys[i].Type != keys[j].Type {
			return keys[i].Type < keys[j].Type
		}
		if c := keys[i].Peer.Compare(keys[j].Peer); c != 0 {
			return c < 0
		}
		if keys[i].Proto != keys[j].Proto {
			return keys[i].Proto < keys[j].Proto
		}
		if keys[i].Hook != keys[j].Hook {
			return keys[i].Hook < keys[j].Hook
		}
		return keys[i].Port < keys[j].Port
	})
	var out []aggEvent
	folded := map[string][2]int{} // type → keys, packets
	for i, k := range keys {
		v := a.m[k]
		if a.max > 0 && i >= a.max {
			f := folded[k.Type]
			folded[k.Type] = [2]int{f[0] + 1, f[1] + v.Count}
			continue
		}
		var others []string
		for o := range v.Others {
			others = append(others, o.String())
		}
		sort.Strings(others)
		det := map[string]string{
			"proto":   protoName(k.Proto),
			"chain":   hookChain(k.Hook),
			"packets": fmt.Sprint(v.Count),
			"first":   v.First.UTC().Format(time.RFC3339Nano),
			"last":    v.Last.UTC().Format(time.RFC3339Nano),
		}
		target := k.Peer.String()
		if k.Type == "net.egress_blocked" {
			det["sources"] = strings.Join(others, ",")
		} else {
			det["destinations"] = strings.Join(others, ",")
		}
		if k.Port != 0 {
			det["port"] = fmt.Sprint(k.Port)
		}
		out = append(out, aggEvent{Type: k.Type, Target: target, Details: det})
	}
	for typ, f := range folded {
		out = append(out, aggEvent{Type: typ, Target: "other", Details: map[string]string{
			"peers": fmt.Sprint(f[0]), "packets": fmt.Sprint(f[1]), "note": "rate-limited: more peers than events per interval",
		}})
	}
	a.m = nil
	return out
}
