package lab

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// HangAfter is how long a client may stay blocked in a statement after
// its server left the pool (or, when it did not, after the cycle's fault)
// before the checker counts it as hung.
const HangAfter = 5 * time.Second

// staleSlack widens the window in which a read's server must show in a
// read pool: the monitor samples every monitorInterval, and a node that
// left the pool may still answer for the 100 ms its flows take to be cut.
const staleSlack = monitorInterval + 100*time.Millisecond

// chaosRun is what a chaos run recorded, for the checker: the cycles in
// order (Start, FaultAt and End set), every answered INSERT (writes) and
// read, the clients' failed, slow and abandoned operations, the
// daemons' views, and the acknowledged ids the final primary lacks.
type chaosRun struct {
	cycles  []ChaosCycle
	writes  []Ack
	reads   []Ack
	ops     []Op
	samples []poolSample
	lost    map[int64]bool
}

// check fills each cycle's figures from what the run recorded. Every
// record goes to the cycle whose window ([Start, next Start)) holds its
// time; records before the first cycle go to the first.
func (d *chaosRun) check() {
	for i := range d.cycles {
		c := &d.cycles[i]
		gap, at := longestSilence(d.writes, c.FaultAt, c.End)
		c.Outage, c.OutageAt = seconds(gap), seconds(at.Sub(c.FaultAt))
		c.Resume = 0
		if a, ok := firstAck(d.writes, c.FaultAt, func(a Ack) bool { return a.Sent.After(c.FaultAt) && a.Server != c.resumeNot() }); ok && !c.FaultAt.IsZero() {
			c.Resume = seconds(a.At.Sub(c.FaultAt))
		}
		gap, _ = longestSilence(d.reads, c.FaultAt, c.End)
		c.ReadOutage = seconds(gap)
		c.Lost, c.Hung, c.SplitWrites, c.StaleReads, c.Timeouts = 0, 0, 0, 0, 0
		c.Findings = nil
	}
	if len(d.cycles) == 0 {
		return
	}
	slices.SortFunc(d.samples, func(a, b poolSample) int { return a.At.Compare(b.At) })
	tl := d.timelines()
	for _, a := range d.writes {
		c := d.cycleAt(a.At)
		if d.lost[a.ID] {
			c.Lost++
			c.finding("lost", "acknowledged INSERT %d (%v at %s) missing on the final primary", a.ID, a.Server, clock(a.At))
		}
		if why := tl.splitWrite(a); why != "" {
			c.SplitWrites++
			c.finding("split", "INSERT %d acknowledged by %v on timeline %d at %s: %s", a.ID, a.Server, a.TLI, clock(a.At), why)
		}
	}
	for _, r := range d.reads {
		if d.staleRead(r) {
			c := d.cycleAt(r.At)
			c.StaleReads++
			c.finding("stale", "read answered by %v at %s while it was in no read pool", r.Server, clock(r.At))
		}
	}
	for _, op := range d.ops {
		if op.Timeout {
			d.cycleAt(op.Start).Timeouts++
		}
		if op.Step == "connect" {
			continue
		}
		from := d.blockedFrom(op)
		if op.End.Sub(from) > HangAfter {
			c := d.cycleAt(from)
			c.Hung++
			kind := "careful"
			if op.Naive {
				kind = "naive"
			}
			c.finding("hung", "%s client %d blocked in %s on %v from %s to %s (%.1f s after its server left or the fault)",
				kind, op.Client, op.Step, op.Server, clock(op.Start), clock(op.End), op.End.Sub(from).Seconds())
		}
	}
}

// cycleAt returns the cycle whose window holds t.
func (d *chaosRun) cycleAt(t time.Time) *ChaosCycle {
	i := 0
	for j := range d.cycles {
		if !d.cycles[j].Start.After(t) {
			i = j
		}
	}
	return &d.cycles[i]
}

// timelines indexes the timelines a run saw: the first node to
// acknowledge on each owns it, and a timeline exists from the first of:
// an acknowledgement on it, a daemon reporting it (or a newer one) as the
// newest.
type timelines struct {
	owner map[uint32]Ack
	seen  map[uint32]time.Time
}

