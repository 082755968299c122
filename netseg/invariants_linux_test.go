package netseg

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/applianced/applianced/audit"
	"github.com/applianced/applianced/internal/testenv/netns"
)

// foreignRuleset is what other software on the host keeps in nftables: a
// site table, a table with our name in another family, and one whose name
// only starts with ours. None of it is ours to touch.
const foreignRuleset = `table inet sitefw {
	set admins {
		type ipv4_addr
		elements = { 10.99.0.5, 10.99.0.6 }
	}
	chain input {
		type filter hook input priority 10; policy accept;
		ip saddr @admins counter accept
	}
}
table ip applianced {
	chain output {
		type filter hook output priority 50; policy accept;
		counter
	}
}
table inet applianced_old {
	chain keep {
		counter
	}
}
`

// nftOut runs nft in ns as another process and returns its output.
func nftOut(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	out, err := nftTry(t, ns, args...)
	if err != nil {
		t.Fatalf("nsenter nft %v: %v\n%s", args, err, out)
	}
	return out
}

// nftTry is nftOut that returns nft's failure (its output says why).
func nftTry(t *testing.T, ns *netns.NS, args ...string) (string, error) {
	t.Helper()
	fd, err := unix.Dup(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "netns")
	defer f.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/proc/self/fd/3", "nft"}, args...)...)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestOnlyOurTableIsTouched: apply, an unconfirmed apply rolled back, a
// drift repair and down leave every other table of the namespace exactly as
// it was (our name in another family, a name that only starts with ours,
// and a site table with a set and a hooked chain), while inet applianced
// comes and goes.
func TestOnlyOurTableIsTouched(t *testing.T) {
	for _, tool := range []string{"nft", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s not installed", tool)
		}
	}
	r := startLab(t)
	ai := r.lab.AI
	path := filepath.Join(t.TempDir(), "foreign.nft")
	if err := os.WriteFile(path, []byte(foreignRuleset), 0o600); err != nil {
		t.Fatal(err)
	}
	nftOut(t, ai, "-f", path)
	foreign := func() string {
		t.Helper()
		var b strings.Builder
		for _, tb := range []string{"inet sitefw", "ip applianced", "inet applianced_old"} {
			// -s: no counter values, which move with the lab's traffic.
			out, _ := nftTry(t, ai, append([]string{"-s", "list", "table"}, strings.Fields(tb)...)...)
			b.WriteString(out)
		}
		return b.String()
	}
	ours := func() bool {
		t.Helper()
		return strings.Contains(nftOut(t, ai, "list", "tables"), "table inet applianced\n")
	}
	before := foreign()
	if !strings.Contains(before, "10.99.0.6") || !strings.Contains(before, "hook output") {
		t.Fatalf("the foreign ruleset did not load:\n%s", before)
	}
	check := func(step string, wantOurs bool) {
		t.Helper()
		if got := foreign(); got != before {
			t.Errorf("after %s the other tables changed:\n got %s\nwant %s", step, got, before)
		}
		if got := ours(); got != wantOurs {
			t.Errorf("after %s: table inet applianced present %v, want %v", step, got, wantOurs)
		}
	}

	ctx := context.Background()
	cfg, needs := labConfig()
	if _, err := r.m.Plan(ctx, cfg, needs, ""); err != nil {
		t.Fatal(err)
	}
	check("plan", false)
	if _, err := r.m.Apply(ctx, cfg, needs, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	check("apply", true)

	cfg2, _ := labConfig()
	cfg2.Egress[0].To = append(cfg2.Egress[0].To, "10.10.0.20")
	if _, err := r.m.Apply(ctx, cfg2, needs, ApplyOptions{ConfirmWithin: time.Minute}); err != nil {
		t.Fatal(err)
	}
	check("an apply awaiting confirmation", true)
	if err := r.m.Rollback(ctx, audit.Actor{}, ""); err != nil {
		t.Fatal(err)
	}
	check("rollback", true)

	nftOut(t, ai, "flush", "chain", "inet", "applianced", "output")
	evs := r.events(t, func(evs []audit.Event) bool { return len(ofType(evs, "net.drift")) > 0 })
	if len(ofType(evs, "net.drift")) == 0 {
		t.Fatal("the drift was not repaired")
	}
	check("a drift repair", true)

	if err := r.m.Down(ctx, audit.Actor{}, ""); err != nil {
		t.Fatal(err)
	}
	check("down", false)
}
