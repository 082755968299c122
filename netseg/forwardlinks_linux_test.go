package netseg

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/applianced/applianced/audit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Tier 1: which links of the host a forward_from may match. The kinds a
// LAN link has (a NIC, a bond, a VLAN) cannot all be made in a namespace
// of this host's kernel, so the links are built as netlink lists them.
func TestForwardLinkProblems(t *testing.T) {
	attrs := func(name string, index, master int) netlink.LinkAttrs {
		return netlink.LinkAttrs{Name: name, Index: index, MasterIndex: master}
	}
	nic := &netlink.Device{LinkAttrs: attrs("enp3s0", 2, 10)}
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Index: 1, Flags: net.FlagLoopback}}
	tests := []struct {
		name string
		ff   []string
		vlan string
		all  []netlink.Link
		want []string // each a substring of one problem, in order; none: no problem
	}{
		{"a LAN bridge with a NIC under br-*", nil, "", []netlink.Link{lo, nic, &netlink.Bridge{LinkAttrs: attrs("br-mgmt", 10, 0)}},
			[]string{`bridge br-mgmt matches "br-*" but has enp3s0 as a port, a physical device`}},
		{"an incus bridge given a bond", nil, "", []netlink.Link{
			&netlink.Bond{LinkAttrs: attrs("bond0", 3, 11)}, &netlink.Bridge{LinkAttrs: attrs("incusbr0", 11, 0)}},
			[]string{`bridge incusbr0 matches "incusbr*" but has bond0 as a port, a bond`}},
		{"a NIC named in forward_from", []string{"docker0", "eth*"}, "", []netlink.Link{&netlink.Device{LinkAttrs: attrs("eth0", 2, 0)}},
			[]string{`eth0 matches "eth*" but is a physical device`}},
		{"a VLAN another tool made, named like a bridge", nil, "", []netlink.Link{&netlink.Vlan{LinkAttrs: attrs("br-lan", 4, 0), VlanId: 30}},
			[]string{`br-lan matches "br-*" but is a VLAN`}},
		{"a VLAN of the config is never routed anyway", []string{"a*"}, "ai0", []netlink.Link{&netlink.Vlan{LinkAttrs: attrs("ai0", 4, 0), VlanId: 20}}, nil},
		{"docker0 with its veths", nil, "", []netlink.Link{lo, &netlink.Bridge{LinkAttrs: attrs("docker0", 10, 0)},
			&netlink.Veth{LinkAttrs: attrs("veth1a2b3c4", 20, 10)}, &netlink.Tuntap{LinkAttrs: attrs("vnet0", 21, 10)}}, nil},
		{"a NIC that forward_from does not match", nil, "", []netlink.Link{lo, &netlink.Device{LinkAttrs: attrs("eth0", 2, 0)}}, nil},
		{"a NIC in a bridge forward_from does not match", nil, "", []netlink.Link{nic, &netlink.Bridge{LinkAttrs: attrs("br0", 10, 0)}}, nil},
		{"forward_from = [] routes nothing", []string{}, "", []netlink.Link{nic, &netlink.Bridge{LinkAttrs: attrs("br-mgmt", 10, 0)}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{ForwardFrom: tc.ff}
			if tc.vlan != "" {
				cfg.VLANs = []VLAN{{Name: tc.vlan, Parent: "eth0", ID: 20}}
			}
			got := forwardLinkProblems(cfg, tc.all)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems %q, want %d like %q", len(got), got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) || !strings.Contains(got[i], "name the container and VM bridges precisely in forward_from") {
					t.Errorf("problem %d: got %q, want it to say %q and what to do", i, got[i], w)
				}
			}
		})
	}
}

// forwardLinkChecks runs in the qemu guest of TestVLANsUnderQEMU, whose
// kernel makes VLANs and bonds: a plan or apply whose forward_from matches
// a LAN link, or a bridge holding one, is refused and names both; the
// restore at boot puts the applied table back regardless.
func forwardLinkChecks(t *testing.T) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	j, err := audit.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	stateDir := t.TempDir()
	m, err := New(Options{Audit: j, StateDir: stateDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg := &Config{Egress: []Rule{{To: []string{"10.10.0.11"}, Ports: []int{636}}}} // forward_from: the default
	if _, err := m.Apply(ctx, cfg, nil, ApplyOptions{}); err != nil {
		t.Fatalf("Apply before any LAN link matches: %v", err)
	}

	if err := h.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}}); err != nil {
		t.Fatal(err)
	}
	lan0, _ := h.LinkByName("lan0")
	if err := h.LinkAdd(&netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "lan0.30", ParentIndex: lan0.Attrs().Index}, VlanId: 30}); err != nil {
		t.Fatalf("VLAN lan0.30: %v", err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-mgmt"}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	port, _ := h.LinkByName("lan0.30")
	if err := h.LinkSetMaster(port, br); err != nil {
		t.Fatalf("lan0.30 into br-mgmt: %v", err)
	}
	if err := h.LinkAdd(netlink.NewLinkBond(netlink.LinkAttrs{Name: "vz-bond0"})); err != nil {
		t.Fatalf("bond vz-bond0: %v", err)
	}

	for _, verb := range []string{"plan", "apply"} {
		t.Run(verb+" refused", func(t *testing.T) {
			var err error
			if verb == "plan" {
				_, err = m.Plan(ctx, cfg, nil, "")
			} else {
				_, err = m.Apply(ctx, cfg, nil, ApplyOptions{})
			}
			var ce *ConfigError
			if !errors.Is(err, ErrInvalidConfig) || !errors.As(err, &ce) {
				t.Fatalf("got %v, want ErrInvalidConfig", err)
			}
			for _, w := range []string{`bridge br-mgmt matches "br-*" but has lan0.30 as a port, a VLAN`, `vz-bond0 matches "vz-*" but is a bond`} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error: got %q, want it to say %q", err, w)
				}
			}
		})
	}
	t.Run("restore at boot is not refused", func(t *testing.T) {
		if err := m.k.remove(); err != nil {
			t.Fatal(err)
		}
		if _, err := RestoreTable(stateDir, 0); err != nil {
			t.Fatalf("RestoreTable: %v", err)
		}
		if applied, drift, err := CheckTable(stateDir, 0); !applied || len(drift) != 0 || err != nil {
			t.Errorf("after restore: applied %v, drift %v, err %v; want the table back", applied, drift, err)
		}
	})
	t.Run("doctor's view", func(t *testing.T) {
		probs, err := ForwardLinkProblems(cfg, 0)
		if err != nil || len(probs) != 2 {
			t.Errorf("ForwardLinkProblems: got %q, %v; want the bridge and the bond", probs, err)
		}
	})
	t.Run("precise names apply", func(t *testing.T) {
		c := *cfg
		c.ForwardFrom = []string{"docker0", "br-0a1b2c3d4e5f", "virbr*"}
		if _, err := m.Apply(ctx, &c, nil, ApplyOptions{}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	})
	for _, n := range []string{"br-mgmt", "lan0.30", "lan0", "vz-bond0"} {
		if l, err := h.LinkByName(n); err == nil {
			_ = h.LinkDel(l)
		}
	}
	if err := m.Down(ctx, audit.Actor{}, ""); err != nil {
		t.Fatal(err)
	}
}
