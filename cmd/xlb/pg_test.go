package main

import (
	"bytes"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

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
	if os.Geteuid() == 0 {
		// rejoin refuses a data directory of root's (PostgreSQL does).
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(data, uid, gid); err != nil {
			t.Fatal(err)
		}
		// The owner reaches it: rejoin reads it with the owner's rights.
		if err := os.Chmod(filepath.Dir(data), 0o711); err != nil {
			t.Fatal(err)
		}
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
		{"bad sslmode", with("--sslmode", "sometimes"), "--sslmode"},
		{"verify-full without a CA", with("--sslmode", "verify-full"), "--sslrootcert"},
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
