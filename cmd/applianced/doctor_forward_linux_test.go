package main

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/applianced/applianced/hardening"
	"github.com/applianced/applianced/netseg"
	"github.com/vishvananda/netlink"
)

// doctor warns when [net] forward_from matches a NIC of this host: its
// LAN's hosts would be routed. The host's own links are only read.
func TestDoctorWarnsOfLANLinksInForwardFrom(t *testing.T) {
	all, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	nic := ""
	for _, l := range all {
		if l.Type() == "device" && l.Attrs().Flags&net.FlagLoopback == 0 {
			nic = l.Attrs().Name
			break
		}
	}
	if nic == "" {
		t.Skip("skipped: this host has no network device of a driver (a NIC) to name in forward_from")
	}
	tests := []struct {
		name string
		ff   []string
		want hardening.Status
	}{
		{"a NIC in forward_from", []string{"docker0", nic}, hardening.Warn},
		{"container bridges only", []string{"docker0", "virbr*"}, hardening.Pass},
		{"nothing routed", []string{}, hardening.Pass},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := forwardLinksCheck(&netseg.Config{ForwardFrom: tc.ff}, 0).Run(context.Background())
			if len(res) != 1 || res[0].Status != tc.want {
				t.Fatalf("got %+v, want one result %s", res, tc.want)
			}
			if tc.want == hardening.Warn && (!strings.Contains(res[0].Detail, nic+` matches "`+nic+`" but is a physical device`) || res[0].Fix == "") {
				t.Errorf("detail %q, fix %q: want the NIC named and what to do", res[0].Detail, res[0].Fix)
			}
		})
	}
}
