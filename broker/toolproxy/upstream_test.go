package toolproxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	plantedJWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
	plantedPEM = `-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----`
)

func TestDLPThroughTheProxy(t *testing.T) {
	planted := `{"id": 42, "card": "4111 1111 1111 1111", "iban": "GB82 WEST 1234 5698 7654 32", "session": "` + plantedJWT +
		`", "key": "` + plantedPEM + `", "aws": "AKIAIOSFODNN7EXAMPLE", "gh": "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "db_password": "hunter2hunter2"}`
	var benign bytes.Buffer
	benign.WriteString(`{"items": [`)
	for i := range 2000 {
		if i > 0 {
			benign.WriteString(",")
		}
		ts := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 37 * time.Minute)
		fmt.Fprintf(&benign, `{"id": %d, "ticket_id": "T-%06d", "created_at": %q, "epoch_ms": %d, "epoch_ns": %d, "uuid": "%08x-0000-4000-8000-%012x"}`,
			100000+i, i, ts.Format(time.RFC3339Nano), ts.UnixMilli(), ts.UnixNano(), i*7919, i*104729)
	}
	benign.WriteString(`]}`)
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		if strings.HasSuffix(r.URL.Path, "/benign") {
			_, _ = w.Write(benign.Bytes())
			return
		}
		_, _ = w.Write([]byte(planted))
	})
	e := stdEnv(t, u, RiskConfig{})

	got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil)
	if got.status != 200 {
		t.Fatalf("got %d %s", got.status, got.body)
	}
	for _, secret := range []string{"4111 1111 1111 1111", "GB82 WEST", plantedJWT, "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "AKIAIOSFODNN7EXAMPLE", "ghp_aBcDeFgHiJ", "hunter2hunter2"} {
		if bytes.Contains(got.body, []byte(secret)) {
			t.Errorf("the agent got %q", secret)
		}
	}
	var v map[string]any
	if err := json.Unmarshal(got.body, &v); err != nil || v["id"].(float64) != 42 {
		t.Errorf("got %s (%v), want valid JSON with id kept", got.body, err)
	}
	if ev := e.lastEvent("tool.dlp"); !strings.Contains(ev.Details["dlp"], "card") || !strings.Contains(ev.Details["dlp"], "iban") {
		t.Errorf("got dlp event %+v", ev)
	}
	e.assertNowhere("4111 1111 1111 1111")

	got = e.do("GET", "/v1/tools/tickets/tickets/benign", agentToken, nil, nil)
	if got.status != 200 || !bytes.Equal(got.body, benign.Bytes()) {
		t.Errorf("benign JSON of ids and timestamps was changed (status %d, %d bytes, want %d)", got.status, len(got.body), benign.Len())
	}

	got = e.do("GET", "/v1/tools/tickets/blocked/1", agentToken, nil, nil)
	if got.status != http.StatusBadGateway || got.errorCode() != CodeDLPBlocked {
		t.Errorf("got %d %s, want 502 dlp_blocked", got.status, got.body)
	}
	if ev := e.lastEvent("tool.dlp"); ev.Outcome != "failure" || ev.Details["decision"] != CodeDLPBlocked {
		t.Errorf("got %+v, want the block audited", ev)
	}
}

