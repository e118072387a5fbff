package lab

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/loader"
)

// ensureBPFFS mounts bpffs at BPFFS unless it is there already.
func ensureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFS, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(BPFFS, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", BPFFS, err)
	}
	if err := unix.Mount("bpf", BPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs at %s: %w", BPFFS, err)
	}
	return nil
}

// attachPinnedPass attaches loader's pass-through XDP program in native
// mode to dev in ns and pins the link at dir/<dev>, so it outlives this
// process; removing the pin (or the interface) detaches it. Native XDP_TX
// on the veth whose peer dev is needs it.
func attachPinnedPass(ns *Namespace, dev, dir string) error {
	if err := ensureBPFFS(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating pin directory %s: %w", dir, err)
	}
	prog, err := loader.NewPassProgram()
	if err != nil {
		return err
	}
	defer prog.Close() // the link holds its own reference
	pin := filepath.Join(dir, dev)
	return ns.Do(func() error {
		iface, err := net.InterfaceByName(dev)
		if err != nil {
			return fmt.Errorf("finding %s in %s: %w", dev, ns.Name, err)
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: link.XDPDriverMode})
		if err != nil {
			return fmt.Errorf("attaching pass-through xdp to %s in %s: %w", dev, ns.Name, err)
		}
		defer l.Close() // the pin keeps it attached
		if err := l.Pin(pin); err != nil {
			return fmt.Errorf("pinning xdp link of %s at %s: %w", dev, pin, err)
		}
		return nil
	})
}
