package netseg

import (
	"net/netip"
	"testing"

	"github.com/applianced/applianced/internal/testenv/netns"
)

func TestSmokeKernelAccepts(t *testing.T) {
	lab := netns.New(t)
	cfg := &Config{
		Sets:    []AddrSet{{Name: "dcs", Addresses: []string{"10.10.0.11/32", "10.10.0.12"}}},
		Egress:  []Rule{{To: []string{"@dcs", "10.10.1.0/24"}, Ports: []int{636, 389}}, {To: []string{"0.0.0.0/0"}, Proto: "udp", Ports: []int{53}}},
		Ingress: []Rule{{From: []string{"10.30.0.0/24"}, Ports: []int{8443}, Interface: "to-user"}},
	}
	needs := []resolvedNeed{{Need: Need{Address: "10.40.0.10:6514", Proto: "tcp", Origin: "audit.syslog[0]"}, Addrs: []netip.Addr{netip.MustParseAddr("10.40.0.10")}, Port: 6514}}
	rs, err := buildRuleset(cfg, needs)
	if err != nil {
		t.Fatal(err)
	}
	k := &nft{nsFd: lab.AI.Fd()}
	if err := k.replace(rs); err != nil {
		t.Fatal(err)
	}
	kt, err := k.read()
	if err != nil {
		t.Fatal(err)
	}
	if d := tableDrift(rs, kt); len(d) > 0 {
		t.Fatalf("drift: %v", d)
	}
	for n, s := range kt.Sets {
		t.Logf("set %s %d elems", n, len(s.Elems))
	}
}
