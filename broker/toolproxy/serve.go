package toolproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime/multipart"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/applianced/applianced/audit"
)

// Error codes in {"error": ...} answers.
const (
	CodeInvalidRequest   = "invalid_request"
	CodeInvalidToken     = "invalid_token"
	CodeWrongAudience    = "wrong_audience"
	CodeUnknownTool      = "unknown_tool"
	CodeNoRoute          = "no_route"
	CodeInsufficient     = "insufficient_scope"
	CodeAccessDenied     = "access_denied"
	CodeAgentDisabled    = "agent_disabled"
	CodeAgentBlocked     = "agent_blocked"
	CodeApprovalRequired = "approval_required"
	CodeApprovalInvalid  = "approval_invalid"
	CodeTooManyApprovals = "too_many_approvals"
	CodeTooLarge         = "request_too_large"
	CodeUpstreamError    = "upstream_error"
	CodeUpstreamTimeout  = "upstream_timeout"
	CodeResponseTooLarge = "response_too_large"
	CodeDLPBlocked       = "dlp_blocked"
	CodeAuditUnavailable = "audit_unavailable"
	CodeServerError      = "server_error"
)

// errorBody is the JSON error shape of the API.
type errorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
	ApprovalID  string `json:"approval_id,omitempty"`
	ExpiresAt   string `json:"expires_at,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, errorBody{Error: code, Description: desc})
}

// call is one request to /v1/tools/ on its way through the checks.
type call struct {
	p     *Proxy
	w     http.ResponseWriter
	r     *http.Request
	start time.Time
	now   time.Time
	ev    *audit.Event
	src   netip.Addr
	st    *state
	t     *tool
	rt    *route
	pr    Principal
	tp    toolPath
	query url.Values
	body  []byte
	echo  echoForms // the injected credential's spellings
}

// record appends the call's event (a refusal, or the outcome of a call that
// was sent); false means it could not be recorded, and the caller has
// already answered 503. The agent hanging up does not cancel the record:
// the call may already have reached the tool.
func (c *call) record() bool {
	c.ev.Details["duration_ms"] = strconv.FormatInt(c.p.now().Sub(c.start).Milliseconds(), 10)
	if _, err := c.p.opts.Audit.Append(context.WithoutCancel(c.r.Context()), c.ev); err != nil {
		// After a sent call the tool may have acted: its tool.call record
		// exists, its outcome does not, and the agent gets no answer.
		c.p.log.Error("toolproxy: audit append failed; refusing the call", "err", err, "request_id", c.ev.RequestID, "type", c.ev.Type)
		writeError(c.w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written; no call goes through without a record")
		return false
	}
	return true
}

// recordDecision appends the decision to forward the call (tool.call) and
// answers 503 when it cannot: false means the call must not go out. The
// outcome is recorded later under the same request id (tool.result, or
// tool.dlp when DLP acted).
func (c *call) recordDecision() bool {
	dec := *c.ev
	dec.Type = "tool.call"
	dec.Outcome = audit.OutcomeSuccess
	dec.Details = maps.Clone(c.ev.Details)
	dec.Details["decision"] = "allow"
	if _, err := c.p.opts.Audit.Append(context.WithoutCancel(c.r.Context()), &dec); err != nil {
		c.p.log.Error("toolproxy: audit append failed; the call is not sent", "err", err, "request_id", c.ev.RequestID)
		writeError(c.w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written; no call goes through without a record")
		return false
	}
	return true
}

// deny audits a refusal and answers it.
func (c *call) deny(status int, evType, code, desc string) {
	c.ev.Type = evType
	c.ev.Outcome = audit.OutcomeDenied
	if status >= 500 {
		c.ev.Outcome = audit.OutcomeFailure
	}
	c.ev.Reason = desc
	c.ev.Details["decision"] = code
	if !c.record() {
		return
	}
	if status == http.StatusUnauthorized {
		c.w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	writeError(c.w, status, code, desc)
}

func (p *Proxy) serveTool(w http.ResponseWriter, r *http.Request, escaped string) {
	now := p.now()
	c := &call{p: p, w: w, r: r, start: now, now: now}
	var srcStr string
	c.src, srcStr = sourceOf(r)
	c.ev = &audit.Event{
		Type: "tool.deny", Action: r.Method, RequestID: newRequestID(), Source: srcStr,
		Details: map[string]string{"method": r.Method},
	}

	// 1. The request itself: path, query, headers, before anything else.
	tp, err := parseToolPath(escaped)
	if err != nil {
		c.ev.Details["path"] = "(refused)"
		c.deny(http.StatusBadRequest, "tool.deny", CodeInvalidRequest, err.Error())
		return
	}
	c.tp = tp
	c.ev.Target = tp.tool
	if len(r.URL.RawQuery) > MaxQueryBytes {
		c.ev.Details["path"] = p.auditPath(tp, nil)
		c.deny(http.StatusRequestURITooLong, "tool.deny", CodeInvalidRequest, "query string too long")
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil || strings.ContainsAny(r.URL.RawQuery, "\r\n\x00") {
		c.ev.Details["path"] = p.auditPath(tp, nil)
		c.deny(http.StatusBadRequest, "tool.deny", CodeInvalidRequest, "malformed query string")
		return
	}
	c.query = q
	c.ev.Details["path"] = p.auditPath(tp, q)
	if name := methodField(q); name != "" {
		c.deny(http.StatusBadRequest, "tool.deny", CodeInvalidRequest,
			"the query parameter "+strconv.Quote(name)+" is refused: frameworks read it as _method, which overrides the method the route was matched on; send the real method")
		return
	}
	if msg := checkHeaders(r.Header); msg != "" {
		status := http.StatusBadRequest
		if strings.HasPrefix(msg, "more than") {
			status = http.StatusRequestHeaderFieldsTooLarge
		}
		c.deny(status, "tool.deny", CodeInvalidRequest, msg)
		return
	}

	// 2. Who is calling: the token's audience must be this tool.
	if len(r.Header.Values("Authorization")) > 1 {
		c.deny(http.StatusBadRequest, "tool.deny", CodeInvalidRequest, "more than one Authorization header")
		return
	}
	if len(r.Header.Values(ApprovalHeader)) > 1 {
		c.deny(http.StatusBadRequest, "tool.deny", CodeInvalidRequest, "more than one "+ApprovalHeader+" header")
		return
	}
	raw, ok := bearerToken(r)
	if !ok {
		c.deny(http.StatusUnauthorized, "tool.deny", CodeInvalidToken, "a Bearer access token is required (Authorization: Bearer ...)")
		return
	}
	pr, err := p.opts.Verifier.Verify(r.Context(), raw, tp.tool)
	var te *TokenError
	if errors.As(err, &te) {
		c.ev.Actor = audit.Actor{Agent: te.Holder.Agent, User: te.Holder.User}
		setJTI(c.ev, te.Holder)
	}
	if errors.Is(err, ErrWrongAudience) {
		if _, known := p.cur.Load().tools[tp.tool]; !known {
			c.deny(http.StatusNotFound, "tool.deny", CodeUnknownTool, "no tool named "+strconv.Quote(tp.tool))
			return
		}
		desc := "the access token is not for this tool: an agent gets one with resource=" + tp.tool
		if te != nil && te.Holder.Agent == "" && te.Holder.User != "" {
			desc = "a user's own token is not accepted here: an agent exchanges it (token exchange) for one with audience=" + tp.tool
		}
		c.deny(http.StatusForbidden, "tool.deny", CodeWrongAudience, desc)
		return
	}
	if te != nil && te.Disabled {
		c.deny(http.StatusForbidden, "agent.blocked", CodeAgentDisabled, "the agent is disabled")
		return
	}
	if te != nil && te.Why != "" {
		c.deny(http.StatusUnauthorized, "tool.deny", CodeInvalidToken, "the access token "+te.Why)
		return
	}
	if err != nil {
		c.deny(http.StatusUnauthorized, "tool.deny", CodeInvalidToken, "the access token is not valid (malformed, or not signed by this appliance)")
		return
	}
	c.pr = pr
	c.ev.Actor = audit.Actor{Agent: pr.Agent, User: pr.User}
	setJTI(c.ev, pr)
	st := p.cur.Load()
	c.st = st
	t, ok := st.tools[tp.tool]
	if !ok {
		c.deny(http.StatusNotFound, "tool.deny", CodeUnknownTool, "no tool of that name")
		return
	}
	c.t = t
	enabled, err := p.opts.Agents.Enabled(r.Context(), pr.Agent)
	if err != nil || !enabled {
		c.deny(http.StatusForbidden, "agent.blocked", CodeAgentDisabled, "the agent is disabled")
		return
	}
	if until, blocked := p.risk.blockedUntil(pr.Agent, now); blocked {
		c.deny(http.StatusForbidden, "agent.blocked", CodeAgentBlocked, "the agent is blocked by a risk limit until "+until.UTC().Format(time.RFC3339))
		return
	}

	// 3. What it may do: route, scope, policy.
	rt, ok := t.match(r.Method, tp.segments)
	if !ok {
		c.deny(http.StatusForbidden, "tool.deny", CodeNoRoute, "no route of this tool allows "+r.Method+" on this path")
		return
	}
	c.rt = rt
	c.ev.Details["route"] = rt.cfg.Method + " " + rt.cfg.Path
	if !hasScope(pr.Scopes, rt.cfg.Scope) {
		c.deny(http.StatusForbidden, "tool.deny", CodeInsufficient, "the token lacks scope "+rt.cfg.Scope)
		return
	}
	if p.opts.Policy != nil {
		allowed, reason, err := p.opts.Policy.Allow(r.Context(), PolicyRequest{
			Agent: pr.Agent, User: pr.User, Groups: pr.Groups, Scope: rt.cfg.Scope, Tool: t.cfg.Name, Source: c.src, Time: now,
		})
		if err != nil || !allowed {
			if reason == "" {
				reason = "a policy refuses the call"
			}
			c.deny(http.StatusForbidden, "tool.deny", CodeAccessDenied, reason)
			return
		}
	}

	// 4. The body: bounded, and buffered because an approval binds its hash.
	tooLarge := func() string {
		return fmt.Sprintf("request body over tool %s's max_request_bytes (%d bytes)", t.cfg.Name, t.maxReq)
	}
	if r.ContentLength > t.maxReq {
		c.deny(http.StatusRequestEntityTooLarge, "tool.deny", CodeTooLarge, tooLarge())
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(io.LimitReader(r.Body, t.maxReq+1))
		if err != nil {
			c.deny(http.StatusBadRequest, "tool.deny", CodeInvalidRequest, "reading the request body failed")
			return
		}
		if int64(len(b)) > t.maxReq {
			c.deny(http.StatusRequestEntityTooLarge, "tool.deny", CodeTooLarge, tooLarge())
			return
		}
		c.body = b
	}
	if bodyOverridesMethod(r.Header.Get("Content-Type"), c.body) {
		c.deny(http.StatusBadRequest, "tool.deny", CodeInvalidRequest,
			"a _method field in the body is refused: it overrides the method the route was matched on; send the real method")
		return
	}

	// 5. Risk limits, then approvals.
	needApproval := rt.cfg.Approval == ApprovalRequired
	approvalReason := "the route requires approval"
	for _, v := range p.risk.check(pr.Agent, pr.User, now, st.hours != nil && !st.hours.contains(now)) {
		if !p.applyVerdict(c, v, &needApproval, &approvalReason) {
			return
		}
	}
	if c.st.risk.OnNewSource != "" && c.src.IsValid() {
		seen, err := p.store.sourceSeen(pr.Agent, c.src.String())
		if err != nil {
			c.deny(http.StatusInternalServerError, "tool.deny", CodeServerError, "state unavailable")
			return
		}
		if !seen {
			v := verdict{action: c.st.risk.OnNewSource, rule: "new_source", reason: "first call of this agent from " + c.src.String()}
			if !p.applyVerdict(c, v, &needApproval, &approvalReason) {
				return
			}
		}
	}
	if needApproval && !p.checkApproval(c, approvalReason) {
		return
	}
	if c.st.risk.OnNewSource != "" && c.src.IsValid() {
		if err := p.store.markSource(pr.Agent, c.src.String(), now); err != nil {
			p.log.Warn("toolproxy: recording a source address", "err", err)
		}
	}

	// 6. Out it goes.
	p.forward(c)
}

// applyVerdict carries out a risk rule's action; false means the call was
// answered (blocked, or the record failed).
func (p *Proxy) applyVerdict(c *call, v verdict, needApproval *bool, why *string) bool {
	// A decision is recorded even if the agent hangs up meanwhile.
	ctx := context.WithoutCancel(c.r.Context())
	ev := &audit.Event{
		Type: "agent.risk", Severity: audit.SeverityHigh, Actor: c.ev.Actor, Action: v.action, Target: c.t.cfg.Name,
		Outcome: audit.OutcomeDenied, Reason: v.reason, RequestID: c.ev.RequestID, Source: c.ev.Source,
		Details: map[string]string{"rule": v.rule, "action": v.action},
	}
	switch v.action {
	case ActionAlert:
		ev.Outcome = audit.OutcomeSuccess
		if _, err := p.opts.Audit.Append(ctx, ev); err != nil {
			writeError(c.w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written")
			return false
		}
		return true
	case ActionStepUp:
		*needApproval = true
		*why = "risk rule " + v.rule + ": " + v.reason
		return true
	case ActionBlock:
		until := c.now.Add(c.st.blockFor())
		p.risk.block(c.pr.Agent, until)
		ev.Type = "agent.blocked"
		ev.Details["until"] = until.UTC().Format(time.RFC3339)
		var errs []error
		if err := p.opts.Agents.Disable(ctx, c.pr.Agent, "risk rule "+v.rule, until); err != nil {
			errs = append(errs, err)
		}
		if err := p.opts.Agents.RevokeAgentTokens(ctx, c.pr.Agent, "risk rule "+v.rule); err != nil {
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			ev.Details["broker_error"] = "disabling or revoking failed; the proxy blocks the agent itself"
			p.log.Error("toolproxy: blocking an agent at the broker", "agent", c.pr.Agent, "err", err)
		}
		if _, err := p.opts.Audit.Append(ctx, ev); err != nil {
			writeError(c.w, http.StatusServiceUnavailable, CodeAuditUnavailable, "the audit journal cannot be written")
			return false
		}
		c.deny(http.StatusForbidden, "tool.deny", CodeAgentBlocked, "risk rule "+v.rule+": the agent is blocked until "+until.UTC().Format(time.RFC3339))
		return false
	}
	return true
}

func (st *state) blockFor() time.Duration {
	if d := st.risk.BlockFor.D(); d > 0 {
		return d
	}
	return DefaultBlockFor
}

// auditPath is the call's path for records: decoded segments with DLP
// applied, and the query with every value replaced.
func (p *Proxy) auditPath(tp toolPath, q url.Values) string {
	s, _ := p.dlp.RedactString(tp.decoded())
	if rq := redactQuery(q); rq != "" {
		s += "?" + rq
	}
	// An agent that knows a tool's credential could write it into the
	// journal by putting it in the path: every event of the call, refusals
	// and approvals included, holds the path with the credentials of every
	// configured tool scrubbed (as far as known: learnForms).
	for _, t := range p.cur.Load().tools {
		if f := t.forms.Load(); f != nil {
			s, _ = f.scrub(s)
		}
	}
	return s
}

// checkHeaders refuses header sets no client legitimately sends.
func checkHeaders(h http.Header) string {
	n := 0
	for k, vs := range h {
		n += len(vs)
		if strings.ContainsAny(k, "\r\n\x00 :") {
			return "invalid header name"
		}
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n\x00") {
				return "CR, LF or NUL in a header value"
			}
		}
	}
	if n > MaxHeaderCount {
		return "more than " + strconv.Itoa(MaxHeaderCount) + " header fields"
	}
	for k := range h {
		// CGI and WSGI servers read '_' in a header name as '-'.
		if overrides[textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(k, "_", "-"))] {
			return "the header " + k + " is refused: it overrides the method the route was matched on; send the real method"
		}
	}
	return ""
}

// overrides are request headers with which many web frameworks let a
// request say that its method is another one. The route was matched on the
// request's own method, so a call carrying one is refused: forwarded, it
// could reach a route with another scope or one that needs approval. (The
// headers that rewrite the path are dropped instead, in forward: proxies
// in front of applianced may set them.)
var overrides = map[string]bool{
	"X-Http-Method-Override": true, "X-Http-Method": true, "X-Method-Override": true,
	"X-Original-Method": true, "X-Forwarded-Method": true,
}

// bodyReader returns the buffered request body for the upstream request.
func (c *call) bodyReader() io.Reader {
	if c.body == nil {
		return http.NoBody
	}
	return bytes.NewReader(c.body)
}

// bodyOverridesMethod reports a _method field in a form, multipart or JSON
// body, with which Rails, Laravel and Symfony let a POST say it is a DELETE
// or a PUT. It reads the body as leniently as those frameworks do: a body
// without a usable Content-Type as a form, any multipart/* type, any JSON
// type, field names decoded (%5Fmethod, \u005fmethod) and spelled as PHP
// reads them (".method" and " method" are "_method" there).
func bodyOverridesMethod(contentType string, body []byte) bool {
	if len(body) == 0 {
		return false
	}
	mt, params := lenientMediaType(contentType)
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		boundary := params["boundary"]
		if boundary == "" {
			// No boundary to go by: any part named _method.
			return methodPartRE.Match(body)
		}
		mr := multipart.NewReader(bytes.NewReader(body), boundary)
		for {
			part, err := mr.NextPart()
			if err != nil {
				return methodPartRE.Match(body)
			}
			if isMethodName(partName(part.Header.Get("Content-Disposition"))) {
				return true
			}
		}
	case strings.Contains(mt, "json"):
		var top map[string]json.RawMessage
		if json.Unmarshal(body, &top) != nil {
			return false
		}
		for k := range top {
			if isMethodName(k) {
				return true
			}
		}
		return false
	case mt == "application/x-www-form-urlencoded", mt == "", !strings.Contains(mt, "/"):
		// A form, or what Rack reads as one: no type, or one it cannot
		// use. The pairs that decode count, even when another does not.
		q, _ := url.ParseQuery(string(body))
		return methodField(q) != ""
	}
	return false
}

// lenientMediaType is the media type (lower case, cut at the first ';',
// ',' or space, as Rack and PHP cut it) and its parameters, read one by
// one so that a malformed one does not hide the others.
func lenientMediaType(ct string) (string, map[string]string) {
	mt, rest, _ := strings.Cut(ct, ";")
	if i := strings.IndexAny(mt, ", \t"); i >= 0 {
		mt = mt[:i]
	}
	params := map[string]string{}
	for _, p := range strings.Split(rest, ";") {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		if _, seen := params[k]; !seen {
			params[k] = strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return strings.ToLower(strings.TrimSpace(mt)), params
}

// partName is the name="..." of a part's Content-Disposition, whatever its
// disposition type.
func partName(cd string) string {
	for _, p := range strings.Split(cd, ";") {
		k, v, ok := strings.Cut(p, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "name") {
			return strings.Trim(strings.TrimSpace(v), `"`)
		}
	}
	return ""
}

var methodPartRE = regexp.MustCompile(`(?i)name\s*=\s*"?[._ ]method"?`)

// isMethodName reports a field name that a framework reads as _method:
// PHP turns '.' and ' ' in a name into '_'.
func isMethodName(name string) bool {
	return len(name) == len("_method") && strings.ContainsRune("_. ", rune(name[0])) && name[1:] == "method"
}

// methodField is the name of a field of q that frameworks read as
// _method, or "".
func methodField(q url.Values) string {
	for k := range q {
		if isMethodName(k) {
			return k
		}
	}
	return ""
}

// setJTI records the token's id in ev: raw, as `applianced token revoke
// --jti` takes it, and as the keyed hash under which the broker recorded
// its issuance, so that the two records match.
func setJTI(ev *audit.Event, pr Principal) {
	if pr.JTI != "" {
		ev.Details["jti"] = pr.JTI
	}
	if pr.JTIHMAC != "" {
		ev.Details["jti_hmac"] = pr.JTIHMAC
	}
}