func (d *chaosRun) timelines() timelines {
	tl := timelines{owner: map[uint32]Ack{}, seen: map[uint32]time.Time{}}
	see := func(t uint32, at time.Time) {
		if s, ok := tl.seen[t]; !ok || at.Before(s) {
			tl.seen[t] = at
		}
	}
	for _, a := range d.writes {
		if o, ok := tl.owner[a.TLI]; !ok || a.At.Before(o.At) {
			tl.owner[a.TLI] = a
		}
		see(a.TLI, a.At)
	}
	for _, s := range d.samples {
		see(s.Timeline, s.At)
	}
	return tl
}

// splitWrite says why the write a was acknowledged by a node that was not
// the newest timeline's primary when a was sent, or "" when it was.
func (tl timelines) splitWrite(a Ack) string {
	if o := tl.owner[a.TLI]; o.Server != a.Server {
		return fmt.Sprintf("%v already acknowledged on that timeline at %s", o.Server, clock(o.At))
	}
	var newer time.Time
	for t, at := range tl.seen {
		if t > a.TLI && (newer.IsZero() || at.Before(newer)) {
			newer = at
		}
	}
	if !newer.IsZero() && a.Sent.After(newer) {
		return fmt.Sprintf("a newer timeline existed from %s", clock(newer))
	}
	return ""
}

// samplesIn returns the samples (sorted by time) taken in [from, to].
func (d *chaosRun) samplesIn(from, to time.Time) []poolSample {
	i, _ := slices.BinarySearchFunc(d.samples, from, func(s poolSample, t time.Time) int { return s.At.Compare(t) })
	j := i
	for j < len(d.samples) && !d.samples[j].At.After(to) {
		j++
	}
	return d.samples[i:j]
}

// staleRead reports whether the read r was answered by a node that no
// VIP owner had in its read pool around r (r's time widened by
// staleSlack). With no sample of a VIP owner then, it cannot tell and
// reports false.
func (d *chaosRun) staleRead(r Ack) bool {
	seen := false
	for _, s := range d.samplesIn(r.Sent.Add(-staleSlack), r.At.Add(staleSlack)) {
		if !s.HoldsVIP {
			continue
		}
		if slices.Contains(s.RO, r.Server) {
			return false
		}
		seen = true
	}
	return seen
}

// blockedFrom returns when op's wait became a hang candidate: the first
// time a VIP owner showed op's server out of the pool op used, after op
// began; without one, the later of op's start and its cycle's fault.
func (d *chaosRun) blockedFrom(op Op) time.Time {
	from := op.Start
	if t := d.cycleAt(op.Start).FaultAt; t.After(from) && t.Before(op.End) {
		from = t
	}
	if !op.Server.IsValid() {
		return from
	}
	for _, s := range d.samplesIn(op.Start, op.End) {
		if !s.HoldsVIP {
			continue
		}
		pool := s.RW
		if op.Step == "read" {
			pool = s.RO
		}
		if !slices.Contains(pool, op.Server) {
			return s.At
		}
	}
	return from
}

// maxFindings bounds the findings a cycle keeps of each kind.
const maxFindings = 3

// finding keeps a finding of kind (lost, split, stale, hung) unless the
// cycle has maxFindings of that kind.
func (c *ChaosCycle) finding(kind, format string, args ...any) {
	n := 0
	for _, f := range c.Findings {
		if strings.HasPrefix(f, kind+": ") {
			n++
		}
	}
	if n < maxFindings {
		c.Findings = append(c.Findings, kind+": "+fmt.Sprintf(format, args...))
	}
}

// resumeNot returns the server whose acknowledgements do not count as
// writes resuming: the old primary of a fault that takes it away.
func (c *ChaosCycle) resumeNot() netip.Addr {
	switch c.Fault {
	case ChaosKill, ChaosStop, ChaosPartition, ChaosVRRPCutKill:
		return HostAddr(c.PrimaryBefore)
	}
	return netip.Addr{}
}

func clock(t time.Time) string { return t.Format("15:04:05.000") }

