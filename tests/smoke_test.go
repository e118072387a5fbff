package tests

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/xlb-dev/xlb/deploy/lab"
	"github.com/xlb-dev/xlb/loader"
)

var (
	snatPorts = loader.PortRange{Min: 20000, Max: 29999}
	pg1Addr   = netip.MustParseAddr("172.20.0.10")
	lb1Addr   = netip.MustParseAddr("172.20.0.21")
	client    = netip.MustParseAddr("172.20.0.50")
)

// newTopology builds a lab topology of the named hosts, removed in cleanup.
func newTopology(t *testing.T, names ...string) *lab.Topology {
	t.Helper()
	hosts, err := lab.LabHosts(names...)
	if err != nil {
		t.Fatal(err)
	}
	topo, err := lab.NewTopology(lab.TestPrefix(), hosts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("removing topology: %v", err)
		}
	})
	return topo
}

// startPostgres runs the lab's PostgreSQL in ns, stopped in cleanup.
func startPostgres(ctx context.Context, t *testing.T, ns *lab.Namespace) *lab.Postgres {
	t.Helper()
	pg, err := lab.StartPostgres(ctx, ns, lab.PostgresConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Close(); err != nil {
			t.Errorf("stopping postgres: %v", err)
		}
	})
	return pg
}

// attachPass puts the pass-through XDP program on dev in ns until cleanup.
func attachPass(t *testing.T, ns *lab.Namespace, dev string) {
	t.Helper()
	var l link.Link
	if err := ns.Do(func() (err error) {
		l, err = loader.AttachPass(dev)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("detaching pass program from %s: %v", dev, err)
		}
	})
}

