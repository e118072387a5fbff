package loader_test

import (
	"net/netip"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/xlb-dev/xlb/loader"
)

// TestFlowCounts opens flows in every state with Program.Run, kills one by
// giving its SNAT slot away, and checks FlowCounts against the flows Flows
// lists and against the states the packets made.
func TestFlowCounts(t *testing.T) {
	f := newFixture(t, snatPorts)
	primary, replica := ap(pg1, 5432), ap(pg2, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	if err := f.dp.SetBackends(loader.RO, []netip.AddrPort{replica}); err != nil {
		t.Fatal(err)
	}
	empty, err := f.dp.FlowCounts()
	if err != nil {
		t.Fatal(err)
	}
	wantEmpty := loader.FlowCounts{Capacity: loader.DefaultMaxFlows,
		Services: map[loader.Service]loader.FlowStates{loader.RW: {}, loader.RO: {}},
		Backends: map[netip.AddrPort]loader.FlowStates{}}
	if diff := cmp.Diff(wantEmpty, empty, cmpAddrPort); diff != "" {
		t.Fatalf("FlowCounts of an empty table (-want +got):\n%s", diff)
	}

	_, _ = forward(t, f, clientPkt(41000, 3000, syn, nil)) // half-open
	_, p := forward(t, f, clientPkt(41001, 3000, syn, nil))
	establish(t, f, primary, 41001, p) // established
	_, p = forward(t, f, clientPkt(41002, 3000, syn, nil))
	establish(t, f, primary, 41002, p)
	reply(t, f, primary, p, rst|ack, 41002)                // closed
	_, _ = forward(t, f, clientPkt(41003, 3000, syn, nil)) // dead, below
	if err := f.dp.StealSlot(ap(client, 41003), ap(vip, 3000)); err != nil {
		t.Fatal(err)
	}
	_, _ = forward(t, f, clientPkt(41010, 3001, syn, nil)) // half-open, read-only

	got, err := f.dp.FlowCounts()
	if err != nil {
		t.Fatal(err)
	}
	rw := loader.FlowStates{Flows: 3, Active: 2, Established: 1}
	ro := loader.FlowStates{Flows: 1, Active: 1}
	want := loader.FlowCounts{Capacity: loader.DefaultMaxFlows,
		All:      loader.FlowStates{Flows: 4, Active: 3, Established: 1},
		Services: map[loader.Service]loader.FlowStates{loader.RW: rw, loader.RO: ro},
		Backends: map[netip.AddrPort]loader.FlowStates{primary: rw, replica: ro},
	}
	if diff := cmp.Diff(want, got, cmpAddrPort); diff != "" {
		t.Errorf("FlowCounts (-want +got):\n%s", diff)
	}

	// The same counts from the list of flows.
	flows, err := f.dp.Flows()
	if err != nil {
		t.Fatal(err)
	}
	fromList := loader.FlowCounts{Capacity: got.Capacity,
		Services: map[loader.Service]loader.FlowStates{loader.RW: {}, loader.RO: {}},
		Backends: map[netip.AddrPort]loader.FlowStates{}}
	for _, fl := range flows {
		count := func(s loader.FlowStates) loader.FlowStates {
			s.Flows++
			if !fl.Closed {
				s.Active++
				if fl.Established {
					s.Established++
				}
			}
			return s
		}
		fromList.All = count(fromList.All)
		fromList.Services[fl.Service] = count(fromList.Services[fl.Service])
		fromList.Backends[fl.Backend] = count(fromList.Backends[fl.Backend])
	}
	if diff := cmp.Diff(fromList, got, cmpAddrPort); diff != "" {
		t.Errorf("FlowCounts against Flows (-Flows +FlowCounts):\n%s", diff)
	}

	// Usage is FlowCounts in the shape the pages take.
	u, err := f.dp.Usage()
	if err != nil {
		t.Fatal(err)
	}
	wantU := loader.Usage{Entries: 4, Capacity: loader.DefaultMaxFlows, Flows: 4, Active: 3,
		ActiveByService: map[loader.Service]int{loader.RW: 2, loader.RO: 1},
		ActiveByBackend: map[netip.AddrPort]int{primary: 2, replica: 1},
		SNATInUse:       4, SNATPorts: int(snatPorts.Max-snatPorts.Min) + 1}
	if diff := cmp.Diff(wantU, u, cmpAddrPort); diff != "" {
		t.Errorf("Usage (-want +got):\n%s", diff)
	}
}

var cmpAddrPort = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

// TestFlowCountsAllocation checks that a count of a full-size table (2^22
// entries, 192 MiB) allocates a few KiB, nothing in proportion to the table
// or to its flows.
func TestFlowCountsAllocation(t *testing.T) {
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: snatPorts, SkipPortCheck: true, MaxFlows: 1 << 22})
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{ap(pg1, 5432)}); err != nil {
		t.Fatal(err)
	}
	const flows = 500
	for i := range flows {
		forward(t, f, clientPkt(uint16(30000+i), 3000, syn, nil))
	}
	if _, err := f.dp.FlowCounts(); err != nil { // maps the table
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c, err := f.dp.FlowCounts()
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if c.All.Flows != flows {
		t.Fatalf("counted %d flows, want %d", c.All.Flows, flows)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<10 {
		t.Errorf("FlowCounts of a 2^22-entry table with %d flows allocated %d bytes, want at most 16 KiB", flows, got)
	}
	if got := after.Mallocs - before.Mallocs; got > 32 {
		t.Errorf("FlowCounts made %d allocations, want at most 32", got)
	}
}
