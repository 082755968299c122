package toolproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/broker/dlp"
)

// hopByHop are the RFC 9110 §7.6.1 connection-specific headers, plus the
// ones the proxy owns.
var hopByHop = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// dropRequest are request headers the agent sends that never reach the
// upstream: its own credentials, cookies, and anything that would tell the
// upstream a different story about the request or its path (every
// X-Forwarded-* too). A name is compared with '_' read as '-', as CGI and
// WSGI servers read it.
var dropRequest = map[string]bool{
	"Authorization": true, "Cookie": true, "Cookie2": true, "Approval-Id": true, "Host": true,
	"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true,
	"X-Real-Ip": true, "Accept-Encoding": true, "Content-Length": true, "Expect": true,
	"X-Original-Url": true, "X-Original-Uri": true, "X-Rewrite-Url": true,
	"X-Envoy-Original-Path": true, "X-Envoy-Original-Url": true,
}

// dropsRequestHeader reports whether the request header k (canonical)
// stays with the proxy.
func dropsRequestHeader(k string) bool {
	k = textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(k, "_", "-"))
	return dropRequest[k] || strings.HasPrefix(k, "X-Forwarded-")
}

// dropResponse are upstream headers that carry or ask for credentials, or
// that the proxy recomputes.
var dropResponse = map[string]bool{
	"Set-Cookie": true, "Set-Cookie2": true, "Www-Authenticate": true, "Authentication-Info": true,
	"Proxy-Authentication-Info": true, "Content-Length": true, "Alt-Svc": true,
}

// copyHeaders copies src to dst without hop-by-hop headers (including those
// src's Connection header names) and without the drop set.
func copyHeaders(dst, src http.Header, drop map[string]bool, also string) {
	var conn map[string]bool // reads as empty while nil
	for _, v := range src.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if conn == nil {
				conn = map[string]bool{}
			}
			conn[textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(f))] = true
		}
	}
	for k, vs := range src {
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if hopByHop[ck] || drop[ck] || conn[ck] || (also != "" && ck == also) {
			continue
		}
		dst[ck] = append([]string(nil), vs...)
	}
}

// forward sends the checked call upstream with the credential and answers
// the agent.
func (p *Proxy) forward(c *call) {
	t, rt := c.t, c.rt
	ctx, cancel := context.WithTimeout(c.r.Context(), t.timeout)
	defer cancel()

	out, err := http.NewRequestWithContext(ctx, c.r.Method, t.base.String(), c.bodyReader())
	if err != nil {
		c.deny(http.StatusInternalServerError, "tool.call", CodeServerError, "building the upstream request failed")
		return
	}
	out.URL = &url.URL{
		Scheme:   t.base.Scheme,
		Host:     t.base.Host,
		Path:     t.basePath + c.tp.decoded(),
		RawPath:  t.baseEscaped + c.tp.escaped(),
		RawQuery: c.query.Encode(),
	}
	out.Host = t.base.Host
	out.ContentLength = int64(len(c.body))
	also := ""
	if t.cfg.Auth.Type == AuthHeader {
		also = textproto.CanonicalMIMEHeaderKey(t.cfg.Auth.Name)
	}
	copyHeaders(out.Header, c.r.Header, dropRequest, also)
	for k := range out.Header {
		if dropsRequestHeader(k) {
			delete(out.Header, k)
		}
	}

	// The transport asks for gzip, and decodes it, except for a range
	// request: part of a gzip stream cannot be decoded, so it sends no
	// Accept-Encoding, which allows any encoding. A store of gzipped
	// objects then answers with gzip the proxy could neither scan nor
	// pass on; asking for identity gets the plain bytes.
	if out.Header.Get("Range") != "" {
		out.Header.Set("Accept-Encoding", "identity")
	}

	tr, echo, err := p.inject(ctx, t, out)
	if err != nil {
		p.log.Error("toolproxy: preparing the credential", "tool", t.cfg.Name, "err", err, "request_id", c.ev.RequestID)
		c.deny(http.StatusBadGateway, "tool.call", CodeUpstreamError, "the tool's credential is not available")
		return
	}
	c.ev.Details["credential"] = t.cfg.Auth.Type + ":" + t.cfg.Auth.Secret
	// An agent that knows the credential could put it in the path; the
	// journal never holds it.
	if s, found := echo.scrub(c.ev.Details["path"]); found {
		c.ev.Details["path"] = s
	}

	// The decision is durable before the tool sees anything: a call the
	// journal cannot take is never sent.
	if !c.recordDecision() {
		return
	}

	resp, err := tr.RoundTrip(out)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			c.deny(http.StatusGatewayTimeout, "tool.result", CodeUpstreamTimeout, "the tool did not answer in time")
			return
		}
		if c.r.Context().Err() != nil {
			c.deny(499, "tool.result", CodeUpstreamError, "the agent went away")
			return
		}
		c.deny(http.StatusBadGateway, "tool.result", CodeUpstreamError, "the tool could not be reached or answered garbage")
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized && t.cfg.Auth.Type == AuthOAuth2Client {
		t.oauth.invalidate()
	}
	c.ev.Details["upstream_status"] = strconv.Itoa(resp.StatusCode)

	if resp.ContentLength > rt.maxResp {
		c.deny(http.StatusBadGateway, "tool.result", CodeResponseTooLarge, "the tool's response is over max_response_bytes")
		return
	}
	// The proxy asks for gzip only, and the transport decodes it; any other
	// encoding was not asked for, and neither DLP nor the check for an
	// echoed credential could read it, streamed or not.
	noBody := c.r.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") && !noBody {
		c.deny(http.StatusBadGateway, "tool.result", CodeUpstreamError, "the tool sent an encoded ("+ce+") response the proxy cannot inspect")
		return
	}
	c.echo = echo
	ct := resp.Header.Get("Content-Type")
	scan := rt.dlp != DLPOff && dlp.IsText(ct)
	if scan || len(echo) > 0 && dlp.IsText(ct) && resp.ContentLength >= 0 && resp.ContentLength <= streamPeek {
		p.answerScanned(c, resp, ct)
	} else {
		p.answerStreamed(c, resp)
	}
}

