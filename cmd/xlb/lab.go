package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/xlb-dev/xlb/deploy/lab"
)

var labPrefixFlag = &cli.StringFlag{Name: "prefix", Value: lab.Prefix, Usage: "name prefix of the lab's namespaces, pins and sockets"}

// labCommand runs the lab of DESIGN.md on this host: network namespaces
// joined by a bridge, PostgreSQL 15 primary and two replicas, xlb on lb1.
var labCommand = &cli.Command{
	Name:  "lab",
	Usage: "run the network-namespace lab (PostgreSQL primary + 2 replicas, xlb on lb1) on this host; needs root",
	Subcommands: []*cli.Command{
		{
			Name:  "up",
			Usage: "build the lab and start xlb on lb1; it keeps running after this command (xlb lab down removes it)",
			Flags: []cli.Flag{
				labPrefixFlag,
				&cli.StringFlag{Name: "xdp-mode", Value: "auto", Usage: "how lb1's daemon attaches XDP: auto, native or generic"},
				&cli.IntFlag{Name: "lbs", Value: 1, Usage: "LB hosts: 1, or 2 (lb2 gets no daemon yet)"},
				&cli.BoolFlag{Name: "demo", Usage: "run the demo once the lab is up"},
			},
			Action: labUp,
		},
		{
			Name:   "down",
			Usage:  "stop everything the lab started and remove its namespaces, pins, sockets and state (idempotent)",
			Flags:  []cli.Flag{labPrefixFlag},
			Action: func(c *cli.Context) error { return lab.Down(c.String("prefix"), c.App.Writer) },
		},
		{
			Name:   "status",
			Usage:  "show what exists of the lab: namespaces, processes, pins, sockets",
			Flags:  []cli.Flag{labPrefixFlag, jsonFlag},
			Action: labStatus,
		},
		{
			Name:      "exec",
			Usage:     "run a command in a lab host's namespace with the lab's PGPASSWORD, PGUSER, PGDATABASE set",
			ArgsUsage: "HOST -- COMMAND [ARG...]   (e.g. client -- psql -h 172.20.0.100 -p 3000 -U ramos ramos-test-db)",
			Flags:     []cli.Flag{labPrefixFlag},
			Action:    labExec,
		},
		{
			Name:  "demo",
			Usage: "write through VIP:3000, read back and spread reads through VIP:3001, show xlb backends",
			Flags: []cli.Flag{labPrefixFlag},
			Action: func(c *cli.Context) error {
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				return lab.Demo(ctx, c.String("prefix"), c.App.Writer)
			},
		},
	},
}

func labUp(c *cli.Context) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the xlb binary: %w", err)
	}
	prefix := c.String("prefix")
	// Ctrl-C or SIGTERM while building: Up stops and tears down.
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	w := c.App.Writer
	if _, err := lab.Up(ctx, lab.Options{
		Prefix:  prefix,
		Binary:  self,
		XDPMode: c.String("xdp-mode"),
		LBs:     c.Int("lbs"),
		Out:     w,
	}); err != nil {
		return err
	}
	pf := ""
	if prefix != lab.Prefix {
		pf = " --prefix " + prefix
	}
	if c.Bool("demo") {
		if err := lab.Demo(ctx, prefix, w); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "\nThe lab keeps running. Try:\n")
	fmt.Fprintf(w, "  %s lab exec%s client -- psql -h %v -p %d -U %s %s\n", self, pf, lab.VIP, lab.PortRW, lab.User, lab.Database)
	fmt.Fprintf(w, "  %s backends --socket %s\n", self, lab.Socket(prefix, "lb1"))
	fmt.Fprintf(w, "  %s lab down%s\n", self, pf)
	return nil
}

func labStatus(c *cli.Context) error {
	inv, err := lab.Status(c.String("prefix"))
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return writeJSON(c.App.Writer, inv)
	}
	printLabStatus(c.App.Writer, inv)
	return nil
}

func printLabStatus(w io.Writer, inv *lab.Inventory) {
	switch {
	case inv.Empty():
		fmt.Fprintf(w, "lab %s: down (nothing exists)\n", inv.Prefix)
		return
	case inv.Up:
		fmt.Fprintf(w, "lab %s: up since %s (state in %s)\n", inv.Prefix, inv.Created.Local().Format("2006-01-02 15:04:05"), inv.StateDir)
	case inv.Recorded:
		fmt.Fprintf(w, "lab %s: degraded, something it started is gone (state in %s); xlb lab down cleans up\n", inv.Prefix, inv.StateDir)
	default:
		fmt.Fprintf(w, "lab %s: leftovers without a state file; xlb lab down cleans up\n", inv.Prefix)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nNAMESPACE\tPROCESSES")
	for _, ns := range inv.Namespaces {
		fmt.Fprintf(tw, "%s\t%d\n", ns.Name, len(ns.PIDs))
	}
	tw.Flush()
	if len(inv.Processes) > 0 {
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "\nPROCESS\tHOST\tPID\tSTATE")
		for _, p := range inv.Processes {
			state := "running"
			if !p.Running {
				state = "gone"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", p.Name, p.Host, p.PID, state)
		}
		tw.Flush()
	}
	if len(inv.PinDirs) > 0 {
		fmt.Fprintf(w, "\npins:    %s\n", strings.Join(inv.PinDirs, " "))
	}
	if len(inv.Sockets) > 0 {
		fmt.Fprintf(w, "sockets:  %s\n", strings.Join(inv.Sockets, " "))
	}
}

// labExec runs `xlb lab exec HOST -- COMMAND…` and exits with the
// command's exit code.
func labExec(c *cli.Context) error {
	args := c.Args().Slice()
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) < 2 {
		return errors.New("usage: xlb lab exec [--prefix P] HOST -- COMMAND [ARG...]")
	}
	host, argv := args[0], args[1:]
	if argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		return errors.New("usage: xlb lab exec [--prefix P] HOST -- COMMAND [ARG...]")
	}
	err := lab.Exec(c.Context, c.String("prefix"), host, argv)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if code < 0 { // killed by a signal
			code = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
		return cli.Exit("", code)
	}
	return err
}
