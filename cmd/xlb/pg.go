package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/xlb-dev/xlb/control/postgres"
	"github.com/xlb-dev/xlb/health"
)

// pgCommand acts on the PostgreSQL server of the host it runs on.
var pgCommand = &cli.Command{
	Name:  "pg",
	Usage: "act on this host's PostgreSQL server",
	Subcommands: []*cli.Command{
		{
			Name: "rejoin",
			Usage: "bring this host's old primary back as a replica of the new one: stop it, pg_rewind it from " +
				"the new primary, point it there (standby.signal, primary_conninfo, a slot) and start it",
			Description: "Run as root (or as the data directory's owner) on the old primary's host once xlb has " +
				"promoted another node. PostgreSQL's tools run as the data directory's owner. Passwords come " +
				"from files or the environment (XLB_PG_ADMIN_PASSWORD, XLB_PG_REPLICATION_PASSWORD), never argv. " +
				"The cluster needs wal_log_hints = on or data checksums.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "data-dir", Usage: "the local server's data directory (required)"},
				&cli.StringFlag{Name: "primary", Usage: "the new primary, HOST:PORT (required)"},
				&cli.StringFlag{Name: "bin", Value: "/usr/lib/postgresql/15/bin", Usage: "directory of pg_ctl and pg_rewind"},
				&cli.StringFlag{Name: "slot", Usage: "physical replication slot on the primary, created when missing (default: the current primary_slot_name, else the application name)"},
				&cli.StringFlag{Name: "application-name", Usage: "this node's application_name, xlb's name for it (default: the current primary_conninfo's)"},
				&cli.StringFlag{Name: "pg-user", Value: "postgres", Usage: "administrative role (a superuser) that pg_rewind and the slot's creation log in as"},
				&cli.StringFlag{Name: "pg-database", Value: "postgres", Usage: "database the administrative role logs in to"},
				&cli.StringFlag{Name: "password-file", Usage: "file holding the administrative role's password (default: $XLB_PG_ADMIN_PASSWORD)"},
				&cli.StringFlag{Name: "replication-user", Usage: "role the replica streams as (default: the current primary_conninfo's, else replicator)"},
				&cli.StringFlag{Name: "replication-password-file", Usage: "file holding the replication role's password (default: $XLB_PG_REPLICATION_PASSWORD), written to --passfile; without either, --passfile must exist"},
				&cli.StringFlag{Name: "passfile", Usage: "libpq password file that primary_conninfo names (default: the current primary_conninfo's, else DATA-DIR/pgpass)"},
				&cli.StringFlag{Name: "log-file", Usage: "server log for pg_ctl start (default: postgres.log beside the data directory)"},
				&cli.StringFlag{Name: "config-file", Usage: "postgresql.conf when it is not in the data directory (Debian: /etc/postgresql/15/main/postgresql.conf), for pg_rewind and the server"},
				&cli.StringFlag{Name: "sslmode", Value: "prefer", Usage: "TLS to the primary, as libpq's sslmode: disable, allow, prefer, require, verify-ca or verify-full"},
				&cli.StringFlag{Name: "sslrootcert", Usage: "CA certificate(s) that sign the primary's certificate (PEM)"},
				&cli.StringFlag{Name: "sslcert", Usage: "client certificate (PEM), when the primary asks for one"},
				&cli.StringFlag{Name: "sslkey", Usage: "the client certificate's key (PEM, mode 0600)"},
				&cli.DurationFlag{Name: "timeout", Value: 5 * time.Minute, Usage: "bound on the whole rejoin"},
			},
			OnUsageError: func(_ *cli.Context, err error, _ bool) error { return &ConfigError{Field: "flags", Err: err} },
			Action: func(c *cli.Context) error {
				o, err := rejoinOptionsFrom(c)
				if err != nil {
					return err
				}
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				ctx, cancel := context.WithTimeout(ctx, o.Timeout)
				defer cancel()
				err = postgres.Rejoin(ctx, o, c.App.Writer)
				if oe := (*postgres.OptionError)(nil); errors.As(err, &oe) {
					field, ok := rejoinFlags[oe.Option]
					if !ok {
						field = oe.Option
					}
					return &ConfigError{Field: field, Err: oe.Err}
				}
				return err
			},
		},
	},
}

// rejoinFlags names the flag of each postgres.RejoinOptions field that a
// *postgres.OptionError can name.
var rejoinFlags = map[string]string{
	"AppName":      "--application-name",
	"Slot":         "--slot",
	"ReplPassword": "--replication-password-file",
}

