// Command xlb puts a PostgreSQL primary/replica cluster behind one virtual
// IP with an XDP datapath: VIP:3000 to the primary, VIP:3001 to the replicas.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Stderr))
}

// run runs the CLI and returns the exit code: 2 for a bad configuration
// or a kernel that lacks a feature the datapath needs, 1 for any other
// error.
func run(args []string, stderr io.Writer) int {
	return runWith(args, os.Stdout, stderr)
}

// runWith is run with the commands' output going to stdout.
func runWith(args []string, stdout, stderr io.Writer) int {
	app := &cli.App{
		Writer:               stdout,
		ErrWriter:            stderr,
		EnableBashCompletion: true,
		Name:                 "xlb",
		Usage:                "PostgreSQL high availability behind one address, forwarded by XDP",
		Commands: []*cli.Command{
			runCommand,
			configCommand,
			completionCommand,
			backendsCommand,
			statusCommand,
			switchoverCommand,
			pgCommand,
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, "xlb", version)
					return nil
				},
			},
		},
	}
	if err := app.Run(args); err != nil {
		fmt.Fprintln(stderr, "xlb:", err)
		var ce *ConfigError
		var ke *KernelError
		if errors.As(err, &ce) || errors.As(err, &ke) {
			return 2
		}
		return 1
	}
	return 0
}
