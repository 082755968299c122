package toolproxy

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// verdict is one risk rule that fired for a call.
type verdict struct {
	action string // step_up | block | alert
	rule   string // requests_per_minute | response_bytes_per_hour | off_hours | new_source
	reason string
}

// window counts requests per minute and bytes per hour for one agent or
// user, in fixed windows aligned to the clock.
type window struct {
	minute int64 // unix minute of reqs
	reqs   int
	hour   int64 // unix hour of bytes
	bytes  int64
}

// riskEngine keeps the counters and the proxy's own block list. The block
// list makes a block effective at the next request even if the broker's
// disable has not propagated.
type riskEngine struct {
	cfg RiskConfig

	mu      sync.Mutex
	windows map[string]*window // "a:" + agent, "u:" + user
	blocked map[string]time.Time
}

func newRiskEngine(cfg RiskConfig) *riskEngine {
	e := &riskEngine{windows: map[string]*window{}, blocked: map[string]time.Time{}}
	e.setConfig(cfg)
	return e
}

// setConfig changes the limits; counters and blocks are kept.
func (e *riskEngine) setConfig(cfg RiskConfig) {
	if cfg.OnExceed == "" {
		cfg.OnExceed = ActionStepUp
	}
	if cfg.OnOffHours == "" {
		cfg.OnOffHours = ActionAlert
	}
	e.mu.Lock()
	e.cfg = cfg
	e.mu.Unlock()
}

func (e *riskEngine) win(key string, now time.Time) *window {
	w, ok := e.windows[key]
	if !ok {
		if len(e.windows) > 100_000 {
			e.gc(now)
		}
		w = &window{}
		e.windows[key] = w
	}
	if m := now.Unix() / 60; w.minute != m {
		w.minute, w.reqs = m, 0
	}
	if h := now.Unix() / 3600; w.hour != h {
		w.hour, w.bytes = h, 0
	}
	return w
}

// gc drops windows idle for over an hour.
func (e *riskEngine) gc(now time.Time) {
	h := now.Unix() / 3600
	for k, w := range e.windows {
		if w.hour < h && w.minute < now.Unix()/60 {
			delete(e.windows, k)
		}
	}
}

// check counts one call of agent (for user, if any) and returns the rules
// it crosses.
func (e *riskEngine) check(agent, user string, now time.Time, offHours bool) []verdict {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []verdict
	keys := []struct{ key, who string }{{"a:" + agent, "agent " + agent}}
	if user != "" {
		keys = append(keys, struct{ key, who string }{"u:" + user, "user " + user})
	}
	for _, k := range keys {
		w := e.win(k.key, now)
		w.reqs++
		if lim := e.cfg.RequestsPerMinute; lim > 0 && w.reqs > lim {
			out = append(out, verdict{e.cfg.OnExceed, "requests_per_minute",
				fmt.Sprintf("%s made %d calls this minute (limit %d)", k.who, w.reqs, lim)})
		}
		if lim := int64(e.cfg.ResponseBytesPerHour); lim > 0 && w.bytes >= lim {
			out = append(out, verdict{e.cfg.OnExceed, "response_bytes_per_hour",
				fmt.Sprintf("%s received %d response bytes this hour (limit %d)", k.who, w.bytes, lim)})
		}
	}
	if offHours {
		out = append(out, verdict{e.cfg.OnOffHours, "off_hours", "call outside business hours " + e.cfg.BusinessHours})
	}
	return out
}

func (e *riskEngine) addBytes(agent, user string, now time.Time, n int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.win("a:"+agent, now).bytes += n
	if user != "" {
		e.win("u:"+user, now).bytes += n
	}
}

func (e *riskEngine) block(agent string, until time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if until.After(e.blocked[agent]) {
		e.blocked[agent] = until
	}
}

func (e *riskEngine) blockedUntil(agent string, now time.Time) (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	until, ok := e.blocked[agent]
	if !ok {
		return time.Time{}, false
	}
	if !now.Before(until) {
		delete(e.blocked, agent)
		return time.Time{}, false
	}
	return until, true
}

// hours is a weekly time window such as "Mon-Fri 08:00-18:00".
type hours struct {
	days       [7]bool // indexed by time.Weekday
	start, end int     // minutes after midnight; end < start wraps past midnight
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// parseHours parses "[DAYS ]HH:MM-HH:MM", DAYS being a comma-separated list
// of days or day ranges ("Mon-Fri", "Mon,Wed,Sat-Sun").
func parseHours(s string) (*hours, error) {
	f := strings.Fields(s)
	h := &hours{}
	var span string
	switch len(f) {
	case 1:
		span = f[0]
		for i := range h.days {
			h.days[i] = true
		}
	case 2:
		span = f[1]
		for _, part := range strings.Split(f[0], ",") {
			a, b, isRange := strings.Cut(part, "-")
			da, ok1 := dayNames[strings.ToLower(a)]
			db := da
			ok2 := true
			if isRange {
				db, ok2 = dayNames[strings.ToLower(b)]
			}
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("%q: days must be like Mon-Fri or Mon,Wed,Sat-Sun", s)
			}
			for d := da; ; d = (d + 1) % 7 {
				h.days[d] = true
				if d == db {
					break
				}
			}
		}
	default:
		return nil, fmt.Errorf("%q: want \"Mon-Fri 08:00-18:00\" or \"08:00-18:00\"", s)
	}
	a, b, ok := strings.Cut(span, "-")
	var err1, err2 error
	if ok {
		h.start, err1 = parseClock(a)
		h.end, err2 = parseClock(b)
	}
	if !ok || err1 != nil || err2 != nil || h.start == h.end {
		return nil, fmt.Errorf("%q: want a time span like 08:00-18:00", s)
	}
	return h, nil
}

func parseClock(s string) (int, error) {
	hh, mm, ok := strings.Cut(s, ":")
	h, err1 := strconv.Atoi(hh)
	m, err2 := strconv.Atoi(mm)
	if !ok || err1 != nil || err2 != nil || h < 0 || h > 24 || m < 0 || m > 59 || (h == 24 && m != 0) || len(mm) != 2 {
		return 0, fmt.Errorf("bad time %q", s)
	}
	return h*60 + m, nil
}

// contains reports whether t (in its own location) is inside the window. A
// span past midnight belongs to the day it starts on.
func (h *hours) contains(t time.Time) bool {
	t = t.Local()
	m := t.Hour()*60 + t.Minute()
	if h.start < h.end {
		return h.days[t.Weekday()] && m >= h.start && m < h.end
	}
	if m >= h.start {
		return h.days[t.Weekday()]
	}
	return m < h.end && h.days[(t.Weekday()+6)%7]
}
