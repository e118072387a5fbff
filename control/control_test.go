package control

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// fakeDatapath records pools and cuts as the loader would apply them: a
// cut takes the backend out of every pool.
type fakeDatapath struct {
	pools [2][]netip.AddrPort
	log   []string
}

func (f *fakeDatapath) SetPool(svc Service, b []netip.AddrPort) error {
	f.pools[svc] = slices.Clone(b)
	f.log = append(f.log, fmt.Sprintf("set %v %v", svc, b))
	return nil
}

func (f *fakeDatapath) Cut(b netip.AddrPort) error {
	for i := range f.pools {
		f.pools[i] = slices.DeleteFunc(f.pools[i], func(x netip.AddrPort) bool { return x == b })
	}
	f.log = append(f.log, fmt.Sprintf("cut %v", b))
	return nil
}

func (f *fakeDatapath) CutService(svc Service, b netip.AddrPort) error {
	f.pools[svc] = slices.DeleteFunc(f.pools[svc], func(x netip.AddrPort) bool { return x == b })
	f.log = append(f.log, fmt.Sprintf("cut %v from %v", b, svc))
	return nil
}

var (
	pg1 = Node{Name: "pg1", Addr: netip.MustParseAddrPort("172.20.0.10:5432")}
	pg2 = Node{Name: "pg2", Addr: netip.MustParseAddrPort("172.20.0.11:5432")}
	pg3 = Node{Name: "pg3", Addr: netip.MustParseAddrPort("172.20.0.12:5432")}
)

// step is one event of a sequence: a probe result or a drain/enable.
type step struct {
	node    string
	down    bool          // the probe failed
	replica bool          // pg_is_in_recovery()
	tl      uint32        // timeline, default 1
	lag     time.Duration // replay lag
	drain   *bool
}

func ok(n string) step     { return step{node: n} }
func rep(n string) step    { return step{node: n, replica: true} }
func fail(n string) step   { return step{node: n, down: true} }
func drain(n string) step  { d := true; return step{node: n, drain: &d} }
func enable(n string) step { d := false; return step{node: n, drain: &d} }
func times(s step, k int) []step {
	out := make([]step, k)
	for i := range out {
		out[i] = s
	}
	return out
}

// start is a healthy cluster: pg1 primary, pg2 and pg3 replicas.
var start = []step{ok("pg1"), rep("pg2"), rep("pg3")}

func seq(parts ...any) []step {
	var out []step
	for _, p := range parts {
		switch p := p.(type) {
		case step:
			out = append(out, p)
		case []step:
			out = append(out, p...)
		}
	}
	return out
}

func addrs(nodes ...Node) []netip.AddrPort {
	var out []netip.AddrPort
	for _, n := range nodes {
		out = append(out, n.Addr)
	}
	if out == nil {
		return nil
	}
	return out
}

