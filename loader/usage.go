package loader

import (
	"fmt"
	"net/netip"
)

// Usage is how full the datapath's tables are, read in one pass over
// conntrack.
type Usage struct {
	// Entries is how many forward conntrack entries are live (one a flow;
	// the reverse direction is the flow's SNAT slot) and Capacity how many
	// the flow map holds.
	Entries, Capacity int
	// Flows counts flows, Active those not closed.
	Flows, Active int
	// ActiveByService and ActiveByBackend split Active.
	ActiveByService map[Service]int
	ActiveByBackend map[netip.AddrPort]int
	// SNATInUse is how many SNAT ports flows hold (closed ones until they
	// are taken back); SNATPorts is the size of the configured range (per
	// backend: each backend has the whole range).
	SNATInUse, SNATPorts int
}

// Usage walks conntrack once and counts its entries.
func (d *Datapath) Usage() (Usage, error) {
	u := Usage{
		Capacity:        int(d.objs.FlowMap.MaxEntries()),
		ActiveByService: map[Service]int{},
		ActiveByBackend: map[netip.AddrPort]int{},
		SNATPorts:       int(d.cfg.SNATPorts.Max) - int(d.cfg.SNATPorts.Min) + 1,
	}
	ents, err := d.entries()
	if err != nil {
		return u, fmt.Errorf("walking flows: %w", err)
	}
	byID := d.backendsByID()
	for _, e := range ents {
		u.Entries++
		u.Flows++
		u.SNATInUse++
		if ctClosed(e.snat.State) {
			continue
		}
		u.Active++
		u.ActiveByService[Service(e.flow.Svc)]++
		u.ActiveByBackend[byID[e.flow.Backend]]++
	}
	return u, nil
}
