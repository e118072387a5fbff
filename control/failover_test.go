package control

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
)

// fakePromoter records actions; Promote fails when fail is set.
type fakePromoter struct {
	log        []string
	fail       error
	stopLSN    uint64
	promoted   []string
	failFollow int // the first failFollow calls of Follow fail
	// onPromote and onStop run inside Promote and StopWrites; their
	// error is returned.
	onPromote func(ctx context.Context) error
	onStop    func(ctx context.Context) error
}

func (f *fakePromoter) Promote(ctx context.Context, n Node) error {
	f.log = append(f.log, "promote "+n.Name)
	if f.onPromote != nil {
		if err := f.onPromote(ctx); err != nil {
			return err
		}
	}
	if f.fail != nil {
		return f.fail
	}
	f.promoted = append(f.promoted, n.Name)
	return nil
}

func (f *fakePromoter) Follow(_ context.Context, n, p Node) error {
	f.log = append(f.log, fmt.Sprintf("follow %s->%s", n.Name, p.Name))
	if f.failFollow > 0 {
		f.failFollow--
		return errors.New("connection refused")
	}
	return nil
}

func (f *fakePromoter) SetSynchronous(_ context.Context, p Node, names []string) error {
	f.log = append(f.log, fmt.Sprintf("sync %s %v", p.Name, names))
	return nil
}

func (f *fakePromoter) AllowWrites(_ context.Context, n Node) error {
	f.log = append(f.log, "allowwrites "+n.Name)
	return nil
}

func (f *fakePromoter) StopWrites(ctx context.Context, p Node) (uint64, error) {
	f.log = append(f.log, "stopwrites "+p.Name)
	if f.onStop != nil {
		if err := f.onStop(ctx); err != nil {
			return 0, err
		}
	}
	return f.stopLSN, nil
}

// ev is one event of a failover sequence.
type ev struct {
	node  string
	down  bool
	rep   bool     // in recovery
	tl    uint32   // default 1
	lsn   uint64   // WALLSN for a primary, receive/replay for a replica
	from  string   // replica streams from this node ("" = not streaming)
	owner *bool    // change VIP ownership before this event
	sbs   []string // primary: the members pg_stat_replication lists
}

func up(n string, lsn uint64) ev            { return ev{node: n, lsn: lsn} }
func down(n string) ev                      { return ev{node: n, down: true} }
func streams(n, from string, lsn uint64) ev { return ev{node: n, rep: true, from: from, lsn: lsn} }
func lost(n string, lsn uint64) ev          { return ev{node: n, rep: true, lsn: lsn} }

var healthy = []ev{up("pg1", 1000), streams("pg2", "pg1", 1000), streams("pg3", "pg1", 1000)}

func evs(parts ...any) []ev {
	var out []ev
	for _, p := range parts {
		switch p := p.(type) {
		case ev:
			out = append(out, p)
		case []ev:
			out = append(out, p...)
		}
	}
	return out
}

func rep3(e ev) []ev { return []ev{e, e, e} }

type rig struct {
	c     *Controller
	dp    *fakeDatapath
	pr    *fakePromoter
	owner bool
	clock time.Time
	woken []string
	slept []time.Duration
}

func newRig(cfg Config, nodes ...Node) *rig {
	r := &rig{dp: &fakeDatapath{}, pr: &fakePromoter{}, owner: true, clock: time.Unix(1_700_000_000, 0)}
	cfg.Failover = true
	if len(nodes) == 0 {
		nodes = []Node{pg1, pg2, pg3}
	}
	r.c = New(cfg, nodes, Options{Datapath: r.dp, Promoter: r.pr,
		Owner:     func() bool { return r.owner },
		OwnerName: func() string { return "172.20.0.22" },
		Wake:      func(n ...string) { r.woken = append(r.woken, n...) },
		Now:       func() time.Time { return r.clock },
		Sleep: func(d time.Duration) {
			r.slept = append(r.slept, d)
			r.clock = r.clock.Add(d)
		}})
	return r
}

func (r *rig) addrOf(name string) string {
	return r.c.member(name).Addr.String()
}

