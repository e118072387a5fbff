package lab

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAdopt starts a loopback cluster's server with pg_ctl behind the
// Postgres's back, as xlb pg rejoin does, and checks that PID, Restart and
// Close treat it as the cluster's own and stop it by PID.
func TestAdopt(t *testing.T) {
	RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pg := startCluster(ctx, t, nil, PostgresConfig{Port: port})
	// pgCtlStart starts the server with pg_ctl and returns its PID.
	pgCtlStart := func() int {
		t.Helper()
		// The lab opens its log as root; pg_ctl appends as postgres.
		if err := os.Chown(pg.LogFile, int(pg.cred.Uid), int(pg.cred.Gid)); err != nil {
			t.Fatal(err)
		}
		if out, err := pg.asPostgres(ctx, "pg_ctl", "start", "-D", pg.DataDir, "-w", "-l", pg.LogFile).CombinedOutput(); err != nil {
			t.Fatalf("pg_ctl start: %v: %s", err, out)
		}
		b, err := os.ReadFile(filepath.Join(pg.DataDir, "postmaster.pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
		if err != nil {
			t.Fatal(err)
		}
		return pid
	}
	// gone waits until pid has exited and been reaped by init.
	gone := func(pid int) {
		t.Helper()
		pollUntil(ctx, t, "the adopted postmaster to be reaped", func() (bool, error) {
			err := syscall.Kill(pid, 0)
			return errors.Is(err, syscall.ESRCH), err
		})
	}

	if err := pg.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if pid := pg.PID(); pid != 0 {
		t.Fatalf("PID = %d after Stop, want 0", pid)
	}
	pid := pgCtlStart()
	if got := pg.PID(); got != pid {
		t.Errorf("PID = %d with a pg_ctl-started server, want its %d", got, pid)
	}
	if _, err := pg.QueryLocal(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	gone(pid)
	if got := pg.PID(); got == 0 || got == pid {
		t.Errorf("PID = %d after Restart, want a new postmaster", got)
	}

	if err := pg.Stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	pid = pgCtlStart()
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	gone(pid)
	if _, err := os.Stat(pg.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after Close: %v, want it gone", pg.Dir, err)
	}

	// A stale postmaster.pid naming another process is no server.
	other := &Postgres{DataDir: t.TempDir(), cfg: PostgresConfig{Bin: PostgresBin}}
	if err := os.WriteFile(filepath.Join(other.DataDir, "postmaster.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := other.PID(); got != 0 {
		t.Errorf("PID = %d for a postmaster.pid naming the test process, want 0", got)
	}
	if err := other.Stop(time.Second); err != nil {
		t.Errorf("Stop with a stale postmaster.pid: %v", err)
	}
}
