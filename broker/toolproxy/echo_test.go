package toolproxy

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
)

// binaryWith is a binary answer of n bytes with the tool's secret planted
// at offset at (at < 0: not planted).
func binaryWith(n, at int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	if at >= 0 {
		copy(b[at:], toolSecret)
	}
	return b
}

func binaryUpstream(t *testing.T, body []byte) *upstream {
	return newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		// Small writes, so the secret may straddle two reads of the proxy.
		for off := 0; off < len(body); off += 4093 {
			_, _ = w.Write(body[off:min(off+4093, len(body))])
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
		}
	})
}

func TestStreamedAnswerEchoingTheCredentialIsCut(t *testing.T) {
	for _, at := range []int{100 << 10, 4093*30 - 7, streamPeek - 5} { // inside a read, across two, across the peek
		body := binaryWith(300<<10, at)
		e := stdEnv(t, binaryUpstream(t, body), RiskConfig{})
		req, err := http.NewRequest("GET", e.srv.URL+"/v1/tools/tickets/tickets/export", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+agentToken)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && len(got) == len(body) {
			t.Fatalf("secret at %d: the whole answer (%d bytes) reached the agent", at, len(got))
		}
		if bytes.Contains(got, []byte(toolSecret)) {
			t.Fatalf("secret at %d: the secret reached the agent", at)
		}
		if !bytes.Equal(got, body[:len(got)]) {
			t.Fatalf("secret at %d: the bytes before the cut differ from the tool's", at)
		}
		e.assertNowhere(toolSecret)
		var cut *audit.Event
		for _, ev := range e.events() {
			if ev.Type == "tool.dlp" && ev.Details["credential_echo"] == "cut" {
				cut = &ev
			}
		}
		if cut == nil || cut.Outcome != audit.OutcomeFailure || cut.Severity != audit.SeverityHigh {
			t.Fatalf("secret at %d: no tool.dlp event with credential_echo=cut and high severity: %+v", at, cut)
		}
	}
}

func TestWholeBinaryAnswerEchoingTheCredentialIsRedacted(t *testing.T) {
	body := binaryWith(20<<10, 9000)
	e := stdEnv(t, binaryUpstream(t, body), RiskConfig{})
	got := e.do("GET", "/v1/tools/tickets/tickets/export", agentToken, nil, nil)
	if got.status != http.StatusOK {
		t.Fatalf("got %d, want 200", got.status)
	}
	want := append(append(bytes.Clone(body[:9000]), "[REDACTED:credential]"...), body[9000+len(toolSecret):]...)
	if !bytes.Equal(got.body, want) {
		t.Fatalf("got %d bytes, want the answer with the secret replaced (%d bytes)", len(got.body), len(want))
	}
	e.assertNowhere(toolSecret, got)
	if ev := e.lastCall(); ev.Details["credential_echo"] != "redacted" {
		t.Fatalf("audit: got %+v, want credential_echo=redacted", ev.Details)
	}
}

func TestStreamedAnswerWithoutTheCredentialIsUntouched(t *testing.T) {
	body := binaryWith(1<<20+12345, -1)
	e := stdEnv(t, binaryUpstream(t, body), RiskConfig{})
	got := e.do("GET", "/v1/tools/tickets/tickets/export", agentToken, nil, nil)
	if got.status != http.StatusOK || !bytes.Equal(got.body, body) {
		t.Fatalf("got %d and %d bytes (equal %v), want 200 and the %d bytes unchanged", got.status, len(got.body), bytes.Equal(got.body, body), len(body))
	}
	if ev := e.lastCall(); ev.Details["bytes"] != "streamed" || ev.Details["credential_echo"] != "" {
		t.Fatalf("audit: got %+v", ev.Details)
	}
}