func (r *rig) run(t *testing.T, events []ev) {
	t.Helper()
	for _, e := range events {
		if e.owner != nil {
			r.owner = *e.owner
			continue
		}
		r.clock = r.clock.Add(50 * time.Millisecond)
		o := Observation{Node: e.node, Time: r.clock, InRecovery: e.rep, Timeline: max(e.tl, 1)}
		if e.down {
			o.Err = errors.New("connection refused")
		} else if e.rep {
			o.ReceiveLSN, o.ReplayLSN = e.lsn, e.lsn
			if e.from != "" {
				o.Streaming, o.Upstream = true, r.addrOf(e.from)
			}
		} else {
			o.WALLSN = e.lsn
			for _, n := range e.sbs {
				o.Standbys = append(o.Standbys, Standby{AppName: n, Addr: r.c.member(n).Addr.Addr()})
			}
		}
		if err := r.c.Observe(o); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *rig) actions() []string {
	var out []string
	for _, l := range r.pr.log {
		if !strings.HasPrefix(l, "sync ") {
			out = append(out, l)
		}
	}
	return out
}

func TestFailover(t *testing.T) {
	notOwner := false
	tests := []struct {
		name       string
		cfg        Config
		nodes      []Node
		events     []ev
		wantRW     string // writer address' node, "" for none
		wantAct    []string
		wantReason string // substring of Status().NoWriterReason
	}{
		{name: "primary dies: the most advanced replica is promoted, the other follows",
			events: evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200)),
			wantRW: "pg3", wantAct: []string{"promote pg3", "follow pg2->pg3"}},
		{name: "a blip shorter than the rule promotes nobody",
			events: evs(healthy, down("pg1"), down("pg1"), lost("pg2", 1100), lost("pg3", 1100), up("pg1", 1100)),
			wantRW: "pg1"},
		{name: "LB loses the primary but the replicas still stream: nobody is promoted",
			events: evs(healthy, rep3(down("pg1")), streams("pg2", "pg1", 1300), streams("pg3", "pg1", 1300)),
			wantRW: "", wantReason: "still streams from pg1"},
		{name: "replicas not probed since the primary failed: wait",
			events: evs(healthy, rep3(down("pg1"))),
			wantRW: "", wantReason: "waiting for pg2 to be probed"},
		{name: "equal positions: priority, then name",
			nodes:  []Node{pg1, pg2, {Name: "pg3", Addr: pg3.Addr, Priority: 5}},
			events: evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1100)),
			wantRW: "pg3", wantAct: []string{"promote pg3", "follow pg2->pg3"}},
		{name: "equal positions and priorities: name",
			events: evs(healthy, rep3(down("pg1")), lost("pg3", 1100), lost("pg2", 1100)),
			wantRW: "pg2", wantAct: []string{"promote pg2", "follow pg3->pg2"}},
		{name: "candidate too far behind: refused",
			cfg:    Config{MaxLagOnFailover: 100},
			events: evs(up("pg1", 5000), streams("pg2", "pg1", 1000), streams("pg3", "pg1", 1000), rep3(down("pg1")), lost("pg2", 1000), lost("pg3", 1000)),
			wantRW: "", wantReason: "more than max_lag_on_failover"},
		{name: "a node that does not own the VIP does not promote",
			events: evs(healthy, ev{owner: &notOwner}, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1100)),
			wantRW: "", wantReason: "does not own the VIP"},
		{name: "no replica left: no failover",
			events: evs(healthy, rep3(down("pg2")), rep3(down("pg3")), rep3(down("pg1"))),
			wantRW: "", wantReason: "no healthy replica"},
		{name: "old primary back on the old timeline is fenced",
			events: evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200),
				ev{node: "pg3", tl: 2, lsn: 1300}, up("pg1", 1150), up("pg1", 1150), up("pg1", 1150)),
			wantRW: "pg3", wantAct: []string{"promote pg3", "follow pg2->pg3"}},
		{name: "sync mode: no synchronous set yet, no failover",
			cfg:    Config{Synchronous: true},
			events: evs(up("pg1", 1000), lost("pg2", 900), lost("pg3", 900), rep3(down("pg1")), lost("pg2", 1000), lost("pg3", 1000)),
			wantRW: "", wantReason: "no replica is known to hold every acknowledged commit"},
		{name: "sync mode: caught-up set, the most advanced member is promoted",
			cfg: Config{Synchronous: true},
			events: evs(healthy, up("pg1", 1000), streams("pg2", "pg1", 1000), streams("pg3", "pg1", 1000),
				rep3(down("pg1")), lost("pg2", 1000), lost("pg3", 1010)),
			wantRW: "pg3", wantAct: []string{"promote pg3", "follow pg2->pg3"}},
		{name: "sync mode: a member of the set is down: refused",
			cfg: Config{Synchronous: true},
			events: evs(healthy, up("pg1", 1000), streams("pg2", "pg1", 1000), streams("pg3", "pg1", 1000),
				rep3(down("pg3")), rep3(down("pg1")), lost("pg2", 1000)),
			wantRW: "", wantReason: "synchronous replica pg3 is not available"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(tt.cfg, tt.nodes...)
			r.run(t, tt.events)
			var got string
			if rw := r.dp.pools[RW]; len(rw) == 1 {
				got = r.c.byAddr(rw[0]).Name
			} else if len(rw) > 1 {
				t.Fatalf("%d writers: %v", len(rw), rw)
			}
			if got != tt.wantRW {
				t.Errorf("writer %q, want %q (reason %q)", got, tt.wantRW, r.c.Status().NoWriterReason)
			}
			if diff := gocmp.Diff(tt.wantAct, r.actions()); diff != "" {
				t.Errorf("actions (-want +got):\n%s", diff)
			}
			if reason := r.c.Status().NoWriterReason; !strings.Contains(reason, tt.wantReason) {
				t.Errorf("reason %q, want it to say %q", reason, tt.wantReason)
			}
		})
	}
}

