package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/health"
)

// Actions carries out the controller's decisions on PostgreSQL nodes
// over pgx (control.Promoter): it promotes, repoints, sets synchronous
// standbys and stops writes, connecting as an administrative role for each
// action and closing the connection after it.
//
// The role needs pg_promote, ALTER SYSTEM, pg_reload_conf,
// pg_terminate_backend of every session, pg_create_physical_replication_slot
// and to read primary_conninfo: a superuser in practice.
//
// # Bounds
//
// timeout bounds connecting and every statement. An action ends when its
// ctx does; without a deadline on ctx it ends after maxWait. Waits for a
// condition (a promotion, a WAL receiver streaming, a reload) poll every
// pollEvery within that bound.
type Actions struct {
	login   health.Login
	timeout time.Duration
	// pollEvery is the interval of condition polls; default 10 ms.
	pollEvery time.Duration
	// maxWait bounds an action whose ctx has no deadline; default 30 s.
	maxWait time.Duration
}

var _ control.Promoter = (*Actions)(nil)

// NewActions returns a Promoter that logs in with login on every node,
// bounding connections and statements by timeout. It does not connect yet.
func NewActions(login health.Login, timeout time.Duration) *Actions {
	return &Actions{login: login, timeout: timeout,
		pollEvery: 10 * time.Millisecond, maxWait: 30 * time.Second}
}

// SQLSTATEs the actions tell apart.
const (
	sqlstateNotInPrerequisiteState = "55000" // pg_promote on a primary: recovery is not in progress
	sqlstateDuplicateObject        = "42710" // the replication slot exists already
)

// Promote makes replica n a primary: pg_promote(wait => false), then a
// poll of pg_is_in_recovery() every pollEvery until it is false (the
// server's own wait, pg_promote(wait => true), polls every 100 ms, several
// times what a promotion takes), then AllowWrites, so a node that
// StopWrites fenced takes writes again.
// A node that is a primary already only gets AllowWrites. It returns an
// error naming n when a step fails or ctx ends first.
func (a *Actions) Promote(ctx context.Context, n control.Node) error {
	ctx, cancel := a.bound(ctx)
	defer cancel()
	start := time.Now()
	conn, err := a.connect(ctx, n.Addr.Addr().String(), n.Addr.Port())
	if err != nil {
		return fmt.Errorf("promoting %s: %w: %w", n.Name, control.ErrNotPromoted, err)
	}
	defer a.close(conn)

	rec, err := a.inRecovery(ctx, conn)
	if err != nil {
		return fmt.Errorf("promoting %s: %w: %w", n.Name, control.ErrNotPromoted, err)
	}
	if rec {
		var signalled bool
		err := a.queryRow(ctx, conn, "SELECT pg_promote(wait => false)").Scan(&signalled)
		var pgErr *pgconn.PgError
		switch {
		case sqlState(err) == sqlstateNotInPrerequisiteState:
			// Promoted by someone else since the check: done below.
		case errors.As(err, &pgErr):
			// The server refused it: nothing was signalled.
			return fmt.Errorf("promoting %s: running pg_promote: %w: %w", n.Name, control.ErrNotPromoted, err)
		case err != nil:
			// Lost on the way back: the promotion may be under way.
			return fmt.Errorf("promoting %s: running pg_promote: %w", n.Name, err)
		case !signalled:
			return fmt.Errorf("promoting %s: pg_promote could not signal the postmaster: %w", n.Name, control.ErrNotPromoted)
		}
		err = a.poll(ctx, func(ctx context.Context) (bool, error) {
			rec, err := a.inRecovery(ctx, conn)
			return err == nil && !rec, err
		})
		if err != nil {
			return fmt.Errorf("promoting %s: waiting for the end of recovery: %w", n.Name, err)
		}
		slog.Debug("out of recovery", "node", n.Name, "took", time.Since(start))
	}
	if err := a.allowWrites(ctx, conn); err != nil {
		return fmt.Errorf("promoting %s: %w", n.Name, err)
	}
	return nil
}

