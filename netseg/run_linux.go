package netseg

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/applianced/applianced/audit"
	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// plan diffs a against the kernel.
func (m *Manager) plan(a *applied) (*Plan, error) {
	p := basePlan(a)
	vl, err := m.l.plan(a.Config.VLANs)
	if err != nil {
		return nil, err
	}
	links, err := m.l.linkNames()
	if err != nil {
		return nil, err
	}
	p.ForwardLinks = forwardLinks(&a.Config, links)
	kt, err := m.k.read()
	if err != nil {
		return nil, err
	}
	p.Changes = append(p.Changes, vl...)
	p.Changes = append(p.Changes, tableChanges(a.rs, kt)...)
	return p, nil
}

// Status is the firewall's state as the kernel has it.
type Status struct {
	// Applied is true when a ruleset of ours is in force.
	Applied   bool      `json:"applied"`
	AppliedAt time.Time `json:"applied_at,omitzero"`
	// ConfirmBy is set while an apply waits for confirmation.
	ConfirmBy time.Time `json:"confirm_by,omitzero"`
	// RollbackError is why the automatic rollback of an apply not
	// confirmed in time failed; it is tried again until it succeeds.
	RollbackError string `json:"rollback_error,omitempty"`
	// CanRollback is true when Rollback has a state to go back to.
	CanRollback bool `json:"can_rollback"`
	// Drift lists differences between the kernel and the applied state.
	Drift []string `json:"drift"`
	// Rules are the kernel's rules of our table with their counters.
	Rules []RuleStatus `json:"rules"`
	// VLANs are the configured VLANs as the kernel has them.
	VLANs []string `json:"vlans"`
}