func TestFencedNeverInAPool(t *testing.T) {
	r := newRig(Config{})
	r.run(t, evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200),
		ev{node: "pg3", tl: 2, lsn: 1300}, up("pg1", 1150), up("pg1", 1150)))
	m := r.c.member("pg1")
	if !m.Fenced || len(m.Pools) != 0 {
		t.Fatalf("old primary: fenced %v, pools %v; want fenced, no pools", m.Fenced, m.Pools)
	}
	for _, svc := range []Service{RW, RO} {
		for _, b := range r.dp.pools[svc] {
			if b == pg1.Addr {
				t.Fatalf("fenced pg1 in the %v pool", svc)
			}
		}
	}
	// Rejoined as a replica of the new primary: back in the read pool.
	r.run(t, []ev{streams("pg1", "pg3", 1300), streams("pg1", "pg3", 1300)})
	if m := r.c.member("pg1"); m.Fenced || len(m.Pools) != 1 || m.Pools[0] != RO {
		t.Fatalf("rejoined pg1: fenced %v, pools %v; want the read pool", m.Fenced, m.Pools)
	}
}

func TestFailoverPromoteFails(t *testing.T) {
	r := newRig(Config{})
	r.pr.fail = fmt.Errorf("connecting: %w", ErrNotPromoted)
	r.run(t, evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200)))
	st := r.c.Status()
	if st.Writer != "" || !strings.Contains(st.NoWriterReason, "promoting pg3 failed") {
		t.Fatalf("status %+v, want no writer and the failure said", st)
	}
	if len(st.Events) != 1 || st.Events[0].Err == "" {
		t.Fatalf("events %+v, want one failed failover", st.Events)
	}
	// More probes within the backoff (50 ms apart): no new attempt.
	r.run(t, evs(down("pg1"), lost("pg2", 1100), lost("pg3", 1200), down("pg1")))
	if got := r.actions(); len(got) != 1 {
		t.Fatalf("actions within the backoff %v, want one promotion attempt", got)
	}
	if !strings.Contains(r.c.Status().NoWriterReason, "next try in") {
		t.Fatalf("reason %q, want the next try said", r.c.Status().NoWriterReason)
	}
	// Past the backoff: tried again, and this time it works.
	r.pr.fail = nil
	r.clock = r.clock.Add(minBackoff)
	r.run(t, evs(lost("pg2", 1100), lost("pg3", 1200)))
	if diff := gocmp.Diff([]string{"promote pg3", "promote pg3", "follow pg2->pg3"}, r.actions()); diff != "" {
		t.Fatalf("actions (-want +got):\n%s", diff)
	}
}

// TestFailoverPromoteUnconfirmed: pg_promote went out but its answer did
// not come back: the candidate takes writes (it promotes whatever the
// answer), and the event keeps the error.
func TestFailoverPromoteUnconfirmed(t *testing.T) {
	r := newRig(Config{})
	r.pr.fail = errors.New("reading the answer: connection reset")
	r.run(t, evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200)))
	st := r.c.Status()
	if st.Writer != "pg3" || len(st.Events) != 1 || !strings.Contains(st.Events[0].Err, "connection reset") {
		t.Fatalf("status %+v, want pg3 writing and the error in the event", st)
	}
}

// TestOwnerLostBeforePromote: the VIP moves away between the decision
// and pg_promote: nothing is promoted.
func TestOwnerLostBeforePromote(t *testing.T) {
	r := newRig(Config{})
	r.c.o.Go = func(f func()) { r.owner = false; f() }
	r.run(t, evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200)))
	if got := r.actions(); len(got) != 0 {
		t.Fatalf("actions %v after losing the VIP, want none", got)
	}
	if st := r.c.Status(); len(st.Events) != 1 || !strings.Contains(st.Events[0].Err, "does not own the VIP") {
		t.Fatalf("events %+v, want one failover refused for ownership", st.Events)
	}
}

