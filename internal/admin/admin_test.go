package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
)

const (
	clientEnv     = "APPLIANCED_ADMIN_TEST_CLIENT"
	clientPathEnv = "APPLIANCED_ADMIN_TEST_PATH"
)

func TestMain(m *testing.M) {
	if sock := os.Getenv(clientEnv); sock != "" {
		// Child: call one verb and print the HTTP status (or the dial error).
		var out map[string]any
		path := "/admin/v1/ping"
		if p := os.Getenv(clientPathEnv); p != "" {
			path = p
		}
		err := NewClient(sock).Call(context.Background(), http.MethodGet, path, nil, &out)
		if ae, ok := err.(*Error); ok {
			fmt.Print(ae.Status)
			os.Exit(0)
		}
		if err != nil {
			fmt.Print("error: ", err)
			os.Exit(0)
		}
		fmt.Print(200)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startAdmin serves a ping verb on a world-connectable socket, so that the
// daemon's own peer-credential check (not the file mode) is what is tested.
func startAdmin(t *testing.T, adminGID int, serviceUID ...int) (sock string, j *audit.Journal) {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	j, err := audit.Open(filepath.Join(dir, "journal"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	mux := http.NewServeMux()
	ping := func(w http.ResponseWriter, r *http.Request) {
		c, _ := CallerFrom(r.Context())
		WriteJSON(w, http.StatusOK, map[string]int{"uid": c.UID})
	}
	mux.HandleFunc("GET /admin/v1/ping", ping)
	mux.HandleFunc("GET /admin/v1/service/ping", ping)
	sock = filepath.Join(dir, "admin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o666)
	cfg := ServerConfig{AdminGID: adminGID, Handler: mux, Audit: j}
	if len(serviceUID) > 0 {
		cfg.ServiceUID, cfg.ServiceVerbs = serviceUID[0], []string{"GET /admin/v1/service/ping"}
	}
	srv := NewServer(cfg)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return sock, j
}

// worldExecutable copies the test binary where another uid may run it (the
// build dir is private to root).
func worldExecutable(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "admin-client")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

func runClient(t *testing.T, exe, sock string, cred *syscall.Credential, path ...string) string {
	t.Helper()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), clientEnv+"="+sock)
	if len(path) > 0 && path[0] != "" {
		cmd.Env = append(cmd.Env, clientPathEnv+"="+path[0])
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as %+v: %v: %s", cred, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestAdminSocketPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start clients as other uids (capability CAP_SETUID absent)")
	}
	const adminGID, otherUID, serviceUID = 4242, 65534, 4343
	cases := []struct {
		name string
		cred *syscall.Credential
		path string
		want string
	}{
		{"the service's own user is accepted for its verbs", &syscall.Credential{Uid: serviceUID, Gid: serviceUID, Groups: []uint32{}}, "/admin/v1/service/ping", "200"},
		{"the service's own user is refused the other verbs", &syscall.Credential{Uid: serviceUID, Gid: serviceUID, Groups: []uint32{}}, "/admin/v1/ping", "403"},
		{"root is accepted", nil, "", "200"},
		{"another uid is refused", &syscall.Credential{Uid: otherUID, Gid: otherUID, Groups: []uint32{}}, "", "403"},
		{"a member of the admin group is accepted", &syscall.Credential{Uid: otherUID, Gid: otherUID, Groups: []uint32{adminGID}}, "", "200"},
		{"the admin group as primary group is accepted", &syscall.Credential{Uid: otherUID, Gid: adminGID, Groups: []uint32{}}, "", "200"},
	}
	exe := worldExecutable(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sock, j := startAdmin(t, adminGID, serviceUID)
			if got := runClient(t, exe, sock, tc.cred, tc.path); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
			refusals := countEvents(t, j, "admin.refused")
			if tc.want == "403" && refusals != 1 {
				t.Fatalf("got %d admin.refused events, want 1", refusals)
			}
			if tc.want == "200" && refusals != 0 {
				t.Fatalf("got %d admin.refused events for an allowed caller, want 0", refusals)
			}
		})
	}
}

func countEvents(t *testing.T, j *audit.Journal, typ string) int {
	t.Helper()
	n := 0
	last := j.LastSeq()
	if last == 0 {
		return 0
	}
	r, _ := j.Reader(1)
	defer r.Close()
	for i := uint64(1); i <= last; i++ {
		e, err := r.Next(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if e.Event.Type == typ {
			if e.Event.Actor.UID == nil {
				t.Fatalf("refusal event without the peer's uid: %s", e.Canonical)
			}
			n++
		}
	}
	return n
}

func TestMalformedRequestIsRefusedCleanly(t *testing.T) {
	sock, _ := startAdmin(t, -1)
	c := NewClient(sock)
	var out json.RawMessage
	err := c.Call(context.Background(), http.MethodGet, "/admin/v1/ping", nil, &out)
	if os.Geteuid() == 0 && err != nil {
		t.Fatalf("root ping: %v", err)
	}
	// A request that is not HTTP at all gets an HTTP 400 and the connection closed.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("\x00\x01garbage\r\n\r\n"))
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 400") {
		t.Fatalf("got %q, want an HTTP 400", buf[:n])
	}
}

// A stream that would run until the client leaves (audit tail -f) ends
// cleanly when the server shuts down, so Shutdown does not wait out its
// drain deadline; an ordinary verb in flight still finishes.
func TestShutdownEndsStreamsAndFinishesVerbs(t *testing.T) {
	dir := t.TempDir()
	started, verbGo := make(chan struct{}, 2), make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/v1/stream", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := StreamContext(r)
		defer cancel()
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		started <- struct{}{}
		<-ctx.Done()
	})
	mux.HandleFunc("GET /admin/v1/slow", func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-verbGo
		WriteJSON(w, http.StatusOK, map[string]string{"done": "yes"})
	})
	sock := filepath.Join(dir, "admin.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerConfig{AdminGID: -1, Handler: mux})
	go srv.Serve(l)
	c := NewClient(sock)
	streamDone := make(chan error, 1)
	var lines []string
	go func() {
		streamDone <- c.Stream(context.Background(), "/admin/v1/stream", func(b []byte) error { lines = append(lines, string(b)); return nil })
	}()
	verbDone := make(chan error, 1)
	var reply map[string]string
	go func() { verbDone <- c.Call(context.Background(), "GET", "/admin/v1/slow", nil, &reply) }()
	<-started
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	if err := <-streamDone; err != nil || len(lines) != 1 || lines[0] != "first" {
		t.Fatalf("the stream ended with %v after %q, want a clean end after its first line", err, lines)
	}
	close(verbGo)
	if err := <-verbDone; err != nil || reply["done"] != "yes" {
		t.Fatalf("the verb in flight: %v %v, want it finished", err, reply)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v, want it done once the verb finished", err)
	}
}