// answerScanned buffers a text or JSON response, runs DLP, audits and
// answers.
func (p *Proxy) answerScanned(c *call, resp *http.Response, ct string) {
	rt := c.rt
	body, err := io.ReadAll(io.LimitReader(resp.Body, rt.maxResp+1))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			c.deny(http.StatusGatewayTimeout, "tool.result", CodeUpstreamTimeout, "the tool did not finish its answer in time")
			return
		}
		c.deny(http.StatusBadGateway, "tool.result", CodeUpstreamError, "reading the tool's response failed")
		return
	}
	if int64(len(body)) > rt.maxResp {
		c.deny(http.StatusBadGateway, "tool.result", CodeResponseTooLarge, "the tool's response is over max_response_bytes")
		return
	}
	out, res := body, dlp.Result(nil)
	if scrubbed, echoed := c.echo.scrub(string(body)); echoed {
		out = []byte(scrubbed)
		c.ev.Details["credential_echo"] = "redacted"
		c.ev.Severity = audit.SeverityWarn
	}
	if c.rt.dlp != DLPOff {
		out, res = p.dlp.Redact(ct, out)
	}
	if res.Found() {
		c.ev.Details["dlp"] = strings.Join(res.Names(), ",")
		if rt.dlp == DLPBlock {
			c.ev.Severity = audit.SeverityWarn
			c.deny(http.StatusBadGateway, "tool.dlp", CodeDLPBlocked, "the tool's response holds sensitive data ("+c.ev.Details["dlp"]+")")
			return
		}
		c.ev.Type = "tool.dlp"
	} else {
		c.ev.Type = "tool.result"
	}
	c.ev.Outcome = audit.OutcomeSuccess
	c.ev.Details["decision"] = "allow"
	c.ev.Details["bytes"] = strconv.Itoa(len(out))
	if !c.record() {
		return
	}
	p.risk.addBytes(c.pr.Agent, c.pr.User, p.now(), int64(len(out)))
	copyHeaders(c.w.Header(), resp.Header, dropResponse, "")
	c.scrubHeaders()
	c.w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	c.w.WriteHeader(resp.StatusCode)
	_, _ = c.w.Write(out)
}