// AllowWrites undoes StopWrites on n: ALTER SYSTEM RESET
// default_transaction_read_only and a reload, confirmed by a poll of the
// setting. It does nothing when n is not read-only by default. It returns
// an error naming n when a step fails, or when the setting stays on (set
// in postgresql.conf, which ALTER SYSTEM cannot undo).
func (a *Actions) AllowWrites(ctx context.Context, n control.Node) error {
	ctx, cancel := a.bound(ctx)
	defer cancel()
	conn, err := a.connect(ctx, n.Addr.Addr().String(), n.Addr.Port())
	if err != nil {
		return fmt.Errorf("allowing writes on %s: %w", n.Name, err)
	}
	defer a.close(conn)
	if err := a.allowWrites(ctx, conn); err != nil {
		return fmt.Errorf("allowing writes on %s: %w", n.Name, err)
	}
	return nil
}

func (a *Actions) allowWrites(ctx context.Context, conn *pgx.Conn) error {
	if on, err := a.show(ctx, conn, "default_transaction_read_only"); err != nil || on == "off" {
		return err
	}
	if err := a.exec(ctx, conn, "ALTER SYSTEM RESET default_transaction_read_only"); err != nil {
		return fmt.Errorf("resetting default_transaction_read_only: %w", err)
	}
	return a.reloadUntil(ctx, conn, "default_transaction_read_only", "off")
}

// Follow points replica n at primary p. On p it creates n's replication
// slot when n names one (primary_slot_name) and p lacks it. On n it
// replaces host and port of primary_conninfo with p's, keeping every other
// keyword (user, passfile, application_name, TLS…) and dropping hostaddr,
// sets recovery_target_timeline to latest and reloads: PostgreSQL 15
// restarts the WAL receiver with the new primary_conninfo. It returns once
// n's pg_stat_wal_receiver shows it streaming from p on p's timeline (a
// replica first streams its old timeline up to p's promotion point, which
// one that replayed past that point, and so cannot follow p without a
// rewind, does too). It returns an error naming n and p when a step fails,
// n is no replica, p is no primary, or ctx ends first.
func (a *Actions) Follow(ctx context.Context, n, p control.Node) error {
	ctx, cancel := a.bound(ctx)
	defer cancel()
	start := time.Now()
	fail := func(format string, args ...any) error {
		return fmt.Errorf("repointing %s at %s: "+format, append([]any{n.Name, p.Name}, args...)...)
	}
	conn, err := a.connect(ctx, n.Addr.Addr().String(), n.Addr.Port())
	if err != nil {
		return fail("%w", err)
	}
	defer a.close(conn)
	var (
		rec            bool
		conninfo, slot string
	)
	err = a.queryRow(ctx, conn, "SELECT pg_is_in_recovery(), current_setting('primary_conninfo'), current_setting('primary_slot_name')").
		Scan(&rec, &conninfo, &slot)
	if err != nil {
		return fail("reading primary_conninfo: %w", err)
	}
	if !rec {
		return fail("%s is not a replica", n.Name)
	}
	timeline, err := a.prepareUpstream(ctx, p, slot)
	if err != nil {
		return fail("%w", err)
	}
	kv, err := parseConnInfo(conninfo)
	if err != nil {
		// The error quotes no value: primary_conninfo may hold a password.
		return fail("%w", err)
	}
	if err := dropPassword(&kv); err != nil {
		return fail("%s: %w", n.Name, err)
	}
	host, port := p.Addr.Addr().String(), strconv.Itoa(int(p.Addr.Port()))
	kv.set("host", host)
	kv.set("port", port)
	kv.del("hostaddr")
	for _, step := range []struct{ what, sql string }{
		{"setting primary_conninfo", "ALTER SYSTEM SET primary_conninfo = " + quoteLiteral(kv.String())},
		{"setting recovery_target_timeline", "ALTER SYSTEM SET recovery_target_timeline = 'latest'"},
		{"reloading the configuration", "SELECT pg_reload_conf()"},
	} {
		if err := a.exec(ctx, conn, step.sql); err != nil {
			return fail("%s: %w", step.what, err)
		}
	}
	var last string
	err = a.poll(ctx, func(ctx context.Context) (bool, error) {
		var (
			status, senderHost *string
			senderPort, tli    *int32
		)
		err := a.queryRow(ctx, conn, "SELECT status, sender_host, sender_port, received_tli FROM pg_stat_wal_receiver").
			Scan(&status, &senderHost, &senderPort, &tli)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			last = "no WAL receiver"
			return false, nil
		case err != nil:
			return false, err
		}
		last = fmt.Sprintf("WAL receiver %s from %s on timeline %d", deref(status),
			net.JoinHostPort(deref(senderHost), strconv.Itoa(int(derefInt(senderPort)))), derefInt(tli))
		return deref(status) == "streaming" && deref(senderHost) == host && derefInt(senderPort) == int32(p.Addr.Port()) &&
			int64(derefInt(tli)) >= timeline, nil
	})
	if err != nil {
		return fail("waiting for streaming from %v on timeline %d (%s): %w", p.Addr, timeline, last, err)
	}
	slog.Debug("streaming", "node", n.Name, "primary", p.Name, "timeline", timeline, "took", time.Since(start))
	return nil
}

