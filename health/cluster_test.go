package health

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// The daemon's defaults (DESIGN.md).
const (
	interval = 500 * time.Millisecond
	timeout  = 300 * time.Millisecond
)

// cluster is a loopback primary with a streaming replica.
type cluster struct {
	primary, replica *lab.Postgres
	pg1, pg2         Target
}

// startCluster starts pg1 and its replica pg2 on loopback ports, stopped
// and removed in cleanup.
func startCluster(ctx context.Context, t *testing.T) cluster {
	t.Helper()
	pport, err1 := lab.FreePort()
	rport, err2 := lab.FreePort()
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	primary, err := lab.StartPostgres(ctx, nil, lab.PostgresConfig{Port: pport, Slots: []string{"pg2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := primary.Close(); err != nil {
			t.Errorf("stopping the primary: %v", err)
		}
	})
	replica, err := lab.StartReplica(ctx, nil, lab.ReplicaConfig{
		PostgresConfig: lab.PostgresConfig{Port: rport}, Name: "pg2", Primary: primary.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := replica.Close(); err != nil {
			t.Errorf("stopping the replica: %v", err)
		}
	})
	target := func(name string, addr netip.AddrPort) Target {
		// These servers offer no TLS: prefer (the default) would try it
		// first on every connect, a second backend fork, which the probes'
		// 300 ms bound does not always absorb on a loaded machine.
		return Target{Name: name, Addr: addr, User: lab.User, Database: lab.Database, Password: lab.ProcessSecrets().Password,
			TLS: TLS{SSLMode: "disable"}}
	}
	return cluster{primary: primary, replica: replica,
		pg1: target("pg1", primary.Addr()), pg2: target("pg2", replica.Addr())}
}

// superConn connects to pg as the postgres superuser over its unix socket
// (trusted), for the test's own statements; closed in cleanup.
func superConn(ctx context.Context, t *testing.T, pg *lab.Postgres) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig("sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Database = pg.SocketDir, uint16(pg.Port), "postgres", "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// role is what an observation says about a node's role.
type role struct {
	InRecovery, Streaming bool
	Timeline              uint32
	Upstream              string
	HasWAL, HasReplay     bool
}

func roleOf(o Observation) role {
	return role{InRecovery: o.InRecovery, Streaming: o.Streaming, Timeline: o.Timeline, Upstream: o.Upstream,
		HasWAL: o.WALLSN != 0, HasReplay: o.ReplayLSN != 0}
}

// probeUntil probes with p until ok holds, bounded by ctx.
func probeUntil(ctx context.Context, t *testing.T, p *Prober, what string, ok func(Observation) bool) Observation {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		o := p.Probe(ctx)
		if o.Err == nil && ok(o) {
			return o
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; last observation %+v", what, ctx.Err(), o)
		case <-tick.C:
		}
	}
}

// recorder keeps every observation Watch sends.
type recorder struct {
	mu   sync.Mutex
	obs  []Observation
	more chan struct{} // closed and replaced at every observation
}

func newRecorder() *recorder { return &recorder{more: make(chan struct{})} }

func (r *recorder) run(in <-chan Observation) {
	for o := range in {
		r.mu.Lock()
		r.obs = append(r.obs, o)
		close(r.more)
		r.more = make(chan struct{})
		r.mu.Unlock()
	}
}

// mark returns the index the next observation gets.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.obs)
}

// next returns the first observation of node from index from on for
// which ok holds, and the index after it; it fails t when ctx ends first.
func (r *recorder) next(ctx context.Context, t *testing.T, from int, node, what string, ok func(Observation) bool) (Observation, int) {
	t.Helper()
	for {
		r.mu.Lock()
		for ; from < len(r.obs); from++ {
			if o := r.obs[from]; o.Node == node && ok(o) {
				r.mu.Unlock()
				return o, from + 1
			}
		}
		more := r.more
		r.mu.Unlock()
		select {
		case <-more:
		case <-ctx.Done():
			t.Fatalf("waiting for an observation of %s: %s: %v", node, what, ctx.Err())
		}
	}
}

// watchAll runs WatchWith on targets until cleanup, recording what it
// sends. Without the sentinel unless o says otherwise, so the reprobe
// rules are what the subtests see.
func watchAll(t *testing.T, targets []Target, interval time.Duration) *recorder {
	return watchOpts(t, targets, WatchOptions{Interval: interval, Timeout: timeout, NoSentinel: true})
}

