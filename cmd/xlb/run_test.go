package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// TestRunChecksRoles starts xlb run's daemon against a loopback
// PostgreSQL with roles that lack a right: a probe role without
// pg_monitor, an admin role that is no superuser. Each stops it with a
// *ConfigError naming the field (exit code 2) before the datapath is
// loaded.
func TestRunChecksRoles(t *testing.T) {
	lab.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	port, err := lab.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pg, err := lab.StartPostgres(ctx, nil, lab.PostgresConfig{Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Errorf("stopping postgres: %v", err)
		}
	})
	s := lab.ProcessSecrets()
	if _, err := lab.Query(ctx, nil, s.AdminConn(pg.Addr().Addr(), port),
		`CREATE ROLE nomon LOGIN PASSWORD 'nomon-pw'; GRANT CONNECT ON DATABASE "ramos-test-db" TO nomon`); err != nil {
		t.Fatal(err)
	}
	config := func(user, admin string) *Config {
		t.Helper()
		c, err := parseConfig([]byte(fmt.Sprintf(`
vip: 172.20.0.100
node_address: 172.20.0.21
probe:
  timeout: 2s
  interval: 2s
postgres:
  user: %s
  database: ramos-test-db
  admin_user: %s
  sslmode: disable
nodes:
  - name: pg1
    address: %v
`, user, admin, pg.Addr())))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name, user, password string
		admin                secrets
		field, errHas        string
	}{
		{"probe role without pg_monitor", "nomon", "nomon-pw", secrets{lab.AdminUser, s.AdminPassword}, "postgres.user", "pg_monitor"},
		{"admin role no superuser", lab.User, s.Password, secrets{"nomon", "nomon-pw"}, "postgres.admin_user", "no superuser"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runDaemon(ctx, config(tt.user, tt.admin.user), tt.password, tt.admin, false)
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("runDaemon = %v, want a *ConfigError naming %s and saying %q", err, tt.field, tt.errHas)
			}
			t.Logf("runDaemon: %v", err)
		})
	}
}
