package main

import (
	"errors"
	"fmt"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/xlb-dev/xlb/deploy/lab"
)

// labChaosCommand is `xlb lab chaos`: random faults on a running lab with
// two LB hosts while naive and careful clients write and read.
var labChaosCommand = &cli.Command{
	Name:  "chaos",
	Usage: "random faults on a running two-LB lab (xlb lab up --lbs 2) under naive and careful clients; check outage, lost commits, hung clients, split writes, stale reads",
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
		return &ConfigError{Field: "arguments", Err: fmt.Errorf("unexpected %q: xlb lab chaos takes flags only", c.Args().First())}
	}
	var faults []lab.ChaosFault
	for _, s := range c.StringSlice("faults") {
		f, err := lab.ParseChaosFault(s)
		if err != nil {
			return &ConfigError{Field: "--faults", Err: err}
		}
		faults = append(faults, f)
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	progress := c.App.Writer
	if c.Bool("json") {
		progress = c.App.ErrWriter
	}
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
		if c.Bool("json") {
			if jerr := writeJSON(c.App.Writer, rep); jerr != nil {
				return errors.Join(err, jerr)
			}
		} else {
			fmt.Fprintln(c.App.Writer)
			if terr := rep.WriteTable(c.App.Writer); terr != nil {
				return errors.Join(err, terr)
			}
		}
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
