package control

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Service is a VIP port: RW for writes, RO for reads.
type Service int

const (
	RW Service = iota // VIP:3000, the primary
	RO                // VIP:3001, the replicas
)

func (s Service) String() string {
	if s == RW {
		return "rw"
	}
	return "ro"
}

// Role is what a node is, as its last good probe said.
type Role string

const (
	RoleUnknown Role = "unknown" // never answered
	RolePrimary Role = "primary"
	RoleReplica Role = "replica"
)

// Health is whether a node is routable.
type Health string

const (
	HealthUnknown Health = "unknown" // no probe yet
	HealthUp      Health = "up"
	HealthDown    Health = "down"
)

// ErrUnknownNode means no node has the given name.
var ErrUnknownNode = errors.New("unknown node")

// Node is a PostgreSQL node from the configuration.
type Node struct {
	Name     string
	Addr     netip.AddrPort
	Priority int // higher wins among equals (failover)
}

// Observation is one probe of one node.
type Observation struct {
	Node       string
	Time       time.Time
	Err        error // nil: the probe answered
	InRecovery bool
	Timeline   uint32
	WALLSN     uint64 // primary: current WAL position
	ReceiveLSN uint64 // replica: WAL received and flushed
	ReplayLSN  uint64 // replica: replayed WAL position
	ReplayLag  time.Duration
	Latency    time.Duration
	Streaming  bool   // replica: its WAL receiver streams
	Upstream   string // replica: address:port it streams from
	SystemID   uint64 // pg_control_system().system_identifier; 0 = unknown
	Standbys   []Standby
}

// Standby is a WAL sender of a primary as PostgreSQL reports it.
type Standby struct {
	AppName string     // application_name: what synchronous_standby_names names
	Addr    netip.Addr // client_addr
}

// Datapath is where pools go: the loader in xlb, a fake in tests.
type Datapath interface {
	// SetPool makes backends the pool of svc (new flows only).
	SetPool(svc Service, backends []netip.AddrPort) error
	// Cut removes b from every pool and deletes its flows.
	Cut(b netip.AddrPort) error
	// CutService removes b from svc's pool and deletes its flows of svc
	// only: b changed role and serves the other service on.
	CutService(svc Service, b netip.AddrPort) error
}

// cut is a cut to make: of b's flows of svc, or of all of them.
type cut struct {
	b   netip.AddrPort
	svc Service
	all bool // b leaves every pool
}

func (c cut) String() string {
	if c.all {
		return c.b.String()
	}
	return fmt.Sprintf("%v from %v", c.b, c.svc)
}

// Config holds the controller's rules.
type Config struct {
	Fall int // failed probes to go down; default 3
	Rise int // good probes to come up; default 2
	// FloodGrace bounds how long timed-out probes of a node that the
	// datapath sees answer through a SYN flood (Options.Answering) are
	// forgiven, counted from its last good probe: past it they count
	// again, so a PostgreSQL that hangs during a flood (its kernel still
	// answers the flood's SYNs) is taken down after all. Default 30 s.
	FloodGrace   time.Duration
	MaxReadLag   time.Duration // replicas further behind take no reads; 0 = no limit
	ReadFallback bool          // reads go to the primary when no replica can take them
	// Failover promotes a replica when the primary is down.
	Failover bool
	// MaxLagOnFailover refuses a candidate more than this many bytes of WAL
	// behind the old primary's last known position; 0 = no limit.
	MaxLagOnFailover uint64
	// Synchronous makes xlb manage synchronous_standby_names (ANY 1 over the
	// streaming replicas) and promote only a replica that provably holds
	// every acknowledged commit.
	Synchronous bool
	// ActionTimeout bounds one promotion or reconfiguration; default 10 s.
	ActionTimeout time.Duration
	// WitnessInterval paces re-probes of replicas that still stream from a
	// primary this node finds down; default 25 ms.
	WitnessInterval time.Duration
	// Known is what an earlier run knew (see Options.Remember): the newest
	// timeline and the cluster's system identifier. A restarted daemon
	// fences an old primary that alone answers, although no node it
	// reaches shows the newer timeline.
	Known Durable
}

// Durable is what the controller must not forget across restarts.
type Durable struct {
	Timeline uint32 `json:"timeline"`
	SystemID uint64 `json:"system_id"`
}

