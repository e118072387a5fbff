package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestPostgres(t *testing.T) {
	RequirePrivileged(t)
	topo, err := NewTopology(TestPrefix(), mustHosts(t, "pg1", "client"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	pg1, client := topo.Node("pg1"), topo.Node("client")

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	pg, err := StartPostgres(ctx, pg1.NS, PostgresConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Error(err)
		}
	})

	conn := ProcessSecrets().AppConn(pg1.Addr.Addr(), PostgresPort)
	got, err := Query(ctx, client.NS, conn, "select current_user, current_database(), inet_client_addr()")
	if err != nil {
		t.Fatal(err)
	}
	if want := "ramos|ramos-test-db|172.20.0.50"; got != want {
		t.Errorf("query from client = %q, want %q", got, want)
	}

	// The admin role is a superuser reached over TCP.
	if got, err := Query(ctx, client.NS, ProcessSecrets().AdminConn(pg1.Addr.Addr(), PostgresPort), "select rolsuper from pg_roles where rolname = current_user"); err != nil || got != "t" {
		t.Errorf("admin query from client = %q, %v; want t", got, err)
	}

	// pg_hba asks for the password over TCP.
	bad := conn
	bad.Password = "wrong"
	if _, err := Query(ctx, client.NS, bad, "select 1"); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("query with a wrong password: %v, want password authentication failed", err)
	}

	pid := pg.PID()
	if pid == 0 {
		t.Fatal("PID = 0 for a running server")
	}
	if err := pg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("postmaster %d after Close: kill 0 = %v, want ESRCH", pid, err)
	}
	if _, err := os.Stat(pg.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after Close: %v, want it gone", pg.Dir, err)
	}
	if err := pg.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// pollUntil calls f every 50 ms until it returns true or ctx ends, and
// returns how long that took; it fails t on ctx's end with what.
func pollUntil(ctx context.Context, t *testing.T, what string, f func() (bool, error)) time.Duration {
	t.Helper()
	start := time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		ok, err := f()
		if ok {
			return time.Since(start)
		}
		lastErr = err
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last error %v)", what, ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

// queryIs polls sql on pg until its output is want.
func queryIs(ctx context.Context, t *testing.T, pg *Postgres, sql, want string) time.Duration {
	t.Helper()
	var got string
	return pollUntil(ctx, t, fmt.Sprintf("%q = %q (last %q)", sql, want, got), func() (ok bool, err error) {
		got, err = pg.QueryLocal(ctx, sql)
		return err == nil && got == want, err
	})
}

// startCluster starts a primary and cleans it up with t.
func startCluster(ctx context.Context, t *testing.T, ns *Namespace, cfg PostgresConfig) *Postgres {
	t.Helper()
	pg, err := StartPostgres(ctx, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Error(err)
		}
	})
	return pg
}

// startReplica starts a replica and cleans it up with t.
func startReplica(ctx context.Context, t *testing.T, ns *Namespace, cfg ReplicaConfig) *Postgres {
	t.Helper()
	pg, err := StartReplica(ctx, ns, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Error(err)
		}
	})
	return pg
}

// TestReplication builds a primary with a slot and a streaming replica, in
// lab namespaces and on loopback, and drives them through writes, an
// immediate stop of the primary, its restart and the replica's promotion.
func TestReplication(t *testing.T) {
	RequirePrivileged(t)
	tests := []struct {
		name string
		// setup returns the namespaces of primary and replica, their
		// configs, and the address each serves clients on.
		setup func(t *testing.T) (pns, rns *Namespace, pcfg PostgresConfig, rcfg ReplicaConfig, paddr, raddr netip.AddrPort)
	}{
		{"netns", func(t *testing.T) (pns, rns *Namespace, pcfg PostgresConfig, rcfg ReplicaConfig, paddr, raddr netip.AddrPort) {
			topo, err := NewTopology(TestPrefix(), mustHosts(t, "pg1", "pg2"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := topo.Close(); err != nil {
					t.Error(err)
				}
			})
			pg1, pg2 := topo.Node("pg1"), topo.Node("pg2")
			paddr = netip.AddrPortFrom(pg1.Addr.Addr(), PostgresPort)
			raddr = netip.AddrPortFrom(pg2.Addr.Addr(), PostgresPort)
			return pg1.NS, pg2.NS, PostgresConfig{Slots: []string{"pg2", "pg3"}},
				ReplicaConfig{Name: "pg2", Primary: paddr}, paddr, raddr
		}},
		{"loopback", func(t *testing.T) (pns, rns *Namespace, pcfg PostgresConfig, rcfg ReplicaConfig, paddr, raddr netip.AddrPort) {
			pport, err1 := FreePort()
			rport, err2 := FreePort()
			if err := errors.Join(err1, err2); err != nil {
				t.Fatal(err)
			}
			if pport == rport {
				t.Fatalf("FreePort gave %d twice", pport)
			}
			paddr = netip.AddrPortFrom(loopback, uint16(pport))
			raddr = netip.AddrPortFrom(loopback, uint16(rport))
			return nil, nil, PostgresConfig{Port: pport, Slots: []string{"pg2"}},
				ReplicaConfig{PostgresConfig: PostgresConfig{Port: rport}, Name: "pg2", Primary: paddr}, paddr, raddr
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			pns, rns, pcfg, rcfg, paddr, raddr := tt.setup(t)
			primary := startCluster(ctx, t, pns, pcfg)
			if pns == nil && primary.Addr() != paddr {
				t.Errorf("primary Addr = %v, want %v", primary.Addr(), paddr)
			}
			replica := startReplica(ctx, t, rns, rcfg)
			testReplica(ctx, t, primary, replica, rns, paddr, raddr)
		})
	}
}

