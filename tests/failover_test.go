package tests

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// upSyncLab brings up a lab of its own whose daemon runs in synchronous
// mode, taken down in cleanup (also when the test fails), and returns it
// opened for drills.
func upSyncLab(t *testing.T) *lab.Running {
	t.Helper()
	return upLab(t, lab.Options{Synchronous: true})
}

// logReport logs a drill's table, line by line.
func logReport(t *testing.T, rep *lab.DrillReport) {
	t.Helper()
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		t.Log(l)
	}
}

// maxOutage is a loose bound on a failover's outage: a partition takes
// wal_receiver_timeout (5 s) before the replicas stop witnessing for the
// old primary, the rest well under a second here.
const maxOutage = 10 * time.Second

// TestFailoverDrill runs the drill of `xlb-lab drill`, two trials of each
// fault, on a lab in synchronous mode: no acknowledged commit may be lost,
// no write may reach the fenced old primary, and writes resume within
// maxOutage each time.
func TestFailoverDrill(t *testing.T) {
	r := upSyncLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, f := range lab.Faults {
		t.Run(string(f), func(t *testing.T) {
			rep, err := lab.Drill(ctx, lab.DrillOptions{Prefix: r.Prefix, Fault: f, Trials: 2, Clients: 4, Timeout: 30 * time.Second, Out: tlog{t}})
			if rep != nil {
				logReport(t, rep)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Synchronous {
				t.Fatal("the daemon does not run in synchronous mode")
			}
			for _, tr := range rep.Trials {
				if tr.Lost != 0 {
					t.Errorf("trial %d: %d acknowledged commits missing on the new primary %s: %v", tr.Trial, tr.Lost, tr.NewPrimary, tr.LostIDs)
				}
				if tr.FencedWrites != 0 {
					t.Errorf("trial %d: %d writes reached the fenced %s (%d rows, %d writer sessions)",
						tr.Trial, tr.FencedWrites, tr.OldPrimary, tr.FencedRows, tr.FencedSessions)
				}
				if d := time.Duration(float64(tr.Outage) * float64(time.Second)); d <= 0 || d > maxOutage {
					t.Errorf("trial %d: outage %.3f s, want (0, %v]", tr.Trial, tr.Outage, maxOutage)
				}
				if tr.Acknowledged == 0 {
					t.Errorf("trial %d: no INSERT acknowledged", tr.Trial)
				}
			}
		})
	}
}

// TestSwitchoverUnderLoad hands the primary role from pg1 to pg2 with xlb
// switchover while writers insert through VIP:3000: no acknowledged
// commit is lost, writes resume on pg2, and pg1 stays fenced and gets no
// write after pg2 took over.
func TestSwitchoverUnderLoad(t *testing.T) {
	r := upSyncLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg1, pg2 := lab.HostAddr("pg1"), lab.HostAddr("pg2")
	if err := r.CreateDrillTable(ctx); err != nil {
		t.Fatal(err)
	}
	w := r.StartWriters(ctx, 4, 1)
	defer w.Stop()
	begin := time.Now()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := w.WaitAck(wctx, begin, func(a lab.Ack) bool { return a.Server == pg1 })
	wcancel()
	if err != nil {
		t.Fatalf("writing to pg1 through the VIP: %v (failures %v)", err, w.Errors())
	}
	// Writers keep going for a while before the switchover.
	wctx, wcancel = context.WithTimeout(ctx, 10*time.Second)
	_, err = w.WaitAck(wctx, time.Now().Add(500*time.Millisecond), nil)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}

	// An idle reader on pg2 through VIP:3001: once pg2 is the primary it
	// is in no read pool, and its reader must learn it (it would go on
	// reading from the primary through the read-only port).
	rconn, err := readerOn(ctx, r, "pg2")
	if err != nil {
		t.Fatal(err)
	}
	defer rconn.Close(context.Background())
	reader := block(t, "reader on pg2 via :3001", rconn)

	t0 := time.Now()
	out, err := exec.CommandContext(ctx, r.Binary, "switchover", "--to", "pg2", "--socket", r.Socket).CombinedOutput()
	if err != nil {
		t.Fatalf("xlb switchover --to pg2: %v: %s", err, out)
	}
	t.Logf("xlb switchover: %s", strings.TrimSpace(string(out)))
	at := reader.ended(t, maxReset)
	t.Logf("switchover: pg2's reader through VIP:3001 was cut %v after xlb switchover began", at.Sub(t0).Round(time.Millisecond))
	wctx, wcancel = context.WithTimeout(ctx, 30*time.Second)
	first, err := w.WaitAck(wctx, t0, func(a lab.Ack) bool { return a.Server == pg2 })
	wcancel()
	if err != nil {
		t.Fatalf("writes did not resume on pg2: %v (failures %v)", err, w.Errors())
	}
	// A second of writes on pg2.
	wctx, wcancel = context.WithTimeout(ctx, 30*time.Second)
	_, err = w.WaitAck(wctx, first.At.Add(time.Second), func(a lab.Ack) bool { return a.Server == pg2 })
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	acks := w.Stop()
	t.Logf("switchover: writes resumed on pg2 %v after xlb switchover began; %d INSERTs acknowledged; writer failures %v",
		first.At.Sub(t0).Round(time.Millisecond), len(acks), w.Errors())

	ids := make([]int64, 0, len(acks))
	for _, a := range acks {
		ids = append(ids, a.ID)
		if a.At.After(first.At) && a.Server != pg2 {
			t.Errorf("INSERT %d acknowledged by %v after writes moved to pg2", a.ID, a.Server)
		}
	}
	missing, err := r.MissingOn(ctx, "pg2", ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d acknowledged commits missing on pg2: %v", len(missing), len(ids), missing[:min(len(missing), 20)])
	}
	wctx, wcancel = context.WithTimeout(ctx, 10*time.Second)
	_, err = r.WaitBackends(wctx, "pg1 fenced", func(bs []lab.Backend) bool {
		b, _ := lab.Find(bs, "pg1")
		return b.State == "fenced" && len(b.Pools) == 0
	})
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	requireNoWritesOn(ctx, t, r, "pg1", first.At)
}