// Options are the controller's outputs and clock.
type Options struct {
	Datapath Datapath
	Promoter Promoter // nil: never promotes
	// Owner reports whether this node owns the VIP: only the owner
	// changes PostgreSQL (promotion, following, synchronous standbys,
	// stopping writes), and it asks again right before each change.
	// nil: always.
	Owner func() bool
	// OwnerName names the VIP's owner for messages (e.g. its address);
	// nil or "" when unknown.
	OwnerName func() string
	// Wake asks for immediate probes of the named nodes. nil: no-op.
	Wake func(names ...string)
	// Go runs follow-up work (promotions, repointing replicas); nil runs
	// it inline.
	Go  func(func())
	Now func() time.Time
	// Sleep waits between retries; nil: time.Sleep.
	Sleep func(time.Duration)
	// Reprobe probes nodes afresh, right before a promotion, so that the
	// decision rests on PostgreSQL's state at that moment (another LB may
	// have promoted a node meanwhile). nil: no re-read.
	Reprobe func(ctx context.Context, nodes []Node) []Observation
	// Remember is called (under the controller's lock: keep it short)
	// whenever Durable changes. nil: nothing is kept.
	Remember func(Durable)
	// Pools are what the datapath holds when the controller starts
	// (after a restart: the pinned pools, indexed by Service). Status
	// shows them until every node answered once, and the first decision
	// is compared with them, so a node that left meanwhile is cut.
	Pools [2][]netip.AddrPort
	// Answering reports whether the datapath sees node b still answer its
	// clients while a SYN flood overloads this host (loader.FloodWitness).
	// A probe that timed out then is no miss: under the flood the host's
	// own packets are lost before they reach it, and a backend taken out
	// of the pools for that would have every session on it reset. Probes
	// that fail otherwise (refused, reset, an error from PostgreSQL) count
	// as always. nil: every failure counts.
	Answering func(b netip.AddrPort) bool
}

// Member is a node and what the controller knows of it.
type Member struct {
	Node
	Role      Role   `json:"role"`
	Health    Health `json:"health"`
	Drained   bool   `json:"drained"`
	Timeline  uint32 `json:"timeline"`
	WALLSN    uint64 `json:"wal_lsn"`
	ReplayLSN uint64 `json:"replay_lsn"`
	// ReplayLag is how far behind the writer a replica is: the larger of
	// PostgreSQL's own figure and the time since the writer first had WAL
	// the replica has not replayed (so a replica whose WAL receiver stopped
	// lags more every second the primary writes, though it replayed all it
	// received).
	ReplayLag time.Duration `json:"replay_lag"`
	// LagBytes is how much WAL the writer had, at its last probe, beyond
	// what a replica replayed.
	LagBytes   uint64        `json:"lag_bytes"`
	Latency    time.Duration `json:"latency"`
	LastCheck  time.Time     `json:"last_check"`
	LastError  string        `json:"last_error,omitempty"`
	ReceiveLSN uint64        `json:"receive_lsn"`
	Streaming  bool          `json:"streaming"`
	Upstream   string        `json:"upstream,omitempty"`
	Pools      []Service     `json:"pools"`
	Conflict   bool          `json:"conflict,omitempty"` // claims primary but is not the writer
	Fenced     bool          `json:"fenced,omitempty"`   // claims primary on an old timeline
	SystemID   uint64        `json:"system_id,omitempty"`
	// Foreign marks a node whose system identifier is not the cluster's:
	// another cluster's node, never in a pool, never promoted.
	Foreign bool `json:"foreign,omitempty"`
	// AppName is the application_name the primary reports for this
	// replica's WAL receiver ("" until seen).
	AppName    string `json:"application_name,omitempty"`
	fails, oks int
	failSince  time.Time // first failure of the current streak
	seenAt     time.Time // last good probe
	// streamers are the members a primary last reported streaming from it
	// (pg_stat_replication, matched by address).
	streamers []string
}

