package lab

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseChaosFault(t *testing.T) {
	for _, f := range ChaosFaults {
		if got, err := ParseChaosFault(string(f)); err != nil || got != f {
			t.Errorf("ParseChaosFault(%q) = %q, %v", f, got, err)
		}
	}
	if _, err := ParseChaosFault("reboot"); err == nil || !strings.Contains(err.Error(), "vrrp-cut-kill") {
		t.Errorf(`ParseChaosFault("reboot") = %v, want an error listing the kinds`, err)
	}
}

func TestChaosOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts ChaosOptions
		ok   bool
	}{
		{"defaults", ChaosOptions{}, true},
		{"some faults", ChaosOptions{Faults: []ChaosFault{ChaosKill, ChaosSwitchoverCancel}, Cycles: 50}, true},
		{"unknown fault", ChaosOptions{Faults: []ChaosFault{"reboot"}}, false},
		{"no cycles", ChaosOptions{Cycles: -1}, false},
		{"too many clients", ChaosOptions{Clients: 51}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := tt.opts
			o.setDefaults()
			if err := o.validate(); (err == nil) != tt.ok {
				t.Errorf("validate() = %v, want ok %t", err, tt.ok)
			}
		})
	}
}

func TestChaosDraw(t *testing.T) {
	ch := &chaos{opts: ChaosOptions{Faults: ChaosFaults}}
	ch.opts.Seed = 7
	ch.rand = newChaosRand(7)
	seen := map[ChaosFault]int{}
	for range len(ChaosFaults) {
		seen[ch.draw()]++
	}
	for _, f := range ChaosFaults {
		if seen[f] != 1 {
			t.Errorf("a round of %d draws gave %s %d times, want once each: %v", len(ChaosFaults), f, seen[f], seen)
		}
	}
	again := &chaos{opts: ch.opts, rand: newChaosRand(7)}
	ch.rand, ch.deck = newChaosRand(7), nil
	for i := range 20 {
		if a, b := ch.draw(), again.draw(); a != b {
			t.Fatalf("draw %d: %s and %s from the same seed", i, a, b)
		}
	}
}

