package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

var configCommand = &cli.Command{
	Name:  "config",
	Usage: "work with the configuration file",
	Subcommands: []*cli.Command{{
		Name:      "check",
		Usage:     "validate a configuration file like `haproxy -c`: exit 0 when valid, 2 naming the field when not",
		ArgsUsage: "FILE",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return errors.New("usage: xlb config check FILE")
			}
			path := c.Args().First()
			cfg, err := LoadConfig(path)
			if err != nil {
				return err
			}
			if err := checkFiles(cfg); err != nil {
				return err
			}
			http := *cfg.HTTP.Listen
			if http == "" {
				http = "off"
			}
			fmt.Fprintf(c.App.Writer, "%s: valid: vip %s on %s, %d nodes, vrrp %t, http %s\n",
				path, cfg.VIP, cfg.Interface, len(cfg.Nodes), cfg.VRRP.Enabled, http)
			// The file may be checked on another host than the one that
			// runs it: the kernel's state is reported, not judged.
			fmt.Fprintln(c.App.Writer, kernelLine())
			return nil
		},
	}},
}

// checkFiles checks that the password files the configuration names can be
// read (their content is not read: it is a secret and may be checked by
// PostgreSQL only).
func checkFiles(cfg *Config) error {
	for _, f := range []struct{ field, path string }{
		{"postgres.password_file", cfg.Postgres.PasswordFile},
		{"postgres.admin_password_file", cfg.Postgres.AdminPasswordFile},
	} {
		if f.path == "" {
			continue
		}
		fh, err := os.Open(f.path)
		if err != nil {
			return &ConfigError{Field: f.field, Err: err}
		}
		fh.Close()
	}
	return nil
}
