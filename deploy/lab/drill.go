package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// DrillOptions says how Drill exercises a running lab.
type DrillOptions struct {
	// Prefix names the lab; default Prefix.
	Prefix string
	// Fault is done to the primary in every trial; default FaultKill.
	Fault Fault
	// Trials is how many failovers to run, one after another; default 3.
	Trials int
	// Clients is how many writers insert through VIP:PortRW; default 4.
	Clients int
	// Load is how long the writers run before the fault, after writes
	// resume, and after the old primary is back and fenced; default 1 s.
	Load time.Duration
	// Timeout bounds each wait of a trial (a steady cluster, writes
	// resuming, fencing, the rejoin); default 60 s.
	Timeout time.Duration
	// SkipRejoin leaves the old primary fenced after the first trial
	// instead of rejoining it: the lab then has one replica fewer, so
	// Trials must be 1.
	SkipRejoin bool
	// Out receives one progress line per step; nil discards them.
	Out io.Writer
}

func (o *DrillOptions) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = Prefix
	}
	if o.Fault == "" {
		o.Fault = FaultKill
	}
	if o.Trials == 0 {
		o.Trials = 3
	}
	if o.Clients == 0 {
		o.Clients = 4
	}
	if o.Load == 0 {
		o.Load = time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

func (o *DrillOptions) validate() error {
	if _, err := ParseFault(string(o.Fault)); err != nil {
		return fmt.Errorf("drill options: %w", err)
	}
	switch {
	case o.Trials < 1 || o.Trials > 1000:
		return fmt.Errorf("drill options: %d trials: want 1 to 1000", o.Trials)
	case o.Clients < 1 || o.Clients > 100:
		return fmt.Errorf("drill options: %d clients: want 1 to 100", o.Clients)
	case o.SkipRejoin && o.Trials != 1:
		return errors.New("drill options: SkipRejoin leaves the lab without its old primary: want 1 trial")
	case o.Load < 0 || o.Timeout < 0:
		return errors.New("drill options: negative duration")
	}
	return nil
}

// Seconds is a duration in seconds, as the drill reports it (JSON
// numbers people read).
type Seconds float64

func seconds(d time.Duration) Seconds { return Seconds(math.Round(d.Seconds()*1000) / 1000) }

// DrillReport is what Drill measured.
type DrillReport struct {
	Prefix      string       `json:"prefix"`
	Fault       Fault        `json:"fault"`
	Clients     int          `json:"clients"`
	Synchronous bool         `json:"synchronous"` // the daemon's synchronous mode
	Trials      []DrillTrial `json:"trials"`
	// OutageP50 and OutageMax summarize the trials' outages (nearest-rank
	// median).
	OutageP50 Seconds `json:"outage_p50_s"`
	OutageMax Seconds `json:"outage_max_s"`
	// Lost and FencedWrites add up the trials'.
	Lost         int `json:"lost"`
	FencedWrites int `json:"fenced_writes"`
}

// DrillTrial is one failover of a drill.
type DrillTrial struct {
	Trial      int    `json:"trial"`
	Fault      Fault  `json:"fault"`
	OldPrimary string `json:"old_primary"`
	NewPrimary string `json:"new_primary"`
	// FaultAt is when the fault was injected (T0).
	FaultAt time.Time `json:"fault_at"`
	// Outage runs from T0 to the first acknowledged INSERT on the new
	// primary.
	Outage Seconds `json:"outage_s"`
	// Stall is the longest pause between acknowledgements after writes
	// resumed: near the writers' pace unless writes stopped again.
	// StallAt is when it began, from T0.
	Stall   Seconds `json:"stall_after_resume_s"`
	StallAt Seconds `json:"stall_at_s"`
	// Acknowledged counts the INSERTs the writers saw succeed in the
	// trial; AckedByOldAfterFault those of them the old primary
	// acknowledged after T0 (commits in flight at T0).
	Acknowledged         int `json:"acknowledged"`
	AckedByOldAfterFault int `json:"acknowledged_by_old_after_fault"`
	// Lost counts acknowledged rows the new primary lacks; LostIDs lists
	// up to 20 of them.
	Lost    int     `json:"lost"`
	LostIDs []int64 `json:"lost_ids,omitempty"`
	// FencedWrites counts writes that reached the old primary after the
	// promotion (see checkFenced): FencedRows rows written there after
	// it, plus FencedSessions writer sessions begun there after it.
	FencedWrites   int `json:"fenced_writes"`
	FencedRows     int `json:"fenced_rows"`
	FencedSessions int `json:"fenced_sessions"`
	// Promotion is the daemon's failover event: how long its promotion
	// took and the WAL it estimated lost (asynchronous mode).
	Promotion Seconds `json:"promotion_s"`
	// The outage in phases, one after another: Detection from T0 to the
	// daemon's decision to fail over; Promotion (above) to writes routed
	// to the new primary; Routing from there to the start of the session
	// that made the first acknowledged INSERT on the new primary (writers
	// noticing their flow is gone, or waiting out a dead one, and
	// reconnecting); FirstAck from that session's start to the
	// acknowledgement.
	Detection Seconds `json:"detection_s"`
	Routing   Seconds `json:"routing_s"`
	FirstAck  Seconds `json:"first_ack_s"`
	// DeadWaits counts the writers that waited on a dead connection
	// around the fault: an INSERT begun before writes resumed that ended
	// by the writers' statement timeout; DeadWaitMax is the longest such
	// wait.
	DeadWaits      int            `json:"dead_waits"`
	DeadWaitMax    Seconds        `json:"dead_wait_max_s"`
	PromotionLoss  uint64         `json:"promotion_lost_bytes"`
	FencedAfter    Seconds        `json:"fenced_after_revive_s"` // revive to "fenced" in xlb backends
	Rejoin         Seconds        `json:"rejoin_s"`              // rejoin to an up replica in pool 3001; 0 when skipped
	WriterFailures map[string]int `json:"writer_failures,omitempty"`
}

// OK reports whether no trial lost an acknowledged commit or wrote to a
// fenced primary.
func (r *DrillReport) OK() bool { return r.Lost == 0 && r.FencedWrites == 0 }

// Drill runs failover trials on the running lab with opts.Prefix. Each
// trial waits for a steady cluster (one primary in pool PortRW, every other
// PostgreSQL host an up replica in pool PortRO and, in synchronous mode,
// promotable), starts opts.Clients writers (StartWriters) through
// VIP:PortRW, lets them run opts.Load, injects opts.Fault on the primary
// at T0, and waits for the first INSERT acknowledged by another server
// (inet_server_addr()): the new primary, which must be the node the
// daemon reports it promoted. The outage is T0 to the first
// acknowledgement by the new primary; the longest pause between
// acknowledgements after it is the stall (writes stopping again). The writers run opts.Load more; the old primary
// is revived (Revive) and must show as fenced in `xlb backends` while they
// run opts.Load more; then they stop, and the trial counts the
// acknowledged rows the new primary lacks (lost) and the writes that
// reached the old primary after the promotion (checkFenced). Last the old
// primary rejoins as a replica of the new one (Rejoin) and the trial
// waits until the daemon has it up in pool PortRO.
//
// A lost commit or a fenced write is a finding, not an error: the report
// says it (DrillReport.OK). Drill returns the trials done so far and an
// error when a step fails or a wait times out; the error carries the
// daemon's view and its log's last lines.
func Drill(ctx context.Context, opts DrillOptions) (*DrillReport, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	r, err := Open(opts.Prefix)
	if err != nil {
		return nil, err
	}
	rep := &DrillReport{Prefix: opts.Prefix, Fault: opts.Fault, Clients: opts.Clients}
	say := func(format string, args ...any) { fmt.Fprintf(opts.Out, "drill: "+format+"\n", args...) }

	wctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	primary, err := r.waitSteady(wctx)
	cancel()
	if err != nil {
		return rep, err
	}
	cs, err := r.Control(ctx)
	if err != nil {
		return rep, err
	}
	rep.Synchronous = cs.Synchronous
	say("lab %s: %s is the primary; synchronous mode %t; (re)creating table %s through VIP:%d",
		opts.Prefix, primary, cs.Synchronous, DrillTable, PortRW)
	if err := r.CreateDrillTable(ctx); err != nil {
		return rep, err
	}
	for i := 1; i <= opts.Trials; i++ {
		t, err := r.trial(ctx, opts, i, say)
		if t != nil {
			rep.Trials = append(rep.Trials, *t)
		}
		rep.summarize()
		if err != nil {
			return rep, fmt.Errorf("drill trial %d (%s): %w", i, opts.Fault, err)
		}
	}
	say("outage p50 %.3f s, max %.3f s over %d trials; %d acknowledged commits lost; %d writes to a fenced primary",
		rep.OutageP50, rep.OutageMax, len(rep.Trials), rep.Lost, rep.FencedWrites)
	return rep, nil
}

// summarize fills the report's totals from its trials.
func (r *DrillReport) summarize() {
	var outages []Seconds
	r.Lost, r.FencedWrites = 0, 0
	for _, t := range r.Trials {
		outages = append(outages, t.Outage)
		r.Lost += t.Lost
		r.FencedWrites += t.FencedWrites
	}
	r.OutageP50, r.OutageMax = percentile(outages, 50), percentile(outages, 100)
}

// percentile returns the nearest-rank p-th percentile of xs, 0 for none.
func percentile(xs []Seconds, p float64) Seconds {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// waitSteady waits until the daemon shows a steady cluster (steady) and
// returns its primary.
func (r *Running) waitSteady(ctx context.Context) (string, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var why string
	for {
		bs, err := r.Backends(ctx)
		var cs *ControlStatus
		if err == nil {
			cs, err = r.Control(ctx)
		}
		if err == nil {
			var p string
			if p, why = steady(bs, cs); why == "" {
				return p, nil
			}
		} else {
			why = err.Error()
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for a steady cluster: %w (%s)\n%s", ctx.Err(), why, r.daemonLogTail(15))
		case <-tick.C:
		}
	}
}

// steady returns the primary of a steady cluster, or why the cluster is
// not steady: exactly one up primary in pool PortRW and the daemon's
// writer, every other PostgreSQL host an up replica in pool PortRO only,
// and in synchronous mode every replica a synchronous standby and
// promotable (so a failover may pick any).
func steady(bs []Backend, cs *ControlStatus) (primary, why string) {
	var replicas []string
	for _, h := range pgHosts {
		b, ok := Find(bs, h)
		switch {
		case !ok:
			return "", fmt.Sprintf("the daemon does not know %s", h)
		case b.Role == "primary" && b.State == "up" && slices.Equal(b.Pools, []string{fmt.Sprint(PortRW)}):
			if primary != "" {
				return "", fmt.Sprintf("two primaries: %s and %s", primary, h)
			}
			primary = h
		case b.Role == "replica" && b.State == "up" && slices.Equal(b.Pools, []string{fmt.Sprint(PortRO)}):
			replicas = append(replicas, h)
		default:
			return "", fmt.Sprintf("%s is %s/%s in pools %v", h, b.Role, b.State, b.Pools)
		}
	}
	switch {
	case primary == "":
		return "", "no primary in pool " + fmt.Sprint(PortRW)
	case cs.Writer != primary:
		return "", fmt.Sprintf("the daemon's writer is %q, not %s", cs.Writer, primary)
	}
	if cs.Synchronous {
		if got := slices.Sorted(slices.Values(cs.SyncStandbys)); !slices.Equal(got, replicas) {
			return "", fmt.Sprintf("synchronous standbys %v, want %v", got, replicas)
		}
		if got := slices.Sorted(slices.Values(cs.Promotable)); !slices.Equal(got, replicas) {
			return "", fmt.Sprintf("promotable %v, want %v", got, replicas)
		}
	}
	return primary, ""
}

// trial runs trial i of the drill (see Drill).
func (r *Running) trial(ctx context.Context, opts DrillOptions, i int, say func(string, ...any)) (_ *DrillTrial, err error) {
	wait := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, opts.Timeout) }
	wctx, cancel := wait()
	old, err := r.waitSteady(wctx)
	cancel()
	if err != nil {
		return nil, err
	}
	oldAddr := HostAddr(old)
	t := &DrillTrial{Trial: i, Fault: opts.Fault, OldPrimary: old}

	say("trial %d/%d: %s is the primary; %d writers through VIP:%d", i, opts.Trials, old, opts.Clients, PortRW)
	w := r.StartWriters(ctx, opts.Clients, i)
	stopped := false
	var newAddr netip.Addr
	var ev ControlEvent
	defer func() {
		if stopped {
			return
		}
		// A trial cut short still reports what the writers saw.
		acks := w.Stop()
		t.Acknowledged, t.WriterFailures = len(acks), w.Errors()
		if a, ok := firstAck(acks, t.FaultAt, func(a Ack) bool { return a.Server == newAddr }); ok && newAddr.IsValid() {
			t.Outage = seconds(a.At.Sub(t.FaultAt))
		}
	}()
	begin := time.Now()
	wctx, cancel = wait()
	_, err = w.WaitAck(wctx, begin, func(a Ack) bool { return a.Server == oldAddr })
	cancel()
	if err != nil {
		return nil, fmt.Errorf("writing through VIP:%d to %s before the fault: %w (writer failures %v)", PortRW, old, err, w.Errors())
	}
	pause(ctx, opts.Load)

	t0, err := r.Inject(ctx, old, opts.Fault)
	if err != nil {
		return nil, err
	}
	t.FaultAt = t0
	say("trial %d: %s: %s", i, faultText(opts.Fault), old)
	wctx, cancel = wait()
	first, err := r.resumedOff(wctx, old, t0, w)
	cancel()
	if err != nil {
		cs, cerr := r.Control(ctx)
		why := fmt.Sprint(cerr)
		if cerr == nil {
			why = fmt.Sprintf("writer %q, no writer because %q", cs.Writer, cs.NoWriterReason)
		}
		return t, fmt.Errorf("after the fault on %s (the daemon: %s): %w", old, why, err)
	}
	newAddr = first.Server
	t.NewPrimary = hostAt(newAddr)
	ev, err = r.waitEvent(ctx, old, t0)
	if err != nil {
		return t, err
	}
	if ev.To != t.NewPrimary {
		return t, fmt.Errorf("an INSERT was acknowledged by %s after the fault, but the daemon promoted %s", first.Server, ev.To)
	}
	t.Promotion, t.PromotionLoss = seconds(ev.Took), ev.LostBytes
	say("trial %d: writes resumed on %s %.3f s after the fault", i, t.NewPrimary, first.At.Sub(t0).Seconds())
	pause(ctx, opts.Load)

	revived := time.Now()
	if err := r.Revive(ctx, old, opts.Fault); err != nil {
		return t, err
	}
	wctx, cancel = wait()
	err = r.waitFenced(wctx, old, false)
	cancel()
	if err != nil {
		return t, err
	}
	t.FencedAfter = seconds(time.Since(revived))
	say("trial %d: %s is back (%s), fenced after %.3f s; writing %v more", i, old, reviveText(opts.Fault), t.FencedAfter, opts.Load)
	pause(ctx, opts.Load)
	acks := w.Stop()
	stopped = true
	t.WriterFailures = w.Errors()

	// The outage from every acknowledgement, not the first one WaitAck saw.
	firstNew, _ := firstAck(acks, t0, func(a Ack) bool { return a.Server == newAddr })
	t.Outage = seconds(firstNew.At.Sub(t0))
	t.phases(ev, firstNew, w.Ops())
	stall, stallAt := longestGap(acks, firstNew.At)
	t.Stall, t.StallAt = seconds(stall), seconds(stallAt.Sub(t0))
	t.Acknowledged = len(acks)
	ids := make([]int64, 0, len(acks))
	for _, a := range acks {
		ids = append(ids, a.ID)
		if a.Server == oldAddr && a.At.After(t0) {
			t.AckedByOldAfterFault++
		}
	}
	missing, err := r.MissingOn(ctx, t.NewPrimary, ids)
	if err != nil {
		return t, err
	}
	t.Lost = len(missing)
	t.LostIDs = missing[:min(len(missing), 20)]
	if err := r.checkFenced(ctx, t, acks, oldAddr, firstNew.At); err != nil {
		return t, err
	}
	say("trial %d: %d acknowledged, %d lost; %d writes to fenced %s", i, t.Acknowledged, t.Lost, t.FencedWrites, old)

	if opts.SkipRejoin {
		return t, nil
	}
	say("trial %d: rejoining %s as a replica of %s (xlb pg rejoin)", i, old, t.NewPrimary)
	rejoin := time.Now()
	wctx, cancel = wait()
	err = r.rejoinReplica(wctx, old, t.NewPrimary)
	cancel()
	if err != nil {
		return t, err
	}
	t.Rejoin = seconds(time.Since(rejoin))
	say("trial %d: %s is a replica in pool %d after %.3f s", i, old, PortRO, t.Rejoin)
	return t, nil
}

