// Package systemd is the appliance's side of the service manager: readiness
// and status notifications, the watchdog, and the unit files it ships with.
//
// The Go part wraps github.com/coreos/go-systemd/v22/daemon. Every
// notification is a no-op when NOTIFY_SOCKET is unset (not under systemd),
// and the environment is never unset, so child processes and reloads see the
// same socket.
//
// The package refuses to send READY=1 on its own: the daemon calls Ready only
// after its listeners accept connections.
package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Notifier sends sd_notify messages. The zero value is ready to use.
type Notifier struct {
	// Logger receives send failures; nil means slog.Default().
	Logger *slog.Logger
}

func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		l := n.Logger
		if l == nil {
			l = slog.Default()
		}
		l.Warn("systemd: notify failed", "state", state, "err", err)
	}
}

// Ready says the service is up: its listeners accept connections.
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Status sets the one-line status `systemctl status` shows.
func (n *Notifier) Status(format string, args ...any) {
	n.send("STATUS=" + fmt.Sprintf(format, args...))
}

// Reloading says a reload started. systemd 252 (Debian 12) reloads with
// ExecReload and SIGHUP; newer ones (Type=notify-reload) also want
// MONOTONIC_USEC, which is sent too. Call Ready when the reload is done.
func (n *Notifier) Reloading() {
	n.send(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
}

// Stopping says the service is shutting down.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Watchdog pings the watchdog at half of WATCHDOG_USEC until ctx ends, each
// time alive says the daemon does its work: a ping from a timer alone would
// keep a daemon whose journal or main loop hangs from ever being restarted.
// When alive fails, the ping is skipped (and said once), so systemd
// restarts the service after WatchdogSec. It returns at once when the
// watchdog is not enabled for this process.
func (n *Notifier) Watchdog(ctx context.Context, alive func(context.Context) error) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			actx, cancel := context.WithTimeout(ctx, interval/4)
			err := alive(actx)
			cancel()
			if err != nil {
				if !failing && ctx.Err() == nil {
					l := n.Logger
					if l == nil {
						l = slog.Default()
					}
					l.Error("systemd: not alive; the watchdog is not pinged, and systemd restarts the service unless it recovers", "err", err)
				}
				failing = true
				continue
			}
			failing = false
			n.send(daemon.SdNotifyWatchdog)
		}
	}
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
