package lab

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The failover drill (drill.go) and the chaos run (chaos*.go) are one
// engine with two schedules. Both act on a Running lab; both inject the
// faults of drill_faults.go (Inject, Revive, Rejoin) and their own on top
// (chaos_faults.go); both drive Clients through the VIP
// (drill_writers.go); and both wait and check with what is below: writes
// resuming off a faulted primary, the old primary fenced, a fenced node
// rejoined as a replica, the longest silence of a run of answers.

// parseKind returns the kind in kinds named s, or an error naming what
// and listing the names.
func parseKind[K ~string](what, s string, kinds []K) (K, error) {
	if i := slices.Index(kinds, K(s)); i >= 0 {
		return kinds[i], nil
	}
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	return "", fmt.Errorf("%s %q: want one of %s", what, s, strings.Join(names, ", "))
}

// waitAcks polls the acknowledgements of groups every 5 ms until one
// arrived after after and satisfies ok (nil: any), and returns the
// earliest such one of the poll that found it. It returns an error naming
// the clients' failures when ctx ends first.
func waitAcks(ctx context.Context, after time.Time, ok func(Ack) bool, groups ...*Clients) (Ack, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	from := make([]int, len(groups))
	for {
		var best Ack
		found := false
		for i, g := range groups {
			if a, f := firstAck(g.since(&from[i]), after, ok); f && (!found || a.At.Before(best.At)) {
				best, found = a, true
			}
		}
		if found {
			return best, nil
		}
		select {
		case <-ctx.Done():
			seen := 0
			failures := make([]map[string]int, len(groups))
			for i, g := range groups {
				seen += from[i]
				failures[i] = g.Errors()
			}
			return Ack{}, fmt.Errorf("waiting for an acknowledged INSERT after %s: %w (%d acknowledged in all; client failures %v)",
				clock(after), ctx.Err(), seen, failures)
		case <-tick.C:
		}
	}
}

// resumedOff waits for an INSERT sent after t0 to be acknowledged by a
// server other than old's and returns it.
func (r *Running) resumedOff(ctx context.Context, old string, t0 time.Time, groups ...*Clients) (Ack, error) {
	oldAddr := HostAddr(old)
	a, err := waitAcks(ctx, t0, func(a Ack) bool { return a.Sent.After(t0) && a.Server != oldAddr }, groups...)
	if err != nil {
		return Ack{}, fmt.Errorf("waiting for writes to resume off %s: %w\n%s", old, err, r.daemonLogTail(20))
	}
	return a, nil
}

// waitFenced waits until the daemon shows host, an old primary that came
// back, fenced and in no pool; with orReplica an up replica (already
// rejoined, or a switchover's old primary once it follows) will do too.
func (r *Running) waitFenced(ctx context.Context, host string, orReplica bool) error {
	_, err := r.WaitBackends(ctx, host+" fenced", func(bs []Backend) bool {
		b, _ := Find(bs, host)
		return (b.State == "fenced" && len(b.Pools) == 0) || (orReplica && b.Role == "replica" && b.State == "up")
	})
	return err
}

// rejoinReplica rejoins the fenced host as a replica of primary (xlb pg
// rejoin) and waits, within ctx, until the daemon shows it an up replica
// in pool PortRO only.
func (r *Running) rejoinReplica(ctx context.Context, host, primary string) error {
	if err := r.Rejoin(ctx, host, primary); err != nil {
		return err
	}
	_, err := r.WaitBackends(ctx, host+" an up replica in pool "+fmt.Sprint(PortRO), func(bs []Backend) bool {
		b, _ := Find(bs, host)
		return b.Role == "replica" && b.State == "up" && slices.Equal(b.Pools, []string{fmt.Sprint(PortRO)})
	})
	return err
}

// longestSilence returns the longest time in [from, to] without an
// answer in acks (from the fault to the first answer, between answers, or
// from the last answer to to) and when it began. It returns 0 when from
// is zero or to not after it.
func longestSilence(acks []Ack, from, to time.Time) (time.Duration, time.Time) {
	if from.IsZero() || !to.After(from) {
		return 0, from
	}
	ats := []time.Time{from}
	for _, a := range acks {
		if a.At.After(from) && a.At.Before(to) {
			ats = append(ats, a.At)
		}
	}
	slices.SortFunc(ats, time.Time.Compare)
	ats = append(ats, to)
	var gap time.Duration
	began := from
	for i := 1; i < len(ats); i++ {
		if d := ats[i].Sub(ats[i-1]); d > gap {
			gap, began = d, ats[i-1]
		}
	}
	return gap, began
}

// longestGap returns the longest time between consecutive
// acknowledgements (of any writer) from after on, and when it began; 0
// with fewer than two. After writes resume it should stay near the
// writers' pace: a long gap means the writes stopped again. It is
// longestSilence from the first of those acknowledgements to the last.
func longestGap(acks []Ack, after time.Time) (time.Duration, time.Time) {
	var first, last time.Time
	for _, a := range acks {
		if a.At.Before(after) {
			continue
		}
		if first.IsZero() || a.At.Before(first) {
			first = a.At
		}
		if a.At.After(last) {
			last = a.At
		}
	}
	return longestSilence(acks, first, last)
}