// Controller turns observations into pools.
type Controller struct {
	cfg Config
	o   Options
	dp  Datapath
	now func() time.Time

	mu      sync.Mutex
	members []*Member
	pools   [2][]netip.AddrPort
	written bool

	latestTL  uint32    // newest timeline seen or made
	writer    *Member   // the node that takes writes, kept while it is down
	busy      bool      // a promotion or switchover is under way
	reason    string    // why the cluster has no writer, for xlb status
	events    []Event   // failovers and switchovers, newest last, at most maxEvents
	retryAt   time.Time // no promotion is tried before this (after a failed one)
	backoff   time.Duration
	promoSet  []string    // sync mode: nodes that hold every acknowledged commit
	pending   *syncStep   // sync mode: a set written, not yet caught up
	syncNames []string    // sync mode: synchronous_standby_names as last written
	holdRW    bool        // switchover: no writer until the target is promoted
	syncBusy  bool        // a synchronous_standby_names change is under way
	wal       []walSample // the writer's WAL position over time, oldest first
	sysid     uint64      // the cluster's system identifier; 0 = not known yet
	cutRetry  []cut       // cuts that failed: tried again at every apply
	dpErr     string      // the datapath's last error, "" once a write works again
}

// walSample is the writer's WAL position at a probe.
type walSample struct {
	t   time.Time
	lsn uint64
}

// walHistory bounds the samples kept to measure replicas' lag: enough for
// two minutes of probes at the default interval; a replica further behind
// than the oldest sample is at least that far behind.
const walHistory = 256

// Event is a failover or switchover, for xlb status.
type Event struct {
	Time    time.Time     `json:"time"`
	Kind    string        `json:"kind"` // "failover", "switchover"
	From    string        `json:"from,omitempty"`
	To      string        `json:"to,omitempty"`
	Took    time.Duration `json:"took"`
	LostLSN uint64        `json:"lost_bytes"` // async mode: WAL the old primary had beyond the candidate
	Err     string        `json:"error,omitempty"`
}

// New returns a controller for nodes with the outputs in o.
func New(cfg Config, nodes []Node, o Options) *Controller {
	if cfg.FloodGrace <= 0 {
		cfg.FloodGrace = 30 * time.Second
	}
	if cfg.Fall <= 0 {
		cfg.Fall = 3
	}
	if cfg.Rise <= 0 {
		cfg.Rise = 2
	}
	if cfg.ActionTimeout <= 0 {
		cfg.ActionTimeout = 10 * time.Second
	}
	if cfg.WitnessInterval <= 0 {
		cfg.WitnessInterval = 25 * time.Millisecond
	}
	if o.Owner == nil {
		o.Owner = func() bool { return true }
	}
	if o.OwnerName == nil {
		o.OwnerName = func() string { return "" }
	}
	if o.Wake == nil {
		o.Wake = func(...string) {}
	}
	if o.Go == nil {
		o.Go = func(f func()) { f() }
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = time.Sleep
	}
	c := &Controller{cfg: cfg, o: o, dp: o.Datapath, now: o.Now,
		latestTL: cfg.Known.Timeline, sysid: cfg.Known.SystemID}
	for _, n := range nodes {
		m := &Member{Node: n, Role: RoleUnknown, Health: HealthUnknown}
		for _, svc := range []Service{RW, RO} {
			if slices.Contains(o.Pools[svc], n.Addr) {
				m.Pools = append(m.Pools, svc)
			}
		}
		c.members = append(c.members, m)
	}
	for _, svc := range []Service{RW, RO} {
		c.pools[svc] = slices.Clone(o.Pools[svc])
	}
	return c
}

