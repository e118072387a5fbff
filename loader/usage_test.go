package loader_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/loader"
)

// TestUsage opens one flow to each service with Program.Run and reads the
// table use back.
func TestUsage(t *testing.T) {
	f := newFixture(t, snatPorts)
	primary, replica := ap(pg1, 5432), ap(pg2, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	if err := f.dp.SetBackends(loader.RO, []netip.AddrPort{replica}); err != nil {
		t.Fatal(err)
	}
	empty, err := f.dp.Usage()
	if err != nil {
		t.Fatal(err)
	}
	forward(t, f, clientPkt(40000, 3000, syn, nil))
	forward(t, f, clientPkt(40001, 3001, syn, nil))
	got, err := f.dp.Usage()
	if err != nil {
		t.Fatal(err)
	}
	want := loader.Usage{
		Entries: 2, Capacity: empty.Capacity, Flows: 2, Active: 2, // one forward entry a flow
		ActiveByService: map[loader.Service]int{loader.RW: 1, loader.RO: 1},
		ActiveByBackend: map[netip.AddrPort]int{primary: 1, replica: 1},
		SNATInUse:       2, SNATPorts: int(snatPorts.Max-snatPorts.Min) + 1,
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("Usage (-want +got):\n%s", diff)
	}
	if empty.Entries != 0 || empty.Capacity < 1024 {
		t.Errorf("before any flow: %+v", empty)
	}
}
