package loader

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// SetAllowSources limits new flows of svc to clients inside prefixes
// (IPv4): XDP checks an LPM trie on every SYN without a flow, drops the
// others and counts them as not_allowed. Established flows are not
// touched. An empty list lifts the limit.
func (d *Datapath) SetAllowSources(svc Service, prefixes []netip.Prefix) error {
	want := make(map[xlbXlbAllowKey]bool, len(prefixes))
	for _, p := range prefixes {
		if !p.Addr().Is4() {
			return fmt.Errorf("allow source %v: need an IPv4 prefix", p)
		}
		p = p.Masked()
		want[xlbXlbAllowKey{Prefixlen: 32 + uint32(p.Bits()), Svc: uint32(svc), Addr: wire32(p.Addr())}] = true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// New prefixes first, then the switch, then the old prefixes out: a
	// client allowed before and after is never refused in between.
	for k := range want {
		if err := d.objs.AllowMap.Put(&k, uint32(1)); err != nil {
			return fmt.Errorf("adding allow source of %v: %w", svc, err)
		}
	}
	conf := xlbXlbSvcConf{Allow: uint32(boolByte(len(want) > 0))}
	if err := d.objs.SvcMap.Put(uint32(svc), &conf); err != nil {
		return fmt.Errorf("setting allow sources of %v: %w", svc, err)
	}
	var (
		k     xlbXlbAllowKey
		v     uint32
		stale []xlbXlbAllowKey
	)
	it := d.objs.AllowMap.Iterate()
	for it.Next(&k, &v) {
		if k.Svc == uint32(svc) && !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("listing allow sources: %w", err)
	}
	for i := range stale {
		if err := d.objs.AllowMap.Delete(&stale[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing allow source of %v: %w", svc, err)
		}
	}
	return nil
}
