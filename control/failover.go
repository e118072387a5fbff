package control

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// Promoter acts on PostgreSQL nodes for failover and switchover. xlb's
// runs SQL over pgx (cmd/xlb); tests use a fake.
type Promoter interface {
	// Promote makes replica n a primary (pg_promote) and returns once it
	// accepts writes. An error that wraps ErrNotPromoted says pg_promote
	// was never sent (n is unchanged); any other error leaves it
	// uncertain whether n promotes.
	Promote(ctx context.Context, n Node) error
	// Follow points replica n at primary p: primary_conninfo to p,
	// recovery_target_timeline latest, reload; n's replication slot is
	// created on p first when missing.
	Follow(ctx context.Context, n, p Node) error
	// SetSynchronous sets synchronous_standby_names on primary p to
	// ANY 1 (names), or clears it when names is empty, and reloads. The
	// names are application_names as pg_stat_replication shows them.
	SetSynchronous(ctx context.Context, p Node, names []string) error
	// StopWrites makes primary p refuse writes (default_transaction_read_only,
	// client sessions terminated) and returns its WAL position after that.
	StopWrites(ctx context.Context, p Node) (lsn uint64, err error)
	// AllowWrites undoes StopWrites on n.
	AllowWrites(ctx context.Context, n Node) error
}

// ErrNotPromoted means Promote did not send pg_promote: the node is still
// the replica it was, so a switchover may be undone.
var ErrNotPromoted = errors.New("not promoted")

// ErrNotOwner means this node does not own the VIP, so it changes nothing
// in PostgreSQL.
var ErrNotOwner = errors.New("this node does not own the VIP")

// maxEvents bounds the failover and switchover events kept for xlb status.
const maxEvents = 50

// Backoff after a failed promotion: the next try waits minBackoff, then
// twice as long each time, at most maxBackoff.
const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

// record appends ev to the events, dropping the oldest beyond maxEvents.
// Called with c.mu held.
func (c *Controller) record(ev Event) {
	c.events = append(c.events, ev)
	if n := len(c.events) - maxEvents; n > 0 {
		c.events = slices.Delete(c.events, 0, n)
	}
}

// notOwner returns ErrNotOwner naming the owner when known.
func (c *Controller) notOwner(what string) error {
	if o := c.o.OwnerName(); o != "" {
		return fmt.Errorf("%s: %w; its owner %s does", what, ErrNotOwner, o)
	}
	return fmt.Errorf("%s: %w", what, ErrNotOwner)
}

// plan is a promotion decided under the lock and carried out outside it.
type plan struct {
	cand, old *Member
	lost      uint64 // async: bytes the old primary had beyond cand
	lostAt    time.Time
}

// syncStep is a synchronous_standby_names change whose set has not yet
// caught up with the primary's WAL at the time of the change.
type syncStep struct {
	set   []string
	since time.Time
	lsn   uint64 // primary's WAL position first seen after since; 0 = not yet
}

// lsnOf is how far a replica got: received (flushed) WAL, else replayed.
func lsnOf(m *Member) uint64 { return max(m.ReceiveLSN, m.ReplayLSN) }