// RuleStatus is one rule and its counter.
type RuleStatus struct {
	Chain   string `json:"chain"`
	Rule    string `json:"rule"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Status reads the kernel.
func (m *Manager) Status(ctx context.Context) (*Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := &Status{Applied: m.cur != nil, CanRollback: m.pending != nil || m.hasPrev, Drift: []string{}, Rules: []RuleStatus{}, VLANs: []string{}}
	if m.pending != nil {
		st.ConfirmBy, st.RollbackError = m.pending.deadline, m.pending.lastErr
	}
	kt, err := m.k.read()
	if err != nil {
		return nil, err
	}
	for _, name := range []string{ChainInput, ChainOutput, ChainForward} {
		for _, r := range kt.Chains[name] {
			st.Rules = append(st.Rules, RuleStatus{Chain: name, Rule: orDesc(r.Desc), Packets: r.Packets, Bytes: r.Bytes})
		}
	}
	if m.cur == nil {
		if kt.Exists {
			st.Drift = append(st.Drift, "table inet "+TableName+" exists but nothing is applied")
		}
		return st, nil
	}
	st.AppliedAt = m.cur.At
	st.Drift = append(st.Drift, tableDrift(m.cur.rs, kt)...)
	vl, err := m.l.plan(m.cur.Config.VLANs)
	if err != nil {
		return nil, err
	}
	st.Drift = append(st.Drift, vl...)
	for _, v := range m.cur.Config.VLANs {
		st.VLANs = append(st.VLANs, fmt.Sprintf("%s: id %d on %s", v.Name, v.ID, v.Parent))
	}
	return st, nil
}

func (m *Manager) signalGroup(g uint16) {
	select {
	case <-m.group:
	default:
	}
	m.group <- g
}

func (m *Manager) trigger() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run repairs drift and turns logged drops into audit events until ctx
// ends, and then returns the errors of the watchers that stopped early. A confirmation left pending by a previous run is honoured: its
// rollback fires at the saved deadline.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if p := m.pending; p != nil && p.timer == nil {
		d := time.Until(p.deadline)
		p.timer = time.AfterFunc(max(d, 0), func() { m.expire(p) })
	}
	group := uint16(defaultLogGroup)
	if m.cur != nil {
		group = m.cur.Config.logGroup()
	}
	m.mu.Unlock()

	// Each watcher runs on its own: a drop log that cannot bind its group
	// (another program holds it) must not stop drift repair.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, w := range []func(context.Context) error{
		m.watchTables, m.watchLinks,
		func(ctx context.Context) error { return m.readDrops(ctx, group) },
		func(ctx context.Context) error { m.repairLoop(ctx); return nil },
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w(ctx)
			if errors.Is(err, unix.EPERM) {
				// Without CAP_NET_ADMIN (the demo, a test daemon) there
				// is nothing of ours to watch or log: say so once.
				m.log.Warn("netseg: drift repair or drop logging off: needs CAP_NET_ADMIN", "err", err)
				return
			}
			if err != nil {
				m.log.Error("netseg: watcher stopped", "err", err)
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	m.flushDrops(context.WithoutCancel(ctx))
	return errors.Join(errs...)
}

func (m *Manager) repairLoop(ctx context.Context) {
	t := time.NewTicker(m.opts.DriftInterval)
	defer t.Stop()
	// First at once: after a reboot the kernel holds nothing of ours, and
	// egress must not stay open until the first tick.
	if err := m.repair(ctx); err != nil {
		m.log.Error("netseg: drift repair", "err", err)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.kick:
			// Let a burst of notifications (a flush deletes rule by rule) settle.
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return
			}
			select {
			case <-m.kick:
			default:
			}
		}
		if err := m.repair(ctx); err != nil {
			m.log.Error("netseg: drift repair", "err", err)
		}
	}
}

// repair puts back the applied state when the kernel differs from it.
func (m *Manager) repair(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return nil
	}
	kt, err := m.k.read()
	if err != nil {
		return err
	}
	drift := tableDrift(m.cur.rs, kt)
	vl, err := m.l.plan(m.cur.Config.VLANs)
	if err != nil {
		// The table is checked and put back all the same.
		vl = []string{"the VLANs cannot be read: " + err.Error()}
	}
	drift = append(drift, vl...)
	if len(drift) == 0 {
		return nil
	}
	// The table first: a VLAN that cannot be put back must not keep the
	// host without its filter.
	_, perr, verr := m.restore(m.cur)
	det := map[string]string{"changed": truncate(strings.Join(drift, "; "), 2000), "repaired": fmt.Sprint(perr == nil && verr == nil)}
	outcome, reason := audit.OutcomeSuccess, ""
	switch {
	case perr != nil:
		outcome, reason = audit.OutcomeFailure, perr.Error()
	case verr != nil:
		outcome, reason = audit.OutcomeFailure, "the table is back; the VLANs are not: "+verr.Error()
		det["table_repaired"] = "true"
		perr = verr
	}
	m.log.Warn("netseg: drift", "changed", det["changed"], "repaired", det["repaired"], "err", reason)
	return errors.Join(perr, m.audit(ctx, "net.drift", outcome, reason, audit.Actor{}, "", det))
}

// watchTables kicks a drift check on every nftables change to our table.
func (m *Manager) watchTables(ctx context.Context) error {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: m.opts.NetNSFd})
	if err != nil {
		return fmt.Errorf("netseg: nftables monitor: %w", err)
	}
	if err := c.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		c.Close()
		return fmt.Errorf("netseg: nftables monitor: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	for {
		msgs, err := c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var oe *netlink.OpError
			if errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOBUFS) {
				m.trigger() // missed notifications: check everything
				continue
			}
			return fmt.Errorf("netseg: nftables monitor: %w", err)
		}
		for _, msg := range msgs {
			if msg.Header.Type>>8 == unix.NFNL_SUBSYS_NFTABLES && tableOf(msg.Data) == TableName {
				m.trigger()
			}
		}
	}
}

// tableOf returns the table an nf_tables notification is about: attribute 1
// of tables, chains, rules, sets and set elements.
func tableOf(b []byte) string {
	if len(b) < 4 {
		return ""
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == 1 {
			return ad.String()
		}
	}
	return ""
}

// watchLinks kicks a drift check when one of our VLANs changes.
func (m *Manager) watchLinks(ctx context.Context) error {
	ch := make(chan vnl.LinkUpdate, 64)
	opts := vnl.LinkSubscribeOptions{ErrorCallback: func(err error) {
		if ctx.Err() != nil {
			return // the socket closing as the daemon stops
		}
		m.log.Warn("netseg: link monitor", "err", err)
	}}
	if m.opts.NetNSFd > 0 {
		ns := vnetns.NsHandle(m.opts.NetNSFd)
		opts.Namespace = &ns
	}
	if err := vnl.LinkSubscribeWithOptions(ch, ctx.Done(), opts); err != nil {
		return fmt.Errorf("netseg: link monitor: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-ch:
			if !ok {
				return nil
			}
			m.mu.Lock()
			ours := m.cur != nil && slices.ContainsFunc(m.cur.Config.VLANs, func(v VLAN) bool { return v.Name == u.Attrs().Name })
			m.mu.Unlock()
			if ours {
				m.trigger()
			}
		}
	}
}

// readDrops aggregates logged drops and audits them every LogInterval.
func (m *Manager) readDrops(ctx context.Context, group uint16) error {
	t := time.NewTicker(m.opts.LogInterval)
	defer t.Stop()
	for {
		rctx, cancel := context.WithCancel(ctx)
		r, err := openNflog(m.opts.NetNSFd, group)
		if err != nil {
			cancel()
			return err
		}
		done := make(chan error, 1)
		go func() {
			done <- r.run(rctx, func(d drop) {
				m.mu.Lock()
				m.agg.add(d, time.Now())
				m.mu.Unlock()
			})
		}()
	loop:
		for {
			select {
			case <-ctx.Done():
				cancel()
				<-done
				return nil
			case err := <-done:
				cancel()
				return err
			case <-t.C:
				m.flushDrops(ctx)
			case g := <-m.group:
				if g != group {
					group = g
					cancel()
					<-done
					break loop
				}
			}
		}
	}
}

func (m *Manager) flushDrops(ctx context.Context) {
	m.mu.Lock()
	evs := m.agg.flush()
	m.mu.Unlock()
	for _, e := range evs {
		ev := &audit.Event{Type: e.Type, Action: "net.drop", Target: e.Target, Outcome: audit.OutcomeDenied,
			Severity: audit.SeverityWarn, Reason: "no allow rule matched", Details: e.Details}
		if _, err := m.opts.Audit.Append(ctx, ev); err != nil {
			m.log.Error("netseg: audit blocked traffic", "err", err)
		}
	}
}