func TestPools(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		steps    []step
		wantRW   []netip.AddrPort
		wantRO   []netip.AddrPort
		wantCuts []string
	}{
		{name: "healthy cluster", steps: start, wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "nothing written until every node answered once", steps: []step{ok("pg1"), rep("pg2")}, wantRW: nil, wantRO: nil},
		{name: "one failed probe changes nothing", steps: seq(start, fail("pg3")), wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "two failed probes change nothing", steps: seq(start, times(fail("pg3"), 2)), wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "three failed probes: replica down and cut", steps: seq(start, times(fail("pg3"), 3)),
			wantRW: addrs(pg1), wantRO: addrs(pg2), wantCuts: []string{"cut 172.20.0.12:5432"}},
		{name: "failures not in a row do not add up", steps: seq(start, fail("pg3"), fail("pg3"), rep("pg3"), fail("pg3"), fail("pg3")),
			wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "back after one good probe: still down", steps: seq(start, times(fail("pg3"), 3), rep("pg3")),
			wantRW: addrs(pg1), wantRO: addrs(pg2), wantCuts: []string{"cut 172.20.0.12:5432"}},
		{name: "back after two good probes", steps: seq(start, times(fail("pg3"), 3), times(rep("pg3"), 2)),
			wantRW: addrs(pg1), wantRO: addrs(pg2, pg3), wantCuts: []string{"cut 172.20.0.12:5432"}},
		{name: "primary down: no writer, reads go on", steps: seq(start, times(fail("pg1"), 3)),
			wantRW: nil, wantRO: addrs(pg2, pg3), wantCuts: []string{"cut 172.20.0.10:5432"}},
		{name: "all replicas down: reads fall back to the primary", cfg: Config{ReadFallback: true},
			steps:  seq(start, times(fail("pg2"), 3), times(fail("pg3"), 3)),
			wantRW: addrs(pg1), wantRO: addrs(pg1), wantCuts: []string{"cut 172.20.0.11:5432", "cut 172.20.0.12:5432"}},
		{name: "all replicas down, no fallback", steps: seq(start, times(fail("pg2"), 3), times(fail("pg3"), 3)),
			wantRW: addrs(pg1), wantRO: nil, wantCuts: []string{"cut 172.20.0.11:5432", "cut 172.20.0.12:5432"}},
		{name: "replica over max lag takes no reads, its readers cut", cfg: Config{MaxReadLag: time.Second},
			steps:  seq(start, step{node: "pg2", replica: true, lag: 5 * time.Second}),
			wantRW: addrs(pg1), wantRO: addrs(pg3), wantCuts: []string{"cut 172.20.0.11:5432"}},
		{name: "drain keeps flows", steps: seq(start, drain("pg2")), wantRW: addrs(pg1), wantRO: addrs(pg3)},
		{name: "drain then enable", steps: seq(start, drain("pg2"), enable("pg2")), wantRW: addrs(pg1), wantRO: addrs(pg2, pg3)},
		{name: "drained primary takes no writes", steps: seq(start, drain("pg1")), wantRW: nil, wantRO: addrs(pg2, pg3)},
		{name: "unreachable at start: never routed", steps: []step{fail("pg1"), rep("pg2"), rep("pg3")},
			wantRW: nil, wantRO: addrs(pg2, pg3)},
		{name: "promoted replica becomes the writer, old primary cut, its readers cut", steps: seq(start, times(fail("pg1"), 3), step{node: "pg2", tl: 2}),
			wantRW: addrs(pg2), wantRO: addrs(pg3), wantCuts: []string{"cut 172.20.0.10:5432", "cut 172.20.0.11:5432 from ro"}},
		{name: "two primaries: newest timeline writes", steps: seq(start, step{node: "pg2", tl: 2}),
			wantRW: addrs(pg2), wantRO: addrs(pg3), wantCuts: []string{"cut 172.20.0.10:5432", "cut 172.20.0.11:5432 from ro"}},
		{name: "demoted primary leaves writes, joins reads: only its writers cut", steps: seq(start, step{node: "pg1", replica: true, tl: 1}),
			wantRW: nil, wantRO: addrs(pg1, pg2, pg3), wantCuts: []string{"cut 172.20.0.10:5432 from rw"}},
		{name: "fallback primary loses its readers when a replica returns", steps: seq(ok("pg1"), fail("pg2"), fail("pg3"), rep("pg2"), rep("pg2")),
			wantRW: addrs(pg1), wantRO: addrs(pg2), wantCuts: []string{"cut 172.20.0.10:5432 from ro"}, cfg: Config{ReadFallback: true}},
		{name: "drained fallback primary keeps its readers", cfg: Config{ReadFallback: true}, steps: seq(ok("pg1"), fail("pg2"), fail("pg3"), drain("pg1"), rep("pg2"), rep("pg2")),
			wantRW: nil, wantRO: addrs(pg2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDatapath{}
			clock := time.Unix(1_700_000_000, 0)
			c := New(tt.cfg, []Node{pg1, pg2, pg3}, Options{Datapath: fd, Now: func() time.Time { return clock }})
			for _, s := range tt.steps {
				clock = clock.Add(500 * time.Millisecond)
				var err error
				switch {
				case s.drain != nil && *s.drain:
					err = c.Drain(s.node)
				case s.drain != nil:
					err = c.Enable(s.node)
				default:
					o := Observation{Node: s.node, Time: clock, InRecovery: s.replica, Timeline: cmp.Or(s.tl, 1), ReplayLag: s.lag}
					if s.down {
						o.Err = errors.New("connection refused")
					}
					err = c.Observe(o)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if diff := gocmp.Diff(tt.wantRW, fd.pools[RW], cmpAddr); diff != "" {
				t.Errorf("rw pool (-want +got):\n%s", diff)
			}
			if diff := gocmp.Diff(tt.wantRO, fd.pools[RO], cmpAddr); diff != "" {
				t.Errorf("ro pool (-want +got):\n%s", diff)
			}
			var cuts []string
			for _, l := range fd.log {
				if strings.HasPrefix(l, "cut ") {
					cuts = append(cuts, l)
				}
			}
			if diff := gocmp.Diff(tt.wantCuts, cuts); diff != "" {
				t.Errorf("cuts (-want +got):\n%s\nlog: %v", diff, fd.log)
			}
			if diff := gocmp.Diff(fd.pools[RW], c.Pool(RW), cmpAddr); diff != "" {
				t.Errorf("controller's rw pool differs from the datapath's (-dp +ctl):\n%s", diff)
			}
		})
	}
}

func TestUnknownNode(t *testing.T) {
	c := New(Config{}, []Node{pg1}, Options{Datapath: &fakeDatapath{}})
	if err := c.Observe(Observation{Node: "pg9"}); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("Observe(pg9) = %v, want ErrUnknownNode", err)
	}
	if err := c.Drain("pg9"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("Drain(pg9) = %v, want ErrUnknownNode", err)
	}
}

