package loader_test

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/loader"
)

// The fixture's addresses mirror the lab (DESIGN.md).
var (
	vip       = netip.MustParseAddr("172.20.0.100")
	lbAddr    = netip.MustParseAddr("172.20.0.21")
	client    = netip.MustParseAddr("172.20.0.50")
	pg1       = netip.MustParseAddr("172.20.0.10")
	pg2       = netip.MustParseAddr("172.20.0.11")
	pg3       = netip.MustParseAddr("172.20.0.12")
	other     = netip.MustParseAddr("172.20.0.99")
	lbMAC     = mustMAC("02:00:00:00:00:21")
	clientMAC = mustMAC("02:00:00:00:00:50")
	macs      = map[netip.Addr]net.HardwareAddr{
		pg1: mustMAC("02:00:00:00:00:10"),
		pg2: mustMAC("02:00:00:00:00:11"),
		pg3: mustMAC("02:00:00:00:00:12"),
	}
	snatPorts = loader.PortRange{Min: 20000, Max: 29999}
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// xdpMd is struct xdp_md, the context BPF_PROG_TEST_RUN takes.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// fixture is a namespace with the LB's interface (lb0, 172.20.0.21/24) and
// permanent neighbours for the backends, so bpf_fib_lookup in
// Program.Run resolves next hops deterministically, and a loaded datapath.
type fixture struct {
	ns      *lab.Namespace
	ifindex uint32
	dp      *loader.Datapath
}

func newFixture(tb testing.TB, ports loader.PortRange) *fixture {
	tb.Helper()
	return newFixtureWith(tb, loader.Config{VIP: vip, SNATAddr: lbAddr, SNATPorts: ports, SkipPortCheck: true})
}

// newFixtureWith is newFixture with a datapath loaded from cfg.
func newFixtureWith(tb testing.TB, cfg loader.Config) *fixture {
	tb.Helper()
	lab.RequirePrivileged(tb)
	ns, err := lab.NewNamespace(lab.TestPrefix() + "dp")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Delete() })
	cmds := [][]string{
		{"ip", "link", "add", "lb0", "address", lbMAC.String(), "type", "veth", "peer", "name", "peer0"},
		{"ip", "addr", "add", lbAddr.String() + "/24", "dev", "lb0"},
		{"ip", "link", "set", "lb0", "up"},
		{"ip", "link", "set", "peer0", "up"},
		{"sysctl", "-qw", "net.ipv4.conf.lb0.forwarding=1"},
	}
	for a, m := range macs {
		cmds = append(cmds, []string{"ip", "neigh", "replace", a.String(), "lladdr", m.String(), "dev", "lb0", "nud", "permanent"})
	}
	for _, c := range cmds {
		if err := ns.Run(c[0], c[1:]...); err != nil {
			tb.Fatal(err)
		}
	}
	out, err := ns.Output("cat", "/sys/class/net/lb0/ifindex")
	if err != nil {
		tb.Fatal(err)
	}
	idx, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		tb.Fatal(err)
	}
	dp, err := loader.Load(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dp.Close() })
	return &fixture{ns: ns, ifindex: uint32(idx), dp: dp}
}

// run runs the datapath once on in, as received on lb0.
func (f *fixture) run(tb testing.TB, in []byte) (uint32, []byte) {
	tb.Helper()
	v, out, err := f.runProg(f.dp.Program(), in)
	if err != nil {
		tb.Fatal(err)
	}
	return v, out
}

func (f *fixture) runProg(prog *ebpf.Program, in []byte) (uint32, []byte, error) {
	var (
		v   uint32
		out = make([]byte, len(in)+256)
	)
	err := f.ns.Do(func() error {
		opts := ebpf.RunOptions{Data: in, DataOut: out, Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: f.ifindex}}
		var err error
		v, err = prog.Run(&opts)
		out = opts.DataOut
		return err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("running program: %w", err)
	}
	return v, out, nil
}

// clientPkt is a packet from the client to VIP:port.
func clientPkt(sport, port uint16, flags uint8, payload []byte) pkt {
	return pkt{srcMAC: clientMAC, dstMAC: lbMAC, src: client, dst: vip, sport: sport, dport: port,
		seq: 1000, ack: 5000, flags: flags, payload: payload}
}
