package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// ChaosFault is a kind of fault Chaos injects.
type ChaosFault string

// The fault kinds of Chaos. The first three are the drill's faults on the
// primary (Fault).
const (
	ChaosKill      = ChaosFault(FaultKill)
	ChaosStop      = ChaosFault(FaultStop)
	ChaosPartition = ChaosFault(FaultPartition)
	// ChaosXLBKill sends SIGKILL to xlb on the VIP owner; the other LB
	// host takes the VIP over; the daemon is restarted after 0.5–2 s (its
	// pinned datapath kept forwarding meanwhile).
	ChaosXLBKill ChaosFault = "xlb-kill"
	// ChaosLBLink takes the VIP owner's lab interface down for 0.5–2 s.
	ChaosLBLink ChaosFault = "lb-link"
	// ChaosVRRPCutKill drops VRRP (IP protocol 112) in both LB hosts'
	// namespaces (nftables), so both become master while both still reach
	// PostgreSQL, then kills the primary; the cut heals a second after
	// writes resume.
	ChaosVRRPCutKill ChaosFault = "vrrp-cut-kill"
	// ChaosSwitchover runs xlb switchover to a random replica.
	ChaosSwitchover ChaosFault = "switchover"
	// ChaosSwitchoverCancel runs xlb switchover and interrupts the CLI
	// (SIGINT) 20–600 ms after it began: the switchover must either not
	// happen or complete, never stay half-done.
	ChaosSwitchoverCancel ChaosFault = "switchover-cancel"
	// ChaosReplicaKill sends SIGKILL to a random replica's postmaster and
	// restarts it once the daemon saw it down.
	ChaosReplicaKill ChaosFault = "replica-kill"
)

// ChaosFaults lists every ChaosFault.
var ChaosFaults = []ChaosFault{ChaosKill, ChaosStop, ChaosPartition, ChaosXLBKill, ChaosLBLink,
	ChaosVRRPCutKill, ChaosSwitchover, ChaosSwitchoverCancel, ChaosReplicaKill}

// ParseChaosFault returns the ChaosFault named s, or an error listing the
// names.
func ParseChaosFault(s string) (ChaosFault, error) {
	return parseKind("chaos fault", s, ChaosFaults)
}

