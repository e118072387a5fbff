package main

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

	"github.com/google/go-cmp/cmp"
	"github.com/urfave/cli/v2"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// runPG runs xlb with args through pgCommand (main's run wires the rest)
// and returns its output and error.
func runPG(args ...string) (string, error) {
	var out bytes.Buffer
	app := &cli.App{Name: "xlb", Commands: []*cli.Command{pgCommand}, Writer: &out, ErrWriter: &out}
	err := app.Run(append([]string{"xlb"}, args...))
	return out.String(), err
}

// writeSecret writes a password file readable by its owner only.
func writeSecret(t *testing.T, secret string) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(name, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestRejoinFlags checks that bad flags are a ConfigError naming the flag
// (xlb exits 2) and that nothing runs.
func TestRejoinFlags(t *testing.T) {
	t.Setenv("XLB_PG_ADMIN_PASSWORD", "")
	t.Setenv("XLB_PG_REPLICATION_PASSWORD", "")
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw := writeSecret(t, "x")
	ok := []string{"pg", "rejoin", "--data-dir", data, "--primary", "127.0.0.1:5432", "--bin", lab.PostgresBin, "--password-file", pw}
	with := func(args ...string) []string { return append(append([]string(nil), ok...), args...) }
	tests := []struct {
		name  string
		args  []string
		field string
	}{
		{"no data dir", []string{"pg", "rejoin", "--primary", "127.0.0.1:5432"}, "--data-dir"},
		{"no cluster", with("--data-dir", t.TempDir()), "--data-dir"},
		{"no primary", []string{"pg", "rejoin", "--data-dir", data}, "--primary"},
		{"no port", with("--primary", "127.0.0.1"), "--primary"},
		{"port 0", with("--primary", "127.0.0.1:0"), "--primary"},
		{"bad bin", with("--bin", t.TempDir()), "--bin"},
		{"bad slot", with("--slot", "Pg-1"), "--slot"},
		{"missing config file", with("--config-file", filepath.Join(t.TempDir(), "none.conf")), "--config-file"},
		{"zero timeout", with("--timeout", "0s"), "--timeout"},
		{"no admin password", []string{"pg", "rejoin", "--data-dir", data, "--primary", "127.0.0.1:5432"}, "--password-file"},
		{"missing replication password file", with("--replication-password-file", filepath.Join(t.TempDir(), "none")), "--replication-password-file"},
		{"unknown flag", with("--bogus"), "flags"},
		{"argument", with("extra"), "arguments"},
		// Valid flags, but the configuration names no application and no
		// password file exists: found before anything is stopped.
		{"no application name", ok, "--application-name"},
		{"no replication password", with("--application-name", "pg1"), "--replication-password-file"},
	}
	var stderr bytes.Buffer
	if code := run([]string{"xlb", "pg", "rejoin", "--primary", "127.0.0.1:5432"}, &stderr); code != 2 {
		t.Errorf("xlb pg rejoin without --data-dir exited %d (%q), want 2", code, stderr.String())
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runPG(tt.args...)
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (output %q), want a *ConfigError", err, out)
			}
			if ce.Field != tt.field {
				t.Errorf("ConfigError names %q (%v), want %q", ce.Field, ce.Err, tt.field)
			}
			if strings.Contains(out, "rejoin:") {
				t.Errorf("output %q: a step ran", out)
			}
		})
	}
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
	a := newPGActions(lab.AdminUser, "postgres", lab.AdminPassword, 5*time.Second)
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

	adminPW, replPW := writeSecret(t, lab.AdminPassword), writeSecret(t, lab.ReplicationPassword)
	primary := n2.Addr.String()
	start := time.Now()
	out, err := runPG("pg", "rejoin", "--data-dir", pg1.DataDir, "--primary", primary, "--bin", lab.PostgresBin,
		"--application-name", "pg1", "--pg-user", lab.AdminUser, "--password-file", adminPW,
		"--replication-password-file", replPW)
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
	out, err = runPG("pg", "rejoin", "--data-dir", pg1.DataDir, "--primary", primary, "--bin", lab.PostgresBin,
		"--pg-user", lab.AdminUser, "--password-file", adminPW, "--config-file", filepath.Join(pg1.DataDir, "postgresql.conf"))
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
		if bytes.Contains(b, []byte(lab.AdminPassword)) {
			t.Errorf("%s holds the admin password", path)
		}
		if path != passfile && bytes.Contains(b, []byte(lab.ReplicationPassword)) {
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
		if strings.HasPrefix(v, "PGPASSWORD=") || strings.Contains(v, lab.AdminPassword) {
			t.Errorf("the postmaster's environment has %s", strings.SplitN(v, "=", 2)[0])
		}
	}
}

func TestAutoConf(t *testing.T) {
	in := strings.Join([]string{
		"# Do not edit this file manually!",
		"# It will be overwritten by the ALTER SYSTEM command.",
		"primary_conninfo = 'host=a user=''rep'' passfile=''/x\\\\y'''",
		"Primary_Slot_Name = 'old'",
		"default_transaction_read_only = 'on'",
		"work_mem = 64MB # comment",
		"",
	}, "\n")
	path := filepath.Join(t.TempDir(), "postgresql.auto.conf")
	if err := os.WriteFile(path, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := readAutoConf(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, want string }{
		{"primary_conninfo", `host=a user='rep' passfile='/x\y'`},
		{"primary_slot_name", "old"},
		{"work_mem", "64MB"},
		{"nothing", ""},
	} {
		if got := c.get(tt.name); got != tt.want {
			t.Errorf("get(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
	c.del("default_transaction_read_only")
	c.set("primary_slot_name", "pg1")
	c.set("primary_conninfo", `it's \ odd`)
	want := strings.Join([]string{
		"# Do not edit this file manually!",
		"# It will be overwritten by the ALTER SYSTEM command.",
		"work_mem = 64MB # comment",
		"primary_slot_name = 'pg1'",
		`primary_conninfo = 'it''s \\ odd'`,
		"",
	}, "\n")
	if diff := cmp.Diff(want, string(c.bytes())); diff != "" {
		t.Errorf("edited file (-want +got):\n%s", diff)
	}
	if got := c.get("primary_conninfo"); got != `it's \ odd` {
		t.Errorf("get after set = %q", got)
	}
}

func TestParseConfLine(t *testing.T) {
	tests := []struct {
		line, name, value string
		ok                bool
	}{
		{"a = 'b'", "a", "b", true},
		{"A='b c' # x", "a", "b c", true},
		{"a b", "a", "b", true},
		{`a = 'x\ty\101\'z'`, "a", "x\tyA'z", true},
		{"a = 'open", "", "", false},
		{"# a = 'b'", "", "", false},
		{"   ", "", "", false},
	}
	for _, tt := range tests {
		name, value, ok := parseConfLine(tt.line)
		if name != tt.name || value != tt.value || ok != tt.ok {
			t.Errorf("parseConfLine(%q) = %q, %q, %v; want %q, %q, %v", tt.line, name, value, ok, tt.name, tt.value, tt.ok)
		}
	}
}

// FuzzAutoConfValue checks that a value set reads back the same.
func FuzzAutoConfValue(f *testing.F) {
	for _, s := range []string{"", "host=a", `it's`, `a\b`, "x\ny"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if strings.ContainsAny(v, "\n\x00") {
			return // one line per setting; PostgreSQL has no NUL in values
		}
		var c autoConf
		c.set("primary_conninfo", v)
		if got := c.get("primary_conninfo"); got != v {
			t.Errorf("set %q, get %q (line %q)", v, got, c.lines[0])
		}
	})
}