func testReplica(ctx context.Context, t *testing.T, primary, replica *Postgres, rns *Namespace, paddr, raddr netip.AddrPort) {
	queryIs(ctx, t, primary, "select application_name, state, sync_state from pg_stat_replication", "pg2|streaming|async")
	queryIs(ctx, t, primary, "select active from pg_replication_slots where slot_name = 'pg2'", "t")
	queryIs(ctx, t, replica, "select status, slot_name, sender_host, sender_port from pg_stat_wal_receiver",
		fmt.Sprintf("streaming|pg2|%v|%d", paddr.Addr(), paddr.Port()))
	for _, s := range []struct{ name, want string }{
		{"wal_retrieve_retry_interval", "200ms"},
		{"wal_log_hints", "on"},
		{"hot_standby", "on"},
		{"hot_standby_feedback", "on"},
		{"primary_slot_name", "pg2"},
		{"port", fmt.Sprint(raddr.Port())},
	} {
		if got, err := replica.QueryLocal(ctx, "show "+s.name); err != nil || got != s.want {
			t.Errorf("replica: show %s = %q, %v; want %q", s.name, got, err, s.want)
		}
	}
	conninfo, err := replica.QueryLocal(ctx, "select conninfo from pg_stat_wal_receiver")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(conninfo, "application_name=pg2") || !strings.Contains(conninfo, "passfile=") {
		t.Errorf("walreceiver conninfo %q: want application_name=pg2 and a passfile", conninfo)
	}
	checkSecrets(t, replica)

	// A table written on the primary, through TCP as the lab's user,
	// appears on the replica.
	if _, err := Query(ctx, primary.NS, ProcessSecrets().AppConn(paddr.Addr(), int(paddr.Port())),
		"create table repl_check (n int); insert into repl_check values (42)"); err != nil {
		t.Fatal(err)
	}
	lsn, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := replica.WaitReplaying(wctx, lsn); err != nil {
		t.Fatal(err)
	}
	if got, err := Query(ctx, rns, ProcessSecrets().AppConn(raddr.Addr(), int(raddr.Port())), "select n, pg_is_in_recovery() from repl_check"); err != nil || got != "42|t" {
		t.Errorf("replica: repl_check = %q, %v; want 42|t", got, err)
	}
	if _, err := Query(ctx, rns, ProcessSecrets().AppConn(raddr.Addr(), int(raddr.Port())), "insert into repl_check values (1)"); err == nil ||
		!strings.Contains(err.Error(), "read-only transaction") {
		t.Errorf("insert on the replica: %v, want a read-only error", err)
	}

	// An immediate stop of the primary breaks the stream; its restart
	// brings it back.
	pid := primary.PID()
	stopped := time.Now()
	if err := primary.StopImmediate(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("StopImmediate took %v", time.Since(stopped))
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("postmaster %d after StopImmediate: kill 0 = %v, want ESRCH", pid, err)
	}
	broken := pollUntil(ctx, t, "the replica to stop streaming", func() (bool, error) {
		out, err := replica.QueryLocal(ctx, "select count(*) from pg_stat_wal_receiver where status = 'streaming'")
		return err == nil && out == "0", err
	})
	t.Logf("replica stopped streaming %v after the primary's StopImmediate returned", broken)
	restarted := time.Now()
	if err := primary.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Restart took %v", time.Since(restarted))
	again := queryIs(ctx, t, replica, "select status from pg_stat_wal_receiver", "streaming")
	t.Logf("replica streaming again %v after the primary accepted connections", again)

	// Promotion: out of recovery, on timeline 2.
	promoting := time.Now()
	if err := replica.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Promote took %v", time.Since(promoting))
	if got, err := replica.QueryLocal(ctx, "select pg_is_in_recovery(), substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"); err != nil || got != "f|00000002" {
		t.Errorf("promoted replica: in recovery, timeline = %q, %v; want f|00000002", got, err)
	}
	if err := replica.Promote(ctx); err == nil {
		t.Errorf("promoting a primary succeeded")
	}
}

// checkSecrets fails t when the replication password is anywhere in the
// replica's directory but its password file, or that file is not postgres's
// and 0600.
func checkSecrets(t *testing.T, pg *Postgres) {
	t.Helper()
	passfile := filepath.Join(pg.DataDir, passfileName)
	fi, err := os.Stat(passfile)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o600 || st.Uid != pg.cred.Uid {
		t.Errorf("%s: mode %v uid %d, want 0600 and postgres (%d)", passfile, fi.Mode().Perm(), st.Uid, pg.cred.Uid)
	}
	err = filepath.WalkDir(pg.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path == passfile || d.Type()&fs.ModeSocket != 0 {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte(ProcessSecrets().ReplicationPassword)) {
			t.Errorf("%s holds the replication password", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