// prepareUpstream checks that p is a primary, creates slot there unless
// it is empty or exists, and returns p's timeline.
func (a *Actions) prepareUpstream(ctx context.Context, p control.Node, slot string) (timeline int64, err error) {
	conn, err := a.connect(ctx, p.Addr.Addr().String(), p.Addr.Port())
	if err != nil {
		return 0, err
	}
	defer a.close(conn)
	var rec bool
	err = a.queryRow(ctx, conn, `SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN 0
		ELSE `+health.TimelineSQL+` END`).Scan(&rec, &timeline)
	if err != nil {
		return 0, fmt.Errorf("reading the timeline of %s: %w", p.Name, err)
	}
	if rec {
		return 0, fmt.Errorf("%s is not a primary", p.Name)
	}
	if slot != "" {
		if err := a.ensureSlotOn(ctx, conn, slot); err != nil {
			return 0, fmt.Errorf("on %s: %w", p.Name, err)
		}
	}
	return timeline, nil
}

// ensureSlot creates the physical replication slot on the server at
// host:port, reserving WAL at once, unless it exists.
func (a *Actions) ensureSlot(ctx context.Context, host string, port uint16, slot string) error {
	conn, err := a.connect(ctx, host, port)
	if err != nil {
		return err
	}
	defer a.close(conn)
	return a.ensureSlotOn(ctx, conn, slot)
}

