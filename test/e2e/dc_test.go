//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/samba"
)

const dcPassword = "E2e-Passw0rd!"

// startDC provisions a Samba AD DC with a user alice in ai-users, or
// returns nil (and says why) when Samba cannot run here.
func startDC(t *testing.T) *samba.DC {
	t.Helper()
	if err := samba.Available(); err != nil {
		t.Logf("no AD DC for this run (the directory steps are skipped): %v", err)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dc, err := samba.Start(ctx, samba.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dc.Stop)
	if _, err := dc.AddUser(ctx, samba.User{Name: "alice", Password: dcPassword}); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.AddGroup(ctx, "ai-users", "alice"); err != nil {
		t.Fatal(err)
	}
	return dc
}

// linkDC joins the container's network namespace to the DC's with a veth
// pair of their own (the host's namespace is not involved), copies the DC's
// CA to /root/ad-ca.pem in the container, and returns the LDAPS URL the
// container reaches the DC at.
func linkDC(t *testing.T, b *box, dc *samba.DC) string {
	t.Helper()
	n := os.Getpid() % 250
	dcIP, boxIP := fmt.Sprintf("10.233.%d.1", n), fmt.Sprintf("10.233.%d.2", n)
	boxIf, dcIf := fmt.Sprintf("e2edc%d", n), fmt.Sprintf("e2edcp%d", n)
	for _, args := range [][]string{
		{"link", "add", boxIf, "netns", strconv.Itoa(b.leader), "type", "veth", "peer", "name", dcIf, "netns", dc.Netns},
		{"-n", dc.Netns, "addr", "add", dcIP + "/30", "dev", dcIf},
		{"-n", dc.Netns, "link", "set", dcIf, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	b.must(t, "ip addr add "+boxIP+"/30 dev "+boxIf+" && ip link set "+boxIf+" up")
	ca, err := os.ReadFile(dc.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.root, "root/ad-ca.pem"), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	return "ldaps://" + dcIP + ":636"
}
