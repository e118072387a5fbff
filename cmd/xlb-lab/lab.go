package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/xlb-dev/xlb/deploy/lab"
)

var labPrefixFlag = &cli.StringFlag{Name: "prefix", Value: lab.Prefix, Usage: "name prefix of the lab's namespaces, pins and sockets"}

var xlbFlag = &cli.StringFlag{Name: "xlb", Usage: "the xlb binary the lab's daemons run (default: xlb beside xlb-lab, else on PATH)", EnvVars: []string{"XLB_BINARY"}}

// labCommands run the lab on this host: network namespaces
// joined by a bridge, PostgreSQL 15 primary and two replicas, xlb on lb1
// (and lb2).
var labCommands = []*cli.Command{
	{
		Name:  "up",
		Usage: "build the lab and start xlb on lb1; it keeps running after this command (xlb-lab down removes it)",
		Flags: []cli.Flag{
			labPrefixFlag,
			xlbFlag,
			&cli.StringFlag{Name: "xdp-mode", Value: "auto", Usage: "how lb1's daemon attaches XDP: auto, native or generic"},
			&cli.IntFlag{Name: "lbs", Value: 1, Usage: "LB hosts: 1 (lb1 holds the VIP), or 2 (xlb on lb1 and lb2, VRRP elects the VIP's owner: lb1 priority 150, lb2 100)"},
			&cli.BoolFlag{Name: "no-preempt", Usage: "with --lbs 2: VRRP without preemption (a returning lb1 stays backup)"},
			&cli.BoolFlag{Name: "demo", Usage: "run the demo once the lab is up"},
			&cli.BoolFlag{Name: "synchronous", Usage: "run lb1's daemon in synchronous mode (no acknowledged commit lost on failover)"},
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
		Name:  "drill",
		Usage: "failover drill under write load: fault the primary, measure the outage, count lost commits and writes to the fenced old primary, rejoin it",
		Description: "Each trial: writers in the client namespace insert through VIP:3000; the fault hits the primary " +
			"(kill: SIGKILL to the postmaster; stop: pg_ctl stop -m immediate; partition: its eth0 down); the outage " +
			"runs to the first INSERT the new primary acknowledges. Then the old primary comes back, must be fenced, " +
			"and rejoins as a replica (xlb pg rejoin). Exit status 1 when a commit was lost or a write reached a fenced primary.",
		Flags: []cli.Flag{
			labPrefixFlag,
			&cli.StringFlag{Name: "fault", Value: string(lab.FaultKill), Usage: "kill, stop or partition"},
			&cli.IntFlag{Name: "trials", Value: 3, Usage: "failovers to run, one after another"},
			&cli.IntFlag{Name: "clients", Value: 4, Usage: "writers inserting through VIP:3000"},
			&cli.DurationFlag{Name: "load", Value: time.Second, Usage: "load before the fault, after writes resume, and after fencing"},
			jsonFlag,
		},
		Action: labDrill,
	},
	labChaosCommand,
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
}

// xlbBinary returns the absolute path of the xlb binary the lab's daemons
// run: --xlb when given, else xlb in the directory of this executable
// (bin/xlb beside bin/xlb-lab after make lab), else xlb on PATH.
func xlbBinary(c *cli.Context) (string, error) {
	if p := c.String("xlb"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", &usageError{Field: "--xlb", Err: err}
		}
		if _, err := os.Stat(abs); err != nil {
			return "", &usageError{Field: "--xlb", Err: err}
		}
		return abs, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding the xlb-lab binary: %w", err)
	}
	beside := filepath.Join(filepath.Dir(self), "xlb")
	if fi, err := os.Stat(beside); err == nil && !fi.IsDir() {
		return beside, nil
	}
	p, err := exec.LookPath("xlb")
	if err != nil {
		return "", fmt.Errorf("finding the xlb binary: none at %s nor on PATH (make build, or --xlb): %w", beside, err)
	}
	return filepath.Abs(p)
}

