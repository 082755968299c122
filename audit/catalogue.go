package audit

import "sort"

// EventType describes one value of Event.Type: what it records and how
// alarming it is by default. The catalogue is the contract with auditors and
// SIEM rules: packaging/wazuh has one rule per type, and a test checks it.
type EventType struct {
	Type        string // dotted name, e.g. "auth.login"
	Description string // one line, for auditors
	// Level is the default alarm level of a SIEM rule for the type, 0 to 15
	// as in Wazuh (3 routine, 5 notable, 8 denied or failed, 10 and up needs
	// a human).
	Level int
}

// Catalogue lists every event type the appliance records. A type not in
// the list is a defect: add it here, with a Wazuh rule, before using it.
var Catalogue = []EventType{
	// Authentication and tokens.
	{"auth.login", "a user logged in with a directory account (outcome denied: wrong password, locked or not allowed)", 3},
	{"auth.totp", "a second factor was checked or enrolled", 3},
	{"auth.totp_unlock", "an administrator cleared the lock of a user's TOTP after too many wrong codes, keeping the seed (failures_cleared 0: it was not locked and nothing changed)", 5},
	{"auth.recheck", "a known user's account was looked up again without a password, at token refresh or exchange, or by the periodic check of users holding tokens (outcome denied: disabled, locked, expired, gone or out of allowed_groups)", 5},
	{"auth.unlock", "an administrator cleared the login failures counted against a user or a client address", 5},
	{"token.issue", "an access token was issued to an agent or user", 3},
	{"token.exchange", "an agent exchanged a user token for an on-behalf-of token (RFC 8693)", 3},
	{"token.refresh", "a refresh token was used", 3},
	{"token.deny", "a token request was refused", 5},
	{"token.revoke", "a token, or every token of an agent or user, was revoked", 5},
	{"token.introspect", "a token was introspected (RFC 7662)", 3},
	{"token.sign_key", "the token signing key was created or rotated", 5},
	{"broker.revoke", "tokens were revoked by an administrator", 5},
	{"broker.agent", "an agent was disabled or enabled by an administrator", 5},

	// Agents, tools and approvals.
	{"agent.disable", "an agent was disabled", 5},
	{"agent.enable", "an agent was enabled", 5},
	{"agent.blocked", "an agent was blocked (disabled agent, risk limit or policy)", 10},
	{"agent.risk", "an agent exceeded a risk limit (requests or response volume)", 8},
	{"tool.call", "an agent's tool call was allowed; recorded before the proxy sends it to the tool", 3},
	{"tool.result", "the outcome of a tool call the proxy sent (upstream status, bytes, duration), same request id as its tool.call", 3},
	{"tool.deny", "a tool call was refused (scope, policy or route)", 8},
	{"tool.dlp", "the outcome of a tool call whose response DLP redacted or blocked, same request id as its tool.call", 5},
	{"approval.request", "a tool call waits for a human approval", 5},
	{"approval.approve", "an approval was granted", 5},
	{"approval.deny", "an approval was denied", 8},
	{"approval.refused", "an attempt to decide an approval was refused (wrong user or code, or a decision only an admin may make)", 8},
	{"approval.expire", "an approval expired before it was used (pending or approved)", 5},

	// Secrets and the vault.
	{"secret.put", "a secret was stored (its value is never recorded)", 5},
	{"secret.rotate", "a secret was rotated", 5},
	{"secret.delete", "a secret was deleted", 5},
	{"secret.verify", "a candidate value was compared with a stored secret", 5},
	{"secret.use", "a secret was injected into an upstream request", 3},
	{"vault.unseal", "the vault was opened with the master key (vault_state: the digest of what it opened)", 5},
	{"vault.close", "the vault was closed (vault_state: the digest of what it closed; the next vault.unseal must open the same)", 3},
	{"vault.state_changed", "the vault opened in another state than it last closed in: vault.db was replaced (an older copy put back) or edited while the appliance was down (vault_state: opened, closed_state: closed, closed_seq)", 12},
	{"vault.rekey", "the vault's master key was changed", 8},
	{"vault.backup", "a vault backup was written", 5},
	{"vault.restore", "the vault was restored from a backup", 10},

	// Network.
	{"net.apply", "the network plan was applied (nftables and VLANs)", 5},
	{"net.confirm", "an applied network plan was confirmed", 5},
	{"net.rollback", "a network plan was rolled back", 8},
	{"net.down", "the appliance's firewall table was removed", 10},
	{"net.drift", "the kernel's rules differ from the applied plan", 10},
	{"net.egress_blocked", "traffic leaving the AI server was blocked by the firewall", 8},
	{"net.ingress_blocked", "traffic to the appliance from outside the allowed networks was blocked", 5},

	// Administration and the daemon.
	{"admin.refused", "a caller on the admin socket was refused", 8},
	{"admin.call", "an administrative command was run", 3},
	{"config.reload", "the configuration was reloaded", 5},
	{"daemon.start", "the daemon started", 3},
	{"daemon.stop", "the daemon stopped", 5},

	// The audit trail itself.
	{"audit.checkpoint", "a signed checkpoint of the hash chain (chain id, seq, hash and time; written every interval, idle or not)", 0},
	{"audit.chain_start", "a new journal chain began (its journal was moved aside or lost) and names the chain it continues, or says the record of it cannot be read", 8},
	{"audit.chain_record", "the record of the journal's chain beside its directory (audit.last) cannot be written: a chain that replaces this journal would not name it", 12},
	{"audit.tamper", "verification found a gap, an altered entry or a cut tail", 12},
	{"audit.dropped", "old journal entries were dropped because the disk limit was reached", 12},
	{"audit.target_down", "an audit syslog target cannot be reached; entries wait in the journal", 10},
	{"audit.target_up", "an audit syslog target is reachable again", 3},
	{"audit.deliver", "an administrator delivered to the syslog targets what they had not got of a journal set aside (stage start: from where; stage result: up to where, or the error)", 5},
}

// LookupEventType returns the catalogue entry of a type.
func LookupEventType(t string) (EventType, bool) {
	for _, e := range Catalogue {
		if e.Type == t {
			return e, true
		}
	}
	return EventType{}, false
}

// EventTypes returns the catalogue's type names, sorted.
func EventTypes() []string {
	out := make([]string, len(Catalogue))
	for i, e := range Catalogue {
		out[i] = e.Type
	}
	sort.Strings(out)
	return out
}
