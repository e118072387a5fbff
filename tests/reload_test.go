package tests

import (
	"context"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// TestReload edits lb1's configuration and sends SIGHUP: removing pg3 and
// changing probe.fall applies live while connections through both VIP
// ports keep working; a change of vip, and a file that does not parse, are
// refused with the reason logged, and the daemon keeps running with its
// configuration; so is removing the writer together with allowlists that
// admit no client, which must leave the allowlists as they were; adding
// pg3 back routes reads to it again.
func TestReload(t *testing.T) {
	c := upCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	prefix := c.lab.Prefix
	path := lab.DaemonConfig(prefix, "lb1")
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := lab.DaemonPID(prefix, "lb1")
	if err != nil {
		t.Fatal(err)
	}
	logCount := func(s string) int {
		b, _ := os.ReadFile(lab.DaemonLog(prefix, "lb1"))
		return strings.Count(string(b), s)
	}
	hup := func(config, waitLog string) {
		t.Helper()
		before := logCount(waitLog)
		if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := lab.SignalDaemon(prefix, "lb1", syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if !waitFor(10*time.Second, func() bool { return logCount(waitLog) > before }) {
			t.Fatalf("no new %q in lb1's log after SIGHUP", waitLog)
		}
	}
	alive := func(what string) {
		t.Helper()
		if got, err := lab.DaemonPID(prefix, "lb1"); err != nil || got != pid {
			t.Fatalf("%s: daemon pid %d, %v; want %d still running", what, got, err, pid)
		}
	}

	rw, err := c.connect(ctx, lab.PortRW)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close(ctx)
	ro, err := c.readOn(ctx, hostAddr("pg2"))
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close(ctx)
	query := func(what string) {
		t.Helper()
		if _, err := rw.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("%s: rw connection broke: %v", what, err)
		}
		if _, err := ro.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("%s: ro connection broke: %v", what, err)
		}
	}

	// pg3's node entry is the last two lines of the nodes list.
	pg3 := regexp.MustCompile(`(?m)^  - name: pg3\n    address: .*\n`)
	if !pg3.Match(orig) {
		t.Fatalf("lb1's config has no pg3 entry:\n%s", orig)
	}
	// A probe setting changes too: the lab's config has a probe section.
	without := pg3.ReplaceAllString(string(orig), "")
	if !strings.Contains(without, "  fall: 3\n") {
		t.Fatalf("lb1's config has no probe fall to change:\n%s", orig)
	}
	without = strings.Replace(without, "  fall: 3\n", "  fall: 2\n", 1)
	hup(without, `msg=reloaded `)
	if !waitFor(5*time.Second, func() bool {
		p, err := c.pools()
		return err == nil && len(p) == 2 && p["pg1"] == "3000" && p["pg2"] == "3001"
	}) {
		p, err := c.pools()
		t.Fatalf("after removing pg3: pools %v (%v), want pg1 3000, pg2 3001 only", p, err)
	}
	query("after removing pg3")
	alive("after removing pg3")

	hup(strings.Replace(without, "vip: "+lab.VIP.String(), "vip: 172.20.0.101", 1), "reload refused")
	if logCount("fields=vip") == 0 {
		t.Errorf("the refusal does not name the field vip")
	}
	query("after a refused vip change")
	alive("after a refused vip change")

	hup("vip: [unclosed\n", "reload refused")
	query("after an unparsable file")
	alive("after an unparsable file")

	// A change the controller refuses (pg1, the writer, removed) with
	// allowlists that admit no client: refused whole, so the allowlists
	// stay as they were and new sessions through both ports still open.
	pg1 := regexp.MustCompile(`(?m)^  - name: pg1\n    address: .*\n`)
	noWriter := pg1.ReplaceAllString(without, "") + "allow_sources:\n  rw: [192.0.2.0/24]\n  ro: [192.0.2.0/24]\n"
	hup(noWriter, "reload refused")
	if logCount("cannot remove the writer") == 0 {
		t.Errorf("the refusal does not say the writer would be removed")
	}
	for _, port := range []int{lab.PortRW, lab.PortRO} {
		conn, err := c.connect(ctx, port)
		if err != nil {
			t.Fatalf("new session through VIP:%d after a refused reload: %v (were its allowlists written?)", port, err)
		}
		conn.Close(ctx)
	}
	query("after a refused writer removal")
	alive("after a refused writer removal")
	if p, err := c.pools(); err != nil || len(p) != 2 {
		t.Fatalf("after refusals: pools %v (%v), want the two members kept", p, err)
	}

	hup(string(orig), `msg=reloaded `)
	if !waitFor(10*time.Second, func() bool {
		p, err := c.pools()
		return err == nil && p["pg3"] == "3001"
	}) {
		p, err := c.pools()
		t.Fatalf("after adding pg3 back: pools %v (%v)", p, err)
	}
	query("after adding pg3 back")
	alive("after adding pg3 back")
}
