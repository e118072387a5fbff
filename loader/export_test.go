package loader

import (
	"net/netip"
)

// EvictForward deletes the forward entry of the flow from c to v, as the
// LRU would evict it.
func (d *Datapath) EvictForward(c, v netip.AddrPort) error {
	return d.objs.FlowMap.Delete(&xlbXlbFlowKey{Saddr: wire32(c.Addr()), Daddr: wire32(v.Addr()),
		Sport: wire16(c.Port()), Dport: wire16(v.Port())})
}

// StealSlot gives the SNAT slot of the flow from c to v to another owner
// while its forward entry stays, as a racing claim would.
func (d *Datapath) StealSlot(c, v netip.AddrPort) error {
	var f xlbXlbFlow
	k := xlbXlbFlowKey{Saddr: wire32(c.Addr()), Daddr: wire32(v.Addr()), Sport: wire16(c.Port()), Dport: wire16(v.Port())}
	if err := d.objs.FlowMap.Lookup(&k, &f); err != nil {
		return err
	}
	var s xlbXlbSnat
	if err := d.objs.SnatMap.Lookup(f.Slot, &s); err != nil {
		return err
	}
	s.Owner = f.Cookie + 1
	return d.objs.SnatMap.Put(f.Slot, &s)
}

// ForwardEntries returns how many forward entries conntrack holds, live or not.
func (d *Datapath) ForwardEntries() (int, error) {
	var (
		k xlbXlbFlowKey
		v xlbXlbFlow
		n int
	)
	it := d.objs.FlowMap.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}