// TestChaosCheck runs the checker on a made-up run with one of each
// finding.
func TestChaosCheck(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	pg1, pg2, pg3 := HostAddr("pg1"), HostAddr("pg2"), HostAddr("pg3")
	w := func(id int64, srv netip.Addr, tli uint32, sent, ack int) Ack {
		return Ack{ID: id, Server: srv, TLI: tli, Sent: at(sent), At: at(ack)}
	}
	rd := func(srv netip.Addr, sent, ack int) Ack { return Ack{Server: srv, Sent: at(sent), At: at(ack)} }
	sample := func(ms int, lb string, owner bool, tli uint32, rw, ro []netip.Addr) poolSample {
		return poolSample{At: at(ms), LB: lb, HoldsVIP: owner, Timeline: tli, RW: rw, RO: ro}
	}
	one := func(a netip.Addr) []netip.Addr { return []netip.Addr{a} }
	d := &chaosRun{
		cycles: []ChaosCycle{
			// pg1 killed at 1 s, pg2 promoted (timeline 2), healed by 10 s.
			{Cycle: 1, Fault: ChaosKill, PrimaryBefore: "pg1", Start: at(0), FaultAt: at(1000), End: at(10000), Healed: true},
			// A switchover from pg2 to pg3 at 20 s (timeline 3).
			{Cycle: 2, Fault: ChaosSwitchover, PrimaryBefore: "pg2", Start: at(15000), FaultAt: at(20000), End: at(25000), Healed: true},
		},
		writes: []Ack{
			w(1, pg1, 1, 900, 950),
			w(2, pg1, 1, 990, 1005), // in flight at the fault, acknowledged: fine
			w(3, pg2, 2, 1200, 1400),
			w(4, pg2, 2, 1500, 3000),
			w(5, pg1, 1, 1600, 1650), // the old primary after timeline 2 began: split
			w(6, pg3, 2, 1700, 1750), // another node on timeline 2: split
			w(7, pg2, 2, 16000, 16010),
			w(8, pg3, 3, 20300, 20400),
			w(9, pg3, 3, 24000, 24900),
		},
		reads: []Ack{
			rd(pg2, 500, 510),
			rd(pg3, 2000, 2010),
			rd(pg1, 5000, 5010), // pg1 is in no read pool then: stale
			rd(pg2, 8000, 8010), // no VIP owner sample then: cannot tell
		},
		ops: []Op{
			// Blocked on pg1 from before the fault until Stop: hung.
			{Client: 0, Naive: true, Step: "insert", Server: pg1, Start: at(980), End: at(30000), Abandoned: true},
			// A careful writer's timeout: not hung, counted as a timeout.
			{Client: 1, Step: "insert", Server: pg1, Start: at(990), End: at(2990), Timeout: true},
			// A slow read on pg3, which never left the pool: 6 s after
			// the switchover, hung.
			{Client: 2, Naive: true, Step: "read", Server: pg3, Start: at(19000), End: at(26500)},
			// A connect is never a hang.
			{Client: 3, Naive: true, Step: "connect", Start: at(1000), End: at(9000)},
		},
		samples: []poolSample{
			sample(400, "lb1", true, 1, one(pg1), []netip.Addr{pg2, pg3}),
			sample(450, "lb2", false, 1, one(pg1), []netip.Addr{pg2, pg3}),
			sample(1500, "lb1", true, 2, one(pg2), one(pg3)),
			sample(2000, "lb1", true, 2, one(pg2), one(pg3)),
			sample(5000, "lb1", true, 2, one(pg2), one(pg3)),
			sample(5100, "lb2", false, 1, nil, []netip.Addr{pg1, pg3}),
			sample(20500, "lb1", true, 3, one(pg3), one(pg2)),
		},
		lost: map[int64]bool{4: true},
	}
	d.check()
	type counts struct{ Resume, Outage, OutageAt, Lost, Hung, Split, Stale, Timeouts float64 }
	var got []counts
	for _, c := range d.cycles {
		got = append(got, counts{float64(c.Resume), float64(c.Outage), float64(c.OutageAt), float64(c.Lost), float64(c.Hung),
			float64(c.SplitWrites), float64(c.StaleReads), float64(c.Timeouts)})
	}
	want := []counts{
		// Resume: write 3 acknowledged 0.4 s after the fault; the
		// longest silence is 3 s to 10 s (the last write of the cycle
		// at 3.0 s, End at 10 s).
		{Resume: 0.4, Outage: 7, OutageAt: 2, Lost: 1, Hung: 1, Split: 2, Stale: 1, Timeouts: 1},
		{Resume: 0.4, Outage: 4.5, OutageAt: 0.4, Hung: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cycle figures (-want +got):\n%s\nfindings: %q, %q", diff, d.cycles[0].Findings, d.cycles[1].Findings)
	}

	rep := &ChaosReport{Prefix: "h9c-", Seed: 7, Synchronous: true, Cycles: d.cycles}
	rep.summarize()
	if rep.OK() || rep.Lost != 1 || rep.Hung != 2 || rep.SplitWrites != 2 || rep.StaleReads != 1 || len(rep.Faults) != 2 {
		t.Errorf("summary: ok %t, %+v", rep.OK(), rep)
	}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"kill  ", "switchover  ", "safety: VIOLATED (lost 1, hung 2, split writes 2, stale reads 1)",
		"cycle 1: split: INSERT 5 acknowledged by 172.20.0.10 on timeline 1", "cycle 1: stale: read answered by 172.20.0.10",
		"cycle 2: hung: naive client 2 blocked in read on 172.20.0.12"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
	// Asynchronous mode may lose commits; the rest still counts.
	rep = &ChaosReport{Cycles: []ChaosCycle{{Fault: ChaosKill, Lost: 3}}}
	rep.summarize()
	if !rep.OK() {
		t.Error("an asynchronous run that lost commits and nothing else is not OK")
	}
	rep.Synchronous = true
	if rep.OK() {
		t.Error("a synchronous run that lost commits is OK")
	}
}