// FuzzEchoWriter: whatever the chunking, the writer sends exactly the input
// when it holds no credential form, and never a form when it does.
func FuzzEchoWriter(f *testing.F) {
	f.Add([]byte("abc s3cret-upstream-key-7c2e94b1 def"), uint8(3))
	f.Add([]byte("nothing to see here, move along"), uint8(1))
	f.Add([]byte("s3cret-upstream-key-7c2e94"), uint8(5))
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		var out bytes.Buffer
		forms := echoForms{toolSecret, "c3Zj0nN3Y3JldA"}
		ew := newEchoWriter(&out, forms)
		st := int(step%64) + 1
		var err error
		for off := 0; off < len(in) && err == nil; off += st {
			_, err = ew.Write(in[off:min(off+st, len(in))])
		}
		if err == nil {
			err = ew.flush()
		}
		holds := false
		for _, fm := range forms {
			holds = holds || strings.Contains(string(in), fm)
			if strings.Contains(out.String(), fm) {
				t.Fatalf("form %q went out", fm)
			}
		}
		if !holds && (err != nil || !bytes.Equal(out.Bytes(), in)) {
			t.Fatalf("clean input: err %v, out %d bytes, want the %d bytes", err, out.Len(), len(in))
		}
		if holds && err != errEchoed {
			t.Fatalf("input with a form: err %v, want errEchoed", err)
		}
	})
}

// An upstream that echoes the credential in another spelling (inside a JSON
// string, in base64) does not get it to the agent either.
func TestEchoedCredentialInOtherSpellingsIsRedacted(t *testing.T) {
	const secret = `k3y"with/<odd>&\chars-42`
	var html, plain strings.Builder
	_ = json.NewEncoder(&html).Encode(secret)
	enc := json.NewEncoder(&plain)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(secret)
	unquote := func(s string) string { s = strings.TrimSpace(s); return s[1 : len(s)-1] }
	forms := map[string]string{
		"json":              unquote(html.String()),
		"json without html": unquote(plain.String()),
		"json with \\/":     strings.ReplaceAll(unquote(plain.String()), "/", `\/`),
		"base64":            base64.StdEncoding.EncodeToString([]byte(secret)),
		"base64url":         base64.RawURLEncoding.EncodeToString([]byte(secret)),
	}
	for name, form := range forms {
		t.Run(name, func(t *testing.T) {
			u := newUpstream(t, jsonOK(`{"echo": "`+form+`"}`))
			e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL)}, secrets: map[string]string{"tickets-key": secret}})
			e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Groups: []string{"helpdesk"}, Scopes: allScopes(), JTI: "jti-1"}, "tickets")
			got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil)
			if got.status != http.StatusOK {
				t.Fatalf("got %d %s", got.status, got.body)
			}
			if bytes.Contains(got.body, []byte(form)) || !bytes.Contains(got.body, []byte("[REDACTED:credential]")) {
				t.Fatalf("the agent got %s, want the echoed credential redacted", got.body)
			}
		})
	}
}

// An agent that knows the credential and puts it in the path: the call's
// audit events never hold it.
func TestCredentialInThePathNeverReachesTheJournal(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := stdEnv(t, u, RiskConfig{})
	// Refused calls first, before any call has injected the credential:
	// no token, no route, and a call that needs approval (the approval
	// stores the path too).
	for _, c := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/v1/tools/tickets/tickets/" + toolSecret, "", http.StatusUnauthorized},
		{"GET", "/v1/tools/tickets/nope/" + toolSecret, agentToken, http.StatusForbidden},
		{"DELETE", "/v1/tools/tickets/tickets/" + toolSecret, agentToken, http.StatusForbidden},
	} {
		if got := e.do(c.method, c.path, c.token, nil, nil); got.status != c.want {
			t.Fatalf("%s %s: got %d %s, want %d", c.method, c.path, got.status, got.body, c.want)
		}
	}
	list, err := e.proxy.store.listApprovals(e.clk.Now())
	if err != nil || len(list) != 1 || strings.Contains(list[0].Path, toolSecret) {
		t.Fatalf("approvals %+v (err %v), want one without the credential in its path", list, err)
	}
	e.assertNowhere(toolSecret)
	got := e.do("GET", "/v1/tools/tickets/tickets/"+toolSecret, agentToken, nil, nil)
	if got.status != http.StatusOK {
		t.Fatalf("got %d %s", got.status, got.body)
	}
	e.assertNowhere(toolSecret)
	if p := e.lastCall().Details["path"]; !strings.Contains(p, "[REDACTED:credential]") {
		t.Errorf("audited path %q, want the credential redacted", p)
	}
}

