package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"time"
)

// ChaosOptions says how Chaos exercises a running lab with two LB hosts.
type ChaosOptions struct {
	// Prefix names the lab; default Prefix.
	Prefix string
	// Cycles is how many faults to inject, one after another; default 10.
	Cycles int
	// Seed drives every random choice (fault order, targets, delays); 0
	// picks one from the clock. The report says which.
	Seed int64
	// Faults are the kinds to draw from; default ChaosFaults.
	Faults []ChaosFault
	// Clients is how many clients of each kind (naive writers, careful
	// writers, naive readers, careful readers) run the whole time;
	// default 2.
	Clients int
	// Timeout bounds each wait of a cycle (writes resuming, a steady
	// cluster, a rejoin); default 60 s.
	Timeout time.Duration
	// Out receives one progress line per step; nil discards them.
	Out io.Writer
}

func (o *ChaosOptions) setDefaults() {
	if o.Prefix == "" {
		o.Prefix = Prefix
	}
	if o.Cycles == 0 {
		o.Cycles = 10
	}
	if o.Seed == 0 {
		o.Seed = time.Now().UnixNano() % 1_000_000_000
	}
	if len(o.Faults) == 0 {
		o.Faults = ChaosFaults
	}
	if o.Clients == 0 {
		o.Clients = 2
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

func (o *ChaosOptions) validate() error {
	for _, f := range o.Faults {
		if _, err := ParseChaosFault(string(f)); err != nil {
			return fmt.Errorf("chaos options: %w", err)
		}
	}
	switch {
	case o.Cycles < 1 || o.Cycles > 10000:
		return fmt.Errorf("chaos options: %d cycles: want 1 to 10000", o.Cycles)
	case o.Clients < 1 || o.Clients > 50:
		return fmt.Errorf("chaos options: %d clients of each kind: want 1 to 50", o.Clients)
	case o.Timeout < 0:
		return errors.New("chaos options: negative timeout")
	}
	return nil
}

// ChaosReport is what Chaos measured.
type ChaosReport struct {
	Prefix      string `json:"prefix"`
	Seed        int64  `json:"seed"`
	Synchronous bool   `json:"synchronous"`
	// Clients is how many clients of each kind ran.
	Clients int `json:"clients_per_kind"`
	// Acknowledged and Reads count the INSERTs and reads answered.
	Acknowledged int `json:"acknowledged"`
	Reads        int `json:"reads"`
	// FinalPrimary is the primary at the end, where every acknowledged
	// INSERT must be.
	FinalPrimary string            `json:"final_primary"`
	Faults       []ChaosFaultStats `json:"faults"`
	Cycles       []ChaosCycle      `json:"cycles"`
	// The totals of the cycles' counts.
	Lost        int `json:"lost"`
	Hung        int `json:"hung"`
	SplitWrites int `json:"split_writes"`
	StaleReads  int `json:"stale_reads"`
	Timeouts    int `json:"timeouts"`
	// LostIDs lists up to 20 acknowledged ids the final primary lacks.
	LostIDs []int64 `json:"lost_ids,omitempty"`
}

// ChaosFaultStats sums up the cycles of one fault kind.
type ChaosFaultStats struct {
	Fault  ChaosFault `json:"fault"`
	Cycles int        `json:"cycles"`
	// ResumeP50, ResumeMax, OutageP50 and OutageMax are over the cycles
	// that healed.
	ResumeP50     Seconds `json:"resume_p50_s"`
	ResumeMax     Seconds `json:"resume_max_s"`
	OutageP50     Seconds `json:"outage_p50_s"`
	OutageMax     Seconds `json:"outage_max_s"`
	ReadOutageMax Seconds `json:"read_outage_max_s"`
	Lost          int     `json:"lost"`
	Hung          int     `json:"hung"`
	SplitWrites   int     `json:"split_writes"`
	StaleReads    int     `json:"stale_reads"`
	Timeouts      int     `json:"timeouts"`
}

// ChaosCycle is one fault of a chaos run and what it did.
type ChaosCycle struct {
	Cycle int        `json:"cycle"`
	Fault ChaosFault `json:"fault"`
	// Target is the host the fault hit (a PostgreSQL or LB host; both LB
	// hosts for a VRRP cut).
	Target        string `json:"target"`
	PrimaryBefore string `json:"primary_before"`
	PrimaryAfter  string `json:"primary_after"`
	// Start is when the cycle began (steady cluster), FaultAt when the
	// fault hit, End when, healed, a write sent after the cluster was
	// steady again was acknowledged.
	Start   time.Time `json:"start"`
	FaultAt time.Time `json:"fault_at"`
	End     time.Time `json:"end"`
	// Healed reports whether the cluster was steady again; HealedAfter is
	// from FaultAt.
	Healed      bool    `json:"healed"`
	HealedAfter Seconds `json:"healed_after_s"`
	// Resume runs from FaultAt to the first acknowledged INSERT sent after
	// it (by another server than the old primary when the fault took that
	// away): the drill's outage. Outage is the longest time from FaultAt
	// to End in which no INSERT was acknowledged (any client), so it also
	// catches writes stopping again later (a takeover, a rejoin);
	// ReadOutage is the same for reads.
	Resume     Seconds `json:"resume_s"`
	Outage     Seconds `json:"outage_s"`
	OutageAt   Seconds `json:"outage_from_s"` // when Outage began, from FaultAt
	ReadOutage Seconds `json:"read_outage_s"`
	// Safety counts (see ChaosReport.OK), and the careful clients'
	// statement or dial timeouts (waits on a dead connection).
	Lost        int `json:"lost"`
	Hung        int `json:"hung"`
	SplitWrites int `json:"split_writes"`
	StaleReads  int `json:"stale_reads"`
	Timeouts    int `json:"timeouts"`
	// Note says what the cycle did beyond the fault (a switchover that was
	// cancelled in time, …); Findings detail its safety counts.
	Note     string   `json:"note,omitempty"`
	Findings []string `json:"findings,omitempty"`
}

// OK reports whether no safety count is above 0: no client hung, no write
// acknowledged by a node that was not the newest timeline's primary, no
// read answered by a node out of the read pool, and in synchronous mode
// no acknowledged commit lost (asynchronous mode may lose some by design;
// they are counted all the same).
func (r *ChaosReport) OK() bool {
	return r.Hung == 0 && r.SplitWrites == 0 && r.StaleReads == 0 && (r.Lost == 0 || !r.Synchronous)
}

// Chaos runs opts.Cycles random faults on the running lab with
// opts.Prefix, which must have two LB hosts (xlb-lab up --lbs 2), while
// clients of four kinds run the whole time through the VIP: naive writers
// (no timeout, no keepalive: a session whose flow is gone and never reset
// blocks forever), careful writers (dial and statement timeouts), and the
// same two kinds of readers through VIP:PortRO. Each writer records every
// acknowledged INSERT with the server's address and timeline; each reader
// which server answered when; a monitor samples both daemons' pools.
//
// Each cycle waits for a steady cluster (lb1 VRRP master, lb2 backup; one
// primary, every other node an up replica), draws a fault (every kind
// once per round, in a random order), injects it, waits for writes to
// resume, undoes it (restart, link up, rejoin of a fenced node) and waits
// for a steady cluster again, all waits bounded by opts.Timeout. At the
// end the clients stop, the final primary is asked for every acknowledged
// id, and the checker (see chaosRun.check) counts per cycle and per
// fault kind: outage, lost commits, hung clients, split writes and stale
// reads.
//
// A safety violation is a finding, not an error (ChaosReport.OK). Chaos
// returns the cycles done so far and an error when a step fails or a wait
// times out; the report is checked all the same.
func Chaos(ctx context.Context, opts ChaosOptions) (*ChaosReport, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	r, err := Open(opts.Prefix)
	if err != nil {
		return nil, err
	}
	st, err := readState(opts.Prefix)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(st.Daemons, []string{"lb1", "lb2"}) {
		return nil, fmt.Errorf("chaos on lab %s: want xlb on lb1 and lb2 (xlb-lab up --lbs 2), the lab runs it on %v", opts.Prefix, st.Daemons)
	}
	ch := &chaos{r: r, opts: opts, rand: newChaosRand(opts.Seed),
		rep: &ChaosReport{Prefix: opts.Prefix, Seed: opts.Seed, Clients: opts.Clients}}
	ch.say("lab %s: seed %d, %d cycles, %d clients of each kind", opts.Prefix, opts.Seed, opts.Cycles, opts.Clients)
	if _, err := ch.steady(ctx); err != nil {
		return nil, err
	}
	cs, err := r.Control(ctx)
	if err != nil {
		return nil, err
	}
	ch.rep.Synchronous = cs.Synchronous
	if err := r.CreateDrillTable(ctx); err != nil {
		return nil, err
	}
	err = ch.run(ctx)
	return ch.rep, err
}

// newChaosRand returns the random source of a run with seed.
func newChaosRand(seed int64) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15))
}

