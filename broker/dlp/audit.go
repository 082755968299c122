package dlp

import (
	"context"

	"github.com/applianced/applianced/audit"
)

// Appender redacts an audit event's free-text fields (Action, Target,
// Reason and every Details value) with a Scanner before handing it to the
// next Appender, so a secret that slipped into a reason or a detail never
// reaches the journal. A redacted event gets the detail "dlp" naming the
// detectors that matched.
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
	for k, v := range e.Details {
		e.Details[k] = red(v)
	}
	if all.Found() {
		if e.Details == nil {
			e.Details = map[string]string{}
		}
		names := all.Names()
		s := names[0]
		for _, n := range names[1:] {
			s += "," + n
		}
		e.Details["dlp"] = s
	}
	return a.Next.Append(ctx, e)
}
