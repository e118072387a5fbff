package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/xlb-dev/xlb/control"
	"github.com/xlb-dev/xlb/control/postgres"
	"github.com/xlb-dev/xlb/control/web"
	"github.com/xlb-dev/xlb/health"
	"github.com/xlb-dev/xlb/loader"
	"github.com/xlb-dev/xlb/vip"
)

const defaultSocket = "/run/xlb/xlb.sock"

var runCommand = &cli.Command{
	Name:  "run",
	Usage: "run the daemon: attach the datapath, probe the nodes, keep the pools true",
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: "/etc/xlb/xlb.yaml", Usage: "configuration file"},
		&cli.BoolFlag{Name: "unload-on-exit", Usage: "detach and unpin the datapath on exit (default: keep it, so a restart keeps every flow)"},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "text or json"},
		logLevelFlag,
	},
	Action: func(c *cli.Context) error {
		if err := setupLogging(os.Stderr, c.String("log-format"), c.String("log-level")); err != nil {
			return err
		}
		if err := checkKernel(); err != nil {
			return err
		}
		cfg, err := LoadConfig(c.String("config"))
		if err != nil {
			return err
		}
		password, err := health.PasswordFrom(cfg.Postgres.PasswordFile, "XLB_PG_PASSWORD", "PGPASSWORD")
		if err != nil {
			return &ConfigError{Field: "postgres.password_file", Err: err}
		}
		admin := secrets{user: cfg.Postgres.User, password: password}
		if cfg.Postgres.AdminUser != "" && cfg.Postgres.AdminUser != cfg.Postgres.User {
			admin.user = cfg.Postgres.AdminUser
			if admin.password, err = health.PasswordFrom(cfg.Postgres.AdminPasswordFile, "XLB_PG_ADMIN_PASSWORD"); err != nil {
				return &ConfigError{Field: "postgres.admin_password_file", Err: err}
			}
		}
		ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return runDaemon(ctx, cfg, password, admin, c.Bool("unload-on-exit"))
	},
}

// daemon is a running xlb: the datapath, the controller and their views.
type daemon struct {
	cfg *Config
	dp  *loader.Datapath
	// allow writes the source allowlists: dp, or a fake in tests.
	allow   allowWriter
	ctl     *control.Controller
	mode    loader.Mode
	started time.Time
	// election is the VRRP instance; nil when vrrp is off (one LB).
	election *vip.Instance
	// leaseErr is the last failure to renew the VIP lease; nil once it
	// works again.
	leaseErr *atomic.Pointer[string]
	// rec counts probes, state changes and VRRP transitions for /metrics.
	rec *web.Recorder
	// The controller's rules and the probe targets as last applied, and
	// what reload needs to restart the probes (reload.go).
	ctlCfg      control.Config
	targets     []health.Target
	waker       *health.Waker
	stopWatch   context.CancelFunc
	watchExited chan struct{}
	// probes is what the controller's reprobes use; reload replaces it.
	probes *atomic.Pointer[probeSet]
}

// secrets are PostgreSQL credentials; never logged.
type secrets struct{ user, password string }

