package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// The tool proxy must see the path the agent sent, so that it refuses
// "..", "." and "//" itself: the mux's redirect to the cleaned path would let
// /v1/tools/t/a/../b reach /v1/tools/t/b.
func TestToolPathsReachTheProxyUncleaned(t *testing.T) {
	d := &daemon{api: http.NewServeMux()}
	var got string
	d.api.HandleFunc("/v1/tools/", func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.Path
		w.WriteHeader(http.StatusTeapot)
	})
	d.api.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotFound) })
	for _, path := range []string{"/v1/tools/t/a/../b", "/v1/tools//etc/passwd", "/v1/tools/t/./x", "/v1/tools/t/x"} {
		got = ""
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "http://api"+path, nil)
		req.URL.Path = path // httptest does not clean, but be explicit
		d.apiRoot().ServeHTTP(rec, req)
		if rec.Code != http.StatusTeapot || got != path {
			t.Errorf("%s: got status %d and path %q at the proxy, want the proxy to get %q", path, rec.Code, got, path)
		}
	}
	// Other paths keep the mux's behaviour.
	rec := httptest.NewRecorder()
	d.apiRoot().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://api/healthz", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("/healthz on this mux: got %d, want 404", rec.Code)
	}
}