// TestBackupTakesOverInSyncMode: an LB host that was backup did not write
// the synchronous set; it learns from the primary's pg_stat_replication
// which replicas stream from it, and once it owns the VIP and the primary
// is gone it promotes only with all of them reachable, choosing among all
// candidates by WAL position (here pg3, ahead, although the primary
// listed only pg2), as its peer would from the same positions.
func TestBackupTakesOverInSyncMode(t *testing.T) {
	owner := true
	for _, tt := range []struct {
		name   string
		sbs    []string
		lsn3   uint64
		want   []string
		reason string
	}{
		{name: "both streamed, equal positions: the first by name", sbs: []string{"pg2", "pg3"}, lsn3: 1000,
			want: []string{"promote pg2", "follow pg3->pg2"}},
		{name: "one streamed, the other ahead: the most advanced", sbs: []string{"pg2"}, lsn3: 1010,
			want: []string{"promote pg3", "follow pg2->pg3"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(Config{Synchronous: true})
			r.owner = false
			r.run(t, evs(healthy, ev{node: "pg1", lsn: 1000, sbs: tt.sbs}, streams("pg2", "pg1", 1000),
				rep3(down("pg1")), ev{owner: &owner}, lost("pg2", 1000), lost("pg3", tt.lsn3)))
			if diff := gocmp.Diff(tt.want, r.actions()); diff != "" {
				t.Fatalf("actions (-want +got):\n%s\nreason: %s", diff, r.c.Status().NoWriterReason)
			}
		})
	}
	// A replica that streamed from the primary is unreachable: refused.
	r := newRig(Config{Synchronous: true})
	r.owner = false
	r.run(t, evs(healthy, ev{node: "pg1", lsn: 1000, sbs: []string{"pg2", "pg3"}}, streams("pg2", "pg1", 1000),
		rep3(down("pg3")), rep3(down("pg1")), ev{owner: &owner}, lost("pg2", 1000)))
	if acts := r.actions(); len(acts) != 0 || !strings.Contains(r.c.Status().NoWriterReason, "pg3 is not available") {
		t.Fatalf("actions %v, reason %q: want none, pg3 named", acts, r.c.Status().NoWriterReason)
	}
}

func TestNonOwnerChangesNoSyncSet(t *testing.T) {
	r := newRig(Config{Synchronous: true})
	r.owner = false
	r.run(t, evs(healthy, up("pg1", 1000)))
	if len(r.pr.log) != 0 {
		t.Fatalf("a node without the VIP changed PostgreSQL: %v", r.pr.log)
	}
}

func TestEventsBounded(t *testing.T) {
	r := newRig(Config{})
	for i := range maxEvents + 10 {
		r.c.record(Event{Kind: "failover", To: fmt.Sprint(i)})
	}
	st := r.c.Status()
	if len(st.Events) != maxEvents || st.Events[maxEvents-1].To != fmt.Sprint(maxEvents+9) {
		t.Fatalf("%d events, last %+v; want the newest %d", len(st.Events), st.Events[len(st.Events)-1], maxEvents)
	}
}

// TestRepointRetries: a replica that cannot follow at once is tried
// again with growing pauses until it does.
func TestRepointRetries(t *testing.T) {
	r := newRig(Config{})
	r.pr.failFollow = 2
	r.run(t, evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200)))
	want := []string{"promote pg3", "follow pg2->pg3", "follow pg2->pg3", "follow pg2->pg3"}
	if diff := gocmp.Diff(want, r.actions()); diff != "" {
		t.Fatalf("actions (-want +got):\n%s", diff)
	}
	if diff := gocmp.Diff([]time.Duration{followRetry, 2 * followRetry}, r.slept); diff != "" {
		t.Fatalf("pauses (-want +got):\n%s", diff)
	}
}

func TestWitnessesWoken(t *testing.T) {
	r := newRig(Config{})
	r.run(t, evs(healthy, down("pg1")))
	if diff := gocmp.Diff([]string{"pg2", "pg3"}, r.woken); diff != "" {
		t.Fatalf("woken after the primary's first failure (-want +got):\n%s", diff)
	}
}