// rejoinOptionsFrom reads and checks the flags of xlb pg rejoin. Its
// errors are *ConfigError naming the flag.
func rejoinOptionsFrom(c *cli.Context) (postgres.RejoinOptions, error) {
	o := postgres.RejoinOptions{
		DataDir:       c.String("data-dir"),
		Bin:           c.String("bin"),
		Slot:          c.String("slot"),
		AppName:       c.String("application-name"),
		AdminUser:     c.String("pg-user"),
		AdminDatabase: c.String("pg-database"),
		ReplUser:      c.String("replication-user"),
		Passfile:      c.String("passfile"),
		LogFile:       c.String("log-file"),
		ConfigFile:    c.String("config-file"),
		TLS: health.TLS{SSLMode: c.String("sslmode"), SSLRootCert: c.String("sslrootcert"),
			SSLCert: c.String("sslcert"), SSLKey: c.String("sslkey")},
		Timeout: c.Duration("timeout"),
	}
	if c.NArg() > 0 {
		return o, &ConfigError{Field: "arguments", Err: fmt.Errorf("unexpected %q: xlb pg rejoin takes flags only", c.Args().First())}
	}
	if o.DataDir == "" {
		return o, &ConfigError{Field: "--data-dir", Err: errors.New("required")}
	}
	abs, err := filepath.Abs(o.DataDir)
	if err != nil {
		return o, &ConfigError{Field: "--data-dir", Err: err}
	}
	o.DataDir = abs
	if _, err := os.Stat(filepath.Join(o.DataDir, "PG_VERSION")); err != nil {
		return o, &ConfigError{Field: "--data-dir", Err: fmt.Errorf("%s is no PostgreSQL data directory: %w", o.DataDir, err)}
	}
	primary := c.String("primary")
	host, port, err := net.SplitHostPort(primary)
	if err != nil || host == "" {
		return o, &ConfigError{Field: "--primary", Err: fmt.Errorf("%q: want HOST:PORT", primary)}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return o, &ConfigError{Field: "--primary", Err: fmt.Errorf("%q: port must be 1 to 65535", primary)}
	}
	o.PrimaryHost, o.PrimaryPort = host, uint16(p)
	for _, prog := range []string{"pg_ctl", "pg_rewind"} {
		if _, err := os.Stat(filepath.Join(o.Bin, prog)); err != nil {
			return o, &ConfigError{Field: "--bin", Err: fmt.Errorf("finding %s: %w", prog, err)}
		}
	}
	if o.ConfigFile != "" {
		if o.ConfigFile, err = filepath.Abs(o.ConfigFile); err != nil {
			return o, &ConfigError{Field: "--config-file", Err: err}
		}
		if _, err := os.Stat(o.ConfigFile); err != nil {
			return o, &ConfigError{Field: "--config-file", Err: err}
		}
		// pg_ctl hands the server's options to sh: quoted below.
		if strings.ContainsRune(o.ConfigFile, '\'') {
			return o, &ConfigError{Field: "--config-file", Err: fmt.Errorf("%q: a path with a single quote is not supported", o.ConfigFile)}
		}
	}
	if o.Slot != "" && !postgres.ValidSlotName(o.Slot) {
		return o, &ConfigError{Field: "--slot", Err: fmt.Errorf("%q: want 1 to 63 of a-z, 0-9 and _", o.Slot)}
	}
	if o.AdminUser == "" {
		return o, &ConfigError{Field: "--pg-user", Err: errors.New("empty")}
	}
	if err := o.TLS.Check(); err != nil {
		var fe *health.FieldError
		if errors.As(err, &fe) {
			return o, &ConfigError{Field: "--" + fe.Field, Err: fe.Err}
		}
		return o, &ConfigError{Field: "--sslmode", Err: err}
	}
	if o.Timeout <= 0 {
		return o, &ConfigError{Field: "--timeout", Err: fmt.Errorf("%v: want a positive duration", o.Timeout)}
	}
	if o.AdminPassword, err = health.PasswordFrom(c.String("password-file"), "XLB_PG_ADMIN_PASSWORD"); err != nil {
		return o, &ConfigError{Field: "--password-file", Err: err}
	}
	o.ReplPassword, err = health.PasswordFrom(c.String("replication-password-file"), "XLB_PG_REPLICATION_PASSWORD")
	if err != nil && (c.String("replication-password-file") != "" || !errors.Is(err, health.ErrNoPassword)) {
		return o, &ConfigError{Field: "--replication-password-file", Err: err}
	}
	return o, nil
}
