package loader

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// DropReasons names the drop reasons, indexed as in bpf/structs.h enum xlb_drop.
var DropReasons = map[xlbXlbDrop]string{
	xlbXlbDropXLB_DROP_TRUNCATED:      "truncated",
	xlbXlbDropXLB_DROP_BAD_IHL:        "bad_ihl",
	xlbXlbDropXLB_DROP_IP_OPTIONS:     "ip_options",
	xlbXlbDropXLB_DROP_FRAGMENT:       "fragment",
	xlbXlbDropXLB_DROP_BAD_LEN:        "bad_len",
	xlbXlbDropXLB_DROP_NOT_TCP:        "not_tcp",
	xlbXlbDropXLB_DROP_BAD_TCP_HDR:    "bad_tcp_hdr",
	xlbXlbDropXLB_DROP_NO_BACKEND:     "no_backend",
	xlbXlbDropXLB_DROP_SNAT_EXHAUSTED: "snat_exhausted",
	xlbXlbDropXLB_DROP_NO_FLOW:        "no_flow",
	xlbXlbDropXLB_DROP_NO_ROUTE:       "no_route",
	xlbXlbDropXLB_DROP_NOT_OWNER:      "not_owner",
	xlbXlbDropXLB_DROP_NEIGH_MISS:     "neigh_miss",
	xlbXlbDropXLB_DROP_NOT_ALLOWED:    "not_allowed",
	xlbXlbDropXLB_DROP_FLOW_LOST:      "flow_lost",
	xlbXlbDropXLB_DROP_TABLE_FULL:     "table_full",
}

// ExpiryReasons names why SNAT ports were taken back from flows, indexed
// as in bpf/structs.h enum xlb_expiry.
var ExpiryReasons = map[xlbXlbExpiry]string{
	xlbXlbExpiryXLB_EXPIRE_CLOSED:    "closed",
	xlbXlbExpiryXLB_EXPIRE_HALF_OPEN: "half_open",
	xlbXlbExpiryXLB_EXPIRE_IDLE:      "idle",
	xlbXlbExpiryXLB_EXPIRE_PRESSURE:  "pressure",
	xlbXlbExpiryXLB_EXPIRE_ORPHAN:    "orphan",
}

// Counters are one slot's counters summed over CPUs.
type Counters struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"` // both directions, as received
	// BytesOut is the part of Bytes going out to clients (from backends);
	// Bytes - BytesOut came in from clients.
	BytesOut uint64            `json:"bytes_out"`
	NewFlows uint64            `json:"new_flows"`
	RSTs     uint64            `json:"rsts"`
	Drops    map[string]uint64 `json:"drops"` // by reason; only non-zero ones
	// Expired counts SNAT ports taken back from flows of a service, by
	// reason (closed, half_open, idle, pressure, orphan); only non-zero ones.
	Expired map[string]uint64 `json:"expired,omitempty"`
}

// DropTotal returns the sum of all drops.
func (c Counters) DropTotal() uint64 {
	var n uint64
	for _, v := range c.Drops {
		n += v
	}
	return n
}

func (c *Counters) add(o Counters) {
	c.Packets += o.Packets
	c.Bytes += o.Bytes
	c.BytesOut += o.BytesOut
	c.NewFlows += o.NewFlows
	c.RSTs += o.RSTs
	for k, v := range o.Drops {
		addTo(&c.Drops, k, v)
	}
	for k, v := range o.Expired {
		addTo(&c.Expired, k, v)
	}
}

// Stats are the datapath's counters. Global holds what no service can be
// blamed for (say, a fragment to the VIP); Total sums everything.
type Stats struct {
	Global   Counters                    `json:"global"`
	Total    Counters                    `json:"total"`
	Services map[Service]Counters        `json:"services"`
	Backends map[netip.AddrPort]Counters `json:"backends"`
}

func addTo(m *map[string]uint64, k string, n uint64) {
	if *m == nil {
		*m = map[string]uint64{}
	}
	(*m)[k] += n
}

func backendSlot(id uint32) uint32 { return uint32(xlbXlbStatsSlotXLB_STATS_BACKEND) + id }

func serviceSlot(s Service) uint32 { return uint32(xlbXlbStatsSlotXLB_STATS_SERVICE) + uint32(s) }

// Stats reads and sums the per-CPU counters.
func (d *Datapath) Stats() (Stats, error) {
	st := Stats{Services: map[Service]Counters{}, Backends: map[netip.AddrPort]Counters{}}
	var err error
	if st.Global, err = d.readSlot(uint32(xlbXlbStatsSlotXLB_STATS_GLOBAL)); err != nil {
		return st, err
	}
	st.Total.add(st.Global)
	for _, s := range Services {
		c, err := d.readSlot(serviceSlot(s))
		if err != nil {
			return st, err
		}
		st.Services[s] = c
		st.Total.add(c)
	}
	d.mu.Lock()
	ids := make(map[netip.AddrPort]uint32, len(d.ids))
	for b, id := range d.ids {
		ids[b] = id
	}
	d.mu.Unlock()
	for b, id := range ids {
		c, err := d.readSlot(backendSlot(id))
		if err != nil {
			return st, err
		}
		st.Backends[b] = c
	}
	return st, nil
}

func (d *Datapath) readSlot(slot uint32) (Counters, error) {
	var per []xlbXlbCounters
	if err := d.objs.StatsMap.Lookup(slot, &per); err != nil {
		return Counters{}, fmt.Errorf("reading counters %d: %w", slot, err)
	}
	var c Counters
	for _, p := range per {
		c.Packets += p.Packets
		c.Bytes += p.Bytes
		c.BytesOut += p.BytesOut
		c.NewFlows += p.NewFlows
		c.RSTs += p.Rsts
		for i, n := range p.Drops {
			if n != 0 {
				addTo(&c.Drops, DropReasons[xlbXlbDrop(i)], n)
			}
		}
		for i, n := range p.Expired {
			if n != 0 {
				addTo(&c.Expired, ExpiryReasons[xlbXlbExpiry(i)], n)
			}
		}
	}
	return c, nil
}

func (d *Datapath) zeroCounters(slot uint32) error {
	per := make([]xlbXlbCounters, d.possibleCPUs())
	if err := d.objs.StatsMap.Put(slot, per); err != nil {
		return fmt.Errorf("zeroing counters %d: %w", slot, err)
	}
	return nil
}

func (d *Datapath) possibleCPUs() int {
	n, err := ebpf.PossibleCPU()
	if err != nil || n < 1 {
		return 1
	}
	return n
}
