package toolproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/sync/singleflight"
)

// ErrCredential means the tool's secret could not be turned into a
// credential (missing, not allowed for the tool, malformed, or the upstream
// token endpoint refused it).
var ErrCredential = errors.New("toolproxy: credential unavailable")

// refreshBefore is how long before its expiry a cached upstream OAuth2
// token is replaced.
const refreshBefore = 30 * time.Second

// minEchoLen is the shortest credential form scrubbed from responses;
// shorter ones would mangle ordinary text.
const minEchoLen = 6

// echoForms are the spellings of an injected credential that an upstream
// echoing its request (an error page, a debug endpoint) could send back.
type echoForms []string

// add adds each value, and the spellings an upstream could echo it in: as
// a JSON string (escaped, HTML-safe or not), in base64, and escaped for a
// URL path or query.
func (f *echoForms) add(vals ...string) {
	for _, v := range vals {
		if len(v) < minEchoLen {
			continue
		}
		var js strings.Builder
		enc := json.NewEncoder(&js)
		_ = enc.Encode(v)
		jsHTML := strings.TrimSuffix(js.String(), "\n")
		js.Reset()
		enc.SetEscapeHTML(false)
		_ = enc.Encode(v)
		jsPlain := strings.TrimSuffix(js.String(), "\n")
		for _, form := range []string{
			v,
			jsHTML[1 : len(jsHTML)-1], jsPlain[1 : len(jsPlain)-1],
			strings.ReplaceAll(jsPlain[1:len(jsPlain)-1], "/", `\/`),
			// Unpadded: the padded spelling contains it.
			base64.RawStdEncoding.EncodeToString([]byte(v)), base64.RawURLEncoding.EncodeToString([]byte(v)),
			url.PathEscape(v), url.QueryEscape(v),
		} {
			if !slices.Contains(*f, form) {
				*f = append(*f, form)
			}
		}
	}
}

// scrub replaces every echoed credential in s; it reports whether it did.
func (f echoForms) scrub(s string) (string, bool) {
	found := false
	for _, v := range f {
		if strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, "[REDACTED:credential]")
			found = true
		}
	}
	return s, found
}

// errEchoed means a streamed answer held the injected credential.
var errEchoed = errors.New("the tool echoed its credential")

// echoWriter passes a stream to w while holding back its last
// longest-form-minus-one bytes, so that a credential split across writes
// is seen whole before any byte of it goes out. Write fails with
// errEchoed, writing nothing of the match, once one is seen.
type echoWriter struct {
	w     io.Writer
	forms [][]byte
	hold  int
	buf   []byte
}

func newEchoWriter(w io.Writer, forms echoForms) *echoWriter {
	ew := &echoWriter{w: w}
	for _, f := range forms {
		ew.forms = append(ew.forms, []byte(f))
		ew.hold = max(ew.hold, len(f)-1)
	}
	return ew
}

func (ew *echoWriter) Write(p []byte) (int, error) {
	if len(ew.forms) == 0 {
		return ew.w.Write(p)
	}
	ew.buf = append(ew.buf, p...)
	for _, f := range ew.forms {
		if bytes.Contains(ew.buf, f) {
			return 0, errEchoed
		}
	}
	if n := len(ew.buf) - ew.hold; n > 0 {
		if _, err := ew.w.Write(ew.buf[:n]); err != nil {
			return 0, err
		}
		ew.buf = append(ew.buf[:0], ew.buf[n:]...)
	}
	return len(p), nil
}

// flush sends what was held back once the stream has ended.
func (ew *echoWriter) flush() error {
	if len(ew.buf) == 0 {
		return nil
	}
	_, err := ew.w.Write(ew.buf)
	ew.buf = ew.buf[:0]
	return err
}

// inject adds t's credential to out and returns the transport to send it
// with, and the credential's spellings to scrub from the answer.
func (p *Proxy) inject(ctx context.Context, t *tool, out *http.Request) (http.RoundTripper, echoForms, error) {
	var forms echoForms
	tr, err := p.injectInto(ctx, t, out, &forms)
	if err == nil {
		t.forms.Store(&forms)
	}
	return tr, forms, err
}