// chaos is one run of Chaos.
type chaos struct {
	r    *Running
	opts ChaosOptions
	rand *rand.Rand
	rep  *ChaosReport

	writers, readers []*Clients
	mon              *monitor
	deck             []ChaosFault
}

func (ch *chaos) say(format string, args ...any) {
	fmt.Fprintf(ch.opts.Out, "chaos: "+format+"\n", args...)
}

// wait returns ctx bounded by opts.Timeout.
func (ch *chaos) wait(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, ch.opts.Timeout)
}

// Client tags: the trial column and id prefix of each writer kind.
const (
	tagNaive   = 1
	tagCareful = 2
)

// Careful clients' bounds: a dead flow costs them at most this.
const (
	carefulConnectTimeout   = 2 * time.Second
	carefulStatementTimeout = 2 * time.Second
	// clientPace spaces a client's statements, to spare the machine's CPU.
	clientPace = 5 * time.Millisecond
)

// run starts the clients and the monitor, runs the cycles, stops
// everything and checks what was recorded.
func (ch *chaos) run(ctx context.Context) error {
	n := ch.opts.Clients
	for _, naive := range []bool{true, false} {
		tag := tagCareful
		if naive {
			tag = tagNaive
		}
		o := ClientOptions{Clients: n, Tag: tag, Naive: naive, Pace: clientPace,
			ConnectTimeout: carefulConnectTimeout, StatementTimeout: carefulStatementTimeout}
		o.Port = PortRW
		ch.writers = append(ch.writers, ch.r.StartClients(ctx, o))
		o.Port = PortRO
		ch.readers = append(ch.readers, ch.r.StartClients(ctx, o))
	}
	ch.mon = startMonitor(ctx, ch.opts.Prefix, []string{"lb1", "lb2"})

	var runErr error
	for i := 1; i <= ch.opts.Cycles && runErr == nil; i++ {
		c, err := ch.cycle(ctx, i)
		ch.rep.Cycles = append(ch.rep.Cycles, c)
		if err != nil {
			runErr = fmt.Errorf("chaos cycle %d (%s): %w", i, c.Fault, err)
		}
	}
	return errors.Join(runErr, ch.finish(ctx))
}

