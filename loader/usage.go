package loader

import (
	"fmt"
	"net/netip"
)

// Usage is how full the datapath's tables are, read in one pass over
// conntrack.
type Usage struct {
	// Entries is how many conntrack entries exist (two a flow, one per
	// direction) and Capacity how many the flow map holds.
	Entries, Capacity int
	// Flows counts flows (forward entries), Active those not closed.
	Flows, Active int
	// ActiveByService and ActiveByBackend split Active.
	ActiveByService map[Service]int
	ActiveByBackend map[netip.AddrPort]int
	// SNATInUse is how many SNAT ports flows hold (closed ones until they
	// are freed); SNATPorts is the size of the configured range.
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
	var (
		k xlbXlbFlowKey
		v xlbXlbFlow
	)
	it := d.objs.FlowMap.Iterate()
	for it.Next(&k, &v) {
		u.Entries++
		if v.Dir != xlbXlbFlowDirXLB_DIR_FWD {
			continue
		}
		u.Flows++
		u.SNATInUse++
		if flowClosed(v.Flags) {
			continue
		}
		u.Active++
		u.ActiveByService[Service(v.Svc)]++
		u.ActiveByBackend[netip.AddrPortFrom(addrOf(v.NatDaddr), portOf(v.NatDport))]++
	}
	if err := it.Err(); err != nil {
		return u, fmt.Errorf("walking flows: %w", err)
	}
	return u, nil
}

// flowClosed reports whether a flow's flags say it ended: both sides sent
// FIN, or one sent RST.
func flowClosed(f xlbXlbFlowFlags) bool {
	fins := xlbXlbFlowFlagsXLB_FLOW_FIN_FWD | xlbXlbFlowFlagsXLB_FLOW_FIN_REV
	return f&xlbXlbFlowFlagsXLB_FLOW_RST != 0 || f&fins == fins
}
