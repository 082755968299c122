// Package admin is the admin socket: HTTP/1.1 with JSON bodies over a Unix
// socket, where the caller's identity is the kernel's peer credentials
// (SO_PEERCRED and SO_PEERGROUPS), never a password or a token.
//
// Only uid 0 and members of the configured admin group are served, and the
// daemon's own user for the few verbs its unit runs (ExecReload); every
// refusal is audited. Handlers read the caller with CallerFrom.
//
// Conventions for handlers, so every verb behaves alike:
//   - paths are "/admin/v1/<area>/<verb>", e.g. POST /admin/v1/secret/put;
//   - request and response bodies are JSON; errors are
//     {"error": "...", "error_description": "..."} written with WriteError;
//   - a verb that changes something audits before it answers.
package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/applianced/applianced/audit"
)

// Caller is the peer on the other end of an admin connection, as the kernel
// reported it when the connection was made.
type Caller struct {
	UID    int
	GID    int
	PID    int
	Groups []int // supplementary groups (SO_PEERGROUPS)
}

type callerKey struct{}

// CallerFrom returns the peer of the admin request in ctx.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// Actor returns the caller as an audit actor.
func (c Caller) Actor() audit.Actor {
	uid := c.UID
	return audit.Actor{UID: &uid, PID: c.PID}
}

// ServerConfig configures the admin socket server.
type ServerConfig struct {
	AdminGID int            // members of this group are allowed; -1 allows root only
	Handler  http.Handler   // the verbs; see the package conventions
	Audit    audit.Appender // refusals are recorded here
	Logger   *slog.Logger
	// ServiceUID is the daemon's own uid, allowed ServiceVerbs only
	// ("METHOD /path"): `systemctl reload` runs `applianced config reload`
	// as the service's user. 0 adds no one.
	ServiceUID   int
	ServiceVerbs []string
}

// Server serves admin verbs on a Unix listener.
type Server struct {
	cfg      ServerConfig
	srv      *http.Server
	stopping chan struct{} // closed when Shutdown begins
	stopOnce sync.Once
}

type stoppingKey struct{}

// StreamContext is r's context, also ended when the server begins to shut
// down: a handler that streams until the client goes away (audit tail -f)
// uses it, so that it ends at once at shutdown instead of holding the
// drain until its timeout. Other verbs keep r.Context(): they finish.
func StreamContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	if ch, ok := r.Context().Value(stoppingKey{}).(chan struct{}); ok {
		go func() {
			select {
			case <-ch:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	return ctx, cancel
}

// NewServer returns a server for cfg. It does not listen.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, stopping: make(chan struct{})}
	s.srv = &http.Server{
		Handler:           s.guard(cfg.Handler),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(context.Background(), stoppingKey{}, s.stopping)
		},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			uc, ok := c.(*net.UnixConn)
			if !ok {
				return ctx
			}
			caller, err := PeerCaller(uc)
			if err != nil {
				cfg.Logger.Warn("admin: reading peer credentials", "err", err)
				return ctx
			}
			return context.WithValue(ctx, callerKey{}, caller)
		},
	}
	return s
}

// Allowed reports whether c may use the admin socket.
func (s *Server) Allowed(c Caller) bool {
	if c.UID == 0 {
		return true
	}
	if s.cfg.AdminGID < 0 {
		return false
	}
	if c.GID == s.cfg.AdminGID {
		return true
	}
	for _, g := range c.Groups {
		if g == s.cfg.AdminGID {
			return true
		}
	}
	return false
}

// serviceMay reports whether r is one of the verbs the service's own user
// may call.
func (s *Server) serviceMay(c Caller, r *http.Request) bool {
	return s.cfg.ServiceUID != 0 && c.UID == s.cfg.ServiceUID && slices.Contains(s.cfg.ServiceVerbs, r.Method+" "+r.URL.Path)
}

func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := CallerFrom(r.Context())
		if !ok || !(s.Allowed(c) || s.serviceMay(c, r)) {
			ev := &audit.Event{
				Type: "admin.refused", Severity: audit.SeverityWarn, Action: r.Method + " " + r.URL.Path,
				Outcome: audit.OutcomeDenied, Reason: "peer is neither root nor in the admin group", Source: "unix",
			}
			if ok {
				ev.Actor = c.Actor()
			}
			if s.cfg.Audit != nil {
				if _, err := s.cfg.Audit.Append(r.Context(), ev); err != nil {
					s.cfg.Logger.Error("admin: auditing a refusal", "err", err)
				}
			}
			WriteError(w, http.StatusForbidden, "access_denied",
				"the admin socket is for root and members of the admin group")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Serve accepts connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, ends the streams (StreamContext) and waits for
// in-flight verbs until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stopping) })
	return s.srv.Shutdown(ctx)
}

// ErrorBody is the JSON error shape of the admin socket and the HTTP API.
type ErrorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// WriteError writes a JSON error with status.
func WriteError(w http.ResponseWriter, status int, code, description string) {
	WriteJSON(w, status, ErrorBody{Error: code, Description: description})
}

// WriteJSON writes v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// MaxRequestBytes bounds an admin request body.
const MaxRequestBytes = 1 << 20

// DecodeJSON reads r's body into v strictly (unknown fields are an error).
// On failure it has already written a 400 and returns false.
func DecodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		WriteError(w, http.StatusBadRequest, "invalid_request", "malformed request body: "+err.Error())
		return false
	}
	if dec.More() {
		WriteError(w, http.StatusBadRequest, "invalid_request", "malformed request body: trailing data")
		return false
	}
	return true
}

// Error is a refusal or failure answered by the daemon.
type Error struct {
	Status      int
	Code        string
	Description string
}

func (e *Error) Error() string {
	if e.Description != "" {
		return e.Description
	}
	return e.Code + " (HTTP " + strconv.Itoa(e.Status) + ")"
}

// Client calls admin verbs on the daemon's socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	d := net.Dialer{Timeout: 5 * time.Second}
	return &Client{Socket: path, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}}}
}

// Call sends in (JSON, nil for no body) to method path and decodes the answer
// into out (nil to discard). A non-2xx answer is returned as *Error.
func (c *Client) Call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("admin: encoding request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://admin"+path, body)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin: is the daemon running? connecting to %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("admin: reading answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		_ = json.Unmarshal(data, &eb)
		if eb.Error == "" {
			eb.Error = http.StatusText(resp.StatusCode)
		}
		return &Error{Status: resp.StatusCode, Code: eb.Error, Description: eb.Description}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("admin: decoding answer: %w", err)
		}
	}
	return nil
}

// Stream sends GET path and calls fn with each line of the answer until the
// daemon ends it or ctx ends.
func (c *Client) Stream(ctx context.Context, path string, fn func(line []byte) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://admin"+path, nil)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin: is the daemon running? connecting to %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var eb ErrorBody
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&eb)
		return &Error{Status: resp.StatusCode, Code: eb.Error, Description: eb.Description}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("admin: reading stream: %w", err)
	}
	return nil
}
