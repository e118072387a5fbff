package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// Backend is a backend the datapath knows: its address, whether its flows
// are forwarded, and the services whose tables hold it.
type Backend struct {
	Addr     netip.AddrPort
	ID       uint32
	Alive    bool
	Services []Service
}

// restore rebuilds the backend ids and pools from (possibly pinned) maps.
func (d *Datapath) restore() error {
	n := d.objs.BackendMap.MaxEntries()
	for id := uint32(1); id < n; id++ {
		var be xlbXlbBackend
		if err := d.objs.BackendMap.Lookup(id, &be); err != nil {
			return fmt.Errorf("reading backend %d: %w", id, err)
		}
		if be.Addr != 0 {
			b := netip.AddrPortFrom(addrOf(be.Addr), portOf(be.Port))
			d.ids[b] = id
			if c := be.Flags & cutBits; c != 0 {
				d.cuts[b] = c
			}
		}
	}
	byID := make(map[uint32]netip.AddrPort, len(d.ids))
	for b, id := range d.ids {
		byID[id] = b
	}
	tables, err := d.readTables()
	if err != nil {
		return err
	}
	for _, svc := range Services {
		table := tables[uint32(svc)*maglevSize : (uint32(svc)+1)*maglevSize]
		seen := map[uint32]bool{}
		for _, id := range table {
			if id != 0 && !seen[id] {
				seen[id] = true
				if b, ok := byID[id]; ok {
					d.pools[svc] = append(d.pools[svc], b)
				}
			}
		}
		slices.SortFunc(d.pools[svc], func(a, b netip.AddrPort) int { return a.Compare(b) })
	}
	return nil
}

// readTables reads every service's Maglev table: service svc's slots are
// [svc*maglevSize, (svc+1)*maglevSize).
func (d *Datapath) readTables() ([]uint32, error) {
	chunks := make([]xlbXlbMaglevChunk, d.objs.MaglevMap.MaxEntries())
	keys := make([]uint32, len(chunks))
	var cursor ebpf.MapBatchCursor
	if _, err := d.objs.MaglevMap.BatchLookup(&cursor, keys, chunks, nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("reading maglev tables: %w", err)
	}
	all := make([]uint32, 0, len(Services)*maglevSize)
	for _, svc := range Services {
		for i := range maglevSize {
			c := chunks[uint32(svc)*maglevChunks+uint32(i)/maglevPerChunk]
			all = append(all, uint32(c.Id[i%maglevPerChunk]))
		}
	}
	return all, nil
}

// SetBackends makes backends the pool of svc: new flows of svc are spread
// over them by Maglev. Backends that leave the pool keep their existing flows
// (a drain); use RemoveBackend to cut them. An empty list leaves svc without
// backends: its SYNs get a RST. It returns an error wrapping
// ErrTooManyBackends when no backend id is free.
func (d *Datapath) SetBackends(svc Service, backends []netip.AddrPort) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	known := len(d.ids)
	set := make(map[netip.AddrPort]uint32, len(backends))
	for _, b := range backends {
		if !b.Addr().Is4() {
			return fmt.Errorf("backend %v: need an IPv4 address", b)
		}
		// Back in svc's pool: its new flows of svc are not cut.
		if d.cuts[b]&cutBit(svc) != 0 {
			d.cuts[b] &^= cutBit(svc)
		}
		id, err := d.ensureID(b)
		if err != nil {
			return err
		}
		set[b] = id
	}
	if err := d.writeTable(svc, maglevTable(set, maglevSize)); err != nil {
		return err
	}
	pool := make([]netip.AddrPort, 0, len(set))
	for b := range set {
		pool = append(pool, b)
	}
	slices.SortFunc(pool, func(a, b netip.AddrPort) int { return a.Compare(b) })
	d.pools[svc] = pool
	if len(d.ids) == known {
		return nil // no new backend: its neighbours are managed already
	}
	return d.manageNeighbours()
}

