package netseg

import (
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/conf"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// Tier 1: no root. The rule builders' netlink bytes, captured through
// google/nftables' test dial hook, must match the golden files.

func goldenCases() map[string]struct {
	cfg    *Config
	needs  []resolvedNeed
	owners []uint32
} {
	off := false
	return map[string]struct {
		cfg    *Config
		needs  []resolvedNeed
		owners []uint32
	}{
		"empty": {cfg: &Config{}},
		"lab": {
			cfg: func() *Config { c, _ := labConfig(); return c }(),
			needs: []resolvedNeed{{Need: Need{Address: "siem.corp.example:6514", Proto: "tcp", Origin: "audit.syslog[0].address"},
				Addrs: []netip.Addr{netip.MustParseAddr("10.40.0.10"), netip.MustParseAddr("2001:db8::10")}, Port: 6514}},
		},
		// The appliance's own egress from the daemon (uid 998) and root.
		"lab-owned": {
			cfg: func() *Config { c, _ := labConfig(); return c }(),
			needs: []resolvedNeed{{Need: Need{Address: "siem.corp.example:6514", Proto: "tcp", Origin: "audit.syslog[0].address"},
				Addrs: []netip.Addr{netip.MustParseAddr("10.40.0.10"), netip.MustParseAddr("2001:db8::10")}, Port: 6514}},
			owners: []uint32{998, 0},
		},
		// Routed traffic only from two container interfaces, never from
		// the VLAN even where a prefix would take it.
		"forward-from-vlan": {cfg: &Config{
			VLANs:       []VLAN{{Name: "ai0", Parent: "eth0", ID: 20, Addresses: []string{"10.20.0.5/24"}}},
			ForwardFrom: []string{"docker0", "a*"},
			Egress:      []Rule{{To: []string{"10.10.0.11", "2001:db8::11"}, Proto: "tcp", Ports: []int{636}}},
		}},
		// No egress rule: the host's containers still talk among
		// themselves, and nothing they send leaves it.
		"forward-local-only": {cfg: &Config{ForwardFrom: []string{"docker0", "br-*"}}},
		// forward_from = []: the forward chain accepts nothing new.
		"forward-nothing": {cfg: &Config{
			ForwardFrom: []string{},
			Egress:      []Rule{{To: []string{"10.10.0.11"}, Proto: "tcp", Ports: []int{636}}},
		}},
		"sets-interfaces-v6-nolog": {cfg: &Config{
			LogDrops: &off,
			Sets:     []AddrSet{{Name: "dcs", Addresses: []string{"10.10.0.11", "10.10.0.12", "2001:db8:1::/48"}}},
			Egress: []Rule{
				{To: []string{"@dcs"}, Proto: "tcp", Ports: []int{636, 3269}, Interface: "ai0"},
				{To: []string{"0.0.0.0/0"}, Proto: "icmp"},
				{To: []string{"::/0"}, Proto: "icmpv6"},
			},
			Ingress: []Rule{{From: []string{"10.99.0.0/24", "10.99.1.0/24"}, Proto: "any", Interface: "eth0"}},
		}},
	}
}

func TestRulesetGolden(t *testing.T) {
	for name, tc := range goldenCases() {
		t.Run(name, func(t *testing.T) {
			rs, err := buildRuleset(tc.cfg, tc.needs, tc.owners)
			if err != nil {
				t.Fatalf("buildRuleset: %v", err)
			}
			var got strings.Builder
			c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
				for _, m := range req {
					b, err := m.MarshalBinary()
					if err != nil {
						return nil, err
					}
					// Skip the netlink header (length, type, flags, seq, pid:
					// seq and pid vary); keep the type and flags as text.
					fmt.Fprintf(&got, "%04x %04x %s\n", uint16(m.Header.Type), uint16(m.Header.Flags), hex.EncodeToString(b[16:]))
				}
				return req, nil
			}))
			if err != nil {
				t.Fatal(err)
			}
			if err := send(c, rs); err != nil {
				t.Fatalf("send: %v", err)
			}
			if err := c.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			// The rules in words, so a reviewer can read the golden file.
			var words strings.Builder
			for _, ch := range rs.Chains {
				for _, r := range ch.Rules {
					fmt.Fprintf(&words, "# %s\n", r.Desc)
				}
			}
			for _, s := range rs.Sets {
				fmt.Fprintf(&words, "# set %s: %s\n", s.Set.Name, strings.Join(s.Items, ", "))
			}
			text := words.String() + got.String()
			path := filepath.Join("testdata", "golden", name+".txt")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("golden file: %v (run go test -update once)", err)
			}
			if text != string(want) {
				gl, wl := strings.Split(text, "\n"), strings.Split(string(want), "\n")
				for i := 0; i < len(gl) || i < len(wl); i++ {
					var g, w string
					if i < len(gl) {
						g = gl[i]
					}
					if i < len(wl) {
						w = wl[i]
					}
					if g != w {
						t.Fatalf("%s line %d:\ngot  %s\nwant %s", path, i+1, g, w)
					}
				}
			}
		})
	}
}