func runDaemon(ctx context.Context, cfg *Config, password string, admin secrets, unload bool) error {
	nodes := make([]control.Node, len(cfg.Nodes))
	targets := make([]health.Target, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		nodes[i] = control.Node{Name: n.Name, Addr: cfg.nodes[i], Priority: n.Priority}
		targets[i] = health.Target{Name: n.Name, Addr: cfg.nodes[i], User: cfg.Postgres.User,
			Database: cfg.Postgres.Database, Password: password, TLS: cfg.Postgres.TLS}
	}
	actions := postgres.NewActions(health.Login{User: admin.user, Database: cfg.Postgres.Database,
		Password: admin.password, TLS: cfg.Postgres.TLS}, 5*time.Second)
	if err := checkRoles(ctx, cfg, targets, nodes, actions); err != nil {
		return err
	}

	dp, err := loader.Load(loader.Config{
		VIP:       cfg.vip,
		PortRW:    cfg.Ports.RW,
		PortRO:    cfg.Ports.RO,
		SNATAddr:  cfg.nodeAddr,
		SNATPorts: cfg.snat,
		PinPath:   cfg.PinPath,
		Lease:     cfg.VRRP.Enabled,

		HalfOpenTimeout: time.Duration(cfg.Conntrack.HalfOpenTimeout),
		ClosedTimeout:   time.Duration(cfg.Conntrack.ClosedTimeout),
		IdleTimeout:     time.Duration(cfg.Conntrack.IdleTimeout),
		MaxFlows:        cfg.Conntrack.MaxFlows,
	})
	if errors.Is(err, loader.ErrSNATOverlap) {
		return &ConfigError{Field: "snat_ports", Err: err}
	}
	if err != nil {
		return err
	}
	defer func() {
		if unload {
			if err := dp.Unpin(); err != nil {
				slog.Error("unpinning", "err", err)
			}
		}
		dp.Close()
	}()
	if err := dp.SetAllowSources(loader.RW, cfg.allowRW); err != nil {
		return err
	}
	if err := dp.SetAllowSources(loader.RO, cfg.allowRO); err != nil {
		return err
	}
	if err := loader.EnableForwarding(cfg.Interface); err != nil {
		return err
	}
	mode, err := dp.Attach(cfg.Interface, cfg.mode)
	if err != nil {
		return err
	}
	slog.Info("datapath attached", "interface", cfg.Interface, "mode", mode, "vip", cfg.vip,
		"ports", fmt.Sprintf("%d/%d", cfg.Ports.RW, cfg.Ports.RO), "snat", cfg.SNATPorts, "pin_path", cfg.PinPath)

	rec := web.NewRecorder(nodeNames(cfg))
	owner := func() bool { return true }
	var leaseErr atomic.Pointer[string]
	var election *vip.Instance
	var ctlRef atomic.Pointer[control.Controller]
	if cfg.VRRP.Enabled {
		var resigned <-chan struct{}
		if election, resigned, err = startVRRP(ctx, cfg, dp, &leaseErr, rec); err != nil {
			return err
		}
		defer func() {
			// Run resigns (priority 0, VIP removed) once ctx ends: let it
			// finish before the socket closes.
			select {
			case <-resigned:
			case <-time.After(2 * time.Second):
				slog.Error("vrrp did not resign within 2 s")
			}
			election.Close()
		}()
		owner = func() bool { return election.Status().State == vip.Master }
		go trackPriority(ctx, cfg, election, func() bool { return ctlRef.Load() != nil && !anyUp(ctlRef.Load()) })
	}

	kicker, err := loader.NewKicker()
	if err != nil {
		return err
	}
	defer kicker.Close()
	// Reload replaces the targets and the probe timeout (reload.go); the
	// controller's reprobes read them from other goroutines.
	var probes atomic.Pointer[probeSet]
	probes.Store(newProbeSet(targets, time.Duration(cfg.Probe.Timeout)))
	known, rebuild := loadState(cfg.StateFile, time.Now())
	if rebuild {
		known = rebuildState(ctx, cfg, nodes, probes.Load())
	}
	if known.Timeline != 0 {
		slog.Info("state", "file", cfg.StateFile, "timeline", known.Timeline, "system_id", known.SystemID)
	}
	waker := health.NewWaker()
	ctlCfg := control.Config{
		Fall:             cfg.Probe.Fall,
		FloodGrace:       time.Duration(cfg.Probe.FloodGrace),
		Rise:             cfg.Probe.Rise,
		MaxReadLag:       time.Duration(*cfg.MaxReadLag),
		ReadFallback:     *cfg.ReadFallbackToPrimary,
		Failover:         *cfg.Failover,
		MaxLagOnFailover: uint64(*cfg.MaxLagOnFailover),
		Synchronous:      cfg.Synchronous,
		ActionTimeout:    actionTimeout,
		Known:            known,
	}
	ctl := control.New(ctlCfg, nodes, control.Options{
		Datapath: &poolWriter{dp: dp, kicker: kicker, owner: owner},
		// After a restart: the pinned pools, shown and kept until every
		// node answered.
		Pools:    [2][]netip.AddrPort{control.RW: dp.Pool(loader.RW), control.RO: dp.Pool(loader.RO)},
		Promoter: actions,
		Wake:     waker.Wake,
		Owner:    owner,
		OwnerName: func() string {
			if election == nil {
				return ""
			}
			if m := election.Status().Master; m.IsValid() {
				return m.String()
			}
			return ""
		},
		Go:  func(f func()) { go f() },
		Now: time.Now,
		Remember: func(d control.Durable) {
			if err := saveState(cfg.StateFile, d); err != nil {
				slog.Error("saving state", "file", cfg.StateFile, "err", err)
			}
		},
		// A probe's timeout under a SYN flood is no miss while the
		// datapath sees the node answer its clients.
		Answering: dp.FloodWitness().Answering,
		Reprobe:   reprober(&probes),
	})
	ctlRef.Store(ctl)
	d := &daemon{cfg: cfg, dp: dp, allow: dp, ctl: ctl, mode: mode, started: time.Now(), election: election, leaseErr: &leaseErr, rec: rec,
		ctlCfg: ctlCfg, targets: targets, waker: waker, probes: &probes}

	srv, err := serveAPI(cfg.Socket, d)
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := d.startHTTP(ctx); err != nil {
		return err
	}

	obs := make(chan health.Observation, 64)
	d.watch(ctx, targets, health.WatchOptions{
		Interval: time.Duration(cfg.Probe.Interval),
		Timeout:  time.Duration(cfg.Probe.Timeout),
		Waker:    waker,
	}, obs)
	sd := newSDNotifier()
	defer sd.stopping()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	slog.Info("xlb running", "nodes", len(nodes), "socket", cfg.Socket, "version", version)
	for {
		select {
		case <-ctx.Done():
			slog.Info("stopping", "unload", unload)
			return nil
		case <-hup:
			d.reload(ctx, obs)
		case <-sd.tick:
			sd.watchdog()
		case o := <-obs:
			if err := ctl.Observe(toControl(o)); err != nil {
				slog.Error("applying decision", "node", o.Node, "err", err)
			}
			d.recordObservation(o.Node, o.Latency, o.Err == nil)
			sd.observed(ctl.Members())
		}
	}
}

