package main

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/xlb-dev/xlb/cmd/xlb/internal/sdnotify"
	"github.com/xlb-dev/xlb/control"
)

// sdNotifier tells systemd (Type=notify) when the daemon is ready and,
// from the main loop, that it still runs (WatchdogSec=). Outside systemd
// it does nothing.
type sdNotifier struct {
	notify func(string) error
	ready  bool
	// tick fires at the watchdog interval; nil (never) without a watchdog.
	tick <-chan time.Time
	stop func()
}

func newSDNotifier() *sdNotifier {
	n := &sdNotifier{notify: sdnotify.Notify, stop: func() {}}
	if iv := sdnotify.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		n.tick, n.stop = t.C, t.Stop
		slog.Info("systemd watchdog", "interval", iv)
	}
	return n
}

func (n *sdNotifier) send(state string) {
	if err := n.notify(state); err != nil && !errors.Is(err, sdnotify.ErrNoSocket) {
		slog.Warn("notifying systemd", "err", err)
	}
}

// observed sends READY=1 the first time every member has been probed (the
// datapath is attached before the first probe runs).
func (n *sdNotifier) observed(members []control.Member) {
	if n.ready {
		return
	}
	up := 0
	for _, m := range members {
		if m.Health == control.HealthUnknown {
			return
		}
		if m.Health == control.HealthUp {
			up++
		}
	}
	n.ready = true
	n.send(fmt.Sprintf("READY=1\nSTATUS=datapath attached; %d of %d nodes up", up, len(members)))
}

// watchdog tells systemd the main loop runs.
func (n *sdNotifier) watchdog() { n.send("WATCHDOG=1") }

// stopping tells systemd the daemon is shutting down.
func (n *sdNotifier) stopping() {
	n.stop()
	n.send("STOPPING=1")
}