func (c *Controller) member(name string) *Member {
	for _, m := range c.members {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Observe takes one probe result, updates the node, writes any pool change
// to the datapath and, when the primary is down, may start promoting a
// replica (through Options.Go). It returns the datapath's error, or
// ErrUnknownNode.
func (c *Controller) Observe(o Observation) error {
	c.mu.Lock()
	m := c.member(o.Node)
	if m == nil {
		c.mu.Unlock()
		return fmt.Errorf("observing %q: %w", o.Node, ErrUnknownNode)
	}
	c.update(m, o)
	err := c.apply()
	syncJob := c.trackSync(m)
	plan := c.planFailover()
	c.mu.Unlock()
	if syncJob != nil {
		c.o.Go(syncJob)
	}
	if plan != nil {
		// Off the caller: observations keep updating the pools while a
		// promotion runs.
		c.o.Go(func() { c.failover(plan) })
	}
	return err
}

// timedOut reports whether err is a timeout: the context's deadline, or a
// network timeout (a dialer's or a socket deadline's).
func timedOut(err error) bool {
	var t interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &t) && t.Timeout()
}

// update records o in m.
func (c *Controller) update(m *Member, o Observation) {
	m.LastCheck = o.Time
	if o.Err != nil && m.Health == HealthUp && timedOut(o.Err) &&
		o.Time.Sub(m.seenAt) < c.cfg.FloodGrace &&
		c.o.Answering != nil && c.o.Answering(m.Addr) {
		// Timed out, but the datapath sees it answer through a flood:
		// the probe's packets were lost here, not at the node. For
		// FloodGrace at most: its kernel answers the flood's SYNs even
		// when PostgreSQL hangs.
		m.LastError = o.Err.Error()
		slog.Debug("probe timed out under a flood; the node still answers its clients", "node", m.Name, "err", o.Err)
		return
	}
	if o.Err != nil {
		m.LastError = o.Err.Error()
		m.oks = 0
		if m.fails == 0 {
			m.failSince = o.Time
		}
		m.fails++
		switch {
		case m.Health == HealthUnknown && len(m.Pools) > 0 && m.fails < c.cfg.Fall:
			// In a pool the datapath kept across a restart: it worked
			// until then, so it goes down by the rule like any up node
			// (a slow first probe must not cut its flows).
			slog.Info("probe failed", "node", m.Name, "fails", m.fails, "err", o.Err)
		case m.Health == HealthUnknown:
			// Nothing says it ever worked: not routable from the start.
			m.Health = HealthDown
			slog.Info("node down", "node", m.Name, "err", o.Err)
		case m.Health == HealthUp && m.fails >= c.cfg.Fall:
			m.Health = HealthDown
			slog.Warn("node down", "node", m.Name, "fails", m.fails, "err", o.Err)
		}
		if m == c.writer && c.cfg.Failover && m.fails == 1 {
			// Witnesses: have the replicas say now whether they lost it too.
			c.o.Wake(c.replicaNames()...)
		}
		return
	}
	role := RolePrimary
	if o.InRecovery {
		role = RoleReplica
	}
	if m.Role == RolePrimary && role == RoleReplica && o.Timeline < m.Timeline {
		// Taken before m's promotion (a probe under way meanwhile): a
		// primary does not go back to an older timeline as a replica.
		slog.Debug("stale observation", "node", m.Name, "timeline", o.Timeline, "known", m.Timeline)
		return
	}
	m.LastError = ""
	m.fails = 0
	m.oks++
	m.seenAt = o.Time
	if m.Role != role && m.Role != RoleUnknown {
		slog.Warn("role changed", "node", m.Name, "from", m.Role, "to", role, "timeline", o.Timeline)
	}
	m.Role = role
	m.Timeline = o.Timeline
	m.WALLSN = o.WALLSN
	m.ReceiveLSN = o.ReceiveLSN
	m.ReplayLSN = o.ReplayLSN
	m.ReplayLag = o.ReplayLag
	m.LagBytes = 0
	m.Latency = o.Latency
	m.Streaming = o.Streaming
	m.Upstream = o.Upstream
	if o.SystemID != 0 {
		m.SystemID = o.SystemID
	}
	c.checkIdentity()
	if m.Foreign {
		m.LastError = fmt.Sprintf("system identifier %d is not the cluster's (%d)", m.SystemID, c.sysid)
	}
	if role == RolePrimary && !m.Foreign {
		c.learnStandbys(m, o.Standbys)
	}
	if o.Timeline > c.latestTL && !m.Foreign {
		c.latestTL = o.Timeline
		c.remember()
	}
	if role == RolePrimary && o.Timeline >= c.latestTL && (c.writer == nil || c.writer == m) {
		c.sampleWAL(o.Time, o.WALLSN)
	} else if role == RoleReplica {
		c.measureLag(m, o.Time)
	}
	switch {
	case m.Health == HealthUnknown:
		// First contact at start-up: route at once.
		m.Health = HealthUp
		slog.Info("node up", "node", m.Name, "role", role)
	case m.Health == HealthDown && m.oks >= c.cfg.Rise:
		m.Health = HealthUp
		slog.Info("node up", "node", m.Name, "role", role, "oks", m.oks)
	}
}

// checkIdentity decides the cluster's system identifier — the one most
// nodes report, the writer's on a tie, or the one an earlier run knew — and
// marks the other nodes foreign. Called with c.mu held.
func (c *Controller) checkIdentity() {
	count := map[uint64]int{}
	for _, m := range c.members {
		if m.SystemID != 0 {
			count[m.SystemID]++
		}
	}
	best := c.sysid
	for id, n := range count {
		switch {
		case best == 0, n > count[best]:
			best = id
		case n == count[best] && c.writer != nil && c.writer.SystemID == id:
			best = id
		}
	}
	if best != c.sysid {
		if c.sysid != 0 {
			// Another cluster answers at these addresses (rebuilt with
			// initdb): the timeline known for the old one means nothing.
			slog.Warn("cluster system identifier changed: newest timeline read afresh", "was", c.sysid, "now", best)
			c.latestTL = 0
			for _, m := range c.members {
				if m.SystemID == best {
					c.latestTL = max(c.latestTL, m.Timeline)
				}
			}
		}
		c.sysid = best
		c.remember()
	}
	for _, m := range c.members {
		foreign := m.SystemID != 0 && m.SystemID != c.sysid
		if foreign && !m.Foreign {
			slog.Error("node of another cluster: refused", "node", m.Name, "system_id", m.SystemID, "cluster", c.sysid)
		}
		m.Foreign = foreign
	}
}

// learnStandbys records the application_name each replica streams under,
// matched by its address, and which members stream from the primary p.
// Called with c.mu held.
func (c *Controller) learnStandbys(p *Member, sbs []Standby) {
	p.streamers = p.streamers[:0]
	for _, sb := range sbs {
		for _, m := range c.members {
			if m.Addr.Addr() != sb.Addr {
				continue
			}
			if !slices.Contains(p.streamers, m.Name) {
				p.streamers = append(p.streamers, m.Name)
			}
			if m.AppName == sb.AppName {
				continue
			}
			if sb.AppName != m.Name {
				slog.Warn("replica streams under another application_name than its member name; synchronous_standby_names uses it",
					"node", m.Name, "application_name", sb.AppName)
			}
			m.AppName = sb.AppName
		}
	}
}

// remember hands what must survive a restart to Options.Remember.
// Called with c.mu held.
func (c *Controller) remember() {
	if c.o.Remember != nil {
		c.o.Remember(Durable{Timeline: c.latestTL, SystemID: c.sysid})
	}
}

// Warnings lists what an operator should fix: nodes of another cluster,
// replicas streaming under another name than their member name.
func (c *Controller) Warnings() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.members {
		if m.Foreign {
			out = append(out, fmt.Sprintf("%s has system identifier %d, not the cluster's %d: it is never routed to", m.Name, m.SystemID, c.sysid))
		}
		if m.AppName != "" && m.AppName != m.Name {
			out = append(out, fmt.Sprintf("%s streams as application_name %q, not its member name", m.Name, m.AppName))
		}
	}
	return out
}

