package broker

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Hours is a parsed policy hours condition: weekday and minute-of-day
// windows, evaluated in the site's time zone.
type Hours struct {
	windows []window
}

type window struct {
	days       [7]bool // indexed by time.Weekday
	start, end int     // minutes since midnight, start < end <= 1440
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// ParseHours parses "Mon-Fri 08:00-18:00". Several windows are joined by
// ";". Days are a comma list of days or ranges (a range may wrap: "Fri-Mon");
// times are HH:MM with end after start ("24:00" ends at midnight).
func ParseHours(s string) (Hours, error) {
	var h Hours
	for part := range strings.SplitSeq(s, ";") {
		fields := strings.Fields(part)
		if len(fields) != 2 {
			return Hours{}, fmt.Errorf("%q: want days and times like \"Mon-Fri 08:00-18:00\"", strings.TrimSpace(part))
		}
		var w window
		for d := range strings.SplitSeq(fields[0], ",") {
			from, to, isRange := strings.Cut(d, "-")
			a, ok1 := dayNames[strings.ToLower(from)]
			b, ok2 := a, true
			if isRange {
				b, ok2 = dayNames[strings.ToLower(to)]
			}
			if !ok1 || !ok2 {
				return Hours{}, fmt.Errorf("%q: unknown day in %q (Mon, Tue, Wed, Thu, Fri, Sat, Sun)", strings.TrimSpace(part), d)
			}
			for x := a; ; x = (x + 1) % 7 {
				w.days[x] = true
				if x == b {
					break
				}
			}
		}
		from, to, ok := strings.Cut(fields[1], "-")
		if !ok {
			return Hours{}, fmt.Errorf("%q: want times like 08:00-18:00", strings.TrimSpace(part))
		}
		var err error
		if w.start, err = parseClock(from); err != nil {
			return Hours{}, err
		}
		if w.end, err = parseClock(to); err != nil {
			return Hours{}, err
		}
		if w.end <= w.start {
			return Hours{}, fmt.Errorf("%q: end %s is not after start %s (split a window across midnight with \";\")", strings.TrimSpace(part), to, from)
		}
		h.windows = append(h.windows, w)
	}
	return h, nil
}

func parseClock(s string) (int, error) {
	hh, mm, ok := strings.Cut(s, ":")
	if ok && len(hh) == 2 && len(mm) == 2 {
		h, err1 := strconv.Atoi(hh)
		m, err2 := strconv.Atoi(mm)
		if err1 == nil && err2 == nil && h >= 0 && m >= 0 && m < 60 && (h < 24 || (h == 24 && m == 0)) {
			return h*60 + m, nil
		}
	}
	return 0, fmt.Errorf("%q is not a time of day like 08:00", s)
}

// Contains reports whether t (already in the site's zone) falls in a window.
func (h Hours) Contains(t time.Time) bool {
	now := t.Hour()*60 + t.Minute()
	for _, w := range h.windows {
		if w.days[t.Weekday()] && now >= w.start && now < w.end {
			return true
		}
	}
	return false
}

// AccessRequest is what a policy decides about: one scope used by an agent,
// possibly for a user, from a source, at a time.
type AccessRequest struct {
	Agent      string     // agent name
	User       string     // directory user the agent acts for; empty for none
	UserGroups []string   // that user's groups
	Scope      string     // the scope being used
	Source     netip.Addr // the client address; the agent socket is 127.0.0.1
	Time       time.Time  // when; zero means now
}

// Decision is the outcome of policy evaluation.
type Decision struct {
	Allowed bool
	Policy  string // the deciding policy, empty when no policy applied
	Reason  string // why, for audit and the error description
}

type compiledPolicy struct {
	Policy
	hours    Hours
	hasHours bool
	cidrs    []netip.Prefix
}

func compilePolicies(ps []Policy) ([]compiledPolicy, error) {
	out := make([]compiledPolicy, 0, len(ps))
	for _, p := range ps {
		cp := compiledPolicy{Policy: p}
		if p.Hours != "" {
			h, err := ParseHours(p.Hours)
			if err != nil {
				return nil, fmt.Errorf("broker: policy %q: %w", p.Name, err)
			}
			cp.hours, cp.hasHours = h, true
		}
		for _, c := range p.SourceCIDRs {
			pfx, err := netip.ParsePrefix(c)
			if err != nil {
				return nil, fmt.Errorf("broker: policy %q: %w", p.Name, err)
			}
			cp.cidrs = append(cp.cidrs, pfx.Masked())
		}
		if p.Effect != "allow" && p.Effect != "deny" {
			return nil, fmt.Errorf("broker: policy %q: effect %q", p.Name, p.Effect)
		}
		out = append(out, cp)
	}
	return out, nil
}

func (p *compiledPolicy) applies(r *AccessRequest) bool {
	if len(p.Agents) > 0 && !slices.Contains(p.Agents, r.Agent) {
		return false
	}
	if len(p.Scopes) > 0 && !slices.Contains(p.Scopes, r.Scope) {
		return false
	}
	if len(p.UserGroups) > 0 && (r.User == "" || !intersects(p.UserGroups, r.UserGroups)) {
		return false
	}
	return true
}

// conditions reports whether the policy's conditions hold, and if not, why.
func (p *compiledPolicy) conditions(r *AccessRequest, loc *time.Location) (bool, string) {
	if p.hasHours && !p.hours.Contains(r.Time.In(loc)) {
		return false, fmt.Sprintf("outside hours %q", p.Hours)
	}
	if len(p.cidrs) > 0 {
		src := r.Source.Unmap()
		if !slices.ContainsFunc(p.cidrs, func(c netip.Prefix) bool { return src.IsValid() && c.Contains(src) }) {
			return false, "source address not in the policy's source_cidrs"
		}
	}
	return true, ""
}

// evaluate decides r against ps. Deny wins; an unknown effect denies.
func evaluate(ps []compiledPolicy, r AccessRequest, loc *time.Location) Decision {
	var allowSeen bool
	var allowOK bool
	var allowWhy, allowName string
	for i := range ps {
		p := &ps[i]
		if !p.applies(&r) {
			continue
		}
		ok, why := p.conditions(&r, loc)
		switch p.Effect {
		case "deny":
			if ok {
				return Decision{Allowed: false, Policy: p.Name, Reason: fmt.Sprintf("denied by policy %q", p.Name)}
			}
		case "allow":
			allowSeen = true
			if ok {
				allowOK = true
			} else if allowWhy == "" {
				allowWhy, allowName = why, p.Name
			}
		default:
			return Decision{Allowed: false, Policy: p.Name, Reason: "policy with an unknown effect"}
		}
	}
	if allowSeen && !allowOK {
		return Decision{Allowed: false, Policy: allowName, Reason: fmt.Sprintf("policy %q: %s", allowName, allowWhy)}
	}
	return Decision{Allowed: true}
}

func intersects(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}
