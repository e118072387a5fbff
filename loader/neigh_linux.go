package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// manageNeighbours asks the kernel to keep the next hop of every backend
// resolved: a managed neighbour entry (NTF_EXT_MANAGED, Linux 5.16+) is
// probed by the kernel on its own, so XDP, which never makes the kernel
// resolve anything, finds a MAC for a backend's first SYN. It works in the
// namespace of the first attached interface (d.nl) and does nothing before
// an Attach. Entries already there that are permanent or managed are left
// alone. Failures are logged, not returned: an unroutable backend must not
// block pool updates (its SYNs are dropped as no_route or neigh_miss).
// d.mu must be held.
func (d *Datapath) manageNeighbours() error {
	if d.nl == nil {
		return nil
	}
	for b := range d.ids {
		if err := manageNeighbour(d.nl, b.Addr()); err != nil {
			slog.Warn("managing backend neighbour", "backend", b, "err", err)
		}
	}
	return nil
}

func manageNeighbour(h *netlink.Handle, backend netip.Addr) error {
	routes, err := h.RouteGet(backend.AsSlice())
	if err != nil {
		return fmt.Errorf("looking up route to %v: %w", backend, err)
	}
	if len(routes) == 0 {
		return fmt.Errorf("looking up route to %v: no route", backend)
	}
	r := routes[0]
	hop := net.IP(backend.AsSlice())
	if r.Gw != nil {
		hop = r.Gw
	}
	if r.Type == unix.RTN_LOCAL {
		return nil
	}
	neighs, err := h.NeighList(r.LinkIndex, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing neighbours: %w", err)
	}
	for _, n := range neighs {
		if n.IP.Equal(hop) && (n.State&netlink.NUD_PERMANENT != 0 || n.FlagsExt&netlink.NTF_EXT_MANAGED != 0) {
			return nil
		}
	}
	n := &netlink.Neigh{LinkIndex: r.LinkIndex, Family: netlink.FAMILY_V4, IP: hop,
		State: netlink.NUD_NONE, FlagsExt: netlink.NTF_EXT_MANAGED}
	if err := h.NeighSet(n); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding managed neighbour %v: %w", hop, err)
	}
	return nil
}
