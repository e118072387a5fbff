package loader

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// layoutMapName is the pinned map that holds the layout hash.
const layoutMapName = "layout_map"

// layoutHash hashes what a pinned map's reader must agree on: every map's
// name, type, sizes, flags and the BTF layout of its key and value
// (member names, offsets and sizes), so a changed struct, a resized map or
// another SNAT range gives another hash.
func layoutHash(spec *ebpf.CollectionSpec) (uint64, error) {
	h := fnv.New64a()
	names := make([]string, 0, len(spec.Maps))
	for n := range spec.Maps {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		m := spec.Maps[n]
		if m.Pinning != ebpf.PinByName || n == layoutMapName {
			continue
		}
		fmt.Fprintf(h, "%s %v %d %d %d %#x\n", n, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.Flags)
		if err := describeType(h, m.Key, 0); err != nil {
			return 0, fmt.Errorf("describing %s key: %w", n, err)
		}
		if err := describeType(h, m.Value, 0); err != nil {
			return 0, fmt.Errorf("describing %s value: %w", n, err)
		}
	}
	return h.Sum64(), nil
}

// describeType writes t's layout to w.
func describeType(w io.Writer, t btf.Type, depth int) error {
	if t == nil || depth > 8 {
		return nil
	}
	t = btf.UnderlyingType(t)
	size, err := btf.Sizeof(t)
	if err != nil {
		return err
	}
	switch v := t.(type) {
	case *btf.Struct:
		fmt.Fprintf(w, "struct %s %d {", v.Name, size)
		for _, m := range v.Members {
			fmt.Fprintf(w, "%s@%d:", m.Name, m.Offset)
			if err := describeType(w, m.Type, depth+1); err != nil {
				return err
			}
			fmt.Fprint(w, ";")
		}
		fmt.Fprint(w, "}")
	case *btf.Array:
		fmt.Fprintf(w, "[%d]", v.Nelems)
		return describeType(w, v.Type, depth+1)
	default:
		fmt.Fprintf(w, "%T %d", t, size)
	}
	return nil
}

// checkPinnedLayout returns an error wrapping ErrLayoutMismatch when dir
// holds pinned maps of another layout than want, or maps of an xlb that
// pinned no layout at all. An empty dir is fine.
func checkPinnedLayout(dir string, want uint64) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, layoutMapName), nil)
	if errors.Is(err, os.ErrNotExist) {
		for _, n := range []string{"flow_map", "stats_map", "backend_map", "maglev_map"} {
			if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
				return fmt.Errorf("%w: %s holds maps pinned by an xlb without a layout version: "+
					"stop that daemon and remove them (rm -r %s), which drops its flows", ErrLayoutMismatch, dir, dir)
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening pinned layout version: %w", err)
	}
	defer m.Close()
	var got uint64
	if err := m.Lookup(uint32(0), &got); err != nil {
		return fmt.Errorf("reading pinned layout version: %w", err)
	}
	if got != want {
		return fmt.Errorf("%w: maps in %s have layout %016x, this build and config %016x: "+
			"stop that daemon and remove them (rm -r %s), which drops its flows, or keep the old build and snat_ports",
			ErrLayoutMismatch, dir, got, want, dir)
	}
	return nil
}

// maps returns every pinned map of the datapath.
func (d *Datapath) maps() []*ebpf.Map {
	o := &d.objs
	return []*ebpf.Map{o.FlowMap, o.SnatMap, o.BackendMap, o.BackendIdMap, o.NexthopMap, o.MaglevMap,
		o.StatsMap, o.LeaseMap, o.SvcMap, o.AllowMap, o.LayoutMap}
}
