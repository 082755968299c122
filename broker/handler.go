package broker

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
)

// Grant types of the token endpoint.
const (
	GrantClientCredentials = "client_credentials"
	GrantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
	GrantRefreshToken      = "refresh_token"
	tokenTypeAccess        = "urn:ietf:params:oauth:token-type:access_token"
	tokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
)

// maxFormBytes bounds a request body of the OAuth2 endpoints.
const maxFormBytes = 64 << 10

// oauthError is an RFC 6749 §5.2 error answer.
type oauthError struct {
	status int
	code   string
	desc   string
}

func (e *oauthError) Error() string { return e.code + ": " + e.desc }

func oerr(status int, code, format string, args ...any) *oauthError {
	return &oauthError{status: status, code: code, desc: fmt.Sprintf(format, args...)}
}

var errUnavailable = oerr(http.StatusServiceUnavailable, "temporarily_unavailable",
	"the decision could not be recorded; try again")

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeOAuthError(w http.ResponseWriter, e *oauthError) {
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="applianced"`)
	}
	writeJSON(w, e.status, map[string]string{"error": e.code, "error_description": e.desc})
}

// form is a decoded application/x-www-form-urlencoded body with every
// parameter present at most once and empty values dropped (RFC 6749 §3.2),
// except the target parameters (resource, audience), which RFC 8707 and
// RFC 8693 let repeat: the grants refuse more than one target themselves,
// with invalid_target, after the client is known.
type form map[string][]string

func (f form) has(k string) bool   { return len(f[k]) > 0 }
func (f form) get(k string) string { return firstOf(f[k]) }

// all returns every value of a repeatable parameter.
func (f form) all(k string) []string { return f[k] }

func firstOf(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// repeatable lists the parameters that may appear more than once.
var repeatable = map[string]bool{"resource": true, "audience": true}

// decodeForm parses an OAuth2 form body: POST only, the right content
// type, no query parameters, at most maxFormBytes, no repeated parameter.
func decodeForm(r *http.Request) (form, *oauthError) {
	if r.Method != http.MethodPost {
		return nil, oerr(http.StatusMethodNotAllowed, "invalid_request", "use POST")
	}
	if r.URL.RawQuery != "" {
		return nil, oerr(http.StatusBadRequest, "invalid_request", "parameters belong in the request body, not the URL")
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, oerr(http.StatusUnsupportedMediaType, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
	}
	body, oe := readBody(r)
	if oe != nil {
		return nil, oe
	}
	return parseFormBody(body)
}

func readBody(r *http.Request) ([]byte, *oauthError) {
	if r.ContentLength > maxFormBytes {
		return nil, oerr(http.StatusRequestEntityTooLarge, "invalid_request", "request body larger than %d bytes", maxFormBytes)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxFormBytes+1))
	if err != nil {
		return nil, oerr(http.StatusBadRequest, "invalid_request", "reading the request body failed")
	}
	if len(body) > maxFormBytes {
		return nil, oerr(http.StatusRequestEntityTooLarge, "invalid_request", "request body larger than %d bytes", maxFormBytes)
	}
	return body, nil
}

// parseFormBody decodes a form body strictly.
func parseFormBody(body []byte) (form, *oauthError) {
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, oerr(http.StatusBadRequest, "invalid_request", "malformed form body")
	}
	f := form{}
	for k, vs := range vals {
		if len(vs) > 1 && !repeatable[k] {
			return nil, oerr(http.StatusBadRequest, "invalid_request", "parameter %q is repeated", k)
		}
		for _, v := range vs {
			if v != "" {
				f[k] = append(f[k], v)
			}
		}
	}
	return f, nil
}

// Handler returns the HTTP API of the broker, for both the HTTPS listener
// and the agent socket (install ConnContext on the socket's server):
//
//	POST /oauth2/token, /oauth2/introspect, /oauth2/revoke, /v1/login
//	GET  /.well-known/oauth-authorization-server, /.well-known/jwks.json
func (b *Broker) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/oauth2/token", b.handleToken)
	mux.HandleFunc("/oauth2/introspect", b.handleIntrospect)
	mux.HandleFunc("/oauth2/revoke", b.handleRevoke)
	mux.HandleFunc("/v1/login", b.handleLogin)
	mux.HandleFunc("/.well-known/oauth-authorization-server", b.handleMetadata)
	mux.HandleFunc("/.well-known/jwks.json", b.handleJWKS)
	return mux
}

// source returns the client address (127.0.0.1 on the agent socket) and
// its audit form.
func source(r *http.Request) (netip.Addr, string) {
	if _, ok := PeerFrom(r.Context()); ok {
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), "unix"
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}, r.RemoteAddr
	}
	return ap.Addr().Unmap(), ap.Addr().Unmap().String()
}

// basicAuth returns the client id and secret of an Authorization: Basic
// header, form-decoded as RFC 6749 §2.3.1 requires.
func basicAuth(r *http.Request) (id, secret string, ok bool, oe *oauthError) {
	if r.Header.Get("Authorization") == "" {
		return "", "", false, nil
	}
	if len(r.Header.Values("Authorization")) > 1 {
		return "", "", false, oerr(http.StatusBadRequest, "invalid_request", "more than one Authorization header")
	}
	u, p, ok := r.BasicAuth()
	if !ok {
		return "", "", false, oerr(http.StatusUnauthorized, "invalid_client",
			"the Authorization header must be Basic with the client id and secret (or authenticate with private_key_jwt: client_assertion in the body)")
	}
	var err1, err2 error
	id, err1 = url.QueryUnescape(u)
	secret, err2 = url.QueryUnescape(p)
	if err1 != nil || err2 != nil {
		return "", "", false, oerr(http.StatusUnauthorized, "invalid_client", "malformed Authorization header")
	}
	return id, secret, true, nil
}

func (b *Broker) handleMetadata(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeOAuthError(w, oerr(http.StatusMethodNotAllowed, "invalid_request", "use GET"))
		return
	}
	var scopes []string
	for _, role := range b.cfg.Load().roles {
		scopes = append(scopes, role.Scopes...)
	}
	sort.Strings(scopes)
	scopes = compactStrings(scopes)
	auth := []string{"private_key_jwt", "client_secret_basic", "client_secret_post"}
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                b.issuer,
		"token_endpoint":                        b.tokenEndpoint(),
		"jwks_uri":                              b.issuer + "/.well-known/jwks.json",
		"introspection_endpoint":                b.issuer + "/oauth2/introspect",
		"revocation_endpoint":                   b.issuer + "/oauth2/revoke",
		"grant_types_supported":                 []string{GrantClientCredentials, GrantTokenExchange, GrantRefreshToken},
		"response_types_supported":              []string{},
		"scopes_supported":                      scopes,
		"token_endpoint_auth_methods_supported": auth,
		"token_endpoint_auth_signing_alg_values_supported":         []string{"EdDSA"},
		"introspection_endpoint_auth_methods_supported":            auth,
		"revocation_endpoint_auth_methods_supported":               append(auth, "none"),
		"introspection_endpoint_auth_signing_alg_values_supported": []string{"EdDSA"},
	})
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func (b *Broker) handleJWKS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeOAuthError(w, oerr(http.StatusMethodNotAllowed, "invalid_request", "use GET"))
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "max-age=300")
	_, _ = w.Write(b.keys.cur.Load().jwks)
}
