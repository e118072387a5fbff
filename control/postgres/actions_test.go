package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/health"
)

// startPG starts a loopback primary (slots for slots) and a replica per
// name in replicas, all stopped and removed in cleanup, and returns them
// with their control.Nodes, primary first.
func startPG(ctx context.Context, t *testing.T, primaryName string, slots []string, replicas ...string) ([]*lab.Postgres, []control.Node) {
	t.Helper()
	port, err := lab.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	primary, err := lab.StartPostgres(ctx, nil, lab.PostgresConfig{Port: port, Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := primary.Close(); err != nil {
			t.Errorf("stopping %s: %v", primaryName, err)
		}
	})
	pgs := []*lab.Postgres{primary}
	nodes := []control.Node{{Name: primaryName, Addr: primary.Addr()}}
	for _, name := range replicas {
		port, err := lab.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		r, err := lab.StartReplica(ctx, nil, lab.ReplicaConfig{
			PostgresConfig: lab.PostgresConfig{Port: port}, Name: name, Primary: primary.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := r.Close(); err != nil {
				t.Errorf("stopping %s: %v", name, err)
			}
		})
		pgs = append(pgs, r)
		nodes = append(nodes, control.Node{Name: name, Addr: r.Addr()})
	}
	return pgs, nodes
}

