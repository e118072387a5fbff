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

// Usage walks conntrack once, in place (FlowCounts), and counts its
// entries. It allocates nothing in proportion to the table.
func (d *Datapath) Usage() (Usage, error) {
	u := Usage{
		Capacity:        int(d.objs.FlowMap.MaxEntries()),
		ActiveByService: map[Service]int{},
		ActiveByBackend: map[netip.AddrPort]int{},
		SNATPorts:       int(d.cfg.SNATPorts.Max) - int(d.cfg.SNATPorts.Min) + 1,
	}
	c, err := d.FlowCounts()
	if err != nil {
		return u, fmt.Errorf("walking flows: %w", err)
	}
	u.Entries, u.Flows, u.SNATInUse, u.Active = c.All.Flows, c.All.Flows, c.All.Flows, c.All.Active
	for svc, st := range c.Services {
		if st.Active > 0 {
			u.ActiveByService[svc] = st.Active
		}
	}
	for b, st := range c.Backends {
		if st.Active > 0 {
			u.ActiveByBackend[b] = st.Active
		}
	}
	return u, nil
}