// summarize fills the report's per-fault figures and totals from its
// cycles.
func (r *ChaosReport) summarize() {
	r.Faults = nil
	r.Lost, r.Hung, r.SplitWrites, r.StaleReads, r.Timeouts = 0, 0, 0, 0, 0
	byFault := map[ChaosFault]*ChaosFaultStats{}
	outages := map[ChaosFault][]Seconds{}
	resumes := map[ChaosFault][]Seconds{}
	for _, c := range r.Cycles {
		s := byFault[c.Fault]
		if s == nil {
			s = &ChaosFaultStats{Fault: c.Fault}
			byFault[c.Fault] = s
		}
		s.Cycles++
		if c.Healed {
			outages[c.Fault] = append(outages[c.Fault], c.Outage)
			resumes[c.Fault] = append(resumes[c.Fault], c.Resume)
		}
		s.ReadOutageMax = max(s.ReadOutageMax, c.ReadOutage)
		s.Lost += c.Lost
		s.Hung += c.Hung
		s.SplitWrites += c.SplitWrites
		s.StaleReads += c.StaleReads
		s.Timeouts += c.Timeouts
		r.Lost += c.Lost
		r.Hung += c.Hung
		r.SplitWrites += c.SplitWrites
		r.StaleReads += c.StaleReads
		r.Timeouts += c.Timeouts
	}
	for _, f := range ChaosFaults {
		if s := byFault[f]; s != nil {
			s.OutageP50, s.OutageMax = percentile(outages[f], 50), percentile(outages[f], 100)
			s.ResumeP50, s.ResumeMax = percentile(resumes[f], 50), percentile(resumes[f], 100)
			r.Faults = append(r.Faults, *s)
		}
	}
}

// WriteTable writes the report for people: one row per fault kind, the
// totals, then one row per cycle and the findings.
func (r *ChaosReport) WriteTable(w io.Writer) error {
	mode := "asynchronous"
	if r.Synchronous {
		mode = "synchronous"
	}
	fmt.Fprintf(w, "chaos on lab %s: %d cycles, seed %d, %s mode; %d INSERTs acknowledged, %d reads answered; final primary %s\n",
		r.Prefix, len(r.Cycles), r.Seed, mode, r.Acknowledged, r.Reads, orDash(r.FinalPrimary))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FAULT\tCYCLES\tRESUME P50\tRESUME MAX\tOUTAGE P50\tOUTAGE MAX\tREAD OUTAGE MAX\tLOST\tHUNG\tSPLIT WRITES\tSTALE READS\tTIMEOUTS")
	for _, s := range r.Faults {
		fmt.Fprintf(tw, "%s\t%d\t%.3f s\t%.3f s\t%.3f s\t%.3f s\t%.3f s\t%d\t%d\t%d\t%d\t%d\n", s.Fault, s.Cycles, s.ResumeP50, s.ResumeMax,
			s.OutageP50, s.OutageMax, s.ReadOutageMax, s.Lost, s.Hung, s.SplitWrites, s.StaleReads, s.Timeouts)
	}
	fmt.Fprintf(tw, "total\t%d\t\t\t\t\t\t%d\t%d\t%d\t%d\t%d\n", len(r.Cycles), r.Lost, r.Hung, r.SplitWrites, r.StaleReads, r.Timeouts)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CYCLE\tFAULT\tTARGET\tPRIMARY BEFORE -> AFTER\tRESUME\tOUTAGE (FROM)\tREAD OUTAGE\tLOST\tHUNG\tSPLIT\tSTALE\tTIMEOUTS\tHEALED")
	for _, c := range r.Cycles {
		healed := fmt.Sprintf("%.1f s", c.HealedAfter)
		if !c.Healed {
			healed = "no"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s -> %s\t%.3f s\t%.3f s (+%.1f s)\t%.3f s\t%d\t%d\t%d\t%d\t%d\t%s\n", c.Cycle, c.Fault, orDash(c.Target),
			orDash(c.PrimaryBefore), orDash(c.PrimaryAfter), c.Resume, c.Outage, c.OutageAt, c.ReadOutage, c.Lost, c.Hung, c.SplitWrites, c.StaleReads, c.Timeouts, healed)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range r.Cycles {
		if c.Note != "" {
			fmt.Fprintf(w, "cycle %d: %s\n", c.Cycle, c.Note)
		}
		for _, f := range c.Findings {
			fmt.Fprintf(w, "cycle %d: %s\n", c.Cycle, f)
		}
	}
	safety := "safety: ok"
	if !r.OK() {
		safety = "safety: VIOLATED"
	}
	_, err := fmt.Fprintf(w, "%s (lost %d%s, hung %d, split writes %d, stale reads %d)\n", safety, r.Lost, lostNote(r.Synchronous),
		r.Hung, r.SplitWrites, r.StaleReads)
	return err
}

func lostNote(sync bool) string {
	if sync {
		return ""
	}
	return ", allowed in asynchronous mode"
}
