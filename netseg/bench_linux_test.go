package netseg

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/applianced/applianced/internal/testenv/netns"
)

// manyCIDRs returns n disjoint, non-adjacent /32s in 100.64.0.0/10 plus
// the given networks.
func manyCIDRs(n int, plus ...string) []string {
	out := append([]string{}, plus...)
	base := netip.MustParseAddr("100.64.0.0").As4()
	for i := range n - len(plus) {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(i*2+1)
		out = append(out, netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String())
	}
	return out
}

// BenchmarkApply measures one whole-table apply (build, send, kernel
// commit) with n allowed CIDRs.
func BenchmarkApply(b *testing.B) {
	lab := netns.New(b)
	k := &nft{nsFd: lab.AI.Fd()}
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("cidrs=%d", n), func(b *testing.B) {
			cfg := &Config{Egress: []Rule{{To: manyCIDRs(n), Proto: "tcp", Ports: []int{443}}}}
			for b.Loop() {
				rs, err := buildRuleset(cfg, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := k.replace(rs); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkNewConnections measures new TCP connections from the user host
// to the API port through the input chain, whose allow set holds n entries.
// Sets make the lookup cost flat: compare the rates of 10 and 10000.
func BenchmarkNewConnections(b *testing.B) {
	lab := netns.New(b)
	k := &nft{nsFd: lab.AI.Fd()}
	l := lab.AI.Listen(b, "tcp", "10.30.0.1:8443")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, n := range []int{10, 10000} {
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			cfg := &Config{Ingress: []Rule{{From: manyCIDRs(n, "10.30.0.0/24"), Proto: "tcp", Ports: []int{8443}}}}
			rs, err := buildRuleset(cfg, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := k.replace(rs); err != nil {
				b.Fatal(err)
			}
			err = lab.Hosts["user"].Do(func() error {
				for b.Loop() {
					c, err := net.Dial("tcp", "10.30.0.1:8443")
					if err != nil {
						return err
					}
					c.(*net.TCPConn).SetLinger(0) // RST: no TIME_WAIT pile-up
					c.Close()
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
