package lab

import (
	"context"
	"errors"
	"os"
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

	conn := LabConn(pg1.Addr.Addr(), PostgresPort)
	got, err := Query(ctx, client.NS, conn, "select current_user, current_database(), inet_client_addr()")
	if err != nil {
		t.Fatal(err)
	}
	if want := "ramos|ramos-test-db|172.20.0.50"; got != want {
		t.Errorf("query from client = %q, want %q", got, want)
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