// finish stops the clients and the monitor, looks for the acknowledged
// ids on the final primary and checks the run.
func (ch *chaos) finish(ctx context.Context) error {
	d := &chaosRun{cycles: ch.rep.Cycles, lost: map[int64]bool{}}
	var ops []Op
	for _, w := range ch.writers {
		d.writes = append(d.writes, w.Stop()...)
		ops = append(ops, w.Ops()...)
	}
	for _, w := range ch.readers {
		d.reads = append(d.reads, w.Stop()...)
		ops = append(ops, w.Ops()...)
	}
	d.ops = ops
	d.samples = ch.mon.stop()
	ch.rep.Acknowledged, ch.rep.Reads = len(d.writes), len(d.reads)

	var err error
	wctx, cancel := ch.wait(ctx)
	ch.rep.FinalPrimary, err = ch.r.waitSteady(wctx)
	cancel()
	if err == nil {
		ids := make([]int64, 0, len(d.writes))
		for _, a := range d.writes {
			ids = append(ids, a.ID)
		}
		var missing []int64
		if missing, err = ch.r.MissingOn(ctx, ch.rep.FinalPrimary, ids); err == nil {
			for _, id := range missing {
				d.lost[id] = true
			}
			ch.rep.LostIDs = missing[:min(len(missing), 20)]
		}
	}
	d.check()
	ch.rep.summarize()
	if err != nil {
		return fmt.Errorf("checking the acknowledged commits: %w", err)
	}
	ch.say("%d INSERTs acknowledged, %d reads; lost %d, hung %d, split writes %d, stale reads %d",
		ch.rep.Acknowledged, ch.rep.Reads, ch.rep.Lost, ch.rep.Hung, ch.rep.SplitWrites, ch.rep.StaleReads)
	return nil
}

