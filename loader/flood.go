package loader

import (
	"net/netip"
	"sync"
	"time"
)

// FloodWitness tells a backend that still answers from one that is gone
// while a SYN flood overloads this host. Under a flood the host's own
// packets are lost in the kernel's queues before XDP sees them (the veth
// ring, the backlog), health probes with a timeout of a few hundred
// milliseconds then time out against healthy backends, and taking those
// out of the pools would reset every session on them. The datapath sees
// the backends' packets to their clients: while they keep arriving, a
// probe's timeout is the host's loss, not the backend's.
type FloodWitness struct {
	d    *Datapath
	mu   sync.Mutex
	last map[netip.AddrPort]floodMark
}

// floodMark is what one call of Answering saw.
type floodMark struct {
	at    time.Time
	out   uint64 // the backend's bytes to its clients
	flood uint64 // SYNs that found no free port or entry
}

// floodWindow bounds how far back Answering compares: a mark older than
// that is only a new baseline (a node cut off now must not pass for
// answering on the strength of what it sent long ago).
const floodWindow = 2 * time.Second

// FloodWitness returns a witness over d's counters.
func (d *Datapath) FloodWitness() *FloodWitness {
	return &FloodWitness{d: d, last: map[netip.AddrPort]floodMark{}}
}

// flooded counts the SYNs of st that found the datapath full: ports taken
// back under pressure, no free port, no free entry.
func flooded(st Stats) uint64 {
	return st.Total.Expired[ExpiryReasons[xlbXlbExpiryXLB_EXPIRE_PRESSURE]] +
		st.Total.Drops[DropReasons[xlbXlbDropXLB_DROP_SNAT_EXHAUSTED]] +
		st.Total.Drops[DropReasons[xlbXlbDropXLB_DROP_TABLE_FULL]]
}

// Answering reports whether, since its previous call for b, b's packets
// to its clients reached the datapath (b's bytes_out grew) while a SYN
// flood filled it (SYNs found no free SNAT port and took one back under
// pressure, or found none, or no conntrack entry). Both must hold: without
// a flood a timed-out probe is a miss as always (a hung PostgreSQL still
// has a kernel that answers SYNs), and a backend cut off sends nothing.
// The first call for b, or the first after floodWindow, only takes the
// baseline and returns false, as does a failed read of the counters.
func (w *FloodWitness) Answering(b netip.AddrPort) bool {
	st, err := w.d.Stats()
	if err != nil {
		return false
	}
	c, ok := st.Backends[b]
	if !ok {
		return false
	}
	now := floodMark{at: time.Now(), out: c.BytesOut, flood: flooded(st)}
	w.mu.Lock()
	defer w.mu.Unlock()
	was, seen := w.last[b]
	w.last[b] = now
	return seen && now.at.Sub(was.at) < floodWindow && now.out > was.out && now.flood > was.flood
}