func TestBuildIsPure(t *testing.T) {
	cfg, _ := labConfig()
	a, err := buildRuleset(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := buildRuleset(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Sets {
		if a.Sets[i].Set.ID != b.Sets[i].Set.ID || a.Sets[i].Set.Name != b.Sets[i].Set.Name {
			t.Errorf("set %d: got %s/%d then %s/%d", i, a.Sets[i].Set.Name, a.Sets[i].Set.ID, b.Sets[i].Set.Name, b.Sets[i].Set.ID)
		}
	}
	c2, _ := labConfig()
	if fmt.Sprint(cfg) != fmt.Sprint(c2) {
		t.Error("buildRuleset changed its config")
	}
}

func TestEveryRuleHasACounter(t *testing.T) {
	for name, tc := range goldenCases() {
		rs, err := buildRuleset(tc.cfg, tc.needs, tc.owners)
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range rs.Chains {
			for _, r := range ch.Rules {
				if !slices.ContainsFunc(r.Exprs, func(e expr.Any) bool { _, ok := e.(*expr.Counter); return ok }) {
					t.Errorf("%s: rule %q has no counter", name, r.Desc)
				}
			}
		}
	}
}

func TestMergePrefixes(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"disjoint", []string{"10.0.0.0/24", "10.0.2.0/24"}, []string{"10.0.0.0/24", "10.0.2.0/24"}},
		{"adjacent merge", []string{"10.0.1.0/24", "10.0.0.0/24"}, []string{"10.0.0.0/23"}},
		{"contained", []string{"10.0.0.0/8", "10.1.2.3/32"}, []string{"10.0.0.0/8"}},
		{"hosts to range", []string{"10.10.0.11/32", "10.10.0.12/32"}, []string{"10.10.0.11-10.10.0.12"}},
		{"whole space", []string{"0.0.0.0/0", "192.168.0.0/16"}, []string{"0.0.0.0/0"}},
		{"v6 apart from v4", []string{"2001:db8::/32", "10.0.0.0/8"}, []string{"10.0.0.0/8"}},
		{"top of space", []string{"255.255.255.255/32", "255.255.255.254/32"}, []string{"255.255.255.254/31"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ps []netip.Prefix
			for _, s := range tc.in {
				ps = append(ps, netip.MustParsePrefix(s))
			}
			var got []string
			for _, r := range mergePrefixes(ps, true) {
				got = append(got, rangeString(r))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// The plan renders the kernel's elements and ours the same way.
func TestRenderElemsRoundTrip(t *testing.T) {
	cfg := &Config{Egress: []Rule{{To: []string{"10.0.0.0/24", "10.0.1.0/24", "192.168.1.7", "0.0.0.0/1"}, Ports: []int{443, 22}}}}
	rs, err := buildRuleset(cfg, []resolvedNeed{{Need: Need{Proto: "udp", Origin: "x"}, Addrs: []netip.Addr{netip.MustParseAddr("10.1.1.1")}, Port: 514}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"egress_0_v4":    {"0.0.0.0/1", "192.168.1.7/32"},
		"egress_0_ports": {"22", "443"},
		"appliance_v4":   {"udp 10.1.1.1:514"},
		"forward_from":   {"br-*", "cni*", "docker*", "incusbr*", "lxcbr*", "lxdbr*", "podman*", "ve-*", "veth*", "virbr*", "vnet*", "vz-*"},
	}
	for _, s := range rs.Sets {
		// The kernel returns elements in its own order.
		elems := slices.Clone(s.Elems)
		slices.Reverse(elems)
		if got := renderElems(&s.Set, elems); !slices.Equal(got, want[s.Set.Name]) {
			t.Errorf("set %s: got %v, want %v", s.Set.Name, got, want[s.Set.Name])
		}
	}
}

// A forward_from entry is encoded as nft encodes iifname { "veth*" }, and
// reads back as itself.
func TestForwardFromElems(t *testing.T) {
	pad := func(s string) string { return string(ifname(s)) }
	tests := []struct {
		in        string
		start     string
		end       string // the interval-end element's key
		matches   []string
		unmatches []string
	}{
		{"veth*", pad("veth"), pad("veti"), []string{"veth", "veth1a2b3c4", "vethzzzzzzzzzzz"}, []string{"vet", "vetf", "vetj0", "xveth"}},
		{"virbr0", pad("virbr0"), pad("virbr0")[:15] + "\x01", []string{"virbr0"}, []string{"virbr", "virbr00", "virbr1"}},
		{"abcdefghijklmno", pad("abcdefghijklmno"), "abcdefghijklmno\x01", []string{"abcdefghijklmno"}, []string{"abcdefghijklmnp"}},
		{"br-*", pad("br-"), pad("br."), []string{"br-0123456789ab", "br-"}, []string{"br0", "br", "bridge0"}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			elems, items := ifnameElems([]string{tc.in})
			if len(elems) != 2 || elems[0].IntervalEnd || !elems[1].IntervalEnd {
				t.Fatalf("got %d elements %+v, want a start and an interval end", len(elems), elems)
			}
			if got := string(elems[0].Key); got != tc.start {
				t.Errorf("start: got %q, want %q", got, tc.start)
			}
			if got := string(elems[1].Key); got != tc.end {
				t.Errorf("end: got %q, want %q", got, tc.end)
			}
			// The kernel's iifname is the name padded with zeros to 16
			// bytes; a set element matches keys in [start, end).
			in := func(name string) bool {
				k := pad(name)
				return k >= string(elems[0].Key) && k < string(elems[1].Key)
			}
			for _, n := range tc.matches {
				if !in(n) || forwardMatch([]string{tc.in}, n) != tc.in {
					t.Errorf("%q does not match %q", n, tc.in)
				}
			}
			for _, n := range tc.unmatches {
				if in(n) || forwardMatch([]string{tc.in}, n) != "" {
					t.Errorf("%q matches %q", n, tc.in)
				}
			}
			slices.Reverse(elems)
			set := nftables.Set{KeyType: nftables.TypeIFName, Interval: true}
			if got := renderElems(&set, elems); !slices.Equal(got, items) {
				t.Errorf("rendered: got %v, want %v", got, items)
			}
		})
	}
}

// The default forward_from is valid and takes the container and VM
// interfaces of the usual engines, not the host's own links.
func TestDefaultForwardFrom(t *testing.T) {
	c := &Config{ForwardFrom: DefaultForwardFrom()}
	if errs := c.Validate(); len(errs) != 0 {
		t.Fatalf("default forward_from: got %v, want no errors", errs)
	}
	for _, n := range []string{"docker0", "docker_gwbridge", "br-3f2a1b0c9d8e", "veth1a2b3c4", "podman0", "cni-podman0", "cni0", "virbr0", "vnet12", "lxcbr0", "lxdbr0", "incusbr0", "ve-mymachine", "vz-zone"} {
		if forwardMatch(DefaultForwardFrom(), n) == "" {
			t.Errorf("%s is not in the default forward_from", n)
		}
	}
	for _, n := range []string{"eth0", "eno1", "enp3s0f1", "bond0", "ai0", "eth0.20", "br0", "wlan0", "tun0", "wg0", "lo"} {
		if m := forwardMatch(DefaultForwardFrom(), n); m != "" {
			t.Errorf("%s matches %q of the default forward_from", n, m)
		}
	}
}

func TestValidate(t *testing.T) {
	good := func() *Config {
		c, _ := labConfig()
		c.Sets = []AddrSet{{Name: "dcs", Addresses: []string{"10.10.0.11", "10.10.0.12"}}}
		c.VLANs = []VLAN{{Name: "ai0", Parent: "eth0", ID: 20, Addresses: []string{"10.20.0.5/24"}}}
		c.Egress = append(c.Egress, Rule{To: []string{"@dcs"}, Proto: "udp", Ports: []int{88}})
		return c
	}
	if errs := good().Validate(); len(errs) != 0 {
		t.Fatalf("good config: got %v, want no errors", errs)
	}
	tests := []struct {
		name    string
		mut     func(c *Config)
		wantKey string
	}{
		{"overlapping cidrs", func(c *Config) { c.Egress[0].To = []string{"10.0.0.0/8", "10.10.0.0/16"} }, "egress[0].to[1]"},
		{"invalid cidr", func(c *Config) { c.Egress[0].To = []string{"10.0.0.0/33"} }, "egress[0].to[0]"},
		{"host bits set", func(c *Config) { c.Ingress[0].From = []string{"10.30.0.1/24"} }, "ingress[0].from[0]"},
		{"port 0", func(c *Config) { c.Ingress[0].Ports = []int{0} }, "ingress[0].ports[0]"},
		{"port 65536", func(c *Config) { c.Ingress[1].Ports = []int{22, 65536} }, "ingress[1].ports[1]"},
		{"duplicate port", func(c *Config) { c.Ingress[1].Ports = []int{22, 22} }, "ingress[1].ports[1]"},
		{"ports without tcp/udp", func(c *Config) { c.Egress[0].Proto = "icmp" }, "egress[0].ports"},
		{"unknown proto", func(c *Config) { c.Egress[0].Proto = "sctp" }, "egress[0].proto"},
		{"from on egress", func(c *Config) { c.Egress[0].From = []string{"10.0.0.0/8"} }, "egress[0].from"},
		{"no addresses", func(c *Config) { c.Ingress[0].From = nil }, "ingress[0].from"},
		{"unknown set", func(c *Config) { c.Egress[0].To = []string{"@nope"} }, "egress[0].to[0]"},
		{"vlan id 0", func(c *Config) { c.VLANs[0].ID = 0 }, "vlan[0].id"},
		{"vlan id 4095", func(c *Config) { c.VLANs[0].ID = 4095 }, "vlan[0].id"},
		{"duplicate vlan name", func(c *Config) { c.VLANs = append(c.VLANs, VLAN{Name: "ai0", Parent: "eth1", ID: 30}) }, "vlan[1].name"},
		{"duplicate vlan id on parent", func(c *Config) { c.VLANs = append(c.VLANs, VLAN{Name: "ai1", Parent: "eth0", ID: 20}) }, "vlan[1].id"},
		{"long interface name", func(c *Config) { c.VLANs[0].Name = "averyveryverylongname" }, "vlan[0].name"},
		{"bad vlan address", func(c *Config) { c.VLANs[0].Addresses = []string{"10.20.0.5"} }, "vlan[0].addresses[0]"},
		{"multicast vlan address", func(c *Config) { c.VLANs[0].Addresses = []string{"ff02::1/64"} }, "vlan[0].addresses[0]"},
		{"unspecified vlan address", func(c *Config) { c.VLANs[0].Addresses = []string{"::/0"} }, "vlan[0].addresses[0]"},
		{"network's own address", func(c *Config) { c.VLANs[0].Addresses = []string{"10.20.0.0/24"} }, "vlan[0].addresses[0]"},
		{"broadcast vlan address", func(c *Config) { c.VLANs[0].Addresses = []string{"10.20.0.255/24"} }, "vlan[0].addresses[0]"},
		{"0/8 vlan address", func(c *Config) { c.VLANs[0].Addresses = []string{"0.1.2.3/8"} }, "vlan[0].addresses[0]"},
		{"loopback vlan address", func(c *Config) { c.VLANs[0].Addresses = []string{"127.0.0.2/8"} }, "vlan[0].addresses[0]"},
		{"mtu too small", func(c *Config) { c.VLANs[0].MTU = 20 }, "vlan[0].mtu"},
		{"duplicate set", func(c *Config) { c.Sets = append(c.Sets, AddrSet{Name: "dcs", Addresses: []string{"1.1.1.1"}}) }, "set[1].name"},
		{"bad interface", func(c *Config) { c.Ingress[0].Interface = "a b" }, "ingress[0].interface"},
		{"log rate", func(c *Config) { c.LogRate = -1 }, "log_rate"},
		{"log group", func(c *Config) { c.LogGroup = 70000 }, "log_group"},
		{"empty forward_from name", func(c *Config) { c.ForwardFrom = []string{"docker0", ""} }, "forward_from[1]"},
		{"forward_from star alone", func(c *Config) { c.ForwardFrom = []string{"*"} }, "forward_from[0]"},
		{"forward_from star inside", func(c *Config) { c.ForwardFrom = []string{"ve*th"} }, "forward_from[0]"},
		{"forward_from two stars", func(c *Config) { c.ForwardFrom = []string{"veth**"} }, "forward_from[0]"},
		{"forward_from over IFNAMSIZ", func(c *Config) { c.ForwardFrom = []string{"averyveryverylongname"} }, "forward_from[0]"},
		{"forward_from prefix over IFNAMSIZ", func(c *Config) { c.ForwardFrom = []string{"averyveryverylong*"} }, "forward_from[0]"},
		{"forward_from bad character", func(c *Config) { c.ForwardFrom = []string{"eth 0"} }, "forward_from[0]"},
		{"forward_from duplicate", func(c *Config) { c.ForwardFrom = []string{"virbr0", "virbr0"} }, "forward_from[1]"},
		{"forward_from overlap", func(c *Config) { c.ForwardFrom = []string{"vnet3", "vnet*"} }, "forward_from[1]"},
		{"vlan parent forwarded", func(c *Config) { c.ForwardFrom = []string{"eth*"} }, "vlan[0].parent"},
		{"vlan parent forwarded by default", func(c *Config) { c.VLANs[0].Parent = "br-lan" }, "vlan[0].parent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.mut(c)
			errs := c.Validate()
			if !slices.ContainsFunc(errs, func(e *conf.FieldError) bool { return e.Key == tc.wantKey }) {
				t.Errorf("got %v, want an error at %s", errs, tc.wantKey)
			}
		})
	}
}

// A forward_from entry given twice is called a duplicate, and one that
// shares names with another an overlap, each naming the earlier entry.
func TestForwardFromDuplicateAndOverlap(t *testing.T) {
	tests := []struct {
		ff   []string
		want string
	}{
		{[]string{"docker0", "virbr*", "docker0"}, `forward_from[2]: duplicate entry "docker0" (forward_from[0])`},
		{[]string{"veth*", "veth*"}, `forward_from[1]: duplicate entry "veth*" (forward_from[0])`},
		{[]string{"vnet*", "vnet3"}, `forward_from[1]: "vnet3" overlaps "vnet*" (forward_from[0])`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.ff, ","), func(t *testing.T) {
			errs := (&Config{ForwardFrom: tc.ff}).Validate()
			if len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), tc.want) {
				t.Errorf("got %v, want one error starting %q", errs, tc.want)
			}
		})
	}
}

// The model of the forward chain that decides which forwarded flows an
// apply ends agrees with the rules: within one entry, or under egress.
func TestForwardAllows(t *testing.T) {
	cfg, _ := labConfig()
	cfg.VLANs = []VLAN{{Name: "ai0", Parent: "eth0", ID: 20}}
	cfg.ForwardFrom = []string{"docker*", "br-*", "virbr*", "a*"}
	dc, vm := netip.MustParseAddr("10.10.0.11"), netip.MustParseAddr("192.168.122.2")
	tests := []struct {
		name     string
		iif, oif string
		dst      netip.Addr
		proto    uint8
		port     int
		want     bool
	}{
		{"one bridge", "docker0", "docker0", vm, 6, 5432, true},
		{"two bridges of br-*", "br-a", "br-b", vm, 6, 5432, true},
		{"docker0 to virbr0, not allowed", "docker0", "virbr0", vm, 6, 5432, false},
		{"docker0 to the dc under egress", "docker0", "eth0", dc, 6, 636, true},
		{"docker0 to the dc, another port", "docker0", "eth0", dc, 6, 389, false},
		{"docker0 to the dc over udp", "docker0", "eth0", dc, 17, 636, false},
		{"from the uplink", "eth0", "docker0", vm, 6, 5432, false},
		{"from a VLAN an entry matches", "ai0", "a1", vm, 6, 5432, false},
		{"to a VLAN an entry matches", "a1", "ai0", vm, 6, 5432, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := forwardAllows(cfg, tc.iif, tc.oif, tc.dst, tc.proto, tc.port); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestIngressAllows(t *testing.T) {
	cfg, _ := labConfig()
	cfg.Ingress = append(cfg.Ingress, Rule{From: []string{"10.50.0.0/24"}, Ports: []int{22}, Interface: "mgmt0"})
	tests := []struct {
		name  string
		iface string
		src   string
		port  int
		want  bool
	}{
		{"admin ssh", "", "10.99.0.2", 22, true},
		{"user ssh", "", "10.30.0.2", 22, false},
		{"user api", "", "10.30.0.2", 8443, true},
		{"bound rule on its interface", "mgmt0", "10.50.0.9", 22, true},
		{"bound rule elsewhere", "eth0", "10.50.0.9", 22, false},
		{"loopback", "", "127.0.0.1", 22, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ingressAllows(cfg, tc.iface, netip.MustParseAddr(tc.src), "tcp", tc.port); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// nflogMsg builds an NFULNL_MSG_PACKET body as the kernel sends it.
func nflogMsg(hook uint8, prefix string, payload []byte) []byte {
	ab, _ := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: nfulaPacketHdr, Data: []byte{0x08, 0x00, hook, 0}},
		{Type: nfulaPrefix, Data: append([]byte(prefix), 0)},
		{Type: nfulaPayload, Data: payload},
	})
	return append([]byte{2, 0, 0, 100}, ab...)
}

func ipv4Packet(proto uint8, src, dst string, dport uint16) []byte {
	p := make([]byte, 28)
	p[0] = 0x45
	p[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[22:], dport)
	return p
}

func TestParseNflog(t *testing.T) {
	tests := []struct {
		name    string
		msg     []byte
		want    drop
		wantErr bool
	}{
		{"egress tcp", nflogMsg(hookLocalOut, LogPrefix, ipv4Packet(6, "10.0.0.1", "203.0.113.10", 443)),
			drop{Hook: 3, Prefix: LogPrefix, Proto: 6, Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("203.0.113.10"), DstPort: 443}, false},
		{"ingress icmp", nflogMsg(hookLocalIn, LogPrefix, ipv4Packet(1, "10.30.0.2", "10.30.0.1", 0)),
			drop{Hook: 1, Prefix: LogPrefix, Proto: 1, Src: netip.MustParseAddr("10.30.0.2"), Dst: netip.MustParseAddr("10.30.0.1")}, false},
		{"other prefix", nflogMsg(hookLocalIn, "someone-else", ipv4Packet(6, "1.1.1.1", "2.2.2.2", 1)), drop{}, true},
		{"truncated ip", nflogMsg(hookLocalOut, LogPrefix, []byte{0x45, 0}), drop{}, true},
		{"short", []byte{1, 2}, drop{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNflog(tc.msg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err: got %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseNflog(f *testing.F) {
	f.Add(nflogMsg(hookLocalOut, LogPrefix, ipv4Packet(6, "10.0.0.1", "203.0.113.10", 443)))
	f.Add(nflogMsg(hookLocalIn, LogPrefix, append([]byte{0x60}, make([]byte, 48)...)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseNflog(b)
		if err == nil && (d.Prefix != LogPrefix || !d.Src.IsValid() || !d.Dst.IsValid()) {
			t.Fatalf("accepted a drop without prefix or addresses: %+v", d)
		}
	})
}

func TestAggregator(t *testing.T) {
	a := aggregator{max: 2}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	add := func(n int, hook uint8, src, dst string, port uint16) {
		for range n {
			a.add(drop{Hook: hook, Proto: 6, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), DstPort: port}, now)
		}
	}
	add(5, hookLocalOut, "10.0.0.1", "203.0.113.10", 443)
	add(3, hookLocalIn, "10.30.0.2", "10.30.0.1", 22)
	add(1, hookLocalOut, "10.0.0.1", "198.51.100.1", 80)
	add(1, hookLocalOut, "10.0.0.1", "198.51.100.2", 80)
	evs := a.flush()
	if len(evs) != 3 {
		t.Fatalf("events: got %d, want 3 (2 + one summary): %+v", len(evs), evs)
	}
	if evs[0].Type != "net.egress_blocked" || evs[0].Target != "203.0.113.10" || evs[0].Details["packets"] != "5" || evs[0].Details["port"] != "443" {
		t.Errorf("first event: got %+v", evs[0])
	}
	if evs[1].Type != "net.ingress_blocked" || evs[1].Target != "10.30.0.2" || evs[1].Details["packets"] != "3" {
		t.Errorf("second event: got %+v", evs[1])
	}
	if evs[2].Target != "other" || evs[2].Details["packets"] != "2" || evs[2].Details["peers"] != "2" {
		t.Errorf("summary event: got %+v", evs[2])
	}
	if len(a.flush()) != 0 {
		t.Error("flush did not reset the counts")
	}
}

// labConfig is the site of the tests: the AI server talks LDAPS to its DC
// and syslog to its SIEM (a need derived from the audit config), users reach
// the API, admins reach SSH, nothing reaches the internet.
func labConfig() (*Config, []Need) {
	return &Config{
			Egress: []Rule{{To: []string{"10.10.0.11/32"}, Proto: "tcp", Ports: []int{636}, Comment: "domain controllers"}},
			Ingress: []Rule{
				{From: []string{"10.30.0.0/24"}, Proto: "tcp", Ports: []int{8443}, Comment: "chatbot users"},
				{From: []string{"10.99.0.0/24"}, Proto: "tcp", Ports: []int{22}, Comment: "admin SSH"},
			},
		}, []Need{
			{Address: "10.40.0.10:6514", Proto: "tcp", Origin: "audit.syslog[0].address"},
		}
}

// FuzzValidate feeds arbitrary addresses, ports and names to the config
// checks: whatever Validate accepts must build a ruleset.
func FuzzValidate(f *testing.F) {
	f.Add("10.0.0.0/8", "10.10.0.0/16", 636, "ai0", 20, "tcp")
	f.Add("::/0", "@dcs", 0, "", 4095, "icmpv6")
	f.Add("1.2.3.4", "2001:db8::1", 65536, "a b", 1, "any")
	f.Fuzz(func(t *testing.T, a, b string, port int, name string, id int, proto string) {
		c := &Config{
			Sets:        []AddrSet{{Name: "dcs", Addresses: []string{a}}},
			VLANs:       []VLAN{{Name: name, Parent: "eth0", ID: id}},
			Egress:      []Rule{{To: []string{a, b}, Proto: proto, Ports: []int{port}, Interface: name}},
			Ingress:     []Rule{{From: []string{b}, Proto: proto}},
			ForwardFrom: []string{proto},
		}
		if len(c.Validate()) > 0 {
			return
		}
		if _, err := buildRuleset(c, nil, nil); err != nil {
			t.Fatalf("valid config does not build: %v", err)
		}
	})
}

func TestDropDirection(t *testing.T) {
	tests := []struct {
		hook      uint8
		wantType  string
		wantChain string
	}{
		{hookLocalIn, "net.ingress_blocked", "input"},
		{hookLocalOut, "net.egress_blocked", "output"},
		{hookForward, "net.egress_blocked", "forward"}, // a container leaving through the host
	}
	for _, tc := range tests {
		a := aggregator{}
		a.add(drop{Hook: tc.hook, Proto: 17, Src: netip.MustParseAddr("172.17.0.2"), Dst: netip.MustParseAddr("198.51.100.7"), DstPort: 53}, time.Now())
		evs := a.flush()
		if len(evs) != 1 || evs[0].Type != tc.wantType || evs[0].Details["chain"] != tc.wantChain {
			t.Errorf("hook %d: got %+v, want %s from chain %s", tc.hook, evs, tc.wantType, tc.wantChain)
		}
	}
}
