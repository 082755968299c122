package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// peerHelperEnv names the socket the helper process posts to.
const peerHelperEnv = "BROKER_PEER_HELPER_SOCKET"

// TestMain runs the test binary as the client process of
// TestAnotherUIDOnSocket when peerHelperEnv is set.
func TestMain(m *testing.M) {
	if sock := os.Getenv(peerHelperEnv); sock != "" {
		peerHelper(sock)
	}
	os.Exit(m.Run())
}

// peerHelper posts a client_credentials request to sock and prints the answer.
func peerHelper(sock string) {
	hc := unixClient(sock)
	resp, err := hc.Post("http://agent/oauth2/token", "application/x-www-form-urlencoded",
		strings.NewReader(url.Values{"grant_type": {"client_credentials"}}.Encode()))
	if err != nil {
		fmt.Printf("ERROR %v\n", err)
		os.Exit(3)
	}
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("STATUS %d\n%s", resp.StatusCode, body)
	os.Exit(0)
}

// TestAnotherUIDOnSocket: a process of a uid no agent is registered for
// connects to the agent socket and asks for a token: invalid_client. The
// client is a real separate process whose credentials the kernel reports.
func TestAnotherUIDOnSocket(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (CAP_SETUID) to start the client process as another uid")
	}
	e := newEnv(t, nil)
	e.serveSocket()
	// The test binary must be executable by the other uid: copy it next to
	// the socket (whose directory is 0755).
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(e.sock), "client.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{peerHelperEnv + "=" + e.sock, "HOME=/", "GOCOVERDIR="}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper process: %v\n%s", err, out.String())
	}
	status, body, _ := strings.Cut(out.String(), "\n")
	var got map[string]any
	_ = json.Unmarshal([]byte(strings.TrimSpace(body)), &got)
	if status != fmt.Sprintf("STATUS %d", http.StatusUnauthorized) || got["error"] != "invalid_client" {
		t.Fatalf("got %q %v, want 401 invalid_client", status, got)
	}
	ev, ok := e.lastEvent("token.deny")
	if !ok || ev.Actor.UID == nil || *ev.Actor.UID != nobody {
		t.Fatalf("denial not audited with the peer uid: %+v", ev)
	}
	// The same request from this process's uid (agent "bot") succeeds.
	if a := e.agentToken(""); a.status != 200 {
		t.Fatalf("own uid: got %d %v", a.status, a.body)
	}
}
