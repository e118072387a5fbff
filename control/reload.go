package control

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
)

// ErrRemoveWriter means a reconfiguration would remove the node that
// takes writes.
var ErrRemoveWriter = errors.New("cannot remove the writer")

// ErrSynchronousChange means a reconfiguration would turn synchronous mode
// on or off, which only a restart does.
var ErrSynchronousChange = errors.New("synchronous mode changes only at start")

// Reconfigure replaces the controller's rules and nodes while it runs. A
// node that keeps its name and address keeps what is known of it (its
// health, role and pools, so its flows stay); a new node, or one whose
// address changed, starts unknown and enters a pool once probed; a
// removed node leaves every pool and its flows are cut. It changes nothing
// and returns an error wrapping ErrBusy while a failover or switchover
// runs, ErrRemoveWriter when the writer would go, and
// ErrSynchronousChange when cfg.Synchronous differs.
func (c *Controller) Reconfigure(cfg Config, nodes []Node) error {
	_, err := c.ReconfigureWith(cfg, nodes, nil)
	return err
}

// ReconfigureWith is Reconfigure that calls commit (unless nil) once every
// check has passed and before anything has changed, with the controller's
// lock held: what must change together with the controller (the daemon's
// source allowlists) is written there, and no failover can start between
// the checks and the change. When a check refuses, commit is not called;
// when commit fails, nothing changes and its error is returned. applied
// reports whether the new configuration took effect: an error with
// applied true is from writing the datapath afterwards, which the
// controller retries at its next decision.
func (c *Controller) ReconfigureWith(cfg Config, nodes []Node, commit func() error) (applied bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy || c.syncBusy {
		return false, fmt.Errorf("reconfiguring: %w", ErrBusy)
	}
	if cfg.Synchronous != c.cfg.Synchronous {
		return false, fmt.Errorf("reconfiguring: %w", ErrSynchronousChange)
	}
	var members []*Member
	var added []*Member
	for _, n := range nodes {
		m := c.member(n.Name)
		if m == nil || m.Addr != n.Addr {
			m = &Member{Node: n, Role: RoleUnknown, Health: HealthUnknown}
			added = append(added, m)
		}
		members = append(members, m)
	}
	if c.writer != nil && !slices.Contains(members, c.writer) {
		return false, fmt.Errorf("reconfiguring: %s: %w", c.writer.Name, ErrRemoveWriter)
	}
	if commit != nil {
		if err := commit(); err != nil {
			return false, err
		}
	}
	for i, m := range members {
		if slices.Contains(added, m) {
			slog.Info("node added", "node", m.Name, "addr", m.Addr)
		}
		m.Priority = nodes[i].Priority
	}
	for _, m := range c.members {
		if !slices.Contains(members, m) {
			slog.Warn("node removed", "node", m.Name, "addr", m.Addr)
		}
	}
	// Keep what New defaulted when the new rules leave it out.
	if cfg.Fall <= 0 {
		cfg.Fall = 3
	}
	if cfg.Rise <= 0 {
		cfg.Rise = 2
	}
	if cfg.ActionTimeout <= 0 {
		cfg.ActionTimeout = c.cfg.ActionTimeout
	}
	if cfg.WitnessInterval <= 0 {
		cfg.WitnessInterval = c.cfg.WitnessInterval
	}
	if cfg.FloodGrace <= 0 {
		cfg.FloodGrace = c.cfg.FloodGrace
	}
	c.cfg = cfg
	c.members = members
	// A removed node's address is in no decision now: apply cuts it.
	return true, c.apply()
}