// learnForms learns the spellings of the credential of every tool of st
// that does not know them yet, for scrubbing audited paths (auditPath reads
// only what is known, so that no request makes the proxy read the vault
// before its caller is checked). It runs at start and at reload; a tool's
// calls then keep its spellings up to date. A tool whose secret cannot be
// read now (not stored yet, say) learns them at its first call. An OAuth2
// tool's token is known only once a call has fetched it, and a tls_client
// credential is never in a request.
func (p *Proxy) learnForms(st *state) {
	for _, t := range st.tools {
		if t.forms.Load() != nil {
			continue
		}
		switch t.cfg.Auth.Type {
		case AuthOAuth2Client, AuthTLSClient:
			continue
		}
		var forms echoForms
		dummy, _ := http.NewRequest(http.MethodGet, t.base.String(), nil)
		if _, err := p.injectInto(context.Background(), t, dummy, &forms); err != nil {
			continue
		}
		t.forms.Store(&forms)
	}
}

func (p *Proxy) injectInto(ctx context.Context, t *tool, out *http.Request, forms *echoForms) (http.RoundTripper, error) {
	secret, err := p.opts.Secrets.ForTool(ctx, t.cfg.Name, t.cfg.Auth.Secret)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCredential, err)
	}
	defer clear(secret)
	headerSafe := func(s string) error {
		if s == "" || strings.ContainsAny(s, "\r\n\x00") {
			return fmt.Errorf("%w: secret %s is empty or not usable in a header", ErrCredential, t.cfg.Auth.Secret)
		}
		return nil
	}
	switch t.cfg.Auth.Type {
	case AuthBearer:
		s := strings.TrimSpace(string(secret))
		if err := headerSafe(s); err != nil {
			return nil, err
		}
		out.Header.Set("Authorization", "Bearer "+s)
		forms.add(s)
	case AuthBasic:
		user, pass, ok := basicCredential(secret)
		if !ok || headerSafe(user) != nil || strings.ContainsAny(pass, "\r\n\x00") {
			return nil, fmt.Errorf("%w: secret %s is neither {\"user\", \"password\"} nor \"user:password\"", ErrCredential, t.cfg.Auth.Secret)
		}
		out.SetBasicAuth(user, pass)
		forms.add(pass, base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	case AuthHeader:
		s := strings.TrimSpace(string(secret))
		if err := headerSafe(s); err != nil {
			return nil, err
		}
		out.Header.Set(t.cfg.Auth.Name, s)
		forms.add(s)
	case AuthQuery:
		s := strings.TrimSpace(string(secret))
		if s == "" {
			return nil, fmt.Errorf("%w: secret %s is empty", ErrCredential, t.cfg.Auth.Secret)
		}
		q := out.URL.Query()
		q.Set(t.cfg.Auth.Name, s) // replaces any value the agent sent
		out.URL.RawQuery = q.Encode()
		forms.add(s, url.QueryEscape(s))
	case AuthOAuth2Client:
		tok, err := t.oauth.token(ctx, secret, &http.Client{Transport: t.transport, Timeout: t.timeout}, p.now)
		if err != nil {
			return nil, err
		}
		out.Header.Set("Authorization", "Bearer "+tok)
		forms.add(tok)
	case AuthTLSClient:
		return t.clientCertTransport(secret)
	default:
		return nil, fmt.Errorf("%w: unknown auth type", ErrCredential)
	}
	return t.transport, nil
}

// clientCertTransport returns a transport presenting the certificate in
// secret, reusing the cached one while the secret is unchanged.
func (t *tool) clientCertTransport(secret []byte) (http.RoundTripper, error) {
	key := sha256.Sum256(secret)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tlsTr != nil && t.tlsKey == key {
		return t.tlsTr, nil
	}
	certPEM, keyPEM := secret, secret
	var tc2 struct {
		Cert string `json:"cert"`
		Key  string `json:"key"`
	}
	if json.Unmarshal(secret, &tc2) == nil && tc2.Cert != "" {
		certPEM, keyPEM = []byte(tc2.Cert), []byte(tc2.Key)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: secret %s is not a PEM certificate and key: %w", ErrCredential, t.cfg.Auth.Secret, err)
	}
	tc := t.tlsBase.Clone()
	tc.Certificates = []tls.Certificate{cert}
	if t.tlsTr != nil {
		t.tlsTr.CloseIdleConnections()
	}
	t.tlsTr = newTransport(tc, t.timeout)
	t.tlsKey = key
	return t.tlsTr, nil
}

