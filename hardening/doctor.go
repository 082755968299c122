package hardening

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Status is the verdict of one doctor result.
type Status string

// The verdicts, from good to bad. Skip means the check could not look (a
// component is not running, a tool is missing); it is never a pass.
const (
	Pass Status = "pass"
	Skip Status = "skip"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one line of the doctor's report.
type Result struct {
	// Name identifies what was checked: "sysctl kernel.kptr_restrict",
	// "dc ldaps://dc1.corp.example:636".
	Name string `json:"name"`
	// Status is the verdict.
	Status Status `json:"status"`
	// Detail says what was found, in one line.
	Detail string `json:"detail"`
	// Fix is one line telling the sysadmin what to do; empty on pass.
	Fix string `json:"fix,omitempty"`
}

// Check is one doctor check. Run returns one or more results (a check over
// several domain controllers returns one per controller); it honours ctx.
type Check struct {
	Name string
	Run  func(ctx context.Context) []Result
}

// Report is the outcome of Run.
type Report struct {
	Results []Result `json:"results"`
	Summary Summary  `json:"summary"`
}

// Summary counts results by status.
type Summary struct {
	Pass int `json:"pass"`
	Warn int `json:"warn"`
	Fail int `json:"fail"`
	Skip int `json:"skip"`
}

// DefaultCheckTimeout bounds one check when Run is given zero.
const DefaultCheckTimeout = 15 * time.Second

// Run executes checks in order, each under its own timeout. A check that
// panics or returns nothing becomes a fail result naming it, so one broken
// check never hides the others.
func Run(ctx context.Context, checks []Check, perCheck time.Duration) *Report {
	if perCheck <= 0 {
		perCheck = DefaultCheckTimeout
	}
	rep := &Report{Results: []Result{}}
	for _, c := range checks {
		rep.Results = append(rep.Results, runOne(ctx, c, perCheck)...)
	}
	for _, r := range rep.Results {
		switch r.Status {
		case Pass:
			rep.Summary.Pass++
		case Warn:
			rep.Summary.Warn++
		case Fail:
			rep.Summary.Fail++
		default:
			rep.Summary.Skip++
		}
	}
	return rep
}

func runOne(ctx context.Context, c Check, timeout time.Duration) (res []Result) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			res = []Result{{Name: c.Name, Status: Fail, Detail: fmt.Sprintf("check crashed: %v", p),
				Fix: "report this as a bug with the output of `applianced doctor --json`"}}
		}
	}()
	res = c.Run(ctx)
	if len(res) == 0 {
		return []Result{{Name: c.Name, Status: Fail, Detail: "check returned no result",
			Fix: "report this as a bug with the output of `applianced doctor --json`"}}
	}
	if ctx.Err() != nil {
		for i := range res {
			if res[i].Status == Pass {
				res[i] = Result{Name: res[i].Name, Status: Warn, Detail: "check timed out after " + timeout.String(),
					Fix: "run `applianced doctor` again; if it persists, check the component's connectivity"}
			}
		}
	}
	return res
}

// OK reports whether no result failed.
func (r *Report) OK() bool { return r.Summary.Fail == 0 }

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report for a terminal: one line per result, the fix
// on the next line for anything that is not a pass, and a summary.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", strings.ToUpper(string(res.Status)), res.Name, oneLine(res.Detail))
		if res.Status != Pass && res.Fix != "" {
			fmt.Fprintf(tw, "\t\tfix: %s\n", oneLine(res.Fix))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d pass, %d warn, %d fail, %d skipped\n",
		r.Summary.Pass, r.Summary.Warn, r.Summary.Fail, r.Summary.Skip)
	return err
}

// oneLine keeps a detail on its line whatever a component put in it.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