func TestSwitchover(t *testing.T) {
	r := newRig(Config{})
	r.pr.stopLSN = 1000
	r.run(t, healthy)
	e, err := r.c.Switchover(context.Background(), "pg2")
	if err != nil {
		t.Fatal(err)
	}
	if e.From != "pg1" || e.To != "pg2" {
		t.Fatalf("event %+v", e)
	}
	want := []string{"stopwrites pg1", "promote pg2", "follow pg3->pg2"}
	if diff := gocmp.Diff(want, r.actions()); diff != "" {
		t.Fatalf("actions (-want +got):\n%s", diff)
	}
	if rw := r.dp.pools[RW]; len(rw) != 1 || rw[0] != pg2.Addr {
		t.Fatalf("writer %v, want pg2", rw)
	}
	if !strings.Contains(strings.Join(r.dp.log, " "), "cut "+pg1.Addr.String()) {
		t.Fatalf("old primary's flows not cut: %v", r.dp.log)
	}
	// The old primary, still a primary on timeline 1, is fenced.
	r.run(t, []ev{up("pg1", 1000)})
	if !r.c.member("pg1").Fenced {
		t.Fatal("old primary not fenced after the switchover")
	}
	if _, err := r.c.Switchover(context.Background(), "pg1"); !errors.Is(err, ErrNotReplica) {
		t.Fatalf("switchover to the fenced old primary: %v, want ErrNotReplica", err)
	}
}

func TestSwitchoverWaitsForReplay(t *testing.T) {
	r := newRig(Config{})
	r.pr.stopLSN = 2000
	r.run(t, healthy)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := r.c.Switchover(ctx, "pg2")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("switchover to a replica behind the stop LSN: %v, want a deadline", err)
	}
	if diff := gocmp.Diff([]string{"stopwrites pg1", "allowwrites pg1"}, r.actions()); diff != "" {
		t.Fatalf("actions (-want +got):\n%s", diff)
	}
}

// TestStaleObservationAfterPromotion: a probe taken before the promotion
// (replica, old timeline) that lands after it does not flip the new
// primary back.
func TestStaleObservationAfterPromotion(t *testing.T) {
	r := newRig(Config{})
	r.run(t, evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200)))
	if rw := r.dp.pools[RW]; len(rw) != 1 || rw[0] != pg3.Addr {
		t.Fatalf("writer %v, want pg3", rw)
	}
	r.run(t, []ev{lost("pg3", 1200)}) // in flight during the promotion: timeline 1
	if rw := r.dp.pools[RW]; len(rw) != 1 || rw[0] != pg3.Addr {
		t.Fatalf("a stale observation emptied the write pool: %v", rw)
	}
	// Its readers were cut at the promotion (it left the read pool); its
	// writers never.
	for _, l := range r.dp.log {
		if l == "cut "+pg3.Addr.String() || l == "cut "+pg3.Addr.String()+" from rw" {
			t.Fatalf("the new primary's writers were cut: %q in %v", l, r.dp.log)
		}
	}
}

// TestNoSyncChangeAgainstAFailingPrimary: once the writer fails a probe,
// replicas that stop streaming do not make xlb reconfigure it (a call to a
// partitioned primary would only hang).
func TestNoSyncChangeAgainstAFailingPrimary(t *testing.T) {
	r := newRig(Config{Synchronous: true})
	r.run(t, evs(healthy, up("pg1", 1000)))
	before := strings.Join(r.pr.log, "|")
	if !strings.Contains(before, "sync pg1 [pg2 pg3]") {
		t.Fatalf("no synchronous set written for the healthy cluster: %v", r.pr.log)
	}
	r.run(t, evs(down("pg1"), lost("pg2", 1000), lost("pg3", 1000)))
	if after := strings.Join(r.pr.log, "|"); after != before {
		t.Fatalf("reconfigured a failing primary: %v", r.pr.log[len(strings.Split(before, "|")):])
	}
}

func TestSwitchoverOnBackupRefused(t *testing.T) {
	r := newRig(Config{})
	r.run(t, healthy)
	r.owner = false
	_, err := r.c.Switchover(context.Background(), "pg2")
	if !errors.Is(err, ErrNotOwner) || !strings.Contains(err.Error(), "172.20.0.22") {
		t.Fatalf("switchover on a backup: %v, want ErrNotOwner naming the owner", err)
	}
	if len(r.actions()) != 0 {
		t.Fatalf("actions %v, want none", r.actions())
	}
}

