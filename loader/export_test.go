package loader

import (
	"fmt"
	"net/netip"
)

// findEntry returns the live forward entry of the flow from c to v.
func (d *Datapath) findEntry(c, v netip.AddrPort) (flowEntry, error) {
	ents, err := d.entries()
	if err != nil {
		return flowEntry{}, err
	}
	for _, e := range ents {
		k := e.flow.Key
		if k.Saddr == wire32(c.Addr()) && k.Sport == wire16(c.Port()) && k.Daddr == wire32(v.Addr()) && k.Dport == wire16(v.Port()) {
			return e, nil
		}
	}
	return flowEntry{}, fmt.Errorf("no flow from %v to %v", c, v)
}

// EvictForward deletes the forward entry of the flow from c to v and
// leaves its SNAT slot, as a lost entry would.
func (d *Datapath) EvictForward(c, v netip.AddrPort) error {
	e, err := d.findEntry(c, v)
	if err != nil {
		return err
	}
	if ok, err := d.deleteFlow(e.idx, e.flow.Cookie); err != nil || !ok {
		return fmt.Errorf("evicting %v: deleted %v (%v)", c, ok, err)
	}
	return nil
}

// StealSlot gives the SNAT slot of the flow from c to v to another owner
// while its forward entry stays, as a racing claim would.
func (d *Datapath) StealSlot(c, v netip.AddrPort) error {
	e, err := d.findEntry(c, v)
	if err != nil {
		return err
	}
	e.snat.Owner++
	return d.objs.SnatMap.Put(slotOf(e.flow.Cookie), &e.snat)
}

// ForwardEntries returns how many forward entries are in use, live or not.
func (d *Datapath) ForwardEntries() (int, error) {
	tab, err := d.table()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range tab {
		if f.Cookie != xlbXlbFlowCookieXLB_FLOW_EMPTY && f.Cookie != xlbXlbFlowCookieXLB_FLOW_DELETED {
			n++
		}
	}
	return n, nil
}

// MarkCut sets b's cut bit of svc only, as CutService does before it walks
// the table: the flows stay in the table.
func (d *Datapath) MarkCut(svc Service, b netip.AddrPort) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, ok := d.ids[b]
	if !ok {
		return ErrUnknownBackend
	}
	return d.markCut(svc, b, id)
}

// FlowIndex returns the flow_map index of the live flow from c to v.
func (d *Datapath) FlowIndex(c, v netip.AddrPort) (uint32, error) {
	e, err := d.findEntry(c, v)
	return e.idx, err
}

// FreedUnderFlows returns how many forward entries look live (a cookie,
// not deleted) while their SNAT slot is free: flows whose slot was freed
// behind their back. Their next packet finds no slot and gets a RST.
func (d *Datapath) FreedUnderFlows() (int, error) {
	tab, err := d.table()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range tab {
		if f.Cookie == xlbXlbFlowCookieXLB_FLOW_EMPTY || f.Cookie == xlbXlbFlowCookieXLB_FLOW_DELETED {
			continue
		}
		var s xlbXlbSnat
		if err := d.snatSlot(slotOf(f.Cookie), &s); err != nil {
			return 0, err
		}
		if s.Owner == 0 {
			n++
		}
	}
	return n, nil
}

// SNATSlot describes backend b's SNAT slot of port: its owner word, the
// client it names and its state bits.
func (d *Datapath) SNATSlot(b netip.AddrPort, port uint16) (string, error) {
	d.mu.Lock()
	id, ok := d.ids[b]
	d.mu.Unlock()
	if !ok {
		return "", ErrUnknownBackend
	}
	r := uint32(d.cfg.SNATPorts.Max) - uint32(d.cfg.SNATPorts.Min) + 1
	var s xlbXlbSnat
	if err := d.snatSlot(id*r+uint32(port-d.cfg.SNATPorts.Min), &s); err != nil {
		return "", err
	}
	return fmt.Sprintf("owner %#x client %v state %#x", uint64(s.Owner),
		netip.AddrPortFrom(addrOf(s.ClientAddr), portOf(s.ClientPort)), uint32(s.State)), nil
}

// AsOlderBuild clears the owner word bits of the flow from c to v, as a
// build before them left its slot (its state bits stay), and returns
// whether the word had XLB_OWNER_EST.
func (d *Datapath) AsOlderBuild(c, v netip.AddrPort) (bool, error) {
	e, err := d.findEntry(c, v)
	if err != nil {
		return false, err
	}
	had := e.snat.Owner&ownerEst != 0
	e.snat.Owner = xlbXlbSnatOwner(e.flow.Cookie)
	return had, d.objs.SnatMap.Put(slotOf(e.flow.Cookie), &e.snat)
}

// OwnerEstablished reports whether the owner word of the flow from c to v
// has XLB_OWNER_EST.
func (d *Datapath) OwnerEstablished(c, v netip.AddrPort) (bool, error) {
	e, err := d.findEntry(c, v)
	return e.snat.Owner&ownerEst != 0, err
}