// requireNoWritesOn fails t when host has a drill row written, or a
// writer session begun, after since.
func requireNoWritesOn(ctx context.Context, t *testing.T, r *lab.Running, host string, since time.Time) {
	t.Helper()
	rows, err := r.WrittenAfter(ctx, host, since)
	if err != nil {
		t.Fatal(err)
	}
	sessions, err := r.WriterSessionsAfter(ctx, host, since)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) > 0 || sessions > 0 {
		t.Errorf("%s got writes after %s: rows %v, %d writer sessions", host, since.Format("15:04:05.000"), rows, sessions)
	}
}

// TestRestartedOldPrimaryStaysFenced kills the primary, lets xlb fail
// over, and restarts the old primary without rejoining it: it comes back
// a primary on the old timeline, which xlb must keep fenced, so new
// sessions through VIP:3000 land on the new primary and the old one gets
// no write.
func TestRestartedOldPrimaryStaysFenced(t *testing.T) {
	r := upSyncLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := lab.Drill(ctx, lab.DrillOptions{Prefix: r.Prefix, Fault: lab.FaultKill, Trials: 1, SkipRejoin: true, Timeout: 30 * time.Second, Out: tlog{t}})
	if rep != nil {
		logReport(t, rep)
	}
	if err != nil {
		t.Fatal(err)
	}
	tr := rep.Trials[0]
	if tr.Lost != 0 || tr.FencedWrites != 0 {
		t.Errorf("drill: %d lost, %d writes to the fenced %s", tr.Lost, tr.FencedWrites, tr.OldPrimary)
	}
	old, newp := tr.OldPrimary, tr.NewPrimary
	oldAddr, newAddr := lab.HostAddr(old), lab.HostAddr(newp)

	// The old primary answers as a primary: only xlb keeps writes away.
	conn, err := r.Connect(ctx, oldAddr, lab.PostgresPort)
	if err != nil {
		t.Fatal(err)
	}
	var inRecovery bool
	err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
	conn.Close(ctx)
	if err != nil || inRecovery {
		t.Fatalf("%s after its restart: in recovery %t (%v), want a primary on its old timeline", old, inRecovery, err)
	}

	// Fresh sessions, each asked where it landed, for 3 s.
	requireSessionsOn(ctx, t, r, 2, newp, newAddr, old, oldAddr)
	bs, err := r.Backends(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := lab.Find(bs, old); b.State != "fenced" || len(b.Pools) != 0 {
		t.Errorf("%s after 3 s: %s/%s in pools %v, want fenced in none", old, b.Role, b.State, b.Pools)
	}
	requireNoWritesOn(ctx, t, r, old, tr.FaultAt.Add(time.Duration(float64(tr.Outage)*float64(time.Second))))
}

// TestCutBetweenLBAndPrimary blackholes pg1's address in lb1's namespace
// only: the LB loses the primary while the replicas still stream from it,
// so xlb must promote nobody and say why; once the route is gone, writes
// go to pg1 again.
func TestCutBetweenLBAndPrimary(t *testing.T) {
	r := upSyncLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg1 := lab.HostAddr("pg1")
	route := []string{"route", "add", "blackhole", netip.PrefixFrom(pg1, 32).String()}
	lb := r.NS(r.LB)
	if err := lb.Run("ip", route...); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	removed := false
	removeRoute := func() error {
		if removed {
			return nil
		}
		removed = true
		return lb.Run("ip", "route", "del", "blackhole", netip.PrefixFrom(pg1, 32).String())
	}
	t.Cleanup(func() {
		if err := removeRoute(); err != nil {
			t.Errorf("removing the blackhole route: %v", err)
		}
	})

	var reason string
	poll := func(d time.Duration, cond func(*lab.ControlStatus, []lab.Backend) (bool, error)) error {
		deadline := time.Now().Add(d)
		for {
			cs, err := r.Control(ctx)
			if err != nil {
				return err
			}
			bs, err := r.Backends(ctx)
			if err != nil {
				return err
			}
			reason = cs.NoWriterReason
			done, err := cond(cs, bs)
			if err != nil || done {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("not so after %v: writer %q, reason %q, backends %v", d, cs.Writer, cs.NoWriterReason, bs)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Nobody may be promoted at any point of the cut: every poll checks.
	noPromotion := func(cs *lab.ControlStatus, bs []lab.Backend) error {
		if len(cs.Events) > 0 {
			return fmt.Errorf("the daemon acted during the cut: %+v", cs.Events)
		}
		for _, h := range []string{"pg2", "pg3"} {
			if b, _ := lab.Find(bs, h); b.Role != "replica" {
				return fmt.Errorf("%s is %s during the cut", h, b.Role)
			}
		}
		return nil
	}
	err := poll(10*time.Second, func(cs *lab.ControlStatus, bs []lab.Backend) (bool, error) {
		if err := noPromotion(cs, bs); err != nil {
			return false, err
		}
		b, _ := lab.Find(bs, "pg1")
		return b.State == "down" && strings.Contains(cs.NoWriterReason, "still streams"), nil
	})
	if err != nil {
		t.Fatalf("waiting for xlb to see pg1 down and refuse to promote: %v", err)
	}
	t.Logf("%v after the cut: pg1 down, no writer: %q", time.Since(cut).Round(time.Millisecond), reason)
	hold := 5*time.Second - time.Since(cut)
	err = poll(hold, func(cs *lab.ControlStatus, bs []lab.Backend) (bool, error) {
		if err := noPromotion(cs, bs); err != nil {
			return false, err
		}
		if cs.Writer != "" {
			return false, fmt.Errorf("writer %q during the cut", cs.Writer)
		}
		return time.Since(cut) >= 5*time.Second, nil
	})
	if err != nil {
		t.Fatal(err)
	}

	if err := removeRoute(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	err = poll(20*time.Second, func(cs *lab.ControlStatus, bs []lab.Backend) (bool, error) {
		b, _ := lab.Find(bs, "pg1")
		return cs.Writer == "pg1" && b.State == "up" && slices.Equal(b.Pools, []string{fmt.Sprint(lab.PortRW)}), noPromotion(cs, bs)
	})
	if err != nil {
		t.Fatalf("after the cut: %v", err)
	}
	t.Logf("pg1 writes again %v after the route went", time.Since(healed).Round(time.Millisecond))
	conn, err := r.Connect(ctx, lab.VIP, lab.PortRW)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE cut_test (id int)"); err != nil {
		t.Fatalf("writing through VIP:%d after the cut: %v", lab.PortRW, err)
	}
	if server, err := serverOf(ctx, conn); err != nil || server != pg1.String() {
		t.Fatalf("write through VIP:%d after the cut landed on %q (%v), want pg1 %v", lab.PortRW, server, err, pg1)
	}
}

// requireSessionsOn opens fresh sessions through VIP:3000 for 3 s, each
// writing one row of trial and asking where it landed, and fails t unless
// they all landed on newAddr (newName) and none on the fenced oldAddr
// (oldName).
func requireSessionsOn(ctx context.Context, t *testing.T, r *lab.Running, trial int, newName string, newAddr netip.Addr, oldName string, oldAddr netip.Addr) {
	t.Helper()
	since := time.Now()
	sessions := map[netip.Addr]int{}
	for seq := int64(1); time.Since(since) < 3*time.Second; seq++ {
		c, err := r.Connect(ctx, lab.VIP, lab.PortRW)
		if err != nil {
			t.Fatalf("connecting through VIP:%d: %v", lab.PortRW, err)
		}
		var server string
		err = c.QueryRow(ctx, "INSERT INTO "+lab.DrillTable+" (id, trial, client, ts) VALUES ($1, $2, 0, clock_timestamp()) RETURNING host(inet_server_addr())",
			lab.WriterID(trial, 0, seq), trial).Scan(&server)
		c.Close(ctx)
		if err != nil {
			t.Fatalf("writing through VIP:%d: %v", lab.PortRW, err)
		}
		sessions[netip.MustParseAddr(server)]++
	}
	t.Logf("sessions through VIP:%d in 3 s: %v", lab.PortRW, sessions)
	if sessions[oldAddr] != 0 || sessions[newAddr] == 0 {
		t.Errorf("sessions through VIP:%d landed %v: want all on %s (%v), none on the fenced %s", lab.PortRW, sessions, newName, newAddr, oldName)
	}
}