// TestSwitchoverCancelled cancels the client at each step: before
// pg_promote the switchover is undone and pg1 writes again; once
// pg_promote is under way it completes.
func TestSwitchoverCancelled(t *testing.T) {
	tests := []struct {
		name    string
		at      string // "stop" or "promote"
		wantRW  string
		wantAct []string
	}{
		{name: "while stopping writes: undone", at: "stop", wantRW: "pg1",
			wantAct: []string{"stopwrites pg1", "allowwrites pg1"}},
		{name: "while promoting: completes", at: "promote", wantRW: "pg2",
			wantAct: []string{"stopwrites pg1", "promote pg2", "follow pg3->pg2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(Config{})
			r.pr.stopLSN = 1000
			r.run(t, healthy)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var promoteCtxErr error
			switch tt.at {
			case "stop":
				r.pr.onStop = func(context.Context) error { cancel(); return ctx.Err() }
			case "promote":
				r.pr.onPromote = func(pctx context.Context) error {
					cancel()
					promoteCtxErr = pctx.Err()
					return nil
				}
			}
			_, err := r.c.Switchover(ctx, "pg2")
			if tt.wantRW == "pg1" && !errors.Is(err, context.Canceled) {
				t.Fatalf("switchover: %v, want it cancelled", err)
			}
			if tt.wantRW == "pg2" && (err != nil || promoteCtxErr != nil) {
				t.Fatalf("switchover: %v (promotion's context: %v), want it done", err, promoteCtxErr)
			}
			if diff := gocmp.Diff(tt.wantAct, r.actions()); diff != "" {
				t.Fatalf("actions (-want +got):\n%s", diff)
			}
			if rw := r.dp.pools[RW]; len(rw) != 1 || r.c.byAddr(rw[0]).Name != tt.wantRW {
				t.Fatalf("writer %v, want %s", rw, tt.wantRW)
			}
		})
	}
}

// TestSwitchoverPromoteUnconfirmed: pg_promote sent, answer lost: the old
// primary is not made writable again (that would make two writers).
func TestSwitchoverPromoteUnconfirmed(t *testing.T) {
	r := newRig(Config{})
	r.pr.stopLSN = 1000
	r.pr.fail = errors.New("reading the answer: connection reset")
	r.run(t, healthy)
	if _, err := r.c.Switchover(context.Background(), "pg2"); err != nil {
		t.Fatal(err)
	}
	for _, a := range r.actions() {
		if a == "allowwrites pg1" {
			t.Fatalf("old primary made writable after pg_promote was sent: %v", r.actions())
		}
	}
	if rw := r.dp.pools[RW]; len(rw) != 1 || rw[0] != pg2.Addr {
		t.Fatalf("writer %v, want pg2", rw)
	}
}

// TestStaleReplicaLeavesReadPool: pg3's WAL receiver stopped (it
// replayed all it received, so PostgreSQL reports no lag) while pg1 keeps
// writing: once past max_read_lag it takes no reads; pg2, which keeps up,
// does. Back in step, pg3 returns.
func TestStaleReplicaLeavesReadPool(t *testing.T) {
	r := newRig(Config{MaxReadLag: 2 * time.Second})
	r.run(t, healthy)
	inRO := func(n string) bool {
		for _, b := range r.dp.pools[RO] {
			if r.c.byAddr(b).Name == n {
				return true
			}
		}
		return false
	}
	if !inRO("pg3") {
		t.Fatalf("pg3 not in the read pool at the start: %v", r.dp.pools[RO])
	}
	var left time.Duration
	start := r.clock
	for k := uint64(1); k <= 80 && left == 0; k++ {
		r.run(t, []ev{up("pg1", 1000+k*100), streams("pg2", "pg1", 1000+k*100), lost("pg3", 1000)})
		if !inRO("pg3") {
			left = r.clock.Sub(start)
		}
	}
	if left == 0 {
		t.Fatalf("stale pg3 still in the read pool after 12 s (lag %v)", r.c.member("pg3").ReplayLag)
	}
	if left < 2*time.Second || left > 3*time.Second {
		t.Errorf("pg3 left the read pool %v after it stalled, want just past max_read_lag (2 s)", left)
	}
	if !inRO("pg2") {
		t.Errorf("pg2, in step, left the read pool: %v", r.dp.pools[RO])
	}
	if m := r.c.member("pg3"); m.LagBytes == 0 {
		t.Errorf("pg3's lag in bytes is 0, want the WAL it lacks")
	}
	wal := r.c.member("pg1").WALLSN
	r.run(t, []ev{streams("pg3", "pg1", wal), streams("pg3", "pg1", wal)})
	if !inRO("pg3") {
		t.Fatalf("pg3, caught up, not back in the read pool: %v", r.dp.pools[RO])
	}
}

// TestIdlePrimaryNoLag: a replica that replayed everything is not behind
// however long the primary writes nothing.
func TestIdlePrimaryNoLag(t *testing.T) {
	r := newRig(Config{MaxReadLag: time.Second})
	for range 40 {
		r.run(t, healthy)
	}
	if m := r.c.member("pg3"); m.ReplayLag != 0 || len(m.Pools) != 1 {
		t.Fatalf("pg3 lag %v pools %v, want 0 and the read pool", m.ReplayLag, m.Pools)
	}
}

