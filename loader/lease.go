package loader

import (
	"fmt"
	"time"
)

// RenewLease extends this node's VIP lease to d from now. With
// Config.Lease, XDP answers ARP for the VIP and takes new flows only while
// the lease runs; the daemon renews it while it is the VRRP master, so a
// killed daemon's host stops taking traffic when the lease lapses.
func (d *Datapath) RenewLease(dur time.Duration) error {
	l := xlbXlbLease{ExpiresNs: monotonicCoarse() + uint64(dur.Nanoseconds())}
	if err := d.objs.LeaseMap.Put(uint32(0), &l); err != nil {
		return fmt.Errorf("renewing vip lease: %w", err)
	}
	return nil
}

// DropLease ends the VIP lease now.
func (d *Datapath) DropLease() error {
	if err := d.objs.LeaseMap.Put(uint32(0), &xlbXlbLease{}); err != nil {
		return fmt.Errorf("dropping vip lease: %w", err)
	}
	return nil
}

// LeaseRemaining returns how long the VIP lease still runs (0 when lapsed).
func (d *Datapath) LeaseRemaining() (time.Duration, error) {
	var l xlbXlbLease
	if err := d.objs.LeaseMap.Lookup(uint32(0), &l); err != nil {
		return 0, fmt.Errorf("reading vip lease: %w", err)
	}
	now := monotonicCoarse()
	if l.ExpiresNs <= now {
		return 0, nil
	}
	return time.Duration(l.ExpiresNs - now), nil
}
