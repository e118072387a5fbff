package loader

import (
	"fmt"
	"net/netip"
	"unsafe"
)

// FlowStates counts flows by state.
type FlowStates struct {
	// Flows counts the live flows: every forward entry that still owns its
	// SNAT slot, closed ones included until their port is taken back.
	Flows int
	// Active counts the flows not closed (no RST, not both FINs).
	Active int
	// Established counts the active flows whose client acknowledged the
	// backend's SYN-ACK; Active - Established are half-open.
	Established int
}

// FlowCounts are the flows in conntrack counted by state, in all, per
// service and per backend.
type FlowCounts struct {
	// Capacity is how many forward entries flow_map holds.
	Capacity int
	All      FlowStates
	// Services and Backends split All. Every service is present; a
	// backend only with flows. A flow whose backend id names no backend
	// (one being removed) counts under the zero AddrPort.
	Services map[Service]FlowStates
	Backends map[netip.AddrPort]FlowStates
}

// maxBackendIDs bounds the backend ids a walk counts apart; the datapath
// keeps them in a byte (maglev_map).
const maxBackendIDs = 256

// FlowCounts walks conntrack in place, through flow_map's memory mapping,
// and counts the live flows. It allocates nothing in proportion to the
// table (the result holds one entry per service and per backend), so any
// number of readers can call it at any table size; each call reads the
// whole table (2^22 entries, 192 MiB: ~75 ms of one core).
func (d *Datapath) FlowCounts() (FlowCounts, error) {
	c := FlowCounts{Capacity: int(d.objs.FlowMap.MaxEntries()), Services: map[Service]FlowStates{}}
	var perSvc, perID [maxBackendIDs]FlowStates
	err := d.walkLive(nil, func(_ uint32, f *xlbXlbFlow, s *xlbXlbSnat) {
		est := established(s)
		closed := ctClosed(s.State)
		perSvc[f.Svc].add(est, closed)
		perID[f.Backend%maxBackendIDs].add(est, closed)
	})
	if err != nil {
		return c, fmt.Errorf("counting flows: %w", err)
	}
	for _, svc := range Services {
		c.Services[svc] = perSvc[svc]
	}
	byID := d.backendsByID()
	c.Backends = make(map[netip.AddrPort]FlowStates, len(byID))
	for id := range perID {
		st := perID[id]
		c.All.Flows += st.Flows
		c.All.Active += st.Active
		c.All.Established += st.Established
		if st.Flows == 0 {
			continue
		}
		b := byID[uint32(id)] // zero when unknown
		c.Backends[b] = c.Backends[b].plus(st)
	}
	return c, nil
}

func (s *FlowStates) add(est, closed bool) {
	s.Flows++
	if closed {
		return
	}
	s.Active++
	if est {
		s.Established++
	}
}

func (s FlowStates) plus(o FlowStates) FlowStates {
	return FlowStates{Flows: s.Flows + o.Flows, Active: s.Active + o.Active, Established: s.Established + o.Established}
}

// walkChunk is how many forward entries walkLive copies at a time (3 KiB).
const walkChunk = 64

// walkLive calls fn with the index and a copy of every live forward entry
// that match picks (nil: all) and of its SNAT slot, read through the
// maps' memory mappings a few entries at a time (no copy of the table).
// match sees the entry before its slot is read, so a walk that picks few
// reads only their slots. An entry whose slot went to another flow is
// dead and skipped.
func (d *Datapath) walkLive(match func(*xlbXlbFlow) bool, fn func(uint32, *xlbXlbFlow, *xlbXlbSnat)) error {
	mem, err := d.flowMemory()
	if err != nil {
		return err
	}
	n := int(d.objs.FlowMap.MaxEntries())
	size := int(unsafe.Sizeof(xlbXlbFlow{}))
	if size != int(d.objs.FlowMap.ValueSize()) || int(mem.Size()) < n*size {
		return fmt.Errorf("walking flows: flow_map holds %d-byte values in %d bytes, want %d %d-byte values",
			d.objs.FlowMap.ValueSize(), mem.Size(), n, size)
	}
	var (
		chunk [walkChunk]xlbXlbFlow
		s     xlbXlbSnat
	)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&chunk[0])), len(chunk)*size)
	for first := 0; first < n; first += len(chunk) {
		m := min(len(chunk), n-first)
		if _, err := mem.ReadAt(buf[:m*size], int64(first)*int64(size)); err != nil {
			return fmt.Errorf("reading flows %d to %d: %w", first, first+m, err)
		}
		for i := range m {
			f := &chunk[i]
			if f.Cookie == xlbXlbFlowCookieXLB_FLOW_EMPTY || f.Cookie == xlbXlbFlowCookieXLB_FLOW_DELETED ||
				match != nil && !match(f) {
				continue
			}
			if err := d.snatSlot(slotOf(f.Cookie), &s); err != nil {
				return err
			}
			if !owns(&s, f) {
				continue
			}
			fn(uint32(first+i), f, &s)
		}
	}
	return nil
}
