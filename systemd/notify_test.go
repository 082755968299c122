package systemd_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/applianced/applianced/systemd"
)

// The watchdog is pinged only while the daemon says it is alive: a daemon
// whose journal or sockets hang stops pinging, and systemd restarts it.
func TestWatchdogPingsOnlyWhileAlive(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "100000") // a ping every 50 ms
	var alive atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go (&systemd.Notifier{}).Watchdog(ctx, func(context.Context) error {
		if alive.Load() {
			return nil
		}
		return errors.New("stuck")
	})
	pings := func(d time.Duration) int {
		n := 0
		buf := make([]byte, 256)
		deadline := time.Now().Add(d)
		for {
			_ = conn.SetReadDeadline(deadline)
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return n
			}
			if strings.Contains(string(buf[:k]), "WATCHDOG=1") {
				n++
			}
		}
	}
	if n := pings(300 * time.Millisecond); n != 0 {
		t.Errorf("got %d pings while not alive, want none", n)
	}
	alive.Store(true)
	if n := pings(300 * time.Millisecond); n == 0 {
		t.Error("no ping once alive again")
	}
}
