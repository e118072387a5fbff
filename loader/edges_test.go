package loader_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xlb-dev/xlb/loader"
)

// TestUnknownNeighbour: a SYN for a backend whose MAC the kernel does not
// know is dropped and counted (the client retransmits), never passed to a
// kernel that would answer "connection refused"; after an Attach the
// datapath keeps a managed neighbour entry for the backend.
func TestUnknownNeighbour(t *testing.T) {
	f := newFixture(t, snatPorts)
	ghost := ap(netip.MustParseAddr("172.20.0.13"), 5432) // no neighbour entry
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{ghost}); err != nil {
		t.Fatal(err)
	}
	v, _ := f.run(t, clientPkt(50000, 3000, syn, nil).build())
	wantVerdict(t, v, xdpDrop)
	st, _ := f.dp.Stats()
	if got := st.Services[loader.RW].Drops["neigh_miss"]; got != 1 {
		t.Fatalf("neigh_miss drops %d, want 1 (%v)", got, st.Services[loader.RW].Drops)
	}
	if st.Total.RSTs != 0 {
		t.Fatalf("%d RSTs sent for an unknown neighbour", st.Total.RSTs)
	}
	if err := f.ns.Do(func() error { _, err := f.dp.Attach("lb0", loader.ModeGeneric); return err }); err != nil {
		t.Fatal(err)
	}
	out, err := f.ns.Output("ip", "-d", "neigh", "show", "172.20.0.13")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "managed") {
		t.Fatalf("no managed neighbour entry for the backend: %q", out)
	}
	// A permanent entry the operator made is left alone.
	out, err = f.ns.Output("ip", "-d", "neigh", "show", pg1.String())
	if err != nil || !strings.Contains(out, "PERMANENT") {
		t.Fatalf("pg1's permanent entry changed: %q (%v)", out, err)
	}
}

// TestNeighbourChange: when a backend's MAC changes, established flows
// follow within about a second (the next hop is per backend and checked
// again every second), without a new SYN.
func TestNeighbourChange(t *testing.T) {
	f := newFixture(t, snatPorts)
	primary := ap(pg1, 5432)
	if err := f.dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	_, port := forward(t, f, clientPkt(50100, 3000, syn, nil))
	establish(t, f, primary, 50100, port)
	newMAC := "02:00:00:00:01:10"
	if err := f.ns.Run("ip", "neigh", "replace", pg1.String(), "lladdr", newMAC, "dev", "lb0", "nud", "permanent"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, out := f.run(t, clientPkt(50100, 3000, ack|psh, []byte("x")).build())
		wantVerdict(t, v, xdpTX)
		p, err := parseTCP(out)
		if err != nil {
			t.Fatal(err)
		}
		if p.dstMAC == newMAC {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flow still sent to %s 5 s after the neighbour changed", p.dstMAC)
		}
		time.Sleep(50 * time.Millisecond) // polling the output MAC, bounded by deadline
	}
}

// TestPinnedLayout: a datapath refuses pinned maps of another layout
// (here: another SNAT range, which resizes the SNAT slots) and maps pinned
// without a layout version, with ErrLayoutMismatch.
func TestPinnedLayout(t *testing.T) {
	newFixture(t, snatPorts) // root and bpffs checks
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("xlb-test-layout-%d", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(pin) })
	cfg := loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: snatPorts, PinPath: pin, SkipPortCheck: true}
	dp, err := loader.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	// Same layout: reused.
	dp, err = loader.Load(cfg)
	if err != nil {
		t.Fatalf("reloading the same layout: %v", err)
	}
	dp.Close()
	other := cfg
	other.SNATPorts = loader.PortRange{Min: 20000, Max: 20999}
	if _, err := loader.Load(other); !errors.Is(err, loader.ErrLayoutMismatch) {
		t.Fatalf("loading another layout over the pins: %v, want ErrLayoutMismatch", err)
	} else {
		t.Logf("%v", err)
	}
	if err := os.Remove(filepath.Join(pin, "layout_map")); err != nil {
		t.Fatal(err)
	}
	if _, err := loader.Load(cfg); !errors.Is(err, loader.ErrLayoutMismatch) {
		t.Fatalf("loading over pins without a layout version: %v, want ErrLayoutMismatch", err)
	}
}