// appConn connects to pg as the lab's application role, closed in cleanup.
func appConn(ctx context.Context, t *testing.T, pg *lab.Postgres) *pgx.Conn {
	t.Helper()
	conn, err := health.Connect(ctx, pg.Addr().Addr().String(), pg.Addr().Port(), health.Login{User: lab.User, Database: lab.Database, Password: lab.ProcessSecrets().Password}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// appExec runs sql on pg as the lab's application role in a new session.
func appExec(ctx context.Context, pg *lab.Postgres, sql string) error {
	conn, err := health.Connect(ctx, pg.Addr().Addr().String(), pg.Addr().Port(), health.Login{User: lab.User, Database: lab.Database, Password: lab.ProcessSecrets().Password}, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// rows returns the numbers in table on pg, read as the application role
// (also on a replica).
func rows(ctx context.Context, t *testing.T, pg *lab.Postgres, table string) string {
	t.Helper()
	out, err := lab.Query(ctx, nil, lab.ProcessSecrets().AppConn(pg.Addr().Addr(), int(pg.Addr().Port())),
		fmt.Sprintf(`select string_agg(n::text, ',' order by n) from %s`, table))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// queryUntil polls sql on pg until its output is want.
func queryUntil(ctx context.Context, t *testing.T, pg *lab.Postgres, sql, want string) {
	t.Helper()
	var got string
	err := pollEvery(ctx, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		var err error
		got, err = pg.QueryLocal(ctx, sql)
		return err == nil && got == want, err
	})
	if err != nil {
		t.Fatalf("waiting for %q = %q (last %q): %v", sql, want, got, err)
	}
}

// replayed waits until replica has replayed primary's current WAL.
func replayed(ctx context.Context, t *testing.T, primary, replica *lab.Postgres) {
	t.Helper()
	lsn, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := replica.WaitReplaying(wctx, lsn); err != nil {
		t.Fatal(err)
	}
}

// TestPGActions drives the Promoter over real PostgreSQL 15 servers on
// loopback: pg1 primary with replicas pg2 and pg3; pg1 dies, pg2 is
// promoted, pg3 follows it, commits on pg2 wait for pg3 when it is
// synchronous, and StopWrites fences pg2 with pg3 replaying everything.
func TestPGActions(t *testing.T) {
	lab.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pgs, nodes := startPG(ctx, t, "pg1", []string{"pg2", "pg3"}, "pg2", "pg3")
	pg1, pg2, pg3 := pgs[0], pgs[1], pgs[2]
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	a := NewActions(health.Login{User: lab.AdminUser, Database: "postgres", Password: lab.ProcessSecrets().AdminPassword}, 5*time.Second)
	const table = "public.xlb_actions"

	// CheckRole: the admin role is a superuser, the application role not.
	if err := a.CheckRole(ctx, n1); err != nil {
		t.Errorf("CheckRole of the admin role: %v", err)
	}
	app := NewActions(health.Login{User: lab.User, Database: lab.Database, Password: lab.ProcessSecrets().Password}, 5*time.Second)
	if err := app.CheckRole(ctx, n1); !errors.Is(err, ErrNotSuperuser) {
		t.Errorf("CheckRole of the application role: %v, want ErrNotSuperuser", err)
	}

	if err := appExec(ctx, pg1, "create table xlb_actions (n int primary key); insert into xlb_actions values (1)"); err != nil {
		t.Fatal(err)
	}
	replayed(ctx, t, pg1, pg2)
	replayed(ctx, t, pg1, pg3)
	if err := pg1.StopImmediate(10 * time.Second); err != nil {
		t.Fatal(err)
	}

	// Promote: out of recovery, timeline 2, writable; again is a no-op;
	// a dead node's error names it.
	start := time.Now()
	if err := a.Promote(ctx, n2); err != nil {
		t.Fatal(err)
	}
	t.Logf("Promote took %v", time.Since(start))
	if got, err := pg2.QueryLocal(ctx, "select pg_is_in_recovery(), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); err != nil || got != "f|00000002" {
		t.Errorf("pg2 after Promote: in recovery, timeline = %q, %v; want f|00000002", got, err)
	}
	if err := appExec(ctx, pg2, "insert into xlb_actions values (2)"); err != nil {
		t.Errorf("write on the promoted pg2: %v", err)
	}
	if err := a.Promote(ctx, n2); err != nil {
		t.Errorf("Promote of a primary: %v, want nil", err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	err := a.Promote(dctx, n1)
	dcancel()
	if err == nil || !strings.Contains(err.Error(), "pg1") {
		t.Errorf("Promote of the dead pg1: %v, want an error naming pg1", err)
	}

	// Follow: pg3 streams from pg2 on its slot, created there, with its
	// application_name and passfile kept; it sees rows written after the
	// promotion.
	if err := appExec(ctx, pg2, "insert into xlb_actions values (3)"); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := a.Follow(ctx, n3, n2); err != nil {
		t.Fatal(err)
	}
	t.Logf("Follow took %v until pg3 streamed from pg2", time.Since(start))
	if got, err := pg3.QueryLocal(ctx, "select status, slot_name, sender_host, sender_port from pg_stat_wal_receiver"); err != nil ||
		got != fmt.Sprintf("streaming|pg3|%v|%d", n2.Addr.Addr(), n2.Addr.Port()) {
		t.Errorf("pg3's WAL receiver = %q, %v; want streaming from pg2 on slot pg3", got, err)
	}
	conninfo, err := pg3.QueryLocal(ctx, "show primary_conninfo")
	if err != nil {
		t.Fatal(err)
	}
	kv, err := parseConnInfo(conninfo)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"application_name", "passfile", "user", "host", "port", "connect_timeout"} {
		v, _ := kv.get(k)
		t.Logf("pg3 primary_conninfo %s=%s", k, v)
	}
	if v, _ := kv.get("application_name"); v != "pg3" {
		t.Errorf("pg3's application_name = %q after Follow, want pg3", v)
	}
	if v, _ := kv.get("user"); v != lab.ReplicationUser {
		t.Errorf("pg3's replication user = %q after Follow, want %s", v, lab.ReplicationUser)
	}
	if v, _ := kv.get("passfile"); v == "" {
		t.Error("pg3's primary_conninfo lost its passfile")
	}
	queryUntil(ctx, t, pg2, "select active from pg_replication_slots where slot_name = 'pg3'", "t")
	if err := appExec(ctx, pg2, "insert into xlb_actions values (4)"); err != nil {
		t.Fatal(err)
	}
	replayed(ctx, t, pg2, pg3)
	if got := rows(ctx, t, pg3, table); got != "1,2,3,4" {
		t.Errorf("pg3 rows after Follow = %q, want 1,2,3,4", got)
	}
	if got, err := pg3.QueryLocal(ctx, "show recovery_target_timeline"); err != nil || got != "latest" {
		t.Errorf("pg3 recovery_target_timeline = %q, %v; want latest", got, err)
	}
	if err := a.Follow(ctx, n3, n2); err != nil {
		t.Errorf("Follow again: %v", err)
	}
	if err := a.Follow(ctx, n2, n3); err == nil || !strings.Contains(err.Error(), "not a replica") {
		t.Errorf("Follow of the primary pg2: %v, want an error saying it is not a replica", err)
	}

	// SetSynchronous: a commit on pg2 waits for pg3 (wait event SyncRep)
	// while pg3 is down and ends once it is back; clearing the setting
	// releases a waiting commit.
	if err := a.SetSynchronous(ctx, n2, []string{"pg3"}); err != nil {
		t.Fatal(err)
	}
	if got, err := pg2.QueryLocal(ctx, "show synchronous_standby_names"); err != nil || got != `ANY 1 ("pg3")` {
		t.Errorf("synchronous_standby_names = %q, %v; want ANY 1 (\"pg3\")", got, err)
	}
	queryUntil(ctx, t, pg2, "select sync_state from pg_stat_replication where application_name = 'pg3'", "quorum")
	waitingCommit := func(n int) <-chan error {
		t.Helper()
		if err := pg3.Stop(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		conn := appConn(ctx, t, pg2)
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, fmt.Sprintf("insert into xlb_actions values (%d)", n))
			done <- err
		}()
		// Only the application's session: autovacuum's own commits wait
		// for the standby too and would make the count 2.
		queryUntil(ctx, t, pg2, fmt.Sprintf("select count(*) from pg_stat_activity where wait_event = 'SyncRep' and backend_type = 'client backend' and usename = '%s'", lab.User), "1")
		select {
		case err := <-done:
			t.Fatalf("commit %d ended (%v) while its synchronous standby was down", n, err)
		default:
		}
		return done
	}
	awaitCommit := func(n int, done <-chan error, after string) {
		t.Helper()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("commit %d after %s: %v", n, after, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("commit %d still waiting 30 s after %s", n, after)
		}
	}
	done := waitingCommit(5)
	restarted := time.Now()
	if err := pg3.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	awaitCommit(5, done, "pg3 came back")
	t.Logf("the waiting commit ended %v after pg3's restart began", time.Since(restarted))

	done = waitingCommit(6)
	if err := a.SetSynchronous(ctx, n2, nil); err != nil {
		t.Fatal(err)
	}
	awaitCommit(6, done, "synchronous_standby_names was cleared")
	if got, err := pg2.QueryLocal(ctx, "show synchronous_standby_names"); err != nil || got != "" {
		t.Errorf("synchronous_standby_names = %q, %v after clearing; want empty", got, err)
	}
	if err := pg3.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	queryUntil(ctx, t, pg3, "select status, sender_port from pg_stat_wal_receiver", fmt.Sprintf("streaming|%d", n2.Addr.Port()))

	// StopWrites: sessions end, writes fail as read-only, walsenders stay
	// and pg3 replays up to the returned LSN; Promote (or AllowWrites)
	// undoes it.
	idle := appConn(ctx, t, pg2)
	before, err := pg2.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lsn, err := a.StopWrites(ctx, n2)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := health.ParseLSN(before); lsn < uint64(b) {
		t.Errorf("StopWrites returned %v, before it the WAL was at %s", health.LSN(lsn), before)
	}
	t.Logf("StopWrites returned %v (before: %s)", health.LSN(lsn), before)
	if _, err := idle.Exec(ctx, "select 1"); err == nil {
		t.Error("a session opened before StopWrites still answers")
	}
	err = appExec(ctx, pg2, "insert into xlb_actions values (7)")
	if sqlState(err) != "25006" {
		t.Errorf("write after StopWrites: %v, want SQLSTATE 25006 (read_only_sql_transaction)", err)
	}
	queryUntil(ctx, t, pg2, "select state from pg_stat_replication where application_name = 'pg3'", "streaming")
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	err = pg3.WaitReplaying(wctx, health.LSN(lsn).String())
	wcancel()
	if err != nil {
		t.Error(err)
	}
	if err := a.Promote(ctx, n2); err != nil {
		t.Fatal(err)
	}
	if err := appExec(ctx, pg2, "insert into xlb_actions values (8)"); err != nil {
		t.Errorf("write after Promote of a fenced primary: %v", err)
	}
	if _, err := a.StopWrites(ctx, n2); err != nil {
		t.Fatal(err)
	}
	if err := a.AllowWrites(ctx, n2); err != nil {
		t.Fatal(err)
	}
	if err := appExec(ctx, pg2, "insert into xlb_actions values (9)"); err != nil {
		t.Errorf("write after AllowWrites: %v", err)
	}
	replayed(ctx, t, pg2, pg3)
	if got := rows(ctx, t, pg3, table); got != "1,2,3,4,5,6,8,9" {
		t.Errorf("pg3 rows = %q, want 1,2,3,4,5,6,8,9", got)
	}
}

// TestFollowDiverged checks that Follow fails, rather than reports
// streaming, for a replica that replayed past the new primary's promotion
// point: pg2 is promoted while pg1 still writes to pg3.
func TestFollowDiverged(t *testing.T) {
	lab.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pgs, nodes := startPG(ctx, t, "pg1", []string{"pg2", "pg3"}, "pg2", "pg3")
	pg1, pg3 := pgs[0], pgs[2]
	a := NewActions(health.Login{User: lab.AdminUser, Database: "postgres", Password: lab.ProcessSecrets().AdminPassword}, 5*time.Second)
	if err := a.Promote(ctx, nodes[1]); err != nil {
		t.Fatal(err)
	}
	if err := appExec(ctx, pg1, "create table xlb_diverged (n int); insert into xlb_diverged values (1)"); err != nil {
		t.Fatal(err)
	}
	replayed(ctx, t, pg1, pg3)
	fctx, fcancel := context.WithTimeout(ctx, 3*time.Second)
	defer fcancel()
	err := a.Follow(fctx, nodes[2], nodes[1])
	t.Logf("Follow: %v", err)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "pg3") {
		t.Errorf("Follow of a diverged replica: %v, want a deadline error naming pg3", err)
	}
}

func TestSyncStandbyNames(t *testing.T) {
	tests := []struct {
		names []string
		want  string
	}{
		{nil, ""},
		{[]string{"pg2"}, `ANY 1 ("pg2")`},
		{[]string{"pg2", "pg3"}, `ANY 1 ("pg2", "pg3")`},
		{[]string{`we"ird`}, `ANY 1 ("we""ird")`},
	}
	for _, tt := range tests {
		if got := syncStandbyNames(tt.names); got != tt.want {
			t.Errorf("syncStandbyNames(%q) = %q, want %q", tt.names, got, tt.want)
		}
	}
}

func TestQuoteLiteral(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "''"},
		{"host=a", "'host=a'"},
		{"it's", "'it''s'"},
		{`a\b'c`, `E'a\\b''c'`},
	}
	for _, tt := range tests {
		if got := quoteLiteral(tt.in); got != tt.want {
			t.Errorf("quoteLiteral(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
