package vault

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
)

// The crash test re-runs this test binary as a child that does puts and
// prints an acknowledgement after each one returns; the parent SIGKILLs it
// at a random point and checks that every acknowledged put survived.

const (
	crashEnvDir  = "APPLIANCED_VAULT_CRASH_DIR"
	crashEnvRun  = "APPLIANCED_VAULT_CRASH_RUN"
	crashPuts    = 10000
	crashWriters = 8
	crashNames   = 25 // names per writer, so puts are also new versions
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnvDir); dir != "" {
		os.Exit(crashChild(dir, os.Getenv(crashEnvRun)))
	}
	if dir := os.Getenv(upgradeCrashEnv); dir != "" {
		os.Exit(upgradeCrashChild(dir))
	}
	os.Exit(m.Run())
}

// crashChild opens the vault in dir and does crashPuts puts with
// crashWriters goroutines, writing "ack NAME VALUE" after each.
func crashChild(dir, run string) int {
	ctx := context.Background()
	key, _, err := LoadMasterKey(Config{MasterKeyFile: filepath.Join(dir, "master.key")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	j, err := audit.Open(filepath.Join(dir, "journal"), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	v, err := Open(ctx, filepath.Join(dir, DefaultFile), key, Config{}, &Options{Audit: j, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var mu sync.Mutex
	say := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = os.Stdout.WriteString(s) // unbuffered: one write per line
	}
	say("ready\n")
	var wg sync.WaitGroup
	for g := 0; g < crashWriters; g++ {
		wg.Go(func() {
			for i := 0; i < crashPuts/crashWriters; i++ {
				name := fmt.Sprintf("g%d-k%02d", g, i%crashNames)
				value := fmt.Sprintf("r%s-g%d-i%05d", run, g, i)
				if _, err := v.Put(ctx, audit.Actor{}, PutRequest{Name: name, Type: TypePassword, Value: []byte(value)}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				say("ack " + name + " " + value + "\n")
			}
		})
	}
	wg.Wait()
	say("done\n")
	return 0
}

func TestCrashDurability(t *testing.T) {
	dir := t.TempDir()
	if _, err := CreateMasterKeyFile(filepath.Join(dir, "master.key")); err != nil {
		t.Fatal(err)
	}
	key, _, err := LoadMasterKey(Config{MasterKeyFile: filepath.Join(dir, "master.key")})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	acked := map[string]string{} // name -> newest acknowledged value
	runs, killedMidway, total := 20, 0, 0
	for run := 0; run < runs; run++ {
		killAt := rng.IntN(crashPuts / 4) // acks seen before the kill
		n, finished := runCrashChild(t, dir, run, killAt, acked)
		total += n
		if !finished {
			killedMidway++
		}

		// Reopen: Open runs bbolt's consistency check and unseals.
		j, err := audit.Open(filepath.Join(dir, "journal"), nil)
		if err != nil {
			t.Fatalf("run %d: the journal does not reopen after SIGKILL: %v", run, err)
		}
		v, err := Open(context.Background(), filepath.Join(dir, DefaultFile), key, Config{}, &Options{Audit: j, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			j.Close()
			t.Fatalf("run %d: the vault does not reopen after SIGKILL: %v", run, err)
		}
		lost := 0
		for name, want := range acked {
			got, err := v.ForInternal(context.Background(), "crash-test", name)
			// A later put of the same name may have landed unacknowledged;
			// values sort by run and sequence.
			if err != nil || string(got) < want {
				lost++
				if lost <= 5 {
					t.Errorf("run %d: %s = %q, %v; acknowledged %q", run, name, got, err, want)
				}
			}
		}
		if lost > 0 {
			t.Fatalf("run %d (killed after %d acks): %d acknowledged puts lost", run, killAt, lost)
		}
		v.Close()
		j.Close()
		checkConsistency(t, filepath.Join(dir, DefaultFile))
	}
	t.Logf("%d runs, %d killed before finishing, %d acknowledged puts, all readable", runs, killedMidway, total)
	if total == 0 || killedMidway < runs/2 {
		t.Fatalf("the test did not exercise crashes: %d acks, %d of %d runs killed midway", total, killedMidway, runs)
	}
}

// runCrashChild starts a child for run, kills it with SIGKILL once it has
// acknowledged killAt puts, and records every acknowledgement it printed.
func runCrashChild(t *testing.T, dir string, run, killAt int, acked map[string]string) (acks int, finished bool) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnvDir+"="+dir, crashEnvRun+"="+fmt.Sprintf("%03d", run))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
		}
	})
	timer := time.AfterFunc(2*time.Minute, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "done":
			finished = true
		case strings.HasPrefix(line, "ack "):
			f := strings.Fields(line)
			if len(f) != 3 {
				t.Fatalf("child printed %q", line)
			}
			acked[f[1]] = f[2]
			acks++
		}
		if !killed && acks >= killAt && line != "ready" {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	err = cmd.Wait()
	killed = true
	if !finished {
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("run %d: child ended without SIGKILL: %v; stderr: %s", run, err, stderr.String())
		}
	}
	return acks, finished
}