// checkRoles checks, on every node that answers within two probe
// timeouts (a restart while a node is down waits no longer), that the
// probe role has what the probes need (pg_monitor) and the administrative
// role what promotion needs (superuser). A role that lacks a right is a
// *ConfigError naming its field; a node that does not answer is only
// logged (it is checked by the probes once up).
func checkRoles(ctx context.Context, cfg *Config, targets []health.Target, nodes []control.Node, actions *postgres.Actions) error {
	bound := 2 * time.Duration(cfg.Probe.Timeout)
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	type result struct {
		node       string
		probe      error
		admin      error
		probeSuper bool
	}
	results := make(chan result, len(targets))
	for i := range targets {
		go func() {
			r := result{node: targets[i].Name}
			r.probeSuper, r.probe = health.CheckRole(ctx, targets[i], bound)
			if cfg.Postgres.AdminUser != "" && cfg.Postgres.AdminUser != cfg.Postgres.User {
				r.admin = actions.CheckRole(ctx, nodes[i])
			}
			results <- r
		}()
	}
	var errs []error
	for range targets {
		r := <-results
		switch {
		case errors.Is(r.probe, health.ErrPrivilege):
			errs = append(errs, &ConfigError{Field: "postgres.user", Err: r.probe})
		case r.probe != nil:
			slog.Warn("probe role not checked", "node", r.node, "err", r.probe)
		case r.probeSuper:
			slog.Warn("the probe role is a superuser; it needs only pg_monitor", "node", r.node, "role", cfg.Postgres.User)
		}
		switch {
		case errors.Is(r.admin, postgres.ErrNotSuperuser):
			errs = append(errs, &ConfigError{Field: "postgres.admin_user", Err: r.admin})
		case r.admin != nil:
			slog.Warn("admin role not checked", "node", r.node, "err", r.admin)
		}
	}
	if cfg.Postgres.AdminUser == "" || cfg.Postgres.AdminUser == cfg.Postgres.User {
		slog.Warn("no separate admin role (postgres.admin_user): promotion runs as the probe role, which then needs superuser")
	}
	return errors.Join(errs...)
}

func toControl(o health.Observation) control.Observation {
	return control.Observation{
		Node:       o.Node,
		Time:       o.Time,
		Err:        o.Err,
		InRecovery: o.InRecovery,
		Timeline:   o.Timeline,
		WALLSN:     uint64(o.WALLSN),
		ReplayLSN:  uint64(o.ReplayLSN),
		ReceiveLSN: uint64(o.ReceiveLSN),
		ReplayLag:  o.ReplayLag,
		Latency:    o.Latency,
		Streaming:  o.Streaming,
		Upstream:   o.Upstream,
		SystemID:   o.SystemID,
		Standbys:   standbys(o.Standbys),
	}
}