// planFailover returns the promotion the rules call for now, or nil (and
// says why in c.reason). Called with c.mu held.
func (c *Controller) planFailover() *plan {
	old := c.writer
	if !c.cfg.Failover || c.o.Promoter == nil || c.busy || old == nil || old.Health != HealthDown {
		return nil
	}
	for _, m := range c.members {
		if m != old && m.Health == HealthUp && m.Role == RolePrimary && m.Timeline >= c.latestTL {
			return nil // someone already writes
		}
	}
	lostAt := old.failSince
	say := func(format string, args ...any) *plan {
		r := fmt.Sprintf(format, args...)
		if r != c.reason {
			slog.Warn("no failover", "primary", old.Name, "reason", r)
		}
		c.reason = r
		return nil
	}
	if !c.o.Owner() {
		return say("this node does not own the VIP; its owner promotes")
	}
	if now := c.now(); now.Before(c.retryAt) {
		return say("%s; next try in %v", c.reason, c.retryAt.Sub(now).Round(time.Millisecond))
	}
	var cands []*Member
	for _, m := range c.members {
		if m == old || m.Health != HealthUp || m.Role != RoleReplica || m.Drained || m.Foreign {
			continue
		}
		if !m.seenAt.After(lostAt) {
			c.o.Wake(m.Name)
			return say("waiting for %s to be probed after %s failed", m.Name, old.Name)
		}
		if m.Streaming && m.Upstream == old.Addr.String() {
			// It may not have noticed yet: ask again soon.
			if c.now().Sub(m.LastCheck) >= c.cfg.WitnessInterval {
				c.o.Wake(m.Name)
			}
			return say("%s still streams from %s: only this LB lost it, nobody is promoted", m.Name, old.Name)
		}
		cands = append(cands, m)
	}
	if c.cfg.Synchronous {
		// Every acknowledged commit is on a member of the synchronous
		// set, so on the most advanced replica when all of them are
		// among the candidates. The choice below is made among all
		// candidates, not only the set: two LB hosts that both think
		// they own the VIP, with different ideas of the set, then still
		// pick the same node from the same final WAL positions.
		if len(c.promoSet) == 0 {
			return say("no replica is known to hold every acknowledged commit (synchronous mode)")
		}
		for _, name := range c.promoSet {
			m := c.member(name)
			if m == nil || !slices.Contains(cands, m) {
				return say("synchronous replica %s is not available: it may hold commits the others lack", name)
			}
		}
	}
	if len(cands) == 0 {
		return say("no healthy replica to promote")
	}
	slices.SortFunc(cands, func(a, b *Member) int {
		if c := cmp.Compare(lsnOf(b), lsnOf(a)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	cand := cands[0]
	var lost uint64
	if old.WALLSN > lsnOf(cand) {
		lost = old.WALLSN - lsnOf(cand)
	}
	if !c.cfg.Synchronous && c.cfg.MaxLagOnFailover > 0 && lost > c.cfg.MaxLagOnFailover {
		return say("%s is %d bytes behind %s, more than max_lag_on_failover (%d)", cand.Name, lost, old.Name, c.cfg.MaxLagOnFailover)
	}
	c.busy = true
	c.reason = fmt.Sprintf("promoting %s", cand.Name)
	return &plan{cand: cand, old: old, lost: lost, lostAt: lostAt}
}

// failover carries out p: promote, route writes, repoint the others. The
// VIP's ownership is checked again right before pg_promote.
func (c *Controller) failover(p *plan) {
	start := c.now()
	if p = c.recheck(p); p == nil {
		return
	}
	ev := Event{Time: start, Kind: "failover", From: p.old.Name, To: p.cand.Name, LostLSN: p.lost}
	var err error
	if !c.o.Owner() {
		err = fmt.Errorf("%w before promoting %s", ErrNotOwner, p.cand.Name)
	} else {
		slog.Warn("failover", "from", p.old.Name, "to", p.cand.Name, "lsn", lsnOf(p.cand), "may_lose_bytes", p.lost)
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ActionTimeout)
		err = c.o.Promoter.Promote(ctx, p.cand.Node)
		cancel()
		if err != nil && !errors.Is(err, ErrNotPromoted) {
			// pg_promote went out: the candidate becomes the primary
			// whatever happened to the answer. Route as if it did; its
			// probes confirm it.
			slog.Error("promotion unconfirmed, routing to the candidate", "node", p.cand.Name, "err", err)
			ev.Err = err.Error()
			err = nil
		}
	}
	c.mu.Lock()
	if err != nil {
		c.busy = false
		c.backoff = min(max(2*c.backoff, minBackoff), maxBackoff)
		c.retryAt = c.now().Add(c.backoff)
		c.reason = fmt.Sprintf("promoting %s failed: %v", p.cand.Name, err)
		ev.Err = err.Error()
		ev.Took = c.now().Sub(start)
		c.record(ev)
		c.mu.Unlock()
		slog.Error("failover failed", "to", p.cand.Name, "err", err, "retry_in", c.backoff)
		return
	}
	c.backoff, c.retryAt = 0, time.Time{}
	c.promoted(p.cand)
	ev.Took = c.now().Sub(start)
	c.record(ev)
	followers := c.followers(p.cand)
	c.mu.Unlock()
	slog.Warn("promoted", "node", p.cand.Name, "timeline", p.cand.Timeline, "took", ev.Took, "lost_bytes", p.lost)
	c.o.Go(func() { c.repoint(p.cand, followers) })
}

// recheck reads every node but the old primary afresh (Options.Reprobe)
// and plans again from what PostgreSQL says now, so that two LB nodes that
// both believe they own the VIP promote the same node or none: the
// replicas' final WAL positions give both the same candidate, and a node
// already promoted (by the other LB) on a newer timeline stops this one.
// It returns the plan to carry out, or nil (busy cleared, reason set).
func (c *Controller) recheck(p *plan) *plan {
	if c.o.Reprobe == nil {
		return p
	}
	c.mu.Lock()
	var nodes []Node
	for _, m := range c.members {
		if m != p.old {
			nodes = append(nodes, m.Node)
		}
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ActionTimeout)
	obs := c.o.Reprobe(ctx, nodes)
	cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range obs {
		if m := c.member(o.Node); m != nil && !o.Time.Before(m.LastCheck) {
			c.update(m, o)
		}
	}
	c.busy = false
	for _, m := range c.members {
		if m != p.old && m.Health == HealthUp && m.Role == RolePrimary && m.Timeline > p.old.Timeline && !m.Foreign {
			slog.Warn("not promoting: a node is already primary on a newer timeline", "node", m.Name, "timeline", m.Timeline)
			c.reason = ""
			if err := c.apply(); err != nil {
				slog.Error("routing writes", "node", m.Name, "err", err)
			}
			return nil
		}
	}
	np := c.planFailover()
	if np == nil {
		if err := c.apply(); err != nil {
			slog.Error("applying pools", "err", err)
		}
		return nil
	}
	if np.cand != p.cand {
		slog.Warn("failover candidate changed on a fresh read", "was", p.cand.Name, "now", np.cand.Name)
	}
	return np
}

// promoted records that m is now the primary and routes writes to it.
// Called with c.mu held.
func (c *Controller) promoted(m *Member) {
	// A probe may have seen the promotion take effect already (probes run
	// meanwhile): m is a primary on the newest timeline then, and counting
	// one more would fence it.
	if m.Role != RolePrimary || m.Timeline < c.latestTL {
		c.latestTL = max(c.latestTL, m.Timeline) + 1
		m.Role, m.Timeline = RolePrimary, c.latestTL
		c.remember()
	}
	m.Streaming, m.Upstream = false, ""
	c.writer = m
	c.busy, c.holdRW = false, false
	c.reason = ""
	// The old sync set described the old primary's standbys.
	c.promoSet, c.pending, c.syncNames = nil, nil, nil
	if err := c.apply(); err != nil {
		slog.Error("routing writes", "node", m.Name, "err", err)
	}
}

// followers lists the up replicas that must follow p. Called with c.mu held.
func (c *Controller) followers(p *Member) []Node {
	var out []Node
	for _, m := range c.members {
		if m != p && m.Health == HealthUp && m.Role == RoleReplica {
			out = append(out, m.Node)
		}
	}
	return out
}

// Repointing retries: a follower that fails is tried again after
// followRetry, doubling up to followRetryMax, for at most followFor.
const (
	followRetry    = 200 * time.Millisecond
	followRetryMax = 5 * time.Second
	followFor      = 2 * time.Minute
)

// repoint makes every follower stream from p, retrying each with backoff
// until it streams, p is no longer the writer, or this node no longer
// owns the VIP.
func (c *Controller) repoint(p *Member, followers []Node) {
	for _, n := range followers {
		wait := followRetry
		deadline := c.now().Add(followFor)
		for {
			c.mu.Lock()
			still := c.writer == p
			c.mu.Unlock()
			if !still {
				slog.Info("repointing stopped: the writer changed", "node", n.Name, "primary", p.Name)
				return
			}
			if !c.o.Owner() {
				slog.Warn("repointing stopped", "node", n.Name, "err", c.notOwner("repointing "+n.Name))
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ActionTimeout)
			err := c.o.Promoter.Follow(ctx, n, p.Node)
			cancel()
			if err == nil {
				slog.Info("replica follows", "node", n.Name, "primary", p.Name)
				break
			}
			if !c.now().Add(wait).Before(deadline) {
				slog.Error("repointing replica: giving up", "node", n.Name, "primary", p.Name, "err", err)
				break
			}
			slog.Warn("repointing replica", "node", n.Name, "primary", p.Name, "err", err, "retry_in", wait)
			c.o.Sleep(wait)
			wait = min(2*wait, followRetryMax)
		}
	}
}

// trackSync keeps synchronous_standby_names on the writer equal to the
// replicas streaming from it, and the promotable set true. Called with
// c.mu held, after m was updated; it returns the change to run through
// c.o.Go after the lock is released (nil: none), never against a writer
// that is failing probes.
func (c *Controller) trackSync(m *Member) func() {
	w := c.writer
	if !c.cfg.Synchronous || c.o.Promoter == nil || w == nil || w.Health != HealthUp || w.fails > 0 || c.busy {
		return nil
	}
	if !c.o.Owner() {
		// The owner keeps the synchronous set; this node did not write
		// it and may have missed changes. Any replica streaming from the
		// writer may be in it, so should this node have to promote, it
		// needs them all (the owner's own set is a subset).
		c.promoSet, c.pending, c.syncNames = slices.Clone(w.streamers), nil, nil
		return nil
	}
	if p := c.pending; p != nil {
		if m == w && p.lsn == 0 && m.seenAt.After(p.since) {
			p.lsn = w.WALLSN
		}
		if p.lsn != 0 {
			for _, name := range p.set {
				r := c.member(name)
				if r != nil && r.seenAt.After(p.since) && lsnOf(r) >= p.lsn {
					slog.Info("synchronous set caught up", "set", p.set, "lsn", p.lsn)
					c.promoSet, c.pending = p.set, nil
					break
				}
			}
		}
	}
	if c.syncBusy {
		return nil
	}
	var want []string
	for _, r := range c.members {
		if r != w && r.Health == HealthUp && r.Role == RoleReplica && r.Streaming && r.Upstream == w.Addr.String() {
			want = append(want, r.Name)
		}
	}
	if slices.Equal(want, c.syncNames) {
		return nil
	}
	// Until the change is known to hold, any member of the old or the new
	// set may hold the newest acknowledged commit: promotion needs them all.
	if len(c.promoSet) > 0 {
		for _, n := range want {
			if !slices.Contains(c.promoSet, n) {
				c.promoSet = append(c.promoSet, n)
			}
		}
	}
	c.syncBusy = true
	node := w.Node
	// synchronous_standby_names holds what the standbys call themselves.
	apps := make([]string, len(want))
	for i, n := range want {
		apps[i] = n
		if m := c.member(n); m != nil && m.AppName != "" {
			apps[i] = m.AppName
		}
	}
	return func() { c.setSync(w, node, want, apps) }
}

// setSync writes synchronous_standby_names on w and records the result.
func (c *Controller) setSync(w *Member, node Node, want, apps []string) {
	var err error
	if !c.o.Owner() {
		err = c.notOwner("setting synchronous standbys")
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ActionTimeout)
		err = c.o.Promoter.SetSynchronous(ctx, node, apps)
		cancel()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.syncBusy = false
	if err != nil {
		slog.Error("setting synchronous standbys", "primary", node.Name, "names", want, "err", err)
		return
	}
	if c.writer != w {
		return // a failover happened meanwhile: this set described the old primary
	}
	slog.Info("synchronous standbys", "primary", node.Name, "names", want)
	c.syncNames = want
	if len(want) == 0 {
		c.promoSet, c.pending = nil, nil
		return
	}
	c.pending = &syncStep{set: want, since: c.now()}
}

// ErrBusy means a promotion or switchover is already under way.
var ErrBusy = errors.New("a failover or switchover is under way")

// ErrNotReplica means a switchover target is not a healthy replica.
var ErrNotReplica = errors.New("target is not a healthy replica")

// Switchover hands the primary role to the replica named to without losing
// a commit: writes stop on the old primary (its flows are cut and its
// sessions ended), to replays up to the old primary's last WAL position,
// is promoted and takes writes; the other replicas follow it. The old
// primary stays fenced until it rejoins (xlb pg rejoin on its host).
//
// Only the VIP's owner switches over (ErrNotOwner names the owner), and it
// checks its ownership again before stopping writes and before promoting.
// Until pg_promote is sent, a cancelled ctx or a failure undoes the
// switchover (the old primary takes writes again); once it is sent nothing
// undoes it: the promotion runs to its end, bounded by the action timeout,
// whatever happens to ctx.
func (c *Controller) Switchover(ctx context.Context, to string) (Event, error) {
	c.mu.Lock()
	target := c.member(to)
	old := c.writer
	switch {
	case target == nil:
		c.mu.Unlock()
		return Event{}, fmt.Errorf("switching over to %q: %w", to, ErrUnknownNode)
	case c.o.Promoter == nil:
		c.mu.Unlock()
		return Event{}, errors.New("switching over: no promoter")
	case !c.o.Owner():
		c.mu.Unlock()
		return Event{}, c.notOwner("switching over to " + to)
	case c.busy:
		c.mu.Unlock()
		return Event{}, ErrBusy
	case target.Health != HealthUp || target.Role != RoleReplica:
		c.mu.Unlock()
		return Event{}, fmt.Errorf("switching over to %s: %w", to, ErrNotReplica)
	case old == nil || old.Health != HealthUp:
		c.mu.Unlock()
		return Event{}, errors.New("switching over: no healthy primary to hand over from")
	}
	c.busy, c.holdRW = true, true
	c.reason = fmt.Sprintf("switching over from %s to %s", old.Name, to)
	start := c.now()
	ev := Event{Time: start, Kind: "switchover", From: old.Name, To: to}
	fail := func(err error) (Event, error) {
		c.mu.Lock()
		c.busy, c.holdRW = false, false
		c.reason = fmt.Sprintf("switchover to %s failed: %v", to, err)
		if err := c.apply(); err != nil {
			slog.Error("restoring pools", "err", err)
		}
		ev.Err, ev.Took = err.Error(), c.now().Sub(start)
		c.record(ev)
		c.mu.Unlock()
		return ev, err
	}
	// No new writes to the old primary, and its clients learn now.
	errs := []error{c.dp.SetPool(RW, nil), c.dp.Cut(old.Addr)}
	c.pools[RW] = nil
	c.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fail(fmt.Errorf("taking writes from %s: %w", old.Name, err))
	}
	if !c.o.Owner() {
		return fail(c.notOwner("stopping writes on " + old.Name))
	}
	lsn, err := c.o.Promoter.StopWrites(ctx, old.Node)
	if err != nil {
		return fail(c.undoStopWrites(old, fmt.Errorf("stopping writes: %w", err)))
	}
	slog.Info("switchover: writes stopped", "node", old.Name, "lsn", lsn)
	for {
		c.mu.Lock()
		got := lsnOf(target)
		replayed := target.ReplayLSN
		c.mu.Unlock()
		if replayed >= lsn && got >= lsn {
			break
		}
		c.o.Wake(to)
		select {
		case <-ctx.Done():
			return fail(c.undoStopWrites(old, fmt.Errorf("waiting for %s to replay %d (at %d): %w", to, lsn, replayed, ctx.Err())))
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := ctx.Err(); err != nil {
		return fail(c.undoStopWrites(old, fmt.Errorf("switching over to %s: %w", to, err)))
	}
	if !c.o.Owner() {
		return fail(c.undoStopWrites(old, c.notOwner("promoting "+to)))
	}
	// From here on the switchover completes: the request may go away.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.ActionTimeout)
	err = c.o.Promoter.Promote(pctx, target.Node)
	cancel()
	if errors.Is(err, ErrNotPromoted) {
		return fail(c.undoStopWrites(old, fmt.Errorf("promoting %s: %w", to, err)))
	}
	c.mu.Lock()
	c.promoted(target)
	ev.Took = c.now().Sub(start)
	if err != nil {
		// Sent but unconfirmed: the target promotes; the old primary
		// stays read-only and fenced, never writable again.
		ev.Err = fmt.Sprintf("promotion of %s unconfirmed: %v", to, err)
		slog.Error("switchover: promotion unconfirmed, routing to the target", "node", to, "err", err)
	}
	c.record(ev)
	followers := c.followers(target)
	c.mu.Unlock()
	slog.Warn("switched over", "from", old.Name, "to", to, "took", ev.Took)
	c.o.Go(func() { c.repoint(target, followers) })
	return ev, nil
}

// undoStopWrites lets the old primary take writes again after a failed
// switchover (it stays the writer) and returns err with any failure to.
func (c *Controller) undoStopWrites(old *Member, err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ActionTimeout)
	defer cancel()
	if uerr := c.o.Promoter.AllowWrites(ctx, old.Node); uerr != nil {
		return errors.Join(err, fmt.Errorf("allowing writes on %s again: %w", old.Name, uerr))
	}
	return err
}

// Status is the controller's view for xlb status.
type Status struct {
	Writer          string   `json:"writer,omitempty"`
	Timeline        uint32   `json:"timeline"`
	NoWriterReason  string   `json:"no_writer_reason,omitempty"`
	Synchronous     bool     `json:"synchronous"`
	SyncStandbys    []string `json:"sync_standbys,omitempty"`
	PromotableNodes []string `json:"promotable,omitempty"`
	Events          []Event  `json:"events,omitempty"`
	SystemID        uint64   `json:"system_id,omitempty"`
	Warnings        []string `json:"warnings,omitempty"`
	// DatapathError is the last failed write to the datapath (a pool or
	// a cut, retried at every observation); "" once writes work.
	DatapathError string `json:"datapath_error,omitempty"`
}

// Status returns what the controller decided lately and why.
func (c *Controller) Status() Status {
	w := c.Warnings()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Status{Warnings: w, SystemID: c.sysid, DatapathError: c.dpErr, Timeline: c.latestTL, NoWriterReason: c.reason, Synchronous: c.cfg.Synchronous,
		SyncStandbys: slices.Clone(c.syncNames), PromotableNodes: slices.Clone(c.promoSet),
		Events: slices.Clone(c.events)}
	if c.writer != nil && len(c.pools[RW]) > 0 {
		s.Writer = c.writer.Name
	}
	return s
}