// sampleWAL records the writer's WAL position at t.
func (c *Controller) sampleWAL(t time.Time, lsn uint64) {
	if n := len(c.wal); n > 0 && c.wal[n-1].lsn == lsn {
		return // no new WAL: the oldest sample with this position counts
	}
	c.wal = append(c.wal, walSample{t: t, lsn: lsn})
	if n := len(c.wal) - walHistory; n > 0 {
		c.wal = slices.Delete(c.wal, 0, n)
	}
}

// measureLag sets replica m's lag at now from the writer's WAL history:
// the writer already had WAL beyond m's replay position at the first
// sample past it, so m is at least now minus that sample's time behind
// (the resolution is the probe interval).
func (c *Controller) measureLag(m *Member, now time.Time) {
	n := len(c.wal)
	if n == 0 || m.ReplayLSN >= c.wal[n-1].lsn {
		return
	}
	m.LagBytes = c.wal[n-1].lsn - m.ReplayLSN
	i, _ := slices.BinarySearchFunc(c.wal, m.ReplayLSN+1, func(s walSample, lsn uint64) int { return cmp.Compare(s.lsn, lsn) })
	if d := now.Sub(c.wal[i].t); d > m.ReplayLag {
		m.ReplayLag = d
	}
}

func (c *Controller) replicaNames() []string {
	var out []string
	for _, m := range c.members {
		if m.Role == RoleReplica {
			out = append(out, m.Name)
		}
	}
	return out
}

