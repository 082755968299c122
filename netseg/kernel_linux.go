package netseg

import (
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const sendBuffer = 16 << 20

// nft is the code that sends rulesets to the kernel; every verb opens a
// fresh netlink socket in the namespace the Manager works in.
type nft struct {
	nsFd int // 0: the caller's namespace
}

func (k *nft) conn() (*nftables.Conn, error) {
	// A table with 10,000 networks is a batch of about half a megabyte, sent
	// in one sendmsg: raise the socket's send buffer (root may force it).
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return nil
		}
		var serr error
		_ = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer)
		})
		if serr != nil {
			_ = c.SetWriteBuffer(sendBuffer)
		}
		return nil
	})}
	if k.nsFd > 0 {
		opts = append(opts, nftables.WithNetNSFd(k.nsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netseg: nftables: %w", err)
	}
	return c, nil
}

// replace swaps the whole table for rs in one transaction.
func (k *nft) replace(rs *ruleset) error {
	c, err := k.conn()
	if err != nil {
		return err
	}
	if err := send(c, rs); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netseg: nftables transaction refused, previous ruleset kept: %w", err)
	}
	return nil
}

// remove deletes our table, if it is there.
func (k *nft) remove() error {
	c, err := k.conn()
	if err != nil {
		return err
	}
	sendDelete(c)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netseg: delete table: %w", err)
	}
	return nil
}

// kernelTable is what the kernel holds of our table.
type kernelTable struct {
	Exists bool
	Chains map[string][]kernelRule
	Sets   map[string]*kernelSet
}

type kernelRule struct {
	Desc    string
	Packets uint64
	Bytes   uint64
}

type kernelSet struct {
	Set   *nftables.Set
	Elems []nftables.SetElement
}

// read lists our table's chains, rules (with counters) and sets.
func (k *nft) read() (*kernelTable, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	kt := &kernelTable{Chains: map[string][]kernelRule{}, Sets: map[string]*kernelSet{}}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return kt, nil
		}
		return nil, fmt.Errorf("netseg: list table: %w", err)
	}
	kt.Exists = true
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("netseg: list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("netseg: list rules of %s: %w", ch.Name, err)
		}
		krs := []kernelRule{}
		for _, r := range rules {
			kr := kernelRule{}
			if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
				kr.Desc = s
			}
			for _, e := range r.Exprs {
				if cn, ok := e.(*expr.Counter); ok {
					kr.Packets, kr.Bytes = cn.Packets, cn.Bytes
				}
			}
			krs = append(krs, kr)
		}
		kt.Chains[ch.Name] = krs
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("netseg: list sets: %w", err)
	}
	for _, s := range sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("netseg: list elements of %s: %w", s.Name, err)
		}
		kt.Sets[s.Name] = &kernelSet{Set: s, Elems: elems}
	}
	return kt, nil
}

// tableDrift compares the kernel's table with the desired ruleset and says,
// in words, what differs. Empty means no drift.
func tableDrift(want *ruleset, got *kernelTable) []string {
	if want == nil {
		return nil
	}
	if !got.Exists {
		return []string{"table inet " + TableName + " is missing"}
	}
	var out []string
	for _, c := range want.Chains {
		rules, ok := got.Chains[c.Name]
		if !ok {
			out = append(out, fmt.Sprintf("chain %s is missing", c.Name))
			continue
		}
		var gd, wd []string
		for _, r := range rules {
			gd = append(gd, r.Desc)
		}
		for _, r := range c.Rules {
			wd = append(wd, truncate(r.Desc, 250))
		}
		if !slices.Equal(gd, wd) {
			out = append(out, fmt.Sprintf("chain %s has %d rules, want %d", c.Name, len(gd), len(wd)))
		}
	}
	for name := range got.Chains {
		if !slices.ContainsFunc(want.Chains, func(c *chainSpec) bool { return c.Name == name }) {
			out = append(out, fmt.Sprintf("chain %s was added", name))
		}
	}
	for _, s := range want.Sets {
		ks, ok := got.Sets[s.Set.Name]
		if !ok {
			out = append(out, fmt.Sprintf("set %s is missing", s.Set.Name))
			continue
		}
		if !sameElems(ks.Elems, s.Elems) {
			out = append(out, fmt.Sprintf("set %s has %d elements, want %d", s.Set.Name, len(ks.Elems), len(s.Elems)))
		}
	}
	for name := range got.Sets {
		if !slices.ContainsFunc(want.Sets, func(s *setSpec) bool { return s.Set.Name == name }) {
			out = append(out, fmt.Sprintf("set %s was added", name))
		}
	}
	sort.Strings(out)
	return out
}

func elemKey(e nftables.SetElement) string {
	if e.IntervalEnd {
		return "end:" + string(e.Key)
	}
	return string(e.Key) + "|" + string(e.KeyEnd)
}

func sameElems(got, want []nftables.SetElement) bool {
	g := map[string]int{}
	for _, e := range got {
		g[elemKey(e)]++
	}
	w := map[string]int{}
	for _, e := range want {
		w[elemKey(e)]++
	}
	if len(g) != len(w) {
		return false
	}
	for k, n := range w {
		if g[k] != n {
			return false
		}
	}
	return true
}