// ensureSlotOn is ensureSlot on an open connection.
func (a *Actions) ensureSlotOn(ctx context.Context, conn *pgx.Conn, slot string) error {
	var exists bool
	if err := a.queryRow(ctx, conn, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", slot).Scan(&exists); err != nil {
		return fmt.Errorf("looking up replication slot %q: %w", slot, err)
	}
	if exists {
		return nil
	}
	err := a.exec(ctx, conn, "SELECT pg_create_physical_replication_slot($1, true)", slot)
	if err != nil && sqlState(err) != sqlstateDuplicateObject {
		return fmt.Errorf("creating replication slot %q: %w", slot, err)
	}
	cfg := conn.Config()
	slog.Info("replication slot created", "slot", slot, "server", net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
	return nil
}

// SetSynchronous sets synchronous_standby_names on primary p to
// ANY 1 ("name", …), the names being the standbys' application_name (xlb's
// node names), or RESETs it when names is empty; then it reloads and
// polls SHOW until the server applies it. It returns an error naming p
// when a step fails or ctx ends first (also when postgresql.conf sets the
// value a RESET falls back to).
func (a *Actions) SetSynchronous(ctx context.Context, p control.Node, names []string) error {
	ctx, cancel := a.bound(ctx)
	defer cancel()
	want := syncStandbyNames(names)
	conn, err := a.connect(ctx, p.Addr.Addr().String(), p.Addr.Port())
	if err != nil {
		return fmt.Errorf("setting synchronous standbys on %s: %w", p.Name, err)
	}
	defer a.close(conn)
	stmt := "ALTER SYSTEM RESET synchronous_standby_names"
	if want != "" {
		stmt = "ALTER SYSTEM SET synchronous_standby_names = " + quoteLiteral(want)
	}
	if err := a.exec(ctx, conn, stmt); err != nil {
		return fmt.Errorf("setting synchronous standbys on %s: %w", p.Name, err)
	}
	if err := a.reloadUntil(ctx, conn, "synchronous_standby_names", want); err != nil {
		return fmt.Errorf("setting synchronous standbys on %s: %w", p.Name, err)
	}
	return nil
}

// syncStandbyNames returns the synchronous_standby_names value that makes
// a commit wait for any one of names: ANY 1 ("pg2", "pg3"), each name a
// quoted identifier; "" for none.
func syncStandbyNames(names []string) string {
	if len(names) == 0 {
		return ""
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = quoteIdent(n)
	}
	return "ANY 1 (" + strings.Join(q, ", ") + ")"
}

// StopWrites makes primary p refuse writes: ALTER SYSTEM SET
// default_transaction_read_only = on and a reload, confirmed in its own
// session (the postmaster reloads before it signals the backends, so every
// session that starts afterwards is read-only), then pg_terminate_backend
// of every other client backend and a poll until they have exited;
// walsenders stay, so the replicas receive everything. It returns
// pg_current_wal_lsn() after that, or an error naming p when a step fails
// or ctx ends first. AllowWrites (or Promote) undoes it.
func (a *Actions) StopWrites(ctx context.Context, p control.Node) (uint64, error) {
	ctx, cancel := a.bound(ctx)
	defer cancel()
	fail := func(err error) (uint64, error) { return 0, fmt.Errorf("stopping writes on %s: %w", p.Name, err) }
	conn, err := a.connect(ctx, p.Addr.Addr().String(), p.Addr.Port())
	if err != nil {
		return fail(err)
	}
	defer a.close(conn)
	if err := a.exec(ctx, conn, "ALTER SYSTEM SET default_transaction_read_only = on"); err != nil {
		return fail(fmt.Errorf("setting default_transaction_read_only: %w", err))
	}
	if err := a.reloadUntil(ctx, conn, "default_transaction_read_only", "on"); err != nil {
		return fail(err)
	}
	// Signal every session at once, then wait for those to exit: a
	// transaction under way ends (aborted) before the WAL position is read.
	// Sessions that start meanwhile are read-only already.
	var pids []int32
	// MATERIALIZED: the filter must run before pg_terminate_backend, which
	// would otherwise also reach this session.
	err = a.queryRow(ctx, conn, `WITH s AS MATERIALIZED (SELECT pid FROM pg_stat_activity
		WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())
		SELECT coalesce(array_agg(pid), '{}') FROM s WHERE pg_terminate_backend(pid)`).Scan(&pids)
	if err != nil {
		return fail(fmt.Errorf("terminating client sessions: %w", err))
	}
	var left int64
	err = a.poll(ctx, func(ctx context.Context) (bool, error) {
		err := a.queryRow(ctx, conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids).Scan(&left)
		return err == nil && left == 0, err
	})
	if err != nil {
		return fail(fmt.Errorf("waiting for %d of %d terminated sessions to exit: %w", left, len(pids), err))
	}
	var s string
	if err := a.queryRow(ctx, conn, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		return fail(fmt.Errorf("reading the WAL position: %w", err))
	}
	lsn, err := health.ParseLSN(s)
	if err != nil {
		return fail(err)
	}
	slog.Info("writes stopped", "node", p.Name, "sessions_ended", len(pids), "lsn", lsn)
	return uint64(lsn), nil
}

// reloadUntil runs pg_reload_conf() and polls SHOW name in the same
// session until it reads want: the backend applies a reload when the
// postmaster, done reloading, signals it.
func (a *Actions) reloadUntil(ctx context.Context, conn *pgx.Conn, name, want string) error {
	if err := a.exec(ctx, conn, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("reloading the configuration: %w", err)
	}
	var got string
	err := a.poll(ctx, func(ctx context.Context) (bool, error) {
		var err error
		got, err = a.show(ctx, conn, name)
		return err == nil && got == want, err
	})
	if err != nil {
		return fmt.Errorf("waiting for %s = %q after a reload (it is %q; does postgresql.conf set it?): %w", name, want, got, err)
	}
	return nil
}

// bound returns ctx, or ctx limited to maxWait when it has no deadline.
func (a *Actions) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.maxWait)
}

