package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

// FuzzVerify: no input makes token verification panic or accept a token
// the broker did not sign.
func FuzzVerify(f *testing.F) {
	e := newEnv(f, nil)
	good := e.signed(e.goodClaims())
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add(b64(map[string]string{"alg": "none", "typ": "at+jwt"}) + "." + b64(e.goodClaims()) + ".")
	f.Add("eyJhbGciOiJFZERTQSJ9.e30.")
	f.Add("a.b.c")
	f.Add(`{"payload":"e30","signatures":[{"protected":"e30","signature":""}]}`)
	f.Add(strings.Repeat(".", 3))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := e.b.Verify(ctx, raw, e.b.ToolAudience())
		if err == nil && raw != good {
			// Only a token the broker signed may verify.
			if _, err2 := e.b.verifyClaims(raw, func(a string) bool { return a == e.b.ToolAudience() }); err2 != nil || p == nil {
				t.Fatalf("accepted %q", raw)
			}
		}
		if err != nil && p != nil {
			t.Fatal("a principal with an error")
		}
	})
}

// FuzzTokenForm: no form body makes the token endpoint answer 500 or
// anything but an RFC 6749 JSON error or a token.
func FuzzTokenForm(f *testing.F) {
	e := newEnv(f, nil)
	h := e.b.Handler()
	for _, s := range []string{
		"grant_type=client_credentials",
		"grant_type=client_credentials&scope=tickets%3Aread",
		"grant_type=client_credentials&grant_type=client_credentials",
		"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token",
		"grant_type=refresh_token&refresh_token=x",
		"client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c&grant_type=client_credentials",
		"client_id=legacy&client_secret=x&grant_type=client_credentials",
		"grant_type=client_credentials&resource=tickets",
		"grant_type=client_credentials&resource=tickets&resource=wiki",
		"grant_type=client_credentials&resource=https%3A%2F%2Fappliance.test%3A8443%2Fv1%2Ftools%2Fwiki",
		"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=a.b.c&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&audience=tickets&resource=",
		"%zz=1", "a=1;b=2", "&&&", "scope=%00",
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	uid := os.Getuid()
	f.Fuzz(func(t *testing.T, body string, onSocket bool) {
		req := httptest.NewRequest(http.MethodPost, "/oauth2/token", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if onSocket {
			req = req.WithContext(context.WithValue(req.Context(), peerKey{}, Peer{UID: uid, PID: os.Getpid()}))
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("status %d for %q", rec.Code, body)
		}
		var out map[string]any
		if err := json.NewDecoder(bytes.NewReader(rec.Body.Bytes())).Decode(&out); err != nil {
			t.Fatalf("answer is not JSON for %q: %q", body, rec.Body.String())
		}
		if rec.Code == http.StatusOK {
			if _, ok := out["access_token"].(string); !ok {
				t.Fatalf("200 without a token for %q", body)
			}
		} else if code, _ := out["error"].(string); code == "" {
			t.Fatalf("error answer without an error code for %q: %v", body, out)
		}
	})
}