// RemoveBackend takes b out of every pool, makes the datapath answer its
// flows' next packets with a RST, deletes its flows and frees its id. It
// returns the client connections it cut (hand them to a Kicker so idle
// clients learn it at once), or ErrUnknownBackend.
func (d *Datapath) RemoveBackend(b netip.AddrPort) ([]Flow, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, ok := d.ids[b]
	if !ok {
		return nil, fmt.Errorf("removing %v: %w", b, ErrUnknownBackend)
	}
	// Not alive first: from here on XDP resets its flows even before the
	// flush below reaches them.
	dead := xlbXlbBackend{Addr: wire32(b.Addr()), Port: wire16(b.Port())}
	if err := d.objs.BackendMap.Put(id, &dead); err != nil {
		return nil, fmt.Errorf("marking %v dead: %w", b, err)
	}
	for svc := range d.pools {
		if err := d.dropFromPool(svc, b); err != nil {
			return nil, err
		}
	}
	_, flows, err := d.flushWhere(func(f *xlbXlbFlow) bool { return f.Backend == id }, d.backendsByIDLocked())
	if err != nil {
		return flows, err
	}
	if err := d.objs.BackendIdMap.Delete(backendKey(b)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return flows, fmt.Errorf("unmapping %v: %w", b, err)
	}
	if err := d.objs.BackendMap.Put(id, &xlbXlbBackend{}); err != nil {
		return flows, fmt.Errorf("freeing id of %v: %w", b, err)
	}
	delete(d.ids, b)
	delete(d.cuts, b)
	return flows, nil
}

// dropFromPool takes b out of svc's pool and rewrites its Maglev table
// (nothing when b is not in it). d.mu is held.
func (d *Datapath) dropFromPool(svc Service, b netip.AddrPort) error {
	i := slices.Index(d.pools[svc], b)
	if i < 0 {
		return nil
	}
	pool := slices.Delete(slices.Clone(d.pools[svc]), i, i+1)
	set := make(map[netip.AddrPort]uint32, len(pool))
	for _, p := range pool {
		set[p] = d.ids[p]
	}
	if err := d.writeTable(svc, maglevTable(set, maglevSize)); err != nil {
		return err
	}
	d.pools[svc] = pool
	return nil
}

// markCut sets b's cut bit of svc in backend_map. d.mu is held.
func (d *Datapath) markCut(svc Service, b netip.AddrPort, id uint32) error {
	d.cuts[b] |= cutBit(svc)
	be := xlbXlbBackend{Addr: wire32(b.Addr()), Port: wire16(b.Port()),
		Flags: xlbXlbBackendFlagsXLB_BACKEND_ALIVE | d.cuts[b]}
	if err := d.objs.BackendMap.Put(id, &be); err != nil {
		return fmt.Errorf("cutting %v from %v: %w", b, svc, err)
	}
	return nil
}

// cutBits are the backend flags CutService sets.
const cutBits = xlbXlbBackendFlagsXLB_BACKEND_CUT_RW | xlbXlbBackendFlagsXLB_BACKEND_CUT_RO

// cutBit is the backend flag that cuts flows of svc.
func cutBit(svc Service) xlbXlbBackendFlags { return xlbXlbBackendFlagsXLB_BACKEND_CUT_RW << svc }

// CutService takes b out of svc's pool and deletes b's flows of svc, and
// returns the client connections it cut; b keeps its other pool and the
// flows there. It is for a node that changed role: a replica promoted
// leaves the read pool, and its readers must not go on reading from a
// primary through VIP:ro (nor a demoted primary's writers from a
// replica). Unlike RemoveBackend, b stays alive; its flows of svc are
// marked cut in backend_map first, so XDP resets them at their next packet
// even before the walk of the table deletes them, until b is in svc's
// pool again (SetBackends). It returns ErrUnknownBackend for a backend the
// datapath does not know.
func (d *Datapath) CutService(svc Service, b netip.AddrPort) ([]Flow, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, ok := d.ids[b]
	if !ok {
		return nil, fmt.Errorf("cutting %v from %v: %w", b, svc, ErrUnknownBackend)
	}
	// The cut bit first: from here on XDP resets these flows at their
	// next packet, while the walk of the table below (tens of ms for a
	// large table) finds them for the kicker.
	if err := d.markCut(svc, b, id); err != nil {
		return nil, err
	}
	if err := d.dropFromPool(svc, b); err != nil {
		return nil, err
	}
	_, flows, err := d.flushWhere(func(f *xlbXlbFlow) bool {
		return f.Backend == id && Service(f.Svc) == svc
	}, d.backendsByIDLocked())
	return flows, err
}