// streamPeek is how much of an unscanned response is read before the
// answer starts: a response that ends within it is answered whole (and an
// oversized one refused with 502); a longer one is streamed.
const streamPeek = 64 << 10

// answerStreamed answers a response DLP does not inspect: small ones whole,
// long ones streamed, cutting the connection if they grow over the limit.
func (p *Proxy) answerStreamed(c *call, resp *http.Response) {
	limit := c.rt.maxResp
	peek := min(limit+1, streamPeek)
	head, err := io.ReadAll(io.LimitReader(resp.Body, peek))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			c.deny(http.StatusGatewayTimeout, "tool.result", CodeUpstreamTimeout, "the tool did not finish its answer in time")
			return
		}
		c.deny(http.StatusBadGateway, "tool.result", CodeUpstreamError, "reading the tool's response failed")
		return
	}
	if int64(len(head)) > limit {
		c.deny(http.StatusBadGateway, "tool.result", CodeResponseTooLarge, "the tool's response is over max_response_bytes")
		return
	}
	complete := int64(len(head)) < peek
	if complete {
		// Whole answers, binary ones too, lose an echoed credential as text
		// answers do.
		if scrubbed, echoed := c.echo.scrub(string(head)); echoed {
			head = []byte(scrubbed)
			c.ev.Details["credential_echo"] = "redacted"
			c.ev.Severity = audit.SeverityWarn
		}
	}
	c.ev.Type = "tool.result"
	c.ev.Outcome = audit.OutcomeSuccess
	c.ev.Details["decision"] = "allow"
	if complete {
		c.ev.Details["bytes"] = strconv.Itoa(len(head))
	} else {
		c.ev.Details["bytes"] = "streamed"
	}
	if !c.record() {
		return
	}
	copyHeaders(c.w.Header(), resp.Header, dropResponse, "")
	c.scrubHeaders()
	if complete {
		c.w.Header().Set("Content-Length", strconv.Itoa(len(head)))
	} else if resp.ContentLength >= 0 {
		c.w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	c.w.WriteHeader(resp.StatusCode)
	n := int64(len(head))
	if complete {
		_, _ = c.w.Write(head)
	} else {
		// A long answer passes through a window that holds back the tail
		// of each read, so that a credential the tool echoes, even split
		// across two reads, is seen whole before any of it is sent: the
		// stream is cut there.
		ew := newEchoWriter(c.w, c.echo)
		if _, err = ew.Write(head); err == nil {
			var k int64
			k, err = io.Copy(ew, io.LimitReader(resp.Body, limit-n))
			n += k
		}
		if err == nil && n == limit {
			var one [1]byte
			if m, _ := resp.Body.Read(one[:]); m > 0 {
				err = errors.New("over max_response_bytes")
			}
		}
		if err == nil {
			err = ew.flush()
		}
	}
	p.risk.addBytes(c.pr.Agent, c.pr.User, p.now(), n)
	if err != nil {
		ev := *c.ev
		ev.Details = map[string]string{"bytes": strconv.FormatInt(n, 10), "path": c.ev.Details["path"], "decision": CodeUpstreamError}
		ev.Outcome = audit.OutcomeFailure
		ev.Reason = "the response stream was cut: " + err.Error()
		if errors.Is(err, errEchoed) {
			ev.Type = "tool.dlp"
			ev.Severity = audit.SeverityHigh
			ev.Details["decision"] = CodeDLPBlocked
			ev.Details["credential_echo"] = "cut"
		}
		if _, aerr := p.opts.Audit.Append(context.WithoutCancel(c.r.Context()), &ev); aerr != nil {
			p.log.Error("toolproxy: auditing a cut stream", "err", aerr)
		}
		panic(http.ErrAbortHandler)
	}
}

// scrubHeaders removes echoed credentials from the answer's headers.
func (c *call) scrubHeaders() {
	for k, vs := range c.w.Header() {
		for i, v := range vs {
			if s, ok := c.echo.scrub(v); ok {
				vs[i] = s
				c.p.log.Warn("toolproxy: the tool echoed its credential in a response header", "tool", c.t.cfg.Name, "header", k)
			}
		}
	}
}
