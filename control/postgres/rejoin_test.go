package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/health"
)

// rejoin runs Rejoin with the defaults of xlb pg rejoin's flags where o
// leaves them out, and returns its output.
func rejoin(ctx context.Context, o RejoinOptions) (string, error) {
	if o.Bin == "" {
		o.Bin = lab.PostgresBin
	}
	if o.AdminDatabase == "" {
		o.AdminDatabase = "postgres"
	}
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := Rejoin(rctx, o, &out)
	return out.String(), err
}

// TestRejoin diverges a primary from its promoted replica and brings it
// back with xlb pg rejoin: pg1 primary, pg2 its replica; pg2 is promoted
// and written, pg1 keeps running as a primary and is written too; rejoin
// makes pg1 a replica streaming from pg2 with pg2's rows and without its
// own divergent one. A second rejoin, taking every default from the
// configuration the first one wrote, finds nothing to rewind.
func TestRejoin(t *testing.T) {
	lab.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	pgs, nodes := startPG(ctx, t, "pg1", []string{"pg2"}, "pg2")
	pg1, pg2 := pgs[0], pgs[1]
	n2 := nodes[1]
	const table = "public.xlb_rejoin"

	if err := appExec(ctx, pg1, "create table xlb_rejoin (n int primary key); insert into xlb_rejoin values (1)"); err != nil {
		t.Fatal(err)
	}
	replayed(ctx, t, pg1, pg2)
	a := NewActions(health.Login{User: lab.AdminUser, Database: "postgres", Password: lab.ProcessSecrets().AdminPassword}, 5*time.Second)
	if err := a.Promote(ctx, n2); err != nil {
		t.Fatal(err)
	}
	if err := appExec(ctx, pg2, "insert into xlb_rejoin values (2)"); err != nil {
		t.Fatal(err)
	}
	// The divergent row reaches pg1's data files, not only its WAL.
	if err := appExec(ctx, pg1, "insert into xlb_rejoin values (100)"); err != nil {
		t.Fatal(err)
	}
	if _, err := pg1.QueryLocal(ctx, "checkpoint"); err != nil {
		t.Fatal(err)
	}

	primary := n2.Addr
	start := time.Now()
	out, err := rejoin(ctx, RejoinOptions{DataDir: pg1.DataDir, PrimaryHost: primary.Addr().String(), PrimaryPort: primary.Port(),
		AppName: "pg1", AdminUser: lab.AdminUser, AdminPassword: lab.ProcessSecrets().AdminPassword, ReplPassword: lab.ProcessSecrets().ReplicationPassword})
	t.Logf("rejoin took %v:\n%s", time.Since(start), out)
	if err != nil {
		t.Fatal(err)
	}
	checkReplicaOf(ctx, t, pg1, pg2, "pg1")
	if got := rows(ctx, t, pg1, table); got != "1,2" {
		t.Errorf("pg1 rows after rejoin = %q, want 1,2 (pg2's, without pg1's divergent 100)", got)
	}
	if got, err := pg1.QueryLocal(ctx, "show port"); err != nil || got != strconv.Itoa(pg1.Port) {
		t.Errorf("pg1 port after rejoin = %q, %v; want its own %d, not pg2's", got, err, pg1.Port)
	}
	for _, s := range []struct{ name, want string }{
		{"wal_retrieve_retry_interval", "200ms"},
		{"recovery_target_timeline", "latest"},
		{"primary_slot_name", "pg1"},
	} {
		if got, err := pg1.QueryLocal(ctx, "show "+s.name); err != nil || got != s.want {
			t.Errorf("pg1: show %s = %q, %v; want %q", s.name, got, err, s.want)
		}
	}
	checkNoSecrets(t, pg1)

	// Again, defaults only (and the configuration named explicitly, as on
	// Debian, where it is outside the data directory): nothing to rewind,
	// and the same result.
	start = time.Now()
	out, err = rejoin(ctx, RejoinOptions{DataDir: pg1.DataDir, PrimaryHost: primary.Addr().String(), PrimaryPort: primary.Port(),
		AdminUser: lab.AdminUser, AdminPassword: lab.ProcessSecrets().AdminPassword, ConfigFile: filepath.Join(pg1.DataDir, "postgresql.conf")})
	t.Logf("second rejoin took %v:\n%s", time.Since(start), out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "no rewind required") {
		t.Errorf("second rejoin output %q: want no rewind required", out)
	}
	checkReplicaOf(ctx, t, pg1, pg2, "pg1")
	checkNoSecrets(t, pg1)

	// The server rejoin started is stopped by pg1's Close (adopted by PID).
	pid := pg1.PID()
	if pid == 0 {
		t.Fatal("pg1.PID() = 0 after rejoin started it")
	}
	if err := pg1.Close(); err != nil {
		t.Fatal(err)
	}
	// Not our child: init reaps it, a moment after it exits.
	gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
	defer gcancel()
	err = pollEvery(gctx, 20*time.Millisecond, func(context.Context) (bool, error) {
		err := syscall.Kill(pid, 0)
		return errors.Is(err, syscall.ESRCH), err
	})
	if err != nil {
		t.Errorf("postmaster %d after Close: %v, want it gone (ESRCH)", pid, err)
	}
}

// checkReplicaOf checks that r is a replica streaming from p on slot name
// and replays what p writes.
func checkReplicaOf(ctx context.Context, t *testing.T, r, p *lab.Postgres, name string) {
	t.Helper()
	if got, err := r.QueryLocal(ctx, "select pg_is_in_recovery()"); err != nil || got != "t" {
		t.Errorf("%s in recovery = %q, %v; want t", name, got, err)
	}
	queryUntil(ctx, t, r, "select status, slot_name, sender_host, sender_port from pg_stat_wal_receiver",
		fmt.Sprintf("streaming|%s|%v|%d", name, p.Addr().Addr(), p.Addr().Port()))
	queryUntil(ctx, t, p, fmt.Sprintf("select state from pg_stat_replication where application_name = '%s'", name), "streaming")
	replayed(ctx, t, p, r)
}

// checkNoSecrets fails t when a password is in a file of pg's directory
// (the password file aside) or in its postmaster's environment.
func checkNoSecrets(t *testing.T, pg *lab.Postgres) {
	t.Helper()
	passfile := filepath.Join(pg.DataDir, "pgpass")
	err := filepath.WalkDir(pg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Type()&fs.ModeSocket != 0 {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(lab.ProcessSecrets().AdminPassword)) {
			t.Errorf("%s holds the admin password", path)
		}
		if path != passfile && bytes.Contains(b, []byte(lab.ProcessSecrets().ReplicationPassword)) {
			t.Errorf("%s holds the replication password", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(passfile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", passfile, fi.Mode().Perm())
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pg.PID()))
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.Split(string(env), "\x00")
	for _, v := range vars {
		if strings.HasPrefix(v, "PGPASSWORD=") || strings.Contains(v, lab.ProcessSecrets().AdminPassword) {
			t.Errorf("the postmaster's environment has %s", strings.SplitN(v, "=", 2)[0])
		}
	}
}
