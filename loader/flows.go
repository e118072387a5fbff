package loader

import (
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

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

// flowEntry is a forward entry with its index and SNAT slot, read together.
type flowEntry struct {
	idx  uint32
	flow xlbXlbFlow
	snat xlbXlbSnat
}

// table reads the whole forward table, through flow_map's memory mapping
// (one copy of the array, a few ms; a batch lookup of its 262144 entries
// took ~80 ms under load, in the middle of every cut).
func (d *Datapath) table() ([]xlbXlbFlow, error) {
	mem, err := d.flowMemory()
	if err != nil {
		return nil, err
	}
	n := int(d.objs.FlowMap.MaxEntries())
	size := int(unsafe.Sizeof(xlbXlbFlow{}))
	if size != int(d.objs.FlowMap.ValueSize()) || int(mem.Size()) < n*size {
		return nil, fmt.Errorf("reading flows: flow_map holds %d-byte values in %d bytes, want %d-byte values",
			d.objs.FlowMap.ValueSize(), mem.Size(), size)
	}
	vals := make([]xlbXlbFlow, n)
	buf := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(vals))), n*size)
	if _, err := mem.ReadAt(buf, 0); err != nil {
		return nil, fmt.Errorf("reading flows: %w", err)
	}
	return vals, nil
}

// flowMemory returns flow_map's memory mapping, made at first use.
func (d *Datapath) flowMemory() (*ebpf.Memory, error) {
	d.memOnce.Do(d.mapMemory)
	if d.flowMemErr != nil {
		return nil, fmt.Errorf("mapping flow_map: %w", d.flowMemErr)
	}
	return d.flowMem, nil
}

// mapMemory maps flow_map and snat_map (once).
func (d *Datapath) mapMemory() {
	d.flowMem, d.flowMemErr = d.objs.FlowMap.Memory()
	d.snatMem, d.snatMemErr = d.objs.SnatMap.Memory()
}

// snatSlot reads SNAT slot i through snat_map's memory mapping (no
// syscall: a walk reads one slot per live flow, a million at full scale).
func (d *Datapath) snatSlot(i uint32, s *xlbXlbSnat) error {
	d.memOnce.Do(d.mapMemory)
	if d.snatMemErr != nil {
		return fmt.Errorf("mapping snat_map: %w", d.snatMemErr)
	}
	size := int(unsafe.Sizeof(*s))
	if size != int(d.objs.SnatMap.ValueSize()) || i >= d.objs.SnatMap.MaxEntries() {
		return fmt.Errorf("reading snat slot %d: out of snat_map (%d %d-byte slots)", i, d.objs.SnatMap.MaxEntries(), d.objs.SnatMap.ValueSize())
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(s)), size)
	if _, err := d.snatMem.ReadAt(buf, int64(i)*int64(size)); err != nil {
		return fmt.Errorf("reading snat slot %d: %w", i, err)
	}
	return nil
}