// An answer in an encoding the proxy did not ask for (brotli, deflate)
// cannot be read for DLP or for an echoed credential: it is refused,
// binary (streamed) or text alike, and the encoded bytes never reach the
// agent.
func TestUnrequestedContentEncodingIsRefused(t *testing.T) {
	for _, ct := range []string{"application/octet-stream", "application/json"} {
		for _, enc := range []string{"br", "deflate", "zstd"} {
			t.Run(ct+" "+enc, func(t *testing.T) {
				u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", ct)
					w.Header().Set("Content-Encoding", enc)
					_, _ = w.Write([]byte("encoded-bytes:" + toolSecret))
				})
				e := stdEnv(t, u, RiskConfig{})
				got := e.do("GET", "/v1/tools/tickets/raw/1", agentToken, nil, nil)
				if got.status != http.StatusBadGateway || !bytes.Contains(got.body, []byte("encoded ("+enc+")")) {
					t.Fatalf("got %d %s, want 502 naming the encoding", got.status, got.body)
				}
				if bytes.Contains(got.body, []byte("encoded-bytes")) {
					t.Fatal("the encoded answer reached the agent")
				}
			})
		}
	}
}

// A range request asks the tool for identity: a store that keeps objects
// gzipped and sends them so to anyone who does not refuse it answers with
// the plain bytes, which the proxy can scan and pass on.
func TestRangeRequestAsksForIdentity(t *testing.T) {
	const doc = `{"title": "Printer on floor 2 jams", "status": "open"}`
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(doc))
	_ = zw.Close()
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		// As RFC 9110 allows: no Accept-Encoding means any encoding.
		if ae := r.Header.Get("Accept-Encoding"); ae == "" || strings.Contains(ae, "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(gz.Bytes()))
			return
		}
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(doc))
	})
	e := stdEnv(t, u, RiskConfig{})
	got := e.do("GET", "/v1/tools/tickets/raw/1", agentToken, nil, map[string]string{"Range": "bytes=0-19"})
	if got.status != http.StatusPartialContent || string(got.body) != doc[:20] {
		t.Fatalf("got %d %q, want 206 %q", got.status, got.body, doc[:20])
	}
	// Without a range the transport asks for gzip and decodes it.
	if got := e.do("GET", "/v1/tools/tickets/raw/1", agentToken, nil, nil); got.status != http.StatusOK || string(got.body) != doc {
		t.Fatalf("got %d %q, want 200 %q", got.status, got.body, doc)
	}
}

// The credential of another configured tool, put in a call's path, is
// scrubbed from its events too.
func TestOtherToolsCredentialInThePathNeverReachesTheJournal(t *testing.T) {
	const otherSecret = "0ther-t00l-secret-5d21c8"
	u := newUpstream(t, jsonOK(`{}`))
	other := stdTool(u.URL)
	other.Name, other.Auth.Secret = "wiki", "wiki-key"
	e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL), other}, secrets: map[string]string{"tickets-key": toolSecret, "wiki-key": otherSecret}})
	e.tok.add(agentToken, Principal{Agent: "bot", User: "alice", Groups: []string{"helpdesk"}, Scopes: allScopes(), JTI: "jti-1"}, "tickets")
	if got := e.do("GET", "/v1/tools/tickets/tickets/"+otherSecret, agentToken, nil, nil); got.status != http.StatusOK {
		t.Fatalf("got %d %s", got.status, got.body)
	}
	if got := e.do("GET", "/v1/tools/tickets/nope/"+otherSecret, agentToken, nil, nil); got.status != http.StatusForbidden {
		t.Fatalf("got %d %s", got.status, got.body)
	}
	e.assertNowhere(otherSecret)
}

// A request before its caller is checked never makes the proxy read the
// vault: a tool whose secret is not stored yet costs no secret.use record
// per unauthenticated request.
func TestUnauthenticatedRequestsReadNoSecret(t *testing.T) {
	u := newUpstream(t, jsonOK(`{}`))
	e := newEnv(t, envOpts{tools: []Tool{stdTool(u.URL)}})
	for range 5 {
		if got := e.do("GET", "/v1/tools/tickets/tickets/1", "", nil, nil); got.status != http.StatusUnauthorized {
			t.Fatalf("got %d %s, want 401", got.status, got.body)
		}
	}
	n := 0
	for _, ev := range e.events() {
		if ev.Type == "secret.use" {
			n++
		}
	}
	if n > 1 {
		t.Errorf("%d secret.use records for 5 requests without a token, want at most the one at start", n)
	}
}