func labUp(c *cli.Context) error {
	xlb, err := xlbBinary(c)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the xlb-lab binary: %w", err)
	}
	prefix := c.String("prefix")
	// Ctrl-C or SIGTERM while building: Up stops and tears down.
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	w := c.App.Writer
	if _, err := lab.Up(ctx, lab.Options{
		Prefix:      prefix,
		Binary:      xlb,
		XDPMode:     c.String("xdp-mode"),
		LBs:         c.Int("lbs"),
		NoPreempt:   c.Bool("no-preempt"),
		Synchronous: c.Bool("synchronous"),
		Out:         w,
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
	fmt.Fprintf(w, "  %s exec%s client -- psql -h %v -p %d -U %s %s\n", self, pf, lab.VIP, lab.PortRW, lab.User, lab.Database)
	fmt.Fprintf(w, "  %s backends --socket %s\n", xlb, lab.Socket(prefix, "lb1"))
	if c.Int("lbs") > 1 {
		fmt.Fprintf(w, "  %s status --socket %s   (VRRP: lb2's view)\n", xlb, lab.Socket(prefix, "lb2"))
	}
	fmt.Fprintf(w, "  %s down%s\n", self, pf)
	return nil
}

func labDrill(c *cli.Context) error {
	fault, err := lab.ParseFault(c.String("fault"))
	if err != nil {
		return &usageError{Field: "--fault", Err: err}
	}
	if c.NArg() > 0 {
		return &usageError{Field: "arguments", Err: fmt.Errorf("unexpected %q: xlb-lab drill takes flags only", c.Args().First())}
	}
	ctx, stop, progress := labRunContext(c)
	defer stop()
	rep, err := lab.Drill(ctx, lab.DrillOptions{
		Prefix:  c.String("prefix"),
		Fault:   fault,
		Trials:  c.Int("trials"),
		Clients: c.Int("clients"),
		Load:    c.Duration("load"),
		Out:     progress,
	})
	if rep != nil && len(rep.Trials) > 0 {
		err = printLabReport(c, rep, err)
	}
	if err != nil {
		return err
	}
	if !rep.OK() {
		return cli.Exit(fmt.Sprintf("drill: %d acknowledged commits lost, %d writes reached a fenced primary", rep.Lost, rep.FencedWrites), 1)
	}
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
		fmt.Fprintf(w, "lab %s: degraded, something it started is gone (state in %s); xlb-lab down cleans up\n", inv.Prefix, inv.StateDir)
	default:
		fmt.Fprintf(w, "lab %s: leftovers without a state file; xlb-lab down cleans up\n", inv.Prefix)
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

// labExec runs `xlb-lab exec HOST -- COMMAND…` and exits with the
// command's exit code.
func labExec(c *cli.Context) error {
	args := c.Args().Slice()
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) < 2 {
		return errors.New("usage: xlb-lab exec [--prefix P] HOST -- COMMAND [ARG...]")
	}
	host, argv := args[0], args[1:]
	if argv[0] == "--" {
		argv = argv[1:]
	}
	if len(argv) == 0 {
		return errors.New("usage: xlb-lab exec [--prefix P] HOST -- COMMAND [ARG...]")
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

// labChaosCommand is `xlb-lab chaos`: random faults on a running lab with
// two LB hosts while naive and careful clients write and read.
var labChaosCommand = &cli.Command{
	Name:  "chaos",
	Usage: "random faults on a running two-LB lab (xlb-lab up --lbs 2) under naive and careful clients; check outage, lost commits, hung clients, split writes, stale reads",
	Description: "Each cycle waits for a steady cluster, injects one fault (kill, stop or partition of the primary; " +
		"SIGKILL of xlb on the VIP owner; the VIP owner's link down; VRRP cut between the LB hosts plus a primary kill; " +
		"switchover; switchover whose CLI is interrupted; replica kill), waits for writes to resume, undoes the fault " +
		"and rejoins fenced nodes. Naive clients (no timeout, no keepalive) and careful ones (2 s timeouts) write through " +
		"VIP:3000 and read through VIP:3001 all along. Exit status 1 when a client hung (> 5 s after its server left " +
		"the pool), a write was acknowledged by a node that was not the newest timeline's primary, a read was answered " +
		"by a node out of the read pool, or (synchronous mode) an acknowledged commit was lost.",
	Flags: []cli.Flag{
		labPrefixFlag,
		&cli.IntFlag{Name: "cycles", Value: 10, Usage: "faults to inject, one after another"},
		&cli.Int64Flag{Name: "seed", Usage: "seed of the random choices (0: from the clock; the report says which)"},
		&cli.StringSliceFlag{Name: "faults", Usage: "fault kinds to draw from (default all): kill, stop, partition, xlb-kill, lb-link, vrrp-cut-kill, switchover, switchover-cancel, replica-kill"},
		&cli.IntFlag{Name: "clients", Value: 2, Usage: "clients of each kind (naive writers, careful writers, naive readers, careful readers)"},
		&cli.DurationFlag{Name: "timeout", Value: time.Minute, Usage: "bound of each wait of a cycle"},
		jsonFlag,
	},
	Action: labChaos,
}

func labChaos(c *cli.Context) error {
	if c.NArg() > 0 {
		return &usageError{Field: "arguments", Err: fmt.Errorf("unexpected %q: xlb-lab chaos takes flags only", c.Args().First())}
	}
	var faults []lab.ChaosFault
	for _, s := range c.StringSlice("faults") {
		f, err := lab.ParseChaosFault(s)
		if err != nil {
			return &usageError{Field: "--faults", Err: err}
		}
		faults = append(faults, f)
	}
	ctx, stop, progress := labRunContext(c)
	defer stop()
	rep, err := lab.Chaos(ctx, lab.ChaosOptions{
		Prefix:  c.String("prefix"),
		Cycles:  c.Int("cycles"),
		Seed:    c.Int64("seed"),
		Faults:  faults,
		Clients: c.Int("clients"),
		Timeout: c.Duration("timeout"),
		Out:     progress,
	})
	if rep != nil && len(rep.Cycles) > 0 {
		err = printLabReport(c, rep, err)
	}
	if err != nil {
		return err
	}
	if !rep.OK() {
		return cli.Exit(fmt.Sprintf("chaos: safety violated: %d hung, %d split writes, %d stale reads, %d lost (synchronous %t)",
			rep.Hung, rep.SplitWrites, rep.StaleReads, rep.Lost, rep.Synchronous), 1)
	}
	return nil
}

// labRunContext returns the context of a long lab run (ended by Ctrl-C or
// SIGTERM) and where its progress goes: the output, or stderr with
// --json so stdout holds only the report.
func labRunContext(c *cli.Context) (context.Context, context.CancelFunc, io.Writer) {
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	if c.Bool("json") {
		return ctx, stop, c.App.ErrWriter
	}
	return ctx, stop, c.App.Writer
}

// printLabReport prints a drill's or chaos run's report, JSON with
// --json and its table otherwise, and returns err joined with any error
// printing it.
func printLabReport(c *cli.Context, rep interface{ WriteTable(io.Writer) error }, err error) error {
	if c.Bool("json") {
		return errors.Join(err, writeJSON(c.App.Writer, rep))
	}
	fmt.Fprintln(c.App.Writer)
	return errors.Join(err, rep.WriteTable(c.App.Writer))
}
