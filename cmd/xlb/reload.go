package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/loader"
)

// watch probes targets with o, sending to out, until ctx ends or the next
// call replaces them (it stops the running probes first). Run's loop only.
func (d *daemon) watch(ctx context.Context, targets []health.Target, o health.WatchOptions, out chan<- health.Observation) {
	if d.stopWatch != nil {
		d.stopWatch()
		select {
		case <-d.watchExited:
		case <-time.After(5 * time.Second):
			slog.Error("old probes did not stop within 5 s; starting the new ones anyway")
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	d.stopWatch, d.watchExited = cancel, done
	go func() {
		defer close(done)
		health.WatchWith(wctx, targets, o, out)
	}()
}

// field is one configuration setting, named as in the file.
type field struct {
	name string
	get  func(*Config) any
}

// fixedFields change only with a restart: the datapath, the sockets, the
// election and the credentials are set up once.
var fixedFields = []field{
	{"interface", func(c *Config) any { return c.Interface }},
	{"xdp_mode", func(c *Config) any { return c.XDPMode }},
	{"vip", func(c *Config) any { return c.VIP }},
	{"node_address", func(c *Config) any { return c.NodeAddress }},
	{"ports", func(c *Config) any { return c.Ports }},
	{"snat_ports", func(c *Config) any { return c.SNATPorts }},
	{"conntrack", func(c *Config) any { return c.Conntrack }},
	{"pin_path", func(c *Config) any { return c.PinPath }},
	{"socket", func(c *Config) any { return c.Socket }},
	{"state_file", func(c *Config) any { return c.StateFile }},
	{"postgres", func(c *Config) any { return c.Postgres }},
	{"synchronous", func(c *Config) any { return c.Synchronous }},
	{"vrrp", func(c *Config) any { return c.VRRP }},
	{"http", func(c *Config) any { return c.HTTP }},
}

// liveFields apply on SIGHUP without a restart and without dropping a flow
// (a removed node's flows are cut, as when it dies).
var liveFields = []field{
	{"nodes", func(c *Config) any { return c.Nodes }},
	{"probe", func(c *Config) any { return c.Probe }},
	{"max_read_lag", func(c *Config) any { return c.MaxReadLag }},
	{"read_fallback_to_primary", func(c *Config) any { return *c.ReadFallbackToPrimary }},
	{"failover", func(c *Config) any { return *c.Failover }},
	{"max_lag_on_failover", func(c *Config) any { return *c.MaxLagOnFailover }},
	{"allow_sources", func(c *Config) any { return c.AllowSources }},
}

// changed returns the names of the fields that differ between a and b.
func changed(fields []field, a, b *Config) []string {
	var out []string
	for _, f := range fields {
		if !reflect.DeepEqual(f.get(a), f.get(b)) {
			out = append(out, f.name)
		}
	}
	return out
}

// liveRules returns base with the rules that nc sets.
func liveRules(base control.Config, nc *Config) control.Config {
	base.Fall, base.Rise = nc.Probe.Fall, nc.Probe.Rise
	base.FloodGrace = time.Duration(nc.Probe.FloodGrace)
	base.MaxReadLag = time.Duration(*nc.MaxReadLag)
	base.ReadFallback = *nc.ReadFallbackToPrimary
	base.Failover = *nc.Failover
	base.MaxLagOnFailover = uint64(*nc.MaxLagOnFailover)
	return base
}

// reload re-reads the configuration file and applies what can change
// live: nodes, probe settings, lag limits, read fallback, failover and the
// source allowlists (for new flows). It validates everything first — the
// file, the fields that need a restart, the controller's own checks (no
// failover under way, the writer kept) — and then applies all of it or
// nothing: the allowlists are written inside the controller's
// reconfiguration, after its checks and before it changes anything, and
// put back as they were when writing them fails. What it logs says which
// happened. Run's loop only.
func (d *daemon) reload(ctx context.Context, out chan<- health.Observation) {
	const refused = "reload refused: keeping the running configuration"
	slog.Info("reloading", "config", d.cfg.path)
	nc, err := LoadConfig(d.cfg.path)
	if err != nil {
		slog.Error(refused, "err", err)
		return
	}
	if f := changed(fixedFields, d.cfg, nc); len(f) > 0 {
		slog.Error(refused, "reason", "these fields change only with a restart", "fields", strings.Join(f, ","))
		return
	}
	live := changed(liveFields, d.cfg, nc)
	if len(live) == 0 {
		slog.Info("reloaded: nothing changed", "config", d.cfg.path)
		return
	}
	rules := liveRules(d.ctlCfg, nc)
	nodes := make([]control.Node, len(nc.Nodes))
	for i, n := range nc.Nodes {
		nodes[i] = control.Node{Name: n.Name, Addr: nc.nodes[i], Priority: n.Priority}
	}
	var commit func() error
	mixed := false
	if slices.Contains(live, "allow_sources") {
		// New flows only: established ones keep going.
		commit = func() error {
			var err error
			mixed, err = setAllowlists(d.allow, [2][]netip.Prefix{d.cfg.allowRW, d.cfg.allowRO}, [2][]netip.Prefix{nc.allowRW, nc.allowRO})
			return err
		}
	}
	applied, err := d.ctl.ReconfigureWith(rules, nodes, commit)
	if mixed {
		slog.Error("reload failed half way: the allowlists could not be put back, new flows are checked against old and new lists mixed until a reload succeeds; everything else is as it was",
			"err", err)
		return
	}
	if !applied {
		slog.Error(refused, "err", err)
		return
	}
	if err != nil {
		// Applied; a pool or cut write failed, which the controller
		// retries at its next decision.
		slog.Error("reload applied, but writing the datapath failed: retried at the next decision", "err", err)
	}
	d.ctlCfg = rules
	d.cfg.AllowSources, d.cfg.allowRW, d.cfg.allowRO = nc.AllowSources, nc.allowRW, nc.allowRO
	// Probe targets: the first one's settings (user, database, password,
	// TLS) are the same for every node, and fixed.
	targets := make([]health.Target, len(nc.Nodes))
	for i, n := range nc.Nodes {
		targets[i] = d.targets[0]
		targets[i].Name, targets[i].Addr = n.Name, nc.nodes[i]
	}
	if slices.Contains(live, "nodes") || slices.Contains(live, "probe") {
		d.watch(ctx, targets, health.WatchOptions{
			Interval: time.Duration(nc.Probe.Interval),
			Timeout:  time.Duration(nc.Probe.Timeout),
			Waker:    d.waker,
		}, out)
	}
	for _, old := range d.cfg.Nodes {
		if !slices.ContainsFunc(nc.Nodes, func(n NodeConfig) bool { return n.Name == old.Name }) {
			d.rec.Forget(old.Name)
		}
	}
	d.targets = targets
	d.probes.Store(newProbeSet(targets, time.Duration(nc.Probe.Timeout)))
	d.cfg.Nodes, d.cfg.nodes, d.cfg.Probe = nc.Nodes, nc.nodes, nc.Probe
	d.cfg.MaxReadLag, d.cfg.ReadFallbackToPrimary = nc.MaxReadLag, nc.ReadFallbackToPrimary
	d.cfg.Failover, d.cfg.MaxLagOnFailover = nc.Failover, nc.MaxLagOnFailover
	slog.Warn("reloaded", "config", d.cfg.path, "changed", strings.Join(live, ","), "nodes", len(nodes))
}

// allowWriter writes a service's source allowlist (loader.Datapath).
type allowWriter interface {
	SetAllowSources(svc loader.Service, prefixes []netip.Prefix) error
}

// setAllowlists writes the allowlists of both services (indexed RW, RO)
// from old to new. When a write fails it puts back what it wrote, so
// either both are new or both are as they were, and returns the error;
// mixed reports that putting one back failed too (its error joined to
// err).
func setAllowlists(w allowWriter, old, new [2][]netip.Prefix) (mixed bool, err error) {
	svcs := [2]loader.Service{loader.RW, loader.RO}
	for i, svc := range svcs {
		if err := w.SetAllowSources(svc, new[i]); err != nil {
			err = fmt.Errorf("writing the allowlist of %v: %w", svc, err)
			for j := i; j >= 0; j-- {
				if rerr := w.SetAllowSources(svcs[j], old[j]); rerr != nil {
					err = errors.Join(err, fmt.Errorf("putting back the allowlist of %v: %w", svcs[j], rerr))
					mixed = true
				}
			}
			return mixed, err
		}
	}
	return false, nil
}
