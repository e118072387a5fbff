package loader_test

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xlb-dev/xlb/loader"
)

// onCPU runs f on a thread bound to cpu (inside the fixture's namespace,
// where Program.Run resolves next hops), and restores the thread's
// affinity afterwards.
func onCPU(f *fixture, cpu int, run func() error) error {
	return f.ns.Do(func() error {
		var was, set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &was); err != nil {
			return err
		}
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return err
		}
		defer unix.SchedSetaffinity(0, &was)
		return run()
	})
}

// TestCutRacesNewFlows cuts every flow (FlushFlows, as a backend's cut
// does) again and again while SYN floods run on both CPUs, on a SNAT
// range so small that every SYN takes the port of an old half-open flow:
// slots the cut read change hands before it frees them. A cut frees only
// the slots its flows still own, so no flow is left with its forward
// entry and a freed slot (whose next packet would get a RST). Freeing with
// a whole-slot write, as the loader once did, fails this within a few
// rounds.
func TestCutRacesNewFlows(t *testing.T) {
	onCPUs := twoCPUs(t)
	ports := loader.PortRange{Min: 20000, Max: 20063}
	f := newFixtureWith(t, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: ports, SkipPortCheck: true})
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{ap(pg1, 5432)}); err != nil {
		t.Fatal(err)
	}
	// One harness per CPU, each varying its own spoofed source.
	var floods [2]func(n int) error
	for i := range floods {
		h, err := loader.NewBenchHarness()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		p := clientPkt(1, 3000, syn, nil)
		p.src = netip.AddrFrom4([4]byte{10, 90 + byte(i), 0, 1})
		in := padTo(p.build(), loader.BenchPacketLen)
		if err := h.Set(f.dp.Program(), in, true); err != nil {
			t.Fatal(err)
		}
		floods[i] = func(n int) error {
			return onCPU(f, onCPUs[i], func() error {
				v, _, err := h.Run(in, f.ifindex, n)
				if err == nil && v != xdpTX {
					t.Errorf("flood on CPU %d: last verdict %s, want XDP_TX", onCPUs[i], verdictName[v])
				}
				return err
			})
		}
	}
	if err := floods[0](4 * 64); err != nil { // the range full of half-open flows
		t.Fatal(err)
	}

	const rounds = 300
	deadline := time.Now().Add(20 * time.Second)
	cut := 0
	for round := 0; round < rounds && time.Now().Before(deadline); round++ {
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range floods {
			wg.Go(func() { errs[i] = floods[i](3000) })
		}
		wg.Go(func() {
			for range 5 {
				n, err := f.dp.FlushFlows()
				if err != nil {
					errs[2] = err
					return
				}
				cut += n
			}
		})
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		n, err := f.dp.FreedUnderFlows()
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			t.Fatalf("round %d: %d flows keep their forward entry with a freed SNAT slot: a cut freed slots that new flows had taken (their next packet gets a RST)", round, n)
		}
	}
	if cut == 0 {
		t.Fatal("the cuts found no flow to cut: the race was not run")
	}
	st, err := f.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d flows cut, %d new flows, ports taken back %v", cut, st.Total.NewFlows, st.Total.Expired)
}

// twoCPUs returns the first two CPUs this process may run on; it skips t
// on a machine with fewer.
func twoCPUs(t *testing.T) []int {
	t.Helper()
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		t.Fatal(err)
	}
	if cpus.Count() < 2 {
		t.Skipf("needs two CPUs, has %d", cpus.Count())
	}
	var onCPUs []int
	for c := 0; len(onCPUs) < 2; c++ {
		if cpus.IsSet(c) {
			onCPUs = append(onCPUs, c)
		}
	}
	return onCPUs
}
