package netseg

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

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
	Heads  map[string]kernelChain
	Sets   map[string]*kernelSet
}

type kernelRule struct {
	Desc    string
	Body    string // exprFingerprint of what the rule does
	Packets uint64
	Bytes   uint64
}

// kernelChain is a base chain's type, hook, priority and policy.
type kernelChain struct {
	Type     nftables.ChainType
	Hook     nftables.ChainHook
	Priority nftables.ChainPriority
	Policy   nftables.ChainPolicy
	Base     bool
}

type kernelSet struct {
	Set   *nftables.Set
	Elems []nftables.SetElement
}

// read lists our table's chains, rules (with counters) and sets. The
// listing takes several netlink dumps; a table deleted between two of them
// (a rollback, `net down`, another tool) makes the later ones fail (with an
// ENOENT the nftables library does not wrap), and the listing is taken
// again: the table is then gone, or back. An error that stays is returned
// after the third try.
func (k *nft) read() (*kernelTable, error) {
	for try := 1; ; try++ {
		kt, err := k.readOnce()
		if err == nil || try == 3 {
			return kt, err
		}
	}
}

// testHookMidRead, when set, runs between the listing of the table and that
// of its chains.
var testHookMidRead func()

func (k *nft) readOnce() (*kernelTable, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	kt := &kernelTable{Chains: map[string][]kernelRule{}, Heads: map[string]kernelChain{}, Sets: map[string]*kernelSet{}}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return kt, nil
		}
		return nil, fmt.Errorf("netseg: list table: %w", err)
	}
	kt.Exists = true
	if testHookMidRead != nil {
		testHookMidRead()
	}
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
		head := kernelChain{Type: ch.Type}
		if ch.Hooknum != nil && ch.Priority != nil {
			head.Base, head.Hook, head.Priority = true, *ch.Hooknum, *ch.Priority
		}
		if ch.Policy != nil {
			head.Policy = *ch.Policy
		}
		kt.Heads[ch.Name] = head
		krs := []kernelRule{}
		for _, r := range rules {
			kr := kernelRule{Body: exprFingerprint(r.Exprs)}
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

// reg names a register as the kernel lists it: a 32-bit register that
// starts a 128-bit one (NFT_REG32_04 is where NFT_REG_2 starts) is listed
// as the 128-bit one.
func reg(r uint32) uint32 {
	const reg32First = 8 // NFT_REG32_00
	if r >= reg32First && (r-reg32First)%4 == 0 {
		return (r-reg32First)/4 + 1
	}
	return r
}

// describeHead says what a chain is, in nft's words.
func describeHead(h kernelChain) string {
	if !h.Base {
		return "a regular chain"
	}
	policy := "accept"
	if h.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	return fmt.Sprintf("type %s hook %d priority %d policy %s", h.Type, h.Hook, h.Priority, policy)
}

// exprFingerprint is what a rule does, in a form that compares the rule
// built here with the one the kernel lists: each expression marshalled as
// netlink sends it, with what the kernel fills in or counts left out (a
// counter's values, a set's transaction id; the set's name stays).
func exprFingerprint(es []expr.Any) string {
	var b []byte
	for _, e := range es {
		switch x := e.(type) {
		case *expr.Counter:
			e = &expr.Counter{}
		case *expr.Lookup:
			c := *x
			c.SetID = 0
			c.SourceRegister, c.DestRegister = reg(c.SourceRegister), reg(c.DestRegister)
			e = &c
		case *expr.Meta:
			c := *x
			c.Register = reg(c.Register)
			e = &c
		case *expr.Payload:
			c := *x
			c.DestRegister, c.SourceRegister = reg(c.DestRegister), reg(c.SourceRegister)
			e = &c
		case *expr.Cmp:
			c := *x
			c.Register = reg(c.Register)
			e = &c
		case *expr.Bitwise:
			c := *x
			c.SourceRegister, c.DestRegister = reg(c.SourceRegister), reg(c.DestRegister)
			e = &c
		case *expr.Ct:
			c := *x
			c.Register = reg(c.Register)
			e = &c
		case *expr.Range:
			c := *x
			c.Register = reg(c.Register)
			e = &c
		}
		m, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			b = fmt.Appendf(b, "%T?", e)
			continue
		}
		b = fmt.Appendf(b, "%T:%x;", e, m)
	}
	return string(b)
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
		if h := got.Heads[c.Name]; c.Hook != nil && (!h.Base || h.Type != nftables.ChainTypeFilter || h.Hook != *c.Hook ||
			h.Priority != *nftables.ChainPriorityFilter || h.Policy != nftables.ChainPolicyDrop) {
			out = append(out, fmt.Sprintf("chain %s is not a filter chain at priority filter with policy drop (%s)", c.Name, describeHead(h)))
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
			continue
		}
		// Same rules by name: each must also do what it says.
		for i, r := range c.Rules {
			if rules[i].Body != exprFingerprint(r.Exprs) {
				out = append(out, fmt.Sprintf("chain %s rule %d (%s) was changed", c.Name, i+1, truncate(r.Desc, 80)))
			}
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
			out = append(out, setDrift(&s.Set, ks.Elems, s.Elems))
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

// setDrift says how a set in the kernel differs from ours, naming the
// entries (forward_from's interface names, networks, ports) each side
// lacks; the count of elements when they read the same either way.
func setDrift(s *nftables.Set, got, want []nftables.SetElement) string {
	g, w := renderElems(s, got), renderElems(s, want)
	var extra, missing []string
	for _, x := range g {
		if !slices.Contains(w, x) {
			extra = append(extra, x)
		}
	}
	for _, x := range w {
		if !slices.Contains(g, x) {
			missing = append(missing, x)
		}
	}
	var parts []string
	if len(extra) > 0 {
		parts = append(parts, "has "+summarize(extra)+" it should not")
	}
	if len(missing) > 0 {
		parts = append(parts, "lacks "+summarize(missing))
	}
	if len(parts) == 0 {
		return fmt.Sprintf("set %s has %d elements, want %d", s.Name, len(got), len(want))
	}
	return fmt.Sprintf("set %s %s", s.Name, strings.Join(parts, " and "))
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