// Backends lists the backends the datapath knows, ordered by address.
func (d *Datapath) Backends() ([]Backend, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Backend, 0, len(d.ids))
	for b, id := range d.ids {
		var be xlbXlbBackend
		if err := d.objs.BackendMap.Lookup(id, &be); err != nil {
			return nil, fmt.Errorf("reading backend %v: %w", b, err)
		}
		x := Backend{Addr: b, ID: id, Alive: be.Flags&xlbXlbBackendFlagsXLB_BACKEND_ALIVE != 0}
		for _, svc := range Services {
			if slices.Contains(d.pools[svc], b) {
				x.Services = append(x.Services, svc)
			}
		}
		out = append(out, x)
	}
	slices.SortFunc(out, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}

// Pool returns the backends of svc as last set.
func (d *Datapath) Pool(svc Service) []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.pools[svc])
}

// ensureID returns b's id, giving it a free one (alive, counters zeroed)
// when it has none.
func (d *Datapath) ensureID(b netip.AddrPort) (uint32, error) {
	alive := xlbXlbBackend{Addr: wire32(b.Addr()), Port: wire16(b.Port()),
		Flags: xlbXlbBackendFlagsXLB_BACKEND_ALIVE | d.cuts[b]}
	if id, ok := d.ids[b]; ok {
		// Re-arm a backend that an earlier run marked dead.
		if err := d.objs.BackendMap.Put(id, &alive); err != nil {
			return 0, fmt.Errorf("updating backend %v: %w", b, err)
		}
		if err := d.objs.BackendIdMap.Put(backendKey(b), id); err != nil {
			return 0, fmt.Errorf("mapping %v: %w", b, err)
		}
		return id, nil
	}
	used := make(map[uint32]bool, len(d.ids))
	for _, id := range d.ids {
		used[id] = true
	}
	for id := uint32(1); id < d.objs.BackendMap.MaxEntries(); id++ {
		if used[id] {
			continue
		}
		if err := d.zeroCounters(backendSlot(id)); err != nil {
			return 0, err
		}
		if err := d.objs.NexthopMap.Put(id, &xlbXlbNexthop{}); err != nil {
			return 0, fmt.Errorf("clearing next hop of %v: %w", b, err)
		}
		if err := d.objs.BackendIdMap.Put(backendKey(b), id); err != nil {
			return 0, fmt.Errorf("mapping %v: %w", b, err)
		}
		if err := d.objs.BackendMap.Put(id, &alive); err != nil {
			return 0, fmt.Errorf("adding backend %v: %w", b, err)
		}
		d.ids[b] = id
		return id, nil
	}
	return 0, fmt.Errorf("adding backend %v: %w", b, ErrTooManyBackends)
}

// backendKey is b as backend_id_map keys it.
func backendKey(b netip.AddrPort) *xlbXlbBackendKey {
	return &xlbXlbBackendKey{Addr: wire32(b.Addr()), Port: wire16(b.Port())}
}

// writeTable writes svc's Maglev table, a byte per slot (see maglev_map).
func (d *Datapath) writeTable(svc Service, table []uint32) error {
	chunks := make([]xlbXlbMaglevChunk, maglevChunks)
	for i, id := range table {
		chunks[i/maglevPerChunk].Id[i%maglevPerChunk] = uint8(id)
	}
	keys := make([]uint32, len(chunks))
	for i := range keys {
		keys[i] = uint32(svc)*maglevChunks + uint32(i)
	}
	if _, err := d.objs.MaglevMap.BatchUpdate(keys, chunks, nil); err != nil {
		return fmt.Errorf("writing maglev table of %v: %w", svc, err)
	}
	return nil
}