// Drain stops new flows to the node named name; its flows stay.
func (c *Controller) Drain(name string) error { return c.setDrained(name, true) }

// Enable undoes Drain.
func (c *Controller) Enable(name string) error { return c.setDrained(name, false) }

func (c *Controller) setDrained(name string, d bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.member(name)
	if m == nil {
		return fmt.Errorf("draining %q: %w", name, ErrUnknownNode)
	}
	m.Drained = d
	slog.Info("drain", "node", name, "drained", d)
	return c.apply()
}

// Members returns a snapshot of every node, in configuration order.
func (c *Controller) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Member, len(c.members))
	for i, m := range c.members {
		out[i] = *m
		out[i].Pools = slices.Clone(m.Pools)
	}
	return out
}

// Pool returns the backends of svc as last written.
func (c *Controller) Pool(svc Service) []netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.pools[svc])
}

// decision is what the rules give for the current members.
type decision struct {
	pools    [2][]netip.AddrPort
	writer   *Member
	conflict []*Member
}

// decide applies the rules to members. It is pure.
//
// A primary on a timeline older than latestTL is fenced: never in a pool.
// Among the others the newest timeline writes, then the current writer,
// then priority and name, so every controller that sees the same cluster
// picks the same node.
func decide(cfg Config, members []*Member, latestTL uint32, current *Member) decision {
	var d decision
	var primaries []*Member
	for _, m := range members {
		if m.Health == HealthUp && m.Role == RolePrimary && m.Timeline >= latestTL && !m.Foreign {
			primaries = append(primaries, m)
		}
	}
	if len(primaries) > 0 {
		slices.SortFunc(primaries, func(a, b *Member) int {
			if c := cmp.Compare(b.Timeline, a.Timeline); c != 0 {
				return c
			}
			if a == current || b == current {
				if a == current {
					return -1
				}
				return 1
			}
			if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
				return c
			}
			return cmp.Compare(a.Name, b.Name)
		})
		d.writer = primaries[0]
		d.conflict = primaries[1:]
		if !d.writer.Drained {
			d.pools[RW] = []netip.AddrPort{d.writer.Addr}
		}
	}
	for _, m := range members {
		if m.Health != HealthUp || m.Role != RoleReplica || m.Drained || m.Foreign {
			continue
		}
		if cfg.MaxReadLag > 0 && m.ReplayLag > cfg.MaxReadLag {
			continue
		}
		d.pools[RO] = append(d.pools[RO], m.Addr)
	}
	if len(d.pools[RO]) == 0 && cfg.ReadFallback && len(d.pools[RW]) > 0 {
		d.pools[RO] = slices.Clone(d.pools[RW])
	}
	for i := range d.pools {
		slices.SortFunc(d.pools[i], func(a, b netip.AddrPort) int { return a.Compare(b) })
	}
	return d
}

