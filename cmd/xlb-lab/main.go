// Command xlb-lab runs xlb's lab on one Linux host: network
// namespaces joined by a bridge, a PostgreSQL 15 primary and two replicas,
// xlb on one or two LB hosts, and a client; and on that lab the demo, the
// failover drill and the chaos run.
//
// It is a binary of its own so that the one users install, xlb, links
// neither the lab nor its fault injection. The lab's daemons run the xlb
// binary given by --xlb (by default the xlb beside xlb-lab, else the one
// on PATH).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// usageError is a bad flag or argument; xlb-lab exits with code 2.
type usageError struct {
	Field string
	Err   error
}

func (e *usageError) Error() string { return fmt.Sprintf("%s: %v", e.Field, e.Err) }
func (e *usageError) Unwrap() error { return e.Err }

// run runs the CLI and returns the exit code: 2 for a bad flag or
// argument, the command's own code for `exec`, 1 for any other error.
func run(args []string, stdout, stderr io.Writer) int {
	app := &cli.App{
		Writer:    stdout,
		ErrWriter: stderr,
		Name:      "xlb-lab",
		Usage:     "run the network-namespace lab (PostgreSQL primary + 2 replicas, xlb on lb1 and lb2) on this host; needs root",
		Commands:  labCommands,
		ExitErrHandler: func(*cli.Context, error) {
			// run below prints errors and picks the exit code.
		},
	}
	if err := app.Run(args); err != nil {
		var ec cli.ExitCoder
		if errors.As(err, &ec) {
			if msg := err.Error(); msg != "" {
				fmt.Fprintln(stderr, "xlb-lab:", msg)
			}
			return ec.ExitCode()
		}
		fmt.Fprintln(stderr, "xlb-lab:", err)
		var ue *usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON for programs"}

func writeJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}
