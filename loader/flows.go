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
	Client  netip.AddrPort // the client as it connected
	VIP     netip.AddrPort // the VIP and service port it connected to
	Service Service
	Backend netip.AddrPort // where it goes
	SNAT    netip.AddrPort // the source the backend sees
	Closed  bool           // both sides sent FIN, or one sent RST
	Idle    time.Duration  // since its last packet (1 s resolution)
}

// Flows lists the flows in conntrack (their forward entries).
func (d *Datapath) Flows() ([]Flow, error) {
	var (
		k   xlbXlbFlowKey
		v   xlbXlbFlow
		out []Flow
	)
	now := monotonicCoarse()
	it := d.objs.FlowMap.Iterate()
	for it.Next(&k, &v) {
		if v.Dir == xlbXlbFlowDirXLB_DIR_FWD {
			out = append(out, flowOf(&k, &v, now))
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("listing flows: %w", err)
	}
	return out, nil
}

// flowOf describes the forward conntrack entry k -> v.
func flowOf(k *xlbXlbFlowKey, v *xlbXlbFlow, now uint64) Flow {
	f := Flow{
		Client:  netip.AddrPortFrom(addrOf(k.Saddr), portOf(k.Sport)),
		VIP:     netip.AddrPortFrom(addrOf(k.Daddr), portOf(k.Dport)),
		Service: Service(v.Svc),
		Backend: netip.AddrPortFrom(addrOf(v.NatDaddr), portOf(v.NatDport)),
		SNAT:    netip.AddrPortFrom(addrOf(v.NatSaddr), portOf(v.NatSport)),
		Closed:  v.Flags&xlbXlbFlowFlagsXLB_FLOW_RST != 0 || v.Flags&(xlbXlbFlowFlagsXLB_FLOW_FIN_FWD|xlbXlbFlowFlagsXLB_FLOW_FIN_REV) == xlbXlbFlowFlagsXLB_FLOW_FIN_FWD|xlbXlbFlowFlagsXLB_FLOW_FIN_REV,
	}
	if now > v.LastSeen {
		f.Idle = time.Duration(now - v.LastSeen)
	}
	return f
}

// FlushBackend deletes every flow to b (both directions) and returns how
// many conntrack entries went. The backend stays in its pools.
func (d *Datapath) FlushBackend(b netip.AddrPort) (int, error) {
	d.mu.Lock()
	id, ok := d.ids[b]
	d.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("flushing %v: %w", b, ErrUnknownBackend)
	}
	n, _, err := d.flushWhere(func(f *xlbXlbFlow) bool { return f.Backend == id })
	return n, err
}

// FlushFlows deletes every flow and returns how many entries went.
func (d *Datapath) FlushFlows() (int, error) {
	n, _, err := d.flushWhere(func(*xlbXlbFlow) bool { return true })
	return n, err
}

// flushWhere deletes the conntrack entries whose value matches and returns
// how many went and the flows (forward entries) among them.
func (d *Datapath) flushWhere(match func(*xlbXlbFlow) bool) (int, []Flow, error) {
	var (
		k     xlbXlbFlowKey
		v     xlbXlbFlow
		keys  []xlbXlbFlowKey
		flows []Flow
		fwd   []bool
	)
	now := monotonicCoarse()
	it := d.objs.FlowMap.Iterate()
	for it.Next(&k, &v) {
		if match(&v) {
			keys = append(keys, k)
			isFwd := v.Dir == xlbXlbFlowDirXLB_DIR_FWD
			fwd = append(fwd, isFwd)
			if isFwd {
				flows = append(flows, flowOf(&k, &v, now))
			}
		}
	}
	if err := it.Err(); err != nil {
		return 0, nil, fmt.Errorf("listing flows: %w", err)
	}
	n := 0
	for i := range keys {
		err := d.objs.FlowMap.Delete(&keys[i])
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, flows, fmt.Errorf("deleting flow: %w", err)
		}
		if err == nil {
			n++
		}
	}
	return n, flows, nil
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