// inject does c.Fault to the steady cluster whose primary is
// c.PrimaryBefore, sets c.FaultAt, c.Target and c.Note, waits for what the
// fault should bring about (writes resuming elsewhere, the other LB host
// taking the VIP over) and undoes the fault, leaving rejoins to heal.
func (ch *chaos) inject(ctx context.Context, c *ChaosCycle) error {
	old := c.PrimaryBefore
	switch c.Fault {
	case ChaosKill, ChaosStop, ChaosPartition:
		f := Fault(c.Fault)
		c.Target = old
		t0, err := ch.r.Inject(ctx, old, f)
		if err != nil {
			return err
		}
		c.FaultAt = t0
		if err := ch.resumedOffOld(ctx, old, t0); err != nil {
			return err
		}
		if err := ch.r.Revive(ctx, old, f); err != nil {
			return err
		}
		return ch.waitOut(ctx, old)

	case ChaosXLBKill, ChaosLBLink:
		c.Target = "lb1"
		t0, err := ch.cutLB(c.Fault, "lb1")
		if err != nil {
			return err
		}
		c.FaultAt = t0
		if err := ch.waitHoldsVIP(ctx, "lb2"); err != nil {
			return err
		}
		pause(ctx, ch.between(500*time.Millisecond, 2*time.Second))
		return ch.restoreLB(c.Fault, "lb1")

	case ChaosVRRPCutKill:
		c.Target = "lb1+lb2, " + old
		if err := ch.cutVRRP(ctx, true); err != nil {
			return err
		}
		// Both masters: lb1 stays one, lb2 stops hearing it.
		if err := ch.waitHoldsVIP(ctx, "lb2"); err != nil {
			return errors.Join(err, ch.cutVRRP(ctx, false))
		}
		t0, err := ch.r.Inject(ctx, old, FaultKill)
		if err != nil {
			return errors.Join(err, ch.cutVRRP(ctx, false))
		}
		c.FaultAt = t0
		err = ch.resumedOffOld(ctx, old, t0)
		pause(ctx, time.Second)
		if err := errors.Join(err, ch.cutVRRP(ctx, false)); err != nil {
			return err
		}
		if err := ch.r.Revive(ctx, old, FaultKill); err != nil {
			return err
		}
		return ch.waitOut(ctx, old)

	case ChaosSwitchover, ChaosSwitchoverCancel:
		to, err := ch.randomReplica(ctx)
		if err != nil {
			return err
		}
		c.Target = to
		var cancelAfter time.Duration
		if c.Fault == ChaosSwitchoverCancel {
			cancelAfter = ch.between(20*time.Millisecond, 600*time.Millisecond)
		}
		c.FaultAt = time.Now()
		out, err := ch.switchover(ctx, to, cancelAfter)
		if c.Fault == ChaosSwitchover && err != nil {
			return err
		}
		if c.Fault == ChaosSwitchoverCancel {
			c.Note = fmt.Sprintf("xlb switchover --to %s interrupted after %v: %s", to, cancelAfter.Round(time.Millisecond), firstLine(out))
		}
		// Done (writes on to, old fenced) or not begun (old still the
		// writer); anything else is a half-done switchover.
		wctx, cancel := ch.wait(ctx)
		defer cancel()
		bs, err := ch.r.WaitBackends(wctx, "the switchover to "+to+" done or not begun", func(bs []Backend) bool {
			o, _ := Find(bs, old)
			t, _ := Find(bs, to)
			done := t.InPool(PortRW) && len(o.Pools) == 0
			notBegun := o.InPool(PortRW) && t.Role == "replica"
			return done || notBegun
		})
		if err != nil {
			return err
		}
		t, _ := Find(bs, to)
		if c.Fault == ChaosSwitchoverCancel {
			if t.InPool(PortRW) {
				c.Note += "; the switchover completed"
			} else {
				c.Note += "; the switchover did not begin"
			}
		}
		if !t.InPool(PortRW) {
			return nil
		}
		// The old primary, read-only now, shows as fenced once probed.
		return ch.waitOut(ctx, old)

	case ChaosReplicaKill:
		to, err := ch.randomReplica(ctx)
		if err != nil {
			return err
		}
		c.Target = to
		t0, err := ch.r.Inject(ctx, to, FaultKill)
		if err != nil {
			return err
		}
		c.FaultAt = t0
		wctx, cancel := ch.wait(ctx)
		_, err = ch.r.WaitBackends(wctx, to+" out of every pool", func(bs []Backend) bool {
			b, _ := Find(bs, to)
			return len(b.Pools) == 0
		})
		cancel()
		if err != nil {
			return err
		}
		return ch.r.Revive(ctx, to, FaultKill)
	}
	return fmt.Errorf("injecting %q: unknown chaos fault", c.Fault)
}

// resumedOffOld waits for an INSERT sent after t0 to be acknowledged by a
// server other than old.
func (ch *chaos) resumedOffOld(ctx context.Context, old string, t0 time.Time) error {
	wctx, cancel := ch.wait(ctx)
	defer cancel()
	_, err := ch.r.resumedOff(wctx, old, t0, ch.writers...)
	return err
}

// waitOut waits until the daemon shows the revived old primary old fenced
// (or already a replica).
func (ch *chaos) waitOut(ctx context.Context, old string) error {
	wctx, cancel := ch.wait(ctx)
	defer cancel()
	return ch.r.waitFenced(wctx, old, true)
}