func standbys(sbs []health.Standby) []control.Standby {
	out := make([]control.Standby, len(sbs))
	for i, sb := range sbs {
		out[i] = control.Standby{AppName: sb.AppName, Addr: sb.Addr}
	}
	return out
}

// probeSet is how the daemon probes a node outside the regular probes:
// the targets by name and the probe timeout. It is replaced whole, never
// changed, so goroutines that hold one read it without a lock.
type probeSet struct {
	byName  map[string]health.Target
	timeout time.Duration
}

func newProbeSet(targets []health.Target, timeout time.Duration) *probeSet {
	ps := &probeSet{byName: make(map[string]health.Target, len(targets)), timeout: timeout}
	for _, t := range targets {
		ps.byName[t.Name] = t
	}
	return ps
}

// reprober returns the controller's Reprobe: it probes with the probe set
// current at each call (reload replaces it meanwhile).
func reprober(probes *atomic.Pointer[probeSet]) func(context.Context, []control.Node) []control.Observation {
	return func(ctx context.Context, ns []control.Node) []control.Observation {
		return reprobe(ctx, ns, probes.Load())
	}
}

// reprobe probes nodes afresh, all at once, each on a connection of its
// own, for the controller's check right before a promotion.
func reprobe(ctx context.Context, ns []control.Node, ps *probeSet) []control.Observation {
	out := make([]control.Observation, len(ns))
	var wg sync.WaitGroup
	for i, n := range ns {
		wg.Go(func() {
			p := health.NewProber(ps.byName[n.Name], ps.timeout)
			defer p.Close()
			out[i] = toControl(p.Probe(ctx))
		})
	}
	wg.Wait()
	return out
}

// rebuildState rebuilds the state a torn or unreadable state file held
// from PostgreSQL's own state: every node probed once, within two probe
// timeouts, and control.DurableFrom over what answered. It saves the
// result so the file is whole again. A node that does not answer may hold
// a newer timeline than the ones seen: the controller still learns it from
// the regular probes, and the log says how many answered.
func rebuildState(ctx context.Context, cfg *Config, nodes []control.Node, ps *probeSet) control.Durable {
	ctx, cancel := context.WithTimeout(ctx, 2*ps.timeout)
	defer cancel()
	d, answered := control.DurableFrom(reprobe(ctx, nodes, ps))
	log := slog.Warn
	if answered < len(nodes) {
		log = slog.Error
	}
	log("state rebuilt from postgresql", "timeline", d.Timeline, "system_id", d.SystemID,
		"nodes_answered", answered, "nodes", len(nodes))
	if answered > 0 {
		if err := saveState(cfg.StateFile, d); err != nil {
			slog.Error("saving state", "file", cfg.StateFile, "err", err)
		}
	}
	return d
}

// poolWriter writes the controller's pools into the datapath. A cut also
// kicks the clients of the cut flows (on the VIP owner only), so a client
// blocked in a read learns within milliseconds that its server is gone.
type poolWriter struct {
	dp     *loader.Datapath
	kicker *loader.Kicker
	owner  func() bool
}

func (p *poolWriter) SetPool(svc control.Service, b []netip.AddrPort) error {
	s := loader.RW
	if svc == control.RO {
		s = loader.RO
	}
	return p.dp.SetBackends(s, b)
}

// kickAgain is when a cut's clients are kicked a second time: Linux answers
// at most one out-of-window segment per socket every 500 ms
// (net.ipv4.tcp_invalid_ratelimit), so a client that answered one just
// before the cut answers the second kick.
const kickAgain = 600 * time.Millisecond

func (p *poolWriter) Cut(b netip.AddrPort) error {
	flows, err := p.dp.RemoveBackend(b)
	return p.kick(b, "all", flows, err)
}

func (p *poolWriter) CutService(svc control.Service, b netip.AddrPort) error {
	s := loader.RW
	if svc == control.RO {
		s = loader.RO
	}
	flows, err := p.dp.CutService(s, b)
	return p.kick(b, s.String(), flows, err)
}

