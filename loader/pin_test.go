package loader_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/loader"
)

// TestPinnedRestart loads a pinned datapath, attaches it, makes a flow,
// closes it as a killed daemon would (no unpin), and loads again: the
// flow, the backend pools and the attachment survive. Unpin then removes
// everything.
func TestPinnedRestart(t *testing.T) {
	f := newFixture(t, snatPorts) // for the namespace and lb0
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("xlb-test-%d", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(pin) })
	cfg := loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: snatPorts, PinPath: pin, SkipPortCheck: true}
	primary := ap(pg1, 5432)
	replicas := []netip.AddrPort{ap(pg2, 5432), ap(pg3, 5432)}

	load := func() *loader.Datapath { return loadAttached(t, f, cfg) }
	dp := load()
	if err := dp.SetBackends(loader.RW, []netip.AddrPort{primary}); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetBackends(loader.RO, replicas); err != nil {
		t.Fatal(err)
	}
	f.dp = dp
	_, port := forward(t, f, clientPkt(43000, 3000, syn, nil))
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if attached(t, f) != "generic" {
		t.Fatal("closing without unpin detached the datapath")
	}

	dp2 := load()
	f.dp = dp2
	if got := dp2.Pool(loader.RW); len(got) != 1 || got[0] != primary {
		t.Fatalf("rw pool after restart %v, want [%v]", got, primary)
	}
	if got := dp2.Pool(loader.RO); len(got) != 2 || got[0] != replicas[0] || got[1] != replicas[1] {
		t.Fatalf("ro pool after restart %v, want %v", got, replicas)
	}
	flows, err := dp2.Flows()
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 || flows[0].Client != ap(client, 43000) || flows[0].SNAT.Port() != port {
		t.Fatalf("flows after restart %+v, want the one from %v on port %d", flows, ap(client, 43000), port)
	}
	// The flow still forwards, with the new program.
	if _, p2 := forward(t, f, clientPkt(43000, 3000, ack, []byte("x"))); p2 != port {
		t.Fatalf("flow moved from SNAT port %d to %d across the restart", port, p2)
	}

	if err := dp2.Unpin(); err != nil {
		t.Fatal(err)
	}
	if err := dp2.Close(); err != nil {
		t.Fatal(err)
	}
	if m := attached(t, f); m != "" {
		t.Fatalf("after unpin and close, xdp still attached (%s)", m)
	}
	if ents, _ := os.ReadDir(pin); len(ents) != 0 {
		t.Fatalf("pins left behind: %v", ents)
	}
}

// attached returns lb0's XDP mode as ip link shows it ("generic", "native"
// or "").
func attached(t *testing.T, f *fixture) string {
	t.Helper()
	out, err := f.ns.Output("ip", "-d", "link", "show", "lb0")
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case strings.Contains(out, "xdpgeneric"):
		return "generic"
	case strings.Contains(out, "xdp "), strings.Contains(out, "xdpdrv"):
		return "native"
	}
	return ""
}

// TestPinNotVisible attaches a pinned datapath, closes it as a killed
// daemon would, and starts again with a pin path that does not hold its
// pins (as in a container without the host's bpffs): Attach fails, and
// its error says both why the pinned link was not used and that another
// XDP program holds the interface while no pin is visible.
func TestPinNotVisible(t *testing.T) {
	f := newFixture(t, snatPorts)
	first := filepath.Join("/sys/fs/bpf", fmt.Sprintf("xlb-test-%d-a", os.Getpid()))
	other := filepath.Join("/sys/fs/bpf", fmt.Sprintf("xlb-test-%d-b", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(first); os.RemoveAll(other) })
	attach := func(pin string) error {
		dp, err := loader.Load(loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: snatPorts, PinPath: pin, SkipPortCheck: true})
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		return f.ns.Do(func() error { _, err := dp.Attach("lb0", loader.ModeGeneric); return err })
	}
	if err := attach(first); err != nil {
		t.Fatal(err)
	}
	if attached(t, f) != "generic" {
		t.Fatal("closing without unpin detached the datapath")
	}
	err := attach(other)
	if err == nil {
		t.Fatal("attaching over a program whose pin is not visible succeeded")
	}
	for _, want := range []string{
		"attaching xdp to lb0",
		"device or resource busy",
		"loading pinned link " + filepath.Join(other, "link_lb0"),
		"no such file or directory",
		"an XDP program is attached to lb0 but no pinned link is visible under " + other,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestPinSeveredLink pins a datapath's link, closes it as a killed daemon
// would, and replaces the interface (as `docker restart` replaces a
// container's veth): the next Attach drops the severed link, attaches to
// the new interface and pins the new link; the pinned flow map stays.
func TestPinSeveredLink(t *testing.T) {
	f := newFixture(t, snatPorts)
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("xlb-test-%d-severed", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(pin) })
	cfg := loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: snatPorts, PinPath: pin, SkipPortCheck: true}
	load := func() *loader.Datapath { return loadAttached(t, f, cfg) }
	dp := load()
	if err := dp.SetBackends(loader.RW, []netip.AddrPort{ap(pg1, 5432)}); err != nil {
		t.Fatal(err)
	}
	f.dp = dp
	forward(t, f, clientPkt(43001, 3000, syn, nil))
	dp.Close()
	for _, c := range [][]string{
		{"ip", "link", "del", "lb0"},
		{"ip", "link", "add", "lb0", "address", lbMAC.String(), "type", "veth", "peer", "name", "peer0"},
		{"ip", "link", "set", "lb0", "up"},
	} {
		if err := f.ns.Run(c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	if m := attached(t, f); m != "" {
		t.Fatalf("new lb0 has xdp (%s) before attach", m)
	}
	out, err := f.ns.Output("cat", "/sys/class/net/lb0/ifindex")
	if err != nil {
		t.Fatal(err)
	}
	idx, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	dp2 := load()
	f.dp, f.ifindex = dp2, uint32(idx)
	if m := attached(t, f); m != "generic" {
		t.Fatalf("after attach over a severed pinned link, lb0 has xdp %q, want generic", m)
	}
	if _, err := os.Stat(filepath.Join(pin, "link_lb0")); err != nil {
		t.Fatalf("new link not pinned: %v", err)
	}
	flows, err := dp2.Flows()
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 || flows[0].Client != ap(client, 43001) {
		t.Fatalf("flows after the interface was replaced %+v, want the one from %v", flows, ap(client, 43001))
	}
	// The flow leaves by the new interface (XDP_TX), not by a redirect to
	// the index of the one that is gone.
	forward(t, f, clientPkt(43001, 3000, ack, []byte("x")))
}

// loadAttached loads a datapath from cfg and attaches it to f's lb0
// (generic), closed in cleanup: a daemon's start, for restart tests.
func loadAttached(t *testing.T, f *fixture, cfg loader.Config) *loader.Datapath {
	t.Helper()
	dp, err := loader.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	if err := f.ns.Do(func() error { _, err := dp.Attach("lb0", loader.ModeGeneric); return err }); err != nil {
		t.Fatal(err)
	}
	return dp
}
