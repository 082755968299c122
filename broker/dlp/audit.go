package dlp

import (
	"context"
	"strings"

	"github.com/applianced/applianced/audit"
)

// Appender redacts an audit event's free-text fields (Action, Target,
// Reason and every Details value) with a Scanner before handing it to the
// next Appender, so a secret that slipped into a reason or a detail never
// reaches the journal; the actor, source and request id are scanned too. A
// redacted event gets the detail "dlp_audit" naming the detectors that
// matched (a tool.dlp event's "dlp", what was found in the answer, is kept).
type Appender struct {
	Next    audit.Appender
	Scanner *Scanner
}

// Append redacts e in place and appends it to a.Next.
func (a *Appender) Append(ctx context.Context, e *audit.Event) (uint64, error) {
	all := Result{}
	red := func(s string) string {
		out, r := a.Scanner.RedactString(s)
		for k, v := range r {
			all[k] += v
		}
		return out
	}
	e.Action = red(e.Action)
	e.Target = red(e.Target)
	e.Reason = red(e.Reason)
	e.RequestID = red(e.RequestID)
	e.Source = red(e.Source)
	e.Actor.User = red(e.Actor.User)
	e.Actor.Agent = red(e.Actor.Agent)
	for k, v := range e.Details {
		if k == "dlp" {
			continue // what DLP found in the answer: a list of detector names
		}
		if r := red(v); r != v {
			e.Details[k] = r
		}
	}
	if all.Found() {
		if e.Details == nil {
			e.Details = map[string]string{}
		}
		// Its own detail, so that what DLP found in the answer (a tool.dlp
		// event's "dlp") is not replaced by what it found in the record.
		e.Details["dlp_audit"] = strings.Join(all.Names(), ",")
	}
	return a.Next.Append(ctx, e)
}