// flowWords returns flow_map mapped writable (once; Close unmaps it). A
// delete or a move writes single words of an entry, never the whole entry:
// XDP updates another word of it (its reach) at any time.
func (d *Datapath) flowWords() ([]byte, error) {
	d.rwOnce.Do(func() {
		page := os.Getpagesize()
		size := int(d.objs.FlowMap.MaxEntries())*int(d.objs.FlowMap.ValueSize()) + page - 1
		d.flowRW, d.flowRWErr = unix.Mmap(d.objs.FlowMap.FD(), 0, size&^(page-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	})
	if d.flowRWErr != nil {
		return nil, fmt.Errorf("mapping flow_map writable: %w", d.flowRWErr)
	}
	return d.flowRW, nil
}

// flowAt returns entry idx in flow_map's writable mapping.
func (d *Datapath) flowAt(idx uint32) (*xlbXlbFlow, error) {
	b, err := d.flowWords()
	if err != nil {
		return nil, err
	}
	size := int(unsafe.Sizeof(xlbXlbFlow{}))
	if size != int(d.objs.FlowMap.ValueSize()) || (int(idx)+1)*size > len(b) {
		return nil, fmt.Errorf("flow entry %d: out of flow_map (%d %d-byte entries)", idx, d.objs.FlowMap.MaxEntries(), d.objs.FlowMap.ValueSize())
	}
	return (*xlbXlbFlow)(unsafe.Pointer(&b[int(idx)*size])), nil
}

// snatWords returns snat_map mapped writable (once; Close unmaps it).
func (d *Datapath) snatWords() ([]byte, error) {
	d.snatRWOnce.Do(func() {
		page := os.Getpagesize()
		size := int(d.objs.SnatMap.MaxEntries())*int(d.objs.SnatMap.ValueSize()) + page - 1
		d.snatRW, d.snatRWErr = unix.Mmap(d.objs.SnatMap.FD(), 0, size&^(page-1), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	})
	if d.snatRWErr != nil {
		return nil, fmt.Errorf("mapping snat_map writable: %w", d.snatRWErr)
	}
	return d.snatRW, nil
}

// releaseSlot frees SNAT slot i if cookie still owns it (a compare-and-swap
// of the owner word, as XDP frees and claims slots) and reports whether it
// did. The slot's other words stay: a free slot is one whose owner is 0,
// and the claim that takes it next writes them. A whole-slot write instead
// would free a slot that XDP gave to a new flow since it was read (a flow
// expired or taken under pressure meanwhile): that flow's next packet
// would find no slot and get a RST.
func (d *Datapath) releaseSlot(i uint32, cookie xlbXlbFlowCookie) (bool, error) {
	b, err := d.snatWords()
	if err != nil {
		return false, fmt.Errorf("freeing snat slot %d: %w", i, err)
	}
	size := int(unsafe.Sizeof(xlbXlbSnat{}))
	if size != int(d.objs.SnatMap.ValueSize()) || (int(i)+1)*size > len(b) {
		return false, fmt.Errorf("freeing snat slot %d: out of snat_map (%d %d-byte slots)", i, d.objs.SnatMap.MaxEntries(), d.objs.SnatMap.ValueSize())
	}
	s := (*xlbXlbSnat)(unsafe.Pointer(&b[int(i)*size]))
	owner := (*uint64)(unsafe.Pointer(&s.Owner))
	// Twice: XDP may mark the flow established between the load and the
	// swap (it sets XLB_OWNER_EST once).
	for range 2 {
		o := atomic.LoadUint64(owner)
		if ownerCookie(xlbXlbSnatOwner(o)) != cookie {
			return false, nil
		}
		if atomic.CompareAndSwapUint64(owner, o, 0) {
			return true, nil
		}
	}
	return false, nil
}

// ownerEst is XLB_OWNER_EST, the bit of an established flow's owner word.
const ownerEst = xlbXlbSnatOwner(1) << xlbXlbSnatOwnerXLB_OWNER_EST_BIT

// ownerCookie returns the cookie of the flow that owner word names (an
// established flow's has XLB_OWNER_EST beside it; a slot changing hands
// has XLB_OWNER_BUSY, and names no flow).
func ownerCookie(o xlbXlbSnatOwner) xlbXlbFlowCookie {
	return xlbXlbFlowCookie(o &^ ownerEst)
}

// owns reports whether slot s is the live slot of forward entry f: its
// owner names f's cookie and it names f's client.
func owns(s *xlbXlbSnat, f *xlbXlbFlow) bool {
	return ownerCookie(s.Owner) == f.Cookie && s.ClientAddr == f.Key.Saddr && s.ClientPort == f.Key.Sport
}

// established reports whether slot s's flow is established: by its owner
// word's bit, or by its state bit alone (a flow of a build before the
// owner's bit).
func established(s *xlbXlbSnat) bool {
	return s.Owner&ownerEst != 0 || s.State&xlbXlbCtStateXLB_CT_EST != 0
}

// deleteFlow marks entry idx deleted if it still holds cookie (a
// compare-and-swap of the cookie word, as XDP deletes) and reports whether
// it did.
func (d *Datapath) deleteFlow(idx uint32, cookie xlbXlbFlowCookie) (bool, error) {
	f, err := d.flowAt(idx)
	if err != nil {
		return false, fmt.Errorf("deleting flow: %w", err)
	}
	return atomic.CompareAndSwapUint64((*uint64)(unsafe.Pointer(&f.Cookie)), uint64(cookie), uint64(xlbXlbFlowCookieXLB_FLOW_DELETED)), nil
}

// MapBytes returns the bytes of the flow table (flow_map) and of the SNAT
// slots (snat_map): the memory conntrack takes whatever the flows.
func (d *Datapath) MapBytes() (flows, snat uint64) {
	return uint64(d.objs.FlowMap.MaxEntries()) * uint64(d.objs.FlowMap.ValueSize()),
		uint64(d.objs.SnatMap.MaxEntries()) * uint64(d.objs.SnatMap.ValueSize())
}

// slotOf returns the snat_map index a live cookie names.
func slotOf(c xlbXlbFlowCookie) uint32 { return uint32(c >> 32) }

// entries lists the forward entries that still own their SNAT slot (an
// entry whose slot went to another flow is dead and skipped).
func (d *Datapath) entries() ([]flowEntry, error) { return d.entriesWhere(nil) }

// entriesWhere is entries restricted to the entries match picks (nil: all);
// match sees the forward entry before its slot is read.
func (d *Datapath) entriesWhere(match func(*xlbXlbFlow) bool) ([]flowEntry, error) {
	var out []flowEntry
	err := d.walkLive(match, func(idx uint32, f *xlbXlbFlow, s *xlbXlbSnat) {
		out = append(out, flowEntry{idx, *f, *s})
	})
	if err != nil {
		return nil, fmt.Errorf("reading flows: %w", err)
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
		Client:      netip.AddrPortFrom(addrOf(e.flow.Key.Saddr), portOf(e.flow.Key.Sport)),
		VIP:         netip.AddrPortFrom(addrOf(e.flow.Key.Daddr), portOf(e.flow.Key.Dport)),
		Service:     Service(e.flow.Svc),
		Backend:     byID[e.flow.Backend],
		SNAT:        netip.AddrPortFrom(d.cfg.SNATAddr, portOf(e.flow.SnatPort)),
		Established: established(&e.snat),
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

// flushWhere deletes the flows match picks (it frees the SNAT slot, then
// marks the entry deleted, each with a compare-and-swap on the owner's
// cookie) and returns how many went and which. XDP claims a slot when it
// is free, or its flow expired, or (under pressure) was never established,
// so a flow read here may have lost its slot to a new flow since: that
// slot is left to its new flow, and the old flow, already over, is not
// counted. byID names the backends (see backendsByID).
func (d *Datapath) flushWhere(match func(*xlbXlbFlow) bool, byID map[uint32]netip.AddrPort) (int, []Flow, error) {
	ents, err := d.entriesWhere(match)
	if err != nil {
		return 0, nil, err
	}
	now := monotonicCoarse()
	var flows []Flow
	for i := range ents {
		e := &ents[i]
		freed, err := d.releaseSlot(slotOf(e.flow.Cookie), e.flow.Cookie)
		if err != nil {
			return len(flows), flows, err
		}
		if _, err := d.deleteFlow(e.idx, e.flow.Cookie); err != nil {
			return len(flows), flows, err
		}
		if !freed {
			continue
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