var cmpAddr = gocmp.Options{gocmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }), cmpopts.EquateEmpty()}

// TestPinnedPools: a restarted daemon starts from the pools the datapath
// kept. Status shows them until every node answered, nothing is written
// meanwhile, and a node that left them while the daemon was away (pg3,
// now down; pg9, no longer configured) is cut at the first decision.
func TestPinnedPools(t *testing.T) {
	pg9 := netip.MustParseAddrPort("172.20.0.19:5432")
	fd := &fakeDatapath{}
	fd.pools[RW] = addrs(pg1)
	fd.pools[RO] = append(addrs(pg2, pg3), pg9)
	c := New(Config{}, []Node{pg1, pg2, pg3}, Options{Datapath: fd,
		Pools: [2][]netip.AddrPort{RW: slices.Clone(fd.pools[RW]), RO: slices.Clone(fd.pools[RO])}})
	pools := func() map[string][]Service {
		out := map[string][]Service{}
		for _, m := range c.Members() {
			out[m.Name] = m.Pools
		}
		return out
	}
	want := map[string][]Service{"pg1": {RW}, "pg2": {RO}, "pg3": {RO}}
	if diff := gocmp.Diff(want, pools()); diff != "" {
		t.Errorf("members' pools before any probe (-want +got):\n%s", diff)
	}
	for _, o := range []Observation{{Node: "pg1", Timeline: 1}, {Node: "pg2", InRecovery: true, Timeline: 1}} {
		if err := c.Observe(o); err != nil {
			t.Fatal(err)
		}
	}
	if len(fd.log) != 0 || !slices.Equal(c.Pool(RO), fd.pools[RO]) {
		t.Fatalf("written before every node answered: %v, controller's ro pool %v", fd.log, c.Pool(RO))
	}
	for range 3 { // pinned: down by the rule, like an up node
		if err := c.Observe(Observation{Node: "pg3", Err: errors.New("connection refused")}); err != nil {
			t.Fatal(err)
		}
	}
	var cuts []string
	for _, l := range fd.log {
		if strings.HasPrefix(l, "cut ") {
			cuts = append(cuts, l)
		}
	}
	if diff := gocmp.Diff([]string{"cut " + pg3.Addr.String(), "cut " + pg9.String()}, cuts); diff != "" {
		t.Errorf("cuts at the first decision (-want +got):\n%s\nlog: %v", diff, fd.log)
	}
	if diff := gocmp.Diff(addrs(pg2), fd.pools[RO], cmpAddr); diff != "" {
		t.Errorf("ro pool (-want +got):\n%s", diff)
	}
}

// TestCutWritesOnlyChangedPools: a replica going down is cut, and no pool
// is written after it: the cut took it out of the datapath's read pool,
// and the write pool did not change (a table write costs tens of ms in a
// failover).
func TestCutWritesOnlyChangedPools(t *testing.T) {
	fd := &fakeDatapath{}
	c := New(Config{}, []Node{pg1, pg2, pg3}, Options{Datapath: fd})
	for _, o := range []Observation{{Node: "pg1", Timeline: 1}, {Node: "pg2", InRecovery: true, Timeline: 1}, {Node: "pg3", InRecovery: true, Timeline: 1}} {
		if err := c.Observe(o); err != nil {
			t.Fatal(err)
		}
	}
	fd.log = nil
	for range 3 {
		if err := c.Observe(Observation{Node: "pg3", Err: errors.New("connection refused")}); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"cut " + pg3.Addr.String()}
	if diff := gocmp.Diff(want, fd.log); diff != "" {
		t.Errorf("datapath calls (-want +got):\n%s", diff)
	}
}

