package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/control"
)

// TestSDNotifier runs the notifier against a fake NOTIFY_SOCKET: READY=1
// only once every member was probed, and once; then WATCHDOG=1 and
// STOPPING=1.
func TestSDNotifier(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "")
	n := newSDNotifier()
	member := func(name string, h control.Health) control.Member {
		return control.Member{Node: control.Node{Name: name}, Health: h}
	}
	n.observed([]control.Member{member("pg1", control.HealthUp), member("pg2", control.HealthUnknown)})
	n.observed([]control.Member{member("pg1", control.HealthUp), member("pg2", control.HealthDown)})
	n.observed([]control.Member{member("pg1", control.HealthUp), member("pg2", control.HealthUp)})
	n.watchdog()
	n.stopping()
	var got []string
	b := make([]byte, 1024)
	for len(got) < 3 {
		ln.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, err := ln.Read(b)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, string(b[:k]))
	}
	want := []string{"READY=1\nSTATUS=datapath attached; 1 of 2 nodes up", "WATCHDOG=1", "STOPPING=1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}
	if n.tick != nil {
		t.Errorf("a watchdog ticker without WATCHDOG_USEC")
	}
}
