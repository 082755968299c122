package audit

import (
	"context"
	"time"
)

// Outcome values. Every event has exactly one.
const (
	OutcomeSuccess = "success" // the action was done
	OutcomeDenied  = "denied"  // a policy, credential or limit refused it
	OutcomeFailure = "failure" // the machine failed (upstream down, I/O error)
)

// Severity values. Empty means SeverityInfo.
const (
	SeverityInfo = "info"
	SeverityWarn = "warning"
	SeverityHigh = "high"
)

// Actor says who asked for the action. Zero fields are omitted.
type Actor struct {
	Agent string `json:"agent,omitempty"` // agent name from the config
	User  string `json:"user,omitempty"`  // directory user (sAMAccountName or uid)
	UID   *int   `json:"uid,omitempty"`   // kernel peer uid on a Unix socket
	PID   int    `json:"pid,omitempty"`   // kernel peer pid on a Unix socket
}

// Event is one decision of the appliance. Its JSON encoding is stable: field
// order is the struct order, Details keys are sorted, and the journal hashes
// exactly those bytes, so a receiver can recompute the chain from what it got.
//
// Details values are strings. A secret, token or password never goes into any
// field; callers put an HMAC (see Hasher) or nothing.
type Event struct {
	Seq       uint64            `json:"seq"`                  // set by the journal
	Time      time.Time         `json:"time"`                 // set by the journal when zero
	Type      string            `json:"type"`                 // dotted name from the catalogue, e.g. "auth.login"
	Severity  string            `json:"severity,omitempty"`   // info (empty), warning, high
	Actor     Actor             `json:"actor"`                // who
	Action    string            `json:"action,omitempty"`     // what was attempted, e.g. "token.issue"
	Target    string            `json:"target,omitempty"`     // what it was done to, e.g. a secret or tool name
	Outcome   string            `json:"outcome"`              // success, denied, failure
	Reason    string            `json:"reason,omitempty"`     // why, for a denial or failure
	RequestID string            `json:"request_id,omitempty"` // correlates with the HTTP/admin request
	Source    string            `json:"source,omitempty"`     // remote address or "unix"
	Details   map[string]string `json:"details,omitempty"`
}

// Canonical returns the bytes the hash chain covers: the event's JSON
// encoding, exactly as json.Marshal writes it (and with its error for an
// event it refuses). The encoding is deterministic for a given Event value.
func (e *Event) Canonical() ([]byte, error) { return marshalCanonical(e) }

// Appender is what every component that makes decisions depends on. Append
// returns only after the event is durable in the local journal; an error means
// the event was not recorded and the caller's action must fail (fail closed).
// Append sets e.Seq and, when zero, e.Time.
type Appender interface {
	Append(ctx context.Context, e *Event) (seq uint64, err error)
}
