// Package demotool is the small ticketing API that `applianced dev` starts
// on loopback to show the credential-injection proxy at work: it demands an
// API key the agent never sees, has one route that needs a human approval
// (DELETE), and one ticket whose notes hold a card number that DLP redacts.
//
// It is a demonstration, not a test double: it refuses every request that
// lacks the key, exactly as a real internal tool would.
package demotool

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/applianced/applianced/broker/toolproxy"
)

// KeyHeader is the header the demo tool reads its API key from.
const KeyHeader = "X-Api-Key"

// Server is a running demo tool.
type Server struct {
	// URL is the base URL, e.g. "http://127.0.0.1:41234/api".
	URL string
	// Secret is the API key; put it into the vault, never into the agent.
	Secret []byte

	srv *http.Server
	mu  sync.Mutex
	tk  map[int]ticket
	nid int
}

type ticket struct {
	ID      int       `json:"id"`
	Title   string    `json:"title"`
	Status  string    `json:"status"`
	Created time.Time `json:"created_at"`
	Notes   string    `json:"notes,omitempty"`
}

// Start listens on a loopback port and serves until ctx ends or Close.
func Start(ctx context.Context) (*Server, error) {
	key := make([]byte, 24)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("demotool: %w", err)
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demotool: listening: %w", err)
	}
	s := &Server{
		URL:    "http://" + l.Addr().String() + "/api",
		Secret: []byte("demo-" + hex.EncodeToString(key)),
		tk:     map[int]ticket{},
	}
	now := time.Now().UTC().Truncate(time.Second)
	s.add(ticket{Title: "Printer on floor 2 jams", Status: "open", Created: now.Add(-3 * time.Hour)})
	s.add(ticket{Title: "Refund for order 1042", Status: "open", Created: now.Add(-time.Hour),
		Notes: "customer paid with card 4111 1111 1111 1111, refund to IBAN DE89 3704 0044 0532 0130 00"})
	s.add(ticket{Title: "VPN drops every hour", Status: "closed", Created: now.Add(-26 * time.Hour)})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/tickets", s.list)
	mux.HandleFunc("POST /api/tickets", s.create)
	mux.HandleFunc("GET /api/tickets/{id}", s.get)
	mux.HandleFunc("DELETE /api/tickets/{id}", s.delete)
	s.srv = &http.Server{Handler: s.auth(mux), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(l) }()
	go func() {
		<-ctx.Done()
		_ = s.Close()
	}()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() error {
	err := s.srv.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Tool returns the [[tool]] entry for the demo tool, its credential in the
// vault secret secretName: GET is free (tickets:read, DLP redact), POST
// needs tickets:create, DELETE needs tickets:delete and an approval.
func (s *Server) Tool(secretName string) toolproxy.Tool {
	return toolproxy.Tool{
		Name:    "tickets",
		BaseURL: s.URL,
		Auth:    toolproxy.ToolAuth{Type: toolproxy.AuthHeader, Name: KeyHeader, Secret: secretName},
		Routes: []toolproxy.Route{
			{Method: "GET", Path: "/tickets", Scope: "tickets:read", DLP: toolproxy.DLPRedact},
			{Method: "GET", Path: "/tickets/*", Scope: "tickets:read", DLP: toolproxy.DLPRedact},
			{Method: "POST", Path: "/tickets", Scope: "tickets:create"},
			{Method: "DELETE", Path: "/tickets/*", Scope: "tickets:delete", Approval: toolproxy.ApprovalRequired},
		},
	}
}

func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get(KeyHeader)
		if subtle.ConstantTimeCompare([]byte(got), s.Secret) != 1 {
			w.Header().Set("WWW-Authenticate", `ApiKey realm="demo tickets"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong " + KeyHeader})
			return
		}
		http.SetCookie(w, &http.Cookie{Name: "demo_session", Value: "s-" + strconv.FormatInt(time.Now().UnixNano(), 36), HttpOnly: true})
		next.ServeHTTP(w, r)
	})
}

func (s *Server) add(t ticket) ticket {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nid++
	t.ID = s.nid
	s.tk[t.ID] = t
	return t
}

func (s *Server) list(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	out := make([]ticket, 0, len(s.tk))
	for i := 1; i <= s.nid; i++ {
		if t, ok := s.tk[i]; ok {
			t.Notes = ""
			out = append(out, t)
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"tickets": out})
}

func (s *Server) lookup(w http.ResponseWriter, r *http.Request) (int, bool) {
	id, err := strconv.Atoi(r.PathValue("id"))
	s.mu.Lock()
	_, ok := s.tk[id]
	s.mu.Unlock()
	if err != nil || !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such ticket"})
		return 0, false
	}
	return id, true
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	id, ok := s.lookup(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	t := s.tk[id]
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, t)
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Title string `json:"title"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil || strings.TrimSpace(in.Title) == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": `want {"title": "..."}`})
		return
	}
	t := s.add(ticket{Title: in.Title, Status: "open", Created: time.Now().UTC().Truncate(time.Second)})
	writeJSON(w, http.StatusCreated, t)
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	id, ok := s.lookup(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	delete(s.tk, id)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"deleted": id})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
