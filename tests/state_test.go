package tests

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// TestTornStateFileRestart fails over (SIGKILL to the primary), restarts
// the old primary unrejoined (a primary on the old timeline), then tears
// lb1's state file mid-JSON, as a crash during a write would, and restarts
// lb1's daemon. The daemon must keep running (no exit, no crash loop), set
// the torn file aside, rebuild the state from PostgreSQL's own state (the
// new primary and its replica are on the new timeline) and write it back
// whole, and keep the old primary fenced: every new session through
// VIP:3000 lands on the new primary.
func TestTornStateFileRestart(t *testing.T) {
	r := upSyncLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := lab.Drill(ctx, lab.DrillOptions{Prefix: r.Prefix, Fault: lab.FaultKill, Trials: 1, SkipRejoin: true, Timeout: 30 * time.Second, Out: tlog{t}})
	if rep != nil {
		logReport(t, rep)
	}
	if err != nil {
		t.Fatal(err)
	}
	tr := rep.Trials[0]
	old, newp := tr.OldPrimary, tr.NewPrimary
	oldAddr, newAddr := lab.HostAddr(old), lab.HostAddr(newp)
	bs, err := r.WaitBackends(ctx, old+" fenced before the restart", func(bs []lab.Backend) bool {
		b, _ := lab.Find(bs, old)
		return b.State == "fenced"
	})
	if err != nil {
		t.Fatal(err)
	}
	nb, _ := lab.Find(bs, newp)
	newTL := nb.Timeline

	cfg, err := os.ReadFile(lab.DaemonConfig(r.Prefix, r.LB))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^state_file: (.+)$`).FindSubmatch(cfg)
	if m == nil {
		t.Fatalf("%s's config names no state_file:\n%s", r.LB, cfg)
	}
	path := strings.TrimSpace(string(m[1]))
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Timeline uint32 `json:"timeline"`
		SystemID uint64 `json:"system_id"`
	}
	if err := json.Unmarshal(whole, &st); err != nil || st.Timeline != newTL || st.SystemID == 0 {
		t.Fatalf("state file before the tear: %q (%v), want timeline %d and a system identifier", whole, err, newTL)
	}
	t.Logf("state file %s: %s", path, strings.TrimSpace(string(whole)))

	// Tear it: the first half of the JSON, as a crash mid-write leaves it.
	if err := os.WriteFile(path, whole[:len(whole)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := lab.DaemonLog(r.Prefix, r.LB)
	logBefore, _ := os.ReadFile(logPath)
	pid, err := lab.RestartDaemon(r.Prefix, r.LB)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.WaitBackends(ctx, old+" fenced after a restart on a torn state file", func(bs []lab.Backend) bool {
		o, _ := lab.Find(bs, old)
		n, _ := lab.Find(bs, newp)
		return o.State == "fenced" && len(o.Pools) == 0 && n.InPool(lab.PortRW)
	}); err != nil {
		t.Fatal(err)
	}
	newLog := func() string {
		b, _ := os.ReadFile(logPath)
		return string(b[min(len(logBefore), len(b)):])
	}
	for _, want := range []string{"state file unreadable: set aside", "state rebuilt from postgresql"} {
		if !strings.Contains(newLog(), want) {
			t.Errorf("lb1's log after the restart has no %q:\n%s", want, newLog())
		}
	}
	for _, l := range strings.Split(newLog(), "\n") {
		if strings.Contains(l, "state") {
			t.Logf("%s: %s", r.LB, l)
		}
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) != 1 {
		t.Errorf("set aside: %v, want one %s.corrupt-<time>", aside, filepath.Base(path))
	} else if b, err := os.ReadFile(aside[0]); err != nil || string(b) != string(whole[:len(whole)/2]) {
		t.Errorf("%s holds %q (%v), want the torn bytes", aside[0], b, err)
	}
	rebuilt, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st2 struct {
		Timeline uint32 `json:"timeline"`
		SystemID uint64 `json:"system_id"`
	}
	if err := json.Unmarshal(rebuilt, &st2); err != nil || st2 != st {
		t.Errorf("state file after the restart: %q (%v), want %+v rebuilt", rebuilt, err, st)
	}

	// Fresh sessions, each asked where it landed, for 3 s.
	requireSessionsOn(ctx, t, r, 3, newp, newAddr, old, oldAddr)
	// Still the same process: it neither exited nor was restarted.
	if got, err := lab.DaemonPID(r.Prefix, r.LB); err != nil || got != pid {
		t.Fatalf("daemon on %s: pid %d (%v), want %d still running", r.LB, got, err, pid)
	}
}