// connect opens an administrative connection to host:port with
// health's connection builder (health.ConnConfig).
func (a *Actions) connect(ctx context.Context, host string, port uint16) (*pgx.Conn, error) {
	conn, err := health.Connect(ctx, host, port, a.login, a.timeout)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s as %s: %w", net.JoinHostPort(host, strconv.Itoa(int(port))), a.login.User, err)
	}
	return conn, nil
}

// close closes conn, bounded by the timeout.
func (a *Actions) close(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	conn.Close(ctx)
}

// exec runs one statement, bounded by the timeout.
func (a *Actions) exec(ctx context.Context, conn *pgx.Conn, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	_, err := conn.Exec(ctx, sql, args...)
	return err
}

// queryRow runs one query bounded by the timeout; the bound holds until
// Scan, which reads the row.
func (a *Actions) queryRow(ctx context.Context, conn *pgx.Conn, sql string, args ...any) pgx.Row {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	return cancelRow{conn.QueryRow(ctx, sql, args...), cancel}
}

type cancelRow struct {
	pgx.Row
	cancel context.CancelFunc
}

func (r cancelRow) Scan(dst ...any) error {
	defer r.cancel()
	return r.Row.Scan(dst...)
}

func (a *Actions) inRecovery(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var rec bool
	if err := a.queryRow(ctx, conn, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return false, fmt.Errorf("reading pg_is_in_recovery: %w", err)
	}
	return rec, nil
}

func (a *Actions) show(ctx context.Context, conn *pgx.Conn, name string) (string, error) {
	var v string
	if err := a.queryRow(ctx, conn, "SELECT current_setting($1)", name).Scan(&v); err != nil {
		return "", fmt.Errorf("reading %s: %w", name, err)
	}
	return v, nil
}

// poll calls ok every pollEvery until it returns true or ctx ends; then it
// returns ctx's error joined with ok's last one.
func (a *Actions) poll(ctx context.Context, ok func(context.Context) (bool, error)) error {
	return pollEvery(ctx, a.pollEvery, ok)
}

// pollEvery calls ok every interval until it returns true or ctx ends; then
// it returns ctx's error joined with ok's last one.
func pollEvery(ctx context.Context, interval time.Duration, ok func(context.Context) (bool, error)) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		done, err := ok(ctx)
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// sqlState returns err's SQLSTATE, or "" when it carries none.
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefInt(i *int32) int32 {
	if i == nil {
		return 0
	}
	return *i
}

// ErrNotSuperuser means the administrative role is no superuser: xlb's
// actions need ALTER SYSTEM, pg_reload_conf, pg_promote and
// pg_terminate_backend of every session.
var ErrNotSuperuser = errors.New("no superuser (promotion, repointing and fencing need ALTER SYSTEM, pg_promote and pg_terminate_backend of every session)")

// CheckRole connects to n as the administrative role and checks that it
// is a superuser. It returns an error wrapping ErrNotSuperuser when it is
// not, and an error naming n when n cannot be reached or asked.
func (a *Actions) CheckRole(ctx context.Context, n control.Node) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	conn, err := a.connect(ctx, n.Addr.Addr().String(), n.Addr.Port())
	if err != nil {
		return fmt.Errorf("checking role %s on %s: %w", a.login.User, n.Name, err)
	}
	defer a.close(conn)
	var super bool
	if err := a.queryRow(ctx, conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil {
		return fmt.Errorf("checking role %s on %s: %w", a.login.User, n.Name, err)
	}
	if !super {
		return fmt.Errorf("role %s on %s: %w", a.login.User, n.Name, ErrNotSuperuser)
	}
	return nil
}