// oauthSecret is the JSON held by an oauth2_client_credentials secret.
type oauthSecret struct {
	ClientID     string   `json:"client_id"`
	ClientSecret string   `json:"client_secret"`
	TokenURL     string   `json:"token_url"`
	Scopes       []string `json:"scopes"`
	Audience     string   `json:"audience"`
}

// oauthCache holds one upstream access token per tool, fetched once for all
// concurrent callers and replaced shortly before it expires or when the
// secret changes.
type oauthCache struct {
	mu     sync.Mutex
	key    [32]byte // hash of the secret the token was fetched with
	tok    string
	expiry time.Time
	sf     singleflight.Group
}

func (c *oauthCache) cached(key [32]byte, now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tok != "" && c.key == key && now.Before(c.expiry) {
		return c.tok, true
	}
	return "", false
}

func (c *oauthCache) invalidate() {
	c.mu.Lock()
	c.tok = ""
	c.mu.Unlock()
}

func (c *oauthCache) token(ctx context.Context, secret []byte, hc *http.Client, now func() time.Time) (string, error) {
	key := sha256.Sum256(secret)
	if tok, ok := c.cached(key, now()); ok {
		return tok, nil
	}
	var s oauthSecret
	if err := json.Unmarshal(secret, &s); err != nil || s.ClientID == "" || s.TokenURL == "" {
		return "", fmt.Errorf("%w: the oauth2 secret must be JSON with client_id, client_secret and token_url", ErrCredential)
	}
	v, err, _ := c.sf.Do(string(key[:]), func() (any, error) {
		if tok, ok := c.cached(key, now()); ok {
			return tok, nil
		}
		cfg := clientcredentials.Config{ClientID: s.ClientID, ClientSecret: s.ClientSecret, TokenURL: s.TokenURL, Scopes: s.Scopes}
		if s.Audience != "" {
			cfg.EndpointParams = map[string][]string{"audience": {s.Audience}}
		}
		// One caller going away must not fail the others waiting on it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), hc.Timeout)
		defer cancel()
		fctx = context.WithValue(fctx, oauth2.HTTPClient, hc)
		tok, err := cfg.Token(fctx)
		if err != nil {
			var re *oauth2.RetrieveError
			if errors.As(err, &re) {
				return nil, fmt.Errorf("%w: the token endpoint answered %d %s", ErrCredential, re.Response.StatusCode, re.ErrorCode)
			}
			return nil, fmt.Errorf("%w: fetching the upstream token failed", ErrCredential)
		}
		if tok.AccessToken == "" || strings.ContainsAny(tok.AccessToken, "\r\n\x00 ") {
			return nil, fmt.Errorf("%w: the token endpoint returned an unusable token", ErrCredential)
		}
		// The library stamps Expiry with the wall clock; keep the lifetime
		// and measure it on the proxy's clock.
		t := now()
		var exp time.Time
		switch life := time.Until(tok.Expiry); {
		case tok.Expiry.IsZero():
			exp = t.Add(5 * time.Minute)
		case life > 2*refreshBefore:
			exp = t.Add(life - refreshBefore)
		default:
			exp = t.Add(life / 2)
		}
		c.mu.Lock()
		c.key, c.tok, c.expiry = key, tok.AccessToken, exp
		c.mu.Unlock()
		return tok.AccessToken, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

// basicCredential reads a basic secret: the vault's {"user", "password"}
// JSON, or "user:password".
func basicCredential(secret []byte) (user, pass string, ok bool) {
	var b struct {
		User     string `json:"user"`
		Password string `json:"password"`
	}
	if json.Unmarshal(secret, &b) == nil && b.User != "" {
		return b.User, b.Password, true
	}
	return strings.Cut(strings.TrimRight(string(secret), "\r\n"), ":")
}