func TestOAuth2TokenFetchedOnceForConcurrentCalls(t *testing.T) {
	var fetches atomic.Int32
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		id, sec, _ := r.BasicAuth()
		if r.Form.Get("grant_type") != "client_credentials" || id != "proxy-client" || sec != toolSecret {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
			return
		}
		n := fetches.Add(1)
		time.Sleep(50 * time.Millisecond) // let the callers pile up
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"upstream-token-%d","token_type":"Bearer","expires_in":3600}`, n)
	}))
	t.Cleanup(idp.Close)
	var mu sync.Mutex
	seen := map[string]int{}
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("Authorization")]++
		mu.Unlock()
		jsonOK(`{}`)(w, r)
	})
	tl := stdTool(u.URL)
	tl.Auth = ToolAuth{Type: AuthOAuth2Client, Secret: "oauth"}
	secret := fmt.Sprintf(`{"client_id": "proxy-client", "client_secret": %q, "token_url": %q, "scopes": ["api"]}`, toolSecret, idp.URL+"/token")
	e := newEnv(t, envOpts{tools: []Tool{tl}, secrets: map[string]string{"oauth": secret}})
	e.tok.add(agentToken, Principal{Agent: "bot", Scopes: allScopes()}, "tickets")

	var wg sync.WaitGroup
	errs := make(chan string, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", e.srv.URL+"/v1/tools/tickets/tickets/1", nil)
			req.Header.Set("Authorization", "Bearer "+agentToken)
			resp, err := e.srv.Client().Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Sprint(resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a call failed: %s", err)
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("got %d token fetches for 100 concurrent calls, want 1", n)
	}
	if seen["Bearer upstream-token-1"] != 100 {
		t.Errorf("upstream saw %v, want 100 calls with the fetched token", seen)
	}
	e.assertNowhere("upstream-token-1")
	e.assertNowhere(toolSecret)

	// Shortly before expiry the token is replaced, once.
	e.clk.Add(time.Hour - refreshBefore + time.Second)
	if got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil); got.status != 200 {
		t.Fatalf("got %d", got.status)
	}
	if n := fetches.Load(); n != 2 {
		t.Errorf("got %d fetches after expiry, want 2", n)
	}
}

// testPKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, as PEM.
type testPKI struct {
	caPEM, serverCert, serverKey, clientCert, clientKey []byte
	pool                                                *x509.CertPool
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	mk := func() (*ecdsa.PrivateKey, []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		return k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	caKey, _ := mk()
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p := &testPKI{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), pool: x509.NewCertPool()}
	p.pool.AddCert(caCert)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, server bool) ([]byte, []byte) {
		k, kp := mk()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn}, NotBefore: now.Add(-time.Hour),
			NotAfter: now.Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature}
		if server {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp
	}
	p.serverCert, p.serverKey = leaf(2, "tool", x509.ExtKeyUsageServerAuth, true)
	p.clientCert, p.clientKey = leaf(3, "applianced", x509.ExtKeyUsageClientAuth, false)
	return p
}

func TestTLSClientCertificateAndCA(t *testing.T) {
	pki := newPKI(t)
	srvCert, err := tls.X509KeyPair(pki.serverCert, pki.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	var clientCN atomic.Value
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		clientCN.Store(r.TLS.PeerCertificates[0].Subject.CommonName)
		jsonOK(`{"ok": true}`)(w, r)
	}))
	up.TLS = &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pki.pool}
	up.StartTLS()
	t.Cleanup(up.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pki.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tl := stdTool(up.URL)
	tl.CAFile = caFile
	tl.Auth = ToolAuth{Type: AuthTLSClient, Secret: "client-cert"}
	certJSON, _ := json.Marshal(map[string]string{"cert": string(pki.clientCert), "key": string(pki.clientKey)})
	noCA := stdTool(up.URL)
	noCA.Name = "noca"
	noCA.Auth = tl.Auth
	e := newEnv(t, envOpts{tools: []Tool{tl, noCA}, secrets: map[string]string{"client-cert": string(certJSON)}})
	e.tok.add(agentToken, Principal{Agent: "bot", Scopes: allScopes()}, "tickets", "noca")

	if got := e.do("GET", "/v1/tools/tickets/tickets/1", agentToken, nil, nil); got.status != 200 {
		t.Fatalf("got %d %s, want 200 over mutual TLS", got.status, got.body)
	}
	if cn, _ := clientCN.Load().(string); cn != "applianced" {
		t.Errorf("upstream saw client certificate %q", cn)
	}
	// Without ca_file the system roots do not know the tool's CA.
	if got := e.do("GET", "/v1/tools/noca/tickets/1", agentToken, nil, nil); got.status != http.StatusBadGateway {
		t.Errorf("got %d %s, want 502 when the upstream's certificate is not trusted", got.status, got.body)
	}
	e.assertNowhere(strings.Split(string(pki.clientKey), "\n")[1])
}
