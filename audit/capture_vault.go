package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
)

// The vault's state across its closes and opens. vault.close records the
// digest of the state the vault closed in and vault.unseal the one it
// opened in (vault.DetailState); between the two the appliance was down,
// and nothing but the appliance writes the vault. A vault that opens in
// another state was changed meanwhile: an older genuine copy of vault.db
// put back (which its record MACs accept), or an edit. The receiver's copy
// of the journal is what root on the appliance cannot rewrite.

// ProblemVault: the vault opened in another state than it closed in.
const ProblemVault = "vault"

const detailVaultState = "vault_state"

// checkVaultStates walks the vault's unseal and close events of checks, in
// chain order, and returns the problems and notes.
func checkVaultStates(checks []*chainCheck) (problems []CaptureProblem, notes []string) {
	type mark struct {
		chain, state string
		seq          uint64
	}
	var closed *mark // the last close, while no unseal followed it
	var opened *mark // the last unseal, while no close followed it
	for _, c := range checks {
		seqs := make([]uint64, 0, len(c.entries))
		for s, e := range c.entries {
			if bytes.Contains(e.canonical, []byte(`"type":"vault.unseal"`)) || bytes.Contains(e.canonical, []byte(`"type":"vault.close"`)) {
				seqs = append(seqs, s)
			}
		}
		slices.Sort(seqs)
		for _, s := range seqs {
			e := c.entries[s]
			if e.canonical == nil {
				continue
			}
			var ev Event
			if json.Unmarshal(e.canonical, &ev) != nil {
				continue
			}
			state := ev.Details[detailVaultState]
			if state == "" || ev.Outcome != OutcomeSuccess {
				continue
			}
			here := &mark{chain: c.rep.ID, state: state, seq: s}
			switch ev.Type {
			case "vault.close":
				closed, opened = here, nil
			case "vault.unseal":
				switch {
				case closed != nil && closed.state != state:
					problems = append(problems, CaptureProblem{Kind: ProblemVault, Chain: c.rep.ID, Seq: s,
						Message: fmt.Sprintf("the vault opened at seq %d%s in another state (%.12s…) than it closed in at seq %d%s (%.12s…): vault.db was changed while the appliance was down (an older copy put back, or an edit)",
							s, inChain(c.rep.ID), state, closed.seq, inChain(closed.chain), closed.state)})
				case closed == nil && opened != nil:
					notes = append(notes, fmt.Sprintf("the vault opened at seq %d%s after an opening at seq %d%s with no close between (a crash): whether it was changed meanwhile cannot be told",
						s, inChain(c.rep.ID), opened.seq, inChain(opened.chain)))
				}
				closed, opened = nil, here
			}
		}
	}
	return problems, notes
}

func inChain(id string) string {
	if id == "" {
		return ""
	}
	return " of chain " + id
}