// phases splits the outage of t (FaultAt to first, the first
// acknowledgement by the new primary) into Detection, Routing and
// FirstAck around the daemon's failover event ev (its decision, then
// Promotion), and counts the writers' dead waits in ops. Each phase
// begins where the one before ended; one that the clocks put before it
// counts 0.
func (t *DrillTrial) phases(ev ControlEvent, first Ack, ops []Op) {
	t0 := t.FaultAt
	if ev.Time.IsZero() || first.At.IsZero() {
		return
	}
	decided := later(ev.Time, t0)
	routed := decided.Add(max(ev.Took, 0))
	conn := later(first.Conn, routed)
	if conn.After(first.At) {
		conn = first.At
	}
	t.Detection = seconds(decided.Sub(t0))
	t.Routing = seconds(conn.Sub(routed))
	t.FirstAck = seconds(first.At.Sub(conn))
	waited := map[int]bool{}
	for _, op := range ops {
		if op.Timeout && op.Step == "insert" && op.Start.Before(first.At) && op.End.After(t0) {
			waited[op.Client] = true
			t.DeadWaitMax = max(t.DeadWaitMax, seconds(op.End.Sub(op.Start)))
		}
	}
	t.DeadWaits = len(waited)
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// waitEvent polls the daemon every 50 ms, for up to 10 s, until it
// reports a successful failover or switchover from old that began at or
// after since (less a second of slack: the daemon's clock reads the
// same host clock, but its event starts when it decides), and returns it.
func (r *Running) waitEvent(ctx context.Context, old string, since time.Time) (ControlEvent, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		cs, err := r.Control(ctx)
		if err == nil {
			for _, e := range slices.Backward(cs.Events) {
				if e.From == old && e.Error == "" && !e.Time.Before(since.Add(-time.Second)) {
					return e, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return ControlEvent{}, fmt.Errorf("waiting for the daemon to report a promotion from %s: %w (last error %v)", old, ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// checkFenced counts the writes that reached the old primary after the
// promotion, before it rejoins (pg_rewind would erase them). The
// promotion happened before promoted, the first acknowledgement by the
// new primary. Clients reach servers only through the VIP, and the old
// primary stopped taking statements at T0 (dead, or cut off with at most
// the statements already in its socket buffers, run within milliseconds);
// so anything written there after promoted came through the VIP after
// the promotion, while xlb should have fenced it off. Three signs, all
// read on the old primary itself (server clock = the host's clock):
//
//   - a row with ts after promoted (a committed INSERT, acknowledged or
//     not; an acknowledged one also shows as an Ack from its address);
//   - an Ack from its address after promoted (counted in the rows);
//   - a writer session begun after promoted: an INSERT waiting there for
//     a synchronous standby that never comes keeps its row invisible, but
//     its session shows in pg_stat_activity.
func (r *Running) checkFenced(ctx context.Context, t *DrillTrial, acks []Ack, oldAddr netip.Addr, promoted time.Time) error {
	rows, err := r.WrittenAfter(ctx, t.OldPrimary, promoted)
	if err != nil {
		return err
	}
	fenced := map[int64]bool{}
	for _, id := range rows {
		fenced[id] = true
	}
	for _, a := range acks {
		if a.Server == oldAddr && a.At.After(promoted) {
			fenced[a.ID] = true
		}
	}
	sessions, err := r.WriterSessionsAfter(ctx, t.OldPrimary, promoted)
	if err != nil {
		return err
	}
	t.FencedRows, t.FencedSessions = len(fenced), sessions
	t.FencedWrites = len(fenced) + sessions
	return nil
}

func faultText(f Fault) string {
	switch f {
	case FaultKill:
		return "SIGKILL to the postmaster of"
	case FaultStop:
		return "pg_ctl stop -m immediate on"
	default:
		return HostIf + " down in the namespace of"
	}
}

func reviveText(f Fault) string {
	if f == FaultPartition {
		return HostIf + " up"
	}
	return "restarted"
}

// WriteTable writes the report for people: one row per trial, then the
// outage's p50 and maximum and the totals.
func (r *DrillReport) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TRIAL\tFAULT\tOLD -> NEW PRIMARY\tOUTAGE\tDETECTION\tPROMOTION\tROUTING\tFIRST ACK\tDEAD WAITS\tACKNOWLEDGED\tLOST\tWRITES TO FENCED\tSTALL AFTER RESUME\tREJOIN")
	for _, t := range r.Trials {
		newp := t.NewPrimary
		if newp == "" {
			newp = "?"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s -> %s\t%.3f s\t%.3f s\t%.3f s\t%.3f s\t%.3f s\t%s\t%d\t%d\t%d\t%.3f s\t%s\n", t.Trial, t.Fault, t.OldPrimary, newp,
			t.Outage, t.Detection, t.Promotion, t.Routing, t.FirstAck, deadWaitText(t), t.Acknowledged, t.Lost, t.FencedWrites, t.Stall, rejoinText(t.Rejoin))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	mode := "asynchronous"
	if r.Synchronous {
		mode = "synchronous"
	}
	_, err := fmt.Fprintf(w, "outage over %d trials (%s, %s mode, %d writers): p50 %.3f s, max %.3f s; lost %d; writes to fenced %d\n",
		len(r.Trials), r.Fault, mode, r.Clients, r.OutageP50, r.OutageMax, r.Lost, r.FencedWrites)
	if err != nil {
		return err
	}
	for _, t := range r.Trials {
		if len(t.LostIDs) > 0 {
			fmt.Fprintf(w, "trial %d: lost ids %v\n", t.Trial, t.LostIDs)
		}
		if len(t.WriterFailures) > 0 {
			keys := slices.Sorted(maps.Keys(t.WriterFailures))
			parts := make([]string, 0, len(keys))
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s ×%d", k, t.WriterFailures[k]))
			}
			fmt.Fprintf(w, "trial %d: writer failures: %s\n", t.Trial, strings.Join(parts, ", "))
		}
	}
	return nil
}

func deadWaitText(t DrillTrial) string {
	if t.DeadWaits == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%.1f s)", t.DeadWaits, t.DeadWaitMax)
}

func rejoinText(s Seconds) string {
	if s == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f s", s)
}