// apply decides and writes what changed: first cuts (nodes that left a
// pool for good reason), then the pools.
func (c *Controller) apply() error {
	if !c.written {
		// Until every node has answered or failed once, keep what the
		// datapath has (after a restart: the pinned pools).
		for _, m := range c.members {
			if m.Health == HealthUnknown {
				return nil
			}
		}
	}
	d := decide(c.cfg, c.members, c.latestTL, c.writer)
	if c.holdRW {
		d.pools[RW] = nil
	} else if d.writer != nil {
		if d.writer != c.writer {
			slog.Info("writer", "node", d.writer.Name, "timeline", d.writer.Timeline)
		}
		c.writer = d.writer
		c.reason = ""
	}
	for _, m := range c.members {
		m.Conflict = slices.Contains(d.conflict, m)
		m.Fenced = m.Health == HealthUp && m.Role == RolePrimary && m.Timeline < c.latestTL
		m.Pools = m.Pools[:0]
		for _, svc := range []Service{RW, RO} {
			if slices.Contains(d.pools[svc], m.Addr) {
				m.Pools = append(m.Pools, svc)
			}
		}
	}
	var errs []error
	// Cuts that failed before are tried again until they work: a client
	// of a node that left must not keep its flow.
	for _, k := range slices.Clone(c.cutRetry) {
		if err := c.makeCut(k); err != nil {
			errs = append(errs, fmt.Errorf("cutting %v again: %w", k, err))
			continue
		}
		slog.Info("cut retried", "backend", k.b, "service", k.svc, "all", k.all)
		c.cutRetry = slices.DeleteFunc(c.cutRetry, func(x cut) bool { return x == k })
	}
	done := map[netip.AddrPort]bool{}
	for _, svc := range []Service{RW, RO} {
		other := RO
		if svc == RO {
			other = RW
		}
		for _, b := range slices.Clone(c.pools[svc]) {
			if done[b] || slices.Contains(d.pools[svc], b) {
				continue
			}
			m := c.byAddr(b)
			if m != nil && m.Health == HealthUp && !c.roleLeft(m, svc) {
				continue // drained or lagging: keep its flows
			}
			// A node that serves the other service on (a replica
			// promoted, a primary demoted) loses only this service's
			// sessions; one that serves nothing loses all.
			k := cut{b: b, svc: svc, all: !slices.Contains(d.pools[other], b)}
			done[b] = k.all
			slog.Info("cutting flows", "backend", b, "service", svc, "all", k.all)
			if err := c.makeCut(k); err != nil {
				errs = append(errs, fmt.Errorf("cutting %v: %w", k, err))
				if !slices.Contains(c.cutRetry, k) {
					c.cutRetry = append(c.cutRetry, k)
				}
			}
		}
	}
	for _, svc := range []Service{RW, RO} {
		// Only pools that differ from the datapath's are written (a cut
		// took its backend out of the datapath's pools already): a table
		// write costs tens of ms in the middle of a failover.
		if c.written && slices.Equal(c.pools[svc], d.pools[svc]) {
			continue
		}
		slog.Info("pool", "service", svc, "backends", d.pools[svc])
		if err := c.dp.SetPool(svc, d.pools[svc]); err != nil {
			errs = append(errs, fmt.Errorf("setting %v pool: %w", svc, err))
			continue
		}
		c.pools[svc] = d.pools[svc]
	}
	c.written = true
	err := errors.Join(errs...)
	c.dpErr = ""
	if err != nil {
		c.dpErr = err.Error()
	}
	return err
}

// makeCut makes the cut k and, when it worked, takes k's backend out of
// the pools it left in the datapath (all of them, or k.svc's).
func (c *Controller) makeCut(k cut) error {
	var err error
	if k.all {
		err = c.dp.Cut(k.b)
	} else {
		err = c.dp.CutService(k.svc, k.b)
	}
	if err != nil {
		return err
	}
	for _, svc := range []Service{RW, RO} {
		if k.all || svc == k.svc {
			c.pools[svc] = slices.DeleteFunc(slices.Clone(c.pools[svc]), func(x netip.AddrPort) bool { return x == k.b })
		}
	}
	return nil
}

// roleLeft reports whether m no longer has the role that svc needs.
func (c *Controller) roleLeft(m *Member, svc Service) bool {
	if m.Foreign {
		return true
	}
	if svc == RW {
		return m.Role != RolePrimary || m.Conflict || m.Fenced
	}
	if m.Fenced || (m.Role != RoleReplica && m.Role != RolePrimary) {
		return true
	}
	// Readers read from the read pool's nodes only. Only a drain lets a
	// node's sessions finish after it left the pool.
	if m.Drained {
		return false
	}
	// A replica promoted, or a primary that served reads as fallback
	// until replicas came back, loses its readers: they reconnect to a
	// replica (and the primary keeps its writers).
	if m.Role == RolePrimary {
		return true
	}
	// A replica past max_read_lag leaves with its sessions: they would go
	// on reading stale data.
	return c.cfg.MaxReadLag > 0 && m.ReplayLag > c.cfg.MaxReadLag
}

func (c *Controller) byAddr(b netip.AddrPort) *Member {
	for _, m := range c.members {
		if m.Addr == b {
			return m
		}
	}
	return nil
}
