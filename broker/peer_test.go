package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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
	if spec := os.Getenv(loadgenEnv); spec != "" {
		loadgen(spec)
	}
	code := m.Run()
	stopSharedDC()
	os.Exit(code)
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

const nobody = 65534

// runPeer runs this test binary as uid nobody (optionally inside the
// cgroup open as cgroupFD) to ask the agent socket for a token, and returns
// the HTTP status line and the decoded answer.
func runPeer(t *testing.T, e *env, cgroupFD int) (string, map[string]any) {
	t.Helper()
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = []string{peerHelperEnv + "=" + e.sock, "HOME=/", "GOCOVERDIR="}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if cgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgroupFD
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper process: %v\n%s", err, out.String())
	}
	status, body, _ := strings.Cut(out.String(), "\n")
	var got map[string]any
	_ = json.Unmarshal([]byte(strings.TrimSpace(body)), &got)
	return status, got
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
	status, got := runPeer(t, e, -1)
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

// cgroup2Mount returns where the unified cgroup hierarchy is mounted.
func cgroup2Mount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if ok && strings.HasPrefix(post, "cgroup2 ") {
			if f := strings.Fields(pre); len(f) >= 5 {
				return f[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 mount")
}

// TestSystemdUnitOnSocket: an agent registered by systemd_unit is the
// process running in that unit's cgroup, whatever its uid; the client
// process is started straight into a real cgroup named like a unit.
func TestSystemdUnitOnSocket(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (CAP_SETUID, cgroup creation)")
	}
	mnt, err := cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy mounted: %v", err)
	}
	unit := fmt.Sprintf("unitbot-%d.service", os.Getpid())
	parent := filepath.Join(mnt, fmt.Sprintf("applianced-test-%d.slice", os.Getpid()))
	dir := filepath.Join(parent, unit)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cannot create a cgroup here: %v", err)
	}
	t.Cleanup(func() { os.Remove(dir); os.Remove(parent) })
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)

	e := newEnv(t, func(c *Config) {
		c.Agents = append(c.Agents, Agent{Name: "unitbot", Roles: []string{"reader"}, SystemdUnit: unit})
	})
	e.serveSocket()
	status, got := runPeer(t, e, fd)
	if status != "STATUS 200" {
		t.Fatalf("in the unit's cgroup: got %q %v, want a token", status, got)
	}
	raw, _ := got["access_token"].(string)
	p, err := e.b.Verify(context.Background(), raw, e.b.ToolAudience())
	if err != nil || p.Agent != "unitbot" {
		t.Fatalf("token: got %+v, %v; want agent unitbot", p, err)
	}
	// The same uid outside the cgroup is nobody's agent.
	if status, got := runPeer(t, e, -1); status != "STATUS 401" || got["error"] != "invalid_client" {
		t.Fatalf("outside the cgroup: got %q %v", status, got)
	}
}