func watchOpts(t *testing.T, targets []Target, o WatchOptions) *recorder {
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Observation)
	rec := newRecorder()
	recDone := make(chan struct{})
	go func() { rec.run(out); close(recDone) }()
	done := make(chan struct{})
	go func() { WatchWith(ctx, targets, o, out); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return within 5 s of its context's end")
		}
		close(out)
		<-recDone
	})
	return rec
}

func ok(o Observation) bool { return o.Err == nil }

// TestCluster probes a real primary and streaming replica through writes,
// a terminated connection, an immediate stop and restart of the primary,
// and the replica's promotion.
func TestCluster(t *testing.T) {
	lab.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	c := startCluster(ctx, t)
	super1, super2 := superConn(ctx, t, c.primary), superConn(ctx, t, c.replica)

	t.Run("probe", func(t *testing.T) {
		p1, p2 := NewProber(c.pg1, timeout), NewProber(c.pg2, timeout)
		t.Cleanup(func() { p1.Close(); p2.Close() })
		o1 := p1.Probe(ctx)
		if o1.Err != nil {
			t.Fatal(o1.Err)
		}
		if diff := cmp.Diff(role{Timeline: 1, HasWAL: true}, roleOf(o1)); diff != "" {
			t.Errorf("primary (-want +got):\n%s", diff)
		}
		if o1.Latency <= 0 || o1.Latency > timeout || o1.Node != "pg1" || o1.Addr != c.pg1.Addr {
			t.Errorf("primary: latency %v, node %s, addr %v; want in (0, %v], pg1, %v", o1.Latency, o1.Node, o1.Addr, timeout, c.pg1.Addr)
		}
		o2 := probeUntil(ctx, t, p2, "the replica streaming", func(o Observation) bool { return o.Streaming })
		want := role{InRecovery: true, Streaming: true, Timeline: 1, Upstream: c.pg1.Addr.String(), HasReplay: true}
		if diff := cmp.Diff(want, roleOf(o2)); diff != "" {
			t.Errorf("replica (-want +got):\n%s", diff)
		}
		o2 = p2.Probe(ctx) // on the open connection
		t.Logf("latency: primary %v (new connection), replica %v (open connection)", o1.Latency, o2.Latency)

		// A write on the primary reaches the replica's replay LSN.
		if _, err := lab.Query(ctx, nil, lab.ProcessSecrets().AppConn(c.pg1.Addr.Addr(), int(c.pg1.Addr.Port())),
			"create table probe_check as select generate_series(1, 10000) as n"); err != nil {
			t.Fatal(err)
		}
		w := p1.Probe(ctx)
		if w.Err != nil || w.WALLSN <= o1.WALLSN {
			t.Fatalf("primary after a write: WAL LSN %v (before %v), err %v; want it advanced", w.WALLSN, o1.WALLSN, w.Err)
		}
		start := time.Now()
		r := probeUntil(ctx, t, p2, "replay to reach "+w.WALLSN.String(), func(o Observation) bool { return o.ReplayLSN >= w.WALLSN })
		t.Logf("replica replayed %v %v after the primary's probe", w.WALLSN, time.Since(start))
		if r.ReceiveLSN < r.ReplayLSN || r.ReplayLag < 0 || r.ReplayLag > 10*time.Second {
			t.Errorf("replica: receive %v replay %v lag %v; want receive >= replay and a small lag", r.ReceiveLSN, r.ReplayLSN, r.ReplayLag)
		}
	})

	t.Run("privilege", func(t *testing.T) {
		// Over the socket, so the password is in no argv.
		if _, err := super1.Exec(ctx, "CREATE ROLE nomon LOGIN PASSWORD 'nomon-pw'", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		if _, err := super1.Exec(ctx, `GRANT CONNECT ON DATABASE "ramos-test-db" TO nomon`, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		var lsn string
		if err := super1.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		if err := c.replica.WaitReplaying(wctx, lsn); err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			target  Target
			wantErr error
		}{{c.pg1, nil}, {c.pg2, ErrPrivilege}} {
			tg := tt.target
			tg.User, tg.Password = "nomon", "nomon-pw"
			p := NewProber(tg, timeout)
			o := p.Probe(ctx)
			p.Close()
			if !errors.Is(o.Err, tt.wantErr) {
				t.Errorf("%s as a role without pg_monitor: %v, want %v", tg.Name, o.Err, tt.wantErr)
			}
		}
	})

	rec := watchAll(t, []Target{c.pg1, c.pg2}, interval)
	from := rec.mark()
	rec.next(ctx, t, from, "pg1", "reachable", ok)
	rec.next(ctx, t, from, "pg2", "streaming", func(o Observation) bool { return ok(o) && o.Streaming })

	t.Run("terminated connection", func(t *testing.T) {
		// The probe that finds its backend gone reprobes at once: no
		// interval reports an error. A probe that times out instead (a
		// loaded machine: the bound is the daemon's 300 ms) tests nothing:
		// then the scenario runs again, at most 3 times. Any other error
		// fails.
		for attempt := 1; ; attempt++ {
			var pids []int32
			rows, err := super1.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = 'xlb'")
			if err == nil {
				pids, err = pgx.CollectRows(rows, pgx.RowTo[int32])
			}
			if err != nil || len(pids) != 1 {
				t.Fatalf("xlb sessions on the primary: %v, %v; want one", pids, err)
			}
			from := rec.mark()
			if _, err := super1.Exec(ctx, "SELECT pg_terminate_backend($1)", pids[0]); err != nil {
				t.Fatal(err)
			}
			timedOut := false
			for range 2 {
				var o Observation
				o, from = rec.next(ctx, t, from, "pg1", "any", func(Observation) bool { return true })
				switch {
				case o.Err == nil:
				case errors.Is(o.Err, context.DeadlineExceeded) && attempt < 3:
					timedOut = true
					t.Logf("attempt %d: a probe timed out (%v); again", attempt, o.Err)
				default:
					t.Errorf("observation after the backend was terminated: %v, want the reprobe to hide it", o.Err)
				}
			}
			if timedOut {
				// Wait for a good probe, so one session is back.
				rec.next(ctx, t, from, "pg1", "reachable", ok)
				continue
			}
			var now int32
			if err := super1.QueryRow(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = 'xlb'").Scan(&now); err != nil {
				t.Fatal(err)
			}
			if now == pids[0] {
				t.Errorf("xlb's session is still backend %d, want a new one", now)
			}
			return
		}
	})

	t.Run("immediate stop and restart", func(t *testing.T) {
		from := rec.mark()
		stopped := time.Now()
		if err := c.primary.StopImmediate(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		down, _ := rec.next(ctx, t, from, "pg1", "an error", func(o Observation) bool { return o.Err != nil })
		t.Logf("primary down reported %v after the stop: %v", down.Time.Sub(stopped), down.Err)
		if d := down.Time.Sub(stopped); d > interval+2*timeout+200*time.Millisecond {
			t.Errorf("primary down reported %v after the stop, want within an interval and the (re)probe's timeouts", d)
		}
		notStreaming, _ := rec.next(ctx, t, from, "pg2", "not streaming", func(o Observation) bool { return ok(o) && !o.Streaming })
		t.Logf("replica not streaming seen %v after the stop (probe granularity %v)", notStreaming.Time.Sub(stopped), interval)

		// A fresh prober of the dead node answers within its timeout.
		p := NewProber(c.pg1, timeout)
		start := time.Now()
		if o := p.Probe(ctx); o.Err == nil || time.Since(start) > timeout {
			t.Errorf("probe of the stopped primary: %v after %v, want an error within %v", o.Err, time.Since(start), timeout)
		}
		p.Close()

		from = rec.mark()
		if err := c.primary.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		ready := time.Now()
		up, _ := rec.next(ctx, t, from, "pg1", "reachable", ok)
		t.Logf("primary up reported %v after it accepted connections", up.Time.Sub(ready))
		if d := up.Time.Sub(ready); d > 2*interval {
			t.Errorf("primary up reported %v after it accepted connections, want under 2 intervals (%v)", d, 2*interval)
		}
		streaming, _ := rec.next(ctx, t, from, "pg2", "streaming again", func(o Observation) bool { return ok(o) && o.Streaming })
		t.Logf("replica streaming again seen %v after the primary accepted connections", streaming.Time.Sub(ready))
	})

	t.Run("sentinel sees a stop at once", func(t *testing.T) {
		const long = 3 * time.Second
		srec := watchOpts(t, []Target{c.pg1}, WatchOptions{Interval: long, Timeout: timeout, FastInterval: 20 * time.Millisecond})
		srec.next(ctx, t, 0, "pg1", "reachable", ok)
		// Let the sentinel connect (it dials next to the first probe): the
		// subtests' watcher's probe, this one's probe and its sentinel.
		super := superConn(ctx, t, c.primary)
		if !pollUntil(5*time.Second, func() bool { n, _ := xlbSessions(ctx, super); return n >= 3 }) {
			t.Fatal("the sentinel connection never showed up in pg_stat_activity")
		}
		from := srec.mark()
		stopped := time.Now()
		if err := c.primary.StopImmediate(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		down, _ := srec.next(ctx, t, from, "pg1", "an error", func(o Observation) bool { return o.Err != nil })
		d := down.Time.Sub(stopped)
		t.Logf("with the sentinel, primary down reported %v after the stop (probe interval %v)", d, long)
		if d > long/2 {
			t.Errorf("primary down reported %v after the stop: the sentinel did not wake the prober (interval %v)", d, long)
		}
		if err := c.primary.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		srec.next(ctx, t, srec.mark(), "pg1", "reachable again", ok)
	})

	t.Run("restart between probes", func(t *testing.T) {
		// With a long interval, a restart fits between two probes: the
		// next probe finds its connection broken and the server up, and
		// its reprobe makes the restart invisible. A restart that ends too
		// close to the next probe (a loaded machine) tests nothing: then
		// the setup runs again with twice the interval, at most 4 times.
		var (
			rec       *recorder
			last      Observation
			from      int
			long      = 3 * time.Second
			restarted bool
		)
		for attempt := 1; attempt <= 4; attempt++ {
			rec = watchAll(t, []Target{c.pg1}, long)
			last, from = rec.next(ctx, t, 0, "pg1", "reachable", ok)
			if err := c.primary.StopImmediate(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			if err := c.primary.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			d := time.Since(last.Time)
			if d <= long-500*time.Millisecond {
				restarted = true
				break
			}
			t.Logf("attempt %d: the restart took until %v after the last probe, too close to the next one (%v); again with twice the interval", attempt, d, long)
			long *= 2
		}
		if !restarted {
			t.Fatalf("4 restarts never fitted between two probes, the last %v apart", long/2)
		}
		o, _ := rec.next(ctx, t, from, "pg1", "any", func(Observation) bool { return true })
		if o.Err != nil {
			t.Errorf("first probe after a restart between probes: %v, want the reprobe to succeed", o.Err)
		}
		if d := o.Time.Sub(last.Time); d > long+timeout {
			t.Errorf("first probe after the restart came %v after the last, want about one interval (%v)", d, long)
		}
	})

	t.Run("promotion", func(t *testing.T) {
		from := rec.mark()
		start := time.Now()
		var promoted bool
		if err := super2.QueryRow(ctx, "SELECT pg_promote()").Scan(&promoted); err != nil || !promoted {
			t.Fatalf("pg_promote() = %v, %v", promoted, err)
		}
		done := time.Now()
		var ckptTLI int32
		if err := super2.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&ckptTLI); err != nil {
			t.Fatal(err)
		}
		t.Logf("pg_promote() took %v; right after it pg_control_checkpoint() says timeline %d", done.Sub(start), ckptTLI)

		o, _ := rec.next(ctx, t, from, "pg2", "promoted", func(o Observation) bool { return ok(o) && !o.InRecovery })
		t.Logf("promotion seen %v after pg_promote() returned", o.Time.Sub(done))
		if diff := cmp.Diff(role{Timeline: 2, HasWAL: true}, roleOf(o)); diff != "" {
			t.Errorf("first observation of pg2 out of recovery (-want +got):\n%s", diff)
		}
		if o.ReceiveLSN != 0 || o.ReplayLag != 0 {
			t.Errorf("promoted pg2: receive LSN %v, lag %v; want none", o.ReceiveLSN, o.ReplayLag)
		}
		// The old primary still says it is one, on the old timeline: the
		// controller fences it by that.
		o1, _ := rec.next(ctx, t, from, "pg1", "reachable", ok)
		if diff := cmp.Diff(role{Timeline: 1, HasWAL: true}, roleOf(o1)); diff != "" {
			t.Errorf("old primary (-want +got):\n%s", diff)
		}
	})
}

// xlbSessions counts the sessions xlb's probes hold on the server.
func xlbSessions(ctx context.Context, super *pgx.Conn) (int, error) {
	var n int
	err := super.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", ApplicationName).Scan(&n)
	return n, err
}

// pollUntil polls cond every 20 ms until it holds or d passes.
func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