// kick kicks the clients of the flows a cut of b (of service, or "all")
// deleted, now and again after kickAgain, while this node owns the VIP.
func (p *poolWriter) kick(b netip.AddrPort, service string, flows []loader.Flow, err error) error {
	if errors.Is(err, loader.ErrUnknownBackend) {
		return nil
	}
	if len(flows) > 0 && p.owner() {
		n, kerr := p.kicker.Kick(flows)
		slog.Info("flows cut", "backend", b, "service", service, "flows", len(flows), "clients_kicked", n)
		if kerr != nil {
			slog.Warn("kicking clients", "backend", b, "err", kerr)
		}
		time.AfterFunc(kickAgain, func() {
			if p.owner() {
				if _, err := p.kicker.Kick(flows); err != nil {
					slog.Warn("kicking clients again", "backend", b, "err", err)
				}
			}
		})
	} else if err == nil {
		slog.Info("flows cut", "backend", b, "service", service, "flows", len(flows))
	}
	return err
}

// startVRRP starts the VIP election. While master it renews the datapath's
// VIP lease every advertisement (for 3 intervals: a killed daemon's host
// stops taking traffic before the backup takes over); on becoming backup it
// drops the lease. The election ends, with a priority-0 advertisement, when
// ctx ends.
func startVRRP(ctx context.Context, cfg *Config, dp *loader.Datapath, leaseErr *atomic.Pointer[string], rec *web.Recorder) (*vip.Instance, <-chan struct{}, error) {
	advert := time.Duration(cfg.VRRP.AdvertInterval)
	// The lease outlives the last advertisement by 3 intervals, and any
	// backup waits 3 intervals plus its skew before taking over: a lease
	// that still runs means this daemon's predecessor was master and no
	// backup can have taken over yet (a restart, even after kill -9):
	// resume as master.
	left, err := dp.LeaseRemaining()
	if err != nil {
		return nil, nil, err
	}
	resume := left > 0
	if resume {
		slog.Info("vrrp: resuming as master (lease still running)")
	}
	inst, err := vip.Dial(vip.Config{
		Resume:         resume,
		Interface:      cfg.Interface,
		VRID:           uint8(cfg.VRRP.VRID),
		Priority:       uint8(cfg.VRRP.Priority),
		AdvertInterval: advert,
		Preempt:        *cfg.VRRP.Preempt,
		VIP:            netip.PrefixFrom(cfg.vip, 32),
		UnicastPeers:   cfg.VRRP.peers,
		GARPRefresh:    time.Duration(cfg.VRRP.GARPRefresh),
		SourceAddr:     cfg.nodeAddr,
		OnMaster: func() {
			rec.VRRPTransition("master")
			slog.Warn("vrrp master: this node owns the vip", "vip", cfg.vip)
		},
		OnBackup: func() {
			rec.VRRPTransition("backup")
			if err := dp.DropLease(); err != nil {
				slog.Error("dropping vip lease", "err", err)
			}
			slog.Warn("vrrp backup: vip released", "vip", cfg.vip)
		},
		// Renewed every advertisement, so a failure is retried at the
		// next one; xlb status shows it meanwhile.
		WhileMaster: func() {
			if err := dp.RenewLease(3 * advert); err != nil {
				if leaseErr.Load() == nil {
					slog.Error("renewing vip lease", "err", err)
				}
				msg := err.Error()
				leaseErr.Store(&msg)
			} else if leaseErr.Load() != nil {
				slog.Info("vip lease renewed again")
				leaseErr.Store(nil)
			}
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("starting vrrp: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := inst.Run(ctx); err != nil && ctx.Err() == nil {
			slog.Error("vrrp stopped", "err", err)
		}
	}()
	return inst, done, nil
}

// trackWeight is how much the VRRP priority drops while this node cannot
// serve: its datapath is detached, or no PostgreSQL node answers it (like
// keepalived's track weight), so a healthy peer with preemption takes the VIP.
const trackWeight = 50

// trackPriority adjusts the election's priority to this node's health.
func trackPriority(ctx context.Context, cfg *Config, inst *vip.Instance, noBackend func() bool) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	base := cfg.VRRP.Priority
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p, why := base, ""
		switch {
		case !loader.Attached(cfg.Interface):
			p, why = base-trackWeight, "datapath detached"
		case noBackend():
			p, why = base-trackWeight, "no backend answers"
		}
		p = max(p, 1)
		if uint8(p) != inst.Status().Priority {
			slog.Warn("vrrp priority", "priority", p, "base", base, "reason", why)
		}
		inst.SetPriority(uint8(p))
	}
}

// anyUp reports whether the controller has any node up.
func anyUp(c *control.Controller) bool {
	for _, m := range c.Members() {
		if m.Health == control.HealthUp {
			return true
		}
	}
	return false
}