// rejoinFenced rejoins every fenced node as a replica of the writer.
func (ch *chaos) rejoinFenced(ctx context.Context) error {
	wctx, cancel := ch.wait(ctx)
	bs, err := ch.r.WaitBackends(wctx, "a writer", func(bs []Backend) bool { return writerOf(bs) != "" })
	cancel()
	if err != nil {
		return err
	}
	w := writerOf(bs)
	for _, b := range bs {
		if b.State != "fenced" {
			continue
		}
		ch.say("rejoining %s as a replica of %s", b.Member, w)
		wctx, cancel := ch.wait(ctx)
		err := ch.r.rejoinReplica(wctx, b.Member, w)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// randomReplica returns one of the daemon's up replicas, at random.
func (ch *chaos) randomReplica(ctx context.Context) (string, error) {
	bs, err := ch.r.Backends(ctx)
	if err != nil {
		return "", err
	}
	var rs []string
	for _, b := range bs {
		if b.Role == "replica" && b.State == "up" {
			rs = append(rs, b.Member)
		}
	}
	if len(rs) == 0 {
		return "", fmt.Errorf("picking a replica: none is up (%s)", summarizeBackends(bs))
	}
	slices.Sort(rs)
	return rs[ch.rand.IntN(len(rs))], nil
}

// switchover runs xlb switchover --to to against lb1's daemon (the VIP
// owner of a steady cluster), bounded by opts.Timeout. With cancelAfter
// above 0 it interrupts the CLI (SIGINT, as Ctrl-C) that long after it
// began and returns its output without judging how it ended.
func (ch *chaos) switchover(ctx context.Context, to string, cancelAfter time.Duration) (string, error) {
	wctx, cancel := ch.wait(ctx)
	defer cancel()
	cmd := exec.CommandContext(wctx, ch.r.Binary, "switchover", "--to", to, "--socket", Socket(ch.opts.Prefix, "lb1"))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("running xlb switchover --to %s: %w", to, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if cancelAfter > 0 {
		select {
		case err := <-done:
			return out.String(), err
		case <-time.After(cancelAfter):
			cmd.Process.Signal(os.Interrupt)
		}
		<-done
		return "interrupted: " + out.String(), nil
	}
	if err := <-done; err != nil {
		return out.String(), fmt.Errorf("running xlb switchover --to %s: %w: %s", to, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// cutLB does f (ChaosXLBKill, ChaosLBLink) to LB host lb and returns when.
func (ch *chaos) cutLB(f ChaosFault, lb string) (time.Time, error) {
	t0 := time.Now()
	if f == ChaosXLBKill {
		pid, err := SignalDaemon(ch.opts.Prefix, lb, syscall.SIGKILL)
		if err != nil {
			return t0, err
		}
		return t0, WaitDaemonGone(lb, pid, 5*time.Second)
	}
	if err := ch.r.NS(lb).Run("ip", "link", "set", HostIf, "down"); err != nil {
		return t0, fmt.Errorf("taking %s's %s down: %w", lb, HostIf, err)
	}
	return t0, nil
}

// restoreLB undoes cutLB.
func (ch *chaos) restoreLB(f ChaosFault, lb string) error {
	if f == ChaosXLBKill {
		_, err := RestartDaemon(ch.opts.Prefix, lb)
		return err
	}
	if err := ch.r.NS(lb).Run("ip", "link", "set", HostIf, "up"); err != nil {
		return fmt.Errorf("bringing %s's %s back: %w", lb, HostIf, err)
	}
	return nil
}

// chaosTable is the nftables table that cuts VRRP in an LB namespace.
const chaosTable = "xlb_chaos"

// cutVRRP drops (on) or lets through again (off) VRRP, IP protocol 112,
// in and out of both LB hosts' namespaces.
func (ch *chaos) cutVRRP(ctx context.Context, on bool) error {
	var errs []error
	for _, lb := range []string{"lb1", "lb2"} {
		ns := ch.r.NS(lb)
		if !on {
			if err := ns.Run("nft", "delete", "table", "inet", chaosTable); err != nil {
				errs = append(errs, fmt.Errorf("removing the VRRP cut on %s: %w", lb, err))
			}
			continue
		}
		for _, cmd := range [][]string{
			{"add", "table", "inet", chaosTable},
			{"add", "chain", "inet", chaosTable, "in", "{ type filter hook input priority 0 ; }"},
			{"add", "chain", "inet", chaosTable, "out", "{ type filter hook output priority 0 ; }"},
			{"add", "rule", "inet", chaosTable, "in", "ip", "protocol", "112", "drop"},
			{"add", "rule", "inet", chaosTable, "out", "ip", "protocol", "112", "drop"},
		} {
			if err := ns.Run("nft", cmd...); err != nil {
				return errors.Join(fmt.Errorf("cutting VRRP on %s: %w", lb, err), ch.cutVRRP(ctx, false))
			}
		}
	}
	return errors.Join(errs...)
}

// waitHoldsVIP polls lb's daemon every 20 ms, bounded by opts.Timeout,
// until it is VRRP master holding the VIP.
func (ch *chaos) waitHoldsVIP(ctx context.Context, lb string) error {
	wctx, cancel := ch.wait(ctx)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s, err := DaemonVRRP(wctx, ch.r.Binary, Socket(ch.opts.Prefix, lb))
		if err == nil && s != nil && s.State == "master" && s.HoldsVIP {
			return nil
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("waiting for %s to hold the VIP: %w (last seen %v, %v)", lb, wctx.Err(), s, err)
		case <-tick.C:
		}
	}
}