// draw returns the next fault: the kinds of opts.Faults are dealt in
// rounds, each round a random order of all of them, so a short run
// covers every kind.
func (ch *chaos) draw() ChaosFault {
	if len(ch.deck) == 0 {
		ch.deck = slices.Clone(ch.opts.Faults)
		ch.rand.Shuffle(len(ch.deck), func(i, j int) { ch.deck[i], ch.deck[j] = ch.deck[j], ch.deck[i] })
	}
	f := ch.deck[0]
	ch.deck = ch.deck[1:]
	return f
}

// between returns a random duration in [lo, hi).
func (ch *chaos) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(ch.rand.Int64N(int64(hi-lo)))
}

// steady waits until lb1 is VRRP master and lb2 backup and lb1's daemon
// shows a steady cluster, and returns its primary.
func (ch *chaos) steady(ctx context.Context) (string, error) {
	wctx, cancel := ch.wait(ctx)
	defer cancel()
	if _, err := WaitVRRP(wctx, ch.opts.Prefix, "lb1"); err != nil {
		return "", err
	}
	return ch.r.waitSteady(wctx)
}

// cycle runs cycle i: a steady cluster, a fault, writes resuming, the
// fault undone, a steady cluster and a write acknowledged after it.
func (ch *chaos) cycle(ctx context.Context, i int) (ChaosCycle, error) {
	c := ChaosCycle{Cycle: i, Fault: ch.draw()}
	primary, err := ch.steady(ctx)
	if err != nil {
		return c, err
	}
	c.Start, c.PrimaryBefore = time.Now(), primary
	// Some load before the fault, a random amount of it.
	pause(ctx, ch.between(300*time.Millisecond, 1200*time.Millisecond))
	ch.say("cycle %d/%d: %s (primary %s)", i, ch.opts.Cycles, c.Fault, primary)
	if err := ch.inject(ctx, &c); err != nil {
		return c, err
	}
	if err := ch.heal(ctx, &c); err != nil {
		return c, err
	}
	ch.say("cycle %d: healed %.1f s after the fault; primary %s", i, c.HealedAfter, c.PrimaryAfter)
	return c, nil
}

// heal rejoins every fenced node to the primary and waits for a steady
// cluster, then for an INSERT sent after it to be acknowledged.
func (ch *chaos) heal(ctx context.Context, c *ChaosCycle) error {
	if err := ch.rejoinFenced(ctx); err != nil {
		return err
	}
	p, err := ch.steady(ctx)
	if err != nil {
		return err
	}
	c.PrimaryAfter, c.Healed = p, true
	c.HealedAfter = seconds(time.Since(c.FaultAt))
	wctx, cancel := ch.wait(ctx)
	defer cancel()
	a, err := ch.anyAck(wctx, time.Now(), func(Ack) bool { return true })
	if err != nil {
		return fmt.Errorf("writing after the cluster healed: %w", err)
	}
	c.End = a.At
	return nil
}

// anyAck waits for an INSERT of any writer sent after after and
// satisfying ok to be acknowledged, and returns it.
func (ch *chaos) anyAck(ctx context.Context, after time.Time, ok func(Ack) bool) (Ack, error) {
	return waitAcks(ctx, after, func(a Ack) bool { return a.Sent.After(after) && ok(a) }, ch.writers...)
}