// TestRecheckBeforePromote: right before pg_promote every node is read
// afresh. Another LB promoted pg2 meanwhile: this one promotes nobody
// and routes writes to pg2. pg2 got further than this LB last saw:
// pg2, not pg3, is promoted (both LBs pick the same node).
func TestRecheckBeforePromote(t *testing.T) {
	tests := []struct {
		name    string
		fresh   func(now time.Time) []Observation
		wantRW  string
		wantAct []string
	}{
		{name: "already promoted elsewhere",
			fresh: func(now time.Time) []Observation {
				return []Observation{
					{Node: "pg2", Time: now, Timeline: 2, WALLSN: 1300},
					{Node: "pg3", Time: now, InRecovery: true, Timeline: 1, ReceiveLSN: 1200, ReplayLSN: 1200},
				}
			},
			wantRW: "pg2", wantAct: nil},
		{name: "the fresh read changes the candidate",
			fresh: func(now time.Time) []Observation {
				return []Observation{
					{Node: "pg2", Time: now, InRecovery: true, Timeline: 1, ReceiveLSN: 1250, ReplayLSN: 1250},
					{Node: "pg3", Time: now, InRecovery: true, Timeline: 1, ReceiveLSN: 1200, ReplayLSN: 1200},
				}
			},
			wantRW: "pg2", wantAct: []string{"promote pg2", "follow pg3->pg2"}},
		{name: "a candidate streams again from the old primary: nobody",
			fresh: func(now time.Time) []Observation {
				return []Observation{
					{Node: "pg2", Time: now, InRecovery: true, Timeline: 1, ReceiveLSN: 1250, ReplayLSN: 1250, Streaming: true, Upstream: pg1.Addr.String()},
					{Node: "pg3", Time: now, InRecovery: true, Timeline: 1, ReceiveLSN: 1250, ReplayLSN: 1250, Streaming: true, Upstream: pg1.Addr.String()},
				}
			},
			wantRW: "", wantAct: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(Config{})
			var asked []string
			r.c.o.Reprobe = func(_ context.Context, nodes []Node) []Observation {
				for _, n := range nodes {
					asked = append(asked, n.Name)
				}
				r.clock = r.clock.Add(10 * time.Millisecond)
				return tt.fresh(r.clock)
			}
			r.run(t, evs(healthy, rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200)))
			if diff := gocmp.Diff([]string{"pg2", "pg3"}, asked); diff != "" {
				t.Fatalf("re-read (-want +got):\n%s", diff)
			}
			if diff := gocmp.Diff(tt.wantAct, r.actions()); diff != "" {
				t.Fatalf("actions (-want +got):\n%s", diff)
			}
			var got string
			if rw := r.dp.pools[RW]; len(rw) == 1 {
				got = r.c.byAddr(rw[0]).Name
			}
			if got != tt.wantRW {
				t.Fatalf("writer %q, want %q", got, tt.wantRW)
			}
		})
	}
}

// TestForeignNodeRefused: a node of another cluster (system identifier)
// is never routed to nor promoted, and status says so.
func TestForeignNodeRefused(t *testing.T) {
	r := newRig(Config{})
	obs := func(n string, sysid uint64, rec bool, lsn uint64) Observation {
		r.clock = r.clock.Add(50 * time.Millisecond)
		o := Observation{Node: n, Time: r.clock, InRecovery: rec, Timeline: 1, SystemID: sysid}
		if rec {
			o.ReceiveLSN, o.ReplayLSN, o.Streaming, o.Upstream = lsn, lsn, true, pg1.Addr.String()
		} else {
			o.WALLSN = lsn
		}
		return o
	}
	for _, o := range []Observation{obs("pg1", 7, false, 1000), obs("pg2", 7, true, 1000), obs("pg3", 9, true, 1000)} {
		if err := r.c.Observe(o); err != nil {
			t.Fatal(err)
		}
	}
	if m := r.c.member("pg3"); !m.Foreign || len(m.Pools) != 0 {
		t.Fatalf("pg3 foreign %v pools %v, want refused", m.Foreign, m.Pools)
	}
	if w := strings.Join(r.c.Status().Warnings, "; "); !strings.Contains(w, "pg3 has system identifier 9") {
		t.Fatalf("warnings %q, want pg3 named", w)
	}
}

