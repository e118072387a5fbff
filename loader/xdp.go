package loader

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Mode is how XDP attaches: native (in the driver), generic (after the
// stack allocates an skb) or auto (native, else generic).
type Mode string

const (
	ModeAuto    Mode = "auto"
	ModeNative  Mode = "native"
	ModeGeneric Mode = "generic"
)

// ParseMode returns the Mode named s, or an error naming the allowed values.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeNative, ModeGeneric:
		return m, nil
	}
	return "", fmt.Errorf("xdp mode %q: want auto, native or generic", s)
}

// Attach attaches the datapath to the interface named ifname and returns
// the mode it got. With a pin path, a link pinned by an earlier run is
// reused and its program replaced atomically (the mode stays that link's).
func (d *Datapath) Attach(ifname string, mode Mode) (Mode, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := refuseVLAN(ifname); err != nil {
		return "", err
	}
	l, got, err := attachXDP(d.objs.XlbXdp, ifname, mode, d.linkPin(ifname))
	if err != nil {
		return "", err
	}
	if err := d.repointFlows(ifname); err != nil {
		l.Close()
		return "", err
	}
	if old, ok := d.links[ifname]; ok {
		old.Close()
	}
	d.links[ifname] = l
	if d.nl == nil {
		h, err := netlink.NewHandle()
		if err != nil {
			return got, fmt.Errorf("opening netlink for neighbours: %w", err)
		}
		d.nl = h
	}
	return got, d.manageNeighbours()
}

// refuseVLAN returns an error wrapping ErrVLAN when ifname is a VLAN
// device or carries VLAN devices: with rx VLAN offload XDP sees tagged
// frames untagged and would answer them untagged on the wrong network.
func refuseVLAN(ifname string) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", ifname, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	return vlanConflict(l, links)
}

// vlanConflict is refuseVLAN's decision for target among links.
func vlanConflict(target netlink.Link, links []netlink.Link) error {
	name := target.Attrs().Name
	if target.Type() == "vlan" {
		return fmt.Errorf("attaching xdp to %s: %w: attach to a plain interface", name, ErrVLAN)
	}
	for _, o := range links {
		if o.Type() == "vlan" && o.Attrs().ParentIndex == target.Attrs().Index {
			return fmt.Errorf("attaching xdp to %s: %w: %s is a vlan on it", name, ErrVLAN, o.Attrs().Name)
		}
	}
	return nil
}

// Detach removes the datapath from ifname, unpinning its link.
func (d *Datapath) Detach(ifname string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.links[ifname]
	if !ok {
		return fmt.Errorf("detaching %s: not attached", ifname)
	}
	delete(d.links, ifname)
	if d.cfg.PinPath != "" {
		if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpinning link of %s: %w", ifname, err)
		}
	}
	return l.Close()
}

// repointFlows moves pinned flows whose egress interface no longer exists
// onto ifname: a container restarted with the host's bpffs gets a new veth
// (a new index, maybe a new MAC) while its flows are still in flow_map,
// and they would otherwise be redirected to an interface that is gone.
// The datapath is one-arm, so ifname is where every flow leaves.
func (d *Datapath) repointFlows(ifname string) error {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", ifname, err)
	}
	gone := map[uint32]bool{}
	var (
		moved []uint32
		vals  []xlbXlbFlow
	)
	// One batch read of the table: an element-wise walk of a 262144-slot
	// array costs half a million syscalls, seconds before a restart attaches.
	tab, err := d.table()
	if err != nil {
		return err
	}
	for i := range tab {
		k, v := uint32(i), tab[i]
		if v.Cookie == xlbXlbFlowCookieXLB_FLOW_EMPTY || v.Cookie == xlbXlbFlowCookieXLB_FLOW_DELETED ||
			v.Ifindex == uint32(iface.Index) {
			continue
		}
		g, ok := gone[v.Ifindex]
		if !ok {
			_, err := net.InterfaceByIndex(int(v.Ifindex))
			g = err != nil
			gone[v.Ifindex] = g
		}
		if g {
			v.Ifindex = uint32(iface.Index)
			copy(v.Lmac[:], iface.HardwareAddr)
			moved, vals = append(moved, k), append(vals, v)
		}
	}
	for i := range moved {
		// Its interface words only: XDP writes the entry's reach under us.
		f, err := d.flowAt(moved[i])
		if err != nil {
			return fmt.Errorf("moving a flow onto %s: %w", ifname, err)
		}
		if f.Cookie == vals[i].Cookie {
			f.Ifindex = vals[i].Ifindex
			f.Lmac = vals[i].Lmac
		}
	}
	// The backends' next hops name the egress interface too.
	var (
		k  uint32
		nh xlbXlbNexthop
	)
	it := d.objs.NexthopMap.Iterate()
	var hops []uint32
	var hopVals []xlbXlbNexthop
	for it.Next(&k, &nh) {
		if nh.Ifindex == 0 || nh.Ifindex == uint32(iface.Index) {
			continue
		}
		if _, err := net.InterfaceByIndex(int(nh.Ifindex)); err == nil {
			continue
		}
		nh.Ifindex = uint32(iface.Index)
		copy(nh.Smac[:], iface.HardwareAddr)
		hops, hopVals = append(hops, k), append(hopVals, nh)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("listing next hops: %w", err)
	}
	for i := range hops {
		if err := d.objs.NexthopMap.Update(&hops[i], &hopVals[i], ebpf.UpdateExist); err != nil {
			return fmt.Errorf("moving a next hop onto %s: %w", ifname, err)
		}
	}
	return nil
}

