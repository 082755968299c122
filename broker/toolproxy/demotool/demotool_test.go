package demotool

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestDemoToolDemandsItsKey(t *testing.T) {
	s, err := Start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tests := []struct {
		name, method, path, key string
		want                    int
		wantBody                string
	}{
		{"no key", "GET", "/tickets", "", 401, "missing or wrong"},
		{"wrong key", "GET", "/tickets", "demo-wrong", 401, "missing or wrong"},
		{"list", "GET", "/tickets", string(s.Secret), 200, "Printer"},
		{"ticket with a card", "GET", "/tickets/2", string(s.Secret), 200, "4111 1111 1111 1111"},
		{"delete", "DELETE", "/tickets/3", string(s.Secret), 200, `"deleted":3`},
		{"gone", "GET", "/tickets/3", string(s.Secret), 404, "no such ticket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, s.URL+tt.path, nil)
			if tt.key != "" {
				req.Header.Set(KeyHeader, tt.key)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want || !strings.Contains(string(b), tt.wantBody) {
				t.Errorf("got %d %s, want %d with %q", resp.StatusCode, b, tt.want, tt.wantBody)
			}
		})
	}
	tool := s.Tool("tickets-key")
	if errs := tool.Validate(); len(errs) != 0 {
		t.Errorf("the demo [[tool]] does not validate: %v", errs)
	}
}
