package control

import "cmp"

// DurableFrom returns what the controller must not forget as PostgreSQL's
// own state shows it, for a daemon whose state file was lost or torn: the
// system identifier most answering nodes report (on a tie the one whose
// nodes show the newest timeline, then the smaller), and the newest
// timeline among the nodes of that identifier — a replica that follows a
// promoted node reports the new timeline too, so an old primary that still
// answers on its old timeline is fenced as before. Observations with Err
// set count for nothing; nodes that report no identifier count only when
// none does. When none answered it returns the zero Durable. answered is
// how many observations counted.
func DurableFrom(obs []Observation) (d Durable, answered int) {
	count := map[uint64]int{}
	newest := map[uint64]uint32{}
	for _, o := range obs {
		if o.Err != nil {
			continue
		}
		answered++
		count[o.SystemID]++
		newest[o.SystemID] = max(newest[o.SystemID], o.Timeline)
	}
	var best uint64
	found := false
	for id, n := range count {
		if id == 0 {
			continue
		}
		if !found {
			best, found = id, true
			continue
		}
		if c := cmp.Or(cmp.Compare(n, count[best]), cmp.Compare(newest[id], newest[best]), cmp.Compare(best, id)); c > 0 {
			best = id
		}
	}
	d.SystemID = best
	d.Timeline = newest[best]
	return d, answered
}