func (d *Datapath) linkPin(ifname string) string {
	if d.cfg.PinPath == "" {
		return ""
	}
	return filepath.Join(d.cfg.PinPath, "link_"+ifname)
}

// attachXDP attaches prog to ifname, or updates the link pinned at pin.
// When that fails, the error carries why the pinned link could not be
// used too, and names the likely cause when another XDP program holds the
// interface while no pin is visible (a fresh bpffs, say, in a container
// or namespace that does not share the host's).
func attachXDP(prog *ebpf.Program, ifname string, mode Mode, pin string) (link.Link, Mode, error) {
	var pinErr error
	if pin != "" {
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case err != nil:
			pinErr = fmt.Errorf("loading pinned link %s: %w", pin, err)
		default:
			err := l.Update(prog)
			if err == nil {
				return l, attachedMode(ifname), nil
			}
			if !errors.Is(err, unix.ENOLINK) {
				l.Close()
				return nil, "", fmt.Errorf("updating pinned link of %s: %w", ifname, err)
			}
			// The interface the link was attached to is gone (a container's
			// veth dies with its namespace; `docker restart` makes a new
			// one): drop the severed link and attach afresh. The pinned
			// maps, and so the flows, stay.
			uerr := l.Unpin()
			l.Close()
			if uerr != nil {
				return nil, "", fmt.Errorf("unpinning severed link of %s: %w", ifname, uerr)
			}
		}
	}
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, "", fmt.Errorf("looking up %s: %w", ifname, err)
	}
	try := []Mode{mode}
	if mode == ModeAuto || mode == "" {
		try = []Mode{ModeNative, ModeGeneric}
	}
	var errs []error
	for _, m := range try {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: flags})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m, err))
			continue
		}
		if pin != "" {
			if err := l.Pin(pin); err != nil {
				l.Close()
				return nil, "", fmt.Errorf("pinning link of %s: %w", ifname, err)
			}
		}
		return l, m, nil
	}
	err = fmt.Errorf("attaching xdp to %s: %w", ifname, errors.Join(errs...))
	if pinErr == nil {
		return nil, "", err
	}
	if errors.Is(err, unix.EBUSY) && errors.Is(pinErr, os.ErrNotExist) && Attached(ifname) {
		err = fmt.Errorf("%w: an XDP program is attached to %s but no pinned link is visible under %s: "+
			"is the bpffs it was pinned in (the host's /sys/fs/bpf) mounted here?", err, ifname, filepath.Dir(pin))
	}
	return nil, "", errors.Join(err, pinErr)
}

// attachedMode asks netlink how XDP is attached to ifname.
func attachedMode(ifname string) Mode {
	l, err := netlink.LinkByName(ifname)
	if err != nil || l.Attrs().Xdp == nil {
		return ModeAuto
	}
	switch l.Attrs().Xdp.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return ModeNative
	case nl.XDP_ATTACHED_SKB:
		return ModeGeneric
	}
	return ModeAuto
}

// AttachPass attaches a pass-through XDP program to ifname in native mode
// and returns its link. Native XDP_TX on a veth is dropped unless the peer
// veth has an XDP program; the lab puts this one there.
func AttachPass(ifname string) (link.Link, error) {
	var objs xlbPassObjects
	if err := loadXlbPassObjects(&objs, nil); err != nil {
		return nil, fmt.Errorf("loading pass program: %w", err)
	}
	defer objs.Close()
	l, _, err := attachXDP(objs.XlbPass, ifname, ModeNative, "")
	return l, err
}

// EnableForwarding turns on IPv4 forwarding on ifname in the calling
// network namespace (net.ipv4.conf.<ifname>.forwarding), which
// bpf_fib_lookup requires; without it every new flow is dropped as no_route.
// When it is on already nothing is written, so a container whose /proc/sys
// is read-only works when its runtime set it (docker's sysctls). A name
// that could leave /proc/sys/net/ipv4/conf is refused (ErrInterfaceName).
func EnableForwarding(ifname string) error {
	if err := CheckInterfaceName(ifname); err != nil {
		return fmt.Errorf("enabling forwarding: %w", err)
	}
	p := filepath.Join("/proc/sys/net/ipv4/conf", ifname, "forwarding")
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enabling forwarding on %s: %w", ifname, err)
	}
	return nil
}

// Attached reports whether an XDP program is attached to ifname in the
// calling network namespace.
func Attached(ifname string) bool {
	l, err := netlink.LinkByName(ifname)
	return err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
}
