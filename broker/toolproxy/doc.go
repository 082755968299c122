// Package toolproxy is the credential-injection proxy: agents call
// /v1/tools/{tool}/{path...} with their own short-lived token, and the
// proxy, after checking the token, the route, the scope, the ABAC policies,
// the risk limits and, where needed, a human approval, forwards the call to
// the tool's internal base URL with the real credential added. The agent
// never holds the credential; the response comes back stripped of
// credential-carrying headers and, for text and JSON, cleaned by DLP.
//
// It owns: the [[tool]] and [risk] sections, path normalisation and route
// matching, credential injection (bearer, basic, header, query, upstream
// OAuth2 client credentials with a shared cached token, TLS client
// certificates), approvals (bound to the exact call, expiring, single-use;
// decided by an administrator or by the user the agent acts for with a TOTP
// code), TOTP enrolment (and its status and unlock after too many wrong
// codes), and the per-agent and per-user risk limits.
//
// It refuses: paths that could leave the route's prefix (dot segments, plain
// or encoded; encoded slashes; empty segments; double encoding; control
// characters), requests no route matches, header values with CR or LF,
// absurd header counts, bodies over the limit, and every call it cannot
// audit. It never forwards the agent's Authorization, cookies or hop-by-hop
// headers, never passes Set-Cookie or WWW-Authenticate back, scrubs the
// injected credential from answers that echo it (headers and whole bodies
// are scrubbed; a streamed body is cut before the first byte of an echoed
// credential, and the cut is audited as tool.dlp), and never puts a credential or a body into a log line or an
// audit event.
//
// It depends on small interfaces that the daemon wires to the broker and the
// vault: Verifier (token checks; the token's audience must be the called
// tool's own, and a sound token for another audience is refused with 403
// wrong_audience, audited), PolicyChecker (ABAC),
// AgentControl (enabled?, disable, revoke), SecretSource (a secret's value
// for a tool), KeySource (the key that seals TOTP seeds), and audit.Appender.
//
// Auditing: every refusal is appended to the journal before its answer. A
// call that passes the checks is appended as tool.call (the decision: agent,
// user, tool, method, path with query values redacted, route, approval id,
// request id) before it is sent; if that append fails the agent gets 503
// audit_unavailable and the tool never sees the call, whatever the method.
// When the tool has answered, failed or timed out, the outcome (upstream
// status, bytes, duration, DLP action) is appended as tool.result, or
// tool.dlp when DLP acted, with the same request id. An approval that
// expires unused (pending, or approved and never used) is recorded once as
// approval.expire by a periodic sweep, whether or not anyone polls it.
//
// State (approvals, TOTP enrolments, source addresses seen per agent) lives
// in one bbolt file, toolproxy.db, in the state directory.
//
// Caveats: request bodies are buffered (max_request_bytes, default 1 MiB)
// because an approval binds the body's SHA-256; responses scanned by DLP are
// buffered up to max_response_bytes, other responses are streamed. A router
// in front of the proxy must not "clean" paths (net/http.ServeMux redirects
// "/a/../b"); mount the handler so that it sees the path as sent.
// If the journal fails between the decision and the outcome, the tool may
// have acted while the agent gets 503 (no answer leaves without a record)
// and the failure is logged at error level; the call is not unrecorded,
// since its tool.call entry is durable, but its outcome is missing from the
// trail. A streamed response is recorded before its body is sent; a stream
// cut later is recorded as a second, failed tool.result.
package toolproxy
