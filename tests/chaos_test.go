package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// chaosCycles and chaosSeed fix the CI's chaos run: one round of every
// fault kind and one more, in the order seed 9 deals them.
const (
	chaosCycles = 10
	chaosSeed   = 9
)

// TestChaos runs `xlb-lab chaos` for chaosCycles cycles on a lab of its
// own with two LB hosts in synchronous mode: naive and careful clients
// write and read through the VIP while every fault kind hits the cluster
// once or more. Any safety count above 0 fails it: a client hung, a
// write acknowledged by a node that was not the newest timeline's
// primary, a read answered by a node out of the read pool, an
// acknowledged commit lost; so does a cycle whose cluster did not heal.
func TestChaos(t *testing.T) {
	lab.RequirePrivileged(t)
	bin, err := xlbBinary()
	if err != nil {
		t.Fatal(err)
	}
	prefix := lab.TestPrefix()
	t.Cleanup(func() {
		if err := lab.Down(prefix, nil); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	_, err = lab.Up(ctx, lab.Options{Prefix: prefix, Binary: bin, XDPMode: "generic", LBs: 2, Synchronous: true, Out: tlog{t}})
	cancel()
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel = context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	began := time.Now()
	rep, err := lab.Chaos(ctx, lab.ChaosOptions{Prefix: prefix, Cycles: chaosCycles, Seed: chaosSeed, Timeout: 45 * time.Second, Out: tlog{t}})
	if rep != nil {
		var b strings.Builder
		if werr := rep.WriteTable(&b); werr != nil {
			t.Error(werr)
		}
		for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
			t.Log(l)
		}
	}
	t.Logf("chaos: %d cycles in %v", chaosCycles, time.Since(began).Round(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Synchronous {
		t.Error("the daemons do not run in synchronous mode")
	}
	if len(rep.Cycles) != chaosCycles || len(rep.Faults) != len(lab.ChaosFaults) {
		t.Errorf("%d cycles of %d fault kinds, want %d covering all %d", len(rep.Cycles), len(rep.Faults), chaosCycles, len(lab.ChaosFaults))
	}
	if rep.Acknowledged == 0 || rep.Reads == 0 {
		t.Errorf("%d INSERTs acknowledged, %d reads answered: the clients did not run", rep.Acknowledged, rep.Reads)
	}
	for _, c := range rep.Cycles {
		if !c.Healed {
			t.Errorf("cycle %d (%s): the cluster did not heal", c.Cycle, c.Fault)
		}
	}
	// Synchronous mode: no acknowledged commit may be lost, so Lost counts.
	if rep.Lost != 0 || rep.Hung != 0 || rep.SplitWrites != 0 || rep.StaleReads != 0 {
		t.Errorf("safety: %d acknowledged commits lost %v, %d clients hung, %d split writes, %d stale reads (findings in the table above)",
			rep.Lost, rep.LostIDs, rep.Hung, rep.SplitWrites, rep.StaleReads)
	}
	if !rep.OK() {
		t.Error("the chaos report is not OK: xlb-lab chaos would exit 1")
	}
}
