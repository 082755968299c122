package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/rsyslog"
)

// TestAuditDeliverEndsWhenTheDaemonStops: the daemon stops while `audit
// deliver` waits for a receiver that is down. The stop does not wait for
// the delivery's timeout: the delivery ends, its result is in the journal
// before it closes, and its temporary directory is gone.
func TestAuditDeliverEndsWhenTheDaemonStops(t *testing.T) {
	srv := rsyslog.Start(t, rsyslog.Options{})
	cfg := deliverConfig(t, srv)
	old, _, _, _, d := outageThenSetAside(t, srv, cfg, func(uint64) uint64 { return 0 }, asideBeside)
	if err := srv.Stop(); err != nil { // the SIEM is down again
		t.Fatal(err)
	}
	done := make(chan int, 1)
	go func() {
		e := testEnv()
		done <- run(context.Background(), e, []string{"audit", "deliver", "--config", cfg.Path, "--from", "1", "--timeout", "40s", old})
	}()
	tmpGlob := filepath.Join(cfg.Server.StateDir, "syslog", "deliver-*")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m, _ := filepath.Glob(tmpGlob); len(m) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the delivery did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	code := d.stop(t)
	took := time.Since(start)
	if code != 0 {
		t.Errorf("the daemon's exit: %d", code)
	}
	if took > 2*time.Second {
		t.Errorf("the stop waited %v for an audit deliver (the drain's whole timeout)", took)
	}
	if m, _ := filepath.Glob(tmpGlob); len(m) > 0 {
		t.Errorf("after the daemon stopped, the temporary forwarder's %v is still there (its forwarder still runs)", m)
	}
	segs, _ := filepath.Glob(filepath.Join(cfg.Server.StateDir, "audit", "journal-*.log"))
	var starts, results int
	for _, s := range segs {
		b, _ := os.ReadFile(s)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"audit.deliver"`) {
				if strings.Contains(l, `"stage":"start"`) {
					starts++
				} else if strings.Contains(l, `"stage":"result"`) {
					results++
				}
			}
		}
	}
	if starts != 1 || results != 1 {
		t.Errorf("the live journal holds %d start and %d result audit.deliver events at stop, want 1 each", starts, results)
	}
	select {
	case c := <-done:
		if c == exitOK {
			t.Errorf("the interrupted delivery exited %d", c)
		}
	case <-time.After(45 * time.Second):
		t.Errorf("the client never returned")
	}
}
