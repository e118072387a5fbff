package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Flow is one client connection through the datapath.
type Flow struct {
	Client      netip.AddrPort // the client as it connected
	VIP         netip.AddrPort // the VIP and service port it connected to
	Service     Service
	Backend     netip.AddrPort // where it goes
	SNAT        netip.AddrPort // the source the backend sees
	Established bool           // the client acknowledged the backend's SYN-ACK
	Closed      bool           // both sides sent FIN, or one sent RST
	Idle        time.Duration  // since its last packet (1 s resolution)
}

// flowEntry is a forward entry with its SNAT slot, read together.
type flowEntry struct {
	key  xlbXlbFlowKey
	flow xlbXlbFlow
	snat xlbXlbSnat
}

// entries lists the forward entries whose SNAT slot they still own (an
// entry whose slot went to another flow is dead and skipped).
func (d *Datapath) entries() ([]flowEntry, error) {
	var (
		k   xlbXlbFlowKey
		v   xlbXlbFlow
		out []flowEntry
	)
	it := d.objs.FlowMap.Iterate()
	for it.Next(&k, &v) {
		var s xlbXlbSnat
		if err := d.objs.SnatMap.Lookup(v.Slot, &s); err != nil {
			return nil, fmt.Errorf("reading snat slot %d: %w", v.Slot, err)
		}
		if s.Owner != v.Cookie {
			continue
		}
		out = append(out, flowEntry{k, v, s})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing flows: %w", err)
	}
	return out, nil
}

// Flows lists the flows in conntrack, with the client tuple of each (what
// a flow cutter needs to provoke the client) and the backend it goes to.
func (d *Datapath) Flows() ([]Flow, error) {
	ents, err := d.entries()
	if err != nil {
		return nil, err
	}
	byID := d.backendsByID()
	now := monotonicCoarse()
	out := make([]Flow, 0, len(ents))
	for i := range ents {
		out = append(out, d.flowOf(&ents[i], byID, now))
	}
	return out, nil
}

// backendsByID maps backend ids to addresses.
func (d *Datapath) backendsByID() map[uint32]netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.backendsByIDLocked()
}

// backendsByIDLocked is backendsByID with d.mu held.
func (d *Datapath) backendsByIDLocked() map[uint32]netip.AddrPort {
	byID := make(map[uint32]netip.AddrPort, len(d.ids))
	for b, id := range d.ids {
		byID[id] = b
	}
	return byID
}

// flowOf describes a live forward entry.
func (d *Datapath) flowOf(e *flowEntry, byID map[uint32]netip.AddrPort, now uint64) Flow {
	st := e.snat.State
	f := Flow{
		Client:      netip.AddrPortFrom(addrOf(e.key.Saddr), portOf(e.key.Sport)),
		VIP:         netip.AddrPortFrom(addrOf(e.key.Daddr), portOf(e.key.Dport)),
		Service:     Service(e.flow.Svc),
		Backend:     byID[e.flow.Backend],
		SNAT:        netip.AddrPortFrom(d.cfg.SNATAddr, portOf(e.flow.SnatPort)),
		Established: st&xlbXlbCtStateXLB_CT_EST != 0,
		Closed:      ctClosed(st),
	}
	if now > e.snat.LastSeen {
		f.Idle = time.Duration(now - e.snat.LastSeen)
	}
	return f
}

func ctClosed(st xlbXlbCtState) bool {
	fins := xlbXlbCtStateXLB_CT_FIN_FWD | xlbXlbCtStateXLB_CT_FIN_REV
	return st&xlbXlbCtStateXLB_CT_RST != 0 || st&fins == fins
}

// FlushBackend deletes every flow to b (both directions: the forward entry
// and its SNAT slot) and returns how many flows went. The backend stays in
// its pools. List them first with Flows to learn their client tuples.
func (d *Datapath) FlushBackend(b netip.AddrPort) (int, error) {
	d.mu.Lock()
	id, ok := d.ids[b]
	d.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("flushing %v: %w", b, ErrUnknownBackend)
	}
	n, _, err := d.flushWhere(func(f *xlbXlbFlow) bool { return f.Backend == id }, d.backendsByID())
	return n, err
}

// FlushFlows deletes every flow and returns how many went.
func (d *Datapath) FlushFlows() (int, error) {
	n, _, err := d.flushWhere(func(*xlbXlbFlow) bool { return true }, d.backendsByID())
	return n, err
}

// flushWhere deletes the flows match picks (forward entry and SNAT slot)
// and returns how many went and which. A slot is freed only while the flow
// still owns it; XDP claims a slot only when it is free or its flow
// expired, so a live flow's slot cannot change hands under our feet.
// byID names the backends (see backendsByID).
func (d *Datapath) flushWhere(match func(*xlbXlbFlow) bool, byID map[uint32]netip.AddrPort) (int, []Flow, error) {
	ents, err := d.entries()
	if err != nil {
		return 0, nil, err
	}
	now := monotonicCoarse()
	var flows []Flow
	for i := range ents {
		e := &ents[i]
		if !match(&e.flow) {
			continue
		}
		if err := d.objs.SnatMap.Put(e.flow.Slot, &xlbXlbSnat{}); err != nil {
			return len(flows), flows, fmt.Errorf("freeing snat slot %d: %w", e.flow.Slot, err)
		}
		if err := d.objs.FlowMap.Delete(&e.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return len(flows), flows, fmt.Errorf("deleting flow: %w", err)
		}
		flows = append(flows, d.flowOf(e, byID, now))
	}
	return len(flows), flows, nil
}

// monotonicCoarse returns CLOCK_MONOTONIC_COARSE in ns, the clock of
// bpf_ktime_get_coarse_ns.
func monotonicCoarse() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}