// TestPinnedNodeGoesDownByTheRule: after a restart, a node in the pinned
// pools whose first probes fail (a slow machine) is not cut at once as a
// node never seen would be: it goes down by the rule (fall failures in a
// row), and one good probe before that keeps its flows.
func TestPinnedNodeGoesDownByTheRule(t *testing.T) {
	newPinned := func() (*Controller, *fakeDatapath) {
		fd := &fakeDatapath{}
		fd.pools[RW], fd.pools[RO] = addrs(pg1), addrs(pg2, pg3)
		c := New(Config{}, []Node{pg1, pg2, pg3}, Options{Datapath: fd,
			Pools: [2][]netip.AddrPort{RW: addrs(pg1), RO: addrs(pg2, pg3)}})
		return c, fd
	}
	refused := Observation{Node: "pg1", Err: errors.New("failed SASL auth: timeout")}
	replicas := []Observation{{Node: "pg2", InRecovery: true, Timeline: 1}, {Node: "pg3", InRecovery: true, Timeline: 1}}

	c, fd := newPinned()
	for _, o := range append(replicas, refused, refused, Observation{Node: "pg1", Timeline: 1}) {
		if err := c.Observe(o); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range fd.log {
		if strings.HasPrefix(l, "cut ") {
			t.Fatalf("two failed first probes of the pinned writer cut it: %v", fd.log)
		}
	}
	if diff := gocmp.Diff(addrs(pg1), fd.pools[RW], cmpAddr); diff != "" {
		t.Errorf("rw pool (-want +got):\n%s", diff)
	}

	c, fd = newPinned()
	for _, o := range append(replicas, refused, refused, refused) {
		if err := c.Observe(o); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Contains(fd.log, "cut "+pg1.Addr.String()) {
		t.Errorf("three failed probes of the pinned writer did not cut it: %v", fd.log)
	}
}

// netTimeout is a network timeout as net.Dialer returns one.
type netTimeout struct{}

func (netTimeout) Error() string { return "dial tcp 172.20.0.10:5432: i/o timeout" }
func (netTimeout) Timeout() bool { return true }

// TestTimeoutsUnderFlood: a probe that timed out while the datapath sees
// the node answer its clients through a SYN flood is no miss; any other
// failure, or a timeout the datapath cannot vouch for, still is.
func TestTimeoutsUnderFlood(t *testing.T) {
	deadline := fmt.Errorf("querying pg1: %w", context.DeadlineExceeded)
	dial := fmt.Errorf("connecting to pg1: %w", netTimeout{})
	refused := errors.New("connecting to pg1: connection refused")
	for _, tt := range []struct {
		name      string
		err       error
		answering bool
		wantCut   bool
	}{
		{"query timeout, node answers through the flood", deadline, true, false},
		{"dial timeout, node answers through the flood", dial, true, false},
		{"query timeout, no flood or no answer", deadline, false, true},
		{"refused, node answers", refused, true, true},
		{"query timeouts past the flood grace, node answers", deadline, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fd := &fakeDatapath{}
			var asked []netip.AddrPort
			c := New(Config{FloodGrace: 10 * time.Second}, []Node{pg1, pg2, pg3}, Options{Datapath: fd,
				Answering: func(b netip.AddrPort) bool { asked = append(asked, b); return tt.answering }})
			t0 := time.Unix(1000, 0)
			obs := []Observation{{Node: "pg1", Timeline: 1, Time: t0}, {Node: "pg2", InRecovery: true, Timeline: 1, Time: t0},
				{Node: "pg3", InRecovery: true, Timeline: 1, Time: t0}}
			step := time.Second // 5 timeouts within the 10 s grace
			if strings.Contains(tt.name, "past the flood grace") {
				step = 4 * time.Second // the 3rd, 4th and 5th come 12, 16 and 20 s after the last good probe
			}
			for i := range 5 {
				obs = append(obs, Observation{Node: "pg1", Err: tt.err, Time: t0.Add(time.Duration(i+1) * step)})
			}
			for _, o := range obs {
				if err := c.Observe(o); err != nil {
					t.Fatal(err)
				}
			}
			if got := slices.Contains(fd.log, "cut "+pg1.Addr.String()); got != tt.wantCut {
				t.Errorf("pg1 cut: %v, want %v (log %v)", got, tt.wantCut, fd.log)
			}
			if !tt.wantCut {
				if diff := gocmp.Diff(addrs(pg1), fd.pools[RW], cmpAddr); diff != "" {
					t.Errorf("rw pool (-want +got):\n%s", diff)
				}
				if len(asked) == 0 || asked[0] != pg1.Addr {
					t.Errorf("Answering asked for %v, want pg1's address", asked)
				}
			}
		})
	}
}