// loadDatapath loads the datapath inside lb's namespace (the SNAT range is
// checked against its ip_local_port_range) and attaches it to lb's HostIf
// in mode; cleanup closes it, which detaches it.
func loadDatapath(t *testing.T, lb *lab.Node, mode loader.Mode) *loader.Datapath {
	t.Helper()
	var dp *loader.Datapath
	if err := lb.NS.Do(func() (err error) {
		dp, err = loader.Load(loader.Config{VIP: lab.VIP, SNATAddr: lb.Addr.Addr(), SNATPorts: snatPorts})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("closing datapath: %v", err)
		}
	})
	if err := dp.SetBackends(loader.RW, []netip.AddrPort{netip.AddrPortFrom(pg1Addr, lab.PostgresPort)}); err != nil {
		t.Fatal(err)
	}
	var got loader.Mode
	if err := lb.NS.Do(func() (err error) {
		got, err = dp.Attach(lab.HostIf, mode)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got != mode {
		t.Fatalf("Attach(%s, %s) got mode %s", lab.HostIf, mode, got)
	}
	return dp
}

// TestSmoke runs psql from the client through the VIP to PostgreSQL on pg1,
// with the XDP datapath on lb1 in each attach mode.
func TestSmoke(t *testing.T) {
	lab.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	topo := newTopology(t, "pg1", "lb1", "client")
	pg1, lb1, cl := topo.Node("pg1"), topo.Node("lb1"), topo.Node("client")
	startPostgres(ctx, t, pg1.NS)

	if err := lb1.AddAddress(netip.PrefixFrom(lab.VIP, 32)); err != nil {
		t.Fatal(err)
	}
	// Native XDP_TX on lb1's eth0 needs an XDP program on its peer.
	attachPass(t, topo.Switch, lb1.Peer)
	if err := lb1.NS.Do(func() error { return loader.EnableForwarding(lab.HostIf) }); err != nil {
		t.Fatal(err)
	}

	// The control: straight to pg1 the backend sees the client, so the
	// client_addr check below can tell NAT from no NAT.
	row, err := lab.Query(ctx, cl.NS, lab.ProcessSecrets().AppConn(pg1Addr, lab.PostgresPort),
		"select client_addr from pg_stat_activity where pid = pg_backend_pid()")
	if err != nil {
		t.Fatal(err)
	}
	if row != client.String() {
		t.Fatalf("direct connection: backend sees %q, want the client %v", row, client)
	}

	for _, mode := range []loader.Mode{loader.ModeNative, loader.ModeGeneric} {
		t.Run(string(mode), func(t *testing.T) {
			dp := loadDatapath(t, lb1, mode)
			// A SYN whose next hop is unresolved goes to lb1's kernel, which
			// RSTs it: have pg1's MAC in lb1's table first.
			resolveCtx, cancelResolve := context.WithTimeout(ctx, 10*time.Second)
			defer cancelResolve()
			if err := lb1.Resolve(resolveCtx, pg1Addr); err != nil {
				t.Fatal(err)
			}

			testRW(ctx, t, dp, cl)
			testRONoBackend(ctx, t, dp, cl)
		})
	}
}

// testRW queries through VIP:3000 and checks that the backend saw lb1 and
// the datapath counted and tracked the flow.
func testRW(ctx context.Context, t *testing.T, dp *loader.Datapath, cl *lab.Node) {
	qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	row, err := lab.Query(qctx, cl.NS, lab.ProcessSecrets().AppConn(lab.VIP, lab.PortRW),
		"select current_user, current_database(), client_addr, 6*7 from pg_stat_activity where pid = pg_backend_pid()")
	if err != nil {
		t.Fatalf("query through the VIP: %v", err)
	}
	if want := "ramos|ramos-test-db|" + lb1Addr.String() + "|42"; row != want {
		t.Errorf("query through the VIP = %q, want %q (the backend must see lb1, not the client)", row, want)
	}

	st, err := dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats after the query: total %+v, rw %+v", st.Total, st.Services[loader.RW])
	if st.Total.NewFlows < 1 || st.Total.Packets == 0 {
		t.Errorf("stats: new_flows %d, packets %d; want >= 1 and > 0", st.Total.NewFlows, st.Total.Packets)
	}
	rw := st.Services[loader.RW]
	if rw.NewFlows != 1 {
		t.Errorf("rw new_flows = %d, want 1", rw.NewFlows)
	}
	if rw.DropTotal() != 0 || rw.RSTs != 0 {
		t.Errorf("rw: drops %v, rsts %d; want none", rw.Drops, rw.RSTs)
	}
	if be := st.Backends[netip.AddrPortFrom(pg1Addr, lab.PostgresPort)]; be.Packets == 0 || be.NewFlows != 1 {
		t.Errorf("backend pg1: packets %d, new_flows %d; want > 0 and 1", be.Packets, be.NewFlows)
	}

	// psql has exited; the flow is closed once the backend's FIN has
	// passed too.
	var flows []loader.Flow
	deadline := time.Now().Add(5 * time.Second)
	for {
		if flows, err = dp.Flows(); err != nil {
			t.Fatal(err)
		}
		if len(flows) != 1 || flows[0].Closed || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if len(flows) != 1 {
		t.Fatalf("flows = %+v, want one", flows)
	}
	f := flows[0]
	snat := f.SNAT.Port()
	if f.Client.Addr() != client || f.VIP != netip.AddrPortFrom(lab.VIP, lab.PortRW) || f.Service != loader.RW ||
		f.Backend != netip.AddrPortFrom(pg1Addr, lab.PostgresPort) || f.SNAT.Addr() != lb1Addr ||
		snat < snatPorts.Min || snat > snatPorts.Max || !f.Closed {
		t.Errorf("flow = %+v, want client %v -> %v:%d via %v:%d-%d to pg1:5432, closed",
			f, client, lab.VIP, lab.PortRW, lb1Addr, snatPorts.Min, snatPorts.Max)
	}
}

// testRONoBackend connects to VIP:3001, which has no backend: the datapath
// must answer the SYN with a RST, so psql fails at once instead of waiting
// out its connect_timeout.
func testRONoBackend(ctx context.Context, t *testing.T, dp *loader.Datapath, cl *lab.Node) {
	conn := lab.ProcessSecrets().AppConn(lab.VIP, lab.PortRO)
	conn.ConnectTimeout = 3 * time.Second
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err := lab.Query(qctx, cl.NS, conn, "select 1")
	took := time.Since(start)
	if err == nil {
		t.Fatal("query to VIP:3001 without backends succeeded")
	}
	if !strings.Contains(err.Error(), "Connection refused") || took > 2*time.Second {
		t.Errorf("query to VIP:3001 without backends: took %v, err %v; want Connection refused well before connect_timeout", took, err)
	}

	st, err := dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	ro := st.Services[loader.RO]
	t.Logf("ro stats: %+v", ro)
	if ro.RSTs < 1 || ro.Drops["no_backend"] < 1 || ro.NewFlows != 0 {
		t.Errorf("ro: rsts %d, no_backend drops %d, new_flows %d; want >= 1, >= 1, 0", ro.RSTs, ro.Drops["no_backend"], ro.NewFlows)
	}
	flows, err := dp.Flows()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Service == loader.RO {
			t.Errorf("flow %+v for a service without backends", f)
		}
	}
}