// TestSyncUsesApplicationNames: synchronous_standby_names lists what the
// primary reports as each standby's application_name.
func TestSyncUsesApplicationNames(t *testing.T) {
	r := newRig(Config{Synchronous: true})
	r.clock = r.clock.Add(50 * time.Millisecond)
	if err := r.c.Observe(Observation{Node: "pg1", Time: r.clock, Timeline: 1, WALLSN: 1000,
		Standbys: []Standby{{AppName: "walreceiver", Addr: pg2.Addr.Addr()}, {AppName: "pg3", Addr: pg3.Addr.Addr()}}}); err != nil {
		t.Fatal(err)
	}
	r.run(t, []ev{streams("pg2", "pg1", 1000), streams("pg3", "pg1", 1000)})
	if !strings.Contains(strings.Join(r.pr.log, "|"), "sync pg1 [walreceiver pg3]") {
		t.Fatalf("promoter log %v, want the application names", r.pr.log)
	}
	if w := strings.Join(r.c.Warnings(), "; "); !strings.Contains(w, `pg2 streams as application_name "walreceiver"`) {
		t.Fatalf("warnings %q, want pg2's name said", w)
	}
}

// TestKnownTimelineFencesAfterRestart: a restarted daemon that reaches
// only the old primary (timeline 1) while an earlier run saw timeline 2
// routes no writes to it.
func TestKnownTimelineFencesAfterRestart(t *testing.T) {
	var kept Durable
	r := newRig(Config{Known: Durable{Timeline: 2}})
	r.c.o.Remember = func(d Durable) { kept = d }
	r.run(t, []ev{up("pg1", 1000), down("pg2"), down("pg3")})
	if rw := r.dp.pools[RW]; len(rw) != 0 {
		t.Fatalf("writes routed to %v, the old primary on timeline 1", rw)
	}
	if !r.c.member("pg1").Fenced {
		t.Fatal("pg1 not fenced")
	}
	r.run(t, []ev{{node: "pg2", tl: 3, lsn: 2000}})
	if kept.Timeline != 3 {
		t.Fatalf("remembered %+v, want timeline 3", kept)
	}
}

// failingCut fails the first n cuts.
type failingCut struct {
	fakeDatapath
	n int
}

func (f *failingCut) Cut(b netip.AddrPort) error {
	if f.n > 0 {
		f.n--
		return errors.New("map busy")
	}
	return f.fakeDatapath.Cut(b)
}

// TestCutRetried: a cut that fails is tried again at the next
// observation, and status shows the error until it works.
func TestCutRetried(t *testing.T) {
	r := newRig(Config{})
	dp := &failingCut{}
	r.c.dp = dp
	r.run(t, healthy)
	dp.n = 1
	for _, e := range rep3(down("pg3")) {
		r.clock = r.clock.Add(50 * time.Millisecond)
		r.c.Observe(Observation{Node: e.node, Time: r.clock, Err: errors.New("refused")})
	}
	if st := r.c.Status(); !strings.Contains(st.DatapathError, "map busy") {
		t.Fatalf("datapath error %q, want the failed cut said", st.DatapathError)
	}
	r.run(t, []ev{up("pg1", 1000)})
	if !strings.Contains(strings.Join(dp.log, " "), "cut "+pg3.Addr.String()) {
		t.Fatalf("the failed cut was not tried again: %v", dp.log)
	}
	if st := r.c.Status(); st.DatapathError != "" {
		t.Fatalf("datapath error %q after the retry worked", st.DatapathError)
	}
}

// TestPromotionSeenByAProbe: a probe sees the target primary on the new
// timeline while Promote is still running (probes do not wait for it);
// the target must take writes, not be fenced by a timeline counted twice.
func TestPromotionSeenByAProbe(t *testing.T) {
	for _, kind := range []string{"switchover", "failover"} {
		t.Run(kind, func(t *testing.T) {
			r := newRig(Config{})
			r.pr.stopLSN = 1000
			r.run(t, healthy)
			target := "pg2"
			if kind == "failover" {
				target = "pg3"
			}
			r.pr.onPromote = func(context.Context) error {
				r.clock = r.clock.Add(10 * time.Millisecond)
				return r.c.Observe(Observation{Node: target, Time: r.clock, Timeline: 2, WALLSN: 1300})
			}
			if kind == "switchover" {
				if _, err := r.c.Switchover(context.Background(), target); err != nil {
					t.Fatal(err)
				}
			} else {
				r.run(t, evs(rep3(down("pg1")), lost("pg2", 1100), lost("pg3", 1200)))
			}
			r.run(t, []ev{{node: target, tl: 2, lsn: 1400}})
			m := r.c.member(target)
			if m.Fenced || len(r.dp.pools[RW]) != 1 || r.dp.pools[RW][0] != m.Addr {
				t.Fatalf("%s: fenced %v timeline %d (cluster %d), writers %v; want it writing",
					target, m.Fenced, m.Timeline, r.c.Status().Timeline, r.dp.pools[RW])
			}
		})
	}
}
